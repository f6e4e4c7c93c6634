"""``export_model(..., mode="sparse")``: conversion summary, verification, nothing written on failure."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from sparsify.api import export_model, load_run, reference_module
from sparsify.cli import main
from sparsify.errors import ExportError, VerificationError
from sparsify.export import sparse_export
from sparsify.sparse_ops import DOMAIN, reference_evaluator
from sparsify.runtime import Session
from tests.helpers import assert_close


@pytest.fixture(scope="module")
def forced(digits_cnn_run, tmp_path_factory):
    """The pruned digits-cnn exported sparse with every layer converted."""
    out = tmp_path_factory.mktemp("sparse") / "cnn_sparse.onnx"
    return out, *export_model(digits_cnn_run / "pruned", out, mode="sparse", density_threshold=1.0)


def test_forced_export_converts_every_layer_and_verifies(forced):
    out, path, report, summary = forced
    assert path == out and out.is_file()
    assert report.ok and {r.input_set for r in report.rows} == {"random b1", "random b3", "data b16"}
    assert report.max_abs <= 1e-5
    assert len(summary["converted"]) == 7 and summary["skipped"] == []
    assert summary["runtime_vs_ort"]["ok"] and summary["runtime_vs_ort"]["max_abs"] <= 1e-5
    # 80% pruned: float32 values + int16 indices (+ row pointers) ≈ 6 bytes per nonzero.
    assert 6.0 <= summary["bytes_per_nonzero"] < 6.5
    assert summary["sparse_bytes"] < 0.4 * summary["dense_bytes"]
    assert summary["bytes"] == out.stat().st_size == summary["sparse_bytes"]
    assert any("bytes per nonzero" in line for line in summary["lines"])
    assert any("converted: Conv" in line and "block2.conv1.weight" in line for line in summary["lines"])
    model = onnx.load(str(out))
    assert sum(n.domain == DOMAIN for n in model.graph.node) == 7


def test_exported_file_runs_in_runtime_and_reference_evaluator_like_torch(forced, digits_cnn_run):
    out = forced[0]
    reference = reference_module(load_run(digits_cnn_run / "pruned"))
    x = np.random.default_rng(3).standard_normal((4, 1, 8, 8)).astype(np.float32)
    import torch
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    session = Session(out)
    name = session.get_inputs()[0].name
    assert_close(session.run(None, {name: x})[0], expected)
    assert_close(reference_evaluator(str(out)).run(None, {name: x})[0], expected)


def test_default_thresholds_record_reasons(digits_cnn_run, tmp_path):
    out = tmp_path / "m.onnx"
    _, report, summary = export_model(digits_cnn_run / "pruned", out, mode="sparse")
    assert report.ok
    decisions = summary["converted"] + summary["skipped"]
    assert len(decisions) == 7
    for d in summary["skipped"]:
        by_density = "not below threshold" in d["reason"] and "for batch 1" in d["reason"]
        by_size = "fewer than the" in d["reason"] and d["op_type"] == "Conv"  # small convs
        assert by_density or by_size, d["reason"]
    for d in summary["converted"]:
        assert d["density"] < d["threshold"]


def test_runtime_mismatch_against_ort_fails_and_writes_nothing(digits_cnn_run, tmp_path, monkeypatch):
    real_run = Session.run
    monkeypatch.setattr(Session, "run", lambda self, names, feeds: [y + 1e-3 for y in real_run(self, names, feeds)])
    out = tmp_path / "m.onnx"
    with pytest.raises(VerificationError, match="the sparse runtime does not match the dense export in ONNX Runtime"):
        export_model(digits_cnn_run / "pruned", out, mode="sparse", density_threshold=1.0)
    assert list(tmp_path.iterdir()) == []


def test_runtime_vs_ort_check_uses_the_users_tolerances(digits_cnn_run, tmp_path, monkeypatch, capsys):
    real_run = Session.run
    monkeypatch.setattr(Session, "run", lambda self, names, feeds: [y + 1e-3 for y in real_run(self, names, feeds)])
    out = tmp_path / "m.onnx"
    args = ["export", str(digits_cnn_run / "pruned"), "--mode", "sparse", "--density-threshold", "1",
            "--atol", "0.01", "--rtol", "0.001", "-o", str(out)]
    assert main(args) == 0  # an offset of 1e-3 is within atol 0.01, far outside the default 1e-5
    text = capsys.readouterr().out
    assert "verify the sparse runtime against the dense export in ONNX Runtime (atol 0.01, rtol 0.001)" in text
    assert "(sparse) against the masked torch model (atol 0.01, rtol 0.001)" in text
    assert out.is_file()


def test_mismatch_against_torch_fails_in_the_pipeline_and_writes_nothing(digits_cnn_run, tmp_path, monkeypatch):
    real_run = Session.run
    monkeypatch.setattr(Session, "run", lambda self, names, feeds: [y * 1.01 for y in real_run(self, names, feeds)])
    real_verify = sparse_export.verify

    def lenient(*args, **kwargs):  # let the runtime-vs-ORT check pass to reach the pipeline's check
        return real_verify(*args, **{**kwargs, "atol": 1e9, "rtol": 1e9})

    monkeypatch.setattr(sparse_export, "verify", lenient)
    out = tmp_path / "m.onnx"
    with pytest.raises(VerificationError, match=r"m.onnx \(sparse\) does not match"):
        export_model(digits_cnn_run / "pruned", out, mode="sparse", density_threshold=1.0)
    assert list(tmp_path.iterdir()) == []


def test_unknown_option_is_rejected(digits_cnn_run, tmp_path):
    with pytest.raises(ExportError, match=r"unknown sparse export option\(s\) \['bogus'\]"):
        export_model(digits_cnn_run / "pruned", tmp_path / "m.onnx", mode="sparse", bogus=1)
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_sparse_then_inspect_and_run(forced, tmp_path, capsys):
    out = forced[0]
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "block2.conv1.weight" in text and "SparseConv" in text
    x = np.zeros((2, 1, 8, 8), np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(out), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    assert np.load(tmp_path / "y.npy").shape == (2, 10)


def test_inspect_rows_for_sparse_ops_match_the_summary(forced):
    from sparsify.inspect_model import inspect_onnx

    out, _, _, summary = forced
    result = inspect_onnx(out)
    csr_rows = [r for r in result.rows if r.pattern.startswith("csr")]
    assert sorted(r.pattern for r in csr_rows) == ["csr SparseConv"] * 6 + ["csr SparseLinear"]
    assert sum(r.nonzeros for r in csr_rows) == summary["nonzeros"]
    by_name = {r.tensor: r for r in csr_rows}
    assert by_name["block2.conv1.weight"].shape == (64, 64, 3, 3) and by_name["block2.conv1.weight"].params == 36864
    assert by_name["block2.conv1.weight"].macs == 36864 * 16  # 4x4 output map at batch 1
    assert not any(".csr_" in r.tensor for r in result.rows)
    assert any("bytes/nonzero" in n for n in result.notes)
    from sparsify.kernels import isa
    assert any(f"runs these ops on its {isa.VARIANT} kernels, compiled for" in n for n in result.notes)
