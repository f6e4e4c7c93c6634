"""Convert or keep dense by measurement on the host: decisions, reasons, the per-host cache."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsify.passes.csr import plan_csr
from sparsify.runtime import calibrate


def _mlp(rng, sizes, densities) -> onnx.ModelProto:
    nodes, inits, prev = [], [], "x"
    for i, ((n_in, n_out), d) in enumerate(zip(sizes, densities)):
        w = rng.standard_normal((n_out, n_in)).astype(np.float32)
        w[rng.random(w.shape) >= d] = 0
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}"], [f"h{i}"], transB=1, name=f"fc{i}"))
        prev = f"h{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, sizes[0][0]])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, sizes[-1][1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(calibrate.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(calibrate.ENV, "on")
    return tmp_path


def test_measured_decisions_follow_the_timings_and_say_why(cache, monkeypatch):
    rng = np.random.default_rng(0)
    model = _mlp(rng, [(64, 48), (48, 32)], [0.1, 0.9])
    # A fake clock-free timer: the first layer's kernel wins, the second's loses.
    verdicts = iter([(2.0, 0.5), (1.0, 0.995)])
    monkeypatch.setattr(calibrate, "time_pair", lambda dense, sparse: (dense(), sparse(), next(verdicts))[2])
    monkeypatch.setattr(calibrate.Calibrator, "overhead_ms", lambda self: 0.01)  # the second loses by it
    plan = plan_csr(model)
    first, second = plan.decisions
    assert first.convert and not second.convert
    assert "measured on this host" in first.reason and "sparse 0.5000 ms" in first.reason
    assert "0.9950 ms + 0.0100 ms runtime step vs dense ONNX Runtime 1.0000 ms" in second.reason
    assert "--density-threshold" in second.reason
    assert first.threshold is None and plan.density_threshold is None
    files = list((cache / "calibration").glob("*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert doc["identity"]["kernel_variant"] and doc["identity"]["cpu"]
    keys = sorted(k for k in doc["entries"] if k.startswith("linear"))
    assert [k.split(" density ")[0] for k in keys] == ["linear 32x48", "linear 48x64"]
    assert all(k.endswith(" rows 1") for k in keys)


def test_the_cache_is_reused_and_keyed_by_the_host(cache, monkeypatch):
    rng = np.random.default_rng(1)
    model = _mlp(rng, [(64, 48)], [0.1])
    calls = []
    monkeypatch.setattr(calibrate, "time_pair", lambda dense, sparse: calls.append(1) or (1.0, 0.25))
    monkeypatch.setattr(calibrate.Calibrator, "overhead_ms", lambda self: 0.01)
    plan_csr(model)
    measured = len(calls)
    again = plan_csr(model)
    assert len(calls) == measured and "cached" in again.decisions[0].reason  # nothing timed twice
    monkeypatch.setattr(calibrate, "host_identity", lambda threads: {"cpu": "another", "threads": threads,
                                                                      "kernel_variant": "avx2"})
    plan_csr(model)
    assert len(calls) > measured  # another host: measured again, in its own file
    assert len(list((cache / "calibration").glob("*.json"))) == 2


def test_threshold_and_switch_override_calibration(cache, monkeypatch):
    model = _mlp(np.random.default_rng(2), [(64, 48)], [0.1])
    monkeypatch.setattr(calibrate, "time_pair", lambda dense, sparse: pytest.fail("should not time"))
    assert "set by --density-threshold" in plan_csr(model, density_threshold=0.5).decisions[0].reason
    monkeypatch.setenv(calibrate.ENV, "off")
    assert "threshold" in plan_csr(model).decisions[0].reason
    assert not list(cache.glob("**/*.json"))


def test_real_timing_runs_both_sides_and_decides(cache):
    # One real measurement (no fake timer): a 256x256 layer at 98% sparsity, batch 1.
    model = _mlp(np.random.default_rng(3), [(256, 256)], [0.02])
    d = plan_csr(model).decisions[0]
    assert "measured on this host" in d.reason and " ms" in d.reason
    m = calibrate.Calibrator()
    ms = m.linear(numpy_helper.to_array(model.graph.initializer[0]), 1)
    assert ms.cached and ms.sparse_ms > 0 and ms.dense_ms > 0 and ms.overhead_ms > 0
    assert d.convert == ms.convert


def test_a_layer_the_timing_cannot_run_falls_back_to_the_fixed_rules(cache, monkeypatch):
    model = _mlp(np.random.default_rng(4), [(64, 48)], [0.1])

    def refuse(self, w, rows, blocksize=None):
        raise RuntimeError("no kernel for this")
    monkeypatch.setattr(calibrate.Calibrator, "linear", refuse)
    d = plan_csr(model).decisions[0]
    assert d.reason.startswith("not timed (RuntimeError: no kernel for this); density 0.1")
    assert "threshold" in d.reason


def test_batch1_form_kept_only_where_it_beats_the_csr_kernel(cache, monkeypatch):
    from sparsify.kernels import CSR, SparseLinear, ell

    if ell.host_geometry() is None:
        pytest.skip("no sliced-ELL layout on this host")
    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    w[rng.random(w.shape) >= 0.1] = 0
    layers = [SparseLinear(CSR.from_dense(w), batch1="ell") for _ in range(2)]
    # Timed CSR first, then the layout: the first layer's layout loses, the second's wins.
    times = iter([(1.0, 0.0), (2.0, 0.0), (1.0, 0.0), (0.5, 0.0)])
    monkeypatch.setattr(calibrate, "time_pair", lambda a, b: (a(), b(), next(times))[2])
    lines = calibrate.choose_batch1_forms(layers[:1], 1)
    assert layers[0].ell is None and lines[0].endswith("-> CSR")
    layers[1].set_batch1_layout(layers[1].ell)  # another weight: timed anew
    monkeypatch.setattr(calibrate.Calibrator, "batch1", lambda self, layer: (
        "x", calibrate.Measurement(0.5, 1.0, 0.0)))
    calibrate.choose_batch1_forms(layers[1:], 1)
    assert layers[1].ell is not None
    y = layers[0](np.ones(128, np.float32))
    np.testing.assert_allclose(y, w.astype(np.float64) @ np.ones(128), rtol=1e-5, atol=1e-5)
    monkeypatch.setenv(calibrate.ENV, "off")
    assert calibrate.choose_batch1_forms(layers[1:], 1) == [] and layers[1].ell is not None


def _ell_layers(rng, count, shape=(64, 128)):
    from sparsify.kernels import CSR, SparseLinear, ell

    if ell.host_geometry() is None:
        pytest.skip("no sliced-ELL layout on this host")
    weights = []
    for _ in range(count):
        w = rng.standard_normal(shape).astype(np.float32)
        w[rng.random(w.shape) >= 0.1] = 0
        weights.append(w)
    return weights, [SparseLinear(CSR.from_dense(w), batch1="ell") for w in weights]


def _scored_timer(score, calls):
    """A clock-free time_configurations: applies each setup and scores the layers' forms."""
    def timer(setups, call, budget_s=calibrate.BUDGET_S):
        calls.append(len(setups))
        out = []
        for setup in setups:
            setup()
            call()
            out.append(score())
        return out
    return timer


