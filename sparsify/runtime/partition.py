"""Split a sparse ONNX graph into steps: our kernels for ``ai.sparsify`` nodes, ORT or numpy for the rest.

The node list (topologically sorted, as ONNX requires) is cut at every sparse node; each
maximal run of standard nodes between them becomes one step, executed either by numpy (when
every node is a small float "glue" op, see ``glue.py``) or by its own ONNX Runtime
InferenceSession built once here. A graph without sparse nodes is one ORT step.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from sparsify.errors import KernelInputError, ModelFileError
from sparsify.sparse_ops import CONV_OP, DOMAIN, check_input_shape
from sparsify.kernels import KernelValueError
from sparsify.onnxfile import inferred_graph, tensor_array
from sparsify.runtime import glue
from sparsify.runtime.loader import SparseLayer, is_sparse_node

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
    op_types: list[str] = dataclasses.field(default_factory=list)
    session: Any = None  # an ORT step's InferenceSession (for its per-node profile)

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


def _dims(t: onnx.TypeProto | None) -> list[int | None] | None:
    """The dims of a tensor type (None per unknown dim), or None when its rank is unknown."""
    if t is None or not t.tensor_type.HasField("shape"):
        return None
    return [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in t.tensor_type.shape.dim]


def check_layer_inputs(layers: dict[int, SparseLayer], types: dict[str, onnx.TypeProto], where: str) -> None:
    """Check each sparse node's input against its attributes where the file or shape inference
    knows that input's type (ModelFileError naming the node): element type, rank, channels, and
    for convs the output size and the padded buffer at batch 1."""
    for layer in layers.values():
        label = f"{where}: {layer.op_type} node {layer.node_name!r}"
        t = types.get(layer.input)
        if t is None:
            continue
        elem = t.tensor_type.elem_type
        if elem and elem != helper.np_dtype_to_tensor_dtype(layer.csr.dtype):
            raise ModelFileError(f"{label}: its input {layer.input!r} has ONNX element type "
                                 f"{TensorProto.DataType.Name(elem) if elem in TensorProto.DataType.values() else elem}"
                                 f" but its weights are {layer.csr.dtype}")
        dims = _dims(t)
        if dims is not None:
            check_input_shape(layer.attrs, dims, layer.csr.dtype.itemsize, label, ModelFileError)


def _input_guard(layer: SparseLayer, label: str) -> Callable[[Any], None]:
    """A check of a conv's input against its attributes, once per input shape (its buffers
    grow with its pads and its input): KernelInputError naming ``label``."""
    attrs, itemsize = layer.attrs, layer.csr.dtype.itemsize
    checked_shape: list[tuple[int, ...] | None] = [None]

    def guard(x: Any) -> None:
        shape = getattr(x, "shape", None)
        if shape is not None and shape != checked_shape[0]:
            check_input_shape(attrs, shape, itemsize, label, KernelInputError)
            checked_shape[0] = shape
    return guard


def _sparse_step(layer: SparseLayer, const: np.ndarray | None = None, where: str = "model") -> Step:
    """The kernel call of one sparse node; ``const`` is its input when that is an initializer."""
    kernel, label = layer.kernel, f"{where}: {layer.op_type} node {layer.node_name!r}"
    check = _input_guard(layer, label) if layer.op_type == CONV_OP else None

    def run(xs: list[Any]) -> list[np.ndarray]:
        x = xs[0] if const is None else const
        try:
            if check is not None:
                check(x)
            return [kernel(x)]
        except KernelValueError as exc:
            raise KernelInputError(f"{label}: {exc}") from None

    inputs = [layer.input] if const is None else []
    detail = getattr(kernel, "describe_batch1", None) or getattr(kernel, "describe_layout", None)
    return Step("sparse", inputs, [layer.output], run, [layer.node_name], detail, [layer.op_type])


@dataclasses.dataclass
class ResidualFusion:
    """A sparse conv whose output only a following Add reads (and, when a Relu follows, the sum
    only that Relu): run as one kernel pass with the Add's other input as residual."""

    add: onnx.NodeProto
    relu: onnx.NodeProto | None
    residual: str  # the Add's other input

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return [self.add] + ([self.relu] if self.relu is not None else [])

    @property
    def output(self) -> str:
        return (self.relu or self.add).output[0]


