"""Accuracy after pruning: one-shot methods x sparsities, channel ratios, and each built-in's default recipes.

For every digits model (test split of the bundled digits data, seed 0):
- **dense**: the train stage of the model's shipped recipes (the same settings and seed in
  both; each recipe is judged against its own dense stage, and the one-shot rows start from
  the dense stage of the 90% recipe);
- **one-shot**, no fine-tuning, from that dense run: magnitude (layer and global scope), wanda
  and sparsegpt at 50 / 70 / 90 % and 2:4 (wanda and sparsegpt compare within a layer; models
  with BatchNorm get ``bn_recalibrate`` batches for every method alike; layers whose rows do
  not split into groups of 4 are left dense for 2:4, for every method alike);
- **channels one-shot** (l1, no fine-tuning) at 25 / 50 / 75 %;
- **recipes**: ``sparsify apply digits-<model>-90`` (gradual 90 % + distillation) and
  ``digits-<model>-c50`` (iterative 50 % channels + distillation), exactly as shipped;
- **blocks** (``--blocks-only`` runs just these): from that dense run, magnitude pruning at
  90 % (layer scope) unstructured and in whole 1x4 / 4x1 / 16x1 blocks (``--block``), each then
  fine-tuned with its masks fixed for the same epochs and learning rate (no distillation):
  accuracy one-shot and after fine-tuning, at equal sparsity.
The targets of issue 17 are evaluated from these numbers and written with them.

Run::

    python benchmarks/bench_quality.py [--quick] [--models digits-mlp,digits-cnn,digits-vit]
                                       [--out PATH.json] [--plot PATH.png] [--keep DIR]
    python benchmarks/bench_quality.py --blocks-only --out benchmarks/results/quality_blocks.json --no-plot

JSON schema ``sparsify.quality/1`` (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import envelope, parser, pyplot, save_figure, say, write_outputs

SCHEMA = "sparsify.quality/1"
MODELS = ("digits-mlp", "digits-cnn", "digits-vit")
LEVELS = ("0.5", "0.7", "0.9", "2:4")
METHODS = ("magnitude", "magnitude-global", "wanda", "sparsegpt")
RATIOS = (0.25, 0.5, 0.75)
BN_BATCHES = 20
NM_IGNORE = {"digits-cnn": "stem"}  # the stem conv's rows hold 9 weights, not a multiple of 4
BLOCKS = (None, "1x4", "4x1", "16x1")  # None: unstructured
BLOCK_SPARSITY = 0.9
BLOCK_FINETUNE = dict(epochs=20, lr=1e-3)


def _oneshot(dense: Path, model: str, method: str, level: str, out: Path, calibration: int) -> float:
    from sparsify.api import ModelSource, prune_model
    from sparsify.models import build_builtin

    has_bn = any("BatchNorm" in type(m).__name__ for m in build_builtin(model).modules())
    fields: dict[str, Any] = {"method": method.split("-")[0], "calibration_batches": calibration,
                              "bn_recalibrate": BN_BATCHES if has_bn else 0}
    if method.endswith("-global"):
        fields["scope"] = "global"
    if level == "2:4":
        fields.update(nm=level, ignore=NM_IGNORE.get(model))
    else:
        fields["sparsity"] = float(level)
    run, _ = prune_model(ModelSource(str(dense)), out, **fields)
    return run.metrics["test_accuracy"]


def _channels(dense: Path, ratio: float, out: Path) -> float:
    from sparsify.api import ModelSource, prune_model

    run, _ = prune_model(ModelSource(str(dense)), out, structure="channel", ratio=ratio)
    return run.metrics["test_accuracy"]


def _recipe(name: str, out: Path, epochs: int | None, reuse: bool = False) -> dict[str, Any]:
    import dataclasses

    from sparsify.api import apply_recipe
    from sparsify.recipe import load_recipe

    recipe = load_recipe(name)
    finished = [s for s in recipe.stages if (out / (s.name if s.action != "export" else f"{s.name}.onnx")).exists()]
    if reuse and len(finished) == len(recipe.stages):  # resume: a recipe whose outputs are all there is read back
        recipe.stages = []
    if epochs is not None:  # --quick: shorter training and fine-tuning, same stages
        for stage in recipe.stages:
            if stage.action == "train":
                stage.options = dataclasses.replace(stage.options, epochs=1)
            elif stage.action == "finetune":
                stage.options = dataclasses.replace(stage.options,
                                                    train=dataclasses.replace(stage.options.train, epochs=epochs))
    t0 = time.perf_counter()
    stages = list(recipe.stages) or finished
    done = dict(apply_recipe(recipe, out, progress=False)) if recipe.stages else {
        s.name: out / (s.name if s.action != "export" else f"{s.name}.onnx") for s in stages}
    seconds = round(time.perf_counter() - t0, 1) if recipe.stages else None
    runs = [s for s in stages if s.action != "export"]
    manifests = {s.name: json.loads((done[s.name] / "manifest.json").read_text()) for s in runs}
    dense, final = manifests[runs[0].name], manifests[runs[-1].name]
    sched = (final["recipe"][-1].get("schedule") or {})
    return {"recipe": name, "dense_accuracy": dense["metrics"]["test_accuracy"],
            "accuracy": final["metrics"]["test_accuracy"],
            "delta": round(final["metrics"]["test_accuracy"] - dense["metrics"]["test_accuracy"], 4),
            "schedule_points": len(sched.get("points", [])),
            "final_point": (sched.get("points") or [{}])[-1], "seconds": seconds,
            "exported": [str(p.name) for n, p in done.items() if not p.is_dir()]}


def block_rows(dense: Path, work: Path, quick: bool) -> dict[str, Any]:
    """Unstructured vs block pruning at BLOCK_SPARSITY from the dense run: accuracy one-shot and
    after fine-tuning with the masks fixed (the same fine-tuning for every pattern)."""
    from sparsify.api import ModelSource, finetune_model, prune_model
    from sparsify.finetune import TrainConfig

    cfg = TrainConfig(**{**BLOCK_FINETUNE, "epochs": 1 if quick else BLOCK_FINETUNE["epochs"]}, progress=False)
    out: dict[str, Any] = {"sparsity": BLOCK_SPARSITY, "finetune": {"epochs": cfg.epochs, "lr": cfg.lr}}
    for block in BLOCKS:
        name = block or "unstructured"
        t0 = time.perf_counter()
        run, _ = prune_model(ModelSource(str(dense)), work / f"block-{name}", sparsity=BLOCK_SPARSITY, block=block)
        tuned = finetune_model(work / f"block-{name}", cfg, work / f"block-{name}-ft")
        out[name] = {"oneshot": run.metrics["test_accuracy"], "finetuned": tuned.metrics["test_accuracy"],
                     "seconds": round(time.perf_counter() - t0, 1)}
        say(f"{dense.parent.name}: {name} {BLOCK_SPARSITY:.0%}: one-shot {out[name]['oneshot']:.2f}%, "
            f"fine-tuned {out[name]['finetuned']:.2f}%")
    return out


def bench_model(model: str, work: Path, quick: bool, calibration: int, reuse: bool = False) -> dict[str, Any]:
    """Every measurement of one model."""
    record: dict[str, Any] = {"model": model}
    say(f"{model}: recipe {model}-90")
    r90 = _recipe(f"{model}-90", work / f"{model}-90", 2 if quick else None, reuse)
    say(f"{model}: recipe {model}-c50")
    rc50 = _recipe(f"{model}-c50", work / f"{model}-c50", 2 if quick else None, reuse)
    record["recipes"] = {"unstructured_90": r90, "channels_50": rc50}
    record["dense_accuracy"] = r90["dense_accuracy"]
    dense = work / f"{model}-90" / "dense"
    oneshot: dict[str, dict[str, float]] = {}
    levels = ("0.7",) if quick else LEVELS
    for method in METHODS:
        oneshot[method] = {}
        for level in levels:
            t0 = time.perf_counter()
            acc = _oneshot(dense, model, method, level, work / "scratch", calibration)
            oneshot[method][level] = acc
            say(f"{model}: {method} {level}: {acc:.2f}% ({time.perf_counter() - t0:.1f} s)")
    record["oneshot"] = oneshot
    record["channels_oneshot"] = {}
    for r in ((0.5,) if quick else RATIOS):
        record["channels_oneshot"][str(r)] = acc = _channels(dense, r, work / "scratch")
        say(f"{model}: channels (l1) {r}: {acc:.2f}%")
    record["blocks"] = block_rows(dense, work / "scratch", quick)
    return record


def bench_blocks_only(model: str, work: Path, quick: bool) -> dict[str, Any]:
    """The block rows alone, from the train stage of the model's 90% recipe (the same dense run)."""
    import dataclasses

    from sparsify.api import ModelSource, train_model
    from sparsify.recipe import load_recipe

    stage = next(s for s in load_recipe(f"{model}-90").stages if s.action == "train")
    cfg = dataclasses.replace(stage.options, progress=False, **({"epochs": 1} if quick else {}))
    dense = work / model / "dense"
    run = train_model(ModelSource(model, data="digits"), cfg, dense)
    return {"model": model, "dense_accuracy": run.metrics["test_accuracy"],
            "blocks": block_rows(dense, work / model, quick)}