def test_working_set_keeps_the_fastest_forms_and_recalls_them(cache, monkeypatch):
    from sparsify.kernels import ell

    weights, layers = _ell_layers(np.random.default_rng(6), 3)
    monkeypatch.setattr(ell, "cache_budget", lambda: 0)  # the layouts overflow it: timed
    # Fewer bytes and prefetches win here: every layer compact and prefetched is fastest.
    calls: list[int] = []
    monkeypatch.setattr(calibrate, "time_configurations", _scored_timer(
        lambda: 1.0 - sum(0.1 * l.ell.compact + 0.05 * l.batch1_prefetched for l in layers), calls))
    cal = calibrate.Calibrator(1)
    lines = calibrate.choose_working_set(layers, cal)
    cal.save()
    # As sized (padded, not prefetched) and 3 layers x {0, 1, 2, 3} compact x prefetch or
    # not, less the one configuration equal to the sized one.
    assert calls == [8] and lines[0].endswith("-> all compact, prefetched"), (calls, lines)
    assert all(l.ell.compact and l.batch1_prefetched for l in layers)
    x = np.random.default_rng(7).standard_normal(128).astype(np.float32)
    for layer, w in zip(layers, weights):
        np.testing.assert_allclose(layer(x), w.astype(np.float64) @ x, rtol=1e-5, atol=1e-5)
    # The same model loaded again (the rules' forms) recalls the outcome without timing.
    calls.clear()
    _, again = _ell_layers(np.random.default_rng(6), 3)
    lines = calibrate.choose_working_set(again, calibrate.Calibrator(1))
    assert calls == [] and lines[0].endswith("-> all compact, prefetched, cached"), lines
    assert all(l.ell.compact and l.batch1_prefetched for l in again)


