"""The whole-model check of sparse exports: the converted model against the dense one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from sparsify.api import export_model
from sparsify.export import sparse_speed
from sparsify.export.sparse_speed import Tried, fit_whole_model
from sparsify.passes.csr_decisions import CsrPlan, LayerDecision
from sparsify.runtime import calibrate
from sparsify.sparse_ops import DOMAIN


@pytest.fixture
def every_layer_wins(tmp_path, monkeypatch):
    """Host calibration on (its cache in tmp_path), every layer timed as a win on its own."""
    monkeypatch.setenv(calibrate.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(calibrate.ENV, "on")
    win = calibrate.Measurement(0.1, 1.0, 0.01)
    monkeypatch.setattr(calibrate.Calibrator, "conv", lambda self, w, *a, blocksize=None: win)
    monkeypatch.setattr(calibrate.Calibrator, "linear", lambda self, w, rows, blocksize=None: win)


def _plan(speedups) -> CsrPlan:
    decisions = [LayerDecision(f"n{i}", "MatMul", f"w{i}", (4, 4), 2, 0.125, True, f"timed x{s}", speedup=s)
                 for i, s in enumerate(speedups)]
    decisions.append(LayerDecision("d", "MatMul", "wd", (4, 4), 16, 1.0, False, "too dense"))
    return CsrPlan(decisions, 1, None)


def _run(plan, ratios, extra=()):
    """fit_whole_model with a fake writer and clock: ``ratios`` by converted count."""
    written: list[int] = []
    timed = iter(ratios)

    def time_file(converted):
        ratio = next(timed)
        assert ratio[0] == converted
        return Tried(converted, ratio[1], 1.0)
    first = time_file(len(plan.converted))
    chosen, tried = fit_whole_model(plan, lambda p: written.append(len(p.converted)), first, time_file, extra)
    return chosen, tried, written


def test_a_conversion_that_wins_whole_is_kept_untouched():
    plan = _plan([3.0, 1.5, 2.0])
    chosen, tried, written = _run(plan, [(3, 0.6)])
    assert chosen is plan and written == [] and [t.converted for t in tried] == [3]


def test_the_half_that_won_most_is_kept_when_it_wins():
    plan = _plan([3.0, 1.5, None, 2.0])
    chosen, tried, written = _run(plan, [(4, 1.3), (2, 0.8)])
    assert written == [2] and [t.converted for t in tried] == [4, 2]
    assert [d.node for d in chosen.converted] == ["n0", "n3"]  # x3.0 and x2.0; the untimed one goes first
    reverted = {d.node: d for d in chosen.decisions if d.node in ("n1", "n2")}
    assert all(not d.convert and "left dense by the whole-model check at batch 1" in d.reason
               and "4 of 4 layers converted" in d.reason for d in reverted.values())
    assert reverted["n1"].reason.startswith("timed x1.5")  # the layer's own timing stays in the reason
    assert all(d.convert for d in plan.decisions[:4])  # the planned decisions are not changed


def test_nothing_converted_when_no_conversion_wins():
    plan = _plan([3.0, 1.5])
    chosen, tried, written = _run(plan, [(2, 1.4), (1, 1.1), (0, 1.0)])
    assert written == [1, 0] and chosen.converted == [] and tried[-1].converted == 0


def test_the_fastest_is_written_again_when_a_later_one_lost():
    plan = _plan([3.0, 1.5, 2.0, 1.2])
    chosen, tried, written = _run(plan, [(4, 1.3), (2, 1.05), (0, 1.1)])
    assert written == [2, 0] and chosen.converted == []  # nothing beat dense: standard ops only
    plan = _extra_plan()
    chosen, tried, written = _run(plan, [(1, 1.2), (3, 0.7)], ["e1", "e2"])
    assert written == [3] and len(chosen.converted) == 3
    chosen, tried, written = _run(plan, [(1, 0.9), (3, 0.95)], ["e1", "e2"])
    assert written == [3, 1] and len(chosen.converted) == 1  # the plan, timed first, written again


def test_nothing_is_converted_when_every_candidate_loses_to_dense():
    # The model with step-saving layers converted is the least slow, yet slower than dense.
    chosen, tried, written = _run(_extra_plan(), [(1, 2.0), (3, 1.4), (0, 1.2)], ["e1", "e2"])
    assert written == [3, 0] and chosen.converted == [] and [t.converted for t in tried] == [1, 3, 0]
    chosen, tried, written = _run(_extra_plan(), [(1, 2.0), (3, 1.1), (0, 1.2)], ["e1", "e2"])
    assert written == [3, 0] and chosen.converted == []


@pytest.mark.usefixtures("every_layer_wins")
def test_export_keeps_only_conversions_that_pay_off_whole(digits_cnn_run, tmp_path, monkeypatch):
    # Every layer wins on its own; the whole model loses unless at most half are converted.
    seen = []

    def fake_time(dense_session, path, feeds, threads, converted):
        model = onnx.load(str(path))
        seen.append((converted, sum(n.domain == DOMAIN for n in model.graph.node)))
        assert all(x.shape[0] == 1 for x in feeds.values())
        return Tried(converted, 1.2 if converted > 3 else 0.9, 1.0)
    from sparsify.export import sparse_export
    monkeypatch.setattr(sparse_export, "time_against_dense", fake_time)
    out = tmp_path / "m.onnx"
    _, report, summary = export_model(digits_cnn_run / "pruned", out, mode="sparse")
    assert report.ok and seen == [(7, 7), (3, 3)]
    assert len(summary["converted"]) == 3 and [t["converted"] for t in summary["whole_model"]] == [7, 3]
    assert sum(n.domain == DOMAIN for n in onnx.load(str(out)).graph.node) == 3
    assert any("whole model at batch 1" in line and "-> 3 converted" in line for line in summary["lines"])
    left = [d for d in summary["skipped"] if "whole-model check" in d["reason"]]
    assert len(left) == 4 and all(d["speedup"] == pytest.approx(1.0 / 0.11) for d in left)


def test_timing_feeds_repeat_the_first_batch_1_set():
    x1, x3 = np.arange(3, dtype=np.float32)[None], np.ones((3, 3), np.float32)
    feeds = sparse_speed.timing_feeds(["x"], {"random b3": [x3], "random b1": [x1]}, 4)
    assert list(feeds) == ["x"] and feeds["x"].shape == (4, 3) and (feeds["x"] == x1).all()


@pytest.mark.usefixtures("every_layer_wins")
def test_export_times_the_whole_model_for_real(digits_cnn_run, tmp_path, monkeypatch):
    monkeypatch.setattr(sparse_speed, "MIN_TIME_S", 0.05)
    _, report, summary = export_model(digits_cnn_run / "pruned", tmp_path / "m.onnx", mode="sparse")
    whole = summary["whole_model"]
    assert report.ok and whole and whole[0]["converted"] == 7
    assert all(t["sparse_ms"] > 0 and t["dense_ms"] > 0 for t in whole)
    fastest = min(whole, key=lambda t: t["sparse_ms"] / t["dense_ms"])
    assert len(summary["converted"]) == fastest["converted"]  # the fastest tried is the one written
    assert (len(whole) == 1) == (whole[0]["sparse_ms"] < whole[0]["dense_ms"])  # retried only when it lost


def test_an_inline_candidate_leaves_no_data_file_of_an_earlier_one(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from sparsify.export.onnx_write import Target
    from sparsify.export.sparse_export import _write

    def model():
        w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    dense = Target(tmp_path / "dense" / "dense.onnx", "dense.onnx.data")
    dense.path.parent.mkdir()
    target = Target(tmp_path / "out.onnx", "out.onnx.data")
    assert _write(model(), dense, target, "always", "{}") and target.data_path.is_file()
    assert not _write(model(), dense, target, "never", "{}") and not target.data_path.exists()
    onnx.checker.check_model(str(target.path))


@pytest.mark.usefixtures("every_layer_wins")
def test_no_whole_model_timing_beyond_the_memory_limit(digits_cnn_run, tmp_path, monkeypatch):
    from sparsify.export import sparse_export

    monkeypatch.setattr(sparse_export, "memory_limit", lambda: 1000)

    def refuse(*args):
        raise AssertionError("timed beyond the memory limit")
    monkeypatch.setattr(sparse_export, "time_against_dense", refuse)
    _, report, summary = export_model(digits_cnn_run / "pruned", tmp_path / "m.onnx", mode="sparse")
    assert report.ok and summary["whole_model"] == [] and len(summary["converted"]) == 7
    assert any(line.startswith("  whole model not timed against the dense export: both at once would take about")
               and "SPARSIFY_MAX_BYTES" in line for line in summary["lines"])


@pytest.mark.usefixtures("every_layer_wins")
def test_a_whole_model_timing_that_fails_leaves_the_planned_conversion(digits_cnn_run, tmp_path, monkeypatch):
    from sparsify.export import sparse_export

    calls = []

    def flaky(dense_session, path, feeds, threads, converted):
        calls.append(converted)
        if len(calls) > 1:  # after the half was written
            raise RuntimeError("a candidate would not load")
        return Tried(converted, 2.0, 1.0)
    monkeypatch.setattr(sparse_export, "time_against_dense", flaky)
    out = tmp_path / "m.onnx"
    _, report, summary = export_model(digits_cnn_run / "pruned", out, mode="sparse")
    assert calls == [7, 3] and report.ok and summary["whole_model"] == []
    assert len(summary["converted"]) == 7 and sum(n.domain == DOMAIN for n in onnx.load(str(out)).graph.node) == 7
    assert any("whole model not timed against the dense export (RuntimeError: a candidate would not load)" in line
               for line in summary["lines"])


def _mlp_graph(tail: str = "none"):
    """Reshape -> Gemm fc1 -> Relu -> Gemm fc2 -> Relu -> Gemm head (-> Softmax with ``tail``
    "softmax"): fc2 90% sparse, fc1 and head dense."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    fc2 = rng.standard_normal((32, 32)).astype(np.float32) * (rng.random((32, 32)) > 0.9)
    inits = [numpy_helper.from_array(a, n) for n, a in
             (("fc1", rng.standard_normal((32, 16)).astype(np.float32)), ("fc2", fc2),
              ("head", rng.standard_normal((4, 32)).astype(np.float32)),
              ("shape", np.array([-1, 16], np.int64)))]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"], name="reshape"),
             helper.make_node("Gemm", ["flat", "fc1"], ["h1"], name="fc1", transB=1),
             helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
             helper.make_node("Gemm", ["a1", "fc2"], ["h2"], name="fc2", transB=1),
             helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
             helper.make_node("Gemm", ["a2", "head"], ["logits"], name="head", transB=1)]
    out = "logits"
    if tail == "softmax":
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], name="softmax"))
        out = "probs"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _threshold_plan(model, threshold=0.5):
    from sparsify.passes.csr_plan import plan_csr

    return plan_csr(model, density_threshold=threshold)


