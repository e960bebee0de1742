#!/usr/bin/env bash
# Build the two extracted bundles tests/test_loader_gpu.py needs, on a machine with trt-bundler and
# TensorRT-RTX installed, into .device/ (git-ignored through .git/info/exclude). Then, on the GPU host
# (the `device` tool carries .device along):
#   TRT_BUNDLER_GPU_BUNDLE=$PWD/.device/gpu TRT_BUNDLER_CPU_BUNDLE=$PWD/.device/cpu \
#   TRT_BUNDLER_TRUST=$PWD/.device/release.pub python3 -m pytest -v tests/test_loader_gpu.py
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
rm -rf .device && mkdir -p .device && cd .device
bundle keys generate release --dir . --no-passphrase >/dev/null
S=input:1x3x64x64:4x3x64x64:16x3x64x64
bundle create ../samples/tinynet.onnx --name gpuonly --version 1.0.0 --target sm_86 --target rtx5090 --shape $S --key release.key --out dist >/dev/null
bundle create ../samples/tinynet.onnx --name withcpu --version 1.0.0 --target cpu --target sm_89 --shape $S --key release.key --out dist >/dev/null
bundle extract dist/gpuonly-1.0.0.bundle.tar --trust release.pub --dest gpu >/dev/null
bundle extract dist/withcpu-1.0.0.bundle.tar --trust release.pub --dest cpu >/dev/null
rm -rf dist release.key
echo "prepared .device/gpu, .device/cpu and .device/release.pub"