def test_a_form_switched_together_is_timed_again_against_the_csr_kernel(cache, monkeypatch):
    from sparsify.kernels import ell

    weights, layers = _ell_layers(np.random.default_rng(9), 2)
    monkeypatch.setattr(ell, "cache_budget", lambda: 0)
    # Together, every layer compact is fastest; alone, the second layer's compact form
    # loses to the CSR kernel, where its padded form won.
    monkeypatch.setattr(calibrate, "time_configurations", _scored_timer(
        lambda: 1.0 - 0.5 * sum(l.ell.compact for l in layers if l.ell is not None), []))
    timed = []

    def batch1(self, layer):
        timed.append((layers.index(layer), layer.ell.compact))
        csr_ms = 0.5 if layer is layers[1] and layer.ell.compact else 2.0
        return ("compact" if layer.ell.compact else "padded"), calibrate.Measurement(1.0, csr_ms, 0.0)

    monkeypatch.setattr(calibrate.Calibrator, "batch1", batch1)
    lines = calibrate.choose_batch1_forms(layers, 1)
    assert timed == [(0, False), (1, False), (0, True), (1, True)], timed
    assert layers[0].ell is not None and layers[0].ell.compact and layers[1].ell is None
    assert lines[-1].startswith("64x128: sliced ELL compact (the form kept together)") and lines[-1].endswith("-> CSR")
    x = np.random.default_rng(10).standard_normal(128).astype(np.float32)
    for layer, w in zip(layers, weights):
        np.testing.assert_allclose(layer(x), w.astype(np.float64) @ x, rtol=1e-5, atol=1e-5)


def test_working_set_keeps_the_sized_forms_within_the_margin(cache, monkeypatch):
    from sparsify.kernels import ell

    _, layers = _ell_layers(np.random.default_rng(8), 2)
    sized = [(l.ell, l.batch1_prefetched) for l in layers]
    monkeypatch.setattr(ell, "cache_budget", lambda: 0)
    gain = 0.5 * calibrate.WORKING_SET_MARGIN  # compact saves less than the margin
    monkeypatch.setattr(calibrate, "time_configurations", _scored_timer(
        lambda: 1.0 - gain * sum(l.ell.compact for l in layers), []))
    lines = calibrate.choose_working_set(layers, calibrate.Calibrator(1))
    assert lines[0].endswith("-> as sized") and "best all compact" in lines[0], lines
    assert [(l.ell, l.batch1_prefetched) for l in layers] == sized  # the very layouts, not copies


def test_working_set_within_the_cache_is_not_timed(cache, monkeypatch):
    _, layers = _ell_layers(np.random.default_rng(9), 2)
    calls: list[int] = []
    monkeypatch.setattr(calibrate, "time_configurations", _scored_timer(lambda: 1.0, calls))
    assert calibrate.choose_working_set(layers, calibrate.Calibrator(1)) == [] and calls == []
    assert not any(l.ell.compact for l in layers)


def test_time_configurations_times_each_setup_in_turn():
    state = {"ms": 0.0}
    seen = []

    def call():
        seen.append(state["ms"])
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < state["ms"] / 1e3:
            pass

    setups = [lambda: state.update(ms=0.05), lambda: state.update(ms=0.4)]
    fast, slow = calibrate.time_configurations(setups, call, budget_s=0.01)
    assert 0.04 < fast < 0.3 and 0.35 < slow, (fast, slow)
    assert {0.05, 0.4} <= set(seen)


def test_session_says_what_it_timed_and_runs_the_forms_kept(cache, monkeypatch, pairs):
    import onnxruntime as ort

    from sparsify.kernels import SparseLinear, ell
    from sparsify.runtime import Session
    from tests import models

    if ell.host_geometry() is None:
        pytest.skip("no sliced-ELL layout on this host")
    _, dense, sparse, _ = pairs["mlp"]
    monkeypatch.setattr(ell, "cache_budget", lambda: 0)
    monkeypatch.setattr(calibrate.Calibrator, "batch1", lambda self, layer: (  # every layout beats the CSR
        "x", calibrate.Measurement(0.5, 1.0, 0.0)))
    holder: dict[str, list] = {}
    monkeypatch.setattr(calibrate, "time_configurations", _scored_timer(
        lambda: 1.0 - sum(0.1 * l.ell.compact for l in holder["layers"] if l.ell is not None), []))
    real = calibrate.choose_working_set

    def spy(layers, cal):
        holder["layers"] = layers
        return real(layers, cal)
    monkeypatch.setattr(calibrate, "choose_working_set", spy)
    sess = Session(sparse, threads=1)
    lines = sess.describe()
    timed = [line for line in lines if line.startswith("calibrated: batch-1 layouts together")]
    linears = [layer.kernel for layer in sess.layers.values() if isinstance(layer.kernel, SparseLinear)]
    running = [k for k in linears if k.ell is not None]
    assert len(timed) == 1 and timed[0].endswith("-> all compact"), lines
    assert running and all(k.ell.compact for k in running)
    x = models.inputs("mlp", 1, seed=4)
    want = ort.InferenceSession(str(dense), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5)


