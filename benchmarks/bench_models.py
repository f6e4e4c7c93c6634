"""End-to-end model benchmarks: dense ONNX vs slim (structured) and sparse (unstructured) exports.

For every model: a dense run (digits models: trained briefly on the bundled digits data;
the others: seeded random weights), its dense ONNX export, then one variant per level:
- **slim**: channel (attention-head for ViT/BERT) pruning at ratios 0.25 / 0.5 / 0.75,
  exported with ``mode="slim"`` (pruned channels physically removed);
- **sparse**: unstructured magnitude pruning at 80 / 90 / 95 %, exported with
  ``mode="sparse"`` (CSR weights run by sparsify's runtime);
- **block**: magnitude pruning of whole R x C blocks (``prune --block``, the case's
  ``blocks``) at 90 %, exported with ``mode="sparse"`` (the converter stores the weights it
  finds blocked as BSR, the block kernels run them).
Digits variants are fine-tuned briefly with the masks fixed, and their test accuracy is
reported (dense, pruned, fine-tuned). Every ONNX file is benchmarked in one
``sparsify.bench.bench`` call (interleaved, same feeds) with the dense baselines: the dense ONNX
file in ONNX Runtime (``speedup``) and the dense run in torch; ``speedup_vs_fastest`` divides
the faster of the two by the variant's p50. Each file is described by
``sparsify.inspect_model.inspect_onnx(path).totals()`` (params, nonzeros, MACs, file size), and
every sparse file gets an op breakdown of the sparse runtime at batch 1 (``profile``).
Every export is verified against the masked torch model (the API's default).

A step that fails stops the script with one paragraph naming the model and variant; with
``--keep-going`` it is recorded as ``{"failed": reason}`` instead and the run goes on.

Run::

    python benchmarks/bench_models.py [--quick] [--models digits-mlp,mlp-4096] [--out PATH.json]
                                      [--plot PATH.png] [--memory] [--keep DIR] [--isa avx2]
                                      [--batches 1,8] [--threads 1,2] [--sparsities 0.9,0.95]

JSON schema ``sparsify.models/1`` (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (envelope, failure, finite, parser, pyplot, save_figure, say, stop, write_json,
                               write_outputs)

SCHEMA = "sparsify.models/1"
SPARSITIES = (0.8, 0.9, 0.95)
BLOCK_SPARSITY = 0.9
RATIOS = (0.25, 0.5, 0.75)
KEEP_GOING_HINT = "Fix its cause, or re-run with --keep-going to record the failure in the JSON and measure the rest."


@dataclasses.dataclass
class Case:
    """One model of the benchmark and how to treat it."""

    name: str
    model: str  # built-in name or package.module:attr
    structure: str  # channel | head
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    input_shapes: tuple[str, ...] = ()
    input_dtypes: tuple[str, ...] = ()
    data: str | None = None  # trained and evaluated on this data when set
    epochs: int = 0  # dense training epochs (data models)
    scope: str = "layer"  # unstructured pruning scope
    batches: tuple[int, ...] = (1, 8)
    threads: tuple[int, ...] = (1, 2)
    sparsities: tuple[float, ...] = SPARSITIES
    ratios: tuple[float, ...] = RATIOS
    blocks: tuple[str, ...] = ()  # block shapes ("4x1") pruned at BLOCK_SPARSITY
    profile_min_time: float = 1.0  # seconds of profiled runs per sparse variant (0: no op breakdown)
    unconverted: bool = False  # also time a sparse export in which no layer converts, Session vs ORT

    def source(self):
        from sparsify.api import ModelSource

        return ModelSource(self.model, dict(self.model_args), data=self.data,
                           input_shapes=list(self.input_shapes), input_dtypes=list(self.input_dtypes))


def all_cases(quick: bool) -> list[Case]:
    """The models of a full (or ``--quick``) run, in order."""
    if quick:
        return [
            Case("digits-mlp", "digits-mlp", "channel", data="digits", epochs=2, scope="global",
                 batches=(1,), threads=(1,), sparsities=(0.9,), ratios=(0.5,), profile_min_time=0.1),
            Case("mlp-1024", "benchmarks.common:ffn_mlp", "channel", {"width": 1024, "depth": 2},
                 ("1,1024",), batches=(1,), threads=(1,), sparsities=(0.9,), ratios=(0.5,),
                 profile_min_time=0.1, unconverted=True),
        ]
    return [
        Case("digits-mlp", "digits-mlp", "channel", data="digits", epochs=10, scope="global", batches=(1, 64)),
        Case("digits-cnn", "digits-cnn", "channel", data="digits", epochs=4, scope="global", batches=(1, 64)),
        Case("digits-vit", "digits-vit", "head", data="digits", epochs=12, scope="global", batches=(1, 64)),
        Case("mlp-4096", "benchmarks.common:ffn_mlp", "channel", {"width": 4096, "depth": 4}, ("1,4096",),
             batches=(1, 8, 64)),
        Case("resnet-style", "sparsify.models.testbeds:resnet_style", "channel", {}, ("1,3,224,224",),
             batches=(1,)),
        Case("bert-style", "sparsify.models.testbeds:bert_style", "head", {}, ("1,128",), ("int64",),
             batches=(1, 8), blocks=("4x1",)),
        *deploy_cases(),
    ]


def deploy_cases() -> list[Case]:
    """The models shaped like the ones people deploy (benchmarks/deploy_models.py): unstructured
    80/90/95 % and 4x1 blocks at 90 %, batches 1 and 8, 1 and 2 threads; no slim variants."""
    image = ("1,3,224,224",)
    return [
        Case("bert-base", "benchmarks.deploy_models:bert_base", "head", {}, ("1,128",), ("int64",), ratios=(),
             blocks=("4x1",), unconverted=True),
        Case("vit-base", "benchmarks.deploy_models:vit_base", "head", {}, image, ratios=(), blocks=("4x1",)),
        Case("resnet-50", "benchmarks.deploy_models:resnet50", "channel", {}, image, ratios=(), blocks=("4x1",)),
        Case("mobilenet-v2", "benchmarks.deploy_models:mobilenet_v2", "channel", {}, image, ratios=(),
             blocks=("4x1",)),
    ]


@dataclasses.dataclass
class Settings:
    """Budgets of a run."""

    finetune_epochs: int
    lr: float
    min_time: float
    warmup: int
    memory: bool
    keep_going: bool = False


def _seconds(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 3)


def describe_onnx(path: Path) -> dict[str, Any]:
    """params / nonzeros / MACs / file size of an ONNX file (``inspect_onnx(...).totals()``)."""
    from sparsify.inspect_model import inspect_onnx

    t = inspect_onnx(path).totals()
    return {k: finite(v) if isinstance(v, float) else v for k, v in t.items()}


def describe_run(path: Path) -> dict[str, Any]:
    """params / nonzeros / dense and nonzero MACs of a pruned run (``inspect_run(...).totals()``).

    Unlike the ONNX description, this counts MACs for every layer whatever the export mode
    (the sparse ONNX holds its weights in custom ops that ``inspect_onnx`` does not count).
    """
    from sparsify.inspect_model import inspect_run
    from sparsify.trust import TRUST_ALL

    t = inspect_run(path, TRUST_ALL).totals()
    return {k: finite(v) if isinstance(v, float) else v for k, v in t.items() if k != "file_bytes"}


def dense_run(case: Case, out: Path, s: Settings) -> tuple[dict[str, Any], float | None]:
    """Write the dense run (trained for data models); returns (record, dense test accuracy)."""
    from sparsify.api import open_model, train_model
    from sparsify.artifact import save_run
    from sparsify.finetune import TrainConfig

    if case.data:
        run, secs = _seconds(lambda: train_model(
            case.source(), TrainConfig(epochs=case.epochs, lr=s.lr, progress=False), out))
        acc = run.metrics["test_accuracy"]
        return {"train_epochs": case.epochs, "train_s": secs, "test_accuracy": acc}, acc
    _, secs = _seconds(lambda: save_run(open_model(case.source()), out))
    return {"weights": "seeded random", "build_s": secs}, None


def variant(case: Case, kind: str, level: float, dense_dir: Path, work: Path, s: Settings,
            block: str | None = None) -> dict[str, Any]:
    """Prune (and fine-tune data models), export; the record lacks latency until benchmarked."""
    from sparsify.api import ModelSource, export_model, finetune_model, prune_model
    from sparsify.finetune import TrainConfig
    from sparsify.trust import TRUST_ALL

    label = f"{kind}{block or ''}-{round(level * 100)}"
    rec: dict[str, Any] = {"variant": label, "kind": kind,
                           "structure": case.structure if kind == "slim" else f"block {block}" if block
                           else "unstructured"}
    if block:
        rec["sparsity"], rec["scope"], rec["block"] = level, case.scope, block
        prune_kw = {"sparsity": level, "scope": case.scope, "block": block}
    elif kind == "slim":
        rec["ratio"] = level
        prune_kw = {"structure": case.structure, "ratio": level}
    else:
        rec["sparsity"] = level
        prune_kw = {"sparsity": level, "scope": case.scope}
        rec["scope"] = case.scope
    say(f"{case.name}: {label}: prune")
    (run, _plan), rec["prune_s"] = _seconds(lambda: prune_model(
        ModelSource(str(dense_dir), trust=TRUST_ALL), work / f"{label}-pruned", **prune_kw))
    run_dir = work / f"{label}-pruned"
    if case.data:
        rec["pruned_accuracy"] = run.metrics.get("pruned_test_accuracy")
        tuned, rec["finetune_s"] = _seconds(lambda: finetune_model(
            run_dir, TrainConfig(epochs=s.finetune_epochs, lr=s.lr / 3, progress=False), work / f"{label}-ft",
            trust=TRUST_ALL))
        rec["finetune_epochs"] = s.finetune_epochs
        rec["finetuned_accuracy"] = tuned.metrics.get("finetuned_test_accuracy")
        run_dir = work / f"{label}-ft"
    rec["run"] = describe_run(run_dir)
    onnx_path = work / f"{label}.onnx"
    say(f"{case.name}: {label}: export --mode {'sparse' if block else kind}")
    mode = "sparse" if block else kind
    (_, report, summary), rec["export_s"] = _seconds(lambda: export_model(run_dir, onnx_path, mode=mode,
                                                                          trust=TRUST_ALL))
    rec["verify_max_abs"] = finite(report.max_abs) if report is not None else None
    rec["export_summary"] = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))}
    if mode == "sparse":  # how many layers the export converted, and the whole-model check's timings
        rec["export_summary"]["converted_layers"] = len(summary.get("converted", []))
        rec["export_summary"]["whole_model"] = summary.get("whole_model", [])
    rec["onnx"] = describe_onnx(onnx_path)
    rec["path"] = str(onnx_path)
    return rec


def guarded(case: Case, kind: str, level: float, work: Path, s: Settings, block: str | None = None) -> dict[str, Any]:
    """:func:`variant`; a failure stops the run, or with ``--keep-going`` is recorded as ``{"failed": reason}``."""
    try:
        return variant(case, kind, level, work / "dense", work, s, block)
    except Exception as exc:  # recorded, reported in the README as a failure, never as a number
        label = f"{kind}{block or ''}-{round(level * 100)}"
        if not s.keep_going:
            stop(f"{case.name}: {label}", failure(exc), KEEP_GOING_HINT)
        say(f"{case.name}: {label} FAILED: {failure(exc)}")
        return {"variant": label, "kind": kind, "failed": failure(exc)}


def attach_latency(records: list[dict[str, Any]], result) -> None:
    """Copy p50/p90/speedup per batch from the BenchResult into the records with a ``path``."""
    by_path = {r["path"]: r for r in records if "path" in r}
    for row in result.records:
        rec = by_path.get(row.model)
        if rec is None:
            continue
        rec.setdefault("latency", []).append({
            "batch": row.batch, "threads": row.threads, "backend": row.backend, "n": row.stats.n,
            "p50_ms": finite(row.stats.p50_ms), "p90_ms": finite(row.stats.p90_ms),
            "spread": finite(row.stats.spread), "speedup": finite(row.speedup), "peak_mib": finite(row.peak_mib),
        })


def attach_fastest_dense(dense: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Give every latency row of ``records`` the speedup against the fastest dense runtime at its
    (batch, threads): ONNX Runtime on the dense file or torch on the dense run, whichever is faster."""
    best: dict[tuple[int, int], tuple[float, str]] = {}
    for backend, rows in (("ort", dense.get("latency", [])), ("torch", dense.get("torch_latency", []))):
        for lat in rows:
            key = (lat["batch"], lat["threads"])
            if lat.get("p50_ms") and (key not in best or lat["p50_ms"] < best[key][0]):
                best[key] = (lat["p50_ms"], backend)
    for rec in records:
        for lat in rec.get("latency", []):
            ref = best.get((lat["batch"], lat["threads"]))
            if ref and lat.get("p50_ms"):
                lat["fastest_dense"] = ref[1]
                lat["speedup_vs_fastest"] = finite(ref[0] / lat["p50_ms"])


