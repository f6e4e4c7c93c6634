"""Tiny models and fake backends for the benchmark harness tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsify.bench import backends
from sparsify.bench.backends import InputSpec


def save_model(path: Path, nodes, inputs, outputs, initializers=(), extra_opsets=()) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in extra_opsets)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    onnx.save(model, path)
    return path


def matmul_weight() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32)


@pytest.fixture
def matmul_onnx(tmp_path: Path) -> Path:
    """y = x @ W with x of shape (N, 8), N dynamic."""
    w = numpy_helper.from_array(matmul_weight(), "W")
    return save_model(
        tmp_path / "matmul.onnx",
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [w],
    )


@pytest.fixture
def add_onnx(tmp_path: Path) -> Path:
    """y = x + x with x of shape (N, 8)."""
    return save_model(
        tmp_path / "add.onnx",
        [helper.make_node("Add", ["x", "x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
    )


@pytest.fixture
def sparse_onnx(tmp_path: Path) -> Path:
    """A graph with one node in the ai.sparsify domain (never run in these tests)."""
    return save_model(
        tmp_path / "sparse.onnx",
        [helper.make_node("CsrMatMul", ["x"], ["y"], domain="ai.sparsify")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        extra_opsets=["ai.sparsify"],
    )


class FakeRunner:
    """Records every call in a shared log and advances a fake clock by cost_per_sample * batch."""

    def __init__(self, name: str, log: list[str], clock: list[int], cost: int) -> None:
        self.name, self.log, self.clock, self.cost = name, log, clock, cost
        self.input_specs = [InputSpec("x", ("N", 8), np.dtype(np.float32))]

    def run(self, feeds):
        self.log.append(self.name)
        self.clock[0] += self.cost * feeds["x"].shape[0]
        return [feeds["x"]]


class FakeBackend:
    """Loads a FakeRunner whose name is the model file's stem; costs come from ``costs``."""

    name = "fake"

    def __init__(self, log: list[str], clock: list[int], costs: dict[str, int]) -> None:
        self.log, self.clock, self.costs = log, clock, costs
        self.loaded: list[tuple[str, int]] = []

    def load(self, path: Path, threads: int):
        self.loaded.append((path.stem, threads))
        return FakeRunner(path.stem, self.log, self.clock, self.costs.get(path.stem, 1000))


@pytest.fixture
def fake(monkeypatch):
    """A registered 'fake' backend on a fake clock: returns (backend, call log)."""
    log: list[str] = []
    clock = [0]
    backend = FakeBackend(log, clock, {"matmul": 4000, "add": 2000})
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    backends.register_backend("fake", lambda: backend)
    monkeypatch.setattr("sparsify.bench.timing.perf_counter_ns", lambda: clock[0])
    return backend, log
