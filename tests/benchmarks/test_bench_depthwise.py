"""bench_depthwise.py: a tiny run writes a well-formed document (no timing assertions)."""

from __future__ import annotations

from benchmarks import bench_depthwise
from tests.benchmarks.conftest import no_temp_files, positive, read_doc


def test_quick_run_writes_every_shape_with_both_timings(tmp_path):
    out = tmp_path / "d.json"
    assert bench_depthwise.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    doc = read_doc(out, bench_depthwise.SCHEMA)
    no_temp_files(tmp_path)
    assert doc["kernel_variant"] and doc["config"]["threads"] == 1
    assert [(p["channels"], p["height"], p["width"], p["stride"], p["kernel"]) for p in doc["points"]] == \
        [tuple(s) for s in bench_depthwise.QUICK_SHAPES]
    assert {p["kernel"] for p in doc["points"]} == {3, 5, 7}
    for p in doc["points"]:
        assert p["max_abs_err"] <= bench_depthwise.TOLERANCE and p["ort_max_abs_err"] <= bench_depthwise.TOLERANCE
        positive(p["ours"]["p50_us"], p["ours"]["p90_us"], p["ort"]["p50_us"], p["ort_over_ours"])
