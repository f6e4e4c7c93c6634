"""``--decide-here``: a sparse file decided on another host or thread count is exported again on
this one before it runs, verified and cached per host and file; a file decided here runs as it is."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest

from sparsify.api import export_model, load_session
from sparsify.cli import main
from sparsify.errors import DataError, ExportError
from sparsify.export.decided_here import decided_here
from sparsify.kernels import isa
from sparsify.machine import cpu_model
from sparsify.runtime import Session
from sparsify.runtime.conversion_record import CONVERSION_METADATA, read_record
from tests.helpers import assert_close, with_conversion_record


@pytest.fixture(scope="module")
def sparse_file(digits_cnn_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("decided_here") / "cnn_sparse.onnx"
    export_model(digits_cnn_run / "pruned", out, mode="sparse", density_threshold=1.0)
    return out


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSIFY_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def timing(monkeypatch):
    """Layer timings on (the suite turns them off): deciding here means timing here."""
    monkeypatch.setenv("SPARSIFY_CALIBRATION", "on")


HERE = dict(cpu=cpu_model(), kernel_variant=isa.VARIANT, threads=1, target_batch=1, decided_by="timed")


def run(path, x):
    session = Session(path)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_a_file_timed_elsewhere_is_decided_here_once_then_cached(sparse_file, tmp_path, cache, timing):
    other = with_conversion_record(sparse_file, tmp_path / "other.onnx", **{**HERE, "cpu": "Other CPU", "host_cpu": "znver9"})
    first = decided_here(other, threads=1)
    assert first.how == "decided" and first.source == other and first.path != other
    assert first.path.name == "other.onnx" and cache in first.path.parents
    assert first.reason.startswith(f"the file's were timed on Other CPU (znver9); here: CPU {cpu_model()}, ")
    sparse_ops = sum(n.domain == "ai.sparsify" for n in onnx.load(str(first.path)).graph.node)
    assert first.converted == (sparse_ops, 7)  # the digits-cnn's 7 layers, each decided here
    assert f"decided again on this host in {first.seconds:.2f} s (" in first.describe()
    assert f"): {sparse_ops} of 7 layers converted, cached at {first.path}" in first.describe()
    record = read_record(onnx.load(str(first.path)))
    assert record["cpu"] == cpu_model() and record["decided_by"] == "timed" and record["threads"] == 1
    assert (cache / "calibration").is_dir()  # the layer timings went to the same cache
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    assert_close(run(first.path, x), run(other, x))

    again = decided_here(other, threads=1)
    assert (again.how, again.path, again.converted) == ("cached", first.path, first.converted)
    # A changed source file is decided again, into the same entry.
    stat = other.stat()
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = decided_here(other, threads=1)
    assert (changed.how, changed.path) == ("decided", first.path)
    # Another thread count is another entry.
    import numba

    if numba.config.NUMBA_NUM_THREADS >= 2:
        two = decided_here(other, threads=2)
        assert two.how == "decided" and two.path != first.path
        assert read_record(onnx.load(str(two.path)))["threads"] == 2


def test_a_file_timed_here_runs_as_it_is(sparse_file, tmp_path, cache, timing):
    same = with_conversion_record(sparse_file, tmp_path / "same.onnx", **HERE)
    decided = decided_here(same, threads=1)
    assert (decided.how, decided.path) == ("as recorded", same)
    assert decided.describe() == "same.onnx: runs as exported (timed on this host at 1 thread(s))"
    assert not cache.exists()
    # The same host at another thread count is decided again.
    other_threads = with_conversion_record(sparse_file, tmp_path / "threads.onnx", **{**HERE, "threads": 7})
    decided = decided_here(other_threads, threads=1)
    assert decided.how == "decided" and decided.reason.endswith("; here: 1 thread(s)")


def test_files_with_nothing_to_decide_here_run_as_they_are(sparse_file, digits_cnn_run, tmp_path):
    """(Timing is off, as in the rest of the suite.)"""
    dense = tmp_path / "dense.onnx"
    export_model(digits_cnn_run / "pruned", dense, mode="dense")
    assert decided_here(dense, threads=1).path == dense
    # With timing off here the fixed rules would decide, which know no better than the file's timings.
    for how in ("fixed rules", "timed"):
        rules = with_conversion_record(sparse_file, tmp_path / "rules.onnx", **{**HERE, "decided_by": how, "cpu": "X"})
        decided = decided_here(rules, threads=1)
        assert decided.how == "as recorded" and decided.reason == (
            f"timing is off here ($SPARSIFY_CALIBRATION), so the file's decisions ({how}) stand")


def test_bad_paths_and_cache_folders_get_one_paragraph(sparse_file, tmp_path, monkeypatch, timing):
    with pytest.raises(ExportError, match="not one"):
        decided_here(tmp_path / "missing.onnx", threads=1)
    with pytest.raises(DataError, match=r"threads 0 should be an int in \[1, \d+\] \(this machine's thread limit\)"):
        decided_here(sparse_file, threads=0)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("SPARSIFY_CACHE_DIR", str(blocker))
    other = with_conversion_record(sparse_file, tmp_path / "other.onnx", **{**HERE, "cpu": "Other CPU"})
    with pytest.raises(ExportError, match="cannot write the cache folder .*SPARSIFY_CACHE_DIR"):
        decided_here(other, threads=1)


def test_load_session_decides_here_on_request(sparse_file, tmp_path, timing):
    other = with_conversion_record(sparse_file, tmp_path / "other.onnx", **{**HERE, "cpu": "Other CPU"})
    assert load_session(other).conversion_elsewhere
    session = load_session(other, decide_here=True)
    assert not session.conversion_elsewhere and session.conversion.endswith(", as here")


def test_cli_run_and_bench_decide_here(sparse_file, tmp_path, capsys, timing):
    other = with_conversion_record(sparse_file, tmp_path / "other.onnx", **{**HERE, "cpu": "Other CPU"})
    x = np.random.default_rng(1).standard_normal((1, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    capsys.readouterr()
    args = ["run", str(other), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"), "--decide-here"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "sparsify run: other.onnx: conversions decided again on this host" in err
    assert "timed on Other CPU; here: CPU" in err and "other layers may win" not in err
    assert_close(np.load(tmp_path / "y.npy"), run(other, x))
    assert main(args) == 0
    assert "conversions decided on this host earlier" in capsys.readouterr().err
    out = tmp_path / "b.json"
    assert main(["bench", str(other), "--decide-here", "--repeat", "2", "--warmup", "0", "--no-memory",
                 "--no-progress", "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert "sparsify bench: other.onnx: conversions decided on this host earlier" in err
    assert "other layers may win" not in err
    model = json.loads(out.read_text())["models"][0]
    assert model["label"] == "other.onnx" and model["conversion"]["cpu"] == cpu_model()
    assert main(["run", str(tmp_path / "x.npy"), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "z.npy"),
                 "--decide-here"]) == 2
    assert "x.npy is not one" in capsys.readouterr().err


def test_a_changed_external_data_file_is_decided_again(digits_cnn_run, tmp_path, timing):
    exported = tmp_path / "exported.onnx"
    export_model(digits_cnn_run / "pruned", exported, mode="sparse", density_threshold=1.0, external_data="always")
    model = onnx.load(str(exported), load_external_data=False)  # keeps reading exported.onnx.data
    onnx.helper.set_model_props(model, {p.key: p.value for p in model.metadata_props}
                                | {CONVERSION_METADATA: json.dumps({**HERE, "cpu": "Other CPU"})})
    src = tmp_path / "ext.onnx"
    onnx.save(model, str(src))
    first = decided_here(src, threads=1)
    assert first.how == "decided" and decided_here(src, threads=1).how == "cached"
    data = tmp_path / "exported.onnx.data"
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert decided_here(src, threads=1).how == "decided"


def test_processes_started_together_decide_once(sparse_file, tmp_path, cache):
    """Workers started at once: one decides, the other waits for it and takes its file."""
    import subprocess
    import sys

    other = with_conversion_record(sparse_file, tmp_path / "other.onnx", **{**HERE, "cpu": "Other CPU"})
    code = ("import sys; from sparsify.export.decided_here import decided_here; "
            "d = decided_here(sys.argv[1], threads=1); print(d.how, d.path)")
    env = {**os.environ, "SPARSIFY_CALIBRATION": "on", "SPARSIFY_CACHE_DIR": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(other)], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = sorted(p.communicate(timeout=300)[0].split() for p in procs)
    assert [p.returncode for p in procs] == [0, 0]
    assert [r[0] for r in results] == ["cached", "decided"] and results[0][1] == results[1][1]
