"""The public functions the CLI maps onto, one per command."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from sparsify.artifact import WEIGHTS, Run, derive, is_run_dir, load_run, read_manifest, save_run
from sparsify.data import (
    Splits, check_inputs, input_specs_from_data, load_data, make_input_specs, random_inputs, read_example_inputs,
)
from sparsify.errors import DataError, ExportError, ModelError, RunError
from sparsify.inputspec import InputSpec
from sparsify.export.options import DEFAULT_ATOL, DEFAULT_RTOL
from sparsify.export.verify import VerifyReport
from sparsify.finetune import TrainConfig, evaluate, train
from sparsify.masks import apply_masks, fold_masks, iter_masks
from sparsify.models import BUILTIN_INPUT_SHAPE, BUILTIN_MODELS
from sparsify.models.hub import is_hub_ref, open_hub_model
from sparsify.modelref import build_model, load_weights, load_weights_file, model_ref, read_state_dict
from sparsify.trust import TRUST_ALL, CodeTrust

if TYPE_CHECKING:
    from sparsify.distributed import DistContext
    from sparsify.runtime import Session
    from sparsify.recipe import Recipe
    from sparsify.pruner import PruneOptions
    from sparsify.schedule import ScheduleOptions


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
        if Path(src.weights).suffix == ".safetensors" and Path(src.weights).is_file():
            load_weights_file(model, src.weights)
        else:
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


def train_model(src: ModelSource, cfg: TrainConfig, out: str | Path, *,
                recipe_file: dict[str, Any] | None = None) -> Run:
    """Train a model densely on its data and write a run."""
    cfg.validate()
    if cfg.nproc > 1 or _distributed_env():
        raise RunError("train runs in one process; distributed training is for finetune (--nproc / torchrun)")
    run = open_model(src)
    splits = _need_data(run, src.data)
    history = train(run.model, splits.train, splits.val, cfg)
    return _save_trained(run, splits, cfg, {"step": "train"}, "history", "dense_test_accuracy", history, out,
                         recipe_file)


def _distributed_env() -> bool:
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _save_trained(run: Run, splits: Splits, cfg: TrainConfig, step: dict[str, Any], history_key: str,
                  accuracy_key: str, history: list[dict[str, Any]], out: str | Path,
                  recipe_file: dict[str, Any] | None) -> Run:
    """Evaluate the trained model on the test split and write the new run."""
    accuracy = round(evaluate(run.model, splits.test)["accuracy"], 4)
    step = {**step, "config": dataclasses.asdict(cfg), "data": splits.name}
    new = derive(run, run.model, step, {history_key: history, "test_accuracy": accuracy, accuracy_key: accuracy})
    new.recipe_file = recipe_file
    save_run(new, out)
    return new


def prune_model(src: ModelSource, out: str | Path, options: "PruneOptions | None" = None, *,
                progress: Callable[[str], None] | None = None, recipe_file: dict[str, Any] | None = None,
                **fields: Any) -> tuple[Run, Any]:
    """Plan masks (unstructured, N:M, data-aware, or structured groups), attach them, and write a run.

    ``options`` or the same fields as keywords (``sparsity=0.9, method="wanda"``); returns (run, plan).
    """
    from sparsify.pruner import PruneOptions

    opts = (options if options is not None else PruneOptions(**fields)).validate()
    run = open_model(src)
    model = run.model
    plan = _plan(run, src, opts, progress)
    step = {"step": "prune", **_step_fields(opts, plan)}
    if is_run_dir(src.model):
        step["parent"] = {"path": str(Path(src.model).resolve()),
                          "weights_sha256": read_manifest(src.model)["files"][WEIGHTS]["sha256"]}
    existing = run.masks
    masks = {k: (v & existing[k]) if k in existing else v for k, v in plan.masks.items()}
    if getattr(plan, "weights", None):
        from sparsify.oneshot import write_weights

        write_weights(model, plan.weights)
    apply_masks(model, masks)
    if opts.bn_recalibrate:
        from sparsify.finetune import recalibrate_batchnorm

        recalibrate_batchnorm(model, _need_data(run, src.data).train, opts.bn_recalibrate, seed=opts.seed)
        step["bn_recalibrate_batches"] = opts.bn_recalibrate
    metrics: dict[str, Any] = {}
    if run.data_ref():
        acc = evaluate(model, load_data(run.data, [s.name for s in run.inputs]).test)["accuracy"]
        metrics["test_accuracy"] = round(acc, 4)
        metrics["pruned_test_accuracy"] = round(acc, 4)
    new = derive(run, model, step, metrics)
    new.recipe_file = recipe_file
    save_run(new, out)
    return new, plan


def calibration_batches(run: Run, data: str | None, count: int, seed: int = 0,
                        batch_size: int = 64) -> list[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
    """``count`` seeded batches of (inputs, labels) from the training split, checked against the run's inputs."""
    from sparsify.calibration import check_batches
    from sparsify.data import loader, split_batch

    splits = _need_data(run, data)
    batches = [split_batch(b) for b, _ in zip(loader(splits.train, batch_size, shuffle=True, seed=seed), range(count))]
    check_batches([x for x, _ in batches], [s.shape for s in run.inputs])
    return batches


