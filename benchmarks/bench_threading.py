"""Stalls: our 2-thread batch-1 kernels beside ORT and torch in one process, per threading setting.

    python benchmarks/bench_threading.py [--quick] [--out benchmarks/results/threading.json]

For each setting (Numba threading layer and OpenMP spin policy, set in the environment of
a fresh process) it times, interleaved in blocks in that one process
(``sparsify.bench.timing.measure_interleaved``): ORT dense (its default spinning pool),
torch dense, numpy dense and our SparseLinear on 1024x1024 and 4096x4096 layers at 90%
sparsity, batch 1, 2 threads. What matters is our p90 / p50: a kernel whose second
thread waits for a core (held by ORT's or torch's spinning pool, or by another process)
stalls for a scheduler tick, which shows in the p90 long before the median. The choice
it led to is ``sparsify.kernels.threads.THREADING`` (one place); run this on a shared
machine, since stalls are what it looks for, and note the load average it records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import envelope, finish, finite, parser, say, stop  # noqa: E402

# name -> environment of the measuring process (on top of the caller's, minus these keys).
SETTINGS = {
    "omp, GOMP_SPINCOUNT=10000 (passive after ~0.1 ms)": {"NUMBA_THREADING_LAYER": "omp",
                                                          "OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"},
    "omp, GOMP_SPINCOUNT=0 (passive)": {"NUMBA_THREADING_LAYER": "omp", "OMP_WAIT_POLICY": "PASSIVE",
                                        "GOMP_SPINCOUNT": "0"},
    "omp, GOMP_SPINCOUNT=1000 (~10 us)": {"NUMBA_THREADING_LAYER": "omp", "OMP_WAIT_POLICY": "PASSIVE",
                                          "GOMP_SPINCOUNT": "1000"},
    "workqueue": {"NUMBA_THREADING_LAYER": "workqueue", "OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"},
    "tbb": {"NUMBA_THREADING_LAYER": "tbb", "OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"},
}
KEYS = ("NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def child(spec: dict) -> dict:
    """Measure in this process (its environment holds the setting)."""
    import sparsify  # noqa: F401  first: the OpenMP defaults precede libgomp's loading
    import numba
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from sparsify.bench.timing import Stats, measure_interleaved
    from sparsify.kernels import CSR, SparseLinear, isa, set_threads, warmup

    from threadpoolctl import threadpool_limits

    threads = spec["threads"]
    # numpy's BLAS on one thread: with two, OpenBLAS's pool busy-waits after each call and
    # held a core against every other library here (numpy's 1024^2 GEMV: p50 16 ms).
    threadpool_limits(1, user_api="blas")
    set_threads(threads)
    torch.set_num_threads(threads)
    warmup((np.float32,), (np.int16,))
    rng = np.random.default_rng(0)
    out = {"threading_layer": numba.threading_layer(), "kernel_variant": isa.VARIANT, "points": []}
    for n in spec["sizes"]:
        w = rng.standard_normal((n, n)).astype(np.float32)
        w[rng.random((n, n)) >= 0.1] = 0
        x = rng.standard_normal((1, n)).astype(np.float32)
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "wt"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                                  [numpy_helper.from_array(np.ascontiguousarray(w.T), "wt")])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(helper.make_model(graph).SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        layer = SparseLinear(CSR.from_dense(w))
        wt, xt = torch.from_numpy(w), torch.from_numpy(x)
        calls = {"ort_dense": lambda: sess.run(None, {"x": x}), "torch_dense": lambda: torch.nn.functional.linear(xt, wt),
                 "numpy_dense": lambda: x @ w.T, "ours": lambda: layer(x)}
        with torch.inference_mode():
            samples = measure_interleaved(list(calls.values()), min_time=spec["min_time"])
        point = {"size": n, "layout": layer.describe_batch1()}
        for name, s in zip(calls, samples):
            st = Stats.from_ns(s)
            point[name] = {"p50_ms": finite(st.p50_ms), "p90_ms": finite(st.p90_ms), "p99_ms": finite(st.p99_ms),
                           "n": st.n}
        point["ours_p90_over_p50"] = finite(point["ours"]["p90_ms"] / point["ours"]["p50_ms"])
        out["points"].append(point)
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], "threading.json", plot=False)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep-going", action="store_true",
                   help="record a setting whose process fails as failed and measure the others")
    p.add_argument("--child", help=argparse_suppress())
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    spec = {"threads": args.threads, "sizes": [1024] if args.quick else [1024, 4096],
            "min_time": 0.1 if args.quick else 0.5}
    doc = envelope("sparsify.threading/1", {**spec, "quick": args.quick, "settings": SETTINGS})
    doc["settings"] = []
    lib = Path(sys.prefix) / "lib"
    for name, env_set in SETTINGS.items():
        env = {k: v for k, v in os.environ.items() if k not in KEYS}
        env.update(env_set)
        if env_set["NUMBA_THREADING_LAYER"] == "tbb":  # the pip wheel puts libtbb in <prefix>/lib
            env["LD_LIBRARY_PATH"] = f"{lib}:{env.get('LD_LIBRARY_PATH', '')}"
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:500]
            reason = f"its process exited with {proc.returncode} ({last})"
            if not args.keep_going:
                stop(f"setting {name!r}", reason, "Fix its cause, or re-run with --keep-going to record the "
                     "failure in the JSON and measure the other settings.")
            say(f"{name}: FAILED: {reason}")
            doc["settings"].append({"setting": name, "env": env_set, "failed": reason})
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        for pt in res["points"]:
            say(f"{name}: {pt['size']}^2 ours p50 {pt['ours']['p50_ms']:.4f} p90 {pt['ours']['p90_ms']:.4f} ms "
                f"(x{pt['ours_p90_over_p50']:.2f}); ORT {pt['ort_dense']['p50_ms']:.4f}, "
                f"torch {pt['torch_dense']['p50_ms']:.4f}, numpy {pt['numpy_dense']['p50_ms']:.4f}")
        doc["settings"].append({"setting": name, "env": env_set, **res, "load": list(os.getloadavg())})
    finish(args.out, doc)
    return 0


def argparse_suppress():
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
