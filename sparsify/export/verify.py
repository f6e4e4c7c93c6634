"""Numerical equivalence of a candidate (ONNX file or module) against a reference torch module."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sparsify.errors import VerificationError, in_step
from sparsify.tolerance import compare

from sparsify.export.options import DEFAULT_ATOL, DEFAULT_RTOL  # noqa: F401  (re-exported)

Runner = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


@dataclasses.dataclass
class OutputError:
    """Error of one output on one input set."""

    input_set: str
    output: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ok: bool


@dataclasses.dataclass
class VerifyReport:
    """Per-output errors of a candidate against the reference, with the tolerances used."""

    candidate: str
    atol: float
    rtol: float
    rows: list[OutputError]
    reference: str = "the masked torch model"

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def max_abs(self) -> float:
        return max((r.max_abs for r in self.rows), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((r.max_rel for r in self.rows), default=0.0)

    def table(self) -> str:
        head = f"verify {self.candidate} against {self.reference} (atol {self.atol:g}, rtol {self.rtol:g})"
        lines = [head, f"  {'inputs':<16} {'output':<12} {'shape':<16} {'max abs':>10} {'max rel':>10}  result"]
        for r in self.rows:
            lines.append(f"  {r.input_set:<16} {r.output:<12} {str(list(r.shape)):<16} {r.max_abs:>10.3e} "
                         f"{r.max_rel:>10.3e}  {'ok' if r.ok else 'MISMATCH'}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"candidate": self.candidate, "reference": self.reference, "atol": self.atol, "rtol": self.rtol, "ok": self.ok,
                "max_abs": self.max_abs, "max_rel": self.max_rel,
                "rows": [dataclasses.asdict(r) for r in self.rows]}

    def raise_if_failed(self) -> None:
        if not self.ok:
            bad = [r for r in self.rows if not r.ok]
            raise VerificationError(
                f"{self.candidate} does not match {self.reference} within atol {self.atol:g} / rtol {self.rtol:g}: "
                + "; ".join(f"{r.output} on {r.input_set}: max abs {r.max_abs:.3e}, max rel {r.max_rel:.3e}" for r in bad)
                + ".\n" + self.table())


def set_eval(module: nn.Module) -> nn.Module:
    """Put a module in eval mode, including modules from torch.export (which refuse ``.eval()``;
    their graph was captured in eval mode, so only the flags are set)."""
    try:
        module.eval()
    except NotImplementedError:
        for sub in module.modules():
            sub.training = False
    return module


def torch_runner(module: nn.Module) -> Runner:
    """Run a torch module on numpy inputs in eval mode without gradients."""
    set_eval(module)

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*[torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return [o.detach().numpy() for o in outs]

    return run


def ort_runner(path: str | Path, threads: int = 1) -> tuple[Runner, list[str]]:
    """Run an ONNX file in ONNX Runtime (CPU); returns the runner and the output names.

    Without ORT's weight prepacking: verification runs each input once, and the packed copies
    would nearly double the export's peak memory (benchmarks/README.md, "Model size")."""
    from sparsify.ortsession import ort_session

    sess = ort_session(path, threads, prepack=False)
    names = [i.name for i in sess.get_inputs()]
    outputs = [o.name for o in sess.get_outputs()]

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return sess.run(None, {n: np.ascontiguousarray(x) for n, x in zip(names, inputs)})

    return run, outputs


def expected_outputs(reference: Runner, input_sets: dict[str, Sequence[np.ndarray]],
                     reference_name: str = "the masked torch model") -> dict[str, list[np.ndarray]]:
    """The reference's outputs on each named input set, computed once (the reference can then go)."""
    out = {}
    for name, inputs in input_sets.items():
        with in_step("verification", f"the reference ({reference_name}) on inputs '{name}' ({_shapes(inputs)})",
                     REFERENCE_HINT):
            out[name] = list(reference(inputs))
    return out


REFERENCE_HINT = "check that the model runs on its recorded inputs (--input-shape, --example-inputs)"


def _shapes(inputs: Sequence[np.ndarray]) -> str:
    return ", ".join(f"{list(np.shape(x))}" for x in inputs)


def verify(reference: Runner | Mapping[str, Sequence[np.ndarray]], candidate: Runner,
           input_sets: dict[str, Sequence[np.ndarray]], candidate_name: str,
           output_names: Sequence[str] | None = None,
           atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
           reference_name: str = "the masked torch model") -> VerifyReport:
    """Compare every output of ``candidate`` with ``reference`` (named ``reference_name`` in the
    report) on each named input set.

    ``reference`` is a runner, or its outputs per input set (:func:`expected_outputs`).
    """
    rows: list[OutputError] = []
    for set_name, inputs in input_sets.items():
        shapes = _shapes(inputs)
        with in_step("verification", f"the reference ({reference_name}) on inputs '{set_name}' ({shapes})",
                     REFERENCE_HINT):
            expected = reference[set_name] if isinstance(reference, Mapping) else reference(inputs)
        with in_step("verification", f"{candidate_name} on inputs '{set_name}' ({shapes})",
                     "the exported model does not run on inputs the original model accepts; export with "
                     "--no-verify and run it with 'sparsify run' to inspect it, or report it"):
            actual = candidate(inputs)
        if len(expected) != len(actual):
            raise VerificationError(f"{candidate_name} gives {len(actual)} outputs; the reference gives {len(expected)}")
        for i, (e, a) in enumerate(zip(expected, actual)):
            name = output_names[i] if output_names and i < len(output_names) else f"output_{i}"
            max_abs, max_rel, ok = compare(np.asarray(e), np.asarray(a), atol, rtol)
            rows.append(OutputError(set_name, name, tuple(np.asarray(e).shape), max_abs, max_rel, ok))
    return VerifyReport(candidate_name, atol, rtol, rows, reference_name)
