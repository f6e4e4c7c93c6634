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
"relu", "gelu" with exact erf, or "relu6": ONNX ``Clip`` to [0, 6]), ``blocksize`` ([R, C], default [1, 1]: see below), and
informational ``weight_name`` / ``weight_shape`` / ``source_op`` (the dense initializer and
node the op replaced).

Block-sparse weights (``blocksize`` [R, C] other than [1, 1], R and C dividing rows and cols)
store R x C blocks as a BSR: ``data`` of shape [blocks, R, C], ``indices`` the block column of
each block (in [0, cols / C)), ``indptr`` per block row (rows / R + 1 entries), as
``scipy.sparse.bsr_matrix`` has them; every value of a stored block multiplies. The dtypes are
the kernels' (``sparsify.kernels.csr``): ``data`` float32 or float64, ``indices`` int16, int32
or int64 (the narrowest that holds every column), ``indptr`` int32 or int64; uint16 indices,
which files written before that rule hold, are still read. Products are sparse: only stored entries of ``W`` multiply, so
a NaN or inf in ``X`` reaches only the outputs whose rows store a value in its column (as in
``scipy.sparse``; a dense product would spread it through the zeros). The reference
implementations below (:data:`REFERENCE_OPS`) run under
``onnx.reference.ReferenceEvaluator(model, new_ops=...)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import helper
from onnx.reference.op_run import OpRun

from sparsify.errors import ModelFileError, SparsifyError
from sparsify.kernels.csr import DATA_DTYPES, INDEX_DTYPES, INDPTR_DTYPES, dtype_names

DOMAIN = "ai.sparsify"
DOMAIN_VERSION = 1
LINEAR_OP = "SparseLinear"
CONV_OP = "SparseConv"
OPS = (LINEAR_OP, CONV_OP)
ACTIVATIONS = ("none", "relu", "gelu", "relu6")
# Column-index dtypes read besides the kernels' own: sparsify wrote uint16 before files took the
# kernels' dtypes, and such files must keep loading (the loader narrows them to the kernels' dtype).
LEGACY_INDEX_DTYPES = (np.dtype(np.uint16),)


@dataclasses.dataclass(frozen=True)
class SparseOpAttrs:
    """The parsed attributes of one ``ai.sparsify`` node."""

    op_type: str
    shape: tuple[int, int]
    activation: str = "none"
    blocksize: tuple[int, int] = (1, 1)
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


# The attribute type each attribute must have (a file may not pass a float as a shape).
_ATTR_TYPES = {
    "shape": onnx.AttributeProto.INTS, "kernel_shape": onnx.AttributeProto.INTS,
    "strides": onnx.AttributeProto.INTS, "pads": onnx.AttributeProto.INTS,
    "dilations": onnx.AttributeProto.INTS, "weight_shape": onnx.AttributeProto.INTS,
    "group": onnx.AttributeProto.INT, "activation": onnx.AttributeProto.STRING,
    "weight_name": onnx.AttributeProto.STRING, "source_op": onnx.AttributeProto.STRING,
    "blocksize": onnx.AttributeProto.INTS,
}


def _type_name(t: int) -> str:
    try:
        return onnx.AttributeProto.AttributeType.Name(t)
    except ValueError:
        return f"unknown type {t}"


_CONV_ONLY = ("kernel_shape", "strides", "pads", "dilations", "group")


def _attr_values(node: onnx.NodeProto, where: str) -> dict[str, Any]:
    """Attribute name -> value (strings decoded), after checking each attribute is one of the
    op's (unknown ones are refused, as the reference implementation does) and of its type."""
    allowed = [k for k in _ATTR_TYPES if node.op_type == CONV_OP or k not in _CONV_ONLY]
    raw: dict[str, Any] = {}
    for a in node.attribute:
        if a.name not in allowed:
            raise ModelFileError(f"{where}: attribute {a.name!r} is not one of {node.op_type}'s attributes {allowed}")
        expected = _ATTR_TYPES[a.name]
        if a.type != expected:
            raise ModelFileError(f"{where}: attribute {a.name!r} has type {_type_name(a.type)}; "
                                 f"expected {_type_name(expected)}")
        if a.name in raw:
            raise ModelFileError(f"{where}: attribute {a.name!r} appears twice")
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise ModelFileError(f"{where}: attribute {a.name!r} is not UTF-8 text ({value[:32]!r}); "
                                     "the file is corrupt") from None
        raw[a.name] = value
    return raw


