"""Read-only views of an ONNX graph for the passes: who produces and reads each value, the
initializers' values, the shapes ONNX shape inference gives each value, and the torch
parameter behind an exporter-named initializer."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from sparsify.onnxfile import inferred_graph, initializer_array

# Initializers up to this size (biases, scalars) are kept once read; weights are read again,
# so a model with external data is converted holding one weight at a time.
CACHED_BYTES = 1 << 20


def taken_names(model: onnx.ModelProto) -> set[str]:
    """Every name ``model``'s graph uses: values (node inputs and outputs, graph inputs, outputs
    and value_info), nodes and initializers; new names go through :func:`unique_name`."""
    g = model.graph
    taken = {i.name for i in g.initializer} | {v for n in g.node for v in [*n.input, *n.output]}
    return taken | {n.name for n in g.node} | {v.name for v in [*g.input, *g.output, *g.value_info]}


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_1``, ``name_2``, ... if taken; the result is marked taken."""
    out, i = name, 1
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    taken.add(out)
    return out


class GraphIndex:
    """Index of a graph: nodes in order, consumers of each value, initializers, graph outputs."""

    def __init__(self, model: onnx.ModelProto, base_dir: str | Path | None = None) -> None:
        g = model.graph
        self.nodes = list(g.node)
        self.inits = {i.name: i for i in g.initializer}
        self.outputs = {o.name for o in g.output}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for name in n.input:
                if name:
                    self.consumers.setdefault(name, []).append(i)
        self.base_dir = base_dir
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str) -> np.ndarray:
        """The initializer's values (external data read from ``base_dir``); only those up to
        CACHED_BYTES are kept."""
        if name in self._arrays:
            return self._arrays[name]
        a = initializer_array(self.inits[name], self.base_dir)
        if a.nbytes <= CACHED_BYTES:
            self._arrays[name] = a
        return a

    def shape(self, name: str) -> tuple[int, ...]:
        """The initializer's dims."""
        return tuple(int(d) for d in self.inits[name].dims)

    def dtype(self, name: str) -> np.dtype:
        """The initializer's element type."""
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.inits[name].data_type))

    def sole_consumer(self, value: str) -> int | None:
        """Index of the only node reading ``value`` (None if several, none, or a graph output)."""
        users = self.consumers.get(value, [])
        if len(users) != 1 or value in self.outputs:
            return None
        return users[0]

    def scalar(self, name: str) -> float | None:
        """The value of a one-element float initializer, else None."""
        if name in self.inits:
            a = self.array(name)
            if a.size == 1 and np.issubdtype(a.dtype, np.floating):
                return float(a.reshape(()))
        return None


def _inferred_value_info(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Value info of the graph's inputs, intermediate values and outputs after shape
    inference (empty where inference fails: it is a convenience here, not a requirement)."""
    g = inferred_graph(model)
    return {} if g is None else {vi.name: vi for vi in [*g.input, *g.value_info, *g.output]}


class ValueShapes:
    """Value shapes from ONNX shape inference, run on first use (nothing known where it fails)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._model = model
        self._known: dict[str, onnx.ValueInfoProto] | None = None

    def of(self, model: onnx.ModelProto) -> bool:
        """Whether these shapes were inferred on ``model`` (the same object)."""
        return model is self._model

    def value_info(self, name: str) -> onnx.ValueInfoProto | None:
        """The inferred value info of ``name``, if any."""
        if self._known is None:
            self._known = _inferred_value_info(self._model)
        return self._known.get(name)

    def dims(self, name: str) -> list[int | None]:
        """The dims of value ``name`` (None where unknown); [] when its rank is unknown."""
        vi = self.value_info(name)
        dims = vi.type.tensor_type.shape.dim if vi is not None else []
        return [dm.dim_value if dm.HasField("dim_value") else None for dm in dims]

    def positions(self, name: str) -> int | None:
        """The spatial size (product of the dims after the first two) of an NC... value."""
        spatial = self.dims(name)[2:]
        return math.prod(spatial) if spatial and None not in spatial else None

    def rows_per_sample(self, name: str) -> int:
        """Rows a linear layer sees per sample in its input ``name`` (N, ..., in): the
        product of the dims between the first and the last (tokens), 1 when unknown."""
        inner = self.dims(name)[1:-1]
        return math.prod(inner) if inner and None not in inner else 1


def source_parameter(node: onnx.NodeProto, weight: str) -> str | None:
    """``<module path>.weight`` from the torch exporter's name-scope metadata, for initializers
    it named ``val_*``; other names are returned as they are."""
    if not weight.startswith("val_"):
        return weight
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            path = ".".join(str(p) for p in scopes[1:-1] if p)
            return f"{path}.weight" if path else None
    return None
