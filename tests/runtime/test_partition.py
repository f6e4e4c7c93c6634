"""The runtime's step order: sparse and standard nodes regrouped so runs stay long."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from sparsify.passes.csr import CsrPass
from sparsify.runtime import Session
from sparsify.runtime.partition import grouped_order
from tests.helpers import assert_close


def interleaved_model():
    """Three Gemms from x, each followed in the file by its own Sigmoid, then Adds (torch's
    q/reshape/k/reshape/v order): 6 steps in file order, 4 when the Gemms are adjacent."""
    rng = np.random.default_rng(0)
    inits, nodes = {}, []
    for k in range(3):
        w = rng.standard_normal((5, 6)).astype(np.float32)
        w[rng.random(w.shape) < 0.6] = 0
        inits[f"w{k}"] = w
        nodes += [helper.make_node("Gemm", ["x", f"w{k}"], [f"h{k}"], transB=1),
                  helper.make_node("Sigmoid", [f"h{k}"], [f"s{k}"])]
    nodes += [helper.make_node("Add", ["s0", "s1"], ["a"]), helper.make_node("Add", ["a", "s2"], ["y"])]
    graph = helper.make_graph(nodes, "interleaved", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_projections_from_one_input_become_one_sparse_run(tmp_path):
    dense = interleaved_model()
    path = tmp_path / "m.onnx"
    path.write_bytes(CsrPass(density_threshold=1.0).call(dense).model.SerializeToString())
    sess = Session(path)
    assert [s.kind for s in sess.steps] == ["sparse", "sparse", "sparse", "ort"]
    ref = ort.InferenceSession(dense.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    assert_close(sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0])


def test_grouped_order_is_topological_and_keeps_file_order_within_a_kind():
    nodes = list(interleaved_model().graph.node)
    order = grouped_order(nodes, sparse={0, 2, 4})
    assert order == [0, 2, 4, 1, 3, 5, 6, 7]
    # A chain alternating kinds cannot be regrouped: the file's order stays.
    chain = [helper.make_node("Relu", [f"v{i}"], [f"v{i + 1}"]) for i in range(5)]
    assert grouped_order(chain, sparse={1, 3}) == [0, 1, 2, 3, 4]
    # Starting kind: whichever ready node comes first in the file.
    assert grouped_order(nodes, sparse=set()) == list(range(8))
