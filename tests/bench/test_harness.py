"""bench(): interleaving across models, speedups against the first model, memory probe, errors."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from sparsify.bench import bench
from sparsify.errors import ModelError, ModelFileError


def test_models_interleave_and_speedup_is_against_first_model(fake, matmul_onnx: Path, add_onnx: Path, monkeypatch):
    backend, log = fake
    # >100 ms per sample: long enough that automatic blocks are single calls (strict A B rounds)
    backend.costs.update(matmul=440_000_000, add=110_000_000)
    result = bench([matmul_onnx, add_onnx], batches=(1, 2), threads=(1, 3), backend="fake",
                   warmup=2, repeat=3, memory=False, progress=False)
    # each model loaded once per thread count
    assert backend.loaded == [("matmul", 1), ("add", 1), ("matmul", 3), ("add", 3)]
    # per point: one check call each, then 2 warm-up + 3 timed rounds, interleaved
    assert log == ["matmul", "add"] * (1 + 2 + 3) * 4
    rows = {(r.label, r.batch, r.threads): r for r in result.records}
    assert len(rows) == 8
    for b, t in itertools.product((1, 2), (1, 3)):
        assert rows[("matmul.onnx", b, t)].speedup == pytest.approx(1.0)
        assert rows[("add.onnx", b, t)].speedup == pytest.approx(4.0)
        assert rows[("add.onnx", b, t)].reference == "matmul.onnx"
        assert rows[("add.onnx", b, t)].stats.p50_ms == pytest.approx(110.0 * b)
        assert rows[("add.onnx", b, t)].throughput_per_s == pytest.approx(b / (0.11 * b))
    # records are ordered by batch, then threads, then model order
    assert [(r.batch, r.threads, r.label) for r in result.records][:3] == [
        (1, 1, "matmul.onnx"), (1, 1, "add.onnx"), (1, 3, "matmul.onnx")]


def test_speedup_reference_is_the_first_model_given(fake, matmul_onnx: Path, add_onnx: Path):
    backend, _ = fake
    backend.costs.update(matmul=44_000_000, add=11_000_000)
    result = bench([add_onnx, matmul_onnx], backend="fake", warmup=0, repeat=2, memory=False, progress=False)
    assert [(r.label, r.speedup) for r in result.records] == [("add.onnx", 1.0), ("matmul.onnx", 0.25)]


def test_real_ort_run_with_memory_probe(matmul_onnx: Path, add_onnx: Path):
    result = bench([matmul_onnx, add_onnx], batches=(4,), warmup=1, repeat=3, memory=True, progress=False)
    assert [m.backend for m in result.models] == ["ort", "ort"]
    for m in result.models:
        assert m.memory["error"] is None, m.memory["error"]
        assert m.memory["batch"] == 4 and m.peak_mib is not None and m.peak_mib >= 0
        assert m.input_specs == [{"name": "x", "shape": ["N", 8], "dtype": "float32"}]
    assert all(r.stats.n == 3 for r in result.records)
    assert result.records[0].peak_mib == result.models[0].peak_mib


def test_all_paths_are_checked_before_timing(fake, matmul_onnx: Path, tmp_path: Path):
    _, log = fake
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage\xff\xff")
    with pytest.raises(ModelFileError, match="model.onnx"):
        bench([matmul_onnx, bad], backend="fake", repeat=1, memory=False, progress=False)
    assert log == []


def test_a_model_that_fails_at_a_batch_names_it(tmp_path: Path):
    from onnx import TensorProto, helper

    from tests.bench.conftest import save_model

    fixed = save_model(tmp_path / "fixed.onnx", [helper.make_node("Reshape", ["x", "s"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                       [helper.make_tensor("s", TensorProto.INT64, [2], [2, 4])])
    with pytest.raises(ModelError, match=r"fixed\.onnx: backend 'ort' failed to run at batch 3"):
        bench([fixed], batches=(3,), repeat=1, memory=False, progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"batches": ()}, "batches"), ({"threads": (0,)}, "threads"), ({"repeat": 0}, "repeat=0"),
])
def test_bad_arguments(matmul_onnx: Path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        bench([matmul_onnx], memory=False, progress=False, **kwargs)
