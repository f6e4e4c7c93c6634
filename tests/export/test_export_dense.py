import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sparsify.api import export_model, reference_module, verification_inputs
from sparsify.artifact import load_run
from sparsify.errors import ModelFileError, VerificationError
from sparsify.export.verify import ort_runner, torch_runner, verify


def _corrupt_one_initializer(src, dst):
    model = onnx.load(str(src))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(init).copy()
    idx = np.unravel_index(np.argmax(np.abs(w)), w.shape)
    w[idx] += 0.5
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(dst))
    return init.name


def test_dense_export_is_verified_and_dynamic(digits_cnn_run, tmp_path):
    path, report, summary = export_model(digits_cnn_run / "pruned", tmp_path / "m.onnx")
    assert report.ok and report.max_abs <= 1e-5
    sets = {r.input_set for r in report.rows}
    assert sets == {"random b1", "random b3", "data b16"}
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert not model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value"), "batch axis should be dynamic"
    # masked weights were folded: the ONNX model holds about 80% zeros in its weights
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer if len(i.dims) >= 2]
    total = sum(w.size for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros / total > 0.75


def test_verification_catches_a_corrupted_initializer(digits_cnn_run, tmp_path):
    export_model(digits_cnn_run / "pruned", tmp_path / "good.onnx")
    _corrupt_one_initializer(tmp_path / "good.onnx", tmp_path / "bad.onnx")
    run = load_run(digits_cnn_run / "pruned")
    ref = torch_runner(reference_module(run))
    report = verify(ref, ort_runner(tmp_path / "bad.onnx")[0], verification_inputs(run), "bad.onnx")
    assert not report.ok and report.max_abs > 1e-3
    with pytest.raises(VerificationError, match="does not match the masked torch model"):
        report.raise_if_failed()


def test_failed_verification_leaves_destination_untouched(digits_cnn_run, tmp_path, monkeypatch):
    from sparsify.cli import main
    import sparsify.export.pipeline as pipeline

    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"previous good export")
    real = pipeline.export_onnx

    def export_then_corrupt(module, example, target, *args, **kwargs):
        real(module, example, target, *args, **kwargs)
        _corrupt_one_initializer(target.path, target.path)

    monkeypatch.setattr(pipeline, "export_onnx", export_then_corrupt)
    code = main(["export", str(digits_cnn_run / "pruned"), "-o", str(dest)])
    assert code == 3
    assert dest.read_bytes() == b"previous good export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"], "no temp file left behind"
    # --no-verify writes the (corrupt) file: the user asked for it
    assert main(["export", str(digits_cnn_run / "pruned"), "-o", str(dest), "--no-verify"]) == 0
    assert dest.read_bytes() != b"previous good export"


def test_not_onnx_file_is_rejected(tmp_path, capsys):
    from sparsify.cli import main
    from sparsify.inspect_model import inspect_path

    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00\x01this is not a protobuf at all" * 10)
    with pytest.raises(ModelFileError, match="is not an ONNX model"):
        inspect_path(bad)
    assert main(["inspect", str(bad)]) != 0
    assert "is not an ONNX model" in capsys.readouterr().err