def _plan(run: Run, src: ModelSource, opts: "PruneOptions", progress: Callable[[str], None] | None) -> Any:
    """The plan the options ask for (the model is not changed)."""
    from sparsify.pruner import DATA_AWARE, parse_nm, plan_nm, plan_unstructured

    model = run.model
    nm = parse_nm(opts.nm) if opts.nm is not None else None
    if opts.method in DATA_AWARE:
        from sparsify.oneshot import plan_data_aware

        batches = [x for x, _ in calibration_batches(run, src.data, opts.calibration_batches, opts.seed)]
        return plan_data_aware(model, opts.method, batches, sparsity=opts.sparsity, nm=nm, targets=opts.targets,
                               ignore=opts.ignore, dampening=opts.dampening, block_size=opts.block_size,
                               progress=progress)
    if nm is not None:
        return plan_nm(model, *nm, method=opts.method, targets=opts.targets, ignore=opts.ignore, seed=opts.seed)
    if opts.block is not None:
        from sparsify.block import plan_block

        return plan_block(model, opts.sparsity, opts.block, scope=opts.scope, method=opts.method,
                          targets=opts.targets, ignore=opts.ignore, seed=opts.seed)
    if opts.structure is None:
        return plan_unstructured(model, opts.sparsity, scope=opts.scope, method=opts.method, targets=opts.targets,
                                 ignore=opts.ignore, seed=opts.seed)
    from sparsify.structured import plan_structured

    ratio = opts.ratio if opts.ratio is not None else (opts.sparsity if opts.sparsity is not None else 0.5)
    calib = None
    if opts.criterion == "taylor":
        calib = calibration_batches(run, src.data, min(opts.calibration_batches, 8), opts.seed)
    with torch.no_grad():
        example = random_inputs(run.inputs)
    # The planner captures its own copy of the model; a masked one is folded first (on a copy,
    # since its masks stay attached), a dense one needs no second copy of its weights.
    fold_copy = fold_masks(copy.deepcopy(model)) if next(iter_masks(model), None) else model
    plans = [plan_structured(fold_copy, example, structure=s, ratio=ratio, criterion=opts.criterion,
                             scope=opts.scope, round_to=opts.round_to, min_channels=opts.min_channels,
                             targets=opts.targets, ignore=opts.ignore, calib_batches=calib, seed=opts.seed,
                             dynamic=[i.dynamic for i in run.inputs])
             for s in _structures(opts.structure)]
    return plans[0] if len(plans) == 1 else CombinedPlan(plans)


