"""The ``ai.sparsify`` ONNX op domain: op names, attributes, node builders and reference implementations.

Two ops, both reading a CSR weight from three ordinary initializers (``data``, ``indices``,
``indptr``) and an optional bias:

``SparseLinear(X, data, indices, indptr[, bias]) -> Y``
    ``Y = act(X @ W.T + bias)`` for ``X`` of shape (..., in); ``W`` is the CSR matrix of
    attribute ``shape`` = [out, in] (torch ``Linear.weight`` layout).
``SparseConv(X, data, indices, indptr[, bias]) -> Y``
    ``Y = act(conv2d(X, W, bias))`` on NCHW; ``W`` is (out, in/group*kh*kw), i.e. torch's
    ``conv.weight.reshape(out, -1)``; attributes ``kernel_shape``, ``strides``, ``pads``
    ([top, left, bottom, right], symmetric), ``dilations``, ``group`` as in ONNX ``Conv``.

Common attributes: ``shape`` (ints, the CSR's [rows, cols]), ``activation`` ("none",
"relu" or "gelu" with exact erf), and informational ``weight_name`` / ``weight_shape`` /
``source_op`` (the dense initializer and node the op replaced). ``data`` is float32 or
float64; ``indices`` is uint16, int32 or int64 (uint16 when cols fit, to shrink the file);
``indptr`` is int32 or int64. The reference implementations below
(:data:`REFERENCE_OPS`) run under ``onnx.reference.ReferenceEvaluator(model, new_ops=...)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import onnx
from onnx import helper
from onnx.reference.op_run import OpRun

from sparsify.errors import ModelFileError

DOMAIN = "ai.sparsify"
DOMAIN_VERSION = 1
LINEAR_OP = "SparseLinear"
CONV_OP = "SparseConv"
OPS = (LINEAR_OP, CONV_OP)
ACTIVATIONS = ("none", "relu", "gelu")
INDEX_DTYPES = (np.dtype(np.uint16), np.dtype(np.int32), np.dtype(np.int64))
INDPTR_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
DATA_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclasses.dataclass(frozen=True)
class SparseOpAttrs:
    """The parsed attributes of one ``ai.sparsify`` node."""

    op_type: str
    shape: tuple[int, int]
    activation: str = "none"
    kernel_shape: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    group: int = 1
    weight_name: str = ""
    weight_shape: tuple[int, ...] = ()
    source_op: str = ""


def node_label(node: onnx.NodeProto) -> str:
    """A name for messages: the node name, else its first output."""
    return node.name or (node.output[0] if node.output else node.op_type)


def parse_attrs(node: onnx.NodeProto) -> SparseOpAttrs:
    """Read and check the attributes of an ``ai.sparsify`` node; ModelFileError names the node."""
    where = f"{node.op_type} node {node_label(node)!r}"
    if node.domain != DOMAIN or node.op_type not in OPS:
        raise ModelFileError(f"{where}: op {node.domain}::{node.op_type} is not one of {DOMAIN}::{OPS}")
    raw: dict[str, Any] = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    raw = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}

    def ints(name: str, n: int, default: tuple[int, ...] | None, minimum: int) -> tuple[int, ...]:
        value = raw.get(name, default)
        if value is None:
            raise ModelFileError(f"{where}: attribute {name!r} is missing; expected {n} ints")
        value = tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (value,)
        if len(value) != n or not all(isinstance(v, int) and v >= minimum for v in value):
            raise ModelFileError(f"{where}: attribute {name}={list(value)} should be {n} ints >= {minimum}")
        return value

    shape = ints("shape", 2, None, 0)
    activation = raw.get("activation", "none")
    if activation not in ACTIVATIONS:
        raise ModelFileError(f"{where}: activation {activation!r} should be one of {ACTIVATIONS}")
    common = dict(op_type=node.op_type, shape=shape, activation=activation,
                  weight_name=str(raw.get("weight_name", "")),
                  weight_shape=tuple(int(v) for v in raw.get("weight_shape", ())),
                  source_op=str(raw.get("source_op", "")))
    if node.op_type == LINEAR_OP:
        return SparseOpAttrs(**common)
    kernel = ints("kernel_shape", 2, None, 1)
    pads = ints("pads", 4, (0, 0, 0, 0), 0)
    if pads[:2] != pads[2:]:
        raise ModelFileError(f"{where}: pads {list(pads)} should be symmetric ([top, left, top, left])")
    group = raw.get("group", 1)
    if not isinstance(group, int) or group < 1 or shape[0] % group:
        raise ModelFileError(f"{where}: group {group!r} should be a positive int dividing {shape[0]} output channels")
    if shape[1] % (kernel[0] * kernel[1]):
        raise ModelFileError(f"{where}: shape[1] = {shape[1]} should be a multiple of kh*kw = {kernel[0] * kernel[1]}")
    return SparseOpAttrs(**common, kernel_shape=kernel, strides=ints("strides", 2, (1, 1), 1), pads=pads,
                         dilations=ints("dilations", 2, (1, 1), 1), group=group)


def make_node(op_type: str, x: str, csr_names: tuple[str, str, str], bias: str | None, output: str,
              name: str, shape: tuple[int, int], activation: str, weight_name: str,
              weight_shape: tuple[int, ...], source_op: str, **conv: Any) -> onnx.NodeProto:
    """Build a ``SparseLinear`` / ``SparseConv`` node (conv attributes as keyword arguments)."""
    if op_type not in OPS:
        raise ValueError(f"op_type {op_type!r} should be one of {OPS}")
    inputs = [x, *csr_names] + ([bias] if bias else [])
    attrs: dict[str, Any] = dict(shape=list(shape), activation=activation, weight_name=weight_name,
                                 weight_shape=list(weight_shape), source_op=source_op)
    if op_type == CONV_OP:
        attrs.update(kernel_shape=list(conv["kernel_shape"]), strides=list(conv["strides"]),
                     pads=list(conv["pads"]), dilations=list(conv["dilations"]), group=int(conv["group"]))
    return helper.make_node(op_type, inputs, [output], name=name, domain=DOMAIN, **attrs)


# -- reference implementations ----------------------------------------------------------

def reference_dense(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray,
                    shape: tuple[int, int]) -> np.ndarray:
    """The dense matrix of a CSR triple, after checking every invariant (ModelFileError otherwise)."""
    rows, cols = (int(s) for s in shape)
    data, indices, indptr = np.asarray(data), np.asarray(indices), np.asarray(indptr)
    if data.dtype not in DATA_DTYPES or indices.dtype not in INDEX_DTYPES or indptr.dtype not in INDPTR_DTYPES:
        raise ModelFileError(f"CSR dtypes data {data.dtype}, indices {indices.dtype}, indptr {indptr.dtype} "
                             "should be float32/64, uint16/int32/int64, int32/64")
    if indptr.shape != (rows + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
        raise ModelFileError(f"indptr should have {rows + 1} non-decreasing entries from 0, got {indptr.shape[0]}")
    nnz = int(indptr[-1])
    if data.shape != (nnz,) or indices.shape != (nnz,):
        raise ModelFileError(f"data/indices sizes {data.shape[0]}/{indices.shape[0]} should be {nnz} (indptr[-1])")
    idx = indices.astype(np.int64)
    if nnz and (idx.min() < 0 or idx.max() >= cols):
        raise ModelFileError(f"column indices should be in [0, {cols}), got [{idx.min()}, {idx.max()}]")
    dense = np.zeros((rows, cols), dtype=np.float64)
    row_of = np.repeat(np.arange(rows), np.diff(indptr.astype(np.int64)))
    np.add.at(dense, (row_of, idx), data.astype(np.float64))
    return dense


def _erf(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf
    except ImportError:  # pragma: no cover - scipy is a test dependency
        return np.vectorize(math.erf, otypes=[np.float64])(x)
    return erf(x)


def reference_activation(y: np.ndarray, activation: str) -> np.ndarray:
    """Apply ``none`` / ``relu`` / exact-erf ``gelu`` to a float64 array."""
    if activation == "relu":
        return np.maximum(y, 0.0)
    if activation == "gelu":
        return y * 0.5 * (1.0 + _erf(y / math.sqrt(2.0)))
    return y


def reference_conv2d(x: np.ndarray, w: np.ndarray, strides, pads, dilations, group: int) -> np.ndarray:
    """float64 NCHW conv2d of ``x`` with ``w`` (out, in/group, kh, kw); pads [top, left, bottom, right]."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = strides, dilations
    pt, pl, pb, pr = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, o, ho, wo), dtype=np.float64)
    og = o // group
    for g in range(group):
        xs = xp[:, g * cg:(g + 1) * cg]
        ws = w[g * og:(g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
                y[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    return y


class SparseLinear(OpRun):
    """Reference ``ai.sparsify::SparseLinear`` (float64 accumulation, result in X's dtype)."""

    op_domain = DOMAIN

    def _run(self, x, data, indices, indptr, bias=None, shape=None, activation="none",
             weight_name=None, weight_shape=None, source_op=None):
        w = reference_dense(data, indices, indptr, tuple(shape))
        y = x.astype(np.float64) @ w.T
        if bias is not None:
            y = y + bias.astype(np.float64)
        act = activation.decode() if isinstance(activation, bytes) else activation
        return (reference_activation(y, act).astype(x.dtype),)


class SparseConv(OpRun):
    """Reference ``ai.sparsify::SparseConv`` (float64 accumulation, result in X's dtype)."""

    op_domain = DOMAIN

    def _run(self, x, data, indices, indptr, bias=None, shape=None, activation="none", kernel_shape=None,
             strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1,
             weight_name=None, weight_shape=None, source_op=None):
        rows, cols = (int(s) for s in shape)
        kh, kw = kernel_shape
        w = reference_dense(data, indices, indptr, (rows, cols)).reshape(rows, cols // (kh * kw), kh, kw)
        y = reference_conv2d(x, w, strides, pads, dilations, int(group))
        if bias is not None:
            y = y + bias.astype(np.float64).reshape(1, -1, 1, 1)
        act = activation.decode() if isinstance(activation, bytes) else activation
        return (reference_activation(y, act).astype(x.dtype),)


REFERENCE_OPS = [SparseLinear, SparseConv]


def reference_evaluator(model: onnx.ModelProto | str):
    """An ``onnx.reference.ReferenceEvaluator`` that knows the ``ai.sparsify`` ops."""
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model, new_ops=REFERENCE_OPS)


@dataclasses.dataclass
class SparseOpInfo:
    """What ``sparsify inspect`` shows for one ``ai.sparsify`` node."""

    node: str
    op_type: str
    weight_name: str
    weight_shape: tuple[int, ...]
    nnz: int
    csr_bytes: int
    macs: int | None  # dense multiply-accumulates per sample (batch 1), when the output shape is known

    @property
    def params(self) -> int:
        return int(np.prod(self.weight_shape)) if self.weight_shape else 0

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.params)

    def note(self) -> str:
        dense = self.params * 4
        per = f" ({self.csr_bytes / self.nnz:.2f} bytes/nonzero)" if self.nnz else ""
        return (f"{self.op_type} {self.node!r}: weight {self.weight_name} {list(self.weight_shape)}, "
                f"{self.nnz:,} nonzeros (density {self.density:.3f}), CSR {self.csr_bytes:,} bytes{per} "
                f"vs {dense:,} bytes dense float32")


def sparse_op_infos(model: onnx.ModelProto) -> list[SparseOpInfo]:
    """One :class:`SparseOpInfo` per ``ai.sparsify`` node (attributes and initializer sizes only)."""
    inits = {i.name: i for i in model.graph.initializer}
    shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
              for vi in [*model.graph.value_info, *model.graph.output] if vi.type.tensor_type.HasField("shape")}
    out = []
    for node in model.graph.node:
        if node.domain != DOMAIN or node.op_type not in OPS or len(node.input) < 4:
            continue
        try:
            attrs = parse_attrs(node)
        except ModelFileError:
            continue
        arrays = [inits.get(v) for v in node.input[1:4]]
        if any(a is None for a in arrays):
            continue
        nnz = int(np.prod(arrays[0].dims)) if arrays[0].dims else 0
        size = sum(int(np.prod(a.dims, dtype=np.int64)) * np.dtype(helper.tensor_dtype_to_np_dtype(a.data_type)).itemsize
                   for a in arrays)
        y = shapes.get(node.output[0])
        macs = int(np.prod(y)) * attrs.shape[1] if y else None
        out.append(SparseOpInfo(node_label(node), node.op_type, attrs.weight_name or node.input[1],
                                attrs.weight_shape or attrs.shape, nnz, int(size), macs))
    return out
