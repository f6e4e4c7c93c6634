"""Depthwise Conv and Clip as numpy glue: ONNX Runtime's results, and ORT for the convs they do not take."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsify.errors import ModelFileError
from sparsify.passes.csr import CsrPass
from sparsify.runtime import Session, glue
from tests.helpers import assert_close

C = 4


def model(nodes, inits, x_shape=("n", C, 9, 11), opset=17, inputs=()):
    """The ops under test on input ``x`` (output ``y``) beside a sparse Gemm on input ``z``
    (output ``zy``): the ops form their own run of standard nodes, a step of its own."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((5, 8)) * (rng.random((5, 8)) < 0.4)).astype(np.float32)
    graph = helper.make_graph(
        [*nodes, helper.make_node("Gemm", ["z", "wz"], ["zy"], transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape)),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 8]), *inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("zy", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in {**inits, "wz": w}.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def session_and_reference(tmp_path, dense, name="m"):
    """Our Session on ``dense`` with its layers of density <= 0.6 converted (the dense convs
    under test stay standard nodes), and ONNX Runtime on ``dense``."""
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(CsrPass(density_threshold=0.6).call(dense).model.SerializeToString())
    return Session(path), ort.InferenceSession(dense.SerializeToString(), providers=["CPUExecutionProvider"])


def glue_kind(sess):
    """The kind of the step that runs the ops under test (not the sparse Gemm's)."""
    (kind,) = [s.kind for s in sess.steps if "y" in s.outputs]
    return kind


def check_against_ort(sess, ref, x_shape=(C, 9, 11), extra=None, batches=(1, 2)):
    rng = np.random.default_rng(1)
    for n in batches:
        feeds = {"x": (rng.standard_normal((n, *x_shape)) * 2).astype(np.float32),
                 "z": rng.standard_normal((n, 8)).astype(np.float32), **(extra or {})}
        for got, want in zip(sess.run(None, feeds), ref.run(None, feeds)):
            assert_close(got, want, atol=1e-5, rtol=0)


def dw_inits(rng, m=1, k=3, bias=True):
    inits = {"w": rng.standard_normal((C * m, 1, k, k)).astype(np.float32), "lo": np.float32(0), "hi": np.float32(6),
             "lo2": np.float32(-1), "hi2": np.float32(2)}
    if bias:
        inits["b"] = rng.standard_normal(C * m).astype(np.float32)
    return inits


CONVS = {
    "3x3 pad 1": dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "3x3 stride 2": dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
    "5x5 stride 2": dict(kernel_shape=[5, 5], pads=[2, 2, 2, 2], strides=[2, 2], k=5),
    "dilation 2": dict(pads=[2, 2, 2, 2], dilations=[2, 2]),
    "asymmetric pads": dict(pads=[0, 1, 2, 1], strides=[1, 2]),
    "VALID": dict(auto_pad="VALID", strides=[2, 1]),
    "SAME_UPPER": dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    "SAME_LOWER": dict(auto_pad="SAME_LOWER", strides=[2, 2], k=5),
    "multiplier 2, no bias": dict(pads=[1, 1, 1, 1], m=2, bias=False),
}


@pytest.mark.parametrize("conv", list(CONVS))
@pytest.mark.parametrize("before, after", [(False, "Clip"), (True, "Relu"), (True, None)])
def test_depthwise_conv_with_clips_runs_as_glue_and_matches_ort(tmp_path, monkeypatch, conv, before, after):
    spec = dict(CONVS[conv])
    m, k, bias = spec.pop("m", 1), spec.pop("k", 3), spec.pop("bias", True)
    inits = dw_inits(np.random.default_rng(0), m, k, bias)
    x = "x"
    nodes = []
    if before:  # a Clip that is not ReLU6: no sparse op absorbs it
        nodes.append(helper.make_node("Clip", ["x", "lo2", "hi2"], ["xc"]))
        x = "xc"
    conv_out = "y" if after is None else "d"
    nodes.append(helper.make_node("Conv", [x, "w"] + (["b"] if bias else []), [conv_out], group=C, **spec))
    if after == "Clip":
        nodes.append(helper.make_node("Clip", ["d", "lo", "hi"], ["y"]))
    elif after == "Relu":
        nodes.append(helper.make_node("Relu", ["d"], ["y"]))
    # The Clips run inside the Conv's kernel pass: the separate numpy Clip is never compiled.
    monkeypatch.setitem(glue.GLUE_OPS, "Clip", lambda node, consts: pytest.fail("Clip compiled on its own"))
    sess, ref = session_and_reference(tmp_path, model(nodes, inits))
    assert glue_kind(sess) == "numpy"
    check_against_ort(sess, ref)


def test_a_clip_read_elsewhere_is_not_fused_and_still_matches(tmp_path):
    inits = dw_inits(np.random.default_rng(1))
    nodes = [helper.make_node("Clip", ["x", "lo2", "hi2"], ["xc"]),
             helper.make_node("Conv", ["xc", "w", "b"], ["d"], group=C, pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["d", "xc"], ["y"])]
    sess, ref = session_and_reference(tmp_path, model(nodes, inits))
    assert glue_kind(sess) == "numpy"
    check_against_ort(sess, ref)


@pytest.mark.parametrize("case", ["group 1", "grouped", "weight input", "SAME with dilation"])
def test_other_convs_stay_in_onnx_runtime(tmp_path, case):
    rng = np.random.default_rng(2)
    inits, inputs, extra = {"b": rng.standard_normal(C).astype(np.float32)}, [], None
    attrs = dict(pads=[1, 1, 1, 1])
    if case == "group 1":
        inits["w"] = rng.standard_normal((C, C, 3, 3)).astype(np.float32)
    elif case == "grouped":
        inits["w"] = rng.standard_normal((C, 2, 3, 3)).astype(np.float32)
        attrs["group"] = C // 2
    elif case == "weight input":
        inputs = [helper.make_tensor_value_info("w", TensorProto.FLOAT, [C, 1, 3, 3])]
        extra = {"w": rng.standard_normal((C, 1, 3, 3)).astype(np.float32)}
        attrs["group"] = C
    else:
        inits["w"] = rng.standard_normal((C, 1, 3, 3)).astype(np.float32)
        attrs = dict(group=C, auto_pad="SAME_UPPER", dilations=[2, 2])
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)
    dense = model([conv], inits, inputs=inputs)
    tensors = {i.name: i for i in dense.graph.initializer}
    assert glue.supports(conv) is False and glue.supports(conv, tensors) is False
    sess, ref = session_and_reference(tmp_path, dense)
    assert glue_kind(sess) == "ort"
    if case != "SAME with dilation":  # (ONNX Runtime refuses SAME padding with dilation itself)
        check_against_ort(sess, ref, extra=extra)


