"""bench_quality.py: targets judged from the numbers, the plot, the README section (synthetic results)."""

from __future__ import annotations

import json

from benchmarks import bench_quality, update_readme
from tests.benchmarks.conftest import assert_png


def _model(name, dense, r90, rc50, seventy, half):
    levels = lambda v: {"0.5": half if v == "sparsegpt" else 90.0, "0.7": seventy[v], "0.9": 20.0, "2:4": 80.0}
    return {"model": name, "dense_accuracy": dense,
            "recipes": {"unstructured_90": {"accuracy": r90, "delta": round(r90 - dense, 4)},
                        "channels_50": {"accuracy": rc50, "delta": round(rc50 - dense, 4)}},
            "oneshot": {m: levels(m) for m in bench_quality.METHODS},
            "channels_oneshot": {"0.25": 90.0, "0.5": 70.0, "0.75": 30.0}}


def test_targets_follow_the_numbers():
    ok = _model("digits-mlp", 95.0, 94.5, 96.0, {"magnitude": 80, "magnitude-global": 82, "wanda": 81,
                                                  "sparsegpt": 90}, 93.5)
    bad = _model("digits-vit", 93.0, 91.5, 92.5, {"magnitude": 60, "magnitude-global": 62, "wanda": 50,
                                                  "sparsegpt": 75}, 90.0)
    met = {t["target"]: t["met"] for t in bench_quality.evaluate_targets([ok, bad])}
    assert all(v for k, v in met.items() if k.startswith("digits-mlp"))
    assert met["digits-vit: default recipe at 90% unstructured within 1 point of dense"] is False
    assert met["digits-vit: default recipe at 50% channels within 1 point of dense"] is True
    assert met["digits-vit: one-shot 70% wanda above magnitude"] is False
    assert met["digits-vit: one-shot 70% sparsegpt above magnitude"] is True
    assert met["digits-vit: one-shot sparsegpt at 50% within 2 points of dense"] is False


def test_plot_and_readme_section(tmp_path):
    doc = {"schema": bench_quality.SCHEMA, "machine": {"cpu": "Test CPU", "usable_cores": 2},
           "models": [_model("digits-cnn", 99.0, 98.5, 97.0, {"magnitude": 80, "magnitude-global": 85,
                                                              "wanda": 70, "sparsegpt": 88}, 98.0)]}
    doc["targets"] = bench_quality.evaluate_targets(doc["models"])
    bench_quality.plot(doc, tmp_path / "q.png")
    assert_png(tmp_path / "q.png")
    results = tmp_path / "results"
    results.mkdir()
    (results / "quality.json").write_text(json.dumps(doc))
    section = update_readme.render(results, tmp_path)
    assert "| digits-cnn | one-shot sparsegpt | 98.0% | 88.0% | 20.0% | 80.0% |" in section
    assert "dense 99.0%; 90% unstructured 98.5% (-0.5); 50% channels 97.0% (-2.0)" in section
    assert "| digits-cnn: default recipe at 50% channels within 1 point of dense | **not met** |" in section