def parse_attrs(node: onnx.NodeProto, where: str | None = None) -> SparseOpAttrs:
    """Read and check the attributes of an ``ai.sparsify`` node; ModelFileError names the node
    (and ``where``, the file, when given)."""
    where = f"{where + ': ' if where else ''}{node.op_type} node {node_label(node)!r}"
    if node.domain != DOMAIN or node.op_type not in OPS:
        raise ModelFileError(f"{where}: op {node.domain}::{node.op_type} is not one of {DOMAIN}::{OPS}")
    raw = _attr_values(node, where)

    def ints(name: str, n: int, default: tuple[int, ...] | None, minimum: int) -> tuple[int, ...]:
        value = raw.get(name, default)
        if value is None:
            raise ModelFileError(f"{where}: attribute {name!r} is missing; expected {n} ints")
        value = tuple(int(v) for v in value)
        if len(value) != n or not all(v >= minimum for v in value):
            raise ModelFileError(f"{where}: attribute {name}={list(value)} should be {n} ints >= {minimum}")
        return value

    shape = ints("shape", 2, None, 0)
    blocksize = ints("blocksize", 2, (1, 1), 1)
    if shape[0] % blocksize[0] or shape[1] % blocksize[1]:
        raise ModelFileError(f"{where}: blocksize {list(blocksize)} should divide shape {list(shape)}")
    activation = raw.get("activation", "none")
    if activation not in ACTIVATIONS:
        raise ModelFileError(f"{where}: activation {activation!r} should be one of {ACTIVATIONS}")
    weight_shape = tuple(int(v) for v in raw.get("weight_shape", ()))
    common = dict(op_type=node.op_type, shape=shape, activation=activation, blocksize=blocksize,
                  weight_name=str(raw.get("weight_name", "")), weight_shape=weight_shape,
                  source_op=str(raw.get("source_op", "")))
    if node.op_type == LINEAR_OP:
        # A MatMul's weight is stored [in, out], a Gemm's or torch's [out, in].
        if weight_shape and weight_shape not in (shape, shape[::-1]):
            raise ModelFileError(f"{where}: weight_shape {list(weight_shape)} should be shape {list(shape)} "
                                 "or its transpose")
        return SparseOpAttrs(**common)
    kernel = ints("kernel_shape", 2, None, 1)
    pads = ints("pads", 4, (0, 0, 0, 0), 0)
    if pads[:2] != pads[2:]:
        raise ModelFileError(f"{where}: pads {list(pads)} should be symmetric ([top, left, top, left])")
    group = int(raw.get("group", 1))
    if group < 1 or shape[0] % group:
        raise ModelFileError(f"{where}: group {group!r} should be a positive int dividing {shape[0]} output channels")
    if shape[1] % (kernel[0] * kernel[1]):
        raise ModelFileError(f"{where}: shape[1] = {shape[1]} should be a multiple of kh*kw = {kernel[0] * kernel[1]}")
    expected = (shape[0], shape[1] // (kernel[0] * kernel[1]), *kernel)
    if weight_shape and weight_shape != expected:
        raise ModelFileError(f"{where}: weight_shape {list(weight_shape)} disagrees with shape {list(shape)} and "
                             f"kernel_shape {list(kernel)}; expected {list(expected)}")
    return SparseOpAttrs(**common, kernel_shape=kernel, strides=ints("strides", 2, (1, 1), 1), pads=pads,
                         dilations=ints("dilations", 2, (1, 1), 1), group=group)


@dataclasses.dataclass
class CsrTensors:
    """The checked CSR arrays (as stored in the file) and bias of one ``ai.sparsify`` node."""

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    bias: np.ndarray | None
    names: dict[str, str]  # role ("data", "indices", "indptr", "bias") -> initializer name

    @property
    def nbytes(self) -> int:
        """Bytes of the three CSR arrays."""
        return self.data.nbytes + self.indices.nbytes + self.indptr.nbytes


def csr_problem(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray,
                shape: tuple[int, int], blocksize: tuple[int, int] = (1, 1)) -> tuple[str, str] | None:
    """(array role, what is wrong) for the first broken CSR (or BSR) invariant, or None.

    Checked in the stored dtypes, before any narrowing (a negative int32 index must not wrap
    into range): dtypes, 1-D index arrays (data 1-D, or [blocks, R, C] for blocks), indptr
    of rows / R + 1 entries from 0 and non-decreasing, data and indices of indptr[-1]
    entries (blocks), every column index in [0, cols / C). Per-row order is the kernels'
    own check.
    """
    r, c = (int(v) for v in blocksize)
    rows, cols = (int(s) // b for s, b in zip(shape, (r, c)))
    block = (r, c) != (1, 1)
    for role, a, dtypes in (("data", data, DATA_DTYPES), ("indices", indices, INDEX_DTYPES),
                            ("indptr", indptr, INDPTR_DTYPES)):
        if a.dtype not in dtypes and not (role == "indices" and a.dtype in LEGACY_INDEX_DTYPES):
            return role, f"has dtype {a.dtype}; expected {dtype_names(dtypes)}"
        if role == "data" and block:
            if a.ndim != 3 or a.shape[1:] != (r, c):
                return role, f"has shape {list(a.shape)}; expected [blocks, {r}, {c}] (blocksize)"
        elif a.ndim != 1:
            return role, f"has shape {list(a.shape)}; expected 1-D"
    unit = "block rows" if block else "rows"
    if indptr.shape[0] != rows + 1:
        return "indptr", f"is corrupt: indptr size {indptr.shape[0]} should be {rows + 1} ({unit} + 1)"
    if indptr[0] != 0:
        return "indptr", f"is corrupt: indptr[0] is {int(indptr[0])} but should be 0"
    down = np.flatnonzero(indptr[1:] < indptr[:-1])
    if down.size:
        k = int(down[0])
        return "indptr", (f"is corrupt: indptr should be non-decreasing, but indptr[{k}] = {int(indptr[k])} "
                          f"> indptr[{k + 1}] = {int(indptr[k + 1])}")
    nnz = int(indptr[-1])
    for role, a in (("indices", indices), ("data", data)):
        if a.shape[0] != nnz:
            return role, f"is corrupt: {role} size {a.shape[0]} should be {nnz} (indptr[-1])"
    if nnz:
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= cols:
            j = int(np.argmax(indices < 0)) if low < 0 else int(np.argmax(indices >= min(high, cols)))
            k = int(np.searchsorted(indptr, j, side="right")) - 1
            what = "block column" if block else "column"
            return "indices", (f"is corrupt: {what} index {int(indices[j])} at indices[{j}] "
                               f"({'block row' if block else 'row'} {k}) should be in [0, {cols})")
    return None


def read_csr(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], attrs: SparseOpAttrs,
             where: str, base_dir=None) -> CsrTensors:
    """The CSR arrays and bias of an ``ai.sparsify`` node, read from its initializers (external
    data from ``base_dir``) and checked (:func:`csr_problem`, bias of [rows] in data's dtype);
    ModelFileError naming the node and tensor."""
    from sparsify.onnxfile import tensor_array

    label = f"{where}: {node.op_type} node {node_label(node)!r}"
    if len(node.input) not in (4, 5) or len(node.output) != 1:
        raise ModelFileError(f"{label}: has {len(node.input)} inputs and {len(node.output)} outputs; "
                             "expected (X, data, indices, indptr[, bias]) -> Y")
    if not node.input[0]:
        raise ModelFileError(f"{label}: its input X has an empty name; expected (X, data, indices, indptr[, bias])")
    names = dict(zip(("data", "indices", "indptr", "bias"), node.input[1:]))
    arrays: dict[str, np.ndarray] = {}
    for role, name in names.items():
        if not name:
            if role != "bias":
                raise ModelFileError(f"{label}: has no {role} input; expected (X, data, indices, indptr[, bias])")
            continue
        if name not in inits:
            raise ModelFileError(f"{label}: {role} tensor {name!r} is not an initializer; "
                                 "CSR arrays and bias must be stored in the file")
        arrays[role] = tensor_array(inits[name], label, base_dir)
    problem = csr_problem(arrays["data"], arrays["indices"], arrays["indptr"], attrs.shape, attrs.blocksize)
    if problem:
        role, text = problem
        raise ModelFileError(f"{label}: {role} tensor {names[role]!r} {text}")
    bias = arrays.get("bias")
    if bias is not None and (bias.dtype != arrays["data"].dtype or bias.shape != (attrs.shape[0],)):
        raise ModelFileError(f"{label}: bias tensor {names['bias']!r} has shape {list(bias.shape)} {bias.dtype}; "
                             f"expected [{attrs.shape[0]}] {arrays['data'].dtype}")
    return CsrTensors(arrays["data"], arrays["indices"], arrays["indptr"], bias,
                      {k: v for k, v in names.items() if v})


def input_channels(attrs: SparseOpAttrs) -> int:
    """The size X must have on its feature axis: in-features (Linear) or channels (Conv)."""
    if attrs.op_type == LINEAR_OP:
        return attrs.shape[1]
    kh, kw = attrs.kernel_shape
    return attrs.group * (attrs.shape[1] // (kh * kw))


def conv_out_hw(height: int, width: int, kernel_shape, strides, pads, dilations) -> tuple[int, int]:
    """(Ho, Wo) of a 2-D conv on an input of spatial size (height, width), as ONNX ``Conv``;
    pads [top, left, bottom, right]."""
    (kh, kw), (sh, sw), (dh, dw) = kernel_shape, strides, dilations
    pt, pl, pb, pr = pads
    return (height + pt + pb - dh * (kh - 1) - 1) // sh + 1, (width + pl + pr - dw * (kw - 1) - 1) // sw + 1


def conv_output_size(attrs: SparseOpAttrs, height: int, width: int) -> tuple[int, int]:
    """(Ho, Wo) of a SparseConv on an input of spatial size (height, width)."""
    return conv_out_hw(height, width, attrs.kernel_shape, attrs.strides, attrs.pads, attrs.dilations)


def check_input_shape(attrs: SparseOpAttrs, dims: Sequence[int | None], itemsize: int, label: str,
                      error: type[SparsifyError]) -> None:
    """Raise ``error`` naming ``label`` unless an X of ``dims`` (None where unknown) fits the node:
    its rank, its feature or channel size, for a conv an output of at least 1x1, and a padded
    input and an output (for N samples, or one when N is unknown) within the allocation limit.
    Checked at load with the declared shapes and again at run time with the real ones (a
    file's pads can ask for terabytes)."""
    from sparsify.limits import array_bytes, check_bytes, human_bytes

    need = input_channels(attrs)
    if attrs.op_type == LINEAR_OP:
        if len(dims) < 1 or dims[-1] not in (None, need):
            raise error(f"{label}: input of shape {list(dims)} should have {need} features on its last axis "
                        f"(shape attribute {list(attrs.shape)})")
        return
    if len(dims) != 4 or dims[1] not in (None, need):
        raise error(f"{label}: input of shape {list(dims)} should be (N, {need}, H, W) for kernel_shape "
                    f"{list(attrs.kernel_shape)}, group {attrs.group} and shape {list(attrs.shape)}")
    height, width = dims[2], dims[3]
    if height is None or width is None:
        return
    ho, wo = conv_output_size(attrs, height, width)
    if ho < 1 or wo < 1:
        raise error(f"{label}: an input of spatial size ({height}, {width}) gives an output of ({ho}, {wo}) with "
                    f"kernel_shape {list(attrs.kernel_shape)}, pads {list(attrs.pads)}, strides "
                    f"{list(attrs.strides)}, dilations {list(attrs.dilations)}; expected at least 1x1")
    pt, pl, pb, pr = attrs.pads
    n = 1 if dims[0] is None else dims[0]
    padded = array_bytes((n, need, height + pt + pb, width + pl + pr), np.uint8) * itemsize
    out = array_bytes((n, attrs.shape[0], ho, wo), np.uint8) * itemsize
    check_bytes(padded + out, f"{label}: pads {list(attrs.pads)} on a ({height}, {width}) input "
                     f"(a padded input of {human_bytes(padded)} and an output of {human_bytes(out)} "
                     f"for {n} sample(s))", error)


def make_node(op_type: str, x: str, csr_names: tuple[str, str, str], bias: str | None, output: str,
              name: str, shape: tuple[int, int], activation: str, weight_name: str,
              weight_shape: tuple[int, ...], source_op: str, blocksize: tuple[int, int] = (1, 1),
              **conv: Any) -> onnx.NodeProto:
    """Build a ``SparseLinear`` / ``SparseConv`` node (conv attributes as keyword arguments;
    ``blocksize`` other than (1, 1) for BSR arrays)."""
    if op_type not in OPS:
        raise ValueError(f"op_type {op_type!r} should be one of {OPS}")
    inputs = [x, *csr_names] + ([bias] if bias else [])
    attrs: dict[str, Any] = dict(shape=list(shape), activation=activation, weight_name=weight_name,
                                 weight_shape=list(weight_shape), source_op=source_op)
    if tuple(blocksize) != (1, 1):
        attrs["blocksize"] = list(blocksize)
    if op_type == CONV_OP:
        attrs.update(kernel_shape=list(conv["kernel_shape"]), strides=list(conv["strides"]),
                     pads=list(conv["pads"]), dilations=list(conv["dilations"]), group=int(conv["group"]))
    return helper.make_node(op_type, inputs, [output], name=name, domain=DOMAIN, **attrs)


# -- reference implementations ----------------------------------------------------------

def reference_csr(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int],
                  blocksize: tuple[int, int] = (1, 1)):
    """The float64 ``scipy.sparse`` matrix of a CSR (or, with ``blocksize``, BSR) triple, after
    checking every invariant (ModelFileError otherwise)."""
    rows, cols = (int(s) for s in shape)
    blocksize = tuple(int(b) for b in blocksize)
    data, indices, indptr = np.asarray(data), np.asarray(indices), np.asarray(indptr)
    if rows % blocksize[0] or cols % blocksize[1]:
        raise ModelFileError(f"blocksize {list(blocksize)} should divide shape {[rows, cols]}")
    problem = csr_problem(data, indices, indptr, (rows, cols), blocksize)
    if problem:
        raise ModelFileError(f"{'CSR' if blocksize == (1, 1) else 'BSR'} {problem[0]} {problem[1]}")
    return scipy_matrix(data.astype(np.float64), indices, indptr, (rows, cols), blocksize).tocsr()


def scipy_matrix(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int],
                 blocksize: tuple[int, int] = (1, 1)):
    """The ``scipy.sparse`` CSR (or, with ``blocksize``, BSR) matrix of already checked arrays,
    in ``data``'s dtype."""
    from scipy.sparse import bsr_matrix, csr_matrix

    arrays = (data, indices.astype(np.int64), indptr.astype(np.int64))
    if tuple(blocksize) == (1, 1):
        return csr_matrix(arrays, shape=shape)
    return bsr_matrix(arrays, shape=shape, blocksize=tuple(blocksize))


