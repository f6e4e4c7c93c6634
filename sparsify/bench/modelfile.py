"""What a model path points at: an ONNX file (dense or using our sparse domain) or a run directory.

Sniffing reads the ONNX protobuf without external data (:func:`sparsify.onnxfile.load_onnx`),
so it never loads large weights stored beside the file, and turns a file that is not ONNX
into a :class:`ModelFileError` that names the file, instead of a protobuf traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sparsify.errors import ModelFileError
from sparsify.onnxfile import check_external_data, load_onnx

if TYPE_CHECKING:
    import onnx

# The ONNX domain of sparsify's own ops; a graph using it needs the sparse runtime.
SPARSIFY_DOMAIN = "ai.sparsify"
# A run directory (prune/finetune output) is recognized by its manifest.
RUN_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ModelFile:
    """A checked model path: ``kind`` is ``"onnx"`` or ``"run"``; ``domains`` are the op domains used."""

    path: Path
    kind: str
    domains: frozenset[str] = frozenset()
    external_files: tuple[Path, ...] = ()
    conversion: dict | None = None  # where a sparse export's layers were decided (runtime.conversion_record)

    @property
    def uses_sparsify_ops(self) -> bool:
        """True when some node (in any subgraph or local function) is in the ``ai.sparsify`` domain."""
        return SPARSIFY_DOMAIN in self.domains


def _graph_domains(graph: onnx.GraphProto, out: set[str]) -> None:
    import onnx

    for node in graph.node:
        out.add(node.domain or "ai.onnx")
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _graph_domains(attr.g, out)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _graph_domains(g, out)


def op_domains(model: onnx.ModelProto) -> frozenset[str]:
    """Every op domain used by nodes of the main graph, its subgraphs and local functions."""
    found: set[str] = set()
    _graph_domains(model.graph, found)
    for fn in model.functions:
        for node in fn.node:
            found.add(node.domain or "ai.onnx")
    return frozenset(found)


def check_model_path(path: str | os.PathLike) -> ModelFile:
    """Classify ``path`` as an ONNX file or a run directory; raise ModelFileError otherwise."""
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"{p}: no such file; expected an ONNX model file or a run directory")
    if p.is_dir():
        if not (p / RUN_MANIFEST).is_file():
            raise ModelFileError(
                f"{p}: is a directory without {RUN_MANIFEST}; expected an ONNX model file "
                "or a run directory written by `sparsify prune`/`finetune`"
            )
        return ModelFile(p, "run")
    model = load_onnx(p)
    check_external_data(model, p)  # the backends load it themselves: check its entries first
    from sparsify.runtime.conversion_record import read_record

    return ModelFile(p, "onnx", op_domains(model), external_data_files(model, p.parent), read_record(model))


def external_data_files(model: onnx.ModelProto, base: Path) -> tuple[Path, ...]:
    """The distinct external-data files the model's initializers point at (relative to ``base``)."""
    import onnx

    found: dict[Path, None] = {}
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            for entry in init.external_data:
                if entry.key == "location":
                    found[base / entry.value] = None
    return tuple(found)


def size_on_disk(model: ModelFile) -> int:
    """Bytes on disk: for a directory the sum over all files below it; for an ONNX file
    its size plus the external-data files it references (those that exist)."""
    p = model.path
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size + sum(f.stat().st_size for f in model.external_files if f.is_file())
