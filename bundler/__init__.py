"""trt-bundler: build, seal, verify and run signed TensorRT engine bundles.

The public API is re-exported from `bundler.api`; everything else is private.
"""

__version__ = "0.1.0"
