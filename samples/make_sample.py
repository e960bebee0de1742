"""Regenerate samples/tinynet.onnx: a small, real image classifier graph with a dynamic batch.

Conv-BN-ReLU ×2, global pooling and a linear head, fixed random weights (seed 0). It is small
(about 40 KB) so it lives in the repository, and real enough to exercise TensorRT's parser, its
fusions and a dynamic-batch optimization profile. Run: python samples/make_sample.py
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make(path: Path) -> None:
    rng = np.random.default_rng(0)

    def w(name, *shape):  # noqa: ANN001, ANN202
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    inits = [
        w("c1_w", 16, 3, 3, 3), w("c1_b", 16),
        w("bn_s", 16), w("bn_b", 16), w("bn_m", 16),
        numpy_helper.from_array(np.ones(16, np.float32), "bn_v"),
        w("c2_w", 32, 16, 3, 3), w("c2_b", 32),
        w("fc_w", 32, 10), w("fc_b", 10),
        numpy_helper.from_array(np.array([-1, 32], np.int64), "flat_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "c1_w", "c1_b"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2_w", "c2_b"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Reshape", ["gap", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc_w"], ["mm"]),
        helper.make_node("Add", ["mm", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tinynet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="trt-bundler-samples")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


if __name__ == "__main__":
    make(Path(__file__).with_name("tinynet.onnx"))
