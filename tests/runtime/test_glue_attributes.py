"""Glue ops check their attributes against the input's rank as ONNX specifies: where ONNX
Runtime rejects a node, the numpy glue raises; where it runs, the glue gives its result."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsify.runtime import glue
from tests.helpers import assert_close

I64 = np.int64
CASES = [
    # op, input shape, attributes, constant second input (or None)
    ("ReduceMean", (2, 3, 4, 5), {}, np.array([-5, -6], I64)),
    ("ReduceMean", (2, 3, 4, 5), {}, np.array([3, 2], I64)),
    ("ReduceMean", (2, 3, 4, 5), {}, np.array([-4], I64)),
    ("ReduceMean", (2, 3, 4, 5), {}, np.array([4], I64)),
    ("ReduceMean", (2, 3, 4, 5), {"keepdims": 0}, np.array([1, -3], I64)),
    ("ReduceMean", (2, 3, 4, 5), {"noop_with_empty_axes": 1}, np.array([], I64)),
    ("Flatten", (2, 3, 4, 5), {"axis": 4}, None),
    ("Flatten", (2, 3, 4, 5), {"axis": 5}, None),
    ("Flatten", (2, 3, 4, 5), {"axis": -4}, None),
    ("Flatten", (2, 3, 4, 5), {"axis": -5}, None),
    ("Flatten", (2, 3, 4, 5), {"axis": 0}, None),
    ("Reshape", (4, 8), {}, np.array([-2, 16], I64)),
    ("Reshape", (4, 8), {}, np.array([-1, -1], I64)),
    ("Reshape", (4, 8), {}, np.array([0, 64], I64)),
    ("Reshape", (4, 8), {}, np.array([0, -1], I64)),
    ("Reshape", (4, 8), {}, np.array([0, 0, 0], I64)),
    ("Reshape", (4, 8), {"allowzero": 1}, np.array([0, -1], I64)),
    ("Reshape", (4, 8), {}, np.array([2, -1, 4], I64)),
    ("Reshape", (4, 8), {}, np.array([3, -1], I64)),
    ("GlobalAveragePool", (2, 3), {}, None),
    ("GlobalAveragePool", (2, 3, 4), {}, None),
    ("LayerNormalization", (2, 3, 4), {"axis": 3}, np.ones(4, np.float32)),
    ("LayerNormalization", (2, 3, 4), {"axis": -3}, np.ones((3, 4), np.float32)),
]


def _ort(op, shape, attrs, const):
    inputs = ["x"] + (["c"] if const is not None else [])
    node = helper.make_node(op, inputs, ["y"], **attrs)
    inits = [numpy_helper.from_array(const, "c")] if const is not None else []
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return node, model


@pytest.mark.parametrize("op, shape, attrs, const", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_glue_rejects_what_onnx_runtime_rejects_and_matches_the_rest(op, shape, attrs, const):
    node, model = _ort(op, shape, attrs, const)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        expected = sess.run(None, {"x": x})[0]
    except Exception:
        expected = None
    consts = {"c": const} if const is not None else {}
    try:
        fn = glue.compile_node(node, consts)
        got = fn([x] + ([const] if const is not None else []))[0]
    except ValueError:
        got = None
    if expected is None:
        assert got is None, f"ONNX Runtime rejects {op} {attrs} {const} on {shape}; the glue returned {got.shape}"
    else:
        assert got is not None, f"ONNX Runtime runs {op} {attrs} {const} on {shape}; the glue raised"
        assert_close(got, expected)


def test_constant_axes_of_the_wrong_type_are_refused_at_compile():
    node = helper.make_node("ReduceMean", ["x", "c"], ["y"])
    with pytest.raises(ValueError, match="ReduceMean axes 'c' is float32 of shape \\[1\\]; expected a 1-D int64"):
        glue.compile_node(node, {"c": np.array([1.7], np.float32)})
