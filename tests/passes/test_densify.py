"""Lowering ai.sparsify ops back to standard ONNX: the same model, runnable in plain ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from sparsify.errors import ModelFileError
from sparsify.export.onnx_export import export_onnx
from sparsify.passes.csr import CsrPass
from sparsify.passes.densify import densify, sparse_node_labels
from sparsify.sparse_ops import DOMAIN
from tests import models
from tests.helpers import assert_close


def ort_outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def sparse_and_dense(kind: str, tmp_path, **kwargs) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    _, path = models.export(kind, tmp_path / f"{kind}.onnx", **kwargs)
    dense = onnx.load(str(path))
    return CsrPass(density_threshold=1.0).call(dense).model, dense


@pytest.mark.parametrize("kind", ["mlp", "gelu", "cnn", "block", "block_cnn"])
def test_lowered_model_equals_the_dense_export_in_ort(kind, tmp_path):
    sparse, dense = sparse_and_dense(kind, tmp_path)
    assert sparse_node_labels(sparse)
    lowered = densify(sparse)
    onnx.checker.check_model(lowered, full_check=True)
    assert not sparse_node_labels(lowered)
    assert not any(o.domain == DOMAIN for o in lowered.opset_import)
    assert not any(".csr_" in i.name for i in lowered.graph.initializer)
    for batch in (1, 3):
        x = models.inputs(kind, batch, seed=batch)
        assert_close(ort_outputs(lowered, x), ort_outputs(dense, x), atol=1e-5)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_lowered_weights_are_the_dense_weights_exactly(kind, tmp_path):
    sparse, dense = sparse_and_dense(kind, tmp_path)
    before = {i.name: numpy_helper.to_array(i) for i in dense.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in densify(sparse).graph.initializer}
    weights = [n for n in before if n.endswith(".weight")]
    assert weights
    for name in weights:
        w = after[name]
        # A MatMul weight is stored [in, out]; the dense export may hold it as Gemm's [out, in].
        expected = before[name] if before[name].shape == w.shape else before[name].T
        np.testing.assert_array_equal(w, expected)


def test_grouped_dilated_and_strided_convs(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2), torch.nn.ReLU(),
                                 torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),
                                 torch.nn.Conv2d(8, 6, 1)).eval()
    for layer in module:
        if isinstance(layer, torch.nn.Conv2d):
            models.prune_(layer, 0.3, 1)
    path = tmp_path / "g.onnx"
    export_onnx(module, (torch.randn(1, 4, 9, 9),), path, ["x"], ["y"])
    dense = onnx.load(str(path))
    sparse = CsrPass(density_threshold=1.0).call(dense).model
    lowered = densify(sparse)
    assert [n.op_type for n in lowered.graph.node].count("Conv") == 3
    x = np.random.default_rng(0).standard_normal((2, 4, 9, 9)).astype(np.float32)
    assert_close(ort_outputs(lowered, x), ort_outputs(dense, x), atol=1e-5)


def test_a_model_without_sparse_ops_comes_back_unchanged(tmp_path):
    _, path = models.export("mlp", tmp_path / "m.onnx")
    dense = onnx.load(str(path))
    assert densify(dense).SerializeToString() == dense.SerializeToString()


def test_metadata_and_other_nodes_stay(tmp_path):
    sparse, _ = sparse_and_dense("cnn", tmp_path)
    onnx.helper.set_model_props(sparse, {"sparsify.inputs": "[]"})
    lowered = densify(sparse)
    assert {p.key: p.value for p in lowered.metadata_props} == {"sparsify.inputs": "[]"}
    kept = [n.name for n in sparse.graph.node if n.domain != DOMAIN]
    assert kept and set(kept) <= {n.name for n in lowered.graph.node}


def test_a_corrupt_csr_is_refused_naming_the_node(tmp_path):
    sparse, _ = sparse_and_dense("mlp", tmp_path)
    node = next(n for n in sparse.graph.node if n.domain == DOMAIN)
    init = next(i for i in sparse.graph.initializer if i.name == node.input[2])
    bad = numpy_helper.to_array(init).copy()
    bad[0] = 10_000
    init.CopyFrom(numpy_helper.from_array(bad, init.name))
    with pytest.raises(ModelFileError, match=node.name):
        densify(sparse, where="m.onnx")
