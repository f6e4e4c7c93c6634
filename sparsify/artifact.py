"""Run directories: ``manifest.json`` + ``weights.safetensors`` + ``masks.safetensors``.

The manifest records the format version, the model reference, the input specs, the recipe
(every step that produced the run), per-tensor sparsity, metrics, library versions and the
SHA-256 of each file. Reading a run never unpickles and never runs code on its own: the
manifest is checked against its schema (``sparsify.manifest``), every file against its
recorded size and hash, masks must hold only 0 and 1, and a ``package.module:attr`` model or
data reference is imported only when the caller's :class:`~sparsify.modelref.CodeTrust` allows it.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from sparsify import __version__, safetensors_io
from sparsify.data import is_code_ref, load_data, loader, random_inputs, read_example_inputs, split_batch
from sparsify.inputspec import InputSpec
from sparsify.errors import DataError, RunError, SparsifyError
from sparsify.fileio import atomic_dir, sha256_file
from sparsify.manifest import FORMAT, FORMAT_VERSION, MANIFEST, MASKS, WEIGHTS, parse_manifest
from sparsify.masks import Masks, apply_masks, fold_masks, get_masks, iter_masks, plain_state_dict, sparsity_report
from sparsify.modelref import build_model, load_weights_file
from sparsify.trust import TRUST_ALL, CodeTrust, require_consent


@dataclasses.dataclass
class Run:
    """A model with its masks attached, and the manifest describing how it was made."""

    model: nn.Module
    model_ref: dict[str, Any]
    inputs: list[InputSpec]
    data: str | None = None
    recipe: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    path: Path | None = None
    recipe_file: dict[str, Any] | None = None  # the YAML recipe `sparsify apply` made this run from
    example_inputs: str | None = None  # an .npz of named inputs used to verify and benchmark
    # Which code references named by the run's own files may be imported (its data, a teacher run).
    trust: CodeTrust = TRUST_ALL

    @property
    def masks(self) -> Masks:
        return get_masks(self.model)

    def reference_module(self) -> nn.Module:
        """A copy of the masked model in eval mode, masks folded into plain tensors."""
        return fold_masks(copy.deepcopy(self.model)).eval()

    def verification_inputs(self, seed: int = 0) -> dict[str, list[np.ndarray]]:
        """Seeded valid random inputs at batch 1 and 3 (and, for inputs with a dynamic sequence
        axis, at a second sequence length), plus the run's example inputs and a batch of its data."""
        sets = {f"random b{b}": [t.numpy() for t in random_inputs(self.inputs, batch=b, seed=seed + b)] for b in (1, 3)}
        seqs = [s.shape[a] for s in self.inputs for a in s.dynamic if a > 0]
        if seqs:
            other = max(2, (3 * seqs[0]) // 4) if seqs[0] > 2 else seqs[0] + 1
            sets[f"random b2 seq{other}"] = [t.numpy() for t in random_inputs(self.inputs, batch=2, seed=seed + 7,
                                                                              seq=other)]
        if self.example_inputs:
            sets["example inputs"] = read_example_inputs(self.example_inputs, self.inputs)
        data = self.data_ref()
        if data:
            x, _ = split_batch(next(iter(loader(load_data(data, [s.name for s in self.inputs]).test, 16))))
            sets["data b16"] = [t.numpy() for t in x]
        return sets

    def data_ref(self) -> str | None:
        """The run's data reference, once a code reference (``module:attr``) is allowed by ``trust``."""
        if self.data and is_code_ref(self.data):
            source = self.path / MANIFEST if self.path is not None else "the run"
            require_consent(self.data, "data", source, self.trust, DataError)
        return self.data

    def use_data(self, ref: str) -> None:
        """Use the data reference ``ref`` given by the user (and so trusted) from now on."""
        self.data = ref
        self.trust = dataclasses.replace(self.trust, refs=self.trust.refs | {ref})


def is_run_dir(path: str | Path) -> bool:
    """True when ``path`` is a directory holding a manifest."""
    return (Path(path) / MANIFEST).is_file()


def versions() -> dict[str, str]:
    """Library versions recorded in manifests and reports."""
    import numpy

    out = {"sparsify": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
           "python": platform.python_version()}
    for name in ("onnx", "onnxruntime", "numba"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out


def save_run(run: Run, dest: str | Path) -> Path:
    """Write the run atomically to ``dest`` (a new directory, or one of our runs to replace)."""
    from safetensors.torch import save_file

    dest = Path(dest)
    masks = {name: p.mask.to(torch.bool).contiguous() for name, _, _, p in iter_masks(run.model)}  # no copies
    state = plain_state_dict(run.model)
    with atomic_dir(dest, RunError, MANIFEST) as tmp:
        try:
            save_file(state, str(tmp / WEIGHTS))
            save_file(masks, str(tmp / MASKS))
        except OSError as exc:
            raise RunError(f"cannot write run {dest}: {exc}") from exc
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
            "model": run.model_ref,
            "inputs": [s.to_dict() for s in run.inputs],
            "data": run.data,
            "recipe": run.recipe,
            "sparsity": sparsity_report(run.model),
            "metrics": run.metrics,
            **({"recipe_file": run.recipe_file} if run.recipe_file is not None else {}),
            **({"example_inputs": run.example_inputs} if run.example_inputs else {}),
            "files": {name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
                      for name in (WEIGHTS, MASKS)},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    run.path = dest
    return dest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read a run's manifest, check it against the schema and every file against its size and hash.

    Nothing beyond JSON is deserialized and nothing the manifest names is imported.
    """
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"run directory {path} does not exist")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise RunError(f"run directory {path} has no {MANIFEST}; expected a directory written by sparsify")
    manifest = parse_manifest(mpath)
    for name in (WEIGHTS, MASKS):
        fpath, entry = path / name, manifest["files"][name]
        if not fpath.is_file():
            raise RunError(f"run {path} is missing {name}")
        size = fpath.stat().st_size
        if size != entry["bytes"]:
            raise RunError(f"{fpath} has {size:,} bytes, but the manifest records {entry['bytes']:,}; "
                           "the file was modified or truncated")
        actual = sha256_file(fpath)
        if actual != entry["sha256"]:
            raise RunError(f"{fpath} has SHA-256 {actual[:16]}…, but the manifest records "
                           f"{entry['sha256'][:16]}…; the file was modified or corrupted")
    return manifest


def read_tensors(path: Path, masks: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a run's safetensors file; with ``masks``, as bool tensors that were exactly 0 or 1."""
    tensors = safetensors_io.load(path, RunError)
    if not masks:
        return tensors
    out = {}
    for name, m in tensors.items():
        if m.dtype == torch.bool:  # one byte each, read as stored: any byte but 0 and 1 is corrupt
            if m.numel() and int(m.view(torch.uint8).max()) > 1:
                raise RunError(f"{path}: mask {name!r} holds the byte {int(m.view(torch.uint8).max())}; "
                               "a mask holds only 0 and 1")
            out[name] = m
            continue
        binary = (m == 0) | (m == 1)
        if not bool(binary.all()):
            bad = m[~binary].flatten()[0].item()
            raise RunError(f"{path}: mask {name!r} holds the value {bad!r}; a mask holds only 0 and 1")
        out[name] = m.to(torch.bool)
    return out


def load_run(path: str | Path, trust: CodeTrust = CodeTrust()) -> Run:
    """Rebuild the model of a run, load its weights and attach its masks.

    A ``package.module:attr`` model reference in the manifest is imported only when ``trust``
    allows it (the default trusts none); the manifest is validated before anything else.
    """
    path = Path(path)
    manifest = read_manifest(path)
    try:
        model = build_model(manifest["model"], trust, source=path / MANIFEST)
    except SparsifyError as exc:
        raise RunError(f"run {path}: {exc}") from exc
    load_weights_file(model, path / WEIGHTS, RunError)
    apply_masks(model, read_tensors(path / MASKS, masks=True))
    return Run(
        model=model,
        model_ref=manifest["model"],
        inputs=[InputSpec.from_dict(d) for d in manifest["inputs"]],
        data=manifest.get("data"),
        recipe=list(manifest.get("recipe") or []),
        metrics=dict(manifest.get("metrics") or {}),
        path=path,
        recipe_file=manifest.get("recipe_file"),
        example_inputs=manifest.get("example_inputs"),
        trust=trust,
    )


def derive(parent: Run, model: nn.Module, step: dict[str, Any], metrics: dict[str, Any] | None = None) -> Run:
    """A new run made from ``parent`` by one more recipe step."""
    return Run(model=model, model_ref=parent.model_ref, inputs=list(parent.inputs), data=parent.data,
               recipe=[*parent.recipe, step], metrics={**parent.metrics, **(metrics or {})}, trust=parent.trust,
               example_inputs=parent.example_inputs)


def describe_inputs(inputs: Sequence[InputSpec]) -> str:
    return ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in inputs)