def test_layers_whose_conversion_empties_an_ort_step_are_found():
    model = _mlp_graph()
    plan = _threshold_plan(model)
    assert [d.node for d in plan.converted] == ["fc2"] and all(d.eligible for d in plan.decisions)
    # fc1's step is Reshape (glue) + fc1 + its Relu; head's step is head alone.
    assert sparse_speed.step_saving_layers(plan, model.graph.node) == ["fc1", "head"]


def test_a_layer_beside_an_op_numpy_cannot_run_is_not_converted_for_its_step():
    model = _mlp_graph("softmax")
    plan = _threshold_plan(model)
    assert sparse_speed.step_saving_layers(plan, model.graph.node) == ["fc1"]  # Softmax keeps head's step in ORT


def test_a_layer_that_cannot_be_converted_is_never_picked():
    model = _mlp_graph()
    plan = _threshold_plan(model)
    head = next(d for d in plan.decisions if d.node == "head")
    head.convertible = None  # as a structural skip leaves it
    assert not head.eligible and sparse_speed.step_saving_layers(plan, model.graph.node) == ["fc1"]
    with pytest.raises(ValueError, match="cannot be converted"):
        head.convert_again("because")


def test_wider_converts_the_layers_as_the_plan_would_have():
    model = _mlp_graph()
    plan = _threshold_plan(model)
    fc1 = next(d for d in plan.decisions if d.node == "fc1")
    assert fc1.fused == () and fc1.activation == "none"
    widened = sparse_speed.wider(plan, ["fc1"])
    again = next(d for d in widened.decisions if d.node == "fc1")
    assert again.convert and again.activation == "relu" and len(again.fused) == 2
    assert not fc1.convert  # the plan itself is not changed