def plan_residual_fusion(layer: SparseLayer, following: Sequence[onnx.NodeProto], read_later: set[str],
                         inits: Mapping[str, Any], types: dict[str, onnx.TypeProto]) -> ResidualFusion | None:
    """The fusion of sparse ``layer`` with the first nodes of the run of standard nodes that
    ``following`` it, when those are an Add of its output (and a Relu of the sum); None
    otherwise. ``read_later`` holds the values read after that run (and the graph outputs).
    The conv must have no activation of its own, its output must have no other reader, and
    the residual must be a computed value of the conv's float type."""
    kernel = layer.kernel
    if (layer.op_type != CONV_OP or getattr(kernel, "activation", "") is not None or not following
            or not hasattr(kernel, "with_residual")):
        return None
    add = following[0]
    if (add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2
            or layer.output not in add.input or add.input[0] == add.input[1]):
        return None
    other = add.input[1] if add.input[0] == layer.output else add.input[0]
    rest = following[1:]
    if (layer.output in read_later or any(layer.output in _node_inputs(n) for n in rest)
            or other in inits or not other):
        return None
    want, got = types.get(layer.output), types.get(other)
    if want is None or got is None or want.tensor_type.elem_type != got.tensor_type.elem_type:
        return None
    relu = rest[0] if rest and rest[0].op_type == "Relu" and rest[0].domain in ("", "ai.onnx") else None
    if relu is not None and (relu.input[0] != add.output[0] or add.output[0] in read_later
                             or any(add.output[0] in _node_inputs(n) for n in rest[1:])):
        relu = None
    return ResidualFusion(add, relu, other)


def _residual_step(layer: SparseLayer, fusion: ResidualFusion, where: str) -> Step:
    """The kernel call of a sparse conv with a residual Add (+ Relu) in its pass; inputs
    the conv's and the residual. A residual the kernel cannot take (another shape or dtype:
    a broadcast) runs the Add (+ Relu) as the glue would, after the conv."""
    kernel, label = layer.kernel, f"{where}: {layer.op_type} node {layer.node_name!r}"
    activation = "relu" if fusion.relu is not None else None
    apart = (glue.compile_with_relu(fusion.add, {}) if fusion.relu is not None
             else glue.compile_node(fusion.add, {}))
    check = _input_guard(layer, label)

    def run(xs: list[Any]) -> list[np.ndarray]:
        x, res = xs
        try:
            check(x)
            if (type(res) is np.ndarray and type(x) is np.ndarray and res.dtype == kernel.dtype and x.ndim == 4
                    and res.shape == (x.shape[0], kernel.out_channels, *kernel.output_size(*x.shape[2:]))):
                return [kernel.with_residual(x, res, activation)]
            y = kernel(x)
        except KernelValueError as exc:
            raise KernelInputError(f"{label}: {exc}") from None
        try:
            return apart([y, res])
        except Exception as exc:  # numpy's broadcast error on shapes the file got wrong
            raise KernelInputError(f"{where}: Add node {fusion.add.name or fusion.add.output[0]!r} cannot add "
                                   f"inputs of shapes {_shapes([y, res])}: {type(exc).__name__}: {exc}") from None

    nodes = [layer.node_name] + [n.name or n.op_type for n in fusion.nodes]
    detail = getattr(kernel, "describe_layout", None)
    return Step("sparse", [layer.input, fusion.residual], [fusion.output], run, nodes, detail,
                [layer.op_type] + [n.op_type for n in fusion.nodes])


@dataclasses.dataclass
class HeadSplit:
    """A sparse Linear whose output only a Reshape to (N, T, heads, D) reads, and that Reshape's
    output only a Transpose (0, 2, 1, 3): attention's split into heads, run as the layer's
    head-major store (``SparseLinear.head_major``)."""

    reshape: onnx.NodeProto
    transpose: onnx.NodeProto
    shape: tuple[int, ...]  # the Reshape's target, as the file gives it (no 0 where it sets allowzero)

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return [self.reshape, self.transpose]

    @property
    def heads(self) -> int:
        return self.shape[2]

    def target(self, dims: tuple[int, ...]) -> tuple[int, ...] | None:
        """The Reshape's output shape for an input of shape ``dims`` (the layer's output), as
        ONNX resolves 0 (copy) and -1 (infer); None when it cannot."""
        out = [dims[i] if d == 0 and i < len(dims) else d for i, d in enumerate(self.shape)]
        if out.count(-1) == 1:
            known = math.prod(d for d in out if d != -1)
            total = math.prod(dims)
            if known <= 0 or total % known:
                return None
            out[out.index(-1)] = total // known
        return tuple(out) if -1 not in out and math.prod(out) == math.prod(dims) else None


