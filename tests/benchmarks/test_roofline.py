"""roofline.py: a --smoke run (the --quick code paths at tiny sizes) into a temporary folder, and the roof arithmetic."""

from __future__ import annotations

import pytest

from benchmarks import roofline
from tests.benchmarks.conftest import assert_png, no_temp_files, positive, read_doc


@pytest.fixture(scope="module")
def quick_doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("roofline")
    assert roofline.main(["--smoke", "--out", str(out / "r.json"), "--plot", str(out / "r.png")]) == 0
    return out, read_doc(out / "r.json", roofline.SCHEMA)


def test_quick_run_writes_a_well_formed_document(quick_doc):
    out, doc = quick_doc
    assert_png(out / "r.png")
    no_temp_files(out)
    threads = doc["config"]["threads"]
    assert {(r["size_mib"], r["threads"]) for r in doc["bandwidth"]} == {
        (s, t) for s in doc["config"]["bandwidth_sizes_mib"] for t in threads}
    for r in doc["bandwidth"]:
        positive(r["gbps_p50"], r["gbps_p90"], r["p50_ms"])
        assert r["bytes"] == r["size_mib"] * 2**20
        assert r["p90_ms"] >= r["p50_ms"]
    assert {r["n"] for r in doc["gemm"]} == set(doc["config"]["gemm_sizes"])  # the matrix size, not a count
    for r in doc["gemm"]:
        positive(r["gflops_p50"], r["gflops_best"], r["p50_ms"], r["samples"])
        assert r["gflops_best"] == pytest.approx(2 * r["n"] ** 3 / r["min_ms"] / 1e6, rel=1e-4)
        assert r["gflops_best"] >= r["gflops_p50"] >= r["gflops_p90"]
    assert sorted(doc["ceilings"]) == [str(t) for t in threads]
    for c in doc["ceilings"].values():
        positive(c["dram_gbps"], c["cache_gbps"], c["peak_gflops"])
    impls = {(k["impl"], k["rows"], k["batch"], k["threads"]) for k in doc["kernels"]}
    assert impls == {(i, n, b, t) for i in ("sparse", "dense") for n, _ in doc["config"]["kernel_shapes"]
                     for b in doc["config"]["batches"] for t in threads}


def test_bytes_and_flops_follow_the_documented_model(quick_doc):
    _, doc = quick_doc
    for k in doc["kernels"]:
        n, b = k["rows"], k["batch"]
        io = 4 * b * (k["rows"] + k["cols"])
        if k["impl"] == "sparse":
            # CSR float32 data + indices + indptr (dtypes as CSR chose them), then x and y.
            size = {"int16": 2, "uint16": 2, "int32": 4, "uint32": 4, "int64": 8}
            d = k["dtypes"]
            assert d["data"] == "float32"
            assert k["bytes"] == (4 + size[d["indices"]]) * k["nnz"] + size[d["indptr"]] * (n + 1) + io
            assert k["flops"] == 2 * k["nnz"] * b
            assert k["nnz"] == round(n * n * (1 - doc["config"]["sparsity"]))
            assert k["kernel"] == ("spmv" if b == 1 else "spmm")
        else:
            assert k["bytes"] == 4 * n * n + io
            assert k["flops"] == 2 * n * n * b
        assert k["intensity"] == pytest.approx(k["flops"] / k["bytes"], rel=1e-5)
        assert k["gflops_p50"] == pytest.approx(k["flops"] / k["p50_ms"] / 1e6, rel=1e-4)
        assert k["gbps_best"] == pytest.approx(k["bytes"] / k["min_ms"] / 1e6, rel=1e-4)
        positive(k["pct_of_roof_dram"], k["pct_of_roof_cache"])


def test_roof_is_the_lower_of_bandwidth_and_compute():
    # Ceilings come from the best samples, not the medians.
    bw = [{"size_mib": 4, "threads": 1, "gbps_p50": 40.0, "gbps_best": 50.0},
          {"size_mib": 1024, "threads": 1, "gbps_p50": 5.0, "gbps_best": 10.0}]
    gemm = [{"lib": "torch", "n": 512, "threads": 1, "gflops_p50": 90.0, "gflops_best": 100.0},
            {"lib": "numpy", "n": 512, "threads": 1, "gflops_p50": 95.0, "gflops_best": 96.0}]
    roofs = roofline.ceilings(bw, gemm, [1])
    assert roofs["1"] == {"dram_gbps": 10.0, "dram_size_mib": 1024, "cache_gbps": 50.0, "cache_size_mib": 4,
                          "peak_gflops": 100.0, "peak_lib": "torch", "peak_n": 512}
    kernels = [{"threads": 1, "intensity": 0.5, "gflops_p50": 2.5}, {"threads": 1, "intensity": 20.0, "gflops_p50": 50.0}]
    roofline.attach_roofs(kernels, roofs)
    assert kernels[0]["roof_dram_gflops"] == 5.0 and kernels[0]["pct_of_roof_dram"] == 50.0
    assert kernels[0]["roof_cache_gflops"] == 25.0 and kernels[0]["pct_of_roof_cache"] == 10.0
    assert kernels[1]["roof_dram_gflops"] == 100.0 and kernels[1]["pct_of_roof_dram"] == 50.0


def test_random_sparse_has_exactly_the_requested_zeros():
    w = roofline.random_sparse(64, 32, 0.9, seed=3)
    assert w.dtype.name == "float32" and (w == 0).sum() == round(0.9 * 64 * 32)


def test_passive_openmp_wait_only_when_unset(monkeypatch):
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert roofline.family_env("numba") == roofline.family_env("torch") == {"GOMP_SPINCOUNT": "0"}
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    assert roofline.family_env("numba") == {}
