"""Batch-1 layout forms: the size rules' choice against the one timed at load, per chain of layers.

    python benchmarks/bench_batch1_forms.py [--quick] [--isa avx2] [--out benchmarks/results/batch1_forms.json]

For each chain (``depth`` Linear(width, width) layers at a sparsity, called one after another
at batch 1, as a model's layers run), it builds the layers twice: once in the forms the size
rules choose (``spmm.fit_batch1_layouts``: padded or compact, prefetched or not, from the
L3's size), once in the forms the load-time timing keeps
(``sparsify.runtime.calibrate.choose_working_set``, measured afresh: no cache). It then
times both chains interleaved in one process (``sparsify.bench.timing.measure_interleaved``,
median and p90) and records the calibration's own timings beside them. ``--isa avx2``
re-runs itself with the AVX2 kernels (see ``benchmarks/common.py``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import envelope, finish, finite, parser, rerun_for_avx2, say  # noqa: E402

# (width, depth, sparsity): one layer in the L3, beside it, beyond it; two and four layers.
CHAINS = [(4096, 1, 0.9), (4096, 1, 0.8), (4096, 2, 0.9), (4096, 4, 0.9), (4096, 4, 0.95), (2048, 4, 0.9)]
QUICK = [(2048, 2, 0.9)]
SCHEMA = "sparsify.batch1_forms/1"


def forms(layers) -> list[str]:
    """Each layer's batch-1 form, e.g. "compact, prefetched" or "CSR"."""
    out = []
    for layer in layers:
        if layer.ell is None:
            out.append("CSR")
        else:
            out.append(("compact" if layer.ell.compact else "padded")
                       + (", prefetched" if layer.batch1_prefetched else ""))
    return out


def chain_point(width: int, depth: int, sparsity: float, threads: int, min_time: float) -> dict:
    import numpy as np

    from sparsify.bench.timing import Stats, measure_interleaved
    from sparsify.kernels import CSR, SparseLinear
    from sparsify.kernels.spmm import fit_batch1_layouts
    from sparsify.runtime import calibrate

    rng = np.random.default_rng(0)
    weights = []
    for _ in range(depth):
        w = rng.standard_normal((width, width)).astype(np.float32)
        w[rng.random(w.shape) < sparsity] = 0
        weights.append(CSR.from_dense(w))
    sized = [SparseLinear(w) for w in weights]
    fit_batch1_layouts(sized)
    timed = [SparseLinear(w) for w in weights]
    fit_batch1_layouts(timed)
    with tempfile.TemporaryDirectory() as cache:
        cal = calibrate.Calibrator(threads, cache)
        lines = calibrate.choose_working_set(timed, cal)
        entry = next((cal.recall(k) for k in cal.keys if k.startswith("batch1 set ")), None) or {}
    x = [rng.standard_normal(width).astype(np.float32) for _ in range(depth)]
    for a, b, xi in zip(sized, timed, x):  # the same outputs either way
        np.testing.assert_allclose(a(xi), b(xi), rtol=1e-5, atol=1e-4)

    def run(layers):
        return lambda: [layer(xi) for layer, xi in zip(layers, x)]

    samples = measure_interleaved([run(sized), run(timed)], min_time=min_time)
    stats = [Stats.from_ns(s) for s in samples]
    point = {"width": width, "depth": depth, "sparsity": sparsity, "rules": forms(sized), "timed": forms(timed),
             "calibration": lines[0] if lines else "not timed (within the cache budget or beyond 4x the L3)",
             "calibration_ms": {k: entry[k] for k in ("sized_ms", "best_ms") if k in entry},
             "rules_ms": {"p50": finite(stats[0].p50_ms), "p90": finite(stats[0].p90_ms)},
             "timed_ms": {"p50": finite(stats[1].p50_ms), "p90": finite(stats[1].p90_ms)}}
    point["rules_over_timed"] = finite(stats[0].p50_ms / stats[1].p50_ms)
    return point


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], "batch1_forms.json", plot=False)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--isa", choices=["host", "avx2"], default="host")
    args = p.parse_args(argv)
    if args.isa == "avx2":
        default = Path(__file__).resolve().parent / "results" / "batch1_forms_avx2.json"
        out = args.out if "--out" in (argv if argv is not None else sys.argv[1:]) else default
        code = rerun_for_avx2(__file__, sys.argv[1:] if argv is None else argv, out)
        if code is not None:
            return code
    from sparsify.kernels import ell, set_threads, warmup

    import numpy as np

    set_threads(args.threads)
    warmup((np.float32,), (np.int16,))
    chains = QUICK if args.quick else CHAINS
    doc = envelope(SCHEMA, {"threads": args.threads, "chains": chains, "quick": args.quick,
                                              "l3_bytes": ell.cache_bytes(3, ell.DEFAULT_L3_BYTES)})
    doc["points"] = []
    for width, depth, sparsity in chains:
        pt = chain_point(width, depth, sparsity, args.threads, 0.3 if args.quick else 1.0)
        say(f"{depth} x {width}^2 at {sparsity:.0%}: rules {pt['rules']} {pt['rules_ms']['p50']:.4f} ms, "
            f"timed {pt['timed']} {pt['timed_ms']['p50']:.4f} ms (x{pt['rules_over_timed']:.2f}); {pt['calibration']}")
        doc["points"].append(pt)
    finish(args.out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