def plan_head_split(layer: SparseLayer, nodes: Sequence[onnx.NodeProto], readers: Mapping[str, list[int]],
                    inits: Mapping[str, Any]) -> tuple[HeadSplit, list[int]] | None:
    """The fusion of sparse Linear ``layer`` with the Reshape and Transpose that split its output
    into heads head-major (shape [N or 0 or -1, T or 0 or -1, heads, D] with heads * D its
    outputs, perm (0, 2, 1, 3)), wherever in ``nodes`` they run, and their indices; None
    otherwise. ``readers`` maps each value to the indices of the nodes that read it (a graph
    output also has the reader -1): the layer's output and the Reshape's must each have one."""
    kernel = layer.kernel
    if layer.op_type == CONV_OP or not hasattr(kernel, "head_major"):
        return None
    first = readers.get(layer.output, [])
    if len(first) != 1 or first[0] < 0:
        return None
    r = first[0]
    reshape = nodes[r]
    if (reshape.op_type != "Reshape" or reshape.domain not in ("", "ai.onnx") or len(reshape.input) != 2
            or reshape.input[0] != layer.output or reshape.input[1] not in inits):
        return None
    after = readers.get(reshape.output[0], [])
    if len(after) != 1 or after[0] < 0:
        return None
    transpose = nodes[after[0]]
    if (transpose.op_type != "Transpose" or transpose.domain not in ("", "ai.onnx")
            or list(transpose.input) != [reshape.output[0]]
            or [list(a.ints) for a in transpose.attribute if a.name == "perm"] != [[0, 2, 1, 3]]):
        return None
    try:
        shape = tuple(int(d) for d in tensor_array(inits[reshape.input[1]], "model").reshape(-1))
    except Exception:  # noqa: BLE001 - a shape the Reshape itself would reject: left to it
        return None
    allowzero = any(a.name == "allowzero" and a.i for a in reshape.attribute)
    if (len(shape) != 4 or shape[2] < 1 or shape[3] < 1 or shape[2] * shape[3] != kernel.out_features
            or any(d < -1 for d in shape[:2]) or (allowzero and 0 in shape)):
        return None
    return HeadSplit(reshape, transpose, shape), [r, after[0]]


