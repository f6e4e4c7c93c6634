"""Run directories: ``manifest.json`` + ``weights.safetensors`` + ``masks.safetensors``.

The manifest records the format version, the model reference, the input specs, the recipe
(every step that produced the run), per-tensor sparsity, metrics, library versions and the
SHA-256 of each file. Reading a run never unpickles: tensors come from safetensors, the module
is rebuilt from its reference, and every file is checked against its recorded hash.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from sparsify import __version__
from sparsify.data import InputSpec
from sparsify.errors import RunError, SparsifyError
from sparsify.fileio import atomic_dir, sha256_file
from sparsify.masks import Masks, apply_masks, get_masks, plain_state_dict, sparsity_report
from sparsify.modelref import build_model, load_weights

FORMAT = "sparsify.run"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
MASKS = "masks.safetensors"


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
    example_inputs: str | None = None  # an .npz of named inputs used to verify and benchmark

    @property
    def masks(self) -> Masks:
        return get_masks(self.model)


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
    masks = {k: v.to(torch.bool).contiguous() for k, v in run.masks.items()}
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
            **({"example_inputs": run.example_inputs} if run.example_inputs else {}),
            "recipe": run.recipe,
            "sparsity": sparsity_report(run.model),
            "metrics": run.metrics,
            "files": {name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
                      for name in (WEIGHTS, MASKS)},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    run.path = dest
    return dest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and validate a run's manifest and file hashes (nothing is deserialized beyond JSON)."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"run directory {path} does not exist")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise RunError(f"run directory {path} has no {MANIFEST}; expected a directory written by sparsify")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{mpath} is not valid JSON ({exc}); the run is corrupt") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RunError(f"{mpath} is not a sparsify run manifest (format should be {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RunError(f"{mpath} has format_version {manifest.get('format_version')!r}; this sparsify reads {FORMAT_VERSION}")
    for key in ("model", "inputs", "files"):
        if key not in manifest:
            raise RunError(f"{mpath} lacks the {key!r} entry; the run is corrupt")
    for name in (WEIGHTS, MASKS):
        fpath, entry = path / name, manifest["files"].get(name)
        if entry is None:
            raise RunError(f"{mpath} records no hash for {name}; the run is corrupt")
        if not fpath.is_file():
            raise RunError(f"run {path} is missing {name}")
        actual = sha256_file(fpath)
        if actual != entry.get("sha256"):
            raise RunError(f"{fpath} has SHA-256 {actual[:16]}…, but the manifest records "
                           f"{str(entry.get('sha256'))[:16]}…; the file was modified or corrupted")
    return manifest


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise RunError(f"{path} is not a readable safetensors file: {exc}") from exc


def load_run(path: str | Path) -> Run:
    """Rebuild the model of a run, load its weights and attach its masks."""
    path = Path(path)
    manifest = read_manifest(path)
    try:
        model = build_model(manifest["model"])
    except SparsifyError as exc:
        raise RunError(f"run {path}: {exc}") from exc
    load_weights(model, _load_tensors(path / WEIGHTS), str(path / WEIGHTS))
    masks = _load_tensors(path / MASKS)
    apply_masks(model, {k: v.to(torch.bool) for k, v in masks.items()})
    return Run(
        model=model,
        model_ref=manifest["model"],
        inputs=[InputSpec.from_dict(d) for d in manifest["inputs"]],
        data=manifest.get("data"),
        recipe=list(manifest.get("recipe") or []),
        metrics=dict(manifest.get("metrics") or {}),
        path=path,
        example_inputs=manifest.get("example_inputs"),
    )


def derive(parent: Run, model: nn.Module, step: dict[str, Any], metrics: dict[str, Any] | None = None) -> Run:
    """A new run made from ``parent`` by one more recipe step."""
    return Run(model=model, model_ref=parent.model_ref, inputs=list(parent.inputs), data=parent.data,
               recipe=[*parent.recipe, step], metrics={**parent.metrics, **(metrics or {})},
               example_inputs=parent.example_inputs)


def describe_inputs(inputs: Sequence[InputSpec]) -> str:
    return ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in inputs)