def _extra_plan():
    plan = _plan([3.0])
    for i in (1, 2):
        d = LayerDecision(f"e{i}", "Gemm", f"we{i}", (4, 4), 4, 0.25, True, "", "relu", fused=(10 + i, 20 + i))
        d.keep_dense(f"timed x0.9 on its own{sparse_speed.OVERRIDE_HINT}")
        plan.decisions.append(d)
    return plan


def test_step_saving_layers_are_converted_when_the_model_runs_faster_with_them():
    plan = _extra_plan()
    chosen, tried, written = _run(plan, [(1, 0.8), (3, 0.6)], ["e1", "e2"])
    assert written == [3] and [d.node for d in chosen.converted] == ["n0", "e1", "e2"]
    e1 = next(d for d in chosen.decisions if d.node == "e1")
    assert e1.activation == "relu" and e1.fused == (11, 21)
    assert e1.reason.startswith("converted by the whole-model check at batch 1, which saves an ONNX Runtime step")
    assert "3 of 3 layers converted" in e1.reason and e1.reason.endswith("on its own: timed x0.9 on its own")
    assert not any(d.convert for d in plan.decisions if d.node.startswith("e"))  # the plan is not changed


def test_step_saving_layers_stay_dense_without_a_clear_gain():
    plan = _extra_plan()
    chosen, tried, written = _run(plan, [(1, 0.8), (3, 0.75)], ["e1", "e2"])  # x1.07 < 1 / WIDER_GAIN
    assert written == [3, 1] and chosen.converted == plan.converted
    assert all(d.reason == f"timed x0.9 on its own{sparse_speed.OVERRIDE_HINT}" for d in chosen.skipped if d.eligible)