def unconverted_overhead(case: Case, work: Path, s: Settings) -> dict[str, Any]:
    """The sparse runtime's cost on a sparse export where no layer converted (the dense run):
    ``Session`` against ONNX Runtime on the same file, interleaved, per batch and threads."""
    from sparsify.api import export_model
    from sparsify.bench.backends import OrtBackend, SparsifyBackend
    from sparsify.bench.inputs import make_feeds
    from sparsify.bench.modelfile import check_model_path
    from sparsify.bench.timing import Stats, measure_interleaved
    from sparsify.trust import TRUST_ALL

    path = work / "unconverted.onnx"
    say(f"{case.name}: unconverted: export the dense run --mode sparse")
    _, secs = _seconds(lambda: export_model(work / "dense", path, mode="sparse", trust=TRUST_ALL))
    domains = sorted(check_model_path(path).domains)
    rec: dict[str, Any] = {"export_s": secs, "op_domains": domains, "latency": []}
    for t in case.threads:
        ort, ours = OrtBackend().load(path, t), SparsifyBackend().load(path, t)
        for b in case.batches:
            feeds = make_feeds(ort.input_specs, b, where=str(path))
            a, c = measure_interleaved([functools.partial(ort.run, feeds), functools.partial(ours.run, feeds)],
                                       warmup=s.warmup, min_time=s.min_time)
            sa, sc = Stats.from_ns(a), Stats.from_ns(c)
            rec["latency"].append({"batch": b, "threads": t, "ort_p50_ms": finite(sa.p50_ms),
                                   "session_p50_ms": finite(sc.p50_ms), "ort_p90_ms": finite(sa.p90_ms),
                                   "session_p90_ms": finite(sc.p90_ms),
                                   "session_over_ort": finite(sc.p50_ms / sa.p50_ms)})
        del ort, ours
    path.unlink()
    return rec


