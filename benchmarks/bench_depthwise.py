"""Depthwise convolution: our kernels (``sparsify.kernels.depthwise``) against ONNX Runtime's Conv.

    python benchmarks/bench_depthwise.py [--quick] [--threads 2] [--min-time 0.5]
                                         [--out benchmarks/results/depthwise.json]

For each depthwise layer of MobileNetV2 (3x3), EfficientNet-B0 (5x5) and ConvNeXt-T (7x7)
listed in SHAPES (C, H, W, stride, kernel k; padding k // 2, batch 1) it times a one-node
ONNX ``Conv`` (``group=C``, weight and bias as initializers) in an ONNX Runtime session
(``sparsify.ortsession.ort_session``: all graph optimizations, so ORT runs it in its
blocked channel layout with the reorders around it, and its spinning pool) against
:class:`sparsify.kernels.depthwise.DepthwiseConv2d` on the same input, with ``threads``
threads each. Both are called once untimed (the Numba kernels compile then) and their
outputs compared with a float64 reference (the script stops when ours differs from it by
more than TOLERANCE; ORT's own difference is recorded: float32 sums of 49 taps reach 1e-5
apart from any order), then they are timed interleaved in blocks
(``sparsify.bench.timing.measure_interleaved``). The JSON holds p50 and p90 per shape and
backend, ORT's p50 over ours, the CPU model as ``lscpu`` names it and the kernel variant
(``sparsify.kernels.isa``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# First: importing sparsify sets the bounded OpenMP spin defaults before any pool starts.
import sparsify  # noqa: F401  isort: skip

from benchmarks.common import envelope, finish, finite, parser, say, stop  # noqa: E402

SCHEMA = "sparsify.depthwise/2"
# (channels, height, width, stride, kernel) of depthwise convs at a 224x224 input: MobileNetV2's
# (width 1.0, 3x3), EfficientNet-B0's 5x5 ones (with the stride-1 twin of its 56x56 one) and
# ConvNeXt-T's 7x7 ones.
SHAPES = ((32, 112, 112, 1, 3), (96, 112, 112, 2, 3), (144, 56, 56, 1, 3), (144, 56, 56, 2, 3), (192, 28, 28, 1, 3),
          (192, 28, 28, 2, 3), (384, 14, 14, 1, 3), (576, 14, 14, 1, 3), (576, 14, 14, 2, 3), (960, 7, 7, 1, 3),
          (144, 56, 56, 1, 5), (144, 56, 56, 2, 5), (240, 28, 28, 1, 5), (672, 14, 14, 1, 5), (672, 14, 14, 2, 5),
          (1152, 7, 7, 1, 5), (96, 56, 56, 1, 7), (192, 28, 28, 1, 7), (384, 14, 14, 1, 7), (768, 7, 7, 1, 7))
QUICK_SHAPES = ((32, 28, 28, 1, 3), (64, 14, 14, 2, 3), (48, 14, 14, 2, 5), (32, 7, 7, 1, 7))
# Largest difference allowed between our output and a float64 reference (unit-scale inputs and weights).
TOLERANCE = 1e-5


def lscpu_model() -> str:
    """``Model name`` as ``lscpu`` reports it (else /proc/cpuinfo's, via ``sparsify.machine``)."""
    from sparsify.machine import cpu_model

    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True,
                              env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.CalledProcessError):
        return cpu_model()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "Model name":
            return value.strip()
    return cpu_model()