def test_fewer_conversions_are_tried_when_neither_plan_beats_dense():
    plan = _extra_plan()
    chosen, tried, written = _run(plan, [(1, 1.3), (3, 1.1), (0, 1.0)], ["e1", "e2"])
    assert written == [3, 0] and chosen.converted == [] and [t.converted for t in tried] == [1, 3, 0]


@pytest.mark.usefixtures("no_model_size_floor")
def test_export_converts_the_layers_that_save_an_ort_step(tmp_path, monkeypatch):
    from sparsify.api import ModelSource, prune_model
    from sparsify.export import sparse_export

    monkeypatch.setenv(calibrate.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(calibrate.ENV, "on")
    # Only the square hidden layer wins on its own; the input and output layers lose.
    monkeypatch.setattr(calibrate.Calibrator, "linear", lambda self, w, rows, blocksize=None: calibrate.Measurement(
        0.1, 1.0 if w.shape[0] == w.shape[1] else 0.05, 0.01))
    seen = []

    def fake_time(dense_session, path, feeds, threads, converted):
        seen.append((converted, sum(n.domain == DOMAIN for n in onnx.load(str(path)).graph.node)))
        return Tried(converted, 0.5 if converted == 3 else 0.8, 1.0)
    monkeypatch.setattr(sparse_export, "time_against_dense", fake_time)
    prune_model(ModelSource("digits-mlp", model_args={"hidden": 128}), tmp_path / "run", sparsity=0.9)
    out = tmp_path / "m.onnx"
    _, report, summary = export_model(tmp_path / "run", out, mode="sparse")
    assert report.ok and seen == [(1, 1), (3, 3)]
    assert sum(n.domain == DOMAIN for n in onnx.load(str(out)).graph.node) == 3
    added = [d for d in summary["converted"] if d["reason"].startswith("converted by the whole-model check")]
    assert len(added) == 2 and all("on its own: density" in d["reason"] for d in added)
    assert any(line.startswith("  whole model at batch 1") and "3 of 3 layers converted" in line
               and line.endswith("-> 3 converted") for line in summary["lines"])
