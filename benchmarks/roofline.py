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


def _time(fn, min_time: float, warmup: int = 3):
    """Stats (p50, p90, min … in ms) of ``fn`` via the harness's measuring loop."""
    from sparsify.bench import Stats, measure

    return Stats.from_ns(measure(fn, warmup=warmup, min_time=min_time))


def rates(st, work: float, unit: str) -> dict[str, Any]:
    """Timing fields plus ``work`` per second (GB/s or GFLOP/s: work / ms / 1e6) at p50, p90 and best."""
    return {"samples": st.n, "p50_ms": finite(st.p50_ms), "p90_ms": finite(st.p90_ms), "min_ms": finite(st.min_ms),
            f"{unit}_p50": finite(work / st.p50_ms / 1e6), f"{unit}_p90": finite(work / st.p90_ms / 1e6),
            f"{unit}_best": finite(work / st.min_ms / 1e6)}


def measure_bandwidth(sizes_mib: list[int], threads: list[int], min_time: float) -> list[dict[str, Any]]:
    """Read bandwidth (GB/s = 1e9 bytes/s) per array size and thread count."""
    rows = []
    for size in sizes_mib:
        a = np.ones(size * MIB // F32, dtype=np.float32)
        for t in threads:
            numba.set_num_threads(t)
            st = _time(lambda: read_sum(a), min_time)
            rows.append({"size_mib": size, "threads": t, "bytes": a.nbytes, **rates(st, a.nbytes, "gbps")})
            say(f"bandwidth {size} MiB, {t} thread(s): {a.nbytes / st.p50_ms / 1e6:.1f} GB/s (p50), "
                f"{a.nbytes / st.min_ms / 1e6:.1f} (best)")
        del a
    return rows


def measure_gemm(sizes: list[int], threads: list[int], min_time: float) -> list[dict[str, Any]]:
    """fp32 n x n x n matmul GFLOP/s in torch and numpy (numpy's BLAS threads via threadpoolctl)."""
    import contextlib

    import torch

    from threadpoolctl import threadpool_limits
    rows = []
    for n in sizes:
        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        ta, tb, out = torch.from_numpy(a), torch.from_numpy(b), torch.empty(n, n)
        for t in threads:
            torch.set_num_threads(t)
            for lib in ("torch", "numpy"):
                limit = threadpool_limits(limits=t) if lib == "numpy" else contextlib.nullcontext()
                fn = (lambda: np.matmul(a, b)) if lib == "numpy" else (lambda: torch.matmul(ta, tb, out=out))
                with limit:
                    st = _time(fn, min_time, warmup=2)
                rows.append({"lib": lib, "n": n, "threads": t, **rates(st, 2 * n**3, "gflops")})
                say(f"gemm {lib} {n}^3, {t} thread(s): {2 * n**3 / st.p50_ms / 1e6:.1f} GFLOP/s (p50), "
                    f"{2 * n**3 / st.min_ms / 1e6:.1f} (best)")
    return rows


def random_sparse(rows: int, cols: int, sparsity: float, seed: int = 0) -> np.ndarray:
    """A float32 matrix with exactly round(sparsity * size) zeros at seeded random positions."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols), dtype=np.float32)
    zero = rng.permutation(w.size)[: int(round(sparsity * w.size))]
    w.reshape(-1)[zero] = 0.0
    return w


def _sparse_layer(w: np.ndarray, threads: int):
    """(call(x, out), bytes of the weight, nnz, dtypes) for SparseLinear; sets the Numba thread count."""
    from sparsify.kernels import CSR, SparseLinear, set_threads

    set_threads(threads)
    csr = CSR.from_dense(w)  # the index dtypes are the ones CSR chooses (recorded per row)
    layer = SparseLinear(csr)
    dtypes = {"data": str(csr.data.dtype), "indices": str(csr.indices.dtype), "indptr": str(csr.indptr.dtype)}
    return layer, csr.data.nbytes + csr.indices.nbytes + csr.indptr.nbytes, csr.nnz, dtypes


def _dense_layer(w: np.ndarray, threads: int):
    """(call(x, out), bytes of the weight, rows * cols, dtypes) for torch matmul; sets torch's thread count."""
    import torch

    torch.set_num_threads(threads)
    tw = torch.from_numpy(w)
    call = lambda x, out: torch.matmul(torch.from_numpy(x), tw.T, out=torch.from_numpy(out))  # noqa: E731
    return call, w.nbytes, w.size, {"data": str(w.dtype)}


def measure_kernels(shapes: list[int], sparsity: float, batches: list[int], threads: list[int],
                    min_time: float, impl: str) -> list[dict[str, Any]]:
    """One row per (shape, batch, threads): ``impl="sparse"`` = SparseLinear, ``"dense"`` = torch matmul.

    The dense layer multiplies by the same (90% zero) matrix as a dense array, so its useful
    FLOPs count every entry: it is the baseline a sparse kernel has to beat.
    """
    make = _sparse_layer if impl == "sparse" else _dense_layer
    rows = []
    for n in shapes:
        w = random_sparse(n, n, sparsity)
        for t in threads:
            layer, w_bytes, nnz, dtypes = make(w, t)
            for b in batches:
                x = np.random.default_rng(b).standard_normal((b, n), dtype=np.float32)
                out = np.empty((b, n), np.float32)
                nbytes, flops = w_bytes + x.nbytes + out.nbytes, 2 * nnz * b
                layer(x, out)  # compiles (or loads from Numba's cache) just the signature timed here
                st = _time(lambda: layer(x, out), min_time)
                rows.append({
                    "impl": impl, "backend": "sparsify.kernels.SparseLinear" if impl == "sparse" else "torch.matmul",
                    "rows": n, "cols": n, "sparsity": sparsity if impl == "sparse" else 0.0,
                    "nnz": nnz, "dtypes": dtypes, "batch": b, "threads": t,
                    "kernel": ("spmv" if b == 1 else "spmm") if impl == "sparse" else "gemm",
                    "bytes": nbytes, "flops": flops, "intensity": finite(flops / nbytes),
                    **rates(st, nbytes, "gbps"), **rates(st, flops, "gflops"),
                })
                say(f"{impl} {n}x{n} batch {b}, {t} thread(s): {st.p50_ms:.3f} ms, "
                    f"{nbytes / st.p50_ms / 1e6:.1f} GB/s, {flops / st.p50_ms / 1e6:.1f} GFLOP/s")
    return rows


def ceilings(bandwidth: list[dict], gemm: list[dict], threads: list[int]) -> dict[str, dict[str, float]]:
    """Per thread count: DRAM bandwidth (largest array), cache bandwidth (smallest), GEMM peak (best lib and size).

    Ceilings use each measurement's best sample (``*_best``): a roof is what the hardware can
    reach, and on a shared machine the median is pulled down by other work. Kernel points
    are plotted at their median.
    """
    out = {}
    for t in threads:
        bw = [r for r in bandwidth if r["threads"] == t]
        gm = [r for r in gemm if r["threads"] == t]
        big = max(bw, key=lambda r: r["size_mib"])
        small = min(bw, key=lambda r: r["size_mib"])
        out[str(t)] = {
            "dram_gbps": big["gbps_best"], "dram_size_mib": big["size_mib"],
            "cache_gbps": small["gbps_best"], "cache_size_mib": small["size_mib"],
            "peak_gflops": max(r["gflops_best"] for r in gm),
            "peak_lib": max(gm, key=lambda r: r["gflops_best"])["lib"],
            "peak_n": max(gm, key=lambda r: r["gflops_best"])["n"],
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


# Each family runs in a fresh process, so one library's idle thread pool (spinning OpenMP
# workers of torch's bundled libgomp, Numba's pool on the system libgomp) cannot steal the
# cores another library's parallel region waits for. On the shared 2-core VM this mattered
# by two orders of magnitude (see benchmarks/README.md).
FAMILIES = {
    "bandwidth": (measure_bandwidth, "numba"),
    "gemm": (measure_gemm, "torch"),
    "sparse_kernels": (lambda **kw: measure_kernels(**kw, impl="sparse"), "numba"),
    "dense_kernels": (lambda **kw: measure_kernels(**kw, impl="dense"), "torch"),
}
# libgomp's default spin-then-sleep wait (GOMP_SPINCOUNT unset) made 2-thread OpenMP regions
# (Numba's "omp" layer and torch alike) take ~7 ms instead of ~0.03-0.2 ms whenever another
# process held the other core; a passive wait (0) avoided it. Measured twice on the shared VM:
# with torch on its defaults, dense 1024x1024 at 2 threads took 6.8 ms (vs 0.17 ms passive)
# and 2-thread GEMM was no faster than 1 thread either way. So every family waits passively
# unless GOMP_SPINCOUNT is set explicitly (which then applies to all).
POOL_ENV = {"numba": {"GOMP_SPINCOUNT": "0"}, "torch": {"GOMP_SPINCOUNT": "0"}}


def family_env(pool: str) -> dict[str, str]:
    """Extra environment of a family's process, by its thread pool (``numba`` or ``torch``)."""
    return {} if "GOMP_SPINCOUNT" in os.environ else dict(POOL_ENV[pool])


def run_family(name: str, params: dict[str, Any], timeout: float = 900.0) -> tuple[list[dict[str, Any]], dict]:
    """Run one measurement family in a fresh process; returns (rows, the extra env it ran with)."""
    import json
    import subprocess

    from benchmarks.common import REPO

    extra = family_env(FAMILIES[name][1])
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--family", name, json.dumps(params)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env, check=False)
    sys.stderr.write(proc.stderr)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"roofline family {name} exited with {proc.returncode}")
    return json.loads(lines[-1]), extra


def run(quick: bool, smoke: bool = False) -> dict[str, Any]:
    """Measure everything (one fresh process per family); returns the JSON document."""
    threads = [1, 2] if (os.cpu_count() or 1) >= 2 else [1]
    if smoke:  # for the tests: every code path, tiny sizes, almost no timing
        sizes, gemm_sizes, shapes, batches, min_time = [1, 8], [128], [256], [1, 8], 0.005
    elif quick:
        sizes, gemm_sizes, shapes, batches, min_time = [4, 128], [512], [1024], [1, 8], 0.05
    else:
        sizes, gemm_sizes, shapes, batches, min_time = [4, 16, 64, 1024], [1024, 2048], [1024, 4096], [1, 8, 64], 0.5
    sparsity = 0.9
    config = {"quick": quick, "smoke": smoke, "threads": threads, "bandwidth_sizes_mib": sizes, "gemm_sizes": gemm_sizes,
              "kernel_shapes": [[n, n] for n in shapes], "sparsity": sparsity, "batches": batches,
              "min_time_s": min_time, "dtype": "float32", "index_dtype": "as CSR.from_dense chooses (kernels[].dtypes)",
              "bytes_model": "sparse: CSR data + indices + indptr + x + y; dense: W + x + y (each read/written once)",
              "flops_model": "sparse: 2 * nnz * batch (useful); dense: 2 * rows * cols * batch",
              "timing": "sparsify.bench.measure: warm-up, then adaptive repeats; p50, p90 and min of wall time",
              "ceilings": "best sample (min time) of each bandwidth / GEMM measurement; kernel points at p50",
              "processes": "one fresh process per family (bandwidth, gemm, sparse_kernels, dense_kernels)"}
    doc = envelope(SCHEMA, config)
    doc["l3_reported_bytes"] = l3_bytes()
    doc["family_env"] = {}
    kernel_kw = {"shapes": shapes, "sparsity": sparsity, "batches": batches, "threads": threads, "min_time": min_time}
    params = {"bandwidth": {"sizes_mib": sizes, "threads": threads, "min_time": min_time},
              "gemm": {"sizes": gemm_sizes, "threads": threads, "min_time": min_time},
              "sparse_kernels": kernel_kw, "dense_kernels": kernel_kw}
    rows = {}
    for name, kw in params.items():
        rows[name], doc["family_env"][name] = run_family(name, kw)
    doc["bandwidth"], doc["gemm"] = rows["bandwidth"], rows["gemm"]
    doc["ceilings"] = ceilings(doc["bandwidth"], doc["gemm"], threads)
    doc["kernels"] = rows["sparse_kernels"] + rows["dense_kernels"]
    attach_roofs(doc["kernels"], doc["ceilings"])
    return doc


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 4 and sys.argv[1] == "--family":
        import json

        print(json.dumps(FAMILIES[sys.argv[2]][0](**json.loads(sys.argv[3]))))
        return 0
    p = parser(__doc__.splitlines()[0], "roofline.json")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for the tests (seconds)")
    args = p.parse_args(argv)
    write_outputs(args, run(args.quick, args.smoke), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
