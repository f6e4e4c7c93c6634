"""Sniffing model paths: ONNX or not, op domains, run directories, size on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsify.bench.modelfile import check_model_path, size_on_disk
from sparsify.errors import ModelFileError


def test_text_file_named_onnx_gives_model_file_error(tmp_path: Path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a protobuf, just some text\n" * 3)
    with pytest.raises(ModelFileError, match="notes.onnx") as info:
        check_model_path(bad)
    assert "expected an ONNX model" in str(info.value)


def test_empty_file_gives_model_file_error(tmp_path: Path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"empty\.onnx.*ir_version=0"):
        check_model_path(empty)


def test_missing_file_and_plain_directory(tmp_path: Path):
    with pytest.raises(ModelFileError, match=r"nope\.onnx: no such file"):
        check_model_path(tmp_path / "nope.onnx")
    with pytest.raises(ModelFileError, match="without manifest.json"):
        check_model_path(tmp_path)


def test_onnx_domains(matmul_onnx: Path, sparse_onnx: Path):
    dense = check_model_path(matmul_onnx)
    assert dense.kind == "onnx" and not dense.uses_sparsify_ops
    assert check_model_path(sparse_onnx).uses_sparsify_ops


def test_run_directory_and_its_size(tmp_path: Path):
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    (run / "sub" / "weights.bin").write_bytes(b"\0" * 1000)
    model = check_model_path(run)
    assert model.kind == "run"
    assert size_on_disk(model) == 1002


def test_size_of_onnx_file(matmul_onnx: Path):
    assert size_on_disk(check_model_path(matmul_onnx)) == matmul_onnx.stat().st_size > 8 * 4 * 4
