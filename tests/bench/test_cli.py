"""The CLI adapter: argument parsing and an in-process end-to-end run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from sparsify.bench import cli


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sparsify bench")
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_and_lists():
    args = parse(["a.onnx", "b.onnx", "--batch", "1,8,64", "--threads", "2,1"])
    assert args.models == ["a.onnx", "b.onnx"]
    assert args.batch == [1, 8, 64] and args.threads == [2, 1]
    assert (args.warmup, args.repeat, args.min_time, args.memory, args.seed, args.backend) == (10, None, 1.0, True, 0, None)
    assert parse(["a.onnx", "--no-memory"]).memory is False


@pytest.mark.parametrize("argv", [
    ["a.onnx", "--repeat", "3", "--min-time", "2"],
    ["a.onnx", "--batch", "1,x"],
    ["a.onnx", "--batch", "0"],
    ["a.onnx", "--backend", "tensorflow"],
    ["a.onnx", "--repeat", "0"],
    [],
])
def test_bad_arguments_are_rejected(argv, capsys):
    with pytest.raises(SystemExit):
        parse(argv)
    assert "error:" in capsys.readouterr().err


def test_end_to_end_writes_json_markdown_and_prints_table(matmul_onnx: Path, add_onnx: Path, tmp_path: Path, capsys):
    out, md = tmp_path / "out.json", tmp_path / "out.md"
    args = parse([str(matmul_onnx), str(add_onnx), "--batch", "1,2", "--repeat", "3", "--warmup", "1",
                  "--json", str(out), "--markdown", str(md), "--no-memory", "--no-progress"])
    assert cli.run(args) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "sparsify.bench/1"
    assert [(r["label"], r["batch"], r["n"]) for r in doc["results"]] == [
        ("matmul.onnx", 1, 3), ("add.onnx", 1, 3), ("matmul.onnx", 2, 3), ("add.onnx", 2, 3)]
    printed = capsys.readouterr().out
    assert "matmul.onnx" in printed and "add.onnx" in printed and f"wrote {out}" in printed
    assert "| add.onnx |" in md.read_text()


def test_input_shape_sizes_dynamic_dims_in_timing_and_memory_probe(tmp_path: Path, capsys):
    from onnx import TensorProto, helper, numpy_helper

    from sparsify.cli import main
    from tests.bench.conftest import matmul_weight, save_model

    seq = save_model(tmp_path / "seq.onnx", [helper.make_node("MatMul", ["x", "W"], ["y"])],
                     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "seq", 8])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "seq", 4])],
                     [numpy_helper.from_array(matmul_weight(), "W")])
    base = ["bench", str(seq), "--repeat", "2", "--warmup", "0", "--no-progress"]
    assert main(base + ["--no-memory"]) == 2
    assert "input 'x' has the dynamic dim 1 ('seq') and no size for it is recorded or given" in capsys.readouterr().err
    out = tmp_path / "b.json"
    assert main(base + ["--input-shape", "1,5,8", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["config"]["input_shapes"] == ["1,5,8"]
    assert doc["models"][0]["memory"]["peak_mib"] is not None  # the fresh process sized 'seq' too
    assert main(base + ["--no-memory", "--input-shape", "1,5,9"]) == 2
    assert "dim 2 of input 'x' is fixed at 8" in capsys.readouterr().err
