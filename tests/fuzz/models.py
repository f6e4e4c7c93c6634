"""Small sparse ONNX models built directly with ``onnx.helper`` (no torch export): fast to make,
and each mixes ``ai.sparsify`` ops, numpy glue and an ONNX Runtime segment."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sparsify.sparse_ops import CONV_OP, DOMAIN, LINEAR_OP, make_node, reference_evaluator

OPSET = [helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)]


def csr_of(w: np.ndarray, index_dtype=np.int32, ptr_dtype=np.int64):
    """(data, indices, indptr) of a 2-D array, zeros dropped."""
    rows, cols = np.nonzero(w)
    indptr = np.zeros(w.shape[0] + 1, dtype=ptr_dtype)
    np.cumsum(np.bincount(rows, minlength=w.shape[0]), out=indptr[1:])
    return w[rows, cols].astype(w.dtype), cols.astype(index_dtype), indptr


def _sparse(rng, rows, cols, density, dtype):
    w = rng.standard_normal((rows, cols)) * (rng.random((rows, cols)) < density)
    w[rng.integers(0, rows)] = 0.0  # one empty row
    return w.astype(dtype)


class Builder:
    """Collects nodes and initializers; ``linear``/``conv`` add an ai.sparsify node."""

    def __init__(self, seed: int, dtype=np.float32, index_dtype=np.int32, ptr_dtype=np.int64) -> None:
        self.rng = np.random.default_rng(seed)
        self.dtype, self.index_dtype, self.ptr_dtype = np.dtype(dtype), index_dtype, ptr_dtype
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def _csr(self, name, w, bias):
        data, idx, ptr = csr_of(w, self.index_dtype, self.ptr_dtype)
        names = tuple(self.const(f"{name}.{part}", a) for part, a in (("data", data), ("indices", idx), ("indptr", ptr)))
        b = self.const(f"{name}.bias", self.rng.standard_normal(w.shape[0]).astype(self.dtype)) if bias else None
        return names, b

    def linear(self, x, out, name, rows, cols, activation="none", density=0.3, bias=True):
        w = _sparse(self.rng, rows, cols, density, self.dtype)
        names, b = self._csr(name, w, bias)
        self.nodes.append(make_node(LINEAR_OP, x, names, b, out, name, (rows, cols), activation, f"{name}.weight",
                                    (rows, cols), "Gemm"))
        return out

    def conv(self, x, out, name, cout, cin, k, stride=1, pad=1, group=1, activation="none", density=0.3):
        cols = cin // group * k * k
        w = _sparse(self.rng, cout, cols, density, self.dtype)
        names, b = self._csr(name, w, True)
        self.nodes.append(make_node(CONV_OP, x, names, b, out, name, (cout, cols), activation, f"{name}.weight",
                                    (cout, cin // group, k, k), "Conv", kernel_shape=(k, k), strides=(stride, stride),
                                    pads=(pad, pad, pad, pad), dilations=(1, 1), group=group))
        return out

    def node(self, op, inputs, outputs, **attrs):
        self.nodes.append(helper.make_node(op, inputs, outputs, name=f"n_{outputs[0]}", **attrs))
        return outputs[0]

    def model(self, x_shape, y_shape) -> onnx.ModelProto:
        elem = helper.np_dtype_to_tensor_dtype(self.dtype)
        graph = helper.make_graph(self.nodes, "fuzz", [helper.make_tensor_value_info("x", elem, list(x_shape))],
                                  [helper.make_tensor_value_info("y", elem, list(y_shape))], self.inits)
        return helper.make_model(graph, opset_imports=OPSET, ir_version=9)


def mlp(seed: int = 0, **kw) -> onnx.ModelProto:
    """x[N, 32] -> SparseLinear relu -> SparseLinear -> Softmax (ORT) -> Add -> SparseLinear -> y."""
    b = Builder(seed, **kw)
    h = b.linear("x", "h1", "fc1", 64, 32, "relu")
    h = b.linear(h, "h2", "fc2", 48, 64, "gelu", density=0.5)
    h = b.node("Softmax", [h], ["s"], axis=-1)
    h = b.node("Add", [h, b.const("shift", np.full((1, 48), 0.5, b.dtype))], ["a"])
    b.linear(h, "y", "head", 10, 48, density=0.9)
    return b.model(["N", 32], ["N", 10])


def cnn(seed: int = 0, **kw) -> onnx.ModelProto:
    """x[N, 3, 10, 10] -> conv s1 -> Add const -> conv s2 (grouped) -> Transpose (ORT) -> ReduceMean -> Reshape -> Linear."""
    b = Builder(seed, **kw)
    h = b.conv("x", "c1", "conv1", 16, 3, 3, activation="relu")
    h = b.node("Add", [h, b.const("bias_map", b.rng.standard_normal((1, 16, 10, 10)).astype(b.dtype))], ["a1"])
    h = b.conv(h, "c2", "conv2", 24, 16, 3, stride=2, group=2)
    h = b.node("Transpose", [h], ["t"], perm=[0, 1, 3, 2])
    h = b.node("ReduceMean", [h, b.const("axes", np.array([2, 3], np.int64))], ["m"], keepdims=0)
    h = b.node("Reshape", [h, b.const("shape", np.array([0, -1], np.int64))], ["r"])
    b.linear(h, "y", "head", 10, 24)
    return b.model(["N", 3, 10, 10], ["N", 10])


MODELS = {"mlp": (mlp, (32,)), "cnn": (cnn, (3, 10, 10))}


def feeds(kind: str, batch: int, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Seeded unit-scale inputs for ``kind``."""
    return {"x": np.random.default_rng(seed).standard_normal((batch, *MODELS[kind][1])).astype(dtype)}


def reference(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The outputs of ``model`` under onnx's reference evaluator with the ai.sparsify reference ops."""
    return reference_evaluator(model).run(None, feed)
