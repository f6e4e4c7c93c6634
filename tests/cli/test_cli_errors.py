"""No traceback reaches a user: every failure is one paragraph with a documented exit code."""

import pytest

import sparsify.api
from sparsify.cli import main
from sparsify.errors import ModelError, StepError, VerificationError, in_step


def _fail_with(exc):
    def fail(*args, **kwargs):
        raise exc
    return fail


@pytest.mark.parametrize("exc, code, text", [
    (RuntimeError("boom\n  on a second line"), 2, "unexpected RuntimeError: boom on a second line"),
    (MemoryError("Unable to allocate 18.6 TiB"), 2, "ran out of memory (Unable to allocate 18.6 TiB)"),
    (ModelError("a known problem"), 2, "a known problem"),
    (VerificationError("outputs differ"), 3, "outputs differ"),
])
def test_any_failure_is_one_paragraph_with_its_exit_code(monkeypatch, capsys, tmp_path, exc, code, text):
    monkeypatch.setattr(sparsify.api, "export_model", _fail_with(exc))
    assert main(["export", str(tmp_path), "-o", str(tmp_path / "m.onnx")]) == code
    err = capsys.readouterr().err
    assert err.startswith("sparsify export: error: ") and text in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_debug_shows_the_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sparsify.api, "export_model", _fail_with(RuntimeError("boom")))
    assert main(["--debug", "export", str(tmp_path), "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("unexpected RuntimeError: boom. This is a failure sparsify "
                                                       "does not recognise: check the model and inputs the command "
                                                       "names, re-run with 'sparsify --debug' for the traceback, and "
                                                       "report it if the input should work")


def test_in_step_names_the_step_and_subject_and_keeps_sparsify_errors():
    with pytest.raises(StepError, match=r"capture of model 'net' failed: ValueError: bad shape; try --input-shape"):
        with in_step("capture", "model 'net'", "try --input-shape"):
            raise ValueError("bad\nshape")
    with pytest.raises(ModelError, match="^as is$"):
        with in_step("capture", "model 'net'"):
            raise ModelError("as is")
    with pytest.raises(StepError, match="export of m.onnx ran out of memory"):
        with in_step("export", "m.onnx"):
            raise MemoryError()
