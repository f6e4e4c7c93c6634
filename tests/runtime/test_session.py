"""The sparse runtime against ONNX Runtime on the dense export."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from sparsify.errors import DataError, KernelInputError
from sparsify.runtime import Session
from tests.helpers import assert_close
from tests.runtime.conftest import sparse_pair
from tests import models


def ort_run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("glue", ["numpy", "ort"])
@pytest.mark.parametrize("kind", ["mlp", "gelu", "cnn"])
def test_runtime_equals_dense_ort_at_batch_1_and_5(pairs, kind, glue):
    _, dense, sparse, plan = pairs[kind]
    sess = Session(sparse, threads=2, glue=glue)
    assert sum(s.kind == "sparse" for s in sess.steps) == len(plan.converted) > 0
    for batch in (1, 5):
        x = models.inputs(kind, batch, seed=10 + batch)
        (y,) = sess.run(None, {"x": x})
        assert_close(y, ort_run(dense, x))


def test_cnn_glue_runs_in_numpy_or_ort_as_asked(pairs):
    sparse = pairs["cnn"][2]
    kinds = [s.kind for s in Session(sparse, glue="numpy").steps]
    assert "numpy" in kinds and "ort" not in kinds
    kinds = [s.kind for s in Session(sparse, glue="ort").steps]
    assert "ort" in kinds and "numpy" not in kinds


@pytest.mark.usefixtures("no_model_size_floor")
def test_partially_converted_model_mixes_kernels_and_ort(tmp_path):
    # The head (density 1.0) stays a dense Gemm in an ORT segment at the default threshold.
    _, dense, sparse, plan = sparse_pair(tmp_path, "mlp", threshold=None)
    assert [d.convert for d in plan.decisions] == [True, True, False]
    sess = Session(sparse, threads=1)
    assert [s.kind for s in sess.steps] == ["sparse", "sparse", "ort"]
    x = models.inputs("mlp", 4)
    assert_close(sess.run(["y"], {"x": x})[0], ort_run(dense, x))


def test_fully_pruned_and_fully_dense_layers(tmp_path):
    _, dense, sparse, plan = sparse_pair(tmp_path, "mlp", threshold=1.0, densities=(0.0, 1.0, 0.5))
    assert [d.nnz for d in plan.decisions][0] == 0 and plan.decisions[1].density == 1.0
    sess = Session(sparse)
    x = models.inputs("mlp", 3)
    assert_close(sess.run(None, {"x": x})[0], ort_run(dense, x))


def test_dense_onnx_without_sparse_ops_runs_as_one_ort_segment(pairs):
    dense = pairs["mlp"][1]
    sess = Session(dense)
    assert [s.kind for s in sess.steps] == ["ort"]
    x = models.inputs("mlp", 2)
    assert_close(sess.run(None, {"x": x})[0], ort_run(dense, x))


def test_inputs_and_outputs_look_like_ort(pairs):
    sess = Session(pairs["cnn"][2])
    ref = ort.InferenceSession(str(pairs["cnn"][1]), providers=["CPUExecutionProvider"])
    for mine, theirs in ((sess.get_inputs(), ref.get_inputs()), (sess.get_outputs(), ref.get_outputs())):
        assert [(a.name, a.shape, a.type) for a in mine] == [(a.name, a.shape, a.type) for a in theirs]


def test_bench_backend_loads_the_runtime(pairs):
    from sparsify.bench.backends import SparsifyBackend

    runner = SparsifyBackend().load(pairs["mlp"][2], threads=1)
    x = models.inputs("mlp", 1)
    assert [s.name for s in runner.input_specs] == ["x"]
    assert_close(runner.run({"x": x})[0], ort_run(pairs["mlp"][1], x))


@pytest.mark.parametrize("feeds, message", [
    ({}, "input 'x' is missing"),
    ({"x": np.zeros((1, 32)), }, "dtype float64; the model expects float32"),
    ({"x": np.zeros((1, 31), np.float32)}, r"shape \[1, 31\]; the model expects \['batch', 32\]"),
    ({"x": np.zeros((32,), np.float32)}, r"shape \[32\]"),
    ({"x": [[0.0] * 32]}, "should be a numpy array"),
    ({"x": np.zeros((1, 32), np.float32), "z": np.zeros(1)}, r"unknown input\(s\) \['z'\]"),
])
def test_bad_feeds_name_the_input(pairs, feeds, message):
    with pytest.raises(DataError, match=message):
        Session(pairs["mlp"][2]).run(None, feeds)


def test_feeds_may_be_any_mapping_but_not_a_list(pairs):
    import types

    sess, x = Session(pairs["mlp"][2]), models.inputs("mlp", 1)
    np.testing.assert_array_equal(sess.run(None, types.MappingProxyType({"x": x}))[0], sess.run(None, {"x": x})[0])
    with pytest.raises(DataError, match="feeds should be a dict"):
        sess.run(None, [x])


def test_unknown_output_name_and_bad_threads(pairs):
    with pytest.raises(DataError, match=r"unknown output\(s\) \['nope'\]"):
        Session(pairs["mlp"][2]).run(["nope"], {"x": models.inputs("mlp", 1)})
    with pytest.raises(DataError, match="threads 0 should be an int"):
        Session(pairs["mlp"][2], threads=0)


@pytest.mark.parametrize("names, message", [
    (5, "output_names should be None or a list of output names, got 5"),
    ("y", "output_names should be None or a list of output names, got 'y'"),
])
def test_output_names_of_the_wrong_type_are_a_data_error(pairs, names, message):
    with pytest.raises(DataError, match=message):
        Session(pairs["mlp"][2]).run(names, {"x": models.inputs("mlp", 1)})


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
def test_array_subclasses_run_as_plain_arrays_but_masked_arrays_are_refused(pairs, tmp_path):
    sess, x = Session(pairs["mlp"][2]), models.inputs("mlp", 2)
    expected = sess.run(None, {"x": x})[0]
    np.save(tmp_path / "x.npy", x)
    for same in (np.asmatrix(x), np.load(tmp_path / "x.npy", mmap_mode="r")):
        got = sess.run(None, {"x": same})[0]
        assert type(got) is np.ndarray
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(DataError, match="input 'x' is a masked array"):
        sess.run(None, {"x": np.ma.masked_array(x, mask=x > 0)})


def test_feeds_with_keys_that_are_not_names_are_a_data_error(pairs):
    x = models.inputs("mlp", 1)
    with pytest.raises(DataError, match=r"unknown input\(s\) \['z', 0\]"):
        Session(pairs["mlp"][2]).run(None, {"x": x, "z": x, 0: x})


def test_kernel_errors_are_wrapped_with_the_node_name(pairs):
    sess = Session(pairs["mlp"][2])
    step = next(s for s in sess.steps if s.kind == "sparse")
    with pytest.raises(KernelInputError, match=rf"SparseLinear node '{step.nodes[0]}'.*dtype float64"):
        step.run([np.zeros((1, 32))])


def test_gemm_without_transB_and_row_bias_and_float64(tmp_path):
    """Gemm transB=0 (CSR holds W.T), bias C of shape (1, out), and a float64 model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from sparsify.sparse_ops import reference_evaluator
    from sparsify.passes.csr import CsrPass

    for dtype, elem in ((np.float32, TensorProto.FLOAT), (np.float64, TensorProto.DOUBLE)):
        rng = np.random.default_rng(0)
        w = (rng.standard_normal((6, 4)) * (rng.random((6, 4)) < 0.4)).astype(dtype)  # (in, out)
        c = rng.standard_normal((1, 4)).astype(dtype)
        graph = helper.make_graph(
            [helper.make_node("Gemm", ["x", "w", "c"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "g",
            [helper.make_tensor_value_info("x", elem, ["n", 6])], [helper.make_tensor_value_info("y", elem, ["n", 4])],
            [numpy_helper.from_array(w, "w"), numpy_helper.from_array(c, "c")])
        dense = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        result = CsrPass(density_threshold=1.0).call(dense)
        assert result.plan.decisions[0].transpose and result.plan.decisions[0].activation == "relu"
        path = tmp_path / f"g_{elem}.onnx"
        onnx.save(result.model, str(path))
        x = rng.standard_normal((3, 6)).astype(dtype)
        expected = np.maximum(x @ w + c, 0)
        assert_close(Session(path).run(None, {"x": x})[0], expected)
        assert_close(reference_evaluator(result.model).run(None, {"x": x})[0], expected)


@pytest.mark.parametrize("env, expected", [({}, ["PASSIVE", "10000"]),
                                           ({"OMP_WAIT_POLICY": "ACTIVE"}, ["ACTIVE", "10000"]),
                                           ({"GOMP_SPINCOUNT": "0"}, ["PASSIVE", "0"])])
def test_runtime_import_defaults_openmp_waiting_without_overriding_the_user(env, expected):
    import os
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    environ.update(env)
    code = ("import os, sys, sparsify.runtime; "
            "print(os.environ['OMP_WAIT_POLICY'], os.environ['GOMP_SPINCOUNT'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, check=True)
    assert out.stdout.split() == expected + ["False"]  # and torch (which loads libgomp) was not imported


@pytest.mark.usefixtures("no_model_size_floor")
def test_file_without_value_info_still_types_the_ort_segments(tmp_path):
    import onnx

    # sparse -> dense Gemm + Relu in ORT -> sparse: the ORT segment's output is intermediate,
    # so its type must come from shape inference through the sparse op before it.
    _, dense, sparse, plan = sparse_pair(tmp_path, "mlp", threshold=None, densities=(0.1, 1.0, 0.1))
    model = onnx.load(str(sparse))
    del model.graph.value_info[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    sess = Session(tmp_path / "bare.onnx")
    assert [s.kind for s in sess.steps] == ["sparse", "ort", "sparse"]
    x = models.inputs("mlp", 2)
    assert_close(sess.run(None, {"x": x})[0], ort_run(dense, x))


@pytest.mark.parametrize("budget", [0, 1 << 40])
def test_linear_layers_share_one_batch1_cache_budget(pairs, monkeypatch, budget):
    from sparsify.kernels import SparseLinear, ell
    _, dense, sparse, _ = pairs["mlp"]
    monkeypatch.setattr(ell, "cache_budget", lambda: budget)
    monkeypatch.setattr(ell, "MIN_COMPACT_SAVING", 0.0)
    for name, geo in list(ell.GEOMETRIES.items()):  # the layout at any fill
        monkeypatch.setitem(ell.GEOMETRIES, name, geo._replace(min_fill=0.0))
    sess = Session(sparse, threads=2)
    linears = [layer.kernel for layer in sess.layers.values() if isinstance(layer.kernel, SparseLinear)]
    assert linears
    if ell.AVAILABLE:  # no budget: every layer on the compact form; ample: all padded
        assert all(k.ell is not None and k.ell.compact == (budget == 0) for k in linears)
        form = "compact" if budget == 0 else "padded"
    else:
        assert all(k.ell is None for k in linears)
        form = "batch 1: CSR"
    from sparsify.kernels import isa
    head = sess.describe()[0]
    assert head.startswith(f"kernels: {isa.VARIANT} kernels, compiled for ") and "2 thread(s), Numba " in head
    sparse_lines = [line for line in sess.describe() if line.startswith("sparse:")]
    assert len(sparse_lines) == len(linears) and all(form in line for line in sparse_lines)
    x = models.inputs("mlp", 1, seed=3)
    assert_close(sess.run(None, {"x": x})[0], ort_run(dense, x))


def test_batch1_csr_keeps_no_second_copy_and_gives_the_same_outputs(pairs):
    from sparsify.kernels import SparseLinear
    _, dense, sparse, _ = pairs["mlp"]
    lean = Session(sparse, threads=2, batch1="csr")
    linears = [layer.kernel for layer in lean.layers.values() if isinstance(layer.kernel, SparseLinear)]
    assert linears and all(k.ell is None for k in linears)
    assert all("batch 1: CSR" in line for line in lean.describe() if line.startswith("sparse:"))
    for batch in (1, 3):
        x = models.inputs("mlp", batch, seed=batch)
        assert_close(lean.run(None, {"x": x})[0], ort_run(dense, x))
        np.testing.assert_allclose(lean.run(None, {"x": x})[0], Session(sparse).run(None, {"x": x})[0],
                                   rtol=0, atol=1e-5)
    with pytest.raises(DataError, match=r"batch1 'ell' should be one of \('auto', 'csr'\)"):
        Session(sparse, batch1="ell")


def test_residual_add_and_relu_share_one_buffer(pairs, monkeypatch):
    from sparsify.runtime import glue

    _, dense, sparse, _ = pairs["cnn"]
    made = []
    original = glue.compile_with_relu
    monkeypatch.setattr(glue, "compile_with_relu", lambda node, consts: made.append(node.op_type) or original(node, consts))
    sess = Session(sparse, threads=1)
    assert made == ["Add"]  # the CNN's residual Add + ReLU
    for batch in (1, 2):
        x = models.inputs("cnn", batch, seed=batch)
        assert_close(sess.run(None, {"x": x})[0], ort_run(dense, x))


def test_values_are_dropped_after_their_last_reader():
    from sparsify.runtime.partition import Step
    from sparsify.runtime.session import dead_after

    def step(ins, outs):
        return Step("numpy", ins, outs, lambda xs: xs, ["n"])

    steps = [step(["x"], ["a", "unused"]),  # "unused": written, never read
             step(["a"], ["b"]),
             step(["a", "b"], ["y", "c"]),  # "y" a graph output, read again below
             step(["y", "c"], ["z"])]
    dead = dead_after(steps, ["y", "z"])
    assert [sorted(d) for d in dead] == [["unused", "x"], [], ["a", "b"], ["c"]]


@pytest.mark.parametrize("tokens, keeps_layout", [(6, False), (4, True), (None, True)])
def test_linear_fed_more_rows_than_batch1_kernels_take_builds_no_batch1_layout(tmp_path, monkeypatch, tokens,
                                                                               keeps_layout):
    # A transformer's Linear sees batch x tokens rows per call: with the tokens fixed above
    # ELL_ROWS_MAX_BATCH its batch-1 layout could never run, whatever the (open) batch.
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from sparsify.kernels import SparseLinear, ell
    from sparsify.kernels.spmm import ELL_ROWS_MAX_BATCH
    from sparsify.passes.csr import CsrPass
    assert tokens is None or (tokens > ELL_ROWS_MAX_BATCH) != keeps_layout
    for name, geo in list(ell.GEOMETRIES.items()):  # the layout at any fill
        monkeypatch.setitem(ell.GEOMETRIES, name, geo._replace(min_fill=0.0))
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 24)).astype(np.float32) * (rng.random((16, 24)) < 0.2)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", tokens or "tokens", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", tokens or "tokens", 24])],
        [numpy_helper.from_array(w, "w")])
    dense = tmp_path / "dense.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(dense))
    sparse = tmp_path / "sparse.onnx"
    onnx.save(CsrPass(density_threshold=1.0).call(onnx.load(str(dense))).model, str(sparse))
    sess = Session(sparse, threads=2)
    (layer,) = [layer.kernel for layer in sess.layers.values() if isinstance(layer.kernel, SparseLinear)]
    assert (layer.ell is not None) == (keeps_layout and ell.AVAILABLE)
    for batch in (1, 3):
        x = rng.standard_normal((batch, tokens or 2, 16)).astype(np.float32)
        assert_close(sess.run(None, {"x": x})[0], ort_run(dense, x))
