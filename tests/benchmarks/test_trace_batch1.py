"""trace_batch1.py: the instrumented kernel matches the layer, and each call splits into parts."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import trace_batch1
from sparsify.kernels import isa
from tests.benchmarks.conftest import no_temp_files, positive, read_doc

needs_permute = pytest.mark.skipif(isa.target_variant() != "avx512", reason="the traced sliced-ELL kernel needs AVX-512F")


@needs_permute
def test_quick_run_splits_every_call(tmp_path):
    out = tmp_path / "t.json"
    # run() checks that both traced kernels give SparseLinear's exact outputs first.
    assert trace_batch1.main(["--quick", "--size", "100", "--out", str(out)]) == 0
    doc = read_doc(out, trace_batch1.SCHEMA)
    no_temp_files(tmp_path)
    assert doc["layer"]["shape"] == [100, 100] and doc["layer"]["slots"] > 0
    positive(doc["cycles_per_us"])
    assert set(doc["kernels"]) == {"parallel", "serial"} and doc["kernels"]["serial"]["chunks"] == 1
    for parts in doc["kernels"].values():
        for k in ("total", "pre", "work_max", "post"):
            assert parts[k]["p10_us"] <= parts[k]["p50_us"] <= parts[k]["p90_us"]
        positive(parts["total"]["p50_us"], parts["work_max"]["p50_us"])
        assert parts["pre"]["p50_us"] + parts["work_max"]["p50_us"] <= parts["total"]["p90_us"]


def test_calls_split_into_pre_work_and_post():
    # Two calls, two chunks on threads 0 and 1; the counter runs at 2 cycles per us.
    calls = np.array([[0, 100], [200, 260]])
    stamps = np.array([[[10, 50, 0], [20, 90, 1]],
                       [[205, 230, 0], [210, 250, 0]]])
    parts = trace_batch1.split_calls(calls, stamps, rate=2.0)
    np.testing.assert_allclose(parts["total"], [50, 30])
    np.testing.assert_allclose(parts["pre"], [5, 2.5])
    np.testing.assert_allclose(parts["post"], [5, 5])
    np.testing.assert_allclose(parts["work_max"], [35, 22.5])  # thread 1's 70 cycles; thread 0's 205..250
