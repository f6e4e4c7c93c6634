"""bench_compile.py: a --quick run of two steps in fresh processes, step selection, a failing step."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import bench_compile
from tests.benchmarks.conftest import assert_png, no_temp_files, positive, read_doc


def test_quick_run_measures_steps_in_fresh_processes(tmp_path):
    out = tmp_path / "c.json"
    assert bench_compile.main(["--quick", "--steps", "prune_unstructured", "--out", str(out)]) == 0
    doc = read_doc(out, bench_compile.SCHEMA)
    assert_png(tmp_path / "c.png")
    no_temp_files(tmp_path)
    assert doc["config"]["steps"] == ["build", "prune_unstructured"]
    (model,) = doc["models"]
    assert [s["step"] for s in model["steps"]] == ["build", "prune_unstructured"]
    for s in model["steps"]:
        assert s["n"] == doc["config"]["repeat"] == len(s["samples"])
        positive(s["wall_s_p50"], s["process_s_p50"], s["peak_mib_p50"])
        # The process includes interpreter start-up and imports, so it takes longer than the step.
        assert s["process_s_p50"] > s["wall_s_p50"]
        assert s["method"] in ("VmHWM", "ru_maxrss")


def test_steps_bring_their_prerequisites():
    assert bench_compile.select_steps(["export_sparse"], pytest.fail) == ["build", "prune_unstructured", "export_sparse"]
    assert bench_compile.select_steps(None, pytest.fail) == [s for s, _ in bench_compile.STEPS]
    with pytest.raises(SystemExit):
        bench_compile.main(["--quick", "--steps", "nope", "--out", "unused.json"])


def test_a_failed_step_stops_in_one_paragraph_naming_its_log(tmp_path):
    case = {**bench_compile.all_cases(quick=True)[0], "model": "no.such.module:nothing"}
    with pytest.raises(SystemExit) as stopped:
        bench_compile.run_step("build", case, tmp_path, timeout=300.0)
    message = str(stopped.value.code)
    assert message.startswith(f"[bench] {case['name']}: step build failed: the step's process exited with 1 (")
    assert "no.such.module" in message and f"--models {case['name']} --steps build" in message
    assert "\n" not in message
    log = Path(message.split("Its whole error output is in ")[1].split(";")[0])
    try:
        assert "Traceback" in log.read_text() and "no.such.module" in log.read_text()
    finally:
        log.unlink()


def test_sweep_cases_name_their_exact_parameter_counts():
    import torch

    from benchmarks.bench_compile import sweep_cases
    from sparsify.modelref import import_attr

    for case in sweep_cases((30e6,)):
        with torch.device("meta"):
            model = import_attr(case["model"])(**case["model_args"])
        assert sum(p.numel() for p in model.parameters()) == case["params"], case["name"]
        assert 20e6 < case["params"] < 40e6


def test_update_keeps_the_other_models_and_refuses_other_settings(tmp_path):
    def doc(models, steps=("build",), created="t"):
        return {"schema": bench_compile.SCHEMA, "created": created, "machine": {"cpu": created}, "load": {},
                "config": {"sparsity": 0.9, "ratio": 0.5, "steps": list(steps), "models": models},
                "total_s": 1.0, "models": [{"model": m, "params": int(m.split("-")[1]), "steps": []} for m in models]}

    import json

    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(doc(["mlp-1", "mlp-3", "encoder-1"], created="old")))
    merged = bench_compile.merged_with_earlier(doc(["mlp-3", "mlp-7"], created="new"), path, pytest.fail)
    assert [m["model"] for m in merged["models"]] == ["encoder-1", "mlp-1", "mlp-3", "mlp-7"]
    measured = {m["model"]: m["measured"]["created"] for m in merged["models"]}
    assert measured == {"encoder-1": "old", "mlp-1": "old", "mlp-3": "new", "mlp-7": "new"}
    assert merged["total_s"] == 2.0

    def error(message):
        raise ValueError(message)

    with pytest.raises(ValueError, match="other settings"):
        bench_compile.merged_with_earlier(doc(["mlp-7"], steps=("build", "export_dense")), path, error)
