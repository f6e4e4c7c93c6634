"""CLI adapter for ``sparsify bench``: flags map one-to-one onto :func:`sparsify.bench.bench`.

The main CLI does::

    sub = subparsers.add_parser("bench", help=...)
    sparsify.bench.cli.add_arguments(sub)
    ...
    return sparsify.bench.cli.run(args)
"""

from __future__ import annotations

import argparse
import sys

from sparsify.bench.backends import available_backends
from sparsify.bench.harness import bench
from sparsify.runtime.conversion_record import describe_record, host_differs
from sparsify.trust import CodeTrust, add_trust_option


def int_list(text: str) -> list[int]:
    """Parse ``"1,8,64"`` into ``[1, 8, 64]``; every item a positive integer."""
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} should be a comma-separated list of positive integers, e.g. 1,8,64") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} should be a comma-separated list of positive integers, e.g. 1,8,64")
    return list(dict.fromkeys(values))


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r} should be an integer >= {low}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} should be a positive number of seconds")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` arguments to ``parser``."""
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="ONNX files or run directories; the first is the speedup reference")
    parser.add_argument("--batch", type=int_list, default=[1], metavar="B[,B...]",
                        help="batch sizes, comma-separated (default: 1)")
    parser.add_argument("--threads", type=int_list, default=[1], metavar="T[,T...]",
                        help="thread counts, comma-separated (default: 1)")
    parser.add_argument("--backend", choices=available_backends(), default=None,
                        help="force a backend (default: sparsify for graphs with ai.sparsify ops, "
                             "ort for other ONNX files, torch for run directories)")
    parser.add_argument("--warmup", type=_int_at_least(0), default=10, metavar="N",
                        help="untimed runs per model before timing (default: 10)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--repeat", type=_int_at_least(1), default=None, metavar="N",
                        help="exactly N timed runs per model and point")
    budget.add_argument("--min-time", type=_positive_float, default=1.0, metavar="S",
                        help="otherwise time for about S seconds per model and point (default: 1.0)")
    parser.add_argument("--json", default=None, metavar="OUT.json", help="write the results as JSON")
    parser.add_argument("--markdown", default=None, metavar="OUT.md", help="write a Markdown table")
    parser.add_argument("--plot", default=None, metavar="OUT.png", help="write a PNG chart (needs matplotlib)")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                        help="probe peak memory per model in a fresh process (default: on)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    parser.add_argument("--input-shape", action="append", default=[], metavar="D0,D1,...", dest="input_shape",
                        help="one per model input, in order: sizes of its dynamic dims besides the batch (e.g. a "
                             "sequence length; the batch comes from --batch), over the sizes a file records")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar on stderr (default: on)")
    add_trust_option(parser)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args``, print the table, write the requested files; 0 on success."""
    if args.plot:
        from sparsify.bench.plot import require_matplotlib

        require_matplotlib()  # fail before minutes of benchmarking, not after
    result = bench(
        args.models, batches=args.batch, threads=args.threads, backend=args.backend,
        warmup=args.warmup, repeat=args.repeat, min_time=args.min_time,
        memory=args.memory, seed=args.seed, progress=args.progress, input_shapes=args.input_shape,
        trust=CodeTrust.from_options(args.trust_code),
    )
    print(result.table())
    threads = max(result.config["threads"])
    for model in result.models:
        if host_differs(model.conversion, threads):
            print(f"note: {model.label}: {describe_record(model.conversion, threads)}", file=sys.stderr)
        if model.memory and model.memory.get("error"):
            print(f"note: peak memory of {model.label} not measured: {model.memory['error']}", file=sys.stderr)
    written = []
    if args.json:
        written.append(result.to_json(args.json))
    if args.markdown:
        written.append(result.write_markdown(args.markdown))
    if args.plot:
        from sparsify.bench.plot import plot_result

        written.append(plot_result(result, args.plot))
    for path in written:
        print(f"wrote {path}")
    return 0
