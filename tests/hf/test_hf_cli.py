"""Hugging Face BERT-, GPT-2- and ViT-style models from the command line: prune heads and FFN
neurons (and the hidden size), fine-tune a few steps, export slim, prune unstructured, export
sparse (every Linear / Conv1D converted), bench; every export verified."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from sparsify.cli import main
from tests.hf.conftest import image_data, text_data
from tests.hf.tiny import task


def _ok(argv, capsys) -> str:
    code = main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "gpt2", "vit"])
def test_prune_finetune_export_bench(hf_dirs, tmp_path, capsys, name, no_model_size_floor):
    model = f"hf:{hf_dirs(name)}"
    if name == "vit":
        data = image_data(tmp_path / "data.npz")
        shape = []
    else:
        data = text_data(tmp_path / "data.npz", token_types=name == "bert")
        shape = ["--input-shape", "1,16"]
    r = str(tmp_path)
    out = _ok(["prune", model, "--hf-task", task(name), *shape, "--data", str(data), "--structure", "head,channel",
               "--ratio", "0.5", "-o", f"{r}/heads"], capsys)
    assert "heads kept" in out and "channels kept" in out
    manifest = json.loads((tmp_path / "heads" / "manifest.json").read_text())
    names = [s["name"] for s in manifest["inputs"]]
    assert names == {"bert": ["input_ids", "attention_mask", "token_type_ids"],
                     "gpt2": ["input_ids", "attention_mask"], "vit": ["pixel_values"]}[name]
    _ok(["finetune", f"{r}/heads", "--epochs", "1", "--batch-size", "16", "--no-progress", "-o", f"{r}/ft"], capsys)
    out = _ok(["export", f"{r}/ft", "--mode", "slim", "-o", f"{r}/slim.onnx"], capsys)
    assert "MISMATCH" not in out and "data b16" in out
    if name != "vit":
        assert "seq12" in out  # verified at a second sequence length
    proto = onnx.load(f"{r}/slim.onnx")
    assert [i.name for i in proto.graph.input] == names
    out = _ok(["prune", f"{r}/ft", "--sparsity", "0.8", "-o", f"{r}/sparse-run"], capsys)
    out = _ok(["export", f"{r}/sparse-run", "--mode", "sparse", "--density-threshold", "1.0",
               "-o", f"{r}/sparse.onnx"], capsys)
    kept = [ln for ln in out.splitlines() if "kept dense" in ln and "not an initializer" not in ln]
    assert not kept, kept  # every Linear / Conv1D with a weight converts
    assert "MISMATCH" not in out
    # The file exported again from itself (token ids and masks from the specs it records).
    out = _ok(["export", f"{r}/sparse.onnx", "--mode", "sparse", "--density-threshold", "1.0",
               "-o", f"{r}/again.onnx"], capsys)
    assert "against sparse.onnx in the sparse runtime" in out and "MISMATCH" not in out
    assert sum(n.domain == "ai.sparsify" for n in onnx.load(f"{r}/again.onnx").graph.node) == \
        sum(n.domain == "ai.sparsify" for n in onnx.load(f"{r}/sparse.onnx").graph.node)
    out = _ok(["bench", f"{r}/slim.onnx", f"{r}/sparse.onnx", "--batch", "1,2", "--repeat", "2", "--warmup", "1",
               "--no-memory", "--no-progress", "--json", f"{r}/bench.json"], capsys)
    result = json.loads((tmp_path / "bench.json").read_text())
    assert len(result["results"]) == 4


def test_out_of_range_token_id_is_rejected_with_its_range(hf_dirs, tmp_path, capsys):
    ex = tmp_path / "ex.npz"
    ids = np.full((2, 16), 5, dtype=np.int64)
    np.savez(ex, input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=np.full_like(ids, 2))
    code = main(["prune", f"hf:{hf_dirs('bert')}", "--hf-task", "sequence-classification", "--input-shape", "1,16",
                 "--example-inputs", str(ex), "--sparsity", "0.5", "-o", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "input 'token_type_ids' has values in [2, 2]" in err
    assert "valid values are 0..1" in err and "token_type_embeddings" in err


def test_example_inputs_are_recorded_and_verified(hf_dirs, tmp_path, capsys):
    ex = tmp_path / "ex.npz"
    rng = np.random.default_rng(0)
    np.savez(ex, input_ids=rng.integers(0, 96, (2, 12)), attention_mask=np.ones((2, 12), np.int64))
    _ok(["prune", f"hf:{hf_dirs('gpt2')}", "--hf-task", "sequence-classification", "--input-shape", "1,16",
         "--example-inputs", str(ex), "--structure", "channel", "--ratio", "0.25", "-o", str(tmp_path / "p")], capsys)
    out = _ok(["export", str(tmp_path / "p"), "-o", str(tmp_path / "d.onnx")], capsys)
    assert "example inputs" in out and "[2, 3]" in out


def test_missing_or_incomplete_directory_is_one_paragraph(tmp_path, capsys):
    code = main(["prune", f"hf:{tmp_path / 'nope'}", "--sparsity", "0.5", "-o", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and "no such directory" in err and "save_pretrained" in err
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text("{}")
    (tmp_path / "d" / "pytorch_model.bin").write_bytes(b"pickle")
    code = main(["prune", f"hf:{tmp_path / 'd'}", "--sparsity", "0.5", "-o", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and "no .safetensors weights" in err and "are not read" in err
