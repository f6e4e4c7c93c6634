"""Save / load a slim model as a torch.export .pt2 archive without unpickling anything.

torch.export.save writes the graph as JSON and each weight as raw bytes described by
`model_weights_config.json` (`use_pickle: false`). Pickle appears only for sample inputs
(which we do not store) and for tensors/objects torch cannot write raw. `load_slim` reads
the archive's configs first and refuses any entry that would be unpickled.
"""

from __future__ import annotations

import json
import os
import zipfile

import torch
from torch import nn

from sparsify.errors import ModelFileError
from sparsify.fileio import atomic_path


def save_slim(result, path: str | os.PathLike) -> None:
    """Write `result.program` (a SlimResult) to `path` atomically, without sample inputs."""
    program = getattr(result, "program", None)
    if program is None:
        raise ModelFileError("save_slim needs a SlimResult with an exported program (slim_model(reexport=True))")
    program._example_inputs = None
    with atomic_path(path, ModelFileError) as tmp:
        torch.export.save(program, tmp)
        check_no_pickle(tmp)


def check_no_pickle(path: str | os.PathLike) -> None:
    """Raise ModelFileError unless loading `path` would unpickle nothing."""
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelFileError(f"{path}: not a .pt2 archive ({e})") from e
    with z:
        for name in z.namelist():
            base = name.split("/", 1)[-1]
            if base.startswith("data/sample_inputs/") and z.getinfo(name).file_size:
                raise ModelFileError(f"{path}: holds pickled sample inputs ({name}); refusing to load")
            if base.endswith("model_weights_config.json") or base.endswith("model_constants_config.json"):
                try:
                    cfg = json.loads(z.read(name))
                except ValueError as e:
                    raise ModelFileError(f"{path}: {name} is not valid JSON ({e})") from e
                for key, entry in (cfg.get("config") or {}).items():
                    if not isinstance(entry, dict) or entry.get("use_pickle", True):
                        raise ModelFileError(f"{path}: tensor '{key}' in {name} is pickled; refusing to load")


def plain_module(program: torch.export.ExportedProgram) -> nn.Module:
    """``program.module()`` as an ordinary module: ``.eval()``, ``.train(False)``, ``.to()``,
    ``state_dict()`` and a plain call work (torch.export's module refuses train/eval). The graph
    was captured in eval mode, so ``train()`` sets the flags and changes nothing else."""
    module = program.module()
    for name in ("train", "eval"):  # instance attributes that raise NotImplementedError
        module.__dict__.pop(name, None)
    return module.eval()


def load_slim(path: str | os.PathLike) -> nn.Module:
    """Load a model written by save_slim as an ordinary module; nothing in the archive is unpickled."""
    check_no_pickle(path)
    try:
        program = torch.export.load(path)
    except Exception as e:
        raise ModelFileError(f"{path}: cannot load the exported program: {type(e).__name__}: {e}") from e
    return plain_module(program)
