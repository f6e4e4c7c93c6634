"""Split a sparse ONNX graph into steps: our kernels for ``ai.sparsify`` nodes, ORT or numpy for the rest.

The node list (topologically sorted, as ONNX requires) is cut at every sparse node; each
maximal run of standard nodes between them becomes one step, executed either by numpy (when
every node is a small float "glue" op, see ``glue.py``) or by its own ONNX Runtime
InferenceSession built once here. A graph without sparse nodes is one ORT step.
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparsify.errors import KernelInputError, ModelFileError
from sparsify.export.sparse_ops import DOMAIN
from sparsify.kernels import KernelValueError
from sparsify.onnxfile import inferred_graph
from sparsify.runtime import glue
from sparsify.runtime.loader import SparseLayer

# "numpy": glue-only segments run in numpy (ORT for the rest); "ort": every standard segment in ORT.
GLUE_POLICIES = ("numpy", "ort")


@dataclasses.dataclass
class Step:
    """One unit of execution: reads ``inputs`` from the value table, writes ``outputs``."""

    kind: str  # "sparse", "ort" or "numpy"
    inputs: list[str]
    outputs: list[str]
    run: Callable[[list[Any]], list[np.ndarray]]
    nodes: list[str]
    detail: Callable[[], str] | None = None  # e.g. a sparse layer's current batch-1 kernel

    def describe(self) -> str:
        text = f"{self.kind}: {', '.join(self.nodes)}"
        return f"{text} ({self.detail()})" if self.detail else text


def value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Types of every value ONNX shape inference (or the file itself) knows."""
    g = inferred_graph(model)
    if g is None:  # without inference: the file's own types; ORT infers the rest itself
        g = model.graph
    out = {vi.name: vi.type for vi in [*g.input, *g.output, *g.value_info] if vi.type.HasField("tensor_type")}
    for init in model.graph.initializer:
        out.setdefault(init.name, helper.make_tensor_type_proto(init.data_type, list(init.dims)))
    return out


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names read inside a node's subgraphs (If/Loop/Scan bodies), recursively."""
    names: set[str] = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            for n in g.node:
                names.update(v for v in n.input if v)
                names |= _subgraph_inputs(n)
    return names


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    return [v for v in node.input if v] + sorted(_subgraph_inputs(node))


def _is_float(t: onnx.TypeProto | None) -> bool:
    return t is not None and t.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)


def _sparse_step(layer: SparseLayer, const: np.ndarray | None = None) -> Step:
    """The kernel call of one sparse node; ``const`` is its input when that is an initializer."""
    kernel, label = layer.kernel, f"{layer.op_type} node {layer.node_name!r}"

    def run(xs: list[Any]) -> list[np.ndarray]:
        try:
            return [kernel(xs[0] if const is None else const)]
        except KernelValueError as exc:
            raise KernelInputError(f"{label}: {exc}") from None

    inputs = [layer.input] if const is None else []
    detail = getattr(kernel, "describe_batch1", None)
    return Step("sparse", inputs, [layer.output], run, [layer.node_name], detail)


def _numpy_step(nodes: list[onnx.NodeProto], inputs: list[str], outputs: list[str],
                consts: dict[str, np.ndarray]) -> Step:
    compiled = [(glue.compile_node(n, consts), list(n.input), list(n.output)) for n in nodes]

    def run(xs: list[Any]) -> list[np.ndarray]:
        env = consts.copy()
        env.update(zip(inputs, xs))
        for fn, ins, outs in compiled:
            results = fn([env[v] if v else None for v in ins])
            for o, r in zip(outs, results):
                env[o] = r
        return [env[o] for o in outputs]

    return Step("numpy", inputs, outputs, run, [n.name or n.op_type for n in nodes])


def _ort_step(model: onnx.ModelProto, nodes: list[onnx.NodeProto], inputs: list[str], outputs: list[str],
              types: dict[str, onnx.TypeProto], inits: dict[str, onnx.TensorProto], threads: int,
              where: str) -> Step:
    from sparsify.ortsession import ort_session

    def info(name: str) -> onnx.ValueInfoProto:
        t = types.get(name)
        if t is None:
            raise ModelFileError(f"{where}: the type of value {name!r} is unknown (shape inference could not "
                                 "reach it); cannot build the ONNX Runtime segment that uses it")
        vi = onnx.ValueInfoProto()
        vi.name = name
        vi.type.CopyFrom(t)
        return vi

    used = {v for n in nodes for v in _node_inputs(n)}
    graph = helper.make_graph(nodes, "segment", [info(v) for v in inputs], [info(v) for v in outputs],
                              initializer=[inits[v] for v in sorted(used) if v in inits])
    sub = helper.make_model(graph, opset_imports=[o for o in model.opset_import if o.domain != DOMAIN],
                            ir_version=model.ir_version)
    # Spinning pool threads would compete with the Numba kernels that run right after.
    segment = f"{where}: the segment {[n.name or n.op_type for n in nodes][:5]}"
    sess = ort_session(sub.SerializeToString(), threads, spinning=False, where=segment)

    def run(xs: list[Any]) -> list[np.ndarray]:
        return sess.run(outputs, dict(zip(inputs, xs)))

    return Step("ort", inputs, outputs, run, [n.name or n.op_type for n in nodes])


