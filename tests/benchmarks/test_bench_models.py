"""bench_models.py: a --quick run of the random-weight MLP, and how failures stop the run or are recorded."""

from __future__ import annotations

import argparse

import pytest

from benchmarks import bench_models
from tests.benchmarks.conftest import assert_png, no_temp_files, positive, read_doc


@pytest.fixture(scope="module")
def quick_doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    assert bench_models.main(["--quick", "--models", "mlp-1024", "--out", str(out / "m.json")]) == 0
    return out, read_doc(out / "m.json", bench_models.SCHEMA)


def test_quick_run_writes_a_well_formed_document(quick_doc):
    out, doc = quick_doc
    assert_png(out / "m.png")
    no_temp_files(out)
    (model,) = doc["models"]
    assert model["model"] == "mlp-1024" and model["batches"] == [1] and model["threads"] == [1]
    assert isinstance(doc["env"], dict)
    dense = model["dense"]
    positive(dense["onnx"]["params"], dense["onnx"]["macs"], dense["onnx"]["file_bytes"])
    # 2 x Linear(1024, 1024): weights + biases, and 1024 * 1024 MACs per layer per sample
    # (at least MIN_LINEAR_MACS, so the sparse leg really converts).
    assert dense["onnx"]["params"] == 2 * (1024 * 1024 + 1024)
    assert dense["onnx"]["macs"] == 2 * 1024 * 1024
    (lat,) = dense["latency"]
    assert lat["speedup"] == 1.0 and lat["batch"] == 1
    positive(lat["p50_ms"], lat["p90_ms"])
    kinds = {v["kind"]: v for v in model["variants"]}
    assert set(kinds) == {"slim", "sparse"}
    for v in model["variants"]:
        (vl,) = v["latency"]
        positive(vl["p50_ms"], vl["speedup"], v["onnx"]["file_bytes"])
        assert vl["speedup"] == pytest.approx(lat["p50_ms"] / vl["p50_ms"], rel=1e-3)
        assert v["verify_max_abs"] is not None and v["verify_max_abs"] < 1e-3
    sparse = kinds["sparse"]
    assert sparse["sparsity"] == 0.9
    # The pruned run keeps ~10% of the weights (biases are not pruned).
    assert sparse["run"]["nonzeros"] == pytest.approx(0.1 * 2 * 1024 * 1024 + 2 * 1024, rel=0.01)
    assert sparse["file_ratio"] < 0.5


def test_unknown_model_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        bench_models.main(["--quick", "--models", "nope", "--out", str(tmp_path / "m.json")])


def test_a_failure_stops_in_one_paragraph_or_under_keep_going_is_recorded_never_as_numbers(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("verification failed: max abs 3.0\nmore detail")

    monkeypatch.setattr(bench_models, "variant", broken)
    case = bench_models.all_cases(quick=True)[1]
    settings = bench_models.Settings(finetune_epochs=1, lr=1e-3, min_time=0.1, warmup=1, memory=False)
    with pytest.raises(SystemExit) as stopped:
        bench_models.guarded(case, "sparse", 0.9, tmp_path, settings)
    # One paragraph: the model and variant, the reason's first line, what to do.
    message = str(stopped.value.code)
    assert message.startswith("[bench] mlp-1024: sparse-90 failed: RuntimeError: verification failed: max abs 3.0.")
    assert "--keep-going" in message and "\n" not in message
    settings.keep_going = True
    rec = bench_models.guarded(case, "sparse", 0.9, tmp_path, settings)
    assert rec == {"variant": "sparse-90", "kind": "sparse",
                   "failed": "RuntimeError: verification failed: max abs 3.0"}


def test_quick_run_measures_torch_dense_and_breaks_sparse_time_down_by_op(quick_doc):
    _, doc = quick_doc
    (model,) = doc["models"]
    dense = model["dense"]
    (ort,) = dense["latency"]
    (torch_row,) = dense["torch_latency"]
    assert torch_row["backend"] == "torch" and torch_row["batch"] == 1
    positive(torch_row["p50_ms"])
    fastest = min(ort["p50_ms"], torch_row["p50_ms"])
    sparse = next(v for v in model["variants"] if v["kind"] == "sparse")
    (lat,) = sparse["latency"]
    assert lat["fastest_dense"] == ("ort" if ort["p50_ms"] <= torch_row["p50_ms"] else "torch")
    assert lat["speedup_vs_fastest"] == pytest.approx(fastest / lat["p50_ms"], rel=1e-3)
    prof = sparse["profile"]
    assert prof["batch"] == 1 and prof["runs"] >= 5
    # The two 1024x1024 layers convert, so the sparse kernel shows up, and the parts add up to the run.
    assert prof["ops_ms"]["sparse SparseLinear"] > 0
    assert sum(prof["ops_ms"].values()) == pytest.approx(prof["total_ms"], rel=0.02)


def test_fastest_dense_picks_the_faster_backend_per_point():
    dense = {"latency": [{"batch": 1, "threads": 1, "p50_ms": 2.0}, {"batch": 8, "threads": 1, "p50_ms": 5.0}],
             "torch_latency": [{"batch": 1, "threads": 1, "p50_ms": 4.0}, {"batch": 8, "threads": 1, "p50_ms": 4.0}]}
    variant = {"latency": [{"batch": 1, "threads": 1, "p50_ms": 1.0}, {"batch": 8, "threads": 1, "p50_ms": 2.0}]}
    bench_models.attach_fastest_dense(dense, [variant])
    b1, b8 = variant["latency"]
    assert (b1["fastest_dense"], b1["speedup_vs_fastest"]) == ("ort", 2.0)
    assert (b8["fastest_dense"], b8["speedup_vs_fastest"]) == ("torch", 2.0)


def test_quick_run_times_an_export_where_nothing_converted_against_ort(quick_doc):
    _, doc = quick_doc
    (model,) = doc["models"]
    unconverted = model["unconverted"]
    assert "ai.sparsify" not in unconverted["op_domains"]  # the dense run: no layer converts
    (lat,) = unconverted["latency"]
    positive(lat["ort_p50_ms"], lat["session_p50_ms"])
    assert lat["session_over_ort"] == pytest.approx(lat["session_p50_ms"] / lat["ort_p50_ms"], rel=1e-3)


def test_command_line_narrows_batches_threads_and_sparsities():
    case = next(c for c in bench_models.all_cases(quick=False) if c.name == "bert-base")
    args = argparse.Namespace(batches="1", threads="2", sparsities="0.9,0.95")
    small = bench_models.narrowed(case, args)
    assert (small.batches, small.threads, small.sparsities) == ((1,), (2,), (0.9, 0.95))
    assert small.blocks == case.blocks and small.model == case.model
    unchanged = bench_models.narrowed(case, argparse.Namespace(batches=None, threads=None, sparsities=None))
    assert unchanged == case
    with pytest.raises(SystemExit, match="--threads"):
        bench_models.narrowed(case, argparse.Namespace(batches=None, threads="two", sparsities=None))

