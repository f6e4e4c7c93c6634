"""Numpy glue ops between sparse ops give ONNX Runtime's results."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsify.passes.csr import CsrPass
from sparsify.runtime import Session
from tests.helpers import assert_close


def glue_model():
    """Gemm -> Reshape(0, 2, -1) -> ReduceMean / GlobalAveragePool / Flatten / Sub / Div / Mul -> Gemm."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((12, 6)) * (rng.random((12, 6)) < 0.5)).astype(np.float32)
    w2 = rng.standard_normal((5, 6)).astype(np.float32)
    inits = {"w1": w1, "w2": w2, "shape": np.array([0, 2, -1], np.int64), "axes": np.array([-1], np.int64),
             "c": np.float32(0.5), "d": rng.standard_normal((1, 6)).astype(np.float32) + 3,
             "shape4": np.array([0, 2, 3, 2], np.int64)}
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
        helper.make_node("Reshape", ["h", "shape"], ["r"]),              # (N, 2, 6)
        helper.make_node("ReduceMean", ["r", "axes"], ["m"], keepdims=1),  # (N, 2, 1)
        helper.make_node("Sub", ["r", "m"], ["s"]),
        helper.make_node("Reshape", ["s", "shape4"], ["s4"]),             # (N, 2, 3, 2)
        helper.make_node("GlobalAveragePool", ["s4"], ["gp"]),            # (N, 2, 1, 1)
        helper.make_node("Flatten", ["s4"], ["f"], axis=2),               # (N*2, 6)
        helper.make_node("Div", ["f", "d"], ["q"]),
        helper.make_node("Mul", ["q", "c"], ["p"]),
        helper.make_node("Identity", ["p"], ["p2"]),
        helper.make_node("Relu", ["p2"], ["p3"]),
        helper.make_node("Gemm", ["p3", "w2"], ["y"], transB=1),
        helper.make_node("Flatten", ["gp"], ["z"], axis=1),
    ]
    graph = helper.make_graph(nodes, "glue", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("glue", ["numpy", "ort"])
def test_glue_ops_match_ort(tmp_path, glue):
    dense = glue_model()
    result = CsrPass(density_threshold=1.0).call(dense)
    path = tmp_path / "glue.onnx"
    path.write_bytes(result.model.SerializeToString())
    sess = Session(path, glue=glue)
    kinds = [s.kind for s in sess.steps]
    assert kinds.count("sparse") == 2 and (glue in kinds)
    ref = ort.InferenceSession(dense.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n, 6)).astype(np.float32)
        got = sess.run(None, {"x": x})
        want = ref.run(None, {"x": x})
        for g, w in zip(got, want):
            assert_close(g, w)
    # Output order follows the names asked for.
    z, y = sess.run(["z", "y"], {"x": x})
    assert z.shape == (3, 2) and y.shape == (6, 5)


