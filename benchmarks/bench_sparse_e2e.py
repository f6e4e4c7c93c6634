"""End-to-end latency of the sparse runtime against the dense ONNX export in ONNX Runtime.

Legs (all fp32, ``--threads`` threads, seeded, JIT warmed up first, interleaved timing with
``sparsify.bench.timing``, median and p90 per point, JSON written atomically):

- ``mlp``: four Linear(4096, 4096) + ReLU layers pruned to 90% unstructured sparsity,
  exported densely with ``export_onnx``, converted with the CSR pass, at batch 1, 8, 64:
  ``sparsify.runtime.Session`` on the sparse file vs ORT on the dense file;
- ``layers``: single 4096x4096 and 1024x1024 Linear layers at 90% through the runtime vs ORT;
- ``glue``: a small residual CNN converted completely, with the glue ops between sparse
  convs (Add, Relu, ReduceMean) run by numpy vs by ONNX Runtime segments;
- ``--crossover`` (separate document, ``sparse_crossover.json``): the density below which a
  CSR Linear / Conv beats ORT's dense op, per batch; the table in ``sparsify/passes/csr_policy.py``
  comes from it.

    python benchmarks/bench_sparse_e2e.py [--quick] [--out benchmarks/results/sparse_e2e.json]
    python benchmarks/bench_sparse_e2e.py --crossover --threads 1 --out benchmarks/results/sparse_crossover.json
    python benchmarks/bench_sparse_e2e.py --crossover --out benchmarks/results/sparse_crossover_2threads.json

The runtime and ORT are timed interleaved in one fresh process (``measure_in_child``, backend
"pair"), so the machine's drift hits both alike; the sparse runtime runs with its default
``OMP_WAIT_POLICY=PASSIVE`` and ``GOMP_SPINCOUNT`` (set by ``import sparsify``) and, for
comparison, with Numba's workqueue threading layer in a process of its own. The machine is shared: timings are noisy while
other jobs run (``loadavg`` in the JSON); ORT with 2 threads suffered from the load too
(the 4 x 4096 MLP at batch 1: 32.7 ms with 2 threads vs 19.1 ms with 1 in the saved runs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks.common import envelope, finish, finite, parser, say  # noqa: E402

DENSITIES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7)


def ort_session(path: str | Path, threads: int):
    """ORT exactly as the bench harness runs it (``sparsify.bench.backends.OrtRunner``)."""
    from sparsify.bench.backends import OrtRunner

    return OrtRunner(Path(path), threads).session


def prune_linear_(model, sparsity: float, seed: int) -> None:
    """Zero the smallest-magnitude ``sparsity`` of every Linear weight (unstructured, per layer)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.weight.shape[1] ** 0.5)
                k = int(sparsity * m.weight.numel())
                cut = m.weight.abs().flatten().kthvalue(k).values
                m.weight.mul_(m.weight.abs() > cut)


def export_pair(model, example, workdir: Path, name: str, threshold: float | None = None) -> tuple[Path, Path, Any]:
    """Dense export + CSR pass; returns (dense path, sparse path, plan)."""
    import onnx

    from sparsify.export.onnx_export import export_onnx
    from sparsify.passes.csr import CsrPass

    dense = workdir / f"{name}_dense.onnx"
    export_onnx(model.eval(), (example,), dense, ["x"], ["y"])
    result = CsrPass(threshold).call(onnx.load(str(dense)))
    sparse = workdir / f"{name}_sparse.onnx"
    onnx.save(result.model, str(sparse))
    return dense, sparse, result.plan


def _stats(samples_ns: list[int]) -> dict[str, Any]:
    from sparsify.bench.timing import Stats

    st = Stats.from_ns(samples_ns)
    return {"p50_ms": finite(st.p50_ms), "p90_ms": finite(st.p90_ms), "min_ms": finite(st.min_ms),
            "n": st.n, "spread": finite(st.spread)}


def torch_model(source: dict[str, Any]):
    """The dense torch model a leg exported, rebuilt from its seeds (no file unpickled)."""
    import torch

    from benchmarks.common import ffn_mlp

    if source["kind"] == "mlp":
        model = ffn_mlp(source["width"], source["depth"])
    else:
        model = torch.nn.Sequential(torch.nn.Linear(source["width"], source["width"]))
    prune_linear_(model, source["sparsity"], seed=source["seed"])
    return model.eval()