def _step_fields(opts: "PruneOptions", plan: Any) -> dict[str, Any]:
    """What the manifest records of a prune step."""
    from sparsify.pruner import DATA_AWARE

    common = {"targets": opts.targets, "ignore": opts.ignore, "seed": opts.seed}
    if opts.structure is not None:
        ratio = opts.ratio if opts.ratio is not None else (opts.sparsity if opts.sparsity is not None else 0.5)
        return {"pattern": opts.structure, "ratio": ratio, "criterion": opts.criterion, "scope": opts.scope,
                "round_to": opts.round_to, "min_channels": opts.min_channels, **common,
                "groups": [{k: v for k, v in g.to_dict().items() if k != "tensors"} for g in plan.groups],
                "skipped": dict(plan.skipped)}
    out = {"pattern": plan.pattern, "method": opts.method, **common}
    if opts.nm is None:
        out.update(sparsity=opts.sparsity, scope=opts.scope)
    if opts.block is not None:
        out["block"] = opts.block
    if opts.method in DATA_AWARE:
        out["calibration"] = {"batches": opts.calibration_batches, "batch_size": 64}
        if opts.method == "sparsegpt":
            out["calibration"].update(dampening=opts.dampening, block_size=opts.block_size)
        out["layers"] = plan.layers
    return out


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
                   teacher: str | Path | None = None, schedule: "ScheduleOptions | None" = None, *,
                   trust: CodeTrust = CodeTrust(), recipe_file: dict[str, Any] | None = None) -> Run:
    """Fine-tune a run with its masks fixed, or pruning gradually on ``schedule``; optionally distilling.

    ``cfg.nproc > 1`` spawns that many local ranks (DistributedDataParallel, gloo on CPU);
    under torchrun the ranks are already started. Only rank 0 writes the run. ``trust`` allows
    code references named by the run (see :func:`sparsify.artifact.load_run`).
    """
    from sparsify.distributed import check_nproc, context_from_env, launch

    cfg.validate()
    if schedule is not None:
        schedule.validate()
    read_manifest(run_path)  # a missing or corrupt run fails here, before any process starts
    args = (str(run_path), cfg, str(out), data, None if teacher is None else str(teacher), schedule, trust,
            recipe_file)
    if cfg.nproc > 1 and not _distributed_env():
        check_nproc(cfg.nproc)
        launch(cfg.nproc, finetune_rank, args, "fine-tuning")
        return load_run(out, trust)
    return finetune_rank(context_from_env(), *args)


def finetune_rank(ctx: "DistContext", run_path: str, cfg: TrainConfig, out: str, data: str | None,
                  teacher: str | None, schedule: "ScheduleOptions | None", trust: CodeTrust,
                  recipe_file: dict[str, Any] | None) -> Run:
    """One rank's part of `finetune_model` (the whole of it when not distributed)."""
    from functools import partial

    from sparsify.distributed import DistributedError, all_equal, broadcast_masks
    from sparsify.finetune import steps_per_epoch

    run = load_run(run_path, trust)
    splits = _need_data(run, data)
    teacher_model = teacher_for(run, teacher) if cfg.distill else None
    pruner = None
    if schedule is not None and schedule.active:
        from sparsify.schedule import GradualPruner

        per_epoch = steps_per_epoch(len(splits.train), cfg.batch_size, ctx.world)  # type: ignore[arg-type]
        pruner = GradualPruner(schedule, run.model, random_inputs(run.inputs), cfg.epochs, per_epoch,
                               sync=partial(broadcast_masks, ctx))
    history = train(run.model, splits.train, splits.val, cfg, teacher=teacher_model, pruner=pruner, dist=ctx)
    step: dict[str, Any] = {"step": "finetune"}
    if pruner is not None:
        step["schedule"] = pruner.finish(run.model)
    if ctx.active:
        for name, tensor in sorted({**run.masks, **dict(run.model.state_dict())}.items()):
            if not all_equal(ctx, tensor):
                raise DistributedError(f"after fine-tuning, {name} differs between ranks; no run was written")
        step["world_size"] = ctx.world
    new = run
    if ctx.is_main:
        new = _save_trained(run, splits, cfg, step, "finetune_history", "finetuned_test_accuracy", history, out,
                            recipe_file)
    if ctx.active:
        import torch.distributed as dist

        dist.barrier()
    return new


