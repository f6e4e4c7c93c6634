"""bench_models.py: a --quick run of the random-weight MLP, and how failures stop the run or are recorded."""

from __future__ import annotations

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
