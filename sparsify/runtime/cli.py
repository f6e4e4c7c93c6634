"""``sparsify run MODEL --input x.npy [--input ...] --threads N [--batch1 auto] [--profile [--repeat N]] -o y.npy``:
run a model file on .npy inputs (``--profile``: and print where the time goes; ``--decide-here``
is resolved by the CLI before this runs, ``sparsify.export.decided_here``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sparsify.errors import DataError
from sparsify.fileio import atomic_path

if TYPE_CHECKING:
    from sparsify.runtime.session import Session


def load_inputs(paths: list[str], session: "Session") -> dict[str, np.ndarray]:
    """Read one .npy per model input (in input order) without unpickling; DataError naming the file."""
    specs = session.get_inputs()
    if len(paths) != len(specs):
        raise DataError(f"got {len(paths)} --input file(s) but the model has {len(specs)} input(s): "
                        f"{[s.name for s in specs]} (pass one .npy per input, in that order)")
    feeds: dict[str, np.ndarray] = {}
    for spec, p in zip(specs, paths):
        path = Path(p)
        if not path.is_file():
            raise DataError(f"input file {path} for input {spec.name!r} does not exist")
        try:
            feeds[spec.name] = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"input file {path} for input {spec.name!r} is not a readable .npy array: {exc}") from None
    return feeds


def npy_shapes(paths: list[str]) -> tuple[tuple[int, ...], ...]:
    """The shapes of the .npy files at ``paths`` (read from their headers); empty when one
    cannot be read (:func:`load_inputs` then says which)."""
    shapes = []
    for p in paths:
        try:
            shapes.append(tuple(np.load(p, mmap_mode="r", allow_pickle=False).shape))
        except (ValueError, OSError, EOFError):
            return ()
    return tuple(shapes)


def run_file(args: argparse.Namespace) -> int:
    """Load ``args.model``, run it on ``args.input`` with ``args.threads`` threads, save the first output."""
    from sparsify.runtime.session import Session

    profile = bool(getattr(args, "profile", False))
    repeat = int(getattr(args, "repeat", 10))
    if profile and repeat < 1:
        raise DataError(f"--repeat {repeat} should be a positive number of runs")
    session = Session(args.model, threads=args.threads, batch1=args.batch1, profile=profile)
    if session.conversion_elsewhere:
        print(f"sparsify run: note: {session.conversion}", file=sys.stderr)
    feeds = load_inputs(list(args.input), session)
    outputs = session.run(None, feeds)
    if profile:
        session.reset_profile()
        for _ in range(repeat):
            session.run(None, feeds)
        print("\n".join(session.profile().table()))
    out = Path(args.output)
    if out.suffix != ".npy":
        raise DataError(f"output path {out} should end in .npy")
    with atomic_path(out, DataError) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, outputs[0], allow_pickle=False)
    y = outputs[0]
    print(f"wrote {out} ({session.get_outputs()[0].name}: shape {list(y.shape)}, {y.dtype})")
    return 0