def reference_dense(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray,
                    shape: tuple[int, int]) -> np.ndarray:
    """The dense float64 matrix of a CSR triple, after checking every invariant (ModelFileError otherwise)."""
    return reference_csr(data, indices, indptr, shape).toarray()


def _erf(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf
    except ImportError:  # pragma: no cover - scipy is a test dependency
        return np.vectorize(math.erf, otypes=[np.float64])(x)
    return erf(x)


def reference_activation(y: np.ndarray, activation: str) -> np.ndarray:
    """Apply ``none`` / ``relu`` / exact-erf ``gelu`` / ``relu6`` to a float64 array."""
    if activation == "relu":
        return np.maximum(y, 0.0)
    if activation == "relu6":
        return np.clip(y, 0.0, 6.0)
    if activation == "gelu":
        return y * 0.5 * (1.0 + _erf(y / math.sqrt(2.0)))
    return y


def reference_unfold(x: np.ndarray, kernel_shape, strides, pads, dilations) -> np.ndarray:
    """float64 patches of NCHW ``x``: (N, C*kh*kw, Ho, Wo), column order (c, i, j) as torch's
    ``conv.weight.reshape(out, -1)``; pads [top, left, bottom, right] of zeros."""
    n, c, h, wd = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel_shape, strides, dilations
    pt, pl, pb, pr = pads
    ho, wo = conv_out_hw(h, wd, kernel_shape, strides, pads, dilations)
    if ho < 1 or wo < 1:
        raise ValueError(f"input of spatial size ({h}, {wd}) gives an empty output ({ho}, {wo})")
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    patches = np.empty((n, c, kh, kw, ho, wo), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            patches[:, :, i, j] = xp[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
    return patches.reshape(n, c * kh * kw, ho, wo)


class SparseLinear(OpRun):
    """Reference ``ai.sparsify::SparseLinear`` (float64 accumulation, result in X's dtype)."""

    op_domain = DOMAIN

    def _run(self, x, data, indices, indptr, bias=None, shape=None, activation="none",
             weight_name=None, weight_shape=None, source_op=None, blocksize=(1, 1)):
        w = reference_csr(data, indices, indptr, tuple(shape), tuple(blocksize))
        if x.ndim < 1 or x.shape[-1] != w.shape[1]:
            raise ValueError(f"X of shape {list(x.shape)} should have {w.shape[1]} features on its last axis")
        # Only stored entries multiply (a NaN in X reaches only the rows that use its column).
        y = (w @ x.reshape(-1, w.shape[1]).astype(np.float64).T).T.reshape(*x.shape[:-1], w.shape[0])
        if bias is not None:
            y = y + bias.astype(np.float64)
        act = activation.decode() if isinstance(activation, bytes) else activation
        return (reference_activation(y, act).astype(x.dtype),)


class SparseConv(OpRun):
    """Reference ``ai.sparsify::SparseConv`` (float64 accumulation, result in X's dtype)."""

    op_domain = DOMAIN

    def _run(self, x, data, indices, indptr, bias=None, shape=None, activation="none", kernel_shape=None,
             strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1,
             weight_name=None, weight_shape=None, source_op=None, blocksize=(1, 1)):
        rows, cols = (int(s) for s in shape)
        w = reference_csr(data, indices, indptr, (rows, cols), tuple(blocksize))
        group = int(group)
        if x.ndim != 4 or x.shape[1] != group * cols // (kernel_shape[0] * kernel_shape[1]):
            raise ValueError(f"X of shape {list(x.shape)} does not fit kernel_shape {list(kernel_shape)}, "
                             f"group {group} and shape {[rows, cols]}")
        n = x.shape[0]
        patches = reference_unfold(x, kernel_shape, strides, pads, dilations)
        ho, wo = patches.shape[2:]
        og, p = rows // group, ho * wo
        patches = patches.reshape(n, -1, p)
        y = np.empty((n, rows, p), dtype=np.float64)
        for g in range(group):
            cols_g = patches[:, g * cols:(g + 1) * cols].transpose(1, 0, 2).reshape(cols, n * p)
            # Only stored entries multiply, as in SparseLinear.
            y[:, g * og:(g + 1) * og] = (w[g * og:(g + 1) * og] @ cols_g).reshape(og, n, p).transpose(1, 0, 2)
        y = y.reshape(n, rows, ho, wo)
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
    blocksize: tuple[int, int] = (1, 1)  # [R, C] of a BSR weight

    @property
    def layout(self) -> str:
        """"csr", or "bsr RxC" for a block-sparse weight."""
        r, c = self.blocksize
        return "csr" if (r, c) == (1, 1) else f"bsr {r}x{c}"

    @property
    def params(self) -> int:
        return math.prod(self.weight_shape) if self.weight_shape else 0

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.params)

    def note(self) -> str:
        dense = self.params * 4
        per = f" ({self.csr_bytes / self.nnz:.2f} bytes/nonzero)" if self.nnz else ""
        stored = "CSR" if self.layout == "csr" else f"BSR of {self.blocksize[0]}x{self.blocksize[1]} blocks"
        return (f"{self.op_type} {self.node!r}: weight {self.weight_name} {list(self.weight_shape)}, "
                f"{self.nnz:,} nonzeros (density {self.density:.3f}), {stored} {self.csr_bytes:,} bytes{per} "
                f"vs {dense:,} bytes dense float32")


def sparse_op_infos(model: onnx.ModelProto, where: str = "model", base_dir=None) -> list[SparseOpInfo]:
    """One :class:`SparseOpInfo` per ``ai.sparsify`` node, after checking its attributes and CSR
    arrays (external data read from ``base_dir``; ModelFileError naming the node and tensor: a
    file that lies is refused, not printed)."""
    from sparsify.limits import check_int64

    inits = {i.name: i for i in model.graph.initializer}
    shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
              for vi in [*model.graph.value_info, *model.graph.output] if vi.type.tensor_type.HasField("shape")}
    out = []
    for node in model.graph.node:
        if node.domain != DOMAIN:
            continue
        attrs = parse_attrs(node, where)
        csr = read_csr(node, inits, attrs, where, base_dir)
        y = shapes.get(node.output[0])
        label = f"{where}: {node.op_type} node {node_label(node)!r}"
        if y and min(y) < 0:
            raise ModelFileError(f"{label}: its output is declared with negative dims {y}")
        macs = check_int64(math.prod(y) * attrs.shape[1], f"{label}: its MAC count", ModelFileError) if y else None
        out.append(SparseOpInfo(node_label(node), node.op_type, attrs.weight_name or node.input[1],
                                attrs.weight_shape or attrs.shape,
                                int(np.count_nonzero(csr.data)) if csr.data.ndim == 3 else int(csr.data.shape[0]),
                                csr.nbytes, macs, attrs.blocksize))
    return out
