"""Sweep: sparse linear kernels (ours) against ONNX Runtime, torch and numpy dense, scipy and torch sparse.

    python benchmarks/bench_kernels.py [--quick | --headline] [--isa avx2] [--out benchmarks/results/kernels.json]
                                       [--plot benchmarks/results/kernels.png]

``--isa avx2`` measures the AVX2 kernel variant on any host that runs AVX2 code: the
sweep re-runs itself in a process whose kernels Numba compiles for an AVX2 CPU
(``NUMBA_CPU_NAME=znver2``), with torch limited to AVX2 (``ATEN_CPU_CAPABILITY``,
``ONEDNN_MAX_CPU_ISA``) and OpenBLAS to Haswell kernels; ONNX Runtime has no such
switch and keeps the host's ISA (``machine.dense_isa`` says so). Its default output is
``kernels_avx2.json``. Every document names the kernel variant and the host
(``machine.isa``).

For each layer shape (out x in), sparsity and batch it times ``y = x @ W.T`` with:
``ours`` (sparsify.kernels.SparseLinear), ``scipy_csr`` ((scipy.sparse CSR @ x.T).T, one
thread: scipy does not parallelise), ``torch_sparse_csr`` ((torch CSR tensor @ x.T).T),
``torch_dense`` (F.linear) and ``ort_dense`` (a one-node ONNX MatMul with the weight as an
initializer, intra_op_num_threads = threads). Dense backends do not depend on the
sparsity and are timed once per (shape, batch) for the ``dense`` table. At batch 1, where
``ours`` runs the sliced-ELL SpMV (``layout``), ``ours_csr_spmv`` also times the CSR SpMV
it replaced.

The speedups come from timing ours and every dense runtime together: at every point
``ort_dense``, ``torch_dense``, ``numpy_dense`` and ``ours`` run interleaved in blocks
(``sparsify.bench.timing.measure_interleaved``, five rounds at least), so this VM's
drift of +-30% from minute to minute hits them alike; ``speedup_vs_fastest_dense`` is
against the one of lowest p50 there. numpy runs its BLAS on one thread (threadpoolctl):
with two, OpenBLAS's pool busy-waits after each call and held a core against every
other library in the process (its own 1024^2 GEMV: p50 16 ms, bench_threading.py). Every other backend is called once untimed (Numba kernels are compiled up front
by ``kernels.warmup()``), then timed call by call until ``--min-time`` seconds and at
least ``--min-reps`` calls have passed (at most ``--max-reps``); with ``--clock cpu`` so
are ``ours`` and ORT. The JSON holds median and p90
per point, speedups over each dense runtime and the fastest, the crossover sparsity per
(shape, batch) — the lowest measured sparsity from which ours beats the fastest dense at
every higher measured sparsity — machine information and the load average before and after (the machine is
shared: a high load average means noisy numbers).

On a shared machine a 2-thread parallel region waits for its slowest thread, which
other jobs can deschedule for milliseconds; the 2-thread wall-clock numbers are then
dominated by scheduling. ``--threads 1 --clock cpu`` times the calling thread's CPU
time instead, which ranks the kernels reliably on a busy machine:

    python benchmarks/bench_kernels.py --threads 1 --clock cpu \
        --out benchmarks/results/kernels_1thread_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

# First: importing sparsify sets the bounded OpenMP spin defaults, which libgomp (torch's
# copy and Numba's) reads once, when it loads. Imported after torch, torch's pool spun
# for milliseconds after each call and slowed the next backend timed.
import sparsify  # noqa: F401  isort: skip
import numba
import numpy as np
import onnx
import onnxruntime as ort
import scipy
import scipy.sparse
import torch
from onnx import TensorProto, helper, numpy_helper

from sparsify.bench.report import write_atomic
from sparsify.bench.timing import Stats, measure_interleaved
from sparsify.kernels import CSR, SparseLinear, set_threads, warmup
from sparsify.runtime.calibrate import choose_batch1_forms

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

FULL = dict(shapes=[(1024, 1024), (4096, 4096), (4096, 1024), (1024, 4096)],
            sparsities=[0.5, 0.7, 0.8, 0.9, 0.95, 0.98], batches=[1, 8, 64, 256])
QUICK = dict(shapes=[(1024, 1024), (4096, 4096)], sparsities=[0.9], batches=[1, 8, 64])
HEADLINE_ONLY = dict(shapes=[(1024, 1024), (4096, 4096)], sparsities=[0.9], batches=[1, 8, 64],
                     only=[((4096, 4096), 1), ((4096, 4096), 8), ((4096, 4096), 64),
                           ((1024, 1024), 1)])
# (shape, sparsity, batch, required speedup over ORT dense or None, over the fastest dense)
# from issue 14; every headline point also needs p90 <= P90_OVER_P50 * p50.
HEADLINE = [((4096, 4096), 0.9, 1, 8.0, 4.0), ((4096, 4096), 0.9, 8, None, 3.0),
            ((4096, 4096), 0.9, 64, None, 1.5), ((1024, 1024), 0.9, 1, None, 1.5)]
P90_OVER_P50 = 2.0
SPARSE_BACKENDS = ("ours", "scipy_csr", "torch_sparse_csr")
DENSE_BACKENDS = ("ort_dense", "torch_dense", "numpy_dense")


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def time_call(fn, min_time: float, min_reps: int, max_reps: int, clock: str = "wall") -> dict:
    """Call ``fn`` once untimed, then time single calls; median/p90/min in milliseconds.

    ``clock="cpu"`` measures the calling thread's CPU time (only meaningful at one
    thread, where every backend computes in the calling thread): time spent descheduled
    by other processes is not counted, so it ranks kernels on a busy machine.
    """
    tick = CLOCKS[clock]
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_time):
        t0 = tick()
        fn()
        times.append(tick() - t0)
    return _summary([t * 1e9 for t in times])


def time_together(calls: dict, min_time: float) -> dict[str, dict]:
    """``calls`` (name -> callable) timed interleaved in blocks; name -> :func:`time_call`'s summary."""
    samples = measure_interleaved(list(calls.values()), min_time=min_time)
    return {name: _summary(s) for name, s in zip(calls, samples)}


