"""``Session(..., profile=True)``: time per step and per op, reset, ORT segments split by op."""

from __future__ import annotations

import pytest

from sparsify.errors import DataError
from sparsify.runtime import Session
from sparsify.runtime.profile import _ort_node_times
from tests.helpers import assert_close
from tests import models


@pytest.mark.parametrize("glue", ["numpy", "ort"])
def test_profile_times_every_step_and_splits_ort_segments_by_op(pairs, glue):
    sparse = pairs["cnn"][2]
    sess = Session(sparse, threads=1, glue=glue, profile=True)
    x = models.inputs("cnn", 2)
    plain = Session(sparse, threads=1, glue=glue).run(None, {"x": x})[0]
    sess.run(None, {"x": x})
    sess.reset_profile()
    for _ in range(3):
        assert_close(sess.run(None, {"x": x})[0], plain)  # profiling changes no result
    prof = sess.profile()
    assert prof.runs == 3 and len(prof.steps) == len(sess.steps)
    assert all(s["ms"] > 0 for s in prof.steps)
    assert sum(s["ms"] for s in prof.steps) <= prof.total_ms
    assert prof.ops["sparse SparseConv"] > 0
    assert abs(sum(prof.ops.values()) - prof.total_ms) < 1e-3 + 1e-6 * prof.total_ms
    if glue == "ort":  # the glue ops are named from ONNX Runtime's own per-node profile
        assert any(k.startswith("ort ") and "overhead" not in k and "not split" not in k for k in prof.ops)
    else:
        assert any(k.startswith("numpy ") for k in prof.ops)
    lines = prof.table()
    assert lines[0].startswith("3 run(s)") and any("sparse SparseConv" in line for line in lines)
    assert prof.to_dict()["runs"] == 3


def test_profile_of_a_file_without_sparse_ops_is_one_ort_step(pairs):
    dense = pairs["mlp"][1]
    sess = Session(dense, profile=True)
    x = models.inputs("mlp", 1)
    sess.run(None, {"x": x})
    prof = sess.profile()
    assert [s["kind"] for s in prof.steps] == ["ort"]
    assert any(k.startswith("ort Gemm") or k.startswith("ort FusedGemm") for k in prof.ops), prof.ops


def test_profile_needs_profile_true(pairs):
    sess = Session(pairs["mlp"][2])
    with pytest.raises(DataError, match="profile=True"):
        sess.profile()
    with pytest.raises(DataError, match="profile=True"):
        sess.reset_profile()


def test_ort_node_times_leave_out_runs_before_the_reset():
    events = [
        {"cat": "Node", "name": "a_kernel_time", "ts": 10, "dur": 5, "args": {"op_name": "Relu"}},
        {"cat": "Session", "name": "model_run", "ts": 9, "dur": 10},
        {"cat": "Node", "name": "a_kernel_time", "ts": 30, "dur": 2, "args": {"op_name": "Relu"}},
        {"cat": "Node", "name": "b_kernel_time", "ts": 33, "dur": 3, "args": {"op_name": "MatMul"}},
        {"cat": "Session", "name": "model_run", "ts": 29, "dur": 10},
    ]
    assert _ort_node_times(events, 0) == ({"Relu": 7, "MatMul": 3}, 2)
    assert _ort_node_times(events, 1) == ({"Relu": 2, "MatMul": 3}, 1)
    assert _ort_node_times(events, 2) == ({}, 0)
