"""Hugging Face models at --structure head,channel --ratio 0.5: size, exactness and ORT latency.

For BERT-base, GPT-2 (124M), ViT-Base/16, DistilBERT-base and RoBERTa-base (random weights from
their standard configs, saved with save_pretrained; nothing downloaded): prune heads, FFN
neurons and the hidden size at ratio 0.5 through the API, export dense and slim ONNX (both
verified against the masked model), and time dense against slim in ONNX Runtime, interleaved in
one process (sparsify.bench). Writes benchmarks/results/hf.json.

    python benchmarks/bench_hf.py [--quick] [--models vit,bert] [--threads 1,2]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import envelope, finish, parser, say, write_json  # noqa: E402

SEQ = 128
# name -> (config class, config kwargs, model class, --hf-task); standard base sizes
MODELS = {
    "bert": ("BertConfig", {}, "BertForSequenceClassification", "sequence-classification"),
    "gpt2": ("GPT2Config", {"pad_token_id": 50256}, "GPT2ForSequenceClassification", "sequence-classification"),
    "vit": ("ViTConfig", {}, "ViTForImageClassification", "image-classification"),
    "distilbert": ("DistilBertConfig", {}, "DistilBertForSequenceClassification", "sequence-classification"),
    "roberta": ("RobertaConfig", {"vocab_size": 50265, "max_position_embeddings": 514, "type_vocab_size": 1,
                                  "pad_token_id": 1}, "RobertaForSequenceClassification", "sequence-classification"),
}
QUICK = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
         "n_embd": 64, "n_layer": 2, "n_head": 4, "dim": 64, "n_layers": 2, "n_heads": 4, "hidden_dim": 128}


def save(name: str, dest: Path, quick: bool) -> Path:
    from sparsify.models.hub import import_transformers

    tf = import_transformers()
    cfg_cls, kwargs, model_cls, _ = MODELS[name]
    cfg = getattr(tf, cfg_cls)(**kwargs)
    if quick:
        for k, v in QUICK.items():
            if hasattr(cfg, k):
                setattr(cfg, k, v)
    import torch

    torch.manual_seed(0)
    getattr(tf, model_cls)(cfg).eval().save_pretrained(str(dest), safe_serialization=True)
    return dest


def one(name: str, root: Path, threads: list[int], min_time: float, quick: bool) -> dict:
    from sparsify.api import ModelSource, export_model, prune_model
    from sparsify.bench import bench

    t0 = time.perf_counter()
    d = save(name, root / name, quick)
    shapes = [] if name == "vit" else [f"1,{32 if quick else SEQ}"]
    src = ModelSource(f"hf:{d}", hf_task=MODELS[name][3], input_shapes=shapes)
    prune_model(src, root / f"{name}-p", structure="head,channel", ratio=0.5)
    t_prune = time.perf_counter() - t0
    _, dense_rep, _ = export_model(root / f"{name}-p", root / f"{name}-dense.onnx", mode="dense")
    _, slim_rep, summary = export_model(root / f"{name}-p", root / f"{name}-slim.onnx", mode="slim")
    t_export = time.perf_counter() - t0 - t_prune
    say(f"{name}: params {summary['params_before']:,} -> {summary['params_after']:,}, timing")
    result = bench([root / f"{name}-dense.onnx", root / f"{name}-slim.onnx"], batches=[1], threads=threads,
                   warmup=5, min_time=min_time, memory=False, progress=False)
    timing = {}
    for t in threads:
        recs = {r.label: r for r in result.records if r.threads == t}
        dense, slim = recs[f"{name}-dense.onnx"], recs[f"{name}-slim.onnx"]
        timing[f"b1/{t}t"] = {"dense_p50_ms": dense.stats.p50_ms, "dense_p90_ms": dense.stats.p90_ms,
                              "slim_p50_ms": slim.stats.p50_ms, "slim_p90_ms": slim.stats.p90_ms,
                              "latency_ratio_p50": slim.stats.p50_ms / dense.stats.p50_ms}
    return {"model": name, "inputs": shapes or ["pixel_values 1,3,224,224"],
            "params_before": summary["params_before"], "params_after": summary["params_after"],
            "params_ratio": summary["params_after"] / summary["params_before"],
            "macs_before": summary["macs_before"], "macs_after": summary["macs_after"],
            "macs_ratio": summary["macs_after"] / summary["macs_before"],
            "verify_max_abs_dense": dense_rep.max_abs, "verify_max_abs_slim": slim_rep.max_abs,
            "slim_torch_max_abs": summary["torch_max_abs"],
            "groups_kept": [ln for ln in summary["lines"][1:] if "kept" in ln][:3],
            "seconds_prune": round(t_prune, 1), "seconds_export": round(t_export, 1), "timing": timing}


def main() -> None:
    p = parser("Hugging Face models at head,channel 0.5: size, exactness, ORT latency", "hf.json", plot=False)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--threads", default="1,2")
    p.add_argument("--min-time", type=float, default=3.0)
    args = p.parse_args()
    names = [n for n in args.models.split(",") if n]
    threads = [int(t) for t in args.threads.split(",")]
    config = {"models": names, "threads": threads, "ratio": 0.5, "structure": "head,channel", "seq": SEQ,
              "quick": args.quick, "min_time": args.min_time, "interleaved": True}
    doc = envelope("sparsify.hf/1", config)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sparsify-hf-") as tmp:
        for name in names:
            rows.append(one(name, Path(tmp), threads, args.min_time, args.quick))
            say(str({k: v for k, v in rows[-1].items() if k != "groups_kept"}))
            doc["results"] = rows
            write_json(args.out, doc)  # (the models so far: a crash later keeps them)
    finish(args.out, doc)


if __name__ == "__main__":
    main()
