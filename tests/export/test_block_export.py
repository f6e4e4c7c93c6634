"""Block-sparse export: block shapes found from the weights, BSR arrays in the file, reference op and runtime exact."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from sparsify.sparse_ops import LINEAR_OP, reference_evaluator
from sparsify.inspect_model import inspect_onnx
from sparsify.passes.blocks import block_candidates, fixed_rule_block
from sparsify.passes.csr_arrays import stored_arrays
from sparsify.passes.csr import CsrPass, plan_csr
from sparsify.runtime import Session, calibrate
from tests import models
from tests.runtime.test_calibration import _mlp


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _blocky(rng, rows, cols, block, density):
    r, c = block
    keep = rng.random((rows // r, cols // c)) < density
    return (rng.standard_normal((rows, cols)) * np.kron(keep, np.ones(block))).astype(np.float32)


def test_block_candidates_match_every_shape_checked_on_its_own(rng):
    """The shortcut (a shape is skipped once a shape tiling it failed) gives what checking each
    shape directly gives, on weights blocked, thinned inside their blocks, or unstructured."""
    from sparsify.passes.blocks import BLOCK_MAX_DENSITY, BLOCK_MIN_FILL, BLOCK_SHAPES

    def direct(w):
        nz = w != 0
        (rows, cols), nnz = nz.shape, int(nz.sum())
        if nnz == 0 or nnz > BLOCK_MAX_DENSITY * nz.size:
            return []
        return [(r, c) for r, c in BLOCK_SHAPES if not rows % r and not cols % c
                and nnz >= BLOCK_MIN_FILL * r * c * int(nz.reshape(rows // r, r, cols // c, c).any(axis=(1, 3)).sum())]

    sizes = [1, 2, 3, 4, 6, 8, 12, 16, 32, 48]
    found = 0
    for _ in range(400):
        rows, cols = (int(rng.choice(sizes)) for _ in range(2))
        r, c = BLOCK_SHAPES[rng.integers(len(BLOCK_SHAPES))]
        if rows % r == 0 and cols % c == 0 and rng.random() < 0.8:
            w = _blocky(rng, rows, cols, (r, c), float(rng.choice([0.05, 0.2, 0.5])))
            w *= rng.random(w.shape) < rng.choice([1.0, 0.9, 0.7])  # some zeros inside blocks
        else:
            w = np.where(rng.random((rows, cols)) < rng.choice([0.05, 0.3]), 1.0, 0.0).astype(np.float32)
        assert block_candidates(w) == direct(w), (rows, cols, (r, c))
        found += bool(direct(w))
    assert found > 50  # the cases exercise shapes that fit, not only ones that fail


@pytest.mark.parametrize("block, expect", [
    ((4, 1), [(4, 1), (2, 1)]),
    ((1, 4), [(1, 4), (1, 2)]),
    ((16, 1), [(16, 1), (8, 1), (4, 1), (2, 1)]),
    ((4, 4), [(4, 4), (4, 2), (2, 4), (4, 1), (2, 2), (1, 4), (2, 1), (1, 2)]),
])
def test_block_shapes_are_found_from_the_zeros(rng, block, expect):
    w = _blocky(rng, 64, 96, block, 0.1)
    assert block_candidates(w) == expect
    assert fixed_rule_block(expect) == block and fixed_rule_block([]) is None


def test_unstructured_dense_and_empty_weights_have_no_block_shape(rng):
    w = rng.standard_normal((64, 64)).astype(np.float32)
    assert block_candidates(w) == []  # dense
    assert block_candidates(np.where(rng.random(w.shape) < 0.1, w, 0)) == []  # unstructured 90%
    assert block_candidates(np.zeros_like(w)) == []
    assert block_candidates(_blocky(rng, 64, 64, (4, 1), 0.6)) == []  # denser than BLOCK_MAX_DENSITY
    assert block_candidates(_blocky(rng, 60, 64, (4, 1), 0.1)[:, :62]) == [(4, 1), (2, 1)]  # 1xC do not divide 62


def test_stored_bsr_arrays_round_trip(rng):
    w = _blocky(rng, 32, 24, (4, 2), 0.3)
    data, bcol, indptr = stored_arrays(w, (4, 2))
    from scipy.sparse import bsr_matrix
    assert data.shape[1:] == (4, 2) and indptr.shape == (9,)
    assert np.array_equal(bsr_matrix((data, bcol, indptr), shape=w.shape).toarray(), w)


@pytest.fixture(scope="module")
def block_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("block")
    module, dense = models.export("block", root / "block.onnx")
    result = CsrPass(density_threshold=1.0).call(onnx.load(str(dense)))
    sparse = root / "block_sparse.onnx"
    onnx.save(result.model, str(sparse))
    return module, dense, sparse, result.plan


def test_block_weights_are_stored_as_bsr_and_every_path_equals_dense(block_pair):
    _, dense, sparse, plan = block_pair
    by = {d.source or d.weight: d for d in plan.decisions}
    assert by["fc1.weight"].blocksize == (4, 1) and by["fc2.weight"].blocksize == (16, 1)
    assert by["fc3.weight"].blocksize == (1, 4)
    assert by["head.weight"].blocksize is None  # dense
    assert "4x1 blocks" in by["fc1.weight"].line() and by["fc1.weight"].to_dict()["blocksize"] == [4, 1]
    model = onnx.load(str(sparse))
    onnx.checker.check_model(model, full_check=True)
    nodes = {n.name: n for n in model.graph.node if n.op_type == LINEAR_OP}
    blocks = {n.input[1]: [list(a.ints) for a in n.attribute if a.name == "blocksize"] for n in nodes.values()}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert blocks["fc1.weight.csr_data"] == [[4, 1]] and inits["fc1.weight.csr_data"].shape[1:] == (4, 1)
    assert blocks["fc2.weight.csr_data"] == [[16, 1]] and inits["fc2.weight.csr_data"].shape[1:] == (16, 1)
    assert blocks["fc3.weight.csr_data"] == [[1, 4]] and inits["fc3.weight.csr_data"].shape[1:] == (1, 4)
    assert blocks["head.weight.csr_data"] == [] and inits["head.weight.csr_data"].ndim == 1
    sess = Session(sparse)
    steps = "\n".join(sess.describe())
    assert "BSR 4x1" in steps and "BSR 16x1" in steps and "BSR 1x4" in steps, steps
    dense_sess = ort.InferenceSession(str(dense), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 40):
        x = models.inputs("block", batch, seed=batch)
        expected = dense_sess.run(None, {"x": x})[0]
        for got in (sess.run(None, {"x": x})[0], reference_evaluator(model).run(None, {"x": x})[0]):
            assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-5


def test_inspect_names_the_block_layout(block_pair):
    rows = {r.tensor: r for r in inspect_onnx(block_pair[2]).rows}
    assert rows["fc1.weight"].pattern == "bsr 4x1 SparseLinear"
    assert rows["fc3.weight"].pattern == "bsr 1x4 SparseLinear"
    assert rows["head.weight"].pattern == "csr SparseLinear"
    w = block_pair[0].fc1.weight.detach().numpy()
    assert rows["fc1.weight"].nonzeros == np.count_nonzero(w)
    notes = "\n".join(inspect_onnx(block_pair[2]).notes)
    assert "BSR of 4x1 blocks" in notes


def test_conv_blocks_are_stored_as_bsr_and_run_by_the_block_conv_kernels(tmp_path):
    _, dense = models.export("block_cnn", tmp_path / "block_cnn.onnx")
    result = CsrPass(density_threshold=1.0).call(onnx.load(str(dense)))
    by = {d.source or d.weight: d for d in result.plan.decisions}
    assert by["c1.weight"].blocksize == (4, 1) and by["c2.weight"].blocksize == (16, 1)
    assert by["c3.weight"].blocksize is None  # 1x4 blocks: no conv block kernel, stored as a CSR
    assert by["c4.weight"].blocksize == (8, 1)
    sparse = tmp_path / "block_cnn_sparse.onnx"
    onnx.save(result.model, str(sparse))
    model = onnx.load(str(sparse))
    onnx.checker.check_model(model, full_check=True)
    convs = {n.input[1]: [list(a.ints) for a in n.attribute if a.name == "blocksize"]
             for n in model.graph.node if n.op_type == "SparseConv"}
    assert convs == {"c1.weight.csr_data": [[4, 1]], "c2.weight.csr_data": [[16, 1]], "c3.weight.csr_data": [],
                     "c4.weight.csr_data": [[8, 1]]}
    steps = "\n".join(Session(sparse).describe())
    assert "BSR 4x1" in steps and "BSR 16x1" in steps and "BSR 8x1" in steps and "(CSR)" in steps, steps
    dense_sess = ort.InferenceSession(str(dense), providers=["CPUExecutionProvider"])
    for threads in (1, 2):
        sess = Session(sparse, threads=threads)
        for batch in (1, 3):
            x = models.inputs("block_cnn", batch, seed=batch)
            expected = dense_sess.run(None, {"x": x})[0]
            for got in (sess.run(None, {"x": x})[0], reference_evaluator(model).run(None, {"x": x})[0]):
                assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-5


def test_calibration_stores_the_fastest_layout(tmp_path, monkeypatch):
    monkeypatch.setenv(calibrate.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(calibrate.ENV, "on")
    rng = np.random.default_rng(3)
    model = _mlp(rng, [(64, 48), (48, 32)], [1.0, 1.0])
    for init, block in zip(model.graph.initializer, ((4, 1), (1, 4))):
        w = _blocky(rng, init.dims[0], init.dims[1], block, 0.15)
        init.CopyFrom(numpy_helper.from_array(w, init.name))
    timed = []

    def linear(self, w, rows, blocksize=None):
        timed.append((w.shape, blocksize))
        # Sparse time: the CSR 1.0, 2x1 / 1x2 0.5, the 4-blocks 0.4 for the first layer; for the
        # second every block shape loses to the CSR.
        sparse = 1.0 if blocksize is None else (0.4 if 4 in blocksize else 0.5) if w.shape[0] == 48 else 1.5
        return calibrate.Measurement(sparse, 3.0, 0.01)

    monkeypatch.setattr(calibrate.Calibrator, "linear", linear)
    first, second = plan_csr(model).decisions
    assert timed == [((48, 64), None), ((48, 64), (4, 1)), ((48, 64), (2, 1)),
                     ((32, 48), None), ((32, 48), (1, 4)), ((32, 48), (1, 2))]
    assert first.convert and first.blocksize == (4, 1)
    assert "layouts timed: CSR 1.0000 ms, 4x1 blocks 0.4000 ms, 2x1 blocks 0.5000 ms" in first.reason
    assert second.convert and second.blocksize is None


def test_calibration_times_conv_blocks_and_stores_the_fastest(tmp_path, monkeypatch):
    monkeypatch.setenv(calibrate.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(calibrate.ENV, "on")
    _, dense = models.export("block_cnn", tmp_path / "block_cnn.onnx")
    timed = []

    def conv(self, w, x_shape, strides, pads, dilations, group, blocksize=None):
        timed.append((w.shape[0], blocksize))
        # The CSR 1.0 ms, 2x1 blocks 0.5, the larger blocks 0.4 (c4's 8x1 loses: 0.9).
        sparse = 1.0 if blocksize is None else 0.5 if blocksize == (2, 1) else 0.9 if blocksize == (8, 1) else 0.4
        return calibrate.Measurement(sparse, 3.0, 0.01)

    monkeypatch.setattr(calibrate.Calibrator, "conv", conv)
    monkeypatch.setattr(calibrate.Calibrator, "linear",
                        lambda self, w, rows, blocksize=None: calibrate.Measurement(2.0, 1.0, 0.01))
    by = {d.source or d.weight: d for d in plan_csr(onnx.load(str(dense))).decisions}
    assert timed == [(16, None), (16, (4, 1)), (16, (2, 1)),
                     (16, None), (16, (16, 1)), (16, (8, 1)), (16, (4, 1)),
                     (16, None),  # 1x4 blocks: the CSR only
                     (24, None), (24, (8, 1)), (24, (4, 1)), (24, (2, 1))]
    assert by["c1.weight"].blocksize == (4, 1) and by["c2.weight"].blocksize == (16, 1)
    assert by["c3.weight"].blocksize is None and by["c4.weight"].blocksize == (4, 1)
    assert "layouts timed: CSR 1.0000 ms, 4x1 blocks 0.4000 ms, 2x1 blocks 0.5000 ms" in by["c1.weight"].reason


def test_a_layer_kept_dense_carries_no_block_shape(tmp_path, monkeypatch):
    monkeypatch.setenv(calibrate.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(calibrate.ENV, "on")
    rng = np.random.default_rng(4)
    model = _mlp(rng, [(64, 48)], [1.0])
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(_blocky(rng, 48, 64, (4, 1), 0.2), "w0"))
    monkeypatch.setattr(calibrate.Calibrator, "linear",
                        lambda self, w, rows, blocksize=None: calibrate.Measurement(2.0, 1.0, 0.01))
    (d,) = plan_csr(model).decisions
    assert not d.convert and d.blocksize is None and d.to_dict()["blocksize"] is None


def test_a_block_shape_without_kernels_runs_as_its_csr(rng, tmp_path):
    from onnx import TensorProto, helper

    from sparsify.sparse_ops import make_node

    w = _blocky(rng, 12, 18, (3, 3), 0.4)
    data, bcol, indptr = stored_arrays(w, (3, 3))
    inits = [numpy_helper.from_array(data, "d"), numpy_helper.from_array(bcol.astype(np.int32), "i"),
             numpy_helper.from_array(indptr.astype(np.int32), "p")]
    node = make_node(LINEAR_OP, "x", ("d", "i", "p"), None, "y", "fc", (12, 18), "relu", "w", (12, 18), "Gemm",
                     (3, 3))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 18])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ai.sparsify", 1)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    sess = Session(tmp_path / "m.onnx")
    assert "BSR" not in "\n".join(sess.describe())
    x = rng.standard_normal((5, 18)).astype(np.float32)
    expected = np.maximum(x.astype(np.float64) @ w.T.astype(np.float64), 0)
    for got in (sess.run(None, {"x": x})[0], reference_evaluator(model).run(None, {"x": x})[0]):
        assert np.abs(got - expected).max() <= 1e-5
