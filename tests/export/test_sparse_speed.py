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


def _run(plan, ratios):
    """fit_whole_model with a fake writer and clock: ``ratios`` by converted count."""
    written: list[int] = []
    timed = iter(ratios)

    def time_file(converted):
        ratio = next(timed)
        assert ratio[0] == converted
        return Tried(converted, ratio[1], 1.0)
    first = time_file(len(plan.converted))
    chosen, tried = fit_whole_model(plan, lambda p: written.append(len(p.converted)), first, time_file)
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
    assert written == [2, 0, 2] and len(chosen.converted) == 2


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
    assert _write(model(), dense, target, "always") and target.data_path.is_file()
    assert not _write(model(), dense, target, "never") and not target.data_path.exists()
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
