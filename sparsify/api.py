"""The public functions the CLI maps onto, one per command."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from sparsify.artifact import WEIGHTS, Run, derive, is_run_dir, load_run, read_manifest, save_run
from sparsify.data import InputSpec, Splits, input_specs_from_data, load_data, make_input_specs, random_inputs
from sparsify.errors import DataError, ModelError, RunError
from sparsify.export.verify import DEFAULT_ATOL, DEFAULT_RTOL, VerifyReport
from sparsify.finetune import TrainConfig, evaluate, train
from sparsify.masks import apply_masks, fold_masks, iter_masks
from sparsify.models import BUILTIN_INPUT_SHAPE, BUILTIN_MODELS
from sparsify.modelref import build_model, load_weights, load_weights_file, model_ref, read_state_dict
from sparsify.trust import TRUST_ALL, CodeTrust


@dataclasses.dataclass
class ModelSource:
    """Where a model comes from: a run directory, or a reference plus optional weights and inputs."""

    model: str
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    weights: str | None = None
    data: str | None = None
    input_shapes: Sequence[str] = ()
    input_dtypes: Sequence[str] = ()
    # Code references a run directory's manifest may name and have imported (its model, its data).
    trust: CodeTrust = CodeTrust()


def open_model(src: ModelSource) -> Run:
    """A run from a run directory, or a fresh (unmasked) run from a model reference."""
    if is_run_dir(src.model):
        run = load_run(src.model, src.trust)
        if src.weights:
            raise ModelError(f"--weights cannot be combined with the run directory {src.model}; the run holds its weights")
        if src.data:
            run.use_data(src.data)
        return run
    if Path(src.model).is_dir():
        raise ModelError(f"{src.model} is a directory but holds no manifest.json; expected a run directory, "
                         f"a built-in model ({', '.join(sorted(BUILTIN_MODELS))}) or 'package.module:attr'")
    ref = model_ref(src.model, src.model_args)
    model = build_model(ref, TRUST_ALL)  # the user named it on the command line
    if src.weights:
        if Path(src.weights).suffix == ".safetensors" and Path(src.weights).is_file():
            load_weights_file(model, src.weights)
        else:
            load_weights(model, read_state_dict(src.weights), src.weights)
    inputs = resolve_inputs(src, ref)
    return Run(model=model, model_ref=ref, inputs=inputs, data=src.data)


def resolve_inputs(src: ModelSource, ref: dict[str, Any]) -> list[InputSpec]:
    """Input specs from --data, else --input-shape, else the built-in model's known shape."""
    if src.data:
        return input_specs_from_data(load_data(src.data).train)
    if src.input_shapes:
        return make_input_specs(src.input_shapes, src.input_dtypes)
    if ref["kind"] == "builtin":
        return [InputSpec("input", BUILTIN_INPUT_SHAPE, "float32")]
    raise DataError(f"cannot tell the inputs of model {ref['name']!r}: give --data or --input-shape (e.g. --input-shape 1,3,32,32)")


def _need_data(run: Run, data: str | None) -> Splits:
    if data:
        run.use_data(data)
    ref = run.data_ref()
    if not ref:
        raise DataError("this step needs data: give --data (e.g. --data digits)")
    return load_data(ref)


def train_model(src: ModelSource, cfg: TrainConfig, out: str | Path) -> Run:
    """Train a model densely on its data and write a run."""
    run = open_model(src)
    return _train_and_save(run, _need_data(run, src.data), cfg, None, "train", "history", "dense_test_accuracy", out)


def _train_and_save(run: Run, splits: Splits, cfg: TrainConfig, teacher: nn.Module | None, step_name: str,
                    history_key: str, accuracy_key: str, out: str | Path) -> Run:
    """Train the run's model in place, evaluate it on the test split and write the new run."""
    history = train(run.model, splits.train, splits.val, cfg, teacher=teacher)
    accuracy = round(evaluate(run.model, splits.test)["accuracy"], 4)
    step = {"step": step_name, "config": dataclasses.asdict(cfg), "data": splits.name}
    new = derive(run, run.model, step, {history_key: history, "test_accuracy": accuracy, accuracy_key: accuracy})
    save_run(new, out)
    return new