def op_breakdown(path: str, batch: int, threads: int, min_time: float) -> dict[str, Any]:
    """Where one sparse file's run spends its time (``Session(profile=True)``): milliseconds per
    run by op, after three warm-up runs, over at least five runs and ``min_time`` seconds."""
    from sparsify.bench.backends import specs_from_node_args
    from sparsify.bench.inputs import make_feeds
    from sparsify.runtime import Session

    session = Session(path, threads=threads, profile=True)
    feeds = make_feeds(specs_from_node_args(session.get_inputs(), path), batch)
    for _ in range(3):
        session.run(None, feeds)
    session.reset_profile()
    t0, n = time.perf_counter(), 0
    while n < 5 or time.perf_counter() - t0 < min_time:
        session.run(None, feeds)
        n += 1
    prof = session.profile()
    ops = sorted(prof.ops.items(), key=lambda kv: -kv[1])
    return {"batch": batch, "threads": threads, "runs": prof.runs, "total_ms": finite(prof.total_ms),
            "ops_ms": {k: finite(v) for k, v in ops if v > 0}}


def run_case(case: Case, root: Path, s: Settings, keep: bool) -> dict[str, Any]:
    """Everything for one model; returns its record."""
    from sparsify.api import export_model
    from sparsify.bench import bench
    from sparsify.trust import TRUST_ALL

    work = root / case.name
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"model": case.name, "reference": case.model, "model_args": case.model_args,
                           "structure": case.structure, "data": case.data, "batches": list(case.batches),
                           "threads": list(case.threads)}
    say(f"{case.name}: dense run")
    rec["dense"], dense_acc = dense_run(case, work / "dense", s)
    say(f"{case.name}: export dense")
    (_, report, _), secs = _seconds(lambda: export_model(work / "dense", work / "dense.onnx", trust=TRUST_ALL))
    dense = rec["dense"]
    dense.update({"export_s": secs, "verify_max_abs": finite(report.max_abs) if report else None,
                  "onnx": describe_onnx(work / "dense.onnx"), "path": str(work / "dense.onnx")})
    legs = ([("slim", r, None) for r in case.ratios] + [("sparse", sp, None) for sp in case.sparsities]
            + [("block", BLOCK_SPARSITY, b) for b in case.blocks])
    variants = [guarded(case, kind, level, work, s, block) for kind, level, block in legs]
    if not keep:  # the ONNX files stay for the benchmark; the run directories can go
        for d in work.iterdir():
            if d.is_dir() and d.name != "dense":
                shutil.rmtree(d)
    # torch runs the dense run directory: the dense baseline is the faster of it and ONNX Runtime.
    torch_dense = {"path": str(work / "dense")}
    files = [dense["path"], torch_dense["path"]] + [v["path"] for v in variants if "path" in v]
    say(f"{case.name}: benchmark {len(files)} models at batches {case.batches}, threads {case.threads}")
    result = bench(files, batches=case.batches, threads=case.threads, warmup=s.warmup, min_time=s.min_time,
                   memory=s.memory, progress=False, trust=TRUST_ALL)
    attach_latency([dense, torch_dense, *variants], result)
    dense["torch_latency"] = torch_dense.get("latency", [])
    attach_fastest_dense(dense, [dense, *variants])
    if case.unconverted:
        rec["unconverted"] = unconverted_overhead(case, work, s)
    if case.profile_min_time > 0:
        for v in variants:
            if "path" in v and v["kind"] in ("sparse", "block"):
                say(f"{case.name}: {v['variant']}: op breakdown at batch 1, {max(case.threads)} threads")
                v["profile"] = op_breakdown(v["path"], 1, max(case.threads), case.profile_min_time)
    for v in variants:
        if "onnx" in v:
            v["file_ratio"] = finite(v["onnx"]["file_bytes"] / dense["onnx"]["file_bytes"])
        if dense_acc is not None and v.get("finetuned_accuracy") is not None:
            v["accuracy_delta"] = finite(v["finetuned_accuracy"] - dense_acc, 4)
    rec["variants"] = variants
    rec["total_s"] = round(time.perf_counter() - t0, 1)
    for r in [dense, *variants]:
        if "path" in r:
            r["file"] = Path(r.pop("path")).name
    return rec


