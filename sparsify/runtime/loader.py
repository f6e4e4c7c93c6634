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

from sparsify.errors import ModelFileError
from sparsify.limits import check_bytes, memory_limit
from sparsify.sparse_ops import CONV_OP, DOMAIN, LINEAR_OP, SparseOpAttrs, node_label, parse_attrs, read_csr
from sparsify.kernels import CSR, KernelValueError, SparseConv2d, SparseLinear, choose_index_dtypes, ell
from sparsify.kernels.bsr import BSR, SparseBlockLinear, kernel_block


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


def _checked_weight(attrs: SparseOpAttrs, arrays, label: str) -> CSR | BSR:
    """The node's weight as the kernels hold it (a CSR, or a BSR for a ``blocksize`` other than
    [1, 1]): copied from the checked arrays, indices narrowed to the kernels' dtype, and fully
    checked again (ModelFileError naming the tensor)."""
    rows, cols = attrs.shape
    r, c = attrs.blocksize
    # The kernels' preferred dtypes (int16 column indices while cols fit: measured faster);
    # safe to narrow: read_csr checked every index is in [0, cols).
    index_dtype, _ = choose_index_dtypes((rows // r, cols // c), int(arrays.indices.shape[0]))
    ptr_dtype = np.int64 if arrays.indptr.dtype == np.int64 else np.int32
    parts = (arrays.data.copy(), arrays.indices.astype(index_dtype), arrays.indptr.astype(ptr_dtype), attrs.shape)
    try:
        weight = CSR(*parts) if (r, c) == (1, 1) else BSR(*parts, attrs.blocksize)
        weight.check_format(full=True)
    except KernelValueError as exc:
        role = getattr(exc, "array", None)
        if role is None:
            raise ModelFileError(f"{label}: {exc}") from None
        raise ModelFileError(f"{label}: {role} tensor {arrays.names[role]!r} is corrupt: {exc}") from None
    return weight


def build_sparse_layer(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], where: str,
                       batch1: str = "auto") -> SparseLayer:
    """Validate one ``ai.sparsify`` node's attributes and tensors and build its kernel object
    (``batch1``: a Linear's batch-1 layout choice, as ``SparseLinear`` takes it).

    The CSR arrays are checked as stored (``read_csr``: every index array's full range,
    before any narrowing), then copied into runtime-owned arrays (indices narrowed to the
    kernels' dtype), fully checked again by the kernels, and wrapped once; nothing here is
    repeated per call.
    """
    label = f"{where}: {node.op_type} node {node_label(node)!r}"
    if node.op_type not in (LINEAR_OP, CONV_OP):
        raise ModelFileError(f"{label}: unknown op {DOMAIN}::{node.op_type}; expected {LINEAR_OP} or {CONV_OP}")
    attrs = parse_attrs(node, where)
    arrays = read_csr(node, inits, attrs, where)
    weight = _checked_weight(attrs, arrays, label)
    rows, cols = attrs.shape
    bias = arrays.bias
    # An input row of ``cols`` features (a conv: one column of its unfolded input) must be
    # allocatable, or no input can ever reach the layer.
    check_bytes(cols * weight.dtype.itemsize, f"{label}: one input row of {cols} features (shape "
                     f"{list(attrs.shape)})", ModelFileError)
    activation = None if attrs.activation == "none" else attrs.activation
    if isinstance(weight, BSR) and node.op_type == LINEAR_OP and kernel_block(attrs.blocksize):
        try:
            return SparseLayer(node, attrs, SparseBlockLinear(weight, bias, activation), weight)
        except KernelValueError as exc:
            raise ModelFileError(f"{label}: {exc}") from None
    # A linear block shape without kernels: its nonzeros as a CSR. A conv takes its BSR as it is:
    # SparseConv2d runs the block kernels or, for shapes they lack, the BSR's CSR.
    csr = weight.to_csr() if isinstance(weight, BSR) and node.op_type == LINEAR_OP else weight
    # The batch-1 layout is planned over the dense shape, one int64 per lanes x step window of
    # the host's geometry (sparsify.kernels.ell), whatever the nonzeros: a shape whose plan would
    # exceed the memory bound keeps the CSR kernel (a file may declare 10^5 x 10^7 for one nonzero).
    geometry = ell.host_geometry()
    if (batch1 == "auto" and geometry is not None
            and -(-rows // geometry.lanes) * -(-cols // geometry.step) * 8 > memory_limit()):
        batch1 = "csr"
    try:
        if node.op_type == LINEAR_OP:
            kernel = SparseLinear(csr, bias, activation, batch1)
        else:
            kernel = SparseConv2d(csr, bias, attrs.kernel_shape, attrs.strides, attrs.pads[:2], attrs.dilations,
                                  attrs.group, activation)
    except KernelValueError as exc:
        raise ModelFileError(f"{label}: {exc}") from None
    except MemoryError:  # a layout planned over rows x cols that no real layer has
        raise ModelFileError(f"{label}: building its kernel for shape {list(attrs.shape)} runs out of memory; "
                             "the shape attribute cannot be right for a layer with "
                             f"{csr.nnz} nonzeros") from None
    return SparseLayer(node, attrs, kernel, csr)