def conv_model(w, b, stride: int) -> bytes:
    """A one-node depthwise Conv (k x k, padding k // 2) with ``w`` (C, 1, k, k) and ``b`` (C,) as initializers."""
    from onnx import TensorProto, helper, numpy_helper

    c, k = w.shape[0], w.shape[2]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=c, kernel_shape=[k, k], pads=[k // 2] * 4,
                            strides=[stride, stride])
    graph = helper.make_graph([node], "depthwise", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def reference(x, w, b, stride: int):
    """The depthwise conv (padding k // 2) in float64, tap by tap over a zero-padded copy."""
    import numpy as np

    k = w.shape[2]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    ho, wo = (xp.shape[2] - k) // stride + 1, (xp.shape[3] - k) // stride + 1
    out = np.zeros((x.shape[0], x.shape[1], ho, wo)) + b.astype(np.float64)[None, :, None, None]
    for ky in range(k):
        for kx in range(k):
            rows = xp[:, :, ky:ky + stride * (ho - 1) + 1:stride, kx:kx + stride * (wo - 1) + 1:stride]
            out += w[None, :, 0, ky, kx, None, None].astype(np.float64) * rows
    return out


def measure_shape(c: int, h: int, w: int, stride: int, kernel: int, threads: int, min_time: float,
                  seed: int) -> dict:
    """One point: p50/p90 of ORT and ours, ORT's p50 over ours, each output's largest difference
    from the float64 reference."""
    import numpy as np

    from sparsify.bench.timing import Stats, measure_interleaved
    from sparsify.kernels.depthwise import DepthwiseConv2d
    from sparsify.ortsession import ort_session

    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((c, 1, kernel, kernel)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    sess = ort_session(conv_model(weight, bias, stride), threads)
    ours = DepthwiseConv2d(weight, bias, (stride, stride), (kernel // 2,) * 4)
    want, got, theirs = reference(x, weight, bias, stride), ours(x), sess.run(None, {"x": x})[0]
    err = float(np.abs(got - want).max())
    if got.shape != want.shape or theirs.shape != want.shape or not err <= TOLERANCE:
        stop(f"shape {(c, h, w, stride, kernel)}", f"our output (shape {got.shape}; ONNX Runtime's {theirs.shape}) "
             f"differs from the float64 reference (shape {want.shape}) by {err:.3g}, more than {TOLERANCE}",
             "The kernel is wrong for this shape: fix it first.")
    calls = {"ort": lambda: sess.run(None, {"x": x}), "ours": lambda: ours(x)}
    samples = measure_interleaved(list(calls.values()), min_time=min_time)
    point: dict = {"channels": c, "height": h, "width": w, "stride": stride, "kernel": kernel,
                   "max_abs_err": finite(err), "ort_max_abs_err": finite(float(np.abs(theirs - want).max()))}
    for name, s in zip(calls, samples):
        st = Stats.from_ns(s)
        point[name] = {"p50_us": finite(st.p50_ms * 1e3), "p90_us": finite(st.p90_ms * 1e3), "n": st.n}
    point["ort_over_ours"] = finite(point["ort"]["p50_us"] / point["ours"]["p50_us"])
    return point


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], "depthwise.json", plot=False)
    p.add_argument("--threads", type=int, default=2, help="threads of ORT's pool and of our kernels")
    p.add_argument("--min-time", type=float, default=None, help="seconds of timed calls per backend and shape")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from sparsify.kernels import isa, set_threads
    from sparsify.kernels.threads import threading_layer

    set_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    min_time = args.min_time if args.min_time is not None else (0.05 if args.quick else 0.5)
    doc = envelope(SCHEMA, {"threads": args.threads, "min_time": min_time, "seed": args.seed, "quick": args.quick,
                            "kernel": "k x k, padding k // 2, batch 1, float32, bias", "tolerance": TOLERANCE})
    doc.update({"lscpu_model_name": lscpu_model(), "kernel_variant": isa.VARIANT,
                "threading_layer": threading_layer(), "points": []})
    for i, (c, h, w, s, k) in enumerate(shapes):
        point = measure_shape(c, h, w, s, k, args.threads, min_time, args.seed + i)
        say(f"C={c} {h}x{w} {k}x{k} stride {s}: ours {point['ours']['p50_us']:.1f} us, ORT "
            f"{point['ort']['p50_us']:.1f} us (x{point['ort_over_ours']:.2f})")
        doc["points"].append(point)
    finish(args.out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
