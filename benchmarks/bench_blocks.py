"""Block-sparse (BSR) against unstructured (CSR) linear kernels at equal sparsity, and the fastest dense.

    python benchmarks/bench_blocks.py [--quick] [--sparsity 0.9] [--threads 1,2] [--isa avx2]
                                      [--out benchmarks/results/blocks.json]

For each layer shape (out x in), batch and thread count it times ``y = x @ W.T`` with, all
interleaved in one ``sparsify.bench.timing.measure_interleaved`` call (so load drift hits
them alike): ``ort_dense`` (one-node MatMul), ``torch_dense`` (F.linear), ``numpy_dense``
(``x @ W.T``, BLAS on one thread as in bench_kernels.py), ``unstructured`` (our
SparseLinear on a weight with the given share of single weights zeroed; at batch 1 the
batch-1 kernel the runtime keeps on this host) and ``block RxC`` (our SparseBlockLinear on a
weight with the same share of whole R x C blocks zeroed) for each ``--blocks`` shape. Every
result is checked against float64 numpy before it is timed. The JSON holds p50 / p90 / min
per backend and point, the speedup of each sparse kernel over the fastest dense (p50 over
p50) and over the unstructured kernel, the host CPU, ISA and the load average before and
after each point. ``--isa avx2`` re-runs the sweep with the kernels compiled for an AVX2 CPU
(Zen 2) and torch / OpenBLAS limited to AVX2, as bench_kernels.py does (default output
``blocks_avx2.json``; ONNX Runtime keeps the host's ISA).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sparsify  # noqa: F401  isort: skip  (bounded OpenMP spinning, before torch loads)
import numpy as np
import torch

from benchmarks.bench_kernels import ort_matmul_session
from benchmarks.common import RESULTS, envelope, finish, finite, parser, rerun_for_avx2, say
from sparsify.bench.timing import Stats, measure_interleaved
from sparsify.kernels import CSR, SparseLinear, set_threads
from sparsify.kernels.bsr import BSR, SparseBlockLinear
from sparsify.runtime.calibrate import choose_batch1_forms

SCHEMA = "sparsify.blocks/1"
FULL = dict(shapes=[(768, 768), (3072, 768), (768, 3072), (4096, 4096)], batches=[1, 8, 128])
QUICK = dict(shapes=[(768, 768)], batches=[1, 8])
DENSE = ("ort_dense", "torch_dense", "numpy_dense")


def block_weight(base: np.ndarray, block: tuple[int, int], sparsity: float, rng: np.random.Generator) -> np.ndarray:
    """``base`` with round(sparsity * blocks) randomly chosen whole R x C blocks zeroed."""
    r, c = block
    rows, cols = base.shape
    n = (rows // r) * (cols // c)
    keep = np.ones(n, bool)
    keep[rng.permutation(n)[:int(round(sparsity * n))]] = False
    mask = np.repeat(np.repeat(keep.reshape(rows // r, cols // c), r, 0), c, 1)
    return np.where(mask, base, np.float32(0))


def run_point(shape, batch: int, threads: int, sparsity: float, blocks, min_time: float, rng) -> dict:
    out_f, in_f = shape
    base = rng.standard_normal(shape).astype(np.float32)
    x = rng.standard_normal((batch, in_f)).astype(np.float32)
    w_un = block_weight(base, (1, 1), sparsity, rng)
    unstructured = SparseLinear(CSR.from_dense(w_un))
    if batch == 1:
        choose_batch1_forms([unstructured], threads)
    layers = {"unstructured": (unstructured, w_un)}
    for r, c in blocks:
        w = block_weight(base, (r, c), sparsity, rng)
        layers[f"block {r}x{c}"] = (SparseBlockLinear(BSR.from_dense(w, (r, c))), w)
    for name, (layer, w) in layers.items():  # exactness first (and the JIT compile, untimed)
        err = float(np.abs(layer(x) - x.astype(np.float64) @ w.T.astype(np.float64)).max())
        if not err <= 1e-4 * max(1.0, float(np.abs(w).sum(1).max())):
            raise AssertionError(f"{name} {shape} batch {batch}: max abs err {err}")
    sess = ort_matmul_session(base, threads)
    wt = torch.from_numpy(base)
    xt = torch.from_numpy(x)
    w_np_t = np.ascontiguousarray(base.T)
    calls = {"ort_dense": lambda: sess.run(None, {"x": x}),
             "torch_dense": lambda: torch.nn.functional.linear(xt, wt),
             "numpy_dense": lambda: x @ w_np_t}
    calls.update({name: (lambda layer=layer: layer(x)) for name, (layer, _) in layers.items()})
    load_start = os.getloadavg()
    with torch.inference_mode():
        samples = measure_interleaved(list(calls.values()), min_time=min_time)
    stats = {name: Stats.from_ns(s) for name, s in zip(calls, samples)}
    fastest = min(DENSE, key=lambda k: stats[k].p50_ms)
    point = {"shape": list(shape), "batch": batch, "threads": threads, "sparsity": sparsity,
             "fastest_dense": fastest, "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
             "kernels": {name: layer.describe_batch1() if batch == 1 else type(layer).__name__
                         for name, (layer, _) in layers.items()},
             "stored_values": {name: int(layer.weight.nnz) for name, (layer, _) in layers.items()},
             "ms": {name: {"p50": finite(s.p50_ms), "p90": finite(s.p90_ms), "min": finite(s.min_ms), "n": s.n}
                    for name, s in stats.items()}}
    point["speedup_vs_fastest_dense"] = {name: finite(stats[fastest].p50_ms / stats[name].p50_ms, 4)
                                         for name in layers}
    point["speedup_vs_unstructured"] = {name: finite(stats["unstructured"].p50_ms / stats[name].p50_ms, 4)
                                        for name in layers if name != "unstructured"}
    return point


def main(argv=None) -> int:
    ap = parser(__doc__.split("\n\n")[0], "blocks.json", plot=False)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--blocks", default="1x4,4x1,16x1", help="comma-separated RxC block shapes")
    ap.add_argument("--min-time", type=float, default=None, help="seconds of timed calls per backend and point")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--isa", choices=["host", "avx2"], default="host",
                    help="kernel variant: the host's, or AVX2 code compiled for Zen 2 in a child process")
    args = ap.parse_args(argv)
    if args.isa == "avx2":
        out = args.out if "--out" in (sys.argv[1:] if argv is None else argv) else RESULTS / "blocks_avx2.json"
        code = rerun_for_avx2(__file__, sys.argv[1:] if argv is None else list(argv), out)
        if code is not None:
            return code
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    cfg = QUICK if args.quick else FULL
    blocks = [tuple(int(v) for v in b.lower().split("x")) for b in args.blocks.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    min_time = args.min_time if args.min_time is not None else (0.1 if args.quick else 0.3)
    doc = envelope(SCHEMA, {**cfg, "sparsity": args.sparsity, "threads": threads, "blocks": [list(b) for b in blocks],
                            "min_time": min_time, "seed": args.seed, "quick": args.quick})
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    points = []
    for n in threads:
        set_threads(n)
        torch.set_num_threads(n)
        for shape in cfg["shapes"]:
            for batch in cfg["batches"]:
                p = run_point(shape, batch, n, args.sparsity, blocks, min_time, rng)
                points.append(p)
                ms = p["ms"]
                fastest = p["fastest_dense"]
                say(f"{shape[0]}x{shape[1]} b{batch} t{n}: dense {fastest} {ms[fastest]['p50']:.4f}; "
                    + ", ".join(f"{k} {ms[k]['p50']:.4f} (p90 {ms[k]['p90']:.4f}) x{v:.2f}"
                                for k, v in p["speedup_vs_fastest_dense"].items())
                    + f"; load {p['loadavg_end'][0]:.2f}")
    doc["points"] = points
    doc["total_s"] = round(time.perf_counter() - t0, 1)
    finish(args.out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