def apply_recipe(recipe: "Recipe", out: str | Path, *, trust: CodeTrust = CodeTrust(), progress: bool = True,
                 log: Callable[[str], None] | None = None) -> list[tuple[str, Path]]:
    """Run every stage of a validated recipe; stage NAME writes ``out/NAME`` (export: ``out/NAME.onnx``).

    Returns (stage name, path written) in order. Each output is written atomically; a failing
    stage leaves the earlier stages' outputs complete and writes nothing of its own. A recipe
    naming code (``package.module:attr`` model or data) runs only when ``trust`` allows it.
    """
    recipe.check_trust(trust)
    trust = dataclasses.replace(trust, refs=trust.refs | set(recipe.code_refs().values()))
    out = Path(out)
    written: dict[str, Path] = {}
    done: list[tuple[str, Path]] = []
    for stage in recipe.stages:
        record = recipe.record(stage.name)
        start = written[stage.source] if stage.source is not None else None
        opts = stage.options
        if log:
            log(f"stage {stage.name} ({stage.action})" + (f" from {start}" if start else f" from {recipe.model}"))
        if stage.action == "export":
            dest = out / f"{stage.name}.{'onnx' if opts.format == 'onnx' else 'pt2'}"
            export_model(start, dest, trust=trust, **opts.call_kwargs())
        else:
            dest = out / stage.name
            src = ModelSource(str(start), data=recipe.data, trust=trust) if start is not None else ModelSource(
                recipe.model, dict(recipe.model_args), recipe.weights, recipe.data, recipe.input_shapes,
                recipe.input_dtypes, trust)
            if stage.action == "train":
                train_model(src, dataclasses.replace(opts, progress=progress), dest, recipe_file=record)
            elif stage.action == "prune":
                prune_model(src, dest, opts, progress=log, recipe_file=record)
            else:
                teacher = opts.teacher
                if teacher is not None and teacher in written:
                    teacher = str(written[teacher])
                finetune_model(src.model, dataclasses.replace(opts.train, progress=progress), dest, data=recipe.data,
                               teacher=teacher, schedule=opts.schedule, trust=trust, recipe_file=record)
            written[stage.name] = dest
        done.append((stage.name, dest))
    return done


def teacher_for(run: Run, teacher: str | Path | None = None) -> nn.Module:
    """The dense teacher: ``teacher`` if given, else the run the first prune step started from.

    The recorded parent is used only if its weights still have the recorded hash.
    """
    if teacher is None:
        parents = [s["parent"] for s in run.recipe if s.get("step") == "prune" and s.get("parent")]
        if not parents and not run.masks:  # a dense run pruned gradually is its own teacher
            return fold_masks(copy.deepcopy(run.model)).eval()
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
    """The inputs an export of ``run`` is verified on (:meth:`sparsify.artifact.Run.verification_inputs`)."""
    return run.verification_inputs(seed)


def export_model(run_path: str | Path, out: str | Path, *, fmt: str = "onnx", mode: str = "dense",
                 verify: bool = True, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                 opset: int | None = None, trust: CodeTrust = CodeTrust(), external_data: str = "auto",
                 input_shapes: Sequence[str] = (), **mode_options: Any) -> tuple[Path, VerifyReport | None, dict]:
    """Export a run; verification (on by default) must pass before anything appears at ``out``.

    ``run_path`` may also be an ONNX file sparsify wrote (``sparsify.export.from_file``): mode
    dense lowers its sparse ops to standard ones, mode sparse decides its layers again on this
    host; the result is verified against the file (``input_shapes``, ``--input-shape``: sizes of
    dynamic dims the file records none for).
    ``trust`` allows code references named by the run (see :func:`sparsify.artifact.load_run`);
    ``external_data`` (auto, always, never) puts ONNX weights in ``OUT.data`` beside ``OUT``.
    """
    from sparsify.export import pipeline

    if Path(run_path).suffix == ".onnx" and not Path(run_path).exists():
        raise ExportError(f"{run_path} does not exist; expected a run directory or an ONNX file sparsify exported")
    if Path(run_path).is_file():
        from sparsify.export.from_file import export_file

        return export_file(Path(run_path), Path(out), fmt=fmt, mode=mode, verify=verify, atol=atol, rtol=rtol,
                           opset=opset, external_data=external_data, input_shapes=input_shapes, **mode_options)
    if input_shapes:
        raise ExportError(f"--input-shape applies to ONNX files; the run {run_path} records its inputs")

    return pipeline.export_run(load_run(run_path, trust), Path(out), fmt=fmt, mode=mode, verify=verify,
                               atol=atol, rtol=rtol, opset=opset, external_data=external_data, **mode_options)


def load_session(path: str | Path, *, threads: int = 1, decide_here: bool = False, batch1: str = "auto",
                 input_shapes: Sequence[str] = ()) -> "Session":
    """A ``sparsify.runtime.Session`` on the ONNX file ``path`` with ``threads`` kernel threads.

    With ``decide_here``, a sparse file whose conversions were decided on another host or
    thread count is first exported again from itself on this one, verified, and cached
    (``sparsify.export.decided_here``; the first load takes the export's time, later ones
    none); ``input_shapes`` size dynamic dims the file records no size for."""
    from sparsify.runtime import Session

    if decide_here:
        from sparsify.export.decided_here import decided_here

        path = decided_here(path, threads=threads, input_shapes=input_shapes).path
    return Session(path, threads=threads, batch1=batch1)
