"""bench_batch1_forms.py: a tiny run writes a well-formed document (no timing assertions)."""

from __future__ import annotations

from benchmarks import bench_batch1_forms
from tests.benchmarks.conftest import no_temp_files, positive, read_doc

FORMS = {"CSR", "padded", "compact", "padded, prefetched", "compact, prefetched"}


def test_quick_run_writes_both_chains_timings(tmp_path):
    out = tmp_path / "f.json"
    assert bench_batch1_forms.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    doc = read_doc(out, bench_batch1_forms.SCHEMA)
    no_temp_files(tmp_path)
    assert doc["isa"]["kernel_variant"] and doc["config"]["l3_bytes"] > 0
    (point,) = doc["points"]
    assert (point["width"], point["depth"], point["sparsity"]) == (2048, 2, 0.9)
    assert len(point["rules"]) == len(point["timed"]) == 2 and set(point["rules"] + point["timed"]) <= FORMS
    assert point["calibration"].startswith(("batch-1 layouts together (2,", "not timed"))
    positive(point["rules_ms"]["p50"], point["rules_ms"]["p90"], point["timed_ms"]["p50"], point["rules_over_timed"])
