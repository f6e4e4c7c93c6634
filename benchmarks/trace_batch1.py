"""Where a batch-1 sparse layer call spends its time: timestamps read inside the kernel.

An instrumented copy of the sliced-ELL SpMV (``sparsify.kernels._jit.ell_spmv_kernel``
for a padded layout and one input vector: the same ``permute_dot`` per row group) records
the CPU's cycle counter when each parallel row chunk starts and ends, and which thread ran
it. Around every call the script reads the same counter, so each call splits into

- ``pre``: from the call's start until the first chunk starts (Python, Numba's dispatch,
  the parallel launch);
- ``work``: per thread, from its first chunk's start to its last chunk's end;
- ``post``: from the last chunk's end until the call has returned;

for the parallel kernel and for its serial twin, alternating blocks of calls. The cycle
counter is converted to time against ``time.perf_counter`` over 0.2 s.

Run::

    python benchmarks/trace_batch1.py [--quick] [--size 1024] [--sparsity 0.9] [--threads 2]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from benchmarks.common import envelope, finish, finite, parser
from sparsify.kernels._jit import activate_block, all_finite
from sparsify.kernels._simd import PERMUTE_LANES, permute_dot

SCHEMA = "sparsify.trace_batch1/1"


@intrinsic
def cycles(typingctx):
    """The CPU's cycle counter (``llvm.readcyclecounter``: rdtsc on x86)."""
    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.IntType(64), [])
        fn = builder.module.globals.get("llvm.readcyclecounter") or ir.Function(
            builder.module, fnty, "llvm.readcyclecounter")
        return builder.call(fn, [])
    return types.int64(), codegen


@numba.njit(nogil=True)
def read_cycles() -> int:  # pragma: no cover - compiled
    return cycles()


def traced_kernel(segment: int):
    """The instrumented SpMV: ``_jit.ell_spmv_kernel(0, 1, 0, 16, 0, segment)`` (AVX-512, per-pair windows of
    ``segment`` columns) plus ``stamps[ch] = (start, end, thread)`` per row chunk (compiled on first use, not
    cached)."""
    @numba.njit(parallel=True, nogil=True, error_model="numpy")
    def traced_spmv(values, offsets, segments, slot_ptr, value_start, group_ptr, rows, x, bias, act, out,
                    bounds, stamps):  # pragma: no cover - compiled
        n_rows = bias.shape[0]
        finite = all_finite(x)
        for ch in numba.prange(bounds.shape[0] - 1):
            stamps[ch, 0] = cycles()
            acc = np.empty(PERMUTE_LANES, dtype=out.dtype)
            for g in range(bounds[ch], bounds[ch + 1]):
                if finite:
                    permute_dot(values, offsets, segments, slot_ptr, value_start, group_ptr[g], group_ptr[g + 1],
                                x, 0, acc, 0, 1, 0, PERMUTE_LANES, segment, 0, 1)
                else:
                    permute_dot(values, offsets, segments, slot_ptr, value_start, group_ptr[g], group_ptr[g + 1],
                                x, 0, acc, 0, 1, 0, PERMUTE_LANES, segment, 0, 0)
                r0 = g * PERMUTE_LANES
                m = min(PERMUTE_LANES, n_rows - r0)
                for lane in range(m):
                    acc[lane] += bias[rows[r0 + lane]]
                activate_block(acc, 0, m, act)
                for lane in range(m):
                    out[rows[r0 + lane]] = acc[lane]
            stamps[ch, 1] = cycles()
            stamps[ch, 2] = numba.np.ufunc.parallel._get_thread_id()

    return traced_spmv


def cycles_per_us(seconds: float = 0.2) -> float:
    """The cycle counter's rate, measured against ``time.perf_counter``."""
    read_cycles()
    t0, c0 = time.perf_counter(), read_cycles()
    while time.perf_counter() - t0 < seconds:
        pass
    t1, c1 = time.perf_counter(), read_cycles()
    return (c1 - c0) / ((t1 - t0) * 1e6)


def split_calls(calls: np.ndarray, stamps: np.ndarray, rate: float) -> dict[str, np.ndarray]:
    """Per call, in us: total, pre, post and each thread's work (``calls`` (n, 2): counter
    before and after; ``stamps`` (n, chunks, 3): start, end, thread per chunk)."""
    start, end, thread = stamps[:, :, 0], stamps[:, :, 1], stamps[:, :, 2]
    parts = {"total": calls[:, 1] - calls[:, 0], "pre": start.min(axis=1) - calls[:, 0],
             "post": calls[:, 1] - end.max(axis=1)}
    work = []
    for t in np.unique(thread):
        mine = thread == t
        first = np.where(mine, start, np.iinfo(np.int64).max).min(axis=1)
        last = np.where(mine, end, np.iinfo(np.int64).min).max(axis=1)
        work.append(np.where(mine.any(axis=1), last - first, 0))
    parts["work_max"] = np.max(work, axis=0)
    return {k: v / rate for k, v in parts.items()}