def _child_pair(spec: dict[str, Any]) -> dict[str, Any]:
    """ORT and torch on the dense model and the runtime on the sparse one, timed interleaved
    in this one process (blocks with settle calls, ``measure_interleaved``): drift hits
    them alike, and the runtime must not stall beside the other two's thread pools."""
    from sparsify.bench.timing import measure_interleaved
    from sparsify.runtime import Session

    ort = ort_session(spec["dense"], spec["threads"])
    sess = Session(spec["path"], threads=spec["threads"], glue=spec.get("glue", "numpy"))
    if spec.get("torch"):
        import torch

        torch.set_num_threads(spec["threads"])
        dense_torch = torch_model(spec["torch"])
    out = {}
    for batch, shape in spec["shapes"].items():
        x = np.random.default_rng(int(batch)).standard_normal(shape).astype(np.float32)
        calls = {"ort_dense": lambda: ort.run(None, {"x": x}), "sparsify": lambda: sess.run(None, {"x": x})}
        if spec.get("torch"):
            xt = torch.from_numpy(x)

            def calls_torch():
                with torch.inference_mode():
                    return dense_torch(xt)
            calls["torch_dense"] = calls_torch
        samples = measure_interleaved(list(calls.values()), warmup=20, min_time=spec["min_time"])
        out[batch] = {name: _stats(ns) for name, ns in zip(calls, samples)}
    return out


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one backend (or, for "pair", ORT and the runtime interleaved) on one file at
    several batches (runs in a fresh process)."""
    import sparsify.runtime  # noqa: F401  first: its OMP_WAIT_POLICY default must precede libgomp's loading
    from sparsify.bench.timing import measure
    from sparsify.kernels import set_threads, warmup

    set_threads(spec["threads"])
    warmup((np.float32,))
    if spec["backend"] == "pair":
        return _child_pair(spec)
    if spec["backend"] == "ort":
        sess = ort_session(spec["path"], spec["threads"])
    else:
        from sparsify.runtime import Session

        sess = Session(spec["path"], threads=spec["threads"], glue=spec.get("glue", "numpy"))
    out = {}
    for batch, shape in spec["shapes"].items():
        x = np.random.default_rng(int(batch)).standard_normal(shape).astype(np.float32)
        out[batch] = _stats(measure(lambda: sess.run(None, {"x": x}), warmup=20, min_time=spec["min_time"]))
        if spec["backend"] != "ort":
            import numba

            out[batch]["numba_threading_layer"] = numba.threading_layer()
            out[batch]["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
            out[batch]["gomp_spincount"] = os.environ.get("GOMP_SPINCOUNT")
    return out


def measure_in_child(backend: str, path: Path, shapes: dict[int, tuple[int, ...]], threads: int, min_time: float,
                     glue: str = "numpy", numba_layer: str | None = None,
                     dense: Path | None = None, torch_source: dict[str, Any] | None = None) -> dict[int, dict[str, Any]]:
    """Run :func:`_child` in a fresh interpreter (``backend="pair"``: ORT on ``dense`` and
    the runtime on ``path``, interleaved), so torch's threads do not share the process.

    Measured reason: in one process, torch's OpenMP pool (after the export) and ORT's
    intra-op threads spinning right after a call kept one of the two cores busy, and every
    Numba parallel region then waited for a scheduler tick: the 4 x 1024 MLP took 33-36
    ms per run right after ORT or torch work instead of 0.18 ms alone. The "pair" child
    has no torch in it, and ``measure_interleaved``'s settle calls let ORT's pool go quiet
    before each block of runtime calls.
    """
    import json
    import subprocess

    spec = {"backend": backend, "path": str(path), "threads": threads, "min_time": min_time, "glue": glue,
            "shapes": {str(b): list(s) for b, s in shapes.items()}, "dense": str(dense) if dense else None,
            "torch": torch_source}
    env = dict(os.environ)
    if numba_layer:
        env["NUMBA_THREADING_LAYER"] = numba_layer
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement of {backend} on {path} failed:\n{proc.stderr[-2000:]}")
    return {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def compare(dense: Path, sparse: Path, shape_of: Callable[[int], tuple[int, ...]], batches, threads: int,
            min_time: float, glue: str = "numpy", torch_source: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Runtime on ``sparse`` vs ORT on ``dense`` (and torch on the model ``torch_source``
    rebuilds) at each batch, after checking they agree.

    All are timed interleaved in one fresh process (see :func:`measure_in_child`); the
    runtime under Numba's workqueue threading layer, for comparison, in another.
    """
    from sparsify.runtime import Session

    sess = Session(sparse, threads=threads, glue=glue)
    ref = ort_session(dense, threads)
    errors = {}
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal(shape_of(batch)).astype(np.float32)
        y_sparse, y_dense = sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0]
        errors[batch] = float(np.abs(y_sparse.astype(np.float64) - y_dense).max())
    del sess, ref
    shapes = {b: shape_of(b) for b in batches}
    pair_t = measure_in_child("pair", sparse, shapes, threads, min_time, glue, dense=dense, torch_source=torch_source)
    # The same runtime with Numba's workqueue threading layer instead of the default (omp here):
    # omp's barrier waits stalled for scheduler ticks whenever other processes held the cores.
    wq_t = measure_in_child("sparsify", sparse, shapes, threads, min_time, glue, numba_layer="workqueue")
    rows = []
    for batch in batches:
        t = {**pair_t[batch], "sparsify_workqueue": wq_t[batch]}
        dense_names = [k for k in ("ort_dense", "torch_dense") if k in t]
        fastest = min(dense_names, key=lambda k: t[k]["p50_ms"])
        speedup = t["ort_dense"]["p50_ms"] / t["sparsify"]["p50_ms"]
        speedup_fastest = t[fastest]["p50_ms"] / t["sparsify"]["p50_ms"]
        speedup_wq = t["ort_dense"]["p50_ms"] / t["sparsify_workqueue"]["p50_ms"]
        torch_text = (f", torch dense {t['torch_dense']['p50_ms']:.3f} ms (p90 {t['torch_dense']['p90_ms']:.3f})"
                      if "torch_dense" in t else "")
        say(f"  batch {batch}: ORT dense {t['ort_dense']['p50_ms']:.3f} ms (p90 {t['ort_dense']['p90_ms']:.3f}){torch_text}, "
            f"sparse runtime {t['sparsify']['p50_ms']:.3f} ms (p90 {t['sparsify']['p90_ms']:.3f}) "
            f"-> x{speedup:.2f} vs ORT, x{speedup_fastest:.2f} vs fastest ({fastest}); with workqueue "
            f"{t['sparsify_workqueue']['p50_ms']:.3f} ms (p90 {t['sparsify_workqueue']['p90_ms']:.3f}) -> x{speedup_wq:.2f} "
            f"(max abs err {errors[batch]:.1e})")
        rows.append({"batch": batch, "max_abs_err": errors[batch],
                     "timing": "ORT, torch and sparsify interleaved in one process",
                     **t, "speedup_p50": finite(speedup),
                     "speedup_min": finite(t["ort_dense"]["min_ms"] / t["sparsify"]["min_ms"]),
                     "fastest_dense": fastest, "speedup_p50_vs_fastest_dense": finite(speedup_fastest),
                     "sparsify_p90_over_p50": finite(t["sparsify"]["p90_ms"] / t["sparsify"]["p50_ms"]),
                     "speedup_p50_workqueue": finite(speedup_wq)})
    return rows