def test_working_set_that_cannot_be_timed_keeps_the_sized_forms(cache, monkeypatch):
    from sparsify.kernels import ell

    _, layers = _ell_layers(np.random.default_rng(10), 2)
    sized = [(l.ell, l.batch1_prefetched) for l in layers]
    monkeypatch.setattr(ell, "cache_budget", lambda: 0)

    def fail(setups, call, budget_s=calibrate.BUDGET_S):
        setups[-1]()  # leaves another configuration in place, then fails
        raise MemoryError("no room for the compact forms")
    monkeypatch.setattr(calibrate, "time_configurations", fail)
    cal = calibrate.Calibrator(1)
    lines = calibrate.choose_working_set(layers, cal)
    assert lines == ["batch-1 layouts together: not timed (MemoryError: no room for the compact forms); as sized"]
    assert [(l.ell, l.batch1_prefetched) for l in layers] == sized and cal.keys == []


def test_batch1_threads_are_timed_near_the_serial_rule_only(cache, monkeypatch):
    from sparsify.kernels import CSR, SparseLinear, spmm

    rng = np.random.default_rng(11)
    near, far = (rng.standard_normal(shape).astype(np.float32) for shape in ((256, 256), (2048, 2048)))
    near[rng.random(near.shape) >= 0.2] = 0  # 13k nonzeros: within the factor of the boundary
    far[rng.random(far.shape) >= 0.1] = 0  # 420k: beyond it
    assert near.size * 0.2 * calibrate.SERIAL_TIMING_FACTOR > spmm.SERIAL_WORK * spmm.ELL_SERIAL_SCALE
    layers = [SparseLinear(CSR.from_dense(w)) for w in (near, far)]
    monkeypatch.setattr(calibrate.Calibrator, "batch1", lambda self, layer: None)  # keep the layouts
    timed = []

    def batch1_threads(self, layer):
        timed.append(layer)
        return calibrate.Measurement(2.0, 1.0, 0.0)  # one thread slower than two

    monkeypatch.setattr(calibrate.Calibrator, "batch1_threads", batch1_threads)
    lines = calibrate.choose_batch1_forms(layers, 2)
    assert timed == [layers[0]] and lines == ["256x256: batch 1 on one thread 2.0000 ms vs 2 threads 1.0000 ms "
                                              "-> 2 threads"], lines
    assert layers[0].describe_batch1().endswith(", all threads") and layers[1]._batch1_serial is None
    monkeypatch.setattr(calibrate.Calibrator, "batch1_threads", lambda self, layer: calibrate.Measurement(
        0.5, 1.0, 0.0, cached=True))
    lines = calibrate.choose_batch1_forms(layers, 2)
    assert lines[-1].endswith("-> one thread, cached") and layers[0]._batch1_serial is True
    x = rng.standard_normal(256).astype(np.float32)
    np.testing.assert_allclose(layers[0](x), near.astype(np.float64) @ x, rtol=1e-5, atol=1e-5)
    timed.clear()
    assert calibrate.choose_batch1_forms(layers, 1) == [] and timed == []  # one thread: nothing to choose


def test_batch1_thread_timing_is_real_and_cached(cache):
    from sparsify.kernels import CSR, SparseLinear

    rng = np.random.default_rng(12)
    w = rng.standard_normal((256, 256)).astype(np.float32)
    w[rng.random(w.shape) >= 0.2] = 0
    layer = SparseLinear(CSR.from_dense(w))
    cal = calibrate.Calibrator(2)
    m = cal.batch1_threads(layer)
    assert m.sparse_ms > 0 and m.dense_ms > 0 and not m.cached and layer._batch1_serial is None
    cal.save()
    again = calibrate.Calibrator(2).batch1_threads(layer)
    assert again.cached and (again.sparse_ms, again.dense_ms) == (m.sparse_ms, m.dense_ms)


