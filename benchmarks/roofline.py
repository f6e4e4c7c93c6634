"""Roofline of this machine and where the sparse kernels sit on it.

Measures
- memory read bandwidth: a Numba parallel sum over float32 arrays of several sizes (one
  well inside the caches, one far beyond the last-level cache), on 1 and 2 threads;
- dense fp32 GEMM peak: torch and numpy matmul of large squares, on 1 and 2 threads;
- each sparse kernel configuration (``SparseLinear``: SpMV at batch 1, SpMM at batch 8 and
  64; a 4096x4096 and a 1024x1024 layer at 90% sparsity) and, for contrast, the dense layer
  in torch: bytes moved (CSR data + indices + indptr + x + y; dense: W + x + y), useful
  FLOPs (sparse: 2 * nnz * batch; dense: 2 * rows * cols * batch), achieved GB/s and
  GFLOP/s, and how far each is from the roof ``min(peak GFLOP/s, intensity * bandwidth)``.

Run::

    python benchmarks/roofline.py [--quick] [--out benchmarks/results/roofline.json] [--plot PATH.png]

JSON schema ``sparsify.roofline/1`` (see benchmarks/README.md). All timings are wall-clock
medians (p50) and p90 over repeated calls after warm-up (``sparsify.bench.measure``); the
machine is shared, so numbers are noisy while other work runs (``load`` records the load
average before and after).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numba
import numpy as np

from benchmarks.common import envelope, finite, l3_bytes, parser, pyplot, save_figure, say, write_outputs

SCHEMA = "sparsify.roofline/1"
MIB = 1024 * 1024
F32 = 4  # bytes per float32 and per int32 index


@numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def read_sum(a):  # pragma: no cover - compiled
    """Sum of a float32 array, read once in parallel (fastmath lets the reduction vectorize)."""
    s = np.float32(0.0)
    for i in numba.prange(a.size):
        s += a[i]
    return s


def _stats(samples_ns: list[int]) -> tuple[float, float]:
    from sparsify.bench import Stats

    st = Stats.from_ns(samples_ns)
    return st.p50_ms, st.p90_ms


def _time(fn, min_time: float, warmup: int = 3) -> tuple[float, float, int]:
    """(p50 ms, p90 ms, samples) of ``fn`` via the harness's measuring loop."""
    from sparsify.bench import measure

    samples = measure(fn, warmup=warmup, min_time=min_time)
    p50, p90 = _stats(samples)
    return p50, p90, len(samples)