def layer_norm_model(axis: int, with_bias: bool, stats: bool):
    """Gemm -> Reshape (N, 3, 4) -> Add -> LayerNormalization(axis) -> Gemm; scale over the normalized dims."""
    rng = np.random.default_rng(1)
    w1 = (rng.standard_normal((12, 6)) * (rng.random((12, 6)) < 0.5)).astype(np.float32)
    w2 = rng.standard_normal((5, 12)).astype(np.float32)
    norm_shape = (3, 4)[axis:] if axis >= 0 else (3, 4)[axis + 2:]
    inits = {"w1": w1, "w2": w2, "shape": np.array([0, 3, 4], np.int64), "back": np.array([0, 12], np.int64),
             "shift": rng.standard_normal((3, 4)).astype(np.float32),
             "scale": (rng.random(norm_shape) + 0.5).astype(np.float32),
             "bias": rng.standard_normal(norm_shape).astype(np.float32)}
    ln_inputs = ["a", "scale"] + (["bias"] if with_bias else [])
    ln_outputs = ["n"] + (["mean", "inv"] if stats else [])
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
        helper.make_node("Reshape", ["h", "shape"], ["r"]),
        helper.make_node("Add", ["r", "shift"], ["a"]),
        helper.make_node("LayerNormalization", ln_inputs, ln_outputs, axis=axis, epsilon=1e-3),
        helper.make_node("Reshape", ["n", "back"], ["f"]),
        helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if stats:
        outputs.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                              outputs, [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("axis, with_bias", [(-1, True), (1, True), (2, False), (-2, False)])
def test_layer_norm_glue_matches_ort(tmp_path, axis, with_bias):
    dense = layer_norm_model(axis, with_bias, stats=False)
    path = tmp_path / "ln.onnx"
    path.write_bytes(CsrPass(density_threshold=1.0).call(dense).model.SerializeToString())
    sess = Session(path)
    assert [s.kind for s in sess.steps] == ["sparse", "numpy", "sparse"]
    ref = ort.InferenceSession(dense.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = np.random.default_rng(n).standard_normal((n, 6)).astype(np.float32) * 10
        assert_close(sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0])


def test_layer_norm_with_statistics_outputs_stays_in_ort(tmp_path):
    dense = layer_norm_model(-1, True, stats=True)
    path = tmp_path / "ln.onnx"
    path.write_bytes(CsrPass(density_threshold=1.0).call(dense).model.SerializeToString())
    sess = Session(path)
    assert [s.kind for s in sess.steps] == ["sparse", "ort", "sparse"]
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    ref = ort.InferenceSession(dense.SerializeToString(), providers=["CPUExecutionProvider"])
    for g, w in zip(sess.run(None, {"x": x}), ref.run(None, {"x": x})):
        assert_close(g, w)


def test_float16_layer_norm_glue_matches_ort(tmp_path):
    # A float16 LayerNormalization alone in its run of standard nodes is a glue-only step.
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((5, 8)) * (rng.random((5, 8)) < 0.5)).astype(np.float32)
    nodes = [helper.make_node("LayerNormalization", ["x", "s", "b"], ["n"], axis=-1),
             helper.make_node("Gemm", ["z", "w"], ["y"], transB=1)]
    inits = [numpy_helper.from_array((rng.random(8) + 0.5).astype(np.float16), "s"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float16), "b"),
             numpy_helper.from_array(w, "w")]
    graph = helper.make_graph(nodes, "ln16", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["n", 8]),
                                              helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("n", TensorProto.FLOAT16, None),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    dense = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "ln16.onnx"
    path.write_bytes(CsrPass(density_threshold=1.0).call(dense).model.SerializeToString())
    sess = Session(path)
    assert [s.kind for s in sess.steps][0] == "numpy"
    x = (rng.standard_normal((3, 8)) * 4).astype(np.float16)
    feeds = {"x": x, "z": rng.standard_normal((3, 8)).astype(np.float32)}
    got = sess.run(["n"], feeds)[0]
    want = ort.InferenceSession(dense.SerializeToString(), providers=["CPUExecutionProvider"]).run(["n"], feeds)[0]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=2e-3, rtol=2e-3)


def test_residual_add_and_layer_norm_run_as_one_pass(tmp_path, monkeypatch):
    # Sparse Gemm -> Add(h, x2) -> LayerNormalization -> sparse Gemm; the sum is read again
    # after the norm (pre-LN style), so the fused pass must also hand it on.
    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((12, 6)) * (rng.random((12, 6)) < 0.5)).astype(np.float32)
    w2 = (rng.standard_normal((12, 12)) * (rng.random((12, 12)) < 0.5)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
             helper.make_node("Add", ["h", "x2"], ["a"]),
             helper.make_node("LayerNormalization", ["a", "s", "b"], ["n"], axis=-1, epsilon=1e-5),
             helper.make_node("Gemm", ["n", "w2"], ["g"], transB=1),
             helper.make_node("Add", ["g", "a"], ["y"])]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array((rng.random(12) + 0.5).astype(np.float32), "s"),
             numpy_helper.from_array(rng.standard_normal(12).astype(np.float32), "b")]
    graph = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6]),
                                             helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["n", 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    dense = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "res.onnx"
    path.write_bytes(CsrPass(density_threshold=1.0).call(dense).model.SerializeToString())
    import sparsify.kernels.norm as norm
    calls = []
    fused = norm.add_layer_norm
    monkeypatch.setattr(norm, "add_layer_norm", lambda *a: calls.append(1) or fused(*a))
    sess = Session(path)
    ref = ort.InferenceSession(dense.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 4):
        feeds = {"x": rng.standard_normal((n, 6)).astype(np.float32),
                 "x2": rng.standard_normal((n, 12)).astype(np.float32)}
        assert_close(sess.run(None, feeds)[0], ref.run(None, feeds)[0])
    assert len(calls) == 2