def _head_split_step(layer: SparseLayer, split: HeadSplit, where: str) -> Step:
    """The kernel call of a sparse Linear storing its output split into heads head-major; an
    input the Reshape would not turn into (N, T, heads, D) runs the three ops apart."""
    kernel, label = layer.kernel, f"{where}: {layer.op_type} node {layer.node_name!r}"
    heads = split.heads

    def run(xs: list[Any]) -> list[np.ndarray]:
        x = xs[0]
        try:
            if type(x) is np.ndarray and x.ndim == 3 and split.target((*x.shape[:2], kernel.out_features)) == (
                    *x.shape[:2], heads, kernel.out_features // heads):
                return [kernel.head_major(x, heads)]
            y = kernel(x)
        except KernelValueError as exc:
            raise KernelInputError(f"{label}: {exc}") from None
        target = split.target(y.shape)
        if target is None:
            raise KernelInputError(f"{where}: Reshape node {split.reshape.name or split.reshape.output[0]!r} "
                                   f"cannot reshape an input of shape {list(y.shape)} to {list(split.shape)}")
        return [np.ascontiguousarray(y.reshape(target).transpose(0, 2, 1, 3))]

    nodes = [layer.node_name] + [n.name or n.op_type for n in split.nodes]
    detail = getattr(kernel, "describe_batch1", None)
    return Step("sparse", [layer.input], [split.transpose.output[0]], run, nodes, detail,
                [layer.op_type] + [n.op_type for n in split.nodes])


def _shapes(values: Sequence[Any]) -> list[Any]:
    return [list(v.shape) if hasattr(v, "shape") else type(v).__name__ for v in values]


def _numpy_step(nodes: list[onnx.NodeProto], inputs: list[str], outputs: list[str],
                consts: dict[str, np.ndarray], where: str) -> Step:
    compiled = []
    i = 0
    while i < len(nodes):
        n = nodes[i]
        try:
            if (i + 1 < len(nodes) and nodes[i + 1].op_type == "Relu" and glue.supports(nodes[i + 1])
                    and n.op_type in glue.IN_PLACE_RELU and nodes[i + 1].input[0] == n.output[0]
                    and n.output[0] not in outputs
                    and not any(n.output[0] in m.input for m in nodes[i + 2:])):
                # Relu of a sum nobody else reads: applied in place on the sum's buffer.
                relu = nodes[i + 1]
                compiled.append((glue.compile_with_relu(n, consts), list(n.input), [relu.output[0]], relu))
                i += 2
                continue
            chain = glue.depthwise_chain(nodes, i, outputs)
            if chain is not None:
                # A depthwise Conv with the Clip before it and the Clip or Relu after it: one pass.
                before, conv, after = chain
                n = conv  # (named in a compile error)
                compiled.append((glue.compile_depthwise(conv, consts, before, after), [(before or conv).input[0]],
                                 [(after or conv).output[0]], conv))
                i += 1 + (before is not None) + (after is not None)
                continue
            if i + 1 < len(nodes) and glue.fusable_add_layer_norm(n, nodes[i + 1]):
                # A residual Add right before the LayerNormalization of its sum: one pass.
                ln = nodes[i + 1]
                compiled.append((glue.compile_add_layer_norm(n, ln, consts), [*n.input[:2], *ln.input[1:]],
                                 [n.output[0], ln.output[0]], ln))
                i += 2
                continue
            compiled.append((glue.compile_node(n, consts), list(n.input), list(n.output), n))
        except Exception as exc:  # an attribute or constant input of the wrong type or value
            raise ModelFileError(f"{where}: {n.op_type} node {n.name or n.output[0]!r}: "
                                 f"{type(exc).__name__}: {exc}") from None
        i += 1

    def run(xs: list[Any]) -> list[np.ndarray]:
        env = consts.copy()
        env.update(zip(inputs, xs))
        for fn, ins, outs, node in compiled:
            args = [env[v] if v else None for v in ins]
            try:
                results = fn(args)
            except Exception as exc:  # numpy's ValueError/IndexError/MemoryError... on shapes the file got wrong
                raise KernelInputError(f"{where}: {node.op_type} node {node.name or node.output[0]!r} cannot run on "
                                       f"inputs of shapes {_shapes(args)}: {type(exc).__name__}: {exc}") from None
            for o, r in zip(outs, results):
                env[o] = r
        return [env[o] for o in outputs]

    return Step("numpy", inputs, outputs, run, [n.name or n.op_type for n in nodes], None, [n.op_type for n in nodes])


def _ort_runner(sess: Any, inputs: list[str], outputs: list[str], label: str) -> Callable[[list[Any]], list[np.ndarray]]:
    """A step's run function calling ``sess``; an ORT failure is a KernelInputError naming ``label``."""
    def run(xs: list[Any]) -> list[np.ndarray]:
        try:
            return sess.run(outputs, dict(zip(inputs, xs)))
        except Exception as exc:  # ORT's InvalidArgument / Fail / RuntimeException, naming the node
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise KernelInputError(f"{label} failed in ONNX Runtime on inputs of shapes "
                                   f"{dict(zip(inputs, _shapes(xs)))}: {first}") from None
    return run


def _ort_step(model: onnx.ModelProto, nodes: list[onnx.NodeProto], inputs: list[str], outputs: list[str],
              types: dict[str, onnx.TypeProto], inits: dict[str, onnx.TensorProto], threads: int,
              where: str, spinning: bool = False, profile_prefix: str | None = None) -> Step:
    from sparsify.ortsession import ort_session

    def info(name: str) -> onnx.ValueInfoProto:
        t = types.get(name)
        if t is None:
            writer = next((n for n in model.graph.node if name in n.output), None)
            by = f", written by {writer.op_type} node {writer.name or name!r}," if writer is not None else ""
            raise ModelFileError(f"{where}: the type of value {name!r}{by} is unknown: ONNX shape inference could "
                                 "not infer it (are that node's attributes and constant inputs valid?); cannot "
                                 "build the ONNX Runtime segment that uses it")
        vi = onnx.ValueInfoProto()
        vi.name = name
        vi.type.CopyFrom(t)
        return vi

    used = {v for n in nodes for v in _node_inputs(n)}
    graph = helper.make_graph(nodes, "segment", [info(v) for v in inputs], [info(v) for v in outputs],
                              initializer=[inits[v] for v in sorted(used) if v in inits])
    sub = helper.make_model(graph, opset_imports=[o for o in model.opset_import if o.domain != DOMAIN],
                            ir_version=model.ir_version)
    # Spinning pool threads would compete with the Numba kernels that run right after (a
    # graph that is one segment spins as plain ONNX Runtime does).
    segment = f"{where}: the segment {[n.name or n.op_type for n in nodes][:5]}"
    sess = ort_session(sub.SerializeToString(), threads, spinning=spinning, where=segment,
                       profile_prefix=profile_prefix)
    return Step("ort", inputs, outputs, _ort_runner(sess, inputs, outputs, segment), [n.name or n.op_type for n in nodes],
                None, [n.op_type for n in nodes], sess)


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


def _groups(nodes: Sequence[onnx.NodeProto], sparse: set[int]) -> list[tuple[str, list[int]]]:
    """The node list cut, in an order that keeps runs long (``grouped_order``), into single
    sparse nodes ("sparse") and maximal runs of standard nodes ("std")."""
    groups: list[tuple[str, list[int]]] = []
    for i in grouped_order(nodes, sparse):
        if i in sparse:
            groups.append(("sparse", [i]))
        elif groups and groups[-1][0] == "std":
            groups[-1][1].append(i)
        else:
            groups.append(("std", [i]))
    return groups


def standard_runs(nodes: Sequence[onnx.NodeProto], sparse: set[int]) -> list[list[int]]:
    """The runs of standard nodes (indices into ``nodes``) that :func:`partition` makes into one
    step each when the nodes in ``sparse`` run as sparse layers: each run that is not all glue
    (``glue.supports``) costs one ONNX Runtime call per run of the model."""
    return [idx for kind, idx in _groups(nodes, sparse) if kind == "std"]


def declared_types(model: onnx.ModelProto, outputs: Mapping[str, int]) -> dict[str, onnx.TypeProto]:
    """:func:`value_types` of ``model`` once the element type of every sparse output the file
    leaves untyped (``outputs``: name -> TensorProto element type, :func:`sparse_output_types`)
    is declared in it (shape inference stops at our ops otherwise; the model is ours to edit)."""
    g = model.graph
    declared = {vi.name for vi in [*g.value_info, *g.output]}
    for name, data_type in outputs.items():
        if name not in declared:
            g.value_info.append(helper.make_tensor_value_info(name, data_type, None))
            declared.add(name)
    return value_types(model)


def sparse_output_types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type of each ``ai.sparsify`` node's output, read from the file before its
    layers are built: its weight values' (double or float; a file whose values tensor is
    missing or of another type fails when its layer is built)."""
    inits = {i.name: i.data_type for i in model.graph.initializer}
    return {n.output[0]: TensorProto.DOUBLE if len(n.input) > 1 and inits.get(n.input[1]) == TensorProto.DOUBLE
            else TensorProto.FLOAT for n in model.graph.node if is_sparse_node(n) and n.output and n.output[0]}


def least_rows_per_call(types: Mapping[str, onnx.TypeProto], name: str) -> int | None:
    """The fewest rows a Linear whose input is value ``name`` hands its kernel in a call that has
    any: the product of the dims the file fixes, all but the features (a dim it leaves open,
    such as the batch, counts 1); None when the input's rank is unknown."""
    dims = _dims(types.get(name))
    if not dims:
        return None
    return math.prod(d for d in dims[:-1] if isinstance(d, int))


