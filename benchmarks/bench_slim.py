"""Structured pruning + slim export: MACs and ONNX Runtime latency, dense vs slim, same run.

Models (seeded random weights, see sparsify.models.testbeds):
- ResNet-style CNN (ResNet-18 layout, 8 basic blocks, BatchNorm), 224x224, channels pruned
  at ratio 0.5 in every group (the residual streams included);
- BERT-style encoder (separate q/k/v Linears), half the heads and half the FFN neurons pruned.

For each: plan -> slim -> exactness vs the masked model (torch and ORT) -> ONNX export of the
dense model and the slim model -> batch-1 latency in ORT at 2 intra-op threads, measured
interleaved in blocks (sparsify.bench.timing), median and p90. JSON written atomically.

    python benchmarks/bench_slim.py [--quick] [--out benchmarks/results/slim.json]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import envelope, finish, finite, parser, say  # noqa: E402

SCHEMA = "sparsify.slim/1"


def _onnx_session(module, example, threads: int):
    import onnx
    import onnxruntime as ort
    import torch

    dyn = tuple({0: torch.export.Dim("batch")} for _ in example)
    prog = torch.onnx.export(module, example, dynamo=True, dynamic_shapes=dyn, verbose=False)
    proto = prog.model_proto
    onnx.checker.check_model(proto)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess, proto.ByteSize()


def bench_model(name: str, model, example, masks_fn, *, threads: int, warmup: int, repeat: int) -> dict:
    import numpy as np
    import torch

    from sparsify.bench.timing import Stats, measure_interleaved
    from sparsify.passes.slim import masked_model, slim_model

    t0 = time.perf_counter()
    masks, plan_text = masks_fn(model, example)
    t_plan = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = slim_model(model, masks, example)
    t_slim = time.perf_counter() - t0
    say(f"{name}: plan {t_plan:.1f}s, slim {t_slim:.1f}s")
    masked = masked_model(model, masks)
    one = tuple(x[:1] for x in example)
    with torch.no_grad():
        ref = masked(*one).numpy()
        got = res.module(*one).numpy()
    torch_err = float(np.abs(got - ref).max())
    dense_sess, dense_bytes = _onnx_session(model, one, threads)
    slim_sess, slim_bytes = _onnx_session(res.module, one, threads)
    feed = lambda s: {i.name: x.numpy() for i, x in zip(s.get_inputs(), one)}  # noqa: E731
    f_dense, f_slim = feed(dense_sess), feed(slim_sess)
    ort_err = float(np.abs(slim_sess.run(None, f_slim)[0] - ref).max())
    samples = measure_interleaved([lambda: dense_sess.run(None, f_dense), lambda: slim_sess.run(None, f_slim)],
                                  warmup=warmup, repeat=repeat)
    dense, slim = (Stats.from_ns(s) for s in samples)
    rep = res.report
    out = {
        "model": name,
        "input_shape": [list(x.shape) for x in one],
        "plan": plan_text,
        "groups": rep.groups,
        "params_before": rep.params_before, "params_after": rep.params_after,
        "macs_before": rep.macs_before, "macs_after": rep.macs_after,
        "macs_ratio": finite(rep.macs_after / rep.macs_before),
        "params_ratio": finite(rep.params_after / rep.params_before),
        "max_abs_err_torch": torch_err, "max_abs_err_ort": ort_err,
        "onnx_bytes_dense": dense_bytes, "onnx_bytes_slim": slim_bytes,
        "ort_threads": threads, "batch": 1,
        "latency_dense": dense.to_dict(), "latency_slim": slim.to_dict(),
        "latency_ratio_p50": finite(slim.p50_ms / dense.p50_ms),
        "latency_ratio_p90": finite(slim.p90_ms / dense.p90_ms),
        "seconds_plan": finite(t_plan), "seconds_slim": finite(t_slim),
    }
    say(f"{name}: MACs x{out['macs_ratio']}, ORT p50 {dense.p50_ms:.2f} -> {slim.p50_ms:.2f} ms "
        f"(x{out['latency_ratio_p50']}), err torch {torch_err:.1e} ort {ort_err:.1e}")
    return out


def resnet_masks(model, example):
    from sparsify.structured import plan_structured

    plan = plan_structured(model, example, structure="channel", ratio=0.5)
    return plan.masks, str(plan)


def bert_masks(model, example):
    from sparsify.structured import merge_masks, plan_structured

    heads = plan_structured(model, example, structure="head", ratio=0.5)
    ffn = plan_structured(model, example, structure="channel", ratio=0.5, targets=r"\.fc1\.")
    return merge_masks(heads.masks, ffn.masks), str(heads) + "\n" + str(ffn)


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0], "slim.json", plot=False)
    p.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (default 2)")
    args = p.parse_args(argv)
    import torch

    from sparsify.models.testbeds import bert_style, resnet_style

    torch.set_num_threads(args.threads)
    quick = args.quick
    warmup, repeat = (3, 10) if quick else (10, 50)
    size = 112 if quick else 224
    seq = 64 if quick else 128
    g = torch.Generator().manual_seed(0)
    doc = envelope(SCHEMA, {"quick": quick, "threads": args.threads, "warmup": warmup, "repeat": repeat,
                            "ratio": 0.5})
    results = []
    resnet = resnet_style(seed=0)
    img = torch.randn(2, 3, size, size, generator=g)
    results.append(bench_model(f"resnet_style_{size}", resnet, (img,), resnet_masks, threads=args.threads,
                               warmup=warmup, repeat=repeat))
    bert = bert_style(seed=0, layers=2 if quick else 4, max_len=seq)
    ids = torch.randint(0, 8000, (2, seq), generator=g)
    results.append(bench_model(f"bert_style_L{2 if quick else 4}_T{seq}", bert, (ids,), bert_masks,
                               threads=args.threads, warmup=warmup, repeat=repeat))
    doc["results"] = results
    finish(args.out, doc)
    for r in results:
        print(f"{r['model']}: MACs {r['macs_before']:.3g} -> {r['macs_after']:.3g} (x{r['macs_ratio']}), "
              f"ORT batch-1 p50 {r['latency_dense']['p50_ms']:.2f} -> {r['latency_slim']['p50_ms']:.2f} ms "
              f"(x{r['latency_ratio_p50']}, p90 x{r['latency_ratio_p90']}), "
              f"max abs err torch {r['max_abs_err_torch']:.1e} / ORT {r['max_abs_err_ort']:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
