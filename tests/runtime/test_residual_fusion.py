"""A sparse conv, the residual Add after it and the Relu after that run as one kernel pass."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsify.passes.csr import CsrPass
from sparsify.runtime import Session
from tests.helpers import assert_close


def sparse_conv_weight(rng, out, c, k):
    w = rng.standard_normal((out, c, k, k)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0
    return w


def residual_model(extra_nodes=(), extra_outputs=(), conv_attrs=None, k=1, res_input="x", res_shape=None,
                   relu=True):
    """x (N, 8, 6, 7) -> sparse conv a (8 -> 8, k x k) -> Add(a, x) -> Relu -> sparse 1x1 conv b -> y."""
    rng = np.random.default_rng(5)
    inits = {"wa": sparse_conv_weight(rng, 8, 8, k), "ba": rng.standard_normal(8).astype(np.float32),
             "wb": sparse_conv_weight(rng, 4, 8, 1)}
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", pads=[k // 2] * 4, **(conv_attrs or {})),
             helper.make_node("Add", ["a", res_input], ["s"], name="add"),
             *([helper.make_node("Relu", ["s"], ["r"], name="relu")] if relu else []),
             helper.make_node("Conv", ["r" if relu else "s", "wb"], ["y"], name="conv_b"), *extra_nodes]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 6, 7])]
    if res_shape is not None:
        inputs.append(helper.make_tensor_value_info(res_input, TensorProto.FLOAT, res_shape))
    graph = helper.make_graph(nodes, "residual", inputs,
                              [helper.make_tensor_value_info(v, TensorProto.FLOAT, None) for v in ("y", *extra_outputs)],
                              [numpy_helper.from_array(v, n) for n, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def sessions(tmp_path, dense):
    path = tmp_path / "m.onnx"
    path.write_bytes(CsrPass(density_threshold=0.6).call(dense).model.SerializeToString())
    return (Session(path), Session(path, glue="ort"),
            ort.InferenceSession(dense.SerializeToString(), providers=["CPUExecutionProvider"]))


def feeds_for(sess, n, rng):
    out = {"x": rng.standard_normal((n, 8, 6, 7)).astype(np.float32)}
    for i in sess.get_inputs()[1:]:
        out[i.name] = rng.standard_normal([n if d == "n" else d for d in i.shape]).astype(np.float32)
    return out


def run_all(fused, apart, ref, batches=(1, 3)):
    rng = np.random.default_rng(0)
    for n in batches:
        feeds = feeds_for(fused, n, rng)
        got, want = fused.run(None, feeds), apart.run(None, feeds)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)  # the fused pass adds exactly as a separate Add
        for g, w in zip(got, ref.run(None, feeds)):
            assert_close(g, w)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("relu", [True, False])
def test_conv_add_relu_is_one_step_and_equal_to_the_separate_ops(tmp_path, k, relu):
    fused, apart, ref = sessions(tmp_path, residual_model(k=k, relu=relu))
    first = fused.steps[0]
    assert first.kind == "sparse" and first.nodes[1:] == (["add", "relu"] if relu else ["add"])
    assert [s.kind for s in fused.steps] == ["sparse", "sparse"]
    assert fused.steps[0].outputs == ["r" if relu else "s"] and set(first.inputs) == {"x"}
    run_all(fused, apart, ref)


def test_no_fusion_when_the_conv_output_or_the_sum_is_read_elsewhere(tmp_path):
    # The conv's output is also a graph output: nothing fuses.
    fused, apart, ref = sessions(tmp_path, residual_model(extra_outputs=("a",)))
    assert [s.nodes for s in fused.steps] == [["conv_a.sparse"], ["add", "relu"], ["conv_b.sparse"]]
    run_all(fused, apart, ref)
    # The sum is read again (a second Relu-free branch): the Add fuses, the Relu stays glue.
    extra = [helper.make_node("Mul", ["s", "s"], ["m"], name="mul")]
    fused, apart, ref = sessions(tmp_path, residual_model(extra_nodes=extra, extra_outputs=("m",)))
    assert fused.steps[0].nodes[1:] == ["add"]
    assert any("relu" in s.nodes for s in fused.steps if s.kind == "numpy")
    run_all(fused, apart, ref)


def test_conv_with_its_own_relu_does_not_take_the_residual(tmp_path):
    extra = [helper.make_node("Relu", ["a"], ["ar"], name="relu_a")]
    dense = residual_model()
    dense.graph.node.insert(1, extra[0])
    dense.graph.node[2].input[0] = "ar"  # Add(Relu(conv), x): the Relu fuses into the conv first
    fused, apart, ref = sessions(tmp_path, dense)
    assert fused.layers[0].kernel.activation == "relu"
    assert [s.nodes for s in fused.steps] == [["conv_a.sparse"], ["add", "relu"], ["conv_b.sparse"]]
    run_all(fused, apart, ref)


def test_a_broadcast_residual_runs_the_add_after_the_conv(tmp_path):
    # Add(conv, z) with z (N, 8, 1, 1): fused in the plan, the shapes differ at run time.
    fused, apart, ref = sessions(tmp_path, residual_model(res_input="z", res_shape=["n", 8, 1, 1]))
    assert fused.steps[0].nodes[1:] == ["add", "relu"] and fused.steps[0].inputs == ["x", "z"]
    run_all(fused, apart, ref)