def case_guarded(case: Case, root: Path, s: Settings, keep: bool) -> dict[str, Any]:
    """:func:`run_case`; with ``--keep-going`` a model that fails outside its variants is recorded as failed."""
    try:
        return run_case(case, root, s, keep)
    except SystemExit:  # a variant already stopped the run with its own message
        raise
    except Exception as exc:  # recorded as a failure, never as numbers
        if not s.keep_going:
            stop(case.name, failure(exc), KEEP_GOING_HINT)
        say(f"{case.name}: FAILED: {failure(exc)}")
        return {"model": case.name, "reference": case.model, "failed": failure(exc)}


def plot(doc: dict[str, Any], path: Path) -> Path:
    """One panel per model: speedup vs the fastest dense runtime (p50) per variant, batch and
    threads; accuracy in the labels."""
    plt = pyplot()
    import numpy as np

    models = [m for m in doc["models"] if m.get("variants")]
    n = max(1, len(models))
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, m in zip(axes.flat, models):
        vs = m["variants"]
        names = []
        for v in vs:
            acc = v.get("finetuned_accuracy")
            names.append(v["variant"] + (f"\n{acc:.1f}%" if acc is not None else ""))
        x = np.arange(len(vs))
        points = [(b, t) for b in m["batches"] for t in m.get("threads", [1])]
        width = 0.8 / len(points)
        for i, (b, t) in enumerate(points):
            sp = [next((lat.get("speedup_vs_fastest", lat["speedup"]) for lat in v.get("latency", [])
                        if (lat["batch"], lat["threads"]) == (b, t)), np.nan) for v in vs]
            ax.bar(x - 0.4 + width * (i + 0.5), sp, width, label=f"batch {b}, {t} thread{'s' if t > 1 else ''}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(x, names, fontsize=7, rotation=0)
        ax.set_yscale("log")
        title = m["model"]
        if m.get("dense", {}).get("test_accuracy") is not None:
            title += f" (dense {m['dense']['test_accuracy']:.1f}%)"
        ax.set_title(title, fontsize="medium")
        ax.set_ylabel("speedup vs fastest dense (ORT, torch; p50, log)")
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.legend(fontsize="x-small")
    mach = doc["machine"]
    fig.suptitle(f"sparsify model benchmarks — {mach.get('cpu')}, threads {doc['config']['threads']}; "
                 "missing bar = leg failed", fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, path)


def _numbers(text: str | None, kind: type, flag: str) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(kind(t) for t in text.split(","))
    except ValueError:
        raise SystemExit(f"{flag}: expected comma-separated numbers, got {text!r}") from None


def narrowed(case: Case, args: argparse.Namespace) -> Case:
    """``case`` with the batches, threads and unstructured sparsities the command line asks for
    (``--batches 1 --threads 2 --sparsities 0.9``), for shorter runs of the large models."""
    over = {"batches": _numbers(args.batches, int, "--batches"), "threads": _numbers(args.threads, int, "--threads"),
            "sparsities": _numbers(args.sparsities, float, "--sparsities")}
    return dataclasses.replace(case, **{k: v for k, v in over.items() if v is not None})


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the selected cases; returns the JSON document."""
    cases = all_cases(args.quick)
    if args.models:
        wanted = args.models.split(",")
        unknown = sorted(set(wanted) - {c.name for c in cases})
        if unknown:
            raise SystemExit(f"--models: unknown {unknown}; choose from {[c.name for c in cases]}")
        cases = [c for c in cases if c.name in wanted]
    cases = [narrowed(c, args) for c in cases]
    s = Settings(finetune_epochs=1 if args.quick else 2, lr=3e-3, min_time=0.1 if args.quick else 0.3,
                 warmup=3 if args.quick else 10, memory=args.memory, keep_going=args.keep_going)
    config = {"quick": args.quick, "models": [c.name for c in cases],
              "threads": sorted({t for c in cases for t in c.threads}), "keep_going": s.keep_going,
              "min_time_s": s.min_time, "warmup": s.warmup, "finetune_epochs": s.finetune_epochs, "lr": s.lr,
              "memory": s.memory, "torch_threads_outside_latency": 1,
              "sparsities": list(SPARSITIES), "ratios": list(RATIOS), "block_sparsity": BLOCK_SPARSITY,
              "latency": "sparsify.bench.bench, all ONNX files of a model interleaved; speedup = dense p50 / p50",
              "accuracy": "test split of the bundled digits data, percent"}
    doc = envelope(SCHEMA, config)
    import torch

    # Training, pruning, export and verification run torch on one thread: the digits models are
    # tiny (thread overhead dominates), and the latency measurements set their own thread counts.
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    root_ctx = tempfile.TemporaryDirectory(prefix="sparsify-bench-models-") if args.keep is None else None
    root = Path(root_ctx.name) if root_ctx else args.keep
    doc["models"] = []
    try:
        for c in cases:
            doc["models"].append(case_guarded(c, root, s, keep=args.keep is not None))
            # The document so far, marked partial, so a crash late in a long run keeps the models done.
            write_json(args.out, {**doc, "partial": True, "total_s": round(time.perf_counter() - t0, 1)})
    finally:
        torch.set_num_threads(torch_threads)
        if root_ctx:
            root_ctx.cleanup()
    doc["total_s"] = round(time.perf_counter() - t0, 1)
    return doc


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], "models.json")
    p.add_argument("--models", default=None, help="comma-separated subset of the model names")
    p.add_argument("--memory", action="store_true", help="also probe peak memory (a fresh process per file)")
    p.add_argument("--keep", type=Path, default=None, help="keep runs and ONNX files in this directory")
    p.add_argument("--keep-going", action="store_true",
                   help="record a variant or model that fails as failed and go on")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes instead of each model's")
    p.add_argument("--threads", default=None, help="comma-separated thread counts instead of each model's")
    p.add_argument("--sparsities", default=None,
                   help="comma-separated unstructured sparsities instead of each model's (e.g. 0.9,0.95)")
    p.add_argument("--isa", choices=["host", "avx2"], default="host",
                   help="kernel variant: the host's (default), or AVX2 code compiled for Zen 2, with torch and "
                        "OpenBLAS limited to AVX2 (ONNX Runtime has no such switch); default output models_avx2.json")
    args = p.parse_args(argv)
    if args.isa == "avx2":
        from benchmarks.common import rerun_for_avx2

        given = sys.argv[1:] if argv is None else list(argv)
        out = args.out if "--out" in given else args.out.with_name(f"{args.out.stem}_avx2.json")
        code = rerun_for_avx2(__file__, given, out)
        if code is not None:
            return code
    write_outputs(args, run(args), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
