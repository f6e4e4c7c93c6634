"""Family (c): ONNX files given to ``inspect``, ``bench`` and ``run`` (dense graphs run by ONNX
Runtime, and sparse ones): declared shapes that would allocate too much or overflow int64,
external-data entries that lie or point outside the model's folder, text that is not UTF-8,
truncated tensors, odd input types, and seeded byte flips. Each ends in exit 0, or exit 2
with one line on stderr."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsify.inspect_model import inspect_path
from tests.fuzz.oracle import check_cli, clean
from tests.fuzz.test_sparse_files import byte_flip, framing

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

OPSET = [helper.make_opsetid("", 18)]


def dense(x_shape=("N", 8), elem=TensorProto.FLOAT, w_shape=(8, 4)) -> onnx.ModelProto:
    """x @ W + b -> Relu: the smallest model with a MAC count."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32), "W"),
             numpy_helper.from_array(np.ones(w_shape[-1], np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", elem, None if x_shape is None else list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=OPSET)


def relu(x_shape) -> onnx.ModelProto:
    """y = Relu(x), with x declared as ``x_shape``."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x_shape))])
    return helper.make_model(graph, opset_imports=OPSET)


def _external(tmp: Path, model: onnx.ModelProto, **entries: str | None) -> onnx.ModelProto:
    """``model`` with W stored in ``w.bin`` beside it, its entries overridden (None removes one)."""
    w = model.graph.initializer[0]
    (tmp / "w.bin").write_bytes(w.raw_data)
    values = {"location": "w.bin", "offset": "0", "length": str(len(w.raw_data))}
    values.update(entries)
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in values.items():
        if v is not None:
            w.external_data.add(key=k, value=v)
    return model


def _rename(model: onnx.ModelProto, raw_name: bytes) -> bytes:
    """The serialized model with the MatMul's name replaced by raw bytes (not UTF-8)."""
    model.graph.node[0].name = "NODE_NAME"
    return model.SerializeToString().replace(b"NODE_NAME", raw_name.ljust(9, b"_")[:9])


Case = Callable[[Path], bytes]
CASES: dict[str, Case] = {
    "declared input of 10^9 elements": lambda t: relu((1, 10**9)).SerializeToString(),
    "MAC count beyond int64": lambda t: dense(x_shape=("N", 2**31, 2**31, 8)).SerializeToString(),
    "negative declared dim": lambda t: dense(x_shape=("N", -8)).SerializeToString(),
    "zero declared dim": lambda t: dense(x_shape=(0, 8)).SerializeToString(),
    "no declared shape": lambda t: dense(x_shape=None).SerializeToString(),
    "string input": lambda t: dense(elem=TensorProto.STRING).SerializeToString(),
    "complex input": lambda t: dense(elem=TensorProto.COMPLEX64).SerializeToString(),
    "bfloat16 input": lambda t: dense(elem=TensorProto.BFLOAT16).SerializeToString(),
    "unknown element type": lambda t: dense(elem=99).SerializeToString(),
    "truncated initializer": lambda t: _truncate(dense()),
    "initializer dims lie": lambda t: _dims(dense(), [1 << 40, 4]),
    "external data: valid": lambda t: _external(t, dense()).SerializeToString(),
    "external data: negative offset": lambda t: _external(t, dense(), offset="-4").SerializeToString(),
    "external data: non-numeric length": lambda t: _external(t, dense(), length="12abc").SerializeToString(),
    "external data: offset past the file": lambda t: _external(t, dense(), offset="4096").SerializeToString(),
    "external data: length past the file": lambda t: _external(t, dense(), length="999999").SerializeToString(),
    "external data: path traversal": lambda t: _external(t, dense(), location="../../etc/passwd").SerializeToString(),
    "external data: absolute path": lambda t: _external(t, dense(), location="/etc/passwd").SerializeToString(),
    "external data: symlink escaping": lambda t: _symlinked(t),
    "external data: no location": lambda t: _external(t, dense(), location=None).SerializeToString(),
    "node name not UTF-8": lambda t: _rename(dense(), b"\xff\xfe"),
    "graph with a cycle": lambda t: _cycle(dense()),
}


def _truncate(model):
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-7]
    return model.SerializeToString()


def _dims(model, dims):
    del model.graph.initializer[0].dims[:]
    model.graph.initializer[0].dims.extend(dims)
    return model.SerializeToString()


def _symlinked(tmp: Path) -> bytes:
    outside = tmp.parent / f"{tmp.name}-outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.bin").write_bytes(b"\0" * 128)
    link = tmp / "link.bin"
    if not link.exists():
        link.symlink_to(outside / "secret.bin")
    return _external(tmp, dense(), location="link.bin").SerializeToString()


def _cycle(model):
    model.graph.node[0].input[0] = "y"
    return model.SerializeToString()


def _commands(path: Path, tmp: Path) -> list[list[str]]:
    np.save(tmp / "x.npy", np.ones((2, 8), np.float32))
    return [["inspect", str(path)],
            ["bench", str(path), "--repeat", "1", "--warmup", "0", "--no-memory", "--no-progress"],
            ["run", str(path), "--input", str(tmp / "x.npy"), "-o", str(tmp / "y.npy")]]


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_file_through_inspect_bench_and_run_exits_cleanly(tmp_path, capfd, name):
    path = tmp_path / "m.onnx"
    path.write_bytes(CASES[name](tmp_path))
    codes = [check_cli(argv, capfd) for argv in _commands(path, tmp_path)]
    if name.startswith("external data:") and name != "external data: valid":
        assert codes == [2, 2, 2]
    if name in ("declared input of 10^9 elements", "MAC count beyond int64"):
        assert codes[1:] == [2, 2]  # bench and run refuse before allocating anything
    if name == "MAC count beyond int64":
        assert codes[0] == 2  # inspect refuses to print a wrapped count


@pytest.mark.seeds(40, 800)
def test_byte_flipped_dense_file_through_inspect_bench_and_run(tmp_path, capfd, seed):
    data = dense().SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(byte_flip(data, np.random.default_rng(seed), framing(data, dense())))
    clean(inspect_path, path)
    for argv in _commands(path, tmp_path)[1:]:
        check_cli(argv, capfd)
