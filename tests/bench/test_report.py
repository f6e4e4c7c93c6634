"""Renderings of a BenchResult: JSON schema, table, Markdown, PNG, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsify.bench import SCHEMA, BenchResult, bench
from sparsify.machine import cpu_model
from sparsify.bench.report import write_atomic


@pytest.fixture
def result(fake, matmul_onnx: Path, add_onnx: Path) -> BenchResult:
    return bench([matmul_onnx, add_onnx], batches=(1, 8), backend="fake", warmup=1, repeat=3,
                 memory=False, progress=False)


def test_json_has_schema_machine_config_and_results(result: BenchResult, tmp_path: Path):
    out = result.to_json(tmp_path / "sub" / "bench.json")
    doc = json.loads(out.read_text())
    assert doc["schema"] == SCHEMA == "sparsify.bench/1"
    machine = doc["machine"]
    assert machine["cpu"] and machine["logical_cores"] >= 1 and machine["python"].count(".") == 2
    assert set(machine["packages"]) >= {"numpy", "torch", "onnxruntime", "numba"}
    assert machine["packages"]["numpy"] is not None
    from sparsify.kernels import isa
    assert machine["isa"]["kernel_variant"] == isa.VARIANT and machine["isa"]["target"]
    assert [m["conversion"] for m in doc["models"]] == [None, None]  # files that record none
    assert doc["config"]["batches"] == [1, 8] and doc["config"]["repeat"] == 3
    assert [m["label"] for m in doc["models"]] == ["matmul.onnx", "add.onnx"]
    assert len(doc["results"]) == 4
    row = doc["results"][1]
    assert {"p50_ms", "p90_ms", "p99_ms", "throughput_per_s", "speedup", "spread", "peak_mib",
            "file_mib", "reference", "batch", "threads"} <= set(row)
    assert BenchResult.from_json(out).records == result.records  # round trip
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_reading_another_schema_fails(result: BenchResult):
    doc = result.to_dict()
    doc["schema"] = "sparsify.bench/99"
    with pytest.raises(ValueError, match="sparsify.bench/99"):
        BenchResult.from_dict(doc)


def test_table_and_markdown_list_every_model_and_point(result: BenchResult):
    table = result.table().splitlines()
    assert table[0].split()[:4] == ["model", "backend", "batch", "threads"]
    assert len(table) == 2 + 4
    assert sum("matmul.onnx" in line for line in table) == 2 and sum("add.onnx" in line for line in table) == 2
    assert len({len(line) for line in table[:2]}) == 1  # header and rule line up
    md = result.markdown().splitlines()
    assert md[0].startswith("| model | backend |") and md[1].startswith("| :--- |")
    assert sum("| matmul.onnx |" in line for line in md) == 2 and sum("| add.onnx |" in line for line in md) == 2
    assert cpu_model() in result.markdown()
    from sparsify.kernels import isa
    assert f"sparsify's {isa.VARIANT} kernels" in result.markdown()


def test_plot_writes_a_png(result: BenchResult, tmp_path: Path):
    pytest.importorskip("matplotlib")
    from sparsify.bench.plot import plot_result

    out = plot_result(result, tmp_path / "bench.png")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path: Path):
    dest = tmp_path / "out.json"
    dest.write_text("good")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(dest, broken)
    assert dest.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_cpu_model_from_cpuinfo(tmp_path: Path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU @ 3.00GHz\nflags\t: avx2\n")
    assert cpu_model(info) == "Test CPU @ 3.00GHz"