def prune_model(src: ModelSource, out: str | Path, *, sparsity: float | None = None, scope: str = "layer",
                method: str = "magnitude", targets: str | None = None, ignore: str | None = None,
                structure: str | None = None, ratio: float | None = None, criterion: str = "l1",
                round_to: int = 1, min_channels: int = 1, nm: str | None = None, bn_recalibrate: int = 0,
                seed: int = 0) -> tuple[Run, Any]:
    """Plan masks (unstructured, or structured groups), attach them, and write a run; returns (run, plan)."""
    from sparsify.errors import PruneError

    run = open_model(src)
    model = run.model
    if nm is not None:
        from sparsify.pruner import parse_nm, plan_nm

        n, m = parse_nm(nm)
        plan = plan_nm(model, n, m, method=method, targets=targets, ignore=ignore, seed=seed)
        step = {"step": "prune", "pattern": f"{n}:{m}", "method": method, "targets": targets, "ignore": ignore,
                "seed": seed}
    elif structure is None:
        from sparsify.pruner import plan_unstructured

        if sparsity is None:
            raise PruneError("give --sparsity (unstructured) or --structure channel|head with --ratio")
        plan = plan_unstructured(model, sparsity, scope=scope, method=method, targets=targets, ignore=ignore, seed=seed)
        step = {"step": "prune", "pattern": "unstructured", "sparsity": sparsity, "scope": scope,
                "method": method, "targets": targets, "ignore": ignore, "seed": seed}
    else:
        from sparsify.structured import plan_structured

        if ratio is None:
            ratio = sparsity if sparsity is not None else 0.5
        calib = None
        if criterion == "taylor":
            splits = _need_data(run, src.data)
            from sparsify.data import loader, split_batch

            calib = [(split_batch(b)[0][0], split_batch(b)[1]) for b, _ in zip(loader(splits.train, 64, shuffle=True), range(8))]
        with torch.no_grad():
            example = random_inputs(run.inputs)
        # The planner captures its own copy of the model; a masked one is folded first (on a copy,
        # since its masks stay attached), a dense one needs no second copy of its weights.
        fold_copy = fold_masks(copy.deepcopy(model)) if next(iter_masks(model), None) else model
        plans = [plan_structured(fold_copy, example, structure=s, ratio=ratio, criterion=criterion, scope=scope,
                                 round_to=round_to, min_channels=min_channels, targets=targets, ignore=ignore,
                                 calib_batches=calib, seed=seed)
                 for s in _structures(structure)]
        plan = plans[0] if len(plans) == 1 else CombinedPlan(plans)
        step = {"step": "prune", "pattern": structure, "ratio": ratio, "criterion": criterion, "scope": scope,
                "round_to": round_to, "min_channels": min_channels, "targets": targets, "ignore": ignore, "seed": seed,
                "groups": [{k: v for k, v in g.to_dict().items() if k != "tensors"} for g in plan.groups],
                "skipped": dict(plan.skipped)}
    if is_run_dir(src.model):
        step["parent"] = {"path": str(Path(src.model).resolve()),
                          "weights_sha256": read_manifest(src.model)["files"][WEIGHTS]["sha256"]}
    existing = run.masks
    masks = {k: (v & existing[k]) if k in existing else v for k, v in plan.masks.items()}
    apply_masks(model, masks)
    if bn_recalibrate:
        from sparsify.finetune import recalibrate_batchnorm

        recalibrate_batchnorm(model, _need_data(run, src.data).train, bn_recalibrate, seed=seed)
        step["bn_recalibrate_batches"] = bn_recalibrate
    metrics: dict[str, Any] = {}
    if run.data_ref():
        acc = evaluate(model, load_data(run.data).test)["accuracy"]
        metrics["test_accuracy"] = round(acc, 4)
        metrics["pruned_test_accuracy"] = round(acc, 4)
    new = derive(run, model, step, metrics)
    save_run(new, out)
    return new, plan


def _structures(structure: str) -> list[str]:
    """``"head,channel"`` → ["head", "channel"]: several structures pruned together."""
    from sparsify.errors import PruneError
    from sparsify.structured import STRUCTURES

    parts = [s.strip() for s in structure.split(",") if s.strip()]
    bad = [s for s in parts if s not in STRUCTURES]
    if not parts or bad or len(set(parts)) != len(parts):
        raise PruneError(f"--structure {structure!r} should be one or more of {', '.join(STRUCTURES)}, "
                         "comma-separated and without repeats (e.g. head,channel)")
    return parts