def grouped_order(nodes: Sequence[onnx.NodeProto], sparse: set[int]) -> list[int]:
    """A topological order of ``nodes`` (as indices) that changes kind (sparse or standard)
    as rarely as a greedy schedule can: it takes ready nodes of the current kind, earliest
    in the file first, and switches kind only when none is ready.

    A file's own order can interleave them: torch exports q-projection, reshape,
    transpose, k-projection, ... so that each projection ends a standard run, and each
    run costs one ONNX Runtime call; here the three projections become adjacent.
    """
    producer = {v: i for i, n in enumerate(nodes) for v in n.output if v}
    users: list[list[int]] = [[] for _ in nodes]
    waiting = [0] * len(nodes)
    for i, n in enumerate(nodes):
        deps = {producer[v] for v in _node_inputs(n) if v in producer and producer[v] != i}
        waiting[i] = len(deps)
        for d in deps:
            users[d].append(i)
    ready: dict[bool, list[int]] = {True: [], False: []}
    for i in range(len(nodes)):
        if not waiting[i]:
            heapq.heappush(ready[i in sparse], i)
    order: list[int] = []
    kind = bool(ready[True]) and (not ready[False] or ready[True][0] < ready[False][0])
    while ready[True] or ready[False]:
        if not ready[kind]:
            kind = not kind
        i = heapq.heappop(ready[kind])
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if not waiting[u]:
                heapq.heappush(ready[u in sparse], u)
    if len(order) != len(nodes):  # a cycle: keep the file's order, ORT will report it
        return list(range(len(nodes)))
    return order


def partition(model: onnx.ModelProto, layers: dict[int, SparseLayer], threads: int, glue_policy: str = "numpy",
              where: str = "model") -> list[Step]:
    """The execution steps of ``model``; ``layers`` maps node index -> prepared sparse layer."""
    if glue_policy not in GLUE_POLICIES:
        raise ValueError(f"glue policy {glue_policy!r} should be one of {GLUE_POLICIES}")
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    # Shape inference stops at our ops unless their outputs are typed: declare the element
    # type of every sparse output the file leaves untyped (the model is ours to edit).
    declared = {vi.name for vi in [*g.value_info, *g.output]}
    for layer in layers.values():
        if layer.output not in declared:
            data_type = TensorProto.DOUBLE if layer.csr.dtype == np.float64 else TensorProto.FLOAT
            g.value_info.append(helper.make_tensor_value_info(layer.output, data_type, None))
    types = value_types(model)
    # Cut the node list, in an order that keeps runs long, into sparse nodes and maximal
    # runs of standard nodes.
    groups: list[tuple[str, list[int]]] = []
    for i in grouped_order(list(g.node), set(layers)):
        if i in layers:
            groups.append(("sparse", [i]))
        elif groups and groups[-1][0] == "std":
            groups[-1][1].append(i)
        else:
            groups.append(("std", [i]))
    reads_after: list[set[str]] = [set() for _ in groups]
    later = {o.name for o in g.output}
    for k in range(len(groups) - 1, -1, -1):
        reads_after[k] = set(later)
        for i in groups[k][1]:
            later.update(_node_inputs(g.node[i]))
    steps: list[Step] = []
    for k, (kind, idx) in enumerate(groups):
        if kind == "sparse":
            layer = layers[idx[0]]
            const = numpy_helper.to_array(inits[layer.input]) if layer.input in inits else None
            steps.append(_sparse_step(layer, const))
            continue
        nodes = [g.node[i] for i in idx]
        produced = {v for n in nodes for v in n.output if v}
        inputs: list[str] = []
        for n in nodes:
            for v in _node_inputs(n):
                if v not in produced and v not in inits and v not in inputs:
                    inputs.append(v)
        outputs = [v for n in nodes for v in n.output if v and v in reads_after[k]]
        if not outputs:
            continue  # dead code
        numpy_ok = glue_policy == "numpy" and all(glue.supports(n) for n in nodes) and all(
            _is_float(types.get(v)) for n in nodes
            for j, v in enumerate(n.input) if v and j not in glue.INT_INPUTS.get(n.op_type, ()))
        if numpy_ok:
            consts = {v: numpy_helper.to_array(inits[v]) for n in nodes for v in n.input if v in inits}
            steps.append(_numpy_step(nodes, inputs, outputs, consts))
        else:
            steps.append(_ort_step(model, nodes, inputs, outputs, types, inits, threads, where))
    return steps


def describe(steps: Sequence[Step]) -> list[str]:
    """One line per step."""
    return [s.describe() for s in steps]