def measure_bandwidth(sizes_mib: list[int], threads: list[int], min_time: float) -> list[dict[str, Any]]:
    """Read bandwidth (GB/s = 1e9 bytes/s) per array size and thread count."""
    rows = []
    for size in sizes_mib:
        a = np.ones(size * MIB // F32, dtype=np.float32)
        for t in threads:
            numba.set_num_threads(t)
            p50, p90, n = _time(lambda: read_sum(a), min_time)
            rows.append({"size_mib": size, "threads": t, "bytes": a.nbytes, "n": n,
                         "p50_ms": finite(p50), "p90_ms": finite(p90),
                         "gbps_p50": finite(a.nbytes / p50 / 1e6), "gbps_p90": finite(a.nbytes / p90 / 1e6)})
            say(f"bandwidth {size} MiB, {t} thread(s): {a.nbytes / p50 / 1e6:.1f} GB/s (p50)")
        del a
    return rows


def measure_gemm(n: int, threads: list[int], min_time: float) -> list[dict[str, Any]]:
    """fp32 n x n x n matmul GFLOP/s in torch and numpy (numpy's BLAS threads via threadpoolctl)."""
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    flops = 2 * n**3
    rows = []
    old = torch.get_num_threads()
    try:
        for t in threads:
            torch.set_num_threads(t)
            out = torch.empty(n, n)
            cands = [("torch", lambda: torch.matmul(ta, tb, out=out))]
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:
                threadpool_limits = None
            cands.append(("numpy", lambda: np.matmul(a, b)))
            for lib, fn in cands:
                if lib == "numpy" and threadpool_limits is None:
                    rows.append({"lib": lib, "n": n, "threads": t, "skipped": "threadpoolctl is not installed"})
                    continue
                if lib == "numpy":
                    with threadpool_limits(limits=t):
                        p50, p90, k = _time(fn, min_time, warmup=2)
                else:
                    p50, p90, k = _time(fn, min_time, warmup=2)
                rows.append({"lib": lib, "n": n, "threads": t, "n_samples": k, "p50_ms": finite(p50),
                             "p90_ms": finite(p90), "gflops_p50": finite(flops / p50 / 1e6),
                             "gflops_p90": finite(flops / p90 / 1e6)})
                say(f"gemm {lib} {n}^3, {t} thread(s): {flops / p50 / 1e6:.1f} GFLOP/s (p50)")
    finally:
        torch.set_num_threads(old)
    return rows


def random_sparse(rows: int, cols: int, sparsity: float, seed: int = 0) -> np.ndarray:
    """A float32 matrix with exactly round(sparsity * size) zeros at seeded random positions."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols), dtype=np.float32)
    zero = rng.permutation(w.size)[: int(round(sparsity * w.size))]
    w.reshape(-1)[zero] = 0.0
    return w


def measure_kernels(shapes: list[int], sparsity: float, batches: list[int], threads: list[int],
                    min_time: float) -> list[dict[str, Any]]:
    """One row per (shape, batch, threads, impl): ``sparse`` = SparseLinear, ``dense`` = torch linear."""
    import torch

    from sparsify.kernels import CSR, SparseLinear, set_threads, warmup

    warmup(dtypes=(np.float32,))
    rows = []
    old = torch.get_num_threads()
    try:
        for n in shapes:
            w = random_sparse(n, n, sparsity)
            csr = CSR.from_dense(w)
            layer = SparseLinear(csr)
            tw = torch.from_numpy(w)
            nnz = csr.nnz
            csr_bytes = csr.data.nbytes + csr.indices.nbytes + csr.indptr.nbytes
            for b in batches:
                x = np.random.default_rng(b).standard_normal((b, n), dtype=np.float32)
                out = np.empty((b, n), np.float32)
                tx, tout = torch.from_numpy(x), torch.empty(b, n)
                io_bytes = x.nbytes + out.nbytes
                impls = {
                    "sparse": (lambda: layer(x, out), csr_bytes + io_bytes, 2 * nnz * b),
                    "dense": (lambda: torch.matmul(tx, tw.T, out=tout), w.nbytes + io_bytes, 2 * n * n * b),
                }
                for t in threads:
                    set_threads(t)
                    torch.set_num_threads(t)
                    for impl, (fn, nbytes, flops) in impls.items():
                        p50, p90, k = _time(fn, min_time)
                        rows.append({
                            "impl": impl, "backend": "sparsify.kernels.SparseLinear" if impl == "sparse" else "torch.matmul",
                            "rows": n, "cols": n, "sparsity": sparsity if impl == "sparse" else 0.0,
                            "nnz": nnz if impl == "sparse" else n * n, "batch": b, "threads": t, "n": k,
                            "kernel": ("spmv" if b == 1 else "spmm") if impl == "sparse" else "gemm",
                            "bytes": nbytes, "flops": flops, "intensity": finite(flops / nbytes),
                            "p50_ms": finite(p50), "p90_ms": finite(p90),
                            "gbps_p50": finite(nbytes / p50 / 1e6), "gbps_p90": finite(nbytes / p90 / 1e6),
                            "gflops_p50": finite(flops / p50 / 1e6), "gflops_p90": finite(flops / p90 / 1e6),
                        })
                        say(f"{impl} {n}x{n} batch {b}, {t} thread(s): {p50:.3f} ms, "
                            f"{nbytes / p50 / 1e6:.1f} GB/s, {flops / p50 / 1e6:.1f} GFLOP/s")
    finally:
        torch.set_num_threads(old)
    return rows


def ceilings(bandwidth: list[dict], gemm: list[dict], threads: list[int]) -> dict[str, dict[str, float]]:
    """Per thread count: DRAM bandwidth (largest array), cache bandwidth (smallest), GEMM peak (best lib)."""
    out = {}
    for t in threads:
        bw = [r for r in bandwidth if r["threads"] == t]
        gm = [r for r in gemm if r["threads"] == t and "gflops_p50" in r]
        big = max(bw, key=lambda r: r["size_mib"])
        small = min(bw, key=lambda r: r["size_mib"])
        out[str(t)] = {
            "dram_gbps": big["gbps_p50"], "dram_size_mib": big["size_mib"],
            "cache_gbps": small["gbps_p50"], "cache_size_mib": small["size_mib"],
            "peak_gflops": max(r["gflops_p50"] for r in gm),
            "peak_lib": max(gm, key=lambda r: r["gflops_p50"])["lib"],
        }
    return out


def attach_roofs(kernels: list[dict], roofs: dict[str, dict[str, float]]) -> None:
    """Add the attainable GFLOP/s under each bandwidth roof and the achieved share of it."""
    for r in kernels:
        c = roofs[str(r["threads"])]
        for level in ("dram", "cache"):
            roof = min(c["peak_gflops"], r["intensity"] * c[f"{level}_gbps"])
            r[f"roof_{level}_gflops"] = finite(roof)
            r[f"pct_of_roof_{level}"] = finite(100 * r["gflops_p50"] / roof)


def plot(doc: dict[str, Any], path: Path) -> Path:
    """Log-log roofline: intensity (FLOP/byte) vs GFLOP/s, ceilings per thread count, one point per config."""
    plt = pyplot()

    kernels = doc["kernels"]
    xs = [r["intensity"] for r in kernels]
    lo, hi = min(xs + [0.1]) / 2, max(xs + [100.0]) * 2
    grid = np.logspace(np.log10(lo), np.log10(hi), 200)
    fig, ax = plt.subplots(figsize=(9, 6))
    styles = {"1": ":", "2": "-"}
    for t, c in doc["ceilings"].items():
        ls = styles.get(t, "--")
        ax.plot(grid, np.minimum(c["peak_gflops"], grid * c["dram_gbps"]), ls, color="tab:red",
                label=f"roof {t} thr: DRAM {c['dram_gbps']:.0f} GB/s, peak {c['peak_gflops']:.0f} GFLOP/s")
        ax.plot(grid, np.minimum(c["peak_gflops"], grid * c["cache_gbps"]), ls, color="tab:orange",
                label=f"roof {t} thr: {c['cache_size_mib']} MiB read {c['cache_gbps']:.0f} GB/s")
    markers = {1: "o", 8: "s", 64: "^"}
    colors = {"sparse": "tab:blue", "dense": "tab:gray"}
    for r in kernels:
        filled = r["threads"] == max(int(t) for t in doc["ceilings"])
        ax.scatter(r["intensity"], r["gflops_p50"], marker=markers.get(r["batch"], "D"), s=50,
                   facecolors=colors[r["impl"]] if filled else "none", edgecolors=colors[r["impl"]])
        ax.annotate(f"{r['impl'][0]}{r['rows']} b{r['batch']} t{r['threads']}", (r["intensity"], r["gflops_p50"]),
                    fontsize=6, xytext=(3, 3), textcoords="offset points")
    for impl, col in colors.items():
        ax.scatter([], [], color=col, label=f"{impl} ({'SparseLinear, 90% sparse' if impl == 'sparse' else 'torch dense'})")
    for b, m in markers.items():
        ax.scatter([], [], marker=m, color="black", label=f"batch {b}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (useful FLOP / byte moved)")
    ax.set_ylabel("GFLOP/s (p50; filled = most threads, hollow = 1 thread)")
    m = doc["machine"]
    ax.set_title(f"sparsify roofline — {m.get('cpu')}, {m.get('usable_cores')} cores", fontsize="medium")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="x-small", loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def run(quick: bool) -> dict[str, Any]:
    """Measure everything; returns the JSON document."""
    threads = [1, 2] if (os.cpu_count() or 1) >= 2 else [1]
    if quick:
        sizes, gemm_n, shapes, batches, min_time = [4, 128], 512, [1024], [1, 8], 0.05
    else:
        sizes, gemm_n, shapes, batches, min_time = [4, 16, 64, 1024], 2048, [1024, 4096], [1, 8, 64], 0.5
    sparsity = 0.9
    config = {"quick": quick, "threads": threads, "bandwidth_sizes_mib": sizes, "gemm_n": gemm_n,
              "kernel_shapes": [[n, n] for n in shapes], "sparsity": sparsity, "batches": batches,
              "min_time_s": min_time, "dtype": "float32", "index_dtype": "int32",
              "bytes_model": "sparse: CSR data + indices + indptr + x + y; dense: W + x + y (each read/written once)",
              "flops_model": "sparse: 2 * nnz * batch (useful); dense: 2 * rows * cols * batch",
              "timing": "sparsify.bench.measure: warm-up, then adaptive repeats; p50 and p90 of wall time"}
    doc = envelope(SCHEMA, config)
    doc["load"] = {"before": list(os.getloadavg())}
    doc["l3_reported_bytes"] = l3_bytes()
    numba_threads = numba.get_num_threads()
    try:
        doc["bandwidth"] = measure_bandwidth(sizes, threads, min_time)
        doc["gemm"] = measure_gemm(gemm_n, threads, min_time)
        doc["ceilings"] = ceilings(doc["bandwidth"], doc["gemm"], threads)
        doc["kernels"] = measure_kernels(shapes, sparsity, batches, threads, min_time)
    finally:
        numba.set_num_threads(numba_threads)
    attach_roofs(doc["kernels"], doc["ceilings"])
    doc["load"]["after"] = list(os.getloadavg())
    return doc


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0], "roofline.json").parse_args(argv)
    write_outputs(args, run(args.quick), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
