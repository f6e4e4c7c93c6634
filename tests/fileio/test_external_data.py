"""ONNX external data: weights beside the model, streamed writes, atomic pairs, hostile locations."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsify.api import export_model
from sparsify.cli import main
from sparsify.errors import ExportError, ModelFileError
from sparsify.export import onnx_write
from sparsify.export.onnx_write import Target, data_file_name, write_onnx
from sparsify.onnxfile import initializer_array
from sparsify.ortsession import ort_session


def _matmul_model(rows=64, cols=32, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    b = rng.standard_normal(cols).astype(np.float32)
    scale = np.array([2.0], dtype=np.float32)  # small: stays inline
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y0"]), helper.make_node("Add", ["y0", "b"], ["y1"]),
         helper.make_node("Mul", ["y1", "s"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", cols])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b"), numpy_helper.from_array(scale, "s")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    return model, lambda x: (x @ w + b) * 2.0


def _target(path):
    return Target(path, data_file_name(path.name))


def test_write_inline_external_and_back_give_the_same_model(tmp_path):
    model, ref = _matmul_model()
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    write_onnx(model, tmp_path, _target(tmp_path / "a.onnx"), external=False)
    write_onnx(onnx.load(str(tmp_path / "a.onnx")), tmp_path, _target(tmp_path / "b.onnx"), external=True)
    ext = onnx.load(str(tmp_path / "b.onnx"), load_external_data=False)
    placed = {t.name: t.data_location == TensorProto.EXTERNAL for t in ext.graph.initializer}
    assert placed == {"W": True, "b": False, "s": False}, "only tensors above INLINE_MAX bytes move out"
    write_onnx(ext, tmp_path, _target(tmp_path / "c.onnx"), external=False)
    for name in ("a.onnx", "b.onnx", "c.onnx"):
        onnx.checker.check_model(str(tmp_path / name), full_check=True)
        y = ort_session(tmp_path / name).run(None, {"x": x})[0]
        np.testing.assert_array_equal(y, ref(x).astype(np.float32))
    assert (tmp_path / "b.onnx.data").stat().st_size == 64 * 32 * 4
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "c.onnx").read_bytes()


def test_initializer_array_reads_without_loading_into_the_proto(tmp_path):
    model, _ = _matmul_model()
    write_onnx(model, tmp_path, _target(tmp_path / "m.onnx"), external=True)
    m = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    w = next(t for t in m.graph.initializer if t.name == "W")
    before = w.ByteSize()
    assert initializer_array(w, tmp_path).shape == (64, 32)
    assert w.ByteSize() == before and w.data_location == TensorProto.EXTERNAL


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../x.bin"])
def test_external_location_outside_the_model_folder_is_refused(tmp_path, location):
    model, _ = _matmul_model()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 64 * 32 * 4)
    inner = tmp_path / "inner"
    inner.mkdir()
    write_onnx(model, inner, _target(inner / "m.onnx"), external=True)
    m = onnx.load(str(inner / "m.onnx"), load_external_data=False)
    w = next(t for t in m.graph.initializer if t.name == "W")
    w.external_data[0].value = location
    with pytest.raises(ModelFileError, match="is not a file inside"):
        initializer_array(w, inner)


def test_never_refuses_a_model_over_the_limit(monkeypatch):
    monkeypatch.setattr(onnx_write, "EXTERNAL_THRESHOLD", 100)
    assert onnx_write.use_external_data(101, "auto", "m") is True
    assert onnx_write.use_external_data(100, "auto", "m") is False
    assert onnx_write.use_external_data(1, "always", "m") is True
    with pytest.raises(ExportError, match="at most 2 GiB, so it needs --external-data auto or always"):
        onnx_write.use_external_data(101, "never", "m")
    with pytest.raises(ExportError, match="should be one of auto, always, never"):
        onnx_write.use_external_data(1, "sometimes", "m")


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_export_with_external_data_runs_and_verifies(digits_cnn_run, tmp_path, capsys, mode, monkeypatch):
    monkeypatch.setattr(onnx_write, "EXTERNAL_THRESHOLD", 1024)  # 'auto' goes external for this small model
    dest = tmp_path / "out" / "m.onnx"
    extra = ["--density-threshold", "1.0"] if mode == "sparse" else []
    assert main(["export", str(digits_cnn_run / "pruned"), "--mode", mode, *extra, "-o", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "m.onnx + m.onnx.data" in out and "max abs" in out
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert dest.stat().st_size < (dest.parent / "m.onnx.data").stat().st_size
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(dest), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    assert np.load(tmp_path / "y.npy").shape == (2, 10)
    capsys.readouterr()
    assert main(["inspect", str(dest), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"]["params"] > 10_000
    # Written again over itself: the old model still reads m.onnx.data, so the new data file
    # takes another name, and the command names the file it wrote.
    assert main(["export", str(dest), "--mode", mode, *extra, "-o", str(dest)]) == 0
    data = sorted(p.name for p in dest.parent.iterdir() if p.name != "m.onnx")
    assert len(data) == 1 and data[0] != "m.onnx.data"
    assert f"m.onnx + {data[0]}" in capsys.readouterr().out


def test_failed_export_leaves_neither_file_and_replacing_a_pair_is_atomic(digits_cnn_run, tmp_path, monkeypatch):
    import sparsify.export.pipeline as pipeline

    dest = tmp_path / "m.onnx"
    run = digits_cnn_run / "pruned"
    export_model(run, dest, external_data="always")
    first = onnx.load(str(dest), load_external_data=False)
    assert onnx_write.external_files(first) == {"m.onnx.data"}
    # A second export to the same destination writes its data under a new name, then swaps the model.
    export_model(run, dest, external_data="always")
    second = onnx_write.external_files(onnx.load(str(dest), load_external_data=False))
    assert len(second) == 1 and second != {"m.onnx.data"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.onnx", *second]), "the old data file is gone"
    ort_session(dest)
    # A failing export leaves the good pair untouched and no temporary behind.
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fail(*args, **kwargs):
        raise ExportError("injected failure")

    monkeypatch.setattr(pipeline, "ort_runner", fail)
    with pytest.raises(ExportError, match="injected"):
        export_model(run, dest, external_data="always")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_slim_export_with_external_data_names_its_data_file(digits_cnn_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(onnx_write, "EXTERNAL_THRESHOLD", 1024)
    dest = tmp_path / "m.onnx"
    assert main(["export", str(digits_cnn_run / "pruned"), "--mode", "slim", "-o", str(dest)]) == 0
    assert "wrote " + str(dest) + " + m.onnx.data (" in capsys.readouterr().out
    assert (tmp_path / "m.onnx.data").is_file()


def test_export_options_of_another_mode_are_a_usage_error(digits_cnn_run, tmp_path, capsys):
    for mode in ("dense", "slim"):
        code = main(["export", str(digits_cnn_run / "pruned"), "--mode", mode, "--density-threshold", "0.3",
                     "-o", str(tmp_path / "m.onnx")])
        assert code == 2
        assert "--density-threshold applies to --mode sparse only" in capsys.readouterr().err
    code = main(["export", str(digits_cnn_run / "pruned"), "--mode", "slim", "--density-threshold", "0.3",
                 "--target-batch", "8", "-o", str(tmp_path / "m.onnx")])
    assert code == 2
    assert "--density-threshold, --target-batch apply to --mode sparse only" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_a_full_disk_is_a_clean_error_naming_the_folder(tmp_path, monkeypatch):
    import builtins

    model, _ = _matmul_model()
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    def opener(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return Full(f) if "w" in mode else f

    monkeypatch.setattr(builtins, "open", opener)
    with pytest.raises(ExportError, match=r"cannot write m.onnx in .*: No space left on device; it needs about"):
        write_onnx(model, tmp_path, _target(tmp_path / "m.onnx"), external=True)