def _summary(samples_ns) -> dict:
    s = Stats.from_ns(samples_ns)
    return {"median_ms": s.p50_ms, "p90_ms": s.p90_ms, "min_ms": s.min_ms, "reps": s.n}


def ort_matmul_session(w: np.ndarray, threads: int) -> ort.InferenceSession:
    """A one-node MatMul model y = x @ W.T with W.T as an initializer."""
    out_f, in_f = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "wt"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_f])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out_f])],
        [numpy_helper.from_array(np.ascontiguousarray(w.T), "wt")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def machine_info(threads: int) -> dict:
    from sparsify.kernels import isa

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model, "logical_cpus": os.cpu_count(), "threads": threads,
        "platform": platform.platform(), "python": platform.python_version(),
        "numpy": np.__version__, "numba": numba.__version__, "numba_threading_layer": None,
        "scipy": scipy.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
        "onnxruntime": ort.__version__, "isa": isa.host_isa(),
        "dense_isa": ("ONNX Runtime: the host's; torch and numpy: limited to AVX2 (ATEN_CPU_CAPABILITY, "
                      "ONEDNN_MAX_CPU_ISA, OPENBLAS_CORETYPE)" if os.environ.get("ATEN_CPU_CAPABILITY") == "avx2"
                      else "the host's"),
    }


