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
from sparsify.data import (
    InputSpec, Splits, check_inputs, input_specs_from_data, load_data, make_input_specs, random_inputs,
)
from sparsify.errors import DataError, ModelError, RunError
from sparsify.export.verify import DEFAULT_ATOL, DEFAULT_RTOL, VerifyReport
from sparsify.finetune import TrainConfig, evaluate, train
from sparsify.masks import apply_masks, fold_masks
from sparsify.models import BUILTIN_INPUT_SHAPE, BUILTIN_MODELS
from sparsify.models.hub import is_hub_ref, open_hub_model
from sparsify.modelref import build_model, load_weights, model_ref, read_state_dict
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
    hf_task: str | None = None
    example_inputs: str | None = None


def open_model(src: ModelSource) -> Run:
    """A run from a run directory, or a fresh (unmasked) run from a model reference."""
    if is_run_dir(src.model):
        run = load_run(src.model, src.trust)
        if src.weights:
            raise ModelError(f"--weights cannot be combined with the run directory {src.model}; the run holds its weights")
        if src.data:
            run.use_data(src.data)
        if src.example_inputs:
            read_example_inputs(src.example_inputs, run.inputs)
            run.example_inputs = src.example_inputs
        return run
    if Path(src.model).is_dir():
        raise ModelError(f"{src.model} is a directory but holds no manifest.json; expected a run directory, "
                         f"a built-in model ({', '.join(sorted(BUILTIN_MODELS))}), 'hf:DIR' for a Hugging Face "
                         "directory, or 'package.module:attr'")
    if src.hf_task and not src.model.startswith("hf:"):
        raise ModelError(f"--hf-task applies to hf:DIR models only, not {src.model!r}")
    hub_inputs = None
    if is_hub_ref(src.model):
        from sparsify.data import parse_input_shape

        model, ref, hub_inputs = open_hub_model(src.model, src.model_args, src.hf_task,
                                                [parse_input_shape(s) for s in src.input_shapes])
        if src.weights and ref["kind"] == "hf":
            raise ModelError("--weights does not apply to hf:DIR models: the weights come from the directory")
    else:
        ref = model_ref(src.model, src.model_args)
        model = build_model(ref, TRUST_ALL)  # the user named it on the command line
    if src.weights:
        load_weights(model, read_state_dict(src.weights), src.weights)
    inputs = resolve_inputs(src, ref, hub_inputs)
    if any(s.is_integer and s.values == "normal" for s in inputs):
        from sparsify.graph.input_values import derive_input_values

        inputs = derive_input_values(model, inputs)
    run = Run(model=model, model_ref=ref, inputs=inputs, data=src.data)
    if src.example_inputs:
        read_example_inputs(src.example_inputs, inputs)
        run.example_inputs = src.example_inputs
    if src.data:
        check_data_inputs(run)
    return run


def resolve_inputs(src: ModelSource, ref: dict[str, Any], known: list[InputSpec] | None = None) -> list[InputSpec]:
    """Input specs from --data, else --input-shape, else the model's known shape. ``known``:
    the specs a library model names itself (--data then gives their shapes and dtypes)."""
    if src.data:
        names = [s.name for s in known] if known else None
        found = input_specs_from_data(load_data(src.data, names).train)
        if known is None:
            return found
        if len(found) != len(known):
            raise DataError(f"--data {src.data} gives {len(found)} inputs per sample; the model takes {len(known)} "
                            f"({', '.join(s.name for s in known)})")
        return [dataclasses.replace(k, shape=f.shape, dtype=f.dtype) for k, f in zip(known, found)]
    if known is not None:
        if src.input_dtypes:
            raise DataError("--input-dtype does not apply to hf:/torchvision: models; their dtypes are known")
        return known
    if src.input_shapes:
        return make_input_specs(src.input_shapes, src.input_dtypes)
    if ref["kind"] == "builtin":
        return [InputSpec("input", BUILTIN_INPUT_SHAPE, "float32")]
    raise DataError(f"cannot tell the inputs of model {ref['name']!r}: give --data or --input-shape (e.g. --input-shape 1,3,32,32)")