def test_processes_timing_together_take_turns_and_share_the_cache(cache, tmp_path):
    """Workers loading at once: one times the layout, the other waits and finds it cached."""
    import os
    import subprocess
    import sys

    from sparsify.kernels import ell

    if ell.host_geometry() is None:
        pytest.skip("no sliced-ELL layout on this host")
    go = tmp_path / "go"
    code = f"""
import os, sys, time
import numpy as np
from sparsify.kernels import CSR, SparseLinear
from sparsify.runtime import calibrate
rng = np.random.default_rng(7)
w = rng.standard_normal((512, 512)).astype(np.float32)
w[rng.random(w.shape) >= 0.1] = 0
layer = SparseLinear(CSR.from_dense(w), batch1="ell")
print("ready", flush=True)
while not os.path.exists({str(go)!r}):
    time.sleep(0.005)
print(calibrate.choose_batch1_forms([layer], 1)[0], flush=True)
"""
    env = {**os.environ, calibrate.CACHE_ENV: str(cache), calibrate.ENV: "on"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()  # both start timing at once
    lines = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], lines
    assert sorted(line.endswith(", cached") for line in lines) == [False, True], lines


def test_conv_step_widths_are_timed_kept_by_margin_and_cached(cache, monkeypatch):
    from sparsify.kernels import CSR, SparseConv2d

    rng = np.random.default_rng(2)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    w[rng.random(w.shape) < 0.8] = 0
    layers = [SparseConv2d(CSR.from_dense(w), None, 1) for _ in range(2)]
    widths = layers[0].step_widths()
    if len(widths) < 2:
        pytest.skip("one step width on this host")
    rule = layers[0].step_width(20, 20)
    other = next(k for k in widths if k != rule)
    # The first shape: another width 20% faster than the rule's; the second: 2% (within the margin).
    scores = {20: {k: (0.8 if k == other else 1.0) for k in widths}, 21: {k: (0.98 if k == other else 1.0) for k in widths}}
    calls = []

    def fake(setups, call, budget_s=calibrate.BUDGET_S):
        calls.append(len(setups))
        h = 20 if len(calls) == 1 else 21
        return [scores[h][k] for k in widths]
    monkeypatch.setattr(calibrate, "time_configurations", fake)
    lines = calibrate.choose_conv_step_widths([(layers[0], (8, 20, 20)), (layers[1], (8, 21, 21))], threads=1)
    assert layers[0].step_width(20, 20) == other and layers[1].step_width(21, 21) == rule
    assert lines[0].endswith(f"(rule {rule}) -> {other}") and lines[1].endswith(f"(rule {rule}) -> {rule}")
    assert "conv 16x8 1x1/1 at 20x20: step width" in lines[0]
    # Recalled, not timed again, by a new process (a new Calibrator) on fresh layers.
    fresh = SparseConv2d(CSR.from_dense(w), None, 1)
    again = calibrate.choose_conv_step_widths([(fresh, (8, 20, 20))], threads=1)
    assert len(calls) == 2 and again[0].endswith(f"-> {other}, cached") and fresh.step_width(20, 20) == other


def test_session_times_its_convs_step_widths_on_real_timings(cache, pairs, monkeypatch):
    from sparsify.runtime import Session
    from tests import models

    _, _, sparse, _ = pairs["cnn"]
    sess = Session(sparse, threads=1)
    timed = [line for line in sess.describe() if line.startswith("calibrated: conv ")]
    assert timed and all("step width" in line and " -> " in line for line in timed)
    x = models.inputs("cnn", 2)
    monkeypatch.setenv(calibrate.ENV, "off")
    plain = Session(sparse, threads=1)
    assert not any(line.startswith("calibrated: conv ") for line in plain.describe())
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], plain.run(None, {"x": x})[0])


def test_conv_step_widths_too_costly_or_failing_to_time_keep_the_rule(cache, monkeypatch):
    from sparsify.kernels import CSR, SparseConv2d

    w = np.ones((16, 8), np.float32)
    layer = SparseConv2d(CSR.from_dense(w), None, 1)
    if len(layer.step_widths()) < 2:
        pytest.skip("one step width on this host")
    rule = layer.step_width(30, 30)
    monkeypatch.setattr(calibrate, "CONV_STEP_MAX_MACS", 16 * 8 * 30 * 30 - 1)
    (line,) = calibrate.choose_conv_step_widths([(layer, (8, 30, 30))], threads=1)
    assert line.endswith(f"not timed (115200 multiply-adds a call); by the rule, {rule}")
    monkeypatch.setattr(calibrate, "CONV_STEP_MAX_MACS", 1 << 28)

    def broken(*a, **k):
        raise MemoryError("no room")
    monkeypatch.setattr(calibrate, "time_configurations", broken)
    (line,) = calibrate.choose_conv_step_widths([(layer, (8, 30, 30))], threads=1)
    assert line.endswith(f"not timed (MemoryError: no room); by the rule, {rule}")
    assert layer.step_width(30, 30) == rule