def reference_product(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w.T in float64, computed by torch (whose OpenMP pool spins only briefly)."""
    with torch.inference_mode():
        return (torch.from_numpy(x).double() @ torch.from_numpy(w).double().T).numpy()


def crossover(points: list[dict]) -> float | None:
    """Lowest sparsity from which ours beats the fastest dense at every higher measured sparsity."""
    best = None
    for p in sorted(points, key=lambda p: -p["sparsity"]):
        if p["speedup_vs_fastest_dense"] >= 1.0:
            best = p["sparsity"]
        else:
            break
    return best


def run(cfg: dict, threads: int, min_time: float, min_reps: int, max_reps: int, seed: int,
        clock: str = "wall", log=print) -> dict:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")  # numpy on one thread: see the module docstring
    set_threads(threads)
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    warmup(dtypes=(np.float32,))
    log(f"warmup (JIT compile or cache load): {time.perf_counter() - t0:.1f} s")
    info = machine_info(threads)
    info["numba_threading_layer"] = numba.threading_layer()
    info["loadavg_start"] = os.getloadavg()
    log(f"kernels: {info['isa']['kernel_variant']} ({info['isa']['target']}), host {info['isa']['host_cpu']}")
    rng = np.random.default_rng(seed)
    points = []
    timing = dict(min_time=min_time, min_reps=min_reps, max_reps=max_reps, clock=clock)
    for shape in cfg["shapes"]:
        out_f, in_f = shape
        base = rng.standard_normal(shape).astype(np.float32)
        keep_score = rng.random(shape)
        sess = ort_matmul_session(base, threads)
        wt_dense = torch.from_numpy(base)
        w_np_t = np.ascontiguousarray(base.T)  # numpy: x @ W.T with W.T stored, as ORT holds it
        batches = [b for b in cfg["batches"]
                   if "only" not in cfg or (tuple(shape), b) in cfg["only"]]
        xs = {b: rng.standard_normal((b, in_f)).astype(np.float32) for b in batches}
        for sp in cfg["sparsities"]:
            w = np.where(keep_score >= sp, base, np.float32(0))
            csr = CSR.from_dense(w)
            sp_scipy = scipy.sparse.csr_matrix(w)
            sp_torch = torch.from_numpy(w).to_sparse_csr()
            for b, x in xs.items():
                layer = SparseLinear(csr)
                if b == 1:  # the batch-1 kernel the runtime keeps on this host (timed once, cached)
                    choose_batch1_forms([layer], threads)
                y = layer(x)
                # The float64 reference goes through torch, not numpy: after a numpy matmul,
                # OpenBLAS's idle worker busy-waits (~0.1 s) on one of the two cores, and the
                # 2-thread kernel timed next ran 0.29 ms per call instead of 0.02 ms (1024²).
                ref = reference_product(x, w)
                xt = torch.from_numpy(x)
                # Every backend starts from x (batch, in) and returns y (batch, out); the
                # baselines compute W @ x.T (transposing x inside the timed call) and
                # return a transposed view, not a copy.
                calls = {"ort_dense": lambda: sess.run(None, {"x": x}),
                         "torch_dense": lambda: torch.nn.functional.linear(xt, wt_dense),
                         "numpy_dense": lambda: x @ w_np_t, "ours": lambda: layer(x)}
                with torch.inference_mode():
                    if clock == "wall":
                        res = time_together(calls, min_time)
                    else:  # measure_interleaved reads the wall clock
                        res = {k: time_call(fn, **timing) for k, fn in calls.items()}
                    res["scipy_csr"] = time_call(lambda: (sp_scipy @ x.T).T, **timing)
                    res["torch_sparse_csr"] = time_call(lambda: (sp_torch @ xt.T).T, **timing)
                if b == 1 and layer.ell is not None:  # what the layout gained over the CSR SpMV
                    csr_layer = SparseLinear(csr, batch1="csr")
                    res["ours_csr_spmv"] = time_call(lambda: csr_layer(x), **timing)
                ours = res["ours"]["median_ms"]
                fastest = min(DENSE_BACKENDS, key=lambda k: res[k]["median_ms"])
                point = {
                    "shape": list(shape), "sparsity": sp, "batch": b, "nnz": csr.nnz,
                    "layout": ("sliced_ell" if b == 1 and layer.ell is not None
                               else "csr"),
                    "kernel": layer.describe_batch1() if b == 1 else f"CSR SpMM ({layer.variant})",
                    "max_abs_err_vs_fp64": float(np.abs(y - ref).max()),
                    # the error relative to the output's scale (fp32 sums of ~nnz/row terms)
                    "max_abs_err_over_max_abs_out": float(np.abs(y - ref).max()
                                                          / max(np.abs(ref).max(), 1e-30)),
                    **res,
                    # ORT dense timed interleaved with ours at this point (also under "ort_dense").
                    "ort_dense_median_ms": res["ort_dense"]["median_ms"],
                    "ort_dense_p90_ms": res["ort_dense"]["p90_ms"],
                    "ort_dense_min_ms": res["ort_dense"]["min_ms"],
                    "speedup_vs_ort_dense": res["ort_dense"]["median_ms"] / ours,
                    # min over min: the speedup when neither run was disturbed.
                    "speedup_vs_ort_dense_min": res["ort_dense"]["min_ms"] / res["ours"]["min_ms"],
                    "fastest_dense": fastest,
                    "speedup_vs_fastest_dense": res[fastest]["median_ms"] / ours,
                    "ours_p90_over_p50": res["ours"]["p90_ms"] / ours,
                    "speedup_vs_scipy_csr": res["scipy_csr"]["median_ms"] / ours,
                    "speedup_vs_torch_sparse_csr": res["torch_sparse_csr"]["median_ms"] / ours,
                }
                points.append(point)
                log(f"{out_f}x{in_f} sp{sp:.2f} b{b:<3} ours {ours:.4f} ms "
                    f"(p90 {res['ours']['p90_ms']:.4f}) x{point['speedup_vs_ort_dense']:.2f} vs ORT "
                    f"{res['ort_dense']['median_ms']:.4f}, x{point['speedup_vs_fastest_dense']:.2f} vs fastest "
                    f"({fastest} {res[fastest]['median_ms']:.4f}); torch {res['torch_dense']['median_ms']:.4f}, "
                    f"numpy {res['numpy_dense']['median_ms']:.4f}, scipy {res['scipy_csr']['median_ms']:.3f}, "
                    f"torch csr {res['torch_sparse_csr']['median_ms']:.3f}"
                    + (f", our csr spmv {res['ours_csr_spmv']['median_ms']:.4f}"
                       if "ours_csr_spmv" in res else ""))
    crossovers = []
    for shape in cfg["shapes"]:
        for b in cfg["batches"]:
            sel = [p for p in points if tuple(p["shape"]) == tuple(shape) and p["batch"] == b]
            if not sel:
                continue
            crossovers.append({"shape": list(shape), "batch": b, "crossover_sparsity": crossover(sel)})
    info["loadavg_end"] = os.getloadavg()
    return {"machine": info, "config": {**cfg, **timing, "seed": seed},
            "headline": headline(points), "crossovers": crossovers, "points": points,
            "elapsed_s": time.perf_counter() - t0}


def headline(points: list[dict]) -> list[dict]:
    """The HEADLINE points with their targets and whether each is met."""
    out = []
    for shape, sp, b, vs_ort, vs_fastest in HEADLINE:
        for p in points:
            if tuple(p["shape"]) == shape and p["sparsity"] == sp and p["batch"] == b:
                ours = p["ours"]
                checks = [p["speedup_vs_fastest_dense"] >= vs_fastest, p["ours_p90_over_p50"] <= P90_OVER_P50]
                if vs_ort is not None:
                    checks.append(p["speedup_vs_ort_dense"] >= vs_ort)
                out.append({"shape": list(shape), "sparsity": sp, "batch": b, "kernel": p["kernel"],
                            "ours_median_ms": ours["median_ms"], "ours_p90_ms": ours["p90_ms"],
                            "ours_min_ms": ours["min_ms"], "ours_p90_over_p50": p["ours_p90_over_p50"],
                            **{f"{k}_median_ms": p[k]["median_ms"] for k in DENSE_BACKENDS},
                            "ort_dense_min_ms": p["ort_dense_min_ms"],
                            "fastest_dense": p["fastest_dense"],
                            "speedup_vs_ort_dense": p["speedup_vs_ort_dense"],
                            "speedup_vs_ort_dense_min": p["speedup_vs_ort_dense_min"],
                            "speedup_vs_fastest_dense": p["speedup_vs_fastest_dense"],
                            "target_speedup_vs_ort": vs_ort, "target_speedup_vs_fastest": vs_fastest,
                            "target_p90_over_p50": P90_OVER_P50, "met": all(checks)})
    return out


def plot(result: dict, path: Path) -> None:
    """Speedup over ORT dense vs sparsity, one line per batch, one panel per shape."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = result["config"]["shapes"]
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.5 * len(shapes), 4), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        for b in result["config"]["batches"]:
            sel = sorted((p for p in result["points"]
                          if tuple(p["shape"]) == tuple(shape) and p["batch"] == b),
                         key=lambda p: p["sparsity"])
            xs = [p["sparsity"] for p in sel]
            ys = [p["speedup_vs_fastest_dense"] for p in sel]
            line, = ax.plot(xs, ys, marker="o", label=f"batch {b}")
            cross = next(c["crossover_sparsity"] for c in result["crossovers"]
                         if tuple(c["shape"]) == tuple(shape) and c["batch"] == b)
            if cross is not None:
                ax.axvline(cross, color=line.get_color(), linestyle=":", alpha=0.6)
        ax.axhline(1.0, color="k", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_title(f"{shape[0]}x{shape[1]} (out x in)")
        ax.set_xlabel("sparsity")
        ax.set_ylabel("speedup over the fastest dense (ORT, torch, numpy)")
        ax.legend(fontsize=8)
    fig.suptitle(f"sparse linear, {result['machine']['threads']} threads, "
                 f"{result['machine']['isa']['kernel_variant']} kernels "
                 f"(dotted: crossover sparsity)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small subset (< 1 min)")
    ap.add_argument("--headline", action="store_true",
                    help="only the four headline points (use a larger --min-time to re-measure)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default benchmarks/results/kernels.json, kernels_avx2.json with --isa avx2)")
    ap.add_argument("--isa", choices=["host", "avx2"], default="host",
                    help="kernel variant: the host's (default), or AVX2 code compiled for Zen 2 in a child process")
    ap.add_argument("--plot", type=Path, default=None, help="also write a PNG here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall time (default), or the calling thread's CPU time (needs --threads 1)")
    ap.add_argument("--min-time", type=float, default=None,
                    help="seconds of timed calls per point (default 0.25, quick 0.1)")
    ap.add_argument("--min-reps", type=int, default=5)
    ap.add_argument("--max-reps", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = Path("benchmarks/results/kernels_avx2.json" if args.isa == "avx2" else "benchmarks/results/kernels.json")
    if args.isa == "avx2":
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from benchmarks.common import rerun_for_avx2

        code = rerun_for_avx2(__file__, sys.argv[1:] if argv is None else argv, args.out)
        if code is not None:
            return code
    if args.clock == "cpu" and args.threads != 1:
        ap.error("--clock cpu needs --threads 1 (CPU time of worker threads is not counted)")
    cfg = HEADLINE_ONLY if args.headline else QUICK if args.quick else FULL
    min_time = args.min_time if args.min_time is not None else (0.1 if args.quick else 0.25)
    result = run(cfg, args.threads, min_time, args.min_reps, args.max_reps, args.seed, args.clock)
    result["config"]["quick"] = args.quick
    result["config"]["headline"] = args.headline
    result["config"].pop("only", None)
    write_atomic(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))
    print(f"wrote {args.out} ({result['elapsed_s']:.0f} s)")
    isa_info = result["machine"]["isa"]
    for h in result["headline"]:
        print(f"headline [{isa_info['kernel_variant']}, {isa_info['target']}] {h['shape'][0]}x{h['shape'][1]} "
              f"sp{h['sparsity']} b{h['batch']}: ours p50 {h['ours_median_ms']:.4f} p90 {h['ours_p90_ms']:.4f} ms; "
              f"ORT {h['ort_dense_median_ms']:.4f}, torch {h['torch_dense_median_ms']:.4f}, "
              f"numpy {h['numpy_dense_median_ms']:.4f} ms; x{h['speedup_vs_ort_dense']:.2f} vs ORT, "
              f"x{h['speedup_vs_fastest_dense']:.2f} vs fastest ({h['fastest_dense']}) "
              f"{'met' if h['met'] else 'NOT met'}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