def clip_model(inputs, inits, attrs, opset):
    node = helper.make_node("Clip", ["x", *inputs], ["y"], **attrs)
    graph = helper.make_graph([node], "clip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return node, helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


CLIPS = {
    "min and max": (["lo", "hi"], {"lo": -1.0, "hi": 2.0}, {}, 17),
    "min only": (["lo"], {"lo": 0.5}, {}, 17),
    "max only": (["", "hi"], {"hi": 0.5}, {}, 17),
    "neither": ([], {}, {}, 17),
    "min above max": (["lo", "hi"], {"lo": 2.0, "hi": -1.0}, {}, 17),
    "NaN min": (["lo", "hi"], {"lo": np.nan, "hi": 1.0}, {}, 17),
    "bounds of shape [1]": (["lo", "hi"], {"lo": [-1.0], "hi": [1.0]}, {}, 17),
    "attributes": ([], {}, {"min": -0.5, "max": 1.5}, 6),
    "attribute min only": ([], {}, {"min": 0.0}, 6),
}


@pytest.mark.parametrize("case", list(CLIPS))
def test_clip_glue_matches_onnx_runtime_exactly(case):
    inputs, inits, attrs, opset = CLIPS[case]
    node, dense = clip_model(inputs, inits, attrs, opset)
    consts = {k: np.asarray(v, np.float32) for k, v in inits.items()}
    assert glue.supports(node, consts)
    x = np.array([np.nan, -np.inf, np.inf, -3, -1, -0.0, 0.0, 0.25, 0.75, 1.5, 3, 1e38], np.float32)
    got = glue.compile_node(node, consts)([x, *[consts.get(v) for v in inputs if v]])[0]
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # (opset 6 draws a warning)
    want = ort.InferenceSession(dense.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32


def test_clip_needs_constant_scalar_bounds():
    node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"])
    assert glue.supports(node, {"lo": np.float32(0), "hi": np.float32(6)})
    assert not glue.supports(node, {"lo": np.float32(0)})  # hi is computed: ORT runs it
    assert not glue.supports(node)  # (no initializers known)
    assert glue.supports(helper.make_node("Clip", ["x"], ["y"]))
    with pytest.raises(ValueError, match=r"Clip max 'hi' has shape \[2\]; expected a scalar"):
        glue.compile_node(node, {"lo": np.float32(0), "hi": np.ones(2, np.float32)})
    both = helper.make_node("Clip", ["x", "lo"], ["y"], min=0.0)
    with pytest.raises(ValueError, match="both min/max attributes and min/max inputs"):
        glue.compile_node(both, {"lo": np.float32(0)})


def test_clip_with_a_computed_bound_runs_in_onnx_runtime(tmp_path):
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0),
             helper.make_node("Clip", ["x", "m"], ["y"])]
    sess, ref = session_and_reference(tmp_path, model(nodes, {}))
    assert glue_kind(sess) == "ort"
    check_against_ort(sess, ref)


