"""``sparsify export FILE.onnx``: a sparse file lowered to standard ONNX, or its layers decided
again on this host, verified against the file; and the conversion host the file records."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from sparsify.api import export_model
from sparsify.cli import main
from sparsify.errors import DataError, ExportError, VerificationError
from sparsify.export import from_file
from sparsify.kernels import get_threads, isa, set_threads
from sparsify.machine import cpu_model
from sparsify.runtime import Session
from sparsify.runtime.conversion_record import CONVERSION_METADATA, describe_record, host_differs, read_record
from sparsify.sparse_ops import DOMAIN
from tests.helpers import assert_close, with_conversion_record


@pytest.fixture(scope="module")
def sparse_file(digits_cnn_run, tmp_path_factory):
    """The pruned digits-cnn exported sparse with every layer converted."""
    out = tmp_path_factory.mktemp("from_file") / "cnn_sparse.onnx"
    export_model(digits_cnn_run / "pruned", out, mode="sparse", density_threshold=1.0)
    return out


def outputs(path, x, threads=1):
    session = Session(path, threads=threads)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def sparse_ops(path) -> int:
    return sum(n.domain == DOMAIN for n in onnx.load(str(path)).graph.node)


def test_dense_mode_lowers_every_sparse_op_and_runs_in_ort(sparse_file, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "dense.onnx"
    path, report, summary = export_model(sparse_file, out, mode="dense")
    assert path == out and report.ok and report.max_abs <= 1e-5
    assert report.reference == "cnn_sparse.onnx in the sparse runtime"
    assert {r.input_set for r in report.rows} == {"random b1", "random b3"}
    assert summary["lowered"] == 7 and sparse_ops(out) == 0
    meta = {p.key for p in onnx.load(str(out)).metadata_props}
    assert "sparsify.inputs" in meta and CONVERSION_METADATA not in meta
    x = np.random.default_rng(5).standard_normal((4, 1, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert_close(sess.run(None, {sess.get_inputs()[0].name: x})[0], outputs(sparse_file, x))


def test_sparse_mode_converts_again_and_records_how(sparse_file, tmp_path):
    out = tmp_path / "again.onnx"
    _, report, summary = export_model(sparse_file, out, mode="sparse", density_threshold=1.0)
    assert report.ok and report.max_abs <= 1e-5
    assert len(summary["converted"]) == 7 and sparse_ops(out) == 7
    record = read_record(onnx.load(str(out)))
    assert record["decided_by"] == "density threshold" and record["density_threshold"] == 1.0
    assert record["cpu"] == cpu_model() and record["kernel_variant"] == isa.VARIANT
    x = np.random.default_rng(6).standard_normal((3, 1, 8, 8)).astype(np.float32)
    assert_close(outputs(out, x), outputs(sparse_file, x))
    # The fixed rules (calibration is off in the tests) keep some layers of the file dense.
    _, _, summary = export_model(sparse_file, tmp_path / "rules.onnx", mode="sparse")
    assert read_record(onnx.load(str(tmp_path / "rules.onnx")))["decided_by"] == "fixed rules"
    assert sparse_ops(tmp_path / "rules.onnx") == len(summary["converted"])


def test_the_callers_thread_count_survives_an_export(sparse_file, tmp_path):
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 threads")
    before = get_threads()
    try:
        set_threads(2)
        export_model(sparse_file, tmp_path / "a.onnx", mode="sparse", density_threshold=1.0)
        assert get_threads() == 2
    finally:
        set_threads(before)


def test_no_verify_writes_without_the_check(sparse_file, tmp_path):
    path, report, summary = export_model(sparse_file, tmp_path / "d.onnx", mode="dense", verify=False)
    assert report is None and path.is_file() and sparse_ops(path) == 0


def test_a_mismatch_writes_nothing(sparse_file, tmp_path, monkeypatch):
    real = from_file.ort_runner

    def off(path, threads=1):
        run, names = real(path, threads)
        return (lambda xs: [y + 1e-3 for y in run(xs)]), names

    monkeypatch.setattr(from_file, "ort_runner", off)
    with pytest.raises(VerificationError, match=r"dense.onnx \(dense\) does not match cnn_sparse.onnx"):
        export_model(sparse_file, tmp_path / "dense.onnx", mode="dense")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--mode", "slim"], "--mode slim removes pruned channels by a run's masks"),
    (["--mode", "dense", "--target-batch", "4"], "--target-batch applies to --mode sparse only"),
    (["--mode", "sparse", "--opset", "17"], "--opset applies to run directories"),
    (["--mode", "slim", "--format", "torch"], "--format torch needs a run directory"),
])
def test_cli_refuses_what_a_file_cannot_do(sparse_file, tmp_path, capsys, args, message):
    assert main(["export", str(sparse_file), *args, "-o", str(tmp_path / "x.onnx")]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_missing_onnx_file(tmp_path, capsys):
    with pytest.raises(ExportError, match="expected a run directory or an ONNX file"):
        export_model(tmp_path / "none.onnx", tmp_path / "x.onnx", mode="dense")
    assert main(["export", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "none.onnx does not exist" in capsys.readouterr().err


def test_a_file_timed_on_another_host_says_so(sparse_file, tmp_path, capsys):
    here = dict(cpu=cpu_model(), kernel_variant=isa.VARIANT, threads=1, target_batch=1, decided_by="timed")
    same = with_conversion_record(sparse_file, tmp_path / "same.onnx", **here)
    session = Session(same, threads=1)
    assert not session.conversion_elsewhere
    assert session.conversion == (f"conversions: timed on {cpu_model()} ({isa.VARIANT} kernels, 1 thread(s)) "
                                  "at batch 1, as here")
    assert session.conversion in session.describe()
    other = with_conversion_record(sparse_file, tmp_path / "other.onnx", **{**here, "cpu": "Other CPU", "kernel_variant": "avx2"})
    session = Session(other, threads=1)
    assert session.conversion_elsewhere
    assert f"here: CPU {cpu_model()}, {isa.VARIANT} kernels, where other layers may win" in session.conversion
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    capsys.readouterr()
    assert main(["run", str(other), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    err = capsys.readouterr().err
    assert "timed on Other CPU (avx2 kernels, 1 thread(s))" in err and "--mode sparse" in err
    assert main(["run", str(same), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    assert capsys.readouterr().err == ""
    assert main(["inspect", str(other)]) == 0
    assert "note: conversions: timed on Other CPU" in capsys.readouterr().out
    assert main(["inspect", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["conversion"]["cpu"] == "Other CPU"
    out = tmp_path / "b.json"
    assert main(["bench", str(same), str(other), "--repeat", "2", "--warmup", "0", "--threads", "1",
                 "--no-memory", "--no-progress", "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert "note: other.onnx: conversions: timed on Other CPU" in err and "same.onnx" not in err
    doc = json.loads(out.read_text())
    assert [m["conversion"]["cpu"] for m in doc["models"]] == [cpu_model(), "Other CPU"]


def test_records_that_are_not_timed_or_not_readable():
    assert describe_record(None, 1) is None and not host_differs(None, 1)
    rules = {"decided_by": "fixed rules", "cpu": "Other CPU"}
    assert describe_record(rules, 1) == "conversions: by the fixed density rules, not timed on a host"
    assert not host_differs(rules, 1)
    threshold = {"decided_by": "density threshold", "density_threshold": 0.3}
    assert describe_record(threshold, 2) == "conversions: by density threshold 0.3, not timed on a host"
    from sparsify.runtime.conversion_record import conversion_record
    here = json.loads(conversion_record(2, 1, None, True))
    assert set(here) >= {"cpu", "host_cpu", "kernel_variant", "l3_bytes", "threads", "target_batch"}
    assert not host_differs(here, 2)
    older = {**here, "host_cpu": "znver2"}  # one model name ("AMD EPYC") over two core generations
    assert host_differs(older, 2) and "here: " + str(here["host_cpu"]) + " cores" in describe_record(older, 2)
    assert describe_record(here, 2).startswith(f"conversions: timed on {here['cpu']} ({here['host_cpu']}, ")
    timed = {"decided_by": "timed", "cpu": cpu_model(), "kernel_variant": isa.VARIANT, "threads": 2}
    assert not host_differs(timed, 2) and not host_differs(timed, 1)  # threads alone: named, not flagged
    assert "here: 1 thread(s)," in describe_record(timed, 1) and "--target-threads" in describe_record(timed, 1)
    model = onnx.ModelProto()
    onnx.helper.set_model_props(model, {CONVERSION_METADATA: "{not json"})
    assert read_record(model) is None


def test_a_dense_onnx_file_from_elsewhere_converts(tmp_path):
    from tests import models

    _, path = models.export("cnn", tmp_path / "cnn.onnx")  # pruned in torch, exported without sparsify's metadata
    assert not {p.key for p in onnx.load(str(path)).metadata_props}
    _, report, summary = export_model(path, tmp_path / "s.onnx", mode="sparse", density_threshold=1.0)
    assert report.ok and report.reference == "cnn.onnx in the sparse runtime"
    assert len(summary["converted"]) == sparse_ops(tmp_path / "s.onnx") == 5
    x = models.inputs("cnn", 2, seed=4)
    assert_close(outputs(tmp_path / "s.onnx", x), outputs(path, x))


def test_a_fixed_batch_file_is_verified_at_its_batch(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    w[np.random.default_rng(1).random(w.shape) < 0.9] = 0
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
                              [numpy_helper.from_array(w, "w")])
    path = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    _, report, summary = export_model(path, tmp_path / "s.onnx", mode="sparse", density_threshold=1.0)
    assert {r.input_set for r in report.rows} == {"random b1"} and report.ok
    assert sparse_ops(tmp_path / "s.onnx") == 1


def test_the_recorded_target_batch_carries_over(sparse_file, tmp_path):
    src = with_conversion_record(sparse_file, tmp_path / "b8.onnx", cpu="Other CPU", kernel_variant="avx2", threads=2,
                       target_batch=8, decided_by="timed")
    _, _, summary = export_model(src, tmp_path / "again.onnx", mode="sparse")
    assert summary["target_batch"] == 8 and read_record(onnx.load(str(tmp_path / "again.onnx")))["target_batch"] == 8
    _, _, summary = export_model(src, tmp_path / "b2.onnx", mode="sparse", target_batch=2)
    assert summary["target_batch"] == 2


def test_a_file_with_external_data_exports_again(digits_cnn_run, tmp_path):
    src = tmp_path / "ext.onnx"
    export_model(digits_cnn_run / "pruned", src, mode="sparse", density_threshold=0.3, external_data="always")
    assert (tmp_path / "ext.onnx.data").is_file()
    kept_dense = 7 - sparse_ops(src)
    assert kept_dense > 0  # so that dense weights are read from the data file too
    for mode, data in (("dense", "always"), ("sparse", "never")):
        out = tmp_path / f"{mode}.onnx"
        _, report, _ = export_model(src, out, mode=mode, external_data=data, **({"density_threshold": 1.0}
                                                                                 if mode == "sparse" else {}))
        assert report.ok and (tmp_path / f"{mode}.onnx.data").is_file() == (data == "always")
    x = np.random.default_rng(8).standard_normal((2, 1, 8, 8)).astype(np.float32)
    assert_close(outputs(tmp_path / "sparse.onnx", x), outputs(src, x))


def test_target_threads_are_the_ones_timed_and_recorded(sparse_file, tmp_path):
    before = get_threads()
    _, _, summary = export_model(sparse_file, tmp_path / "t1.onnx", mode="sparse", target_threads=1)
    assert read_record(onnx.load(str(tmp_path / "t1.onnx")))["threads"] == 1
    assert get_threads() == before
    import numba
    with pytest.raises(ExportError, match=r"--target-threads 999: threads 999 should be an int in \[1, \d+\] \(this machine's"):
        export_model(sparse_file, tmp_path / "t2.onnx", mode="sparse", target_threads=999)
    assert not (tmp_path / "t2.onnx").exists() and numba.config.NUMBA_NUM_THREADS < 999
    assert main(["export", str(sparse_file), "--mode", "dense", "--target-threads", "1", "-o",
                 str(tmp_path / "t3.onnx")]) == 2


def _seq_model(path):
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32) * 0.25
    w[np.random.default_rng(1).random(w.shape) < 0.8] = 0
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 8])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_dynamic_dims_the_file_does_not_size_take_input_shape(tmp_path, capsys):
    src = _seq_model(tmp_path / "seq.onnx")
    out = tmp_path / "s.onnx"
    with pytest.raises(DataError, match=r"input 'x' has the dynamic dim 1 \('seq'\) and no size for it is recorded"):
        export_model(src, out, mode="sparse", density_threshold=1.0)
    _, report, _ = export_model(src, out, mode="sparse", density_threshold=1.0, input_shapes=["1,12,16"])
    assert report.ok and {r.shape for r in report.rows} == {(1, 12, 8), (3, 12, 8)}
    assert sparse_ops(out) == 1
    for shapes, message in ((["1,12,15"], "dim 2 of input 'x' is fixed at 16"), (["1,12"], "has 2 dims"),
                            (["1,12,16", "1,4"], "got 2 --input-shape for")):
        with pytest.raises(DataError, match=message):
            export_model(src, tmp_path / "bad.onnx", mode="sparse", input_shapes=shapes)
    assert not (tmp_path / "bad.onnx").exists()
    assert main(["export", str(src), "--mode", "dense", "--input-shape", "2,5,16", "-o", str(tmp_path / "d.onnx")]) == 0
    assert "[1, 5, 8]" in capsys.readouterr().out


def test_input_shape_is_for_files_only(digits_cnn_run, tmp_path):
    with pytest.raises(ExportError, match="--input-shape applies to ONNX files"):
        export_model(digits_cnn_run / "pruned", tmp_path / "x.onnx", mode="sparse", input_shapes=["1,1,8,8"])
