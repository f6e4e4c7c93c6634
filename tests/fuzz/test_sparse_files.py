"""Family (a): sparse ONNX files mutated structurally (CSR arrays, attributes, graph structure)
and by seeded byte flips and truncation, through ``Session``, ``inspect`` and ``sparsify run``.

Every case ends refused cleanly or running to the reference evaluator's result on the same
file (see ``oracle.check_session``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsify.inspect_model import inspect_onnx
from tests.fuzz.conftest import feed_sets
from tests.fuzz.oracle import check_cli, check_session, clean

# Corrupted weights overflow and make NaN in numpy on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

Mutation = Callable[[onnx.ModelProto], None]


# -- helpers that edit a model in place ----------------------------------------------------
def _init(m: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(i for i in m.graph.initializer if i.name == name)


def _node(m: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in m.graph.node if n.name == name)


def arr(name: str, fn: Callable[[np.ndarray], np.ndarray]) -> Mutation:
    def mutate(m):
        t = _init(m, name)
        t.CopyFrom(numpy_helper.from_array(np.asarray(fn(numpy_helper.to_array(t).copy())), name))
    return mutate


def setitem(i, value, dtype=None) -> Callable[[np.ndarray], np.ndarray]:
    def fn(a):
        a = a.astype(dtype) if dtype is not None else a
        a[i] = value
        return a
    return fn


def attr(node: str, name: str, value) -> Mutation:
    def mutate(m):
        n = _node(m, node)
        kept = [a for a in n.attribute if a.name != name]
        del n.attribute[:]
        n.attribute.extend(kept)
        if value is not None:
            n.attribute.append(helper.make_attribute(name, value))
    return mutate


def raw(name: str, fn: Callable[[bytes], bytes]) -> Mutation:
    def mutate(m):
        t = _init(m, name)
        t.raw_data = fn(t.raw_data)
    return mutate


def field(name: str, **fields) -> Mutation:
    def mutate(m):
        t = _init(m, name)
        for k, v in fields.items():
            if k == "dims":
                del t.dims[:]
                t.dims.extend(v)
            else:
                setattr(t, k, v)
    return mutate


def rewire(node: str, slot: str, index: int, value: str) -> Mutation:
    def mutate(m):
        getattr(_node(m, node), slot)[index] = value
    return mutate


def inputs(node: str, names: list[str]) -> Mutation:
    def mutate(m):
        n = _node(m, node)
        del n.input[:]
        n.input.extend(names)
    return mutate


def graph(fn: Callable[[onnx.GraphProto], None]) -> Mutation:
    return lambda m: fn(m.graph)


def model(fn: Callable[[onnx.ModelProto], None]) -> Mutation:
    return fn


def unsort(a):
    i = int(np.flatnonzero(np.diff(a) > 0)[0]) if np.any(np.diff(a) > 0) else 0
    a[i], a[i + 1] = a[i + 1], a[i]
    return a


def _external(m):
    t = _init(m, "fc1.data")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="nowhere.bin")


def _declare(name, dims):
    return graph(lambda g: g.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)))


# Mutations per family of base model ("mlp": nodes fc1, fc2 (gelu), n_s Softmax, n_a Add, head;
# "cnn": conv1, n_a1 Add, conv2 (stride 2, group 2), n_t Transpose, n_m ReduceMean, n_r Reshape, head).
CSR = {
    "indices negative, wraps in int16 (int32)": arr("fc1.indices", setitem(0, -65536 + 28, np.int32)),
    "indices negative, wraps in int16 (int64)": arr("fc1.indices", setitem(0, -65536 + 28, np.int64)),
    "indices negative, wraps in int32 (int64)": arr("fc1.indices", setitem(0, -(1 << 32) + 3, np.int64)),
    "indices wrap down in int16": arr("fc1.indices", setitem(0, 65536 + 3, np.int32)),
    "indices at cols": arr("fc1.indices", setitem(-1, 32)),
    "indices 2^40": arr("fc1.indices", setitem(0, 1 << 40, np.int64)),
    "indices float32": arr("fc1.indices", lambda a: a.astype(np.float32)),
    "indices int8": arr("fc1.indices", lambda a: a.astype(np.int8)),
    "indices 2-D": arr("fc1.indices", lambda a: a.reshape(1, -1)),
    "indices unsorted": arr("fc1.indices", unsort),
    "indices duplicate": arr("fc1.indices", lambda a: np.concatenate([a[:1], a[:1], a[2:]])),
    "indices one short": arr("fc1.indices", lambda a: a[:-1]),
    "indptr starts at 1": arr("fc1.indptr", setitem(0, 1)),
    "indptr decreasing": arr("fc1.indptr", setitem(3, 0)),
    "indptr ends past nnz": arr("fc1.indptr", setitem(-1, 10_000)),
    "indptr negative": arr("fc1.indptr", setitem(5, -7)),
    "indptr 2^62": arr("fc1.indptr", setitem(-1, 1 << 62, np.int64)),
    "indptr float": arr("fc1.indptr", lambda a: a.astype(np.float64)),
    "indptr one short": arr("fc1.indptr", lambda a: a[:-1]),
    "data float16": arr("fc1.data", lambda a: a.astype(np.float16)),
    "data int32": arr("fc1.data", lambda a: a.astype(np.int32)),
    "data NaN": arr("fc1.data", setitem(0, np.nan)),
    "data inf": arr("fc1.data", setitem(slice(0, 3), np.inf)),
    "data huge": arr("fc1.data", lambda a: a * np.float32(3e37)),
    "empty matrix": model(lambda m: [arr("fc1.data", lambda a: a[:0])(m), arr("fc1.indices", lambda a: a[:0])(m),
                                     arr("fc1.indptr", lambda a: np.zeros_like(a))(m)]),
    "bias short": arr("fc1.bias", lambda a: a[:-1]),
    "bias float64": arr("fc1.bias", lambda a: a.astype(np.float64)),
    "bias 2-D": arr("fc1.bias", lambda a: a.reshape(1, -1)),
    "data raw truncated": raw("fc1.data", lambda b: b[:-3]),
    "indices raw truncated": raw("fc1.indices", lambda b: b[: len(b) // 2]),
    "indptr raw empty": raw("fc1.indptr", lambda b: b""),
    "data dims lie": field("fc1.data", dims=[1 << 40]),
    "indices dims negative": field("fc1.indices", dims=[-5]),
    "data type string": field("fc1.data", data_type=TensorProto.STRING),
    "data type unknown": field("fc1.data", data_type=99),
    "data as external file that is missing": model(_external),
    "bias not an initializer": rewire("fc1", "input", 4, "x"),
    "indices not an initializer": rewire("fc1", "input", 2, "h1"),
}
ATTRS = {
    "shape rows + 1": attr("fc1", "shape", [65, 32]),
    "shape cols + 7": model(lambda m: [attr("fc2", "shape", [48, 71])(m), attr("fc2", "weight_shape", [48, 71])(m)]),
    "shape 2^40 rows": model(lambda m: [attr("fc1", "shape", [1 << 40, 32])(m),
                                        attr("fc1", "weight_shape", [1 << 40, 32])(m)]),
    "shape 2^40 cols": model(lambda m: [attr("fc1", "shape", [64, 1 << 40])(m),
                                        attr("fc1", "weight_shape", [64, 1 << 40])(m)]),
    "shape negative": attr("fc1", "shape", [-64, 32]),
    "shape three ints": attr("fc1", "shape", [64, 32, 1]),
    "shape missing": attr("fc1", "shape", None),
    "shape as floats": attr("fc1", "shape", [64.0, 32.0]),
    "shape as a string": attr("fc1", "shape", "64,32"),
    "activation swish": attr("fc1", "activation", "swish"),
    "activation not UTF-8": attr("fc1", "activation", b"\xffrelu"),
    "activation missing": attr("fc1", "activation", None),
    "activation as int": attr("fc1", "activation", 1),
    "weight_shape wrong": attr("fc1", "weight_shape", [3, 3]),
    "weight_name not UTF-8": attr("fc1", "weight_name", b"\xc3\x28"),
    "unknown attribute": attr("fc1", "colour", "blue"),
    "op type unknown": model(lambda m: setattr(_node(m, "fc1"), "op_type", "SparseFoo")),
    "three inputs": inputs("fc1", ["x", "fc1.data", "fc1.indices"]),
    "six inputs": inputs("fc1", ["x", "fc1.data", "fc1.indices", "fc1.indptr", "fc1.bias", "fc1.bias"]),
    "two outputs": model(lambda m: _node(m, "fc1").output.append("extra")),
    "empty X": rewire("fc1", "input", 0, ""),
    "X is an initializer": rewire("fc2", "input", 0, "shift"),
}
CONV = {
    "kernel 1x1 for a 3x3 weight": attr("conv1", "kernel_shape", [1, 1]),
    "kernel 0x3": attr("conv1", "kernel_shape", [0, 3]),
    "kernel one int": attr("conv1", "kernel_shape", [3]),
    "pads 100000": attr("conv1", "pads", [100_000] * 4),
    "pads asymmetric": attr("conv1", "pads", [1, 1, 2, 2]),
    "pads negative": attr("conv1", "pads", [-1] * 4),
    "pads 5": attr("conv1", "pads", [5] * 4),
    "strides 0": attr("conv1", "strides", [0, 0]),
    "strides 2 before an Add of the full size": attr("conv1", "strides", [2, 2]),
    "strides 100": attr("conv2", "strides", [100, 100]),
    "dilations 9": attr("conv1", "dilations", [9, 9]),
    "dilations 0": attr("conv1", "dilations", [0, 0]),
    "dilations 2": attr("conv1", "dilations", [2, 2]),
    "dilations 50000 with pads 50000": model(lambda m: [attr("conv1", "dilations", [50_000, 50_000])(m),
                                                        attr("conv1", "pads", [50_000] * 4)(m)]),
    "group 0": attr("conv1", "group", 0),
    "group 16": attr("conv1", "group", 16),
    "group 1 on the grouped conv": attr("conv2", "group", 1),
    "group 4 on the grouped conv": attr("conv2", "group", 4),
    "group as float": attr("conv2", "group", 2.0),
    "conv output declared smaller": model(lambda m: [_declare("c2", ["N", 24, 5, 5])(m),
                                                     attr("conv2", "strides", [1, 1])(m)]),
    "input declared float64": graph(lambda g: setattr(g.input[0].type.tensor_type, "elem_type", TensorProto.DOUBLE)),
    "input declared with 4 channels": graph(lambda g: setattr(g.input[0].type.tensor_type.shape.dim[1], "dim_value", 4)),
    "reshape to [-1, -1]": arr("shape", lambda a: np.array([-1, -1], np.int64)),
    "reshape to [0, 64]": arr("shape", lambda a: np.array([0, 64], np.int64)),
    "reshape to [-2, 12]": arr("shape", lambda a: np.array([-2, 12], np.int64)),
    "reshape shape float": arr("shape", lambda a: a.astype(np.float32)),
    "reshape shape from the input": rewire("n_r", "input", 1, "x"),
    "reduce axes [-5, -6]": arr("axes", lambda a: np.array([-5, -6], np.int64)),
    "reduce axes [4]": arr("axes", lambda a: np.array([4], np.int64)),
    "reduce axes float": arr("axes", lambda a: a.astype(np.float32)),
    "transpose perm invalid": attr("n_t", "perm", [0, 1, 2, 2]),
    "add of a mismatched constant": arr("bias_map", lambda a: a[:, :, :7]),
}
GRAPH = {
    "input nobody produces": rewire("n_a1", "input", 0, "view"),
    "cycle through a sparse op": rewire("conv1", "input", 0, "a1"),
    "graph output nobody produces": graph(lambda g: setattr(g.output[0], "name", "nothing")),
    "value written twice": rewire("n_t", "output", 0, "c1"),
    "node writes the graph input": rewire("n_t", "output", 0, "x"),
    "initializer shadows the graph input": graph(lambda g: g.initializer.append(
        numpy_helper.from_array(np.zeros((1, 3, 10, 10), np.float32), "x"))),
    "duplicate graph inputs": graph(lambda g: g.input.append(g.input[0])),
    "graph input without a type": graph(lambda g: g.input[0].ClearField("type")),
    "output declared with the wrong shape": graph(lambda g: setattr(g.output[0].type.tensor_type.shape.dim[1],
                                                                    "dim_value", 11)),
    "node in an unknown domain": model(lambda m: setattr(_node(m, "n_t"), "domain", "com.evil")),
    "no standard opset": model(lambda m: [o for o in m.opset_import if o.domain == ""][0].__setattr__("version", 1)),
    "opset 99": model(lambda m: [o for o in m.opset_import if o.domain == ""][0].__setattr__("version", 99)),
    "ir_version 0": model(lambda m: setattr(m, "ir_version", 0)),
    "no nodes": graph(lambda g: g.ClearField("node")),
}

# (case name, base kinds it applies to, mutation): CSR/attribute cases on MLPs (names fc1/fc2),
# conv cases on CNNs, graph cases on the CNN.
CASES = ([(name, kind, fn) for name, fn in {**CSR, **ATTRS}.items() for kind in ("mlp", "mlp-i64", "mlp-u16")]
         + [(name, kind, fn) for name, fn in CONV.items() for kind in ("cnn", "cnn-f64")]
         + [(name, "cnn", fn) for name, fn in GRAPH.items()])


def _write(model_: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model_.SerializeToString())
    return path


def _applies(fn: Mutation, m: onnx.ModelProto) -> bool:
    try:
        fn(m)
        return True
    except (StopIteration, ValueError, TypeError, IndexError):  # e.g. a float64 model's raw sizes differ
        return False


@pytest.mark.parametrize("name, kind, mutate", CASES, ids=[f"{c[1]}:{c[0]}" for c in CASES])
def test_structural_mutation_is_refused_cleanly_or_runs_correctly(base_files, tmp_path, name, kind, mutate):
    m = onnx.load(str(base_files[kind]))
    if not _applies(mutate, m):
        pytest.skip(f"{name} does not apply to {kind}")
    path = _write(m, tmp_path / "m.onnx")
    check_session(path, feed_sets(kind))
    clean(inspect_onnx, path)


@pytest.mark.parametrize("glue", ["ort"])
@pytest.mark.parametrize("name", sorted(CONV) + sorted(GRAPH))
def test_structural_mutation_with_every_segment_in_ort(base_files, tmp_path, name, glue):
    m = onnx.load(str(base_files["cnn"]))
    if not _applies({**CONV, **GRAPH}[name], m):
        pytest.skip(f"{name} does not apply")
    check_session(_write(m, tmp_path / "m.onnx"), feed_sets("cnn"), glue=glue)


def framing(data: bytes, model_: onnx.ModelProto) -> np.ndarray:
    """Offsets of ``data`` (the serialized model) outside every tensor's payload: names,
    attributes, dims, lengths, the protobuf framing itself."""
    keep = np.ones(len(data), dtype=bool)
    for init in model_.graph.initializer:
        if len(init.raw_data) > 16:
            start = data.find(init.raw_data)
            keep[start:start + len(init.raw_data)] = False
    return np.flatnonzero(keep)


def byte_flip(data: bytes, rng: np.random.Generator, structure: np.ndarray) -> bytes:
    """One seeded corruption: flipped bits anywhere or in the framing (``structure``: offsets
    outside tensor payloads), overwritten bytes, a cut, or a deleted run."""
    buf = bytearray(data)
    how = rng.integers(0, 5)
    if how == 4:
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.choice(structure))
            buf[i] = int(rng.integers(0, 256))
    elif how == 0:
        for _ in range(int(rng.integers(1, 5))):
            i = int(rng.integers(0, len(buf)))
            buf[i] ^= 1 << int(rng.integers(0, 8))
    elif how == 1:
        i = int(rng.integers(0, len(buf) - 8))
        buf[i:i + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
    elif how == 2:
        del buf[int(rng.integers(0, len(buf))):]
    else:
        i = int(rng.integers(0, len(buf)))
        del buf[i:i + int(rng.integers(1, 16))]
    return bytes(buf)


@pytest.mark.seeds(200, 4000)
def test_byte_flipped_file_is_refused_cleanly_or_runs_correctly(base_files, tmp_path, capfd, seed):
    rng = np.random.default_rng(seed)
    kinds = sorted(base_files)
    kind = kinds[seed % len(kinds)]
    data = base_files[kind].read_bytes()
    path = tmp_path / "flipped.onnx"
    path.write_bytes(byte_flip(data, rng, framing(data, onnx.load(str(base_files[kind])))))
    check_session(path, feed_sets(kind))
    clean(inspect_onnx, path)
    if seed % 10 == 0:  # the same files through the CLI: exit codes, one line on stderr
        np.save(tmp_path / "x.npy", feed_sets(kind)[1]["x"])
        check_cli(["run", str(path), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")], capfd)
        check_cli(["inspect", str(path)], capfd)


CLI_CASES = ["indices negative, wraps in int16 (int32)", "activation not UTF-8", "shape 2^40 rows", "data NaN"]


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_run_and_inspect_exit_cleanly(base_files, tmp_path, capfd, name):
    m = onnx.load(str(base_files["mlp"]))
    {**CSR, **ATTRS}[name](m)
    path = _write(m, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", feed_sets("mlp")[1]["x"])
    out = tmp_path / "y.npy"
    code = check_cli(["run", str(path), "--input", str(tmp_path / "x.npy"), "-o", str(out)], capfd)
    assert out.exists() == (code == 0)
    check_cli(["inspect", str(path)], capfd)