def input_dims(layer: SparseLayer, types: dict[str, onnx.TypeProto]) -> list[int | None] | None:
    """The dims of a sparse layer's input as the file or shape inference knows them (None per
    unknown dim; None when its rank is unknown)."""
    return _dims(types.get(layer.input))


def partition(model: onnx.ModelProto, layers: dict[int, SparseLayer], threads: int, glue_policy: str = "numpy",
              where: str = "model", profile_prefix: str | None = None,
              types: dict[str, onnx.TypeProto] | None = None) -> list[Step]:
    """The execution steps of ``model``; ``layers`` maps node index -> prepared sparse layer;
    ``profile_prefix`` turns on ONNX Runtime's per-node profiler in the ORT steps; ``types``
    are :func:`declared_types` when the caller has them."""
    if glue_policy not in GLUE_POLICIES:
        raise ValueError(f"glue policy {glue_policy!r} should be one of {GLUE_POLICIES}")
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    types = declared_types(model, sparse_output_types(model)) if types is None else types
    check_layer_inputs(layers, types, where)
    groups = _groups(list(g.node), set(layers))
    reads_after: list[set[str]] = [set() for _ in groups]
    later = {o.name for o in g.output}
    for k in range(len(groups) - 1, -1, -1):
        reads_after[k] = set(later)
        for i in groups[k][1]:
            later.update(_node_inputs(g.node[i]))
    readers: dict[str, list[int]] = {o.name: [-1] for o in g.output}
    for i, n in enumerate(g.node):
        for v in set(_node_inputs(n)):
            readers.setdefault(v, []).append(i)
    steps: list[Step] = []
    fused: set[int] = set()  # standard nodes (indices) run inside a sparse step
    for k, (kind, idx) in enumerate(groups):
        if kind == "sparse":
            layer = layers[idx[0]]
            const = tensor_array(inits[layer.input], where) if layer.input in inits else None
            following = [g.node[i] for i in groups[k + 1][1]] if k + 1 < len(groups) and glue_policy == "numpy" else []
            read_later = reads_after[k + 1] if following else set()
            fusion = None if const is not None else plan_residual_fusion(layer, following, read_later, inits, types)
            split = None if const is not None or fusion is not None or glue_policy != "numpy" else plan_head_split(
                layer, g.node, readers, inits)
            if fusion is not None:
                fused.update(groups[k + 1][1][:len(fusion.nodes)])  # the run's first nodes
                steps.append(_residual_step(layer, fusion, where))
            elif split is not None:
                fused.update(split[1])  # wherever the schedule put them: after the layer
                steps.append(_head_split_step(layer, split[0], where))
            else:
                steps.append(_sparse_step(layer, const, where))
            continue
        nodes = [g.node[i] for i in idx if i not in fused]
        if not nodes:
            continue
        produced = {v for n in nodes for v in n.output if v}
        inputs: list[str] = []
        for n in nodes:
            for v in _node_inputs(n):
                if v not in produced and v not in inits and v not in inputs:
                    inputs.append(v)
        outputs = [v for n in nodes for v in n.output if v and v in reads_after[k]]
        if not outputs:
            continue  # dead code
        numpy_ok = glue_policy == "numpy" and all(glue.supports(n, inits) for n in nodes) and all(
            _is_float(types.get(v)) for n in nodes
            for j, v in enumerate(n.input) if v and j not in glue.INT_INPUTS.get(n.op_type, ()))
        if numpy_ok:
            consts = {v: tensor_array(inits[v], where) for n in nodes for v in n.input if v in inits}
            steps.append(_numpy_step(nodes, inputs, outputs, consts, where))
        else:
            # The whole graph in one ORT step (nothing converted): plain ONNX Runtime, spinning.
            alone = len(groups) == 1
            steps.append(_ort_step(model, nodes, inputs, outputs, types, inits, threads, where, alone,
                                   None if profile_prefix is None else f"{profile_prefix}-{k}"))
    return steps


def describe(steps: Sequence[Step]) -> list[str]:
    """One line per step."""
    return [s.describe() for s in steps]


def whole_model_step(path: str | os.PathLike, model: onnx.ModelProto, threads: int, where: str = "model",
                     profile_prefix: str | None = None) -> Step:
    """One ORT step running the file at ``path`` as it is: for a graph without sparse nodes,
    what plain ONNX Runtime runs (its optimizations, its spinning pool), at no extra cost."""
    from sparsify.ortsession import ort_session

    init_names = {i.name for i in model.graph.initializer}
    inputs = [vi.name for vi in model.graph.input if vi.name not in init_names]
    outputs = [o.name for o in model.graph.output]
    sess = ort_session(os.fspath(path), threads, spinning=True, where=where, profile_prefix=profile_prefix)

    nodes = [n.name or n.op_type for n in model.graph.node]
    return Step("ort", inputs, outputs, _ort_runner(sess, inputs, outputs, where), nodes, None, [n.op_type for n in model.graph.node], sess)
