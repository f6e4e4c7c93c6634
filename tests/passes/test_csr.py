"""The CSR conversion pass: decisions with reasons, fusion, rewrite equal to the dense model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsify.errors import ExportError
from sparsify.sparse_ops import CONV_OP, DOMAIN, LINEAR_OP, reference_evaluator
from sparsify.passes.csr import LINEAR_CROSSOVER, CsrPass, default_threshold, plan_csr, rewrite_csr
from tests.helpers import assert_close
from tests import models


def by_weight(plan):
    return {d.weight: d for d in plan.decisions}


def ort_run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_default_threshold_comes_from_the_table():
    t1, t8, t64 = default_threshold("linear", 1), default_threshold("linear", 8), default_threshold("linear", 64)
    assert [t1, t8, t64] == [LINEAR_CROSSOVER[b] for b in (1, 8, 64)] and 0 < min(t8, t64) <= max(t8, t64) <= t1 < 1
    assert default_threshold("linear", 5) == t8  # between entries: the next larger measured batch
    assert default_threshold("linear", 9) == default_threshold("linear", 1000) == t64


@pytest.mark.usefixtures("no_model_size_floor")
def test_plan_decides_by_density_and_says_why(dense_files):
    model = onnx.load(str(dense_files["mlp"][1]))
    plan = plan_csr(model, target_batch=1)
    d = by_weight(plan)
    t = default_threshold("linear", 1)
    assert [x.op_type for x in plan.decisions] == ["Gemm", "Gemm", "Gemm"]
    assert d["fc1.weight"].convert and 0.05 < d["fc1.weight"].density < 0.15
    assert f"below threshold {t:.2f} for batch 1" in d["fc1.weight"].reason
    assert d["fc1.weight"].activation == "relu"
    assert d["fc2.weight"].convert == (d["fc2.weight"].density < t)
    assert not d["head.weight"].convert and d["head.weight"].density == 1.0
    assert f"density 1.000 not below threshold {t:.2f} for batch 1" in d["head.weight"].reason
    assert any("kept dense" in line and "head.weight" in line for line in plan.lines())


@pytest.mark.usefixtures("no_model_size_floor")
def test_large_target_batch_lowers_the_threshold(tmp_path):
    t1, t64 = default_threshold("linear", 1), default_threshold("linear", 64)
    density = (t1 + t64) / 2  # converted for batch 1, kept dense for batch 64
    _, path = models.export("mlp", tmp_path / "m.onnx", densities=(density, 1.0, 1.0))
    model = onnx.load(str(path))
    one, many = by_weight(plan_csr(model, target_batch=1)), by_weight(plan_csr(model, target_batch=64))
    assert abs(one["fc1.weight"].density - density) < 0.05
    assert one["fc1.weight"].convert and "for batch 1" in one["fc1.weight"].reason
    assert not many["fc1.weight"].convert and "for batch 64" in many["fc1.weight"].reason


def test_threshold_override_one_converts_even_fully_dense_layers(dense_files):
    model = onnx.load(str(dense_files["mlp"][1]))
    plan = plan_csr(model, density_threshold=1.0)
    assert all(x.convert for x in plan.decisions)
    assert "set by --density-threshold" in by_weight(plan)["head.weight"].reason
    plan0 = plan_csr(model, density_threshold=0.0)
    assert not any(x.convert for x in plan0.decisions)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "x"])
def test_bad_threshold_is_rejected(dense_files, bad):
    with pytest.raises(ExportError, match="density threshold"):
        plan_csr(onnx.load(str(dense_files["mlp"][1])), density_threshold=bad)


def _graph(nodes, inits, inputs, out_shape=None):
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.usefixtures("no_model_size_floor")
def test_structural_skips_carry_reasons():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 8)) * (rng.random((8, 8)) < 0.1)).astype(np.float32)
    wc = np.zeros((8, 1, 3, 3), np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    xb = helper.make_tensor_value_info("wb", TensorProto.FLOAT, [8, 8])
    xi = helper.make_tensor_value_info("xi", TensorProto.FLOAT, [1, 8, 5, 5])
    nodes = [
        helper.make_node("Gemm", ["x", "wb"], ["a"], name="g_input_weight", transB=1),
        helper.make_node("Gemm", ["a", "w"], ["b"], name="g_transA", transA=1),
        helper.make_node("Gemm", ["b", "w"], ["c"], name="g_alpha", alpha=2.0),
        helper.make_node("Conv", ["xi", "wc"], ["d"], name="c_depthwise", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["xi", "wc8"], ["e"], name="c_asym", pads=[0, 0, 1, 1]),
        helper.make_node("Conv", ["xi", "wc8"], ["f"], name="c_same", auto_pad="SAME_UPPER"),
        helper.make_node("Gemm", ["c", "w"], ["y"], name="g_ok", transB=0),
    ]
    model = _graph(nodes, {"w": w, "wc": wc, "wc8": np.zeros((8, 8, 2, 2), np.float32)}, [x, xb, xi])
    d = {x.node: x for x in plan_csr(model).decisions}
    assert d["g_input_weight"].reason == "weight is not an initializer"
    assert d["g_transA"].reason == "Gemm transA=1"
    assert "alpha=2.0" in d["g_alpha"].reason
    assert "groups=8 is depthwise" in d["c_depthwise"].reason
    assert "pads [0, 0, 1, 1] are asymmetric" in d["c_asym"].reason
    assert "auto_pad=SAME_UPPER" in d["c_same"].reason
    assert d["g_ok"].convert and d["g_ok"].transpose  # transB=0: the CSR holds W.T
    assert sum(x.convert for x in d.values()) == 1


def test_relu_fused_only_when_it_is_the_sole_consumer():
    w = np.eye(4, dtype=np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    nodes = [helper.make_node("Gemm", ["x", "w"], ["a"], name="shared", transB=1),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Add", ["a", "r"], ["b"]),
             helper.make_node("Gemm", ["b", "w"], ["c"], name="alone", transB=1),
             helper.make_node("Relu", ["c"], ["y"])]
    model = _graph(nodes, {"w": w}, [x])
    result = CsrPass(density_threshold=1.0).call(model)
    d = {x.node: x for x in result.plan.decisions}
    assert d["shared"].activation == "none" and d["alone"].activation == "relu"
    assert [n.op_type for n in result.model.graph.node] == [LINEAR_OP, "Relu", "Add", LINEAR_OP]
    xv = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    expected = np.maximum(xv + np.maximum(xv, 0), 0)
    assert_close(reference_evaluator(result.model).run(None, {"x": xv})[0], expected)


def test_relu6_fused_only_for_clip_to_constant_0_and_6(tmp_path):
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((6, 3, 1, 1)) * 4).astype(np.float32)  # outputs well beyond 6
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    inits = {"w": w, "zero": np.array(0, np.float32), "six": np.array(6, np.float32),
             "five": np.array(5, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="six"),
             helper.make_node("Clip", ["a", "zero", "six"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["c"], name="five"),
             helper.make_node("Clip", ["c", "zero", "five"], ["d"]),
             helper.make_node("Conv", ["d", "w2"], ["e"], name="min_only"),
             helper.make_node("Clip", ["e", "zero"], ["y"])]
    inits["w2"] = (rng.standard_normal((6, 6, 1, 1)) * 4).astype(np.float32)
    model = _graph(nodes, inits, [x])
    result = CsrPass(density_threshold=1.0).call(model)
    d = {x.node: x for x in result.plan.decisions}
    assert [d[k].activation for k in ("six", "five", "min_only")] == ["relu6", "none", "none"]
    assert [n.op_type for n in result.model.graph.node] == [CONV_OP, CONV_OP, "Clip", CONV_OP, "Clip"]
    xv = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": xv})[0]
    assert_close(reference_evaluator(result.model).run(None, {"x": xv})[0], expected)
    from sparsify.runtime.session import Session
    onnx.save(result.model, str(tmp_path / "s.onnx"))
    got = Session(tmp_path / "s.onnx").run(None, {"x": xv})[0]
    assert_close(got, expected)
    assert (got > 5.9).any()  # the second layer's clip to 5 did not hide the first one's to 6
    from sparsify.passes.densify import densify
    lowered = densify(result.model)
    assert [n.op_type for n in lowered.graph.node].count("Clip") == 3
    assert_close(ort.InferenceSession(lowered.SerializeToString(), providers=["CPUExecutionProvider"])
                 .run(None, {"x": xv})[0], expected)


def test_relu6_in_attribute_form_is_fused():
    w = np.eye(4, dtype=np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    nodes = [helper.make_node("Gemm", ["x", "w"], ["a"], name="fc", transB=1),
             helper.make_node("Clip", ["a"], ["y"], min=0.0, max=6.0)]
    g = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 6)])
    assert plan_csr(model, density_threshold=1.0).decisions[0].activation == "relu6"


@pytest.mark.parametrize("kind", ["mlp", "gelu", "cnn"])
def test_rewrite_checks_and_reference_evaluator_equals_dense(dense_files, kind):
    _, path = dense_files[kind]
    dense = onnx.load(str(path))
    result = CsrPass(density_threshold=1.0).call(dense)
    model = result.model
    assert result.modified
    onnx.checker.check_model(model, full_check=True)
    assert any(o.domain == DOMAIN for o in model.opset_import)
    ops = [n.op_type for n in model.graph.node]
    assert not {"Gemm", "MatMul", "Conv"} & set(ops), ops
    if kind == "gelu":
        assert ops == [LINEAR_OP, LINEAR_OP]  # MatMul+Add+erf-GELU fused into the first op
        assert result.plan.decisions[0].activation == "gelu"
    if kind == "cnn":
        assert ops.count(CONV_OP) == 4
    # Dense weights are gone from the file.
    names = {i.name for i in model.graph.initializer}
    assert not any(d.weight in names for d in result.plan.converted)
    for batch in (1, 5):
        x = models.inputs(kind, batch, seed=batch)
        assert_close(reference_evaluator(model).run(None, {"x": x})[0], ort_run(path, x))


@pytest.mark.usefixtures("no_model_size_floor")
def test_fully_pruned_layer_converts_to_an_empty_csr(tmp_path):
    model, path = models.export("mlp", tmp_path / "m.onnx", densities=(0.1, 0.0, 0.2))
    result = CsrPass().call(onnx.load(str(path)))
    fc2 = by_weight(result.plan)["fc2.weight"]
    assert fc2.convert and fc2.nnz == 0
    data = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    assert data["fc2.weight.csr_data"].shape == (0,)
    assert (data["fc2.weight.csr_indptr"] == 0).all()
    x = models.inputs("mlp", 3)
    assert_close(reference_evaluator(result.model).run(None, {"x": x})[0], ort_run(path, x))


def test_sparse_file_is_smaller_in_proportion_to_density(tmp_path):
    _, path = models.export("mlp", tmp_path / "m.onnx", densities=(0.1, 0.1, 0.1))
    result = CsrPass(density_threshold=1.0).call(onnx.load(str(path)))
    onnx.save(result.model, str(tmp_path / "s.onnx"))
    dense_w = sum(d.weight_shape[0] * d.weight_shape[1] * 4 for d in result.plan.converted)
    nnz = sum(d.nnz for d in result.plan.converted)
    saved = (path.stat().st_size - (tmp_path / "s.onnx").stat().st_size)
    sparse_w = dense_w - saved
    # float32 values + int16 column indices (the kernels' dtype): 6 bytes per nonzero, plus indptr and names.
    assert sparse_w < 6 * nnz + 4 * (64 + 48 + 10 + 3) + 600
    inits = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    assert inits["fc1.weight.csr_indices"].dtype == np.int16
    assert inits["fc1.weight.csr_indptr"].dtype == np.int32


def test_rewrite_without_conversions_returns_an_unchanged_copy(dense_files):
    dense = onnx.load(str(dense_files["mlp"][1]))
    result = CsrPass(density_threshold=0.0).call(dense)
    assert not result.modified and result.model == dense and result.model is not dense
    plan = plan_csr(dense, density_threshold=0.0)
    assert rewrite_csr(dense, plan).SerializeToString() == dense.SerializeToString()


def test_exporter_made_initializers_are_named_after_the_torch_parameter(dense_files):
    # 3-D inputs export Linear as MatMul with a transposed copy of the weight named val_*.
    result = CsrPass(density_threshold=1.0).call(onnx.load(str(dense_files["gelu"][1])))
    first = result.plan.decisions[0]
    assert first.weight.startswith("val_") and first.source == "fc1.weight"
    assert "weight fc1.weight (initializer val_" in first.line()
    names = {i.name for i in result.model.graph.initializer}
    assert {"fc1.weight.csr_data", "fc2.weight.csr_indices"} <= names
    attrs = {a.name: helper.get_attribute_value(a) for a in result.model.graph.node[0].attribute}
    assert attrs["weight_name"] == b"fc1.weight" and list(attrs["weight_shape"]) == [16, 40]


def test_default_conv_threshold_depends_on_kernel_and_stride():
    from sparsify.passes.csr import CONV_CROSSOVER

    assert 0 < CONV_CROSSOVER < 1
    assert default_threshold("conv", 1, (3, 3), (1, 1)) == CONV_CROSSOVER
    assert default_threshold("conv", 1, (1, 3), [1, 1]) == CONV_CROSSOVER
    assert default_threshold("conv", 1, (1, 1), (1, 1)) == 0.0
    assert default_threshold("conv", 1, (3, 3), (2, 2)) == 0.0

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256, 6, 6])
    inits, nodes, outs = [], [], []
    # spatial, pointwise and strided read x and do enough work to pass the size floor, so only
    # kernel and stride tell them apart; small and tiny fall under it.
    for name, out_c, k, stride in (("spatial", 64, 3, 1), ("pointwise", 256, 1, 1), ("strided", 64, 3, 2),
                                   ("small", 4, 3, 1), ("tiny", 64, 3, 1)):
        w = rng.standard_normal((out_c, 256 if name != "tiny" else 1, k, k)).astype(np.float32)
        w[rng.random(w.shape) >= CONV_CROSSOVER / 2] = 0  # well below the threshold
        w[0, 0, 0, 0] = 1.0  # not all zero
        inits.append(numpy_helper.from_array(w, f"{name}.w"))
        src = "x" if name != "tiny" else "x1"
        nodes.append(helper.make_node("Conv", [src, f"{name}.w"], [name], name=name,
                                      kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride] * 2))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    inputs = [x, helper.make_tensor_value_info("x1", TensorProto.FLOAT, [1, 1, "h", "w"])]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outs, inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    d = {x.node: x for x in plan_csr(model).decisions}
    assert d["spatial"].convert and d["spatial"].density < CONV_CROSSOVER
    for name in ("pointwise", "strided"):  # as sparse, but 1x1 / strided: kept dense
        assert d[name].density < CONV_CROSSOVER and not d[name].convert
        assert "1x1 and strided conv kernels measured slower" in d[name].reason
    # Smaller than any conv measured to win: kept dense unless the user sets the threshold.
    # Multiply-adds per image when the output size is known (4x256x3x3 over 6x6) ...
    assert d["small"].density < CONV_CROSSOVER and not d["small"].convert
    assert "331,776 multiply-adds per image, fewer than the 2,359,296" in d["small"].reason
    # ... the weight count when it is not (input of unknown height and width).
    assert d["tiny"].density < CONV_CROSSOVER and not d["tiny"].convert
    assert "576 weights, fewer than the 36,864 of the smallest conv" in d["tiny"].reason
    forced = {x.node: x for x in plan_csr(model, density_threshold=0.5).decisions}
    assert forced["small"].convert and forced["tiny"].convert


def chain_model(sizes, tokens=None, density=0.1, seed=0):
    """MatMul layers in a chain (sizes: [in, h1, h2, ...]) on input (N, in) or (N, tokens, in)."""
    rng = np.random.default_rng(seed)
    nodes, inits, v = [], [], "x"
    for k, (i, o) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((i, o)) * (rng.random((i, o)) < density)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{k}"))
        nodes.append(helper.make_node("MatMul", [v, f"w{k}"], [f"h{k}"]))
        v = f"h{k}"
    shape = ["n", sizes[0]] if tokens is None else ["n", tokens, sizes[0]]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(v, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_model_of_only_small_layers_is_kept_dense_whole():
    from sparsify.passes.csr import MIN_LINEAR_MACS

    plan = plan_csr(chain_model([64, 256, 256, 10]), target_batch=1)
    assert not plan.converted
    for d in plan.decisions:
        assert f"does 65,536 multiply-adds per call at batch 1, fewer than {MIN_LINEAR_MACS:,}" in d.reason
        assert "a larger --target-batch or --density-threshold converts it anyway" in d.reason
    assert len(plan_csr(chain_model([64, 256, 256, 10]), density_threshold=0.5).converted) == 3
    # A larger target batch makes the same layers big enough.
    assert len(plan_csr(chain_model([64, 256, 256, 10]), target_batch=16).converted) == 3


def test_one_large_layer_converts_the_small_ones_too():
    plan = plan_csr(chain_model([64, 1024, 1024, 10]), target_batch=1)
    assert [d.convert for d in plan.decisions] == [True, True, True]


def test_tokens_from_shape_inference_count_towards_the_size():
    # 128x128 weights: 16,384 multiply-adds per row, times 64 tokens = 1,048,576 per call.
    assert len(plan_csr(chain_model([128, 128], tokens=64), target_batch=1).converted) == 1
    assert not plan_csr(chain_model([128, 128], tokens=4), target_batch=1).converted


def test_planning_and_rewriting_share_one_shape_inference(monkeypatch):
    # Planning needs the token count (the size floor) and the rewrite needs the converted
    # intermediate's value info, which the file lacks: one inference serves both.
    real, calls = onnx.shape_inference.infer_shapes, []

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", counting)
    model = chain_model([128, 128, 128], tokens=64)
    result = CsrPass().call(model)
    assert len([n for n in result.model.graph.node if n.domain == DOMAIN]) == 2
    assert "h0" in {vi.name for vi in result.model.graph.value_info}
    assert len(calls) == 1
