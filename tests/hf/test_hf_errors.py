"""A failure injected into each step of an HF model's pipeline (capture, planning, export,
verification, benchmarking) reaches the user as one paragraph naming the step, with exit 2."""

from __future__ import annotations

import pytest
import torch

from sparsify.cli import main


def _boom(*args, **kwargs):
    raise RuntimeError("injected failure")


@pytest.fixture(scope="module")
def gpt2_run(hf_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("errs")
    assert main(["prune", f"hf:{hf_dirs('gpt2')}", "--hf-task", "sequence-classification", "--input-shape", "1,8",
                 "--structure", "channel", "--ratio", "0.25", "-o", str(root / "run")]) == 0
    assert main(["export", str(root / "run"), "-o", str(root / "m.onnx")]) == 0
    return root


def _one_paragraph(capsys, code, *parts):
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for p in parts:
        assert p in err, err
    return err


def test_capture(monkeypatch, capsys, hf_dirs, tmp_path):
    import sparsify.graph.capture as capture

    monkeypatch.setattr(capture.torch.export, "export", _boom)
    code = main(["prune", f"hf:{hf_dirs('gpt2')}", "--hf-task", "sequence-classification", "--input-shape", "1,8",
                 "--structure", "channel", "--ratio", "0.5", "-o", str(tmp_path / "p")])
    _one_paragraph(capsys, code, "capture: torch.export could not capture HFGPT2ForSequenceClassification",
                   "injected failure", "attn_implementation=eager")


def test_planning(monkeypatch, capsys, hf_dirs, tmp_path):
    from sparsify.graph import rules, rules_layers  # noqa: F401  (registers the rules first)

    monkeypatch.setitem(rules.RULES, "layer_norm", _boom)
    code = main(["prune", f"hf:{hf_dirs('gpt2')}", "--hf-task", "sequence-classification", "--input-shape", "1,8",
                 "--structure", "channel", "--ratio", "0.5", "-o", str(tmp_path / "p")])
    _one_paragraph(capsys, code, "planning: the channel rule of op layer_norm", "module 'model.transformer.h.0.ln_1'",
                   "injected failure", "--ignore")


def test_export(monkeypatch, capsys, gpt2_run, tmp_path):
    monkeypatch.setattr(torch.onnx, "export", _boom)
    code = main(["export", str(gpt2_run / "run"), "--mode", "slim", "-o", str(tmp_path / "s.onnx")])
    _one_paragraph(capsys, code, "torch.onnx.export failed for", "injected failure")
    assert not (tmp_path / "s.onnx").exists()


def test_slim_pass(monkeypatch, capsys, gpt2_run, tmp_path):
    import sparsify.passes.slim as slim

    monkeypatch.setattr(slim, "rewrite_graph", _boom)
    code = main(["export", str(gpt2_run / "run"), "--mode", "slim", "-o", str(tmp_path / "s.onnx")])
    _one_paragraph(capsys, code, "export --mode slim of GPT2ForSequenceClassification", "injected failure")


def test_verification(monkeypatch, capsys, gpt2_run, tmp_path):
    import sparsify.export.pipeline as pipeline

    monkeypatch.setattr(pipeline, "ort_runner", lambda *a, **k: (_boom, ["output"]))
    code = main(["export", str(gpt2_run / "run"), "-o", str(tmp_path / "d.onnx")])
    _one_paragraph(capsys, code, "verification of d.onnx (dense) on inputs 'random b1' ([1, 8], [1, 8])",
                   "injected failure")
    assert not (tmp_path / "d.onnx").exists()


def test_benchmarking(monkeypatch, capsys, gpt2_run):
    import sparsify.bench.harness as harness

    monkeypatch.setattr(harness, "measure_interleaved", _boom)
    code = main(["bench", str(gpt2_run / "m.onnx"), "--repeat", "1", "--warmup", "0", "--no-memory",
                 "--no-progress"])
    _one_paragraph(capsys, code, "benchmarking of m.onnx at batch 1, 1 threads", "injected failure")