def test_bad_conv_attributes_are_model_errors_naming_the_node(tmp_path):
    rng = np.random.default_rng(3)
    for attrs, message in [(dict(kernel_shape=[5, 5]), r"kernel_shape \[5, 5\] differs from the weight's \[3, 3\]"),
                           (dict(strides=[1, 1, 1]), r"strides \[1, 1, 1\] should be 2 ints >= 1"),
                           (dict(pads=[1, -1, 1, 1]), r"pads \[1, -1, 1, 1\] should be 4 ints >= 0")]:
        conv = helper.make_node("Conv", ["x", "w"], ["y"], name="dw", group=C, **attrs)
        path = tmp_path / "bad.onnx"
        path.write_bytes(CsrPass(density_threshold=0.6).call(model([conv], dw_inits(rng))).model.SerializeToString())
        with pytest.raises(ModelFileError, match=rf"Conv node 'dw': ValueError: (Conv )?{message}"):
            Session(path)


def sparse_weight(rng, shape):
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) < 0.7] = 0
    return w


@pytest.mark.parametrize("stride", [1, 2])
def test_a_mobilenet_v2_block_with_sparse_1x1_convs_runs_without_onnx_runtime(tmp_path, stride):
    # sparse 1x1 (expand) -> ReLU6 -> depthwise 3x3 -> ReLU6 -> sparse 1x1 (project); the first
    # ReLU6 goes into the sparse conv, the depthwise conv and the second into one glue pass.
    rng = np.random.default_rng(4)
    e = 6 * C
    inits = {"pw1": sparse_weight(rng, (e, C, 1, 1)), "b1": rng.standard_normal(e).astype(np.float32),
             "dw": rng.standard_normal((e, 1, 3, 3)).astype(np.float32), "b2": rng.standard_normal(e).astype(np.float32),
             "pw2": sparse_weight(rng, (C, e, 1, 1)), "lo": np.float32(0), "hi": np.float32(6)}
    nodes = [helper.make_node("Conv", ["x", "pw1", "b1"], ["a"], kernel_shape=[1, 1]),
             helper.make_node("Clip", ["a", "lo", "hi"], ["a6"]),
             helper.make_node("Conv", ["a6", "dw", "b2"], ["d"], group=e, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              strides=[stride, stride]),
             helper.make_node("Clip", ["d", "lo", "hi"], ["d6"]),
             helper.make_node("Conv", ["d6", "pw2"], ["y"], kernel_shape=[1, 1])]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", C, 14, 14])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    dense = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess, ref = session_and_reference(tmp_path, dense)
    assert [s.kind for s in sess.steps] == ["sparse", "numpy", "sparse"]
    assert not any(line.startswith("ort") for line in sess.describe())
    for n in (1, 3):
        x = (rng.standard_normal((n, C, 14, 14)) * 2).astype(np.float32)
        assert_close(sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0], atol=1e-5, rtol=0)


def test_float16_depthwise_conv_and_clip_match_onnx_runtime():
    rng = np.random.default_rng(5)
    consts = {"w": rng.standard_normal((C, 1, 3, 3)).astype(np.float16), "b": rng.standard_normal(C).astype(np.float16),
              "lo": np.float16(0), "hi": np.float16(6)}
    conv = helper.make_node("Conv", ["x", "w", "b"], ["d"], group=C, pads=[1, 1, 1, 1], strides=[2, 2])
    clip = helper.make_node("Clip", ["d", "lo", "hi"], ["y"])
    graph = helper.make_graph([conv, clip], "f16", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    dense = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = (rng.standard_normal((2, C, 9, 8)) * 3).astype(np.float16)
    got = glue.compile_depthwise(conv, consts, None, clip)([x])[0]
    want = ort.InferenceSession(dense.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=2e-3, rtol=2e-3)