def read_example_inputs(path: str | Path, specs: Sequence[InputSpec]) -> list[np.ndarray]:
    """Named arrays from an .npz (one per model input, batch first), checked against the specs:
    names, ranks, static sizes and the valid range of every integer input."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--example-inputs {path}: no such file; expected an .npz with one array per input "
                        f"({', '.join(s.name for s in specs)})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # numpy raises several types for a bad file
        raise DataError(f"--example-inputs {path} is not a readable .npz archive: {exc}") from exc
    names = [s.name for s in specs]
    if len(specs) == 1 and len(arrays) == 1 and names[0] not in arrays:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing, extra = [n for n in names if n not in arrays], sorted(set(arrays) - set(names))
    if missing or extra:
        raise DataError(f"--example-inputs {path} should hold arrays named {names}; "
                        + "; ".join(p for p in (f"missing {missing}" if missing else "",
                                                f"unexpected {extra}" if extra else "") if p))
    out = [arrays[n] for n in names]
    check_inputs(specs, out, f"--example-inputs {path}")
    return out


def check_data_inputs(run: Run) -> None:
    """Check a batch of the run's data against its input specs (integer ranges included)."""
    from sparsify.data import loader, split_batch

    names = [s.name for s in run.inputs]
    x, _ = split_batch(next(iter(loader(load_data(str(run.data), names).train, 64))))
    check_inputs(run.inputs, x, f"--data {run.data}")


def _need_data(run: Run, data: str | None) -> Splits:
    if data:
        run.use_data(data)
    ref = run.data_ref()
    if not ref:
        raise DataError("this step needs data: give --data (e.g. --data digits)")
    return load_data(ref, [s.name for s in run.inputs])


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

            calib = [split_batch(b) for b, _ in zip(loader(splits.train, 64, shuffle=True), range(8))]
        with torch.no_grad():
            example = random_inputs(run.inputs)
        fold_copy = fold_masks(copy.deepcopy(model))
        plans = [plan_structured(fold_copy, example, structure=s, ratio=ratio, criterion=criterion, scope=scope,
                                 round_to=round_to, min_channels=min_channels, targets=targets, ignore=ignore,
                                 calib_batches=calib, seed=seed, dynamic=[i.dynamic for i in run.inputs])
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
        acc = evaluate(model, load_data(run.data, [s.name for s in run.inputs]).test)["accuracy"]
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
    """Seeded valid random inputs at batch 1 and 3 (and, for inputs with a dynamic sequence
    axis, at a second sequence length), plus the run's example inputs and a batch of its data."""
    sets = {f"random b{b}": [t.numpy() for t in random_inputs(run.inputs, batch=b, seed=seed + b)] for b in (1, 3)}
    seqs = [s.shape[a] for s in run.inputs for a in s.dynamic if a > 0]
    if seqs:
        other = max(2, (3 * seqs[0]) // 4) if seqs[0] > 2 else seqs[0] + 1
        sets[f"random b2 seq{other}"] = [t.numpy() for t in random_inputs(run.inputs, batch=2, seed=seed + 7,
                                                                          seq=other)]
    if run.example_inputs:
        sets["example inputs"] = read_example_inputs(run.example_inputs, run.inputs)
    data = run.data_ref()
    if data:
        from sparsify.data import loader, split_batch

        x, _ = split_batch(next(iter(loader(load_data(data, [s.name for s in run.inputs]).test, 16))))
        sets["data b16"] = [t.numpy() for t in x]
    return sets


def export_model(run_path: str | Path, out: str | Path, *, fmt: str = "onnx", mode: str = "dense",
                 verify: bool = True, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                 opset: int | None = None, trust: CodeTrust = CodeTrust(),
                 **mode_options: Any) -> tuple[Path, VerifyReport | None, dict]:
    """Export a run; verification (on by default) must pass before anything appears at ``out``.

    ``trust`` allows code references named by the run (see :func:`sparsify.artifact.load_run`).
    """
    from sparsify.export import pipeline

    run = load_run(run_path, trust)
    return pipeline.export_run(run, Path(out), fmt=fmt, mode=mode, verify=verify, atol=atol, rtol=rtol,
                               opset=opset, **mode_options)
