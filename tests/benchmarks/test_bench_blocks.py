"""bench_blocks.py: a tiny run writes a well-formed document (no timing assertions)."""

from __future__ import annotations

import numpy as np

from benchmarks import bench_blocks
from tests.benchmarks.conftest import no_temp_files, positive, read_doc


def test_quick_run_writes_block_and_unstructured_timings(tmp_path):
    out = tmp_path / "b.json"
    assert bench_blocks.main(["--quick", "--threads", "1", "--blocks", "4x1,1x4", "--min-time", "0.01",
                              "--out", str(out)]) == 0
    doc = read_doc(out, bench_blocks.SCHEMA)
    no_temp_files(tmp_path)
    assert doc["isa"]["kernel_variant"] and doc["config"]["blocks"] == [[4, 1], [1, 4]]
    assert [(p["shape"], p["batch"], p["threads"]) for p in doc["points"]] == [([768, 768], 1, 1), ([768, 768], 8, 1)]
    for p in doc["points"]:
        assert set(p["ms"]) == {"ort_dense", "torch_dense", "numpy_dense", "unstructured", "block 4x1", "block 1x4"}
        positive(*(v for t in p["ms"].values() for v in (t["p50"], t["p90"], t["min"])))
        positive(*p["speedup_vs_fastest_dense"].values(), *p["speedup_vs_unstructured"].values())
        # equal sparsity: 10% of 768 x 768 stored in every layout, to within one block
        assert all(abs(v - 0.1 * 768 * 768) <= 4 for v in p["stored_values"].values()), p["stored_values"]
        assert p["kernels"]["block 4x1"].startswith("batch 1: BSR 4x1") or p["batch"] > 1


def test_block_weight_zeros_whole_blocks_at_the_sparsity():
    w = bench_blocks.block_weight(np.ones((64, 32), np.float32), (4, 2), 0.75, np.random.default_rng(0))
    blocks = (w.reshape(16, 4, 16, 2) != 0).sum(axis=(1, 3))
    assert set(np.unique(blocks)) == {0, 8} and (blocks == 0).sum() == 192