def leg_mlp(workdir: Path, width: int, batches, threads: int, min_time: float) -> dict[str, Any]:
    import torch

    from benchmarks.common import ffn_mlp

    model = ffn_mlp(width, 4)
    prune_linear_(model, 0.9, seed=0)
    say(f"mlp: 4 x Linear({width}, {width}) + ReLU at 90% sparsity")
    dense, sparse, plan = export_pair(model, torch.randn(1, width), workdir, "mlp")
    return {"width": width, "depth": 4, "sparsity": 0.9, "converted": len(plan.converted),
            "dense_bytes": dense.stat().st_size, "sparse_bytes": sparse.stat().st_size,
            "rows": compare(dense, sparse, lambda b: (b, width), batches, threads, min_time,
                            torch_source={"kind": "mlp", "width": width, "depth": 4, "sparsity": 0.9, "seed": 0})}


def leg_layers(workdir: Path, sizes, batches, threads: int, min_time: float) -> list[dict[str, Any]]:
    import torch

    out = []
    for n in sizes:
        model = torch.nn.Sequential(torch.nn.Linear(n, n))
        prune_linear_(model, 0.9, seed=n)
        say(f"layer: Linear({n}, {n}) at 90% sparsity")
        dense, sparse, _ = export_pair(model, torch.randn(1, n), workdir, f"layer{n}", threshold=1.0)
        out.append({"size": n, "sparsity": 0.9,
                    "rows": compare(dense, sparse, lambda b, n=n: (b, n), batches, threads, min_time,
                                    torch_source={"kind": "layer", "width": n, "sparsity": 0.9, "seed": n})})
    return out