def evaluate_targets(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 17's accuracy targets, met or not, from the measured numbers."""
    out = []
    for m in models:
        dense = m["dense_accuracy"]
        for key, what in (("unstructured_90", "90% unstructured"), ("channels_50", "50% channels")):
            r = m["recipes"][key]  # against the recipe's own dense stage (same seed)
            own = r.get("dense_accuracy", dense)
            out.append({"target": f"{m['model']}: default recipe at {what} within 1 point of dense",
                        "met": r["accuracy"] >= own - 1.0,
                        "detail": f"{r['accuracy']:.2f}% vs dense {own:.2f}% ({r['accuracy'] - own:+.2f})"})
        seventy = {k: v.get("0.7") for k, v in m["oneshot"].items()}
        for method in ("wanda", "sparsegpt"):
            if seventy.get(method) is not None:
                out.append({"target": f"{m['model']}: one-shot 70% {method} above magnitude",
                            "met": seventy[method] > seventy["magnitude"],
                            "detail": f"{method} {seventy[method]:.2f}% vs magnitude {seventy['magnitude']:.2f}% "
                                      f"(global magnitude {seventy['magnitude-global']:.2f}%)"})
        half = m["oneshot"]["sparsegpt"].get("0.5")
        if half is not None:
            out.append({"target": f"{m['model']}: one-shot sparsegpt at 50% within 2 points of dense",
                        "met": half >= dense - 2.0, "detail": f"{half:.2f}% vs dense {dense:.2f}%"})
    return out


def plot(doc: dict[str, Any], path: Path) -> None:
    """One panel per model: accuracy by sparsity level per method, recipe results as stars."""
    plt = pyplot()
    models = doc["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.2), squeeze=False)
    for ax, m in zip(axes[0], models):
        levels = list(next(iter(m["oneshot"].values())).keys())
        width = 0.8 / len(m["oneshot"])
        for i, (method, accs) in enumerate(m["oneshot"].items()):
            ax.bar([j + i * width for j in range(len(levels))], [accs[lv] for lv in levels], width, label=method)
        ax.axhline(m["dense_accuracy"], color="black", lw=1, ls="--", label="dense")
        r90 = m["recipes"]["unstructured_90"]["accuracy"]
        rc50 = m["recipes"]["channels_50"]["accuracy"]
        ax.axhline(r90, color="tab:red", lw=1, ls=":", label=f"recipe 90%: {r90:.1f}")
        ax.axhline(rc50, color="tab:purple", lw=1, ls="-.", label=f"recipe 50% ch.: {rc50:.1f}")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(levels))], levels)
        ax.set_ylim(0, 100)
        ax.set_title(f"{m['model']}: one-shot test accuracy (no fine-tuning)")
        ax.set_xlabel("sparsity")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p: argparse.ArgumentParser = parser(__doc__.splitlines()[0], "quality.json")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated built-in models")
    p.add_argument("--calibration-batches", type=int, default=16, help="wanda/sparsegpt batches of 64 samples")
    p.add_argument("--keep", type=Path, help="keep the runs in this directory")
    p.add_argument("--reuse", action="store_true",
                   help="with --keep: read back the recipes whose outputs are all there instead of re-running them "
                        "(to resume an interrupted run; their seconds are then null)")
    p.add_argument("--blocks-only", action="store_true",
                   help="only the block rows (unstructured vs 1x4 / 4x1 / 16x1 blocks at 90%%, fine-tuned)")
    p.add_argument("--combine", type=Path, nargs="+", metavar="JSON",
                   help="write one document from per-model documents of earlier runs (no measuring)")
    args = p.parse_args(argv)
    if args.combine:
        docs = [json.loads(Path(c).read_text()) for c in args.combine]
        doc = {**docs[0], "models": [m for d in docs for m in d["models"]]}
        doc["config"] = {**docs[0]["config"], "models": [m["model"] for m in doc["models"]],
                         "combined_from": [d["created"] for d in docs]}
        doc["total_s"] = round(sum(d.get("total_s", 0) for d in docs), 1)
        doc["targets"] = evaluate_targets(doc["models"])
        write_outputs(args, doc, plot)
        return 0
    import torch

    torch.set_num_threads(1)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    work = args.keep or Path(tempfile.mkdtemp(prefix="sparsify-quality-"))
    t0 = time.perf_counter()
    if args.blocks_only:
        doc = envelope(SCHEMA, {"quick": args.quick, "models": models, "blocks_only": True,
                                "split": "digits test (271 samples)", "seed": 0})
        try:
            records = [bench_blocks_only(m, work, args.quick) for m in models]
        finally:
            if args.keep is None:
                shutil.rmtree(work, ignore_errors=True)
        doc["models"] = records
        doc["total_s"] = round(time.perf_counter() - t0, 1)
        write_outputs(args, doc, None)
        return 0
    doc = envelope(SCHEMA, {"quick": args.quick, "models": models, "calibration_batches": args.calibration_batches,
                            "bn_recalibrate_batches": BN_BATCHES, "split": "digits test (271 samples)", "seed": 0})
    try:
        records = [bench_model(m, work, args.quick, args.calibration_batches, args.reuse and args.keep is not None)
                   for m in models]
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    doc["models"] = records
    doc["targets"] = evaluate_targets(records)
    doc["total_s"] = round(time.perf_counter() - t0, 1)
    write_outputs(args, doc, plot)
    for t in doc["targets"]:
        print(f"{'met    ' if t['met'] else 'NOT MET'}  {t['target']}: {t['detail']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
