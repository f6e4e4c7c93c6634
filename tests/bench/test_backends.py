"""Backends: ORT runs a model, auto-pick, the sparse runtime runs a converted file, torch via registration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from sparsify.bench import backends
from sparsify.bench.backends import (
    InputSpec,
    OrtBackend,
    TorchBackend,
    factory_reference,
    get_backend,
    pick_backend,
    register_backend,
    resolve_factory,
)
from sparsify.bench.inputs import make_feeds
from sparsify.bench.modelfile import ModelFile, check_model_path
from sparsify.errors import ModelError
from sparsify.passes.csr import CsrPass
from tests.bench.conftest import matmul_weight
from tests.helpers import assert_close


def test_ort_runner_specs_and_result(matmul_onnx: Path):
    runner = OrtBackend().load(matmul_onnx, threads=1)
    (spec,) = runner.input_specs
    assert spec.name == "x" and spec.shape == ("N", 8) and spec.dtype == "float32"
    feeds = make_feeds(runner.input_specs, 3)
    (y,) = runner.run(feeds)
    assert_close(y, feeds["x"] @ matmul_weight())


def test_auto_pick(matmul_onnx: Path, sparse_onnx: Path, tmp_path: Path):
    assert pick_backend(check_model_path(matmul_onnx)) == "ort"
    assert pick_backend(check_model_path(sparse_onnx)) == "sparsify"
    assert pick_backend(ModelFile(tmp_path, "run")) == "torch"
    assert pick_backend(check_model_path(sparse_onnx), "ort") == "ort"  # overridable
    with pytest.raises(ValueError, match="'nope' is not registered"):
        pick_backend(check_model_path(matmul_onnx), "nope")


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x, scale):
        return self.fc(x) * scale, x.sum(dim=1)


def test_torch_backend_via_registration(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    module = Tiny()
    seen = []

    def loader(path):
        seen.append(path)
        return module, [("x", (None, 8), torch.float32), InputSpec("scale", (1, 1), np.dtype(np.float32))]

    register_backend("torch", lambda: TorchBackend(loader))
    runner = get_backend("torch").load(tmp_path, threads=1)
    assert seen == [tmp_path] and torch.get_num_threads() == 1
    assert [s.dtype for s in runner.input_specs] == ["float32", "float32"]
    feeds = make_feeds(runner.input_specs, 5)
    y, s = runner.run(feeds)
    with torch.no_grad():
        expected = module.fc(torch.from_numpy(feeds["x"])).numpy() * feeds["scale"]
    assert_close(y, expected)
    assert_close(s, feeds["x"].sum(axis=1))
    assert factory_reference("torch") is None  # a lambda cannot be re-created in a fresh process


def test_torch_loader_returning_the_wrong_thing(tmp_path: Path):
    with pytest.raises(ModelError, match="expected \\(module, input_specs\\)"):
        TorchBackend(lambda p: "oops").load(tmp_path, 1)


def test_factory_references_resolve():
    assert factory_reference("ort") == "sparsify.bench.backends:OrtBackend"
    assert resolve_factory(factory_reference("torch")) is backends.default_torch_backend
    with pytest.raises(ValueError, match="callable"):
        register_backend("x", 3)


def test_default_torch_backend_loads_a_run_directory(tmp_path: Path):
    """Integration with the run format: a built-in model saved as a run, benchmarked in torch."""
    from sparsify.api import ModelSource, open_model
    from sparsify.artifact import save_run
    from sparsify.bench import bench

    run_dir = save_run(open_model(ModelSource("digits-mlp")), tmp_path / "run")
    result = bench([run_dir], batches=(4,), warmup=1, repeat=2, memory=False, progress=False)
    (info,) = result.models
    assert (info.kind, info.backend) == ("run", "torch")
    assert info.input_specs[0]["shape"] == [1, 1, 8, 8] and info.input_specs[0]["dtype"] == "float32"
    assert info.file_bytes > 1000 and result.records[0].stats.n == 2


def test_sparsify_backend_runs_the_runtime_session(matmul_onnx: Path, tmp_path: Path):
    """The sparsify backend runs a converted file through the runtime Session: ORT's outputs."""
    converted = CsrPass(density_threshold=1.0).call(onnx.load(matmul_onnx))
    assert converted.modified
    sparse_path = tmp_path / "converted.onnx"
    onnx.save(converted.model, sparse_path)
    runner = get_backend("sparsify").load(sparse_path, threads=2)
    reference = get_backend("ort").load(matmul_onnx, threads=1)
    assert runner.input_specs == reference.input_specs
    feeds = make_feeds(runner.input_specs, 3)
    (y,) = runner.run(feeds)
    (expected,) = reference.run(feeds)
    assert_close(y, expected)
