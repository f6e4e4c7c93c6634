"""Load a (sparse) ONNX file and turn each ``ai.sparsify`` node into a prepared, validated kernel object.

Every CSR is fully checked (``check_format(full=True)``) before a kernel can see it: Numba
does not bounds-check, so a corrupted file must fail here with a :class:`ModelFileError`
naming the node and the tensor, never crash later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from sparsify.errors import ModelFileError
from sparsify.export.sparse_ops import (CONV_OP, DATA_DTYPES, DOMAIN, INDEX_DTYPES, INDPTR_DTYPES, LINEAR_OP,
                                        SparseOpAttrs, node_label, parse_attrs)
from sparsify.kernels import CSR, KernelValueError, SparseConv2d, SparseLinear, choose_index_dtypes


def load_model(path: str | Path) -> onnx.ModelProto:
    """The model with its external data (``sparsify.onnxfile.load_onnx``); ModelFileError
    also when its graph has no nodes."""
    from sparsify.onnxfile import load_onnx

    model = load_onnx(path, external_data=True)
    if not model.graph.node:
        raise ModelFileError(f"{path} holds an ONNX graph without nodes; expected a model")
    return model


def is_sparse_node(node: onnx.NodeProto) -> bool:
    """True for nodes of the ``ai.sparsify`` domain."""
    return node.domain == DOMAIN


def _tensor_role(message: str) -> str:
    """Which CSR array a kernels CSRFormatError message is about."""
    head = message.split(" ", 2)
    if head[0] == "indptr":
        return "indptr"
    if head[0] in ("indices", "column") or message.startswith("indices"):
        return "indices"
    if head[0] == "data":
        return "data"
    return "indices" if "indices" in message else "indptr"


class SparseLayer:
    """A prepared ``ai.sparsify`` node: its kernel object plus the names it reads and writes."""

    def __init__(self, node: onnx.NodeProto, attrs: SparseOpAttrs, kernel: Callable[[np.ndarray], np.ndarray],
                 csr: CSR) -> None:
        self.node_name = node_label(node)
        self.op_type = node.op_type
        self.input = node.input[0]
        self.output = node.output[0]
        self.attrs = attrs
        self.kernel = kernel
        self.csr = csr

    def __repr__(self) -> str:
        return f"SparseLayer({self.op_type} {self.node_name!r}, {self.csr!r}, activation={self.attrs.activation!r})"


def build_sparse_layer(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], where: str,
                       batch1: str = "auto") -> SparseLayer:
    """Validate one ``ai.sparsify`` node's attributes and tensors and build its kernel object
    (``batch1``: a Linear's batch-1 layout choice, as ``SparseLinear`` takes it).

    The CSR arrays are copied into runtime-owned arrays (indices widened to int32/int64),
    fully checked, and wrapped once; nothing here is repeated per call.
    """
    label = f"{where}: {node.op_type} node {node_label(node)!r}"
    if node.op_type not in (LINEAR_OP, CONV_OP):
        raise ModelFileError(f"{label}: unknown op {DOMAIN}::{node.op_type}; expected {LINEAR_OP} or {CONV_OP}")
    if len(node.input) not in (4, 5) or len(node.output) != 1:
        raise ModelFileError(f"{label}: has {len(node.input)} inputs and {len(node.output)} outputs; "
                             "expected (X, data, indices, indptr[, bias]) -> Y")
    attrs = parse_attrs(node)
    arrays: dict[str, np.ndarray] = {}
    roles = ("data", "indices", "indptr", "bias")
    names = dict(zip(roles, list(node.input[1:]) + [""] * (5 - len(node.input))))
    for role, name in names.items():
        if not name:
            continue
        if name not in inits:
            raise ModelFileError(f"{label}: {role} tensor {name!r} is not an initializer; "
                                 "CSR arrays and bias must be stored in the file")
        try:
            a = numpy_helper.to_array(inits[name])
        except Exception as exc:
            raise ModelFileError(f"{label}: {role} tensor {name!r} cannot be read: {exc}") from exc
        if a.ndim != 1:
            raise ModelFileError(f"{label}: {role} tensor {name!r} has shape {list(a.shape)}; expected 1-D")
        arrays[role] = a
    data, indices, indptr = arrays["data"], arrays["indices"], arrays["indptr"]
    if data.dtype not in DATA_DTYPES:
        raise ModelFileError(f"{label}: data tensor {names['data']!r} has dtype {data.dtype}; expected float32 or float64")
    if indices.dtype not in INDEX_DTYPES:
        raise ModelFileError(f"{label}: indices tensor {names['indices']!r} has dtype {indices.dtype}; "
                             "expected uint16, int32 or int64")
    if indptr.dtype not in INDPTR_DTYPES:
        raise ModelFileError(f"{label}: indptr tensor {names['indptr']!r} has dtype {indptr.dtype}; expected int32 or int64")
    rows, cols = attrs.shape
    if indices.size and int(indices.max()) >= cols:  # before narrowing, so the message shows the stored value
        j = int(np.argmax(indices >= cols))
        raise ModelFileError(f"{label}: indices tensor {names['indices']!r} is corrupt: column index "
                             f"{int(indices[j])} at indices[{j}] should be in [0, {cols})")
    # The kernels' preferred dtypes (int16 column indices while cols fit: measured faster).
    index_dtype, _ = choose_index_dtypes((rows, cols), int(indices.shape[0]))
    ptr_dtype = np.int64 if indptr.dtype == np.int64 else np.int32
    try:
        csr = CSR(data.copy(), indices.astype(index_dtype), indptr.astype(ptr_dtype), attrs.shape)
        csr.check_format(full=True)
    except KernelValueError as exc:
        role = _tensor_role(str(exc))
        raise ModelFileError(f"{label}: {role} tensor {names[role]!r} is corrupt: {exc}") from None
    bias = arrays.get("bias")
    if bias is not None and (bias.dtype != data.dtype or bias.shape != (attrs.shape[0],)):
        raise ModelFileError(f"{label}: bias tensor {names['bias']!r} has shape {list(bias.shape)} {bias.dtype}; "
                             f"expected [{attrs.shape[0]}] {data.dtype}")
    try:
        if node.op_type == LINEAR_OP:
            kernel = SparseLinear(csr, bias, None if attrs.activation == "none" else attrs.activation, batch1)
        else:
            kernel = SparseConv2d(csr, bias, attrs.kernel_shape, attrs.strides, attrs.pads[:2], attrs.dilations,
                                  attrs.group, None if attrs.activation == "none" else attrs.activation)
    except KernelValueError as exc:
        raise ModelFileError(f"{label}: {exc}") from None
    return SparseLayer(node, attrs, kernel, csr)
