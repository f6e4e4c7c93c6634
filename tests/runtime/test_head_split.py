"""A sparse Linear followed by attention's Reshape into heads and Transpose (0, 2, 1, 3): one step
storing the heads head-major, equal to running the three ops apart."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsify.passes.csr import CsrPass
from sparsify.runtime import Session
from tests.helpers import assert_close

F, HEADS, D, T = 16, 3, 8, 7


def _model(tmp_path, shape=(-1, T, HEADS, D), perm=(0, 2, 1, 3), allowzero=0, extra_reader=None, tokens=T):
    """x (N, tokens, F) -> MatMul -> Reshape(shape) -> Transpose(perm) -> y, converted to a sparse file;
    ``extra_reader``: "linear" or "reshape", whose output an Identity also hands out."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((F, HEADS * D)) * (rng.random((F, HEADS * D)) < 0.3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["lin"], name="proj"),
             helper.make_node("Reshape", ["lin", "shape"], ["split"], name="heads", allowzero=allowzero),
             helper.make_node("Transpose", ["split"], ["y"], name="swap", perm=list(perm))]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_reader is not None:
        nodes.append(helper.make_node("Identity", ["lin" if extra_reader == "linear" else "split"], ["also"]))
        outputs.append(helper.make_tensor_value_info("also", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", tokens, F])],
                              outputs, [numpy_helper.from_array(w, "w"),
                                        numpy_helper.from_array(np.array(shape, np.int64), "shape")])
    dense = tmp_path / "dense.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(dense))
    sparse = tmp_path / "sparse.onnx"
    onnx.save(CsrPass(density_threshold=1.0).call(onnx.load(str(dense))).model, str(sparse))
    return dense, sparse


def _fused(sess: Session) -> bool:
    return any(s.kind == "sparse" and "Transpose" in s.op_types for s in sess.steps)


def _ort(dense, x):
    return ort.InferenceSession(str(dense), providers=["CPUExecutionProvider"]).run(None, {"x": x})


@pytest.mark.parametrize("shape, allowzero", [((-1, T, HEADS, D), 0), ((-1, T, HEADS, D), 1),
                                              ((0, 0, HEADS, D), 0), ((2, -1, HEADS, D), 0)])
def test_head_split_runs_in_the_linear_step_and_equals_the_ops_apart(tmp_path, shape, allowzero):
    dense, sparse = _model(tmp_path, shape, allowzero=allowzero)
    fused, apart = Session(sparse, threads=2), Session(sparse, threads=2, glue="ort")
    assert _fused(fused) and not _fused(apart)
    assert [s.kind for s in fused.steps] == ["sparse"]
    rng = np.random.default_rng(1)
    for n in (2,) if shape[0] == 2 else (1, 2, 3):
        x = rng.standard_normal((n, T, F)).astype(np.float32)
        got = fused.run(None, {"x": x})[0]
        assert got.shape == (n, HEADS, T, D)
        np.testing.assert_array_equal(got, apart.run(None, {"x": x})[0])
        assert_close(got, _ort(dense, x)[0])


@pytest.mark.parametrize("change", [dict(perm=(0, 1, 3, 2)), dict(shape=(-1, T, D, HEADS - 1)),
                                    dict(extra_reader="linear"), dict(extra_reader="reshape")])
def test_head_split_is_left_apart_when_it_is_not_one(tmp_path, change):
    dense, sparse = _model(tmp_path, **change)
    sess = Session(sparse, threads=2)
    assert not _fused(sess)
    x = np.random.default_rng(2).standard_normal((2, T, F)).astype(np.float32)
    for got, want in zip(sess.run(None, {"x": x}), _ort(dense, x)):
        assert_close(got, want)


def test_head_split_with_few_tokens_runs_the_row_kernels(tmp_path):
    dense, sparse = _model(tmp_path, (-1, 3, HEADS, D), tokens=3)
    sess = Session(sparse, threads=2)
    assert _fused(sess)
    x = np.random.default_rng(3).standard_normal((2, 3, F)).astype(np.float32)
    assert_close(sess.run(None, {"x": x})[0], _ort(dense, x)[0])