def leg_glue(workdir: Path, threads: int, min_time: float) -> dict[str, Any]:
    """Numpy vs ORT for the glue ops of a small residual CNN (all convs converted)."""
    import torch
    from torch import nn

    from sparsify.runtime import Session

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            return torch.relu(x + self.b(torch.relu(self.a(x))))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.b1, self.b2 = nn.Conv2d(3, 32, 3, padding=1), Block(32), Block(32)
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            return self.head(self.b2(self.b1(torch.relu(self.stem(x)))).mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = Net()
    dense, sparse, _ = export_pair(model, torch.randn(1, 3, 8, 8), workdir, "glue", threshold=1.0)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    sessions = {g: Session(sparse, threads=threads, glue=g) for g in ("numpy", "ort")}
    ref = sessions["ort"].run(None, {"x": x})[0]
    err = float(np.abs(sessions["numpy"].run(None, {"x": x})[0] - ref).max())
    t = {f"glue_{g}": measure_in_child("sparsify", sparse, {1: x.shape}, threads, min_time, g)[1]
         for g in ("numpy", "ort")}
    say(f"glue: numpy {t['glue_numpy']['p50_ms']:.3f} ms, ort {t['glue_ort']['p50_ms']:.3f} ms per run "
        f"({sum(st.kind != 'sparse' for st in sessions['numpy'].steps)} glue steps)")
    return {"model": "conv3x3(3->32)+relu, 2 residual blocks of two 3x3 convs, mean, Linear; batch 1, 8x8",
            "steps": sessions["numpy"].describe(), "max_abs_err_numpy_vs_ort": err, **t}


def crossover(threads: int, quick: bool, min_time: float) -> dict[str, Any]:
    """Sparse/dense time ratio per density; the largest density on the grid where sparse wins."""
    from onnx import TensorProto, helper, numpy_helper

    from sparsify.bench.timing import Stats, measure
    from sparsify.kernels import CSR, SparseConv2d, SparseLinear

    def model(op: str, w: np.ndarray, **attrs):
        node = helper.make_node(op, ["x", "w"], ["y"], **attrs)
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()

    rng = np.random.default_rng(0)
    cases: list[tuple[str, Any, np.ndarray, Callable[[np.ndarray], Any], int]] = []
    for n in ((1024,) if quick else (1024, 4096)):
        for batch in (1, 8, 64):
            cases.append((f"linear {n}x{n} batch {batch}", "linear", rng.standard_normal((n, n)).astype(np.float32),
                          lambda w: model("Gemm", w, transB=1), batch))
    for c, hw, k, stride in ((64, 8, 3, 1), (64, 16, 3, 1), (256, 14, 3, 1), (128, 16, 1, 1),
                             (64, 16, 3, 2)):
        cases.append((f"conv {c}x{c} {k}x{k}{' stride 2' if stride == 2 else ''} on {hw}x{hw} batch 1",
                      "conv", rng.standard_normal((c, c, k, k)).astype(np.float32),
                      lambda w, s=stride: model("Conv", w, pads=[w.shape[2] // 2] * 4, strides=[s, s]),
                      (hw, stride)))
    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="sparse-crossover-"))
    for name, kind, w, build, param in cases:
        (workdir / "op.onnx").write_bytes(build(w))
        sess = ort_session(workdir / "op.onnx", threads)
        if kind == "linear":
            x = rng.standard_normal((param, w.shape[1])).astype(np.float32)
        else:
            hw, stride = param
            x = rng.standard_normal((1, w.shape[1], hw, hw)).astype(np.float32)
        # Dense first, then a pause, then the kernels: ORT's spinning pool threads must not
        # share the cores with the Numba threads (see measure_in_child). The decision uses the
        # fastest call of each (min): on the shared 2-core machine a 2-thread Numba region
        # stalls for a scheduler tick whenever another process holds a core, which made the
        # median bimodal (0.06x or 40x the dense time for the same point); the minimum is
        # the uncontended speed of both sides.
        dense = Stats.from_ns(measure(lambda: sess.run(None, {"x": x}), warmup=20, min_time=min_time))
        del sess
        time.sleep(0.3)
        ratios, sparse_ms = {}, {}
        for d in DENSITIES:
            wd = w * (rng.random(w.shape) < d)
            if kind == "linear":
                layer = SparseLinear(CSR.from_dense(wd))
            else:
                k = w.shape[2]
                layer = SparseConv2d(CSR.from_dense(wd.reshape(w.shape[0], -1)), kernel_size=k, padding=k // 2,
                                     stride=stride)
            st = Stats.from_ns(measure(lambda: layer(x), warmup=20, min_time=min_time))
            sparse_ms[str(d)] = {"min_ms": finite(st.min_ms), "p50_ms": finite(st.p50_ms)}
            ratios[str(d)] = finite(st.min_ms / dense.min_ms)
        wins = [d for d in DENSITIES if ratios[str(d)] is not None and ratios[str(d)] < 1.0]
        best = max((d for d in wins if all(ratios[str(e)] < 1.0 for e in DENSITIES if e <= d)), default=0.0)
        say(f"{name}: sparse/dense (min) " + " ".join(f"{d}:{ratios[str(d)]:.2f}" for d in DENSITIES)
            + f" -> crossover {best}")
        rows.append({"case": name, "kind": kind,
                     "dense_ms": {"min_ms": finite(dense.min_ms), "p50_ms": finite(dense.p50_ms)},
                     "sparse_ms": sparse_ms, "sparse_over_dense_min": ratios, "crossover_density": best})
    shutil.rmtree(workdir, ignore_errors=True)
    return {"densities": list(DENSITIES), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], "sparse_e2e.json", plot=False)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--crossover", action="store_true", help="measure the density crossover table instead")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--isa", choices=["host", "avx2"], default="host",
                   help="kernel variant: the host's (default), or AVX2 code compiled for Zen 2 (as bench_kernels.py "
                        "--isa avx2; default output sparse_e2e_avx2.json)")
    args = p.parse_args(argv)
    if args.child:
        import json

        print(json.dumps(_child(json.loads(args.child))))
        return 0
    if args.isa == "avx2":
        from benchmarks.common import rerun_for_avx2

        code = rerun_for_avx2(__file__, sys.argv[1:] if argv is None else argv,
                              args.out.with_name("sparse_e2e_avx2.json"))
        if code is not None:
            return code
    from sparsify.kernels import set_threads, warmup

    set_threads(args.threads)
    warmup((np.float32,))
    min_time = 0.1 if args.quick else 0.5
    if args.crossover:
        if args.out.name == "sparse_e2e.json":
            args.out = args.out.with_name("sparse_crossover.json")
        doc = envelope("sparsify.sparse_crossover/1", {"threads": args.threads, "quick": args.quick,
                                                         "min_time": min_time})
        doc.update(crossover(args.threads, args.quick, min_time))
    else:
        width = 1024 if args.quick else 4096
        batches = (1, 8) if args.quick else (1, 8, 64)
        doc = envelope("sparsify.sparse_e2e/1", {"threads": args.threads, "quick": args.quick, "min_time": min_time,
                                                   "batches": list(batches), "isa": args.isa})
        with tempfile.TemporaryDirectory(prefix="sparse-e2e-") as tmp:
            work = Path(tmp)
            doc["mlp"] = leg_mlp(work, width, batches, args.threads, min_time)
            doc["layers"] = leg_layers(work, (1024,) if args.quick else (4096, 1024), batches, args.threads, min_time)
            doc["glue"] = leg_glue(work, args.threads, min_time)
    finish(args.out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
