"""``sparsify run`` end to end, in process."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from sparsify.cli import main
from tests.helpers import assert_close
from tests import models


@pytest.mark.parametrize("kind, batch, options", [("cnn", 3, ["--threads", "2"]), ("mlp", 1, ["--batch1", "auto"])])
def test_run_writes_the_output_of_the_sparse_model(pairs, tmp_path, capsys, kind, batch, options):
    _, dense, sparse, _ = pairs[kind]
    x = models.inputs(kind, batch)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npy"
    assert main(["run", str(sparse), "--input", str(tmp_path / "x.npy"), *options, "-o", str(out)]) == 0
    expected = ort.InferenceSession(str(dense), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert_close(np.load(out), expected)
    assert f"wrote {out}" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


@pytest.mark.parametrize("make, message", [
    (lambda d: [_save(d, np.zeros((1, 3, 10, 10), np.float32), n) for n in ("a", "b")],
     r"got 2 --input file\(s\) but the model has 1 input\(s\): \['x'\]"),
    (lambda d: [str(d / "missing.npy")], "input file .*missing.npy for input 'x' does not exist"),
    (lambda d: [_save(d, np.zeros((2, 3, 9, 9), np.float32))], r"input 'x' has shape \[2, 3, 9, 9\]; the model expects"),
    (lambda d: [_save(d, np.zeros((2, 3, 10, 10), np.float64))], "input 'x' has dtype float64"),
    (lambda d: [_save(d, np.array([{"a": 1}], dtype=object))], "not a readable .npy array"),
])
def test_bad_inputs_exit_nonzero_naming_the_input_and_write_nothing(pairs, tmp_path, capsys, make, message):
    argv = ["run", str(pairs["cnn"][2])]
    for p in make(tmp_path):
        argv += ["--input", p]
    out = tmp_path / "y.npy"
    code = main([*argv, "-o", str(out)])
    err = capsys.readouterr().err
    assert code != 0
    assert __import__("re").search(message, err), err
    assert not out.exists()


def test_corrupt_model_exits_nonzero(tmp_path, capsys):
    (tmp_path / "m.onnx").write_bytes(b"not onnx at all")
    np.save(tmp_path / "x.npy", np.zeros((1, 32), np.float32))
    code = main(["run", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")])
    assert code != 0 and "m.onnx" in capsys.readouterr().err
    assert not (tmp_path / "y.npy").exists()


def _save(d, a, name="in"):
    path = d / f"{name}.npy"
    np.save(path, a, allow_pickle=True)
    return str(path)



def test_run_keeps_the_csr_alone_unless_asked():
    from sparsify.cli import build_parser
    args = ["run", "m.onnx", "--input", "x.npy", "-o", "y.npy"]
    assert build_parser().parse_args(args).batch1 == "csr"  # one call: no layout worth building
    assert build_parser().parse_args([*args, "--batch1", "auto"]).batch1 == "auto"


def test_run_profile_prints_the_breakdown(pairs, tmp_path, capsys):
    _, dense, sparse, _ = pairs["cnn"]
    x = models.inputs("cnn", 1)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npy"
    assert main(["run", str(sparse), "--input", str(tmp_path / "x.npy"), "--profile", "--repeat", "3",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 run(s)" in text and "sparse SparseConv" in text and "slowest steps" in text
    assert main(["run", str(sparse), "--input", str(tmp_path / "x.npy"), "--profile", "--repeat", "0",
                 "-o", str(out)]) == 2
    assert "--repeat 0 should be a positive number" in capsys.readouterr().err