def summary(us: np.ndarray) -> dict[str, float | None]:
    p10, p50, p90 = np.percentile(us, [10, 50, 90])
    return {"p10_us": finite(p10), "p50_us": finite(p50), "p90_us": finite(p90)}


def run(size: int, sparsity: float, threads: int, calls: int, rounds: int) -> dict[str, Any]:
    from sparsify.kernels import CSR, SparseLinear, set_threads

    set_threads(threads)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((size, size)).astype(np.float32)
    w[rng.random((size, size)) < sparsity] = 0
    layer = SparseLinear(CSR.from_dense(w), rng.standard_normal(size).astype(np.float32), "relu", batch1="ell",
                         variant="avx512")  # the traced kernel is the 16-lane one
    e, call = layer.ell, layer._ell_call
    x = rng.standard_normal(size).astype(np.float32)
    # The arguments the layer's own calls pass: its layout arrays as the kernels take them, and
    # the input zero-padded to the layout's width (the last window may reach past the columns;
    # a kernel reading past the input's end would add whatever lies there).
    head, tail = call.arrays, (call.bias, call.act)
    xw = np.zeros(call.width, np.float32)
    xw[:size] = x
    out = np.empty(size, np.float32)
    kernels = {"parallel": (traced_kernel(e.geometry.segment), call.bounds)}
    # The serial twin: the same function without parallel=True (prange runs as range).
    twin = numba.njit(nogil=True, error_model="numpy")(kernels["parallel"][0].py_func)
    kernels["serial"] = (twin, call.serial_bounds)
    stamps = {k: np.zeros((b.shape[0] - 1, 3), np.int64) for k, (_, b) in kernels.items()}
    expect = layer(x)
    for name, (kernel, bounds) in kernels.items():
        for _ in range(50):
            kernel(*head, xw, *tail, out, bounds, stamps[name])
        if not np.array_equal(out, expect):
            raise AssertionError(f"the traced {name} kernel disagrees with SparseLinear")
    rate = cycles_per_us()
    rec = {k: ([], []) for k in kernels}
    for _ in range(rounds):
        for name, (kernel, bounds) in kernels.items():
            st = stamps[name]
            args = (*head, xw, *tail, out, bounds, st)
            around = np.empty((calls, 2), np.int64)
            inside = np.empty((calls,) + st.shape, np.int64)
            for i in range(calls):
                around[i, 0] = read_cycles()
                kernel(*args)
                around[i, 1] = read_cycles()
                inside[i] = st
            rec[name][0].append(around)
            rec[name][1].append(inside)
    result = {}
    for name, (around, inside) in rec.items():
        parts = split_calls(np.concatenate(around), np.concatenate(inside), rate)
        result[name] = {k: summary(v) for k, v in parts.items()}
        result[name]["chunks"] = int(kernels[name][1].shape[0] - 1)
    return {"layer": {"shape": [size, size], "sparsity": sparsity, "batch": 1, "threads": threads,
                      "layout": layer.describe_batch1(), "slots": e.slots, "pairs": int(e.slot_ptr.shape[0] - 1)},
            "cycles_per_us": finite(rate), "kernels": result}


def main(argv=None) -> int:
    ap = parser(__doc__.split("\n\n")[0], "trace_batch1.json", plot=False)
    ap.add_argument("--size", type=int, default=1024, help="the layer is size x size (default 1024)")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    calls, rounds = (200, 1) if args.quick else (2000, 10)
    config = {"quick": args.quick, "size": args.size, "sparsity": args.sparsity, "threads": args.threads,
              "calls_per_block": calls, "rounds": rounds}
    doc = {**envelope(SCHEMA, config), **run(args.size, args.sparsity, args.threads, calls, rounds)}
    finish(args.out, doc)
    for name, parts in doc["kernels"].items():
        print(f"{name:8s} ({parts['chunks']} chunks): " + ", ".join(
            f"{k} p50 {parts[k]['p50_us']:.2f} us" for k in ("total", "pre", "work_max", "post")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