@dataclasses.dataclass
class CombinedPlan:
    """Several structured plans applied together (e.g. heads and channels): masks ANDed."""

    plans: list[Any]

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        from sparsify.structured import merge_masks

        return merge_masks(*(p.masks for p in self.plans))

    @property
    def groups(self) -> list[Any]:
        """Groups some plan prunes, plus groups every plan skips."""
        pruned = [g for p in self.plans for g in p.groups if not g.skipped]
        return pruned + [g for g in self.plans[0].groups if g.skipped and g.name in self.skipped]

    @property
    def skipped(self) -> dict[str, str]:
        """Groups that no plan prunes, with the first plan's reason."""
        pruned = {g.name for p in self.plans for g in p.groups if not g.skipped}
        common = set.intersection(*(set(p.skipped) for p in self.plans)) - pruned
        return {k: v for k, v in self.plans[0].skipped.items() if k in common}

    def __str__(self) -> str:
        return "\n".join(str(p).split("\n  skipped:")[0] for p in self.plans) + (
            "\n  skipped by every structure:\n" + "\n".join(f"    {k}: {v}" for k, v in self.skipped.items())
            if self.skipped else "")


def finetune_model(run_path: str | Path, cfg: TrainConfig, out: str | Path, data: str | None = None,
                   teacher: str | Path | None = None, trust: CodeTrust = CodeTrust()) -> Run:
    """Fine-tune a pruned run with its masks fixed, optionally distilling from the dense teacher.

    ``trust`` allows code references named by the run (see :func:`sparsify.artifact.load_run`).
    """
    run = load_run(run_path, trust)
    splits = _need_data(run, data)
    teacher_model = teacher_for(run, teacher) if cfg.distill else None
    return _train_and_save(run, splits, cfg, teacher_model, "finetune", "finetune_history",
                           "finetuned_test_accuracy", out)


def teacher_for(run: Run, teacher: str | Path | None = None) -> nn.Module:
    """The dense teacher: ``teacher`` if given, else the run the first prune step started from.

    The recorded parent is used only if its weights still have the recorded hash.
    """
    if teacher is None:
        parents = [s["parent"] for s in run.recipe if s.get("step") == "prune" and s.get("parent")]
        if not parents:
            raise RunError(f"run {run.path} records no dense parent run to distill from; give --teacher RUN")
        parent = parents[0]
        teacher = parent["path"]
        if not is_run_dir(teacher):
            raise RunError(f"the dense parent {teacher} of run {run.path} is gone; give --teacher RUN")
        actual = read_manifest(teacher)["files"][WEIGHTS]["sha256"]
        if actual != parent["weights_sha256"]:
            raise RunError(f"the dense parent {teacher} changed since {run.path} was pruned from it "
                           "(weights hash differs); give --teacher RUN")
    return fold_masks(load_run(teacher, run.trust).model).eval()


def reference_module(run: Run) -> nn.Module:
    """The masked model in eval mode with masks folded into plain tensors."""
    return run.reference_module()


def verification_inputs(run: Run, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Seeded random inputs at batch 1 and 3, plus a batch of real data when the run knows its data."""
    sets = {f"random b{b}": [t.numpy() for t in random_inputs(run.inputs, batch=b, seed=seed + b)] for b in (1, 3)}
    data = run.data_ref()
    if data:
        from sparsify.data import loader, split_batch

        x, _ = split_batch(next(iter(loader(load_data(data).test, 16))))
        sets["data b16"] = [t.numpy() for t in x]
    return sets


def export_model(run_path: str | Path, out: str | Path, *, fmt: str = "onnx", mode: str = "dense",
                 verify: bool = True, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                 opset: int | None = None, trust: CodeTrust = CodeTrust(), external_data: str = "auto",
                 **mode_options: Any) -> tuple[Path, VerifyReport | None, dict]:
    """Export a run; verification (on by default) must pass before anything appears at ``out``.

    ``trust`` allows code references named by the run (see :func:`sparsify.artifact.load_run`);
    ``external_data`` (auto, always, never) puts ONNX weights in ``OUT.data`` beside ``OUT``.
    """
    from sparsify.export import pipeline

    return pipeline.export_run(load_run(run_path, trust), Path(out), fmt=fmt, mode=mode, verify=verify,
                               atol=atol, rtol=rtol, opset=opset, external_data=external_data, **mode_options)
