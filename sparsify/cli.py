"""The ``sparsify`` command line: a thin layer mapping flags onto sparsify.api."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Sequence

from sparsify.errors import SparsifyError, one_paragraph
from sparsify.export.options import ExportOptions
from sparsify.options import add_flags, from_namespace
from sparsify.trust import CodeTrust, add_trust_option


def _trust(args: argparse.Namespace) -> CodeTrust:
    return CodeTrust.from_options(args.trust_code)


def _add_model_args(p: argparse.ArgumentParser, with_data: bool = True) -> None:
    p.add_argument("model", help="built-in model (digits-mlp, digits-cnn, digits-vit), hf:DIR (a local Hugging Face "
                               "directory), torchvision:NAME, 'package.module:attr', or a run directory")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE", help="keyword argument for a model factory (repeatable)")
    p.add_argument("--weights", help=".safetensors file or a state dict readable with torch.load(weights_only=True)")
    if with_data:
        p.add_argument("--data", help="'digits', a .npz with x and y, or 'package.module:attr'")
    p.add_argument("--input-shape", action="append", default=[], metavar="SHAPE", help="example input shape, e.g. 1,3,32,32 (repeatable)")
    p.add_argument("--input-dtype", action="append", default=[], metavar="DTYPE", help="dtype of the inputs (default float32)")
    p.add_argument("--hf-task", help="hf:DIR models: the head to load (base, sequence-classification, causal-lm, "
                                     "image-classification, ...; default base)")
    p.add_argument("--example-inputs", metavar="FILE.npz",
                   help="real inputs, one named array per model input; used to verify and benchmark")
    add_trust_option(p)


def _source(args: argparse.Namespace):
    from sparsify.api import ModelSource
    from sparsify.modelref import parse_model_args

    return ModelSource(args.model, parse_model_args(args.model_arg), args.weights, getattr(args, "data", None),
                       args.input_shape, args.input_dtype, _trust(args), args.hf_task, args.example_inputs)


_DISTILL_FIELDS = ("distill", "temperature", "alpha", "nproc")


def _add_train_args(p: argparse.ArgumentParser, epochs: int, lr: float, finetune: bool = False) -> None:
    from sparsify.finetune import TrainConfig
    add_flags(p, TrainConfig, skip=() if finetune else _DISTILL_FIELDS, defaults={"epochs": epochs, "lr": lr})
    p.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")
    p.set_defaults(train_defaults={"epochs": epochs, "lr": lr})


def _train_config(args: argparse.Namespace):
    from sparsify.finetune import TrainConfig
    return from_namespace(TrainConfig, args, args.train_defaults, progress=not args.no_progress)


def cmd_train(args: argparse.Namespace) -> int:
    from sparsify.api import train_model

    run = train_model(_source(args), _train_config(args), args.output)
    print(f"trained {args.model}: test accuracy {run.metrics['test_accuracy']:.2f}% → {args.output}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from sparsify.api import prune_model

    from sparsify.pruner import PruneOptions

    run, plan = prune_model(_source(args), args.output, from_namespace(PruneOptions, args),
                            progress=lambda line: print(line, file=sys.stderr))
    print(plan)
    acc = run.metrics.get("pruned_test_accuracy")
    print(f"pruned run written to {args.output}" + (f"; test accuracy {acc:.2f}%" if acc is not None else ""))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from sparsify.api import finetune_model

    from sparsify.schedule import ScheduleOptions

    schedule = from_namespace(ScheduleOptions, args)
    run = finetune_model(args.run, _train_config(args), args.output, data=args.data, teacher=args.teacher,
                         schedule=schedule, trust=_trust(args))
    import os

    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 writes and reports
        return 0
    points = (run.recipe[-1].get("schedule") or {}).get("points", [])
    for point in points:
        print(f"schedule point at step {point['step']} (epoch {point['epoch']:g}): target {point['target']}, "
              f"weight sparsity {point['weight_sparsity']:.2%}")
    print(f"fine-tuned {args.run}: test accuracy {run.metrics['test_accuracy']:.2f}% → {args.output}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from sparsify.api import export_model

    opts = from_namespace(ExportOptions, args, verify=not args.no_verify).validate()
    path, report, summary = export_model(args.run, args.output, trust=_trust(args), input_shapes=args.input_shape,
                                         **opts.call_kwargs())
    if report is not None:
        print(report.table())
    for line in summary.get("lines", []):
        print(line)
    data = f" + {summary['data_file']}" if summary.get("data_file") else ""
    print(f"wrote {path}{data} ({summary.get('bytes', 0):,} bytes, mode {args.mode})"
          + ("" if report is not None else " — verification skipped (--no-verify)"))
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from sparsify.recipe import RecipeError, load_recipe, shipped

    if args.list:
        for name, text in sorted(shipped().items()):
            first = next((line[1:].strip() for line in text.splitlines() if line.startswith("#")), "")
            print(f"{name:<20} {first}")
        return 0
    if not args.recipe:
        raise RecipeError("give a recipe file or a shipped recipe name (sparsify apply --list shows them)")
    recipe = load_recipe(args.recipe)
    recipe.check_trust(_trust(args))
    for stage in recipe.stages:
        print(f"stage {stage.name}: {stage.action}" + (f" from {stage.source}" if stage.source else ""))
    if args.check:
        print(f"recipe {recipe.name} is valid ({len(recipe.stages)} stages)")
        return 0
    from sparsify.api import apply_recipe

    out = args.output or recipe.name
    log = (lambda line: print(line, file=sys.stderr)) if not args.no_progress else None
    for name, path in apply_recipe(recipe, out, trust=_trust(args), progress=not args.no_progress, log=log):
        acc = ""
        if path.is_dir():
            metrics = json.loads((path / "manifest.json").read_text()).get("metrics", {})
            acc = f" (test accuracy {metrics['test_accuracy']:.2f}%)" if "test_accuracy" in metrics else ""
        print(f"{name}: {path}{acc}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from sparsify.inspect_model import inspect_path

    result = inspect_path(args.path, _trust(args))
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.table())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from sparsify.bench import cli as bench_cli

    if args.decide_here:
        threads = max(args.threads)
        args.models = [_decided_here(m, threads, "bench", input_shapes=args.input_shape) if m.endswith(".onnx") else m
                       for m in args.models]
    return bench_cli.run(args)


def cmd_run(args: argparse.Namespace) -> int:
    from sparsify.runtime.cli import npy_shapes, run_file

    if args.decide_here:
        args.model = _decided_here(args.model, args.threads, "run", npy_shapes(args.input))
    return run_file(args)


def _decided_here(model: str, threads: int, command: str, feed_shapes: Sequence[Sequence[int]] = (),
                  input_shapes: Sequence[str] = ()) -> str:
    """The file ``sparsify run|bench --decide-here`` runs for ``model``, said on stderr."""
    from sparsify.export.decided_here import decided_here

    decided = decided_here(model, threads=threads, input_shapes=input_shapes, feed_shapes=feed_shapes)
    print(f"sparsify {command}: {decided.describe()}", file=sys.stderr)
    return str(decided.path)


def cmd_demo(args: argparse.Namespace) -> int:
    from sparsify.demo import run_demo

    run_demo(args.output, quick=args.quick, threads=args.threads)
    return 0


def _train_parser(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    _add_train_args(p, epochs=20, lr=3e-3)
    p.add_argument("-o", "--output", required=True, help="run directory to write")


def _prune_parser(p: argparse.ArgumentParser) -> None:
    from sparsify.pruner import PruneOptions

    _add_model_args(p)
    add_flags(p, PruneOptions)
    p.add_argument("-o", "--output", required=True, help="run directory to write")


def _finetune_parser(p: argparse.ArgumentParser) -> None:
    from sparsify.schedule import ScheduleOptions

    p.add_argument("run", help="run directory")
    p.add_argument("--data", help="data reference (default: the run's)")
    _add_train_args(p, epochs=10, lr=1e-3, finetune=True)
    p.add_argument("--teacher", help="dense teacher run for --distill (default: the run this one was pruned from, "
                                     "or the run itself when it is dense)")
    add_flags(p, ScheduleOptions, rename={"kind": "--schedule"})
    add_trust_option(p)
    p.add_argument("-o", "--output", required=True, help="run directory to write")


def _export_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory, or an ONNX file: --mode dense lowers sparsify's sparse ops to "
                               "standard ONNX, --mode sparse decides its layers (again) on this host")
    add_flags(p, ExportOptions)
    p.add_argument("--input-shape", action="append", default=[], metavar="SHAPE",
                   help="ONNX files only: example shape of each input, in order (repeatable), e.g. 1,128; sizes the "
                        "dynamic dims the file records none for")
    p.add_argument("--no-verify", action="store_true", help="skip the equivalence check")
    add_trust_option(p)
    p.add_argument("-o", "--output", required=True, help="file to write")


def _apply_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", help="recipe file, or the name of a shipped recipe (see --list)")
    p.add_argument("-o", "--output", help="directory for the stages' runs and files (default: ./<recipe name>)")
    p.add_argument("--list", action="store_true", help="list the shipped recipes")
    p.add_argument("--check", action="store_true", help="validate the recipe and print its stages; run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, per-epoch or per-layer lines")
    add_trust_option(p)


def _inspect_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_trust_option(p)


_DECIDE_HERE_HELP = ("for a sparse ONNX file whose conversions were timed on another host or thread count: decide "
                     "them again on this one first (an export from the file, verified; cached per host and file)")


def _bench_parser(p: argparse.ArgumentParser) -> None:
    from sparsify.bench import cli as bench_cli

    bench_cli.add_arguments(p)
    p.add_argument("--decide-here", action="store_true", help=_DECIDE_HERE_HELP + ", at the largest --threads")


def _run_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model")
    p.add_argument("--input", action="append", required=True, help=".npy file per model input (repeatable, in order)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch1", choices=("auto", "csr"), default="csr",
                   help="batch-1 kernels of Linear layers: csr (default: for one call, building the sliced-ELL "
                        "copies costs more than they save, 0.3 s against ~1 ms on a 4x4096 MLP) or auto")
    p.add_argument("-o", "--output", required=True, help=".npy file for the first output")
    p.add_argument("--profile", action="store_true",
                   help="after one warm-up run, time --repeat runs per step and per op and print the breakdown")
    p.add_argument("--repeat", type=int, default=10, help="runs timed by --profile (default 10)")
    p.add_argument("--decide-here", action="store_true", help=_DECIDE_HERE_HELP + ", at --threads")


def _demo_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="sparsify-demo", help="output directory")
    p.add_argument("--quick", action="store_true", help="fewer epochs (for smoke tests)")
    p.add_argument("--threads", type=int, default=2)


# name -> (help, flags, handler). A command's flags are built only when it runs (or for --help of
# all commands), so `sparsify run` never imports torch.
COMMANDS = {
    "train": ("train a model densely on its data and write a run", _train_parser, cmd_train),
    "prune": ("compute masks and write a pruned run", _prune_parser, cmd_prune),
    "finetune": ("fine-tune a pruned run with its masks fixed", _finetune_parser, cmd_finetune),
    "export": ("export a run (verified in ONNX Runtime by default)", _export_parser, cmd_export),
    "apply": ("run a YAML recipe: a file, or a shipped recipe by name (e.g. digits-vit-90)", _apply_parser, cmd_apply),
    "inspect": ("per-layer table of a run or an ONNX file", _inspect_parser, cmd_inspect),
    "bench": ("measure latency of ONNX models (or runs)", _bench_parser, cmd_bench),
    "run": ("run a (sparse) ONNX model on .npy inputs", _run_parser, cmd_run),
    "demo": ("the whole pipeline on the bundled digits data", _demo_parser, cmd_demo),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that command's flags are built (the others list by name)."""
    parser = argparse.ArgumentParser(prog="sparsify", description="Prune, fine-tune and compile PyTorch models to exact slim or sparse ONNX.")
    parser.add_argument("--debug", action="store_true", help="on failure, also print the Python traceback")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if command in (None, name):
            add_arguments(p)
        p.set_defaults(func=handler)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (its first word that is not an option), if it is one."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure is one paragraph on stderr and a documented exit code.

    Exit codes: 0 success, 2 bad input or a failed step, 3 failed verification, 130 interrupted.
    ``--debug`` (before the command) also prints the traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_command_of(argv)).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SparsifyError as exc:
        _report(args, str(exc), exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError as exc:
        _report(args, f"ran out of memory ({one_paragraph(exc) or 'MemoryError'}); free memory or use a "
                      "smaller model, batch or input shape", exc)
        return SparsifyError.exit_code
    except Exception as exc:
        _report(args, f"unexpected {type(exc).__name__}: {one_paragraph(exc, 600)}. This is a failure sparsify "
                      "does not recognise: check the model and inputs the command names, re-run with "
                      "'sparsify --debug' for the traceback, and report it if the input should work", exc)
        return SparsifyError.exit_code


def _report(args: argparse.Namespace, message: str, exc: BaseException) -> None:
    if args.debug:
        traceback.print_exception(exc)
    print(f"sparsify {args.command}: error: {one_paragraph(message, 4000)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
