"""A run directory is data: nothing its manifest names is imported or called without consent."""

import json
import sys

import pytest

from sparsify.api import ModelSource, open_model
from sparsify.artifact import save_run
from sparsify.cli import main

EVIL_MODULE = "sparsify_test_evil_module"


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """A valid digits-mlp run whose manifest then names code; importing that code leaves marker files."""
    run = open_model(ModelSource("digits-mlp"))
    save_run(run, tmp_path / "run")
    markers = tmp_path / "markers"
    markers.mkdir()
    # A module whose import alone leaves a marker, and a factory that leaves another when called.
    (tmp_path / f"{EVIL_MODULE}.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(markers / 'imported')!r}).touch()\n"
        "def make(**kwargs):\n"
        f"    pathlib.Path({str(markers / 'called')!r}).touch()\n"
        "    from sparsify.models import build_builtin\n"
        "    return build_builtin('digits-mlp')\n"
        "def data():\n"
        f"    pathlib.Path({str(markers / 'data')!r}).touch()\n"
        "    raise SystemExit(9)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, EVIL_MODULE, raising=False)

    def rewrite(**fields):
        path = tmp_path / "run" / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest.update(fields)
        path.write_text(json.dumps(manifest))
        return tmp_path / "run"

    return rewrite, markers, tmp_path


def _commands(run, out):
    return {
        "inspect": ["inspect", str(run)],
        "prune": ["prune", str(run), "--sparsity", "0.5", "-o", str(out / "p")],
        "finetune": ["finetune", str(run), "--data", "digits", "--epochs", "1", "--no-progress", "-o", str(out / "f")],
        "export": ["export", str(run), "-o", str(out / "m.onnx")],
        "train": ["train", str(run), "--data", "digits", "--epochs", "1", "--no-progress", "-o", str(out / "t")],
        "bench": ["bench", str(run), "--repeat", "1", "--warmup", "0", "--no-memory", "--no-progress"],
    }


@pytest.mark.parametrize("command", ["inspect", "prune", "finetune", "export", "train", "bench"])
@pytest.mark.parametrize("consent", [[], ["--trust-code", "somebody.else:factory"]], ids=["none", "other-ref"])
def test_code_in_a_manifest_is_not_imported_without_consent(hostile, capsys, command, consent):
    rewrite, markers, tmp = hostile
    ref = f"{EVIL_MODULE}:make"
    run = rewrite(model={"kind": "import", "name": ref, "args": {}})
    argv = _commands(run, tmp / "out")[command]
    code = main([*argv[:2], *consent, *argv[2:]])
    out, err = capsys.readouterr()
    if command == "inspect":  # inspect reads the files alone and says why it counts no MACs
        assert code == 0 and "MACs not counted" in out, err
    else:
        assert code == 2, err
        assert f"--trust-code {ref}" in err and "model.name" in err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not any(markers.iterdir()), "the manifest's code was imported or called"
    assert not (tmp / "out").exists()


def test_inspect_without_consent_shows_the_table_from_the_files(hostile, capsys):
    rewrite, markers, _ = hostile
    run = rewrite(model={"kind": "import", "name": f"{EVIL_MODULE}:make", "args": {}})
    assert main(["inspect", str(run)]) == 0
    out = capsys.readouterr().out
    assert "fc1.weight" in out and "MACs not counted" in out
    assert not any(markers.iterdir())


def test_consent_for_the_named_reference_imports_it(hostile, capsys):
    rewrite, markers, tmp = hostile
    ref = f"{EVIL_MODULE}:make"
    run = rewrite(model={"kind": "import", "name": ref, "args": {}})
    assert main(["inspect", str(run), "--trust-code", ref]) == 0
    assert {p.name for p in markers.iterdir()} == {"imported", "called"}
    assert "MACs per sample" in capsys.readouterr().out


def test_os_system_in_a_manifest_runs_nothing(hostile, capsys):
    rewrite, _, tmp = hostile
    marker = tmp / "MARKER"
    run = rewrite(model={"kind": "import", "name": "os:system", "args": {"command": f"touch {marker}"}})
    for command in ("inspect", "prune", "export"):
        main(_commands(run, tmp / "out")[command])
    assert not marker.exists()
    assert "os:system" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["prune", "finetune", "export"])
def test_code_data_reference_in_a_manifest_needs_consent(hostile, capsys, command):
    rewrite, markers, tmp = hostile
    run = rewrite(data=f"{EVIL_MODULE}:data")
    argv = _commands(run, tmp / "out")[command]
    if command == "finetune":
        argv = [a for a in argv if a not in ("--data", "digits")]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"--trust-code {EVIL_MODULE}:data" in err and "'data'" in err
    assert not any(markers.iterdir())


def test_data_given_on_the_command_line_replaces_the_manifests(hostile, capsys):
    rewrite, markers, tmp = hostile
    run = rewrite(data=f"{EVIL_MODULE}:data")
    assert main(["finetune", str(run), "--data", "digits", "--epochs", "1", "--no-progress",
                 "-o", str(tmp / "ft")]) == 0, capsys.readouterr().err
    assert not any(markers.iterdir())
    assert json.loads((tmp / "ft" / "manifest.json").read_text())["data"] == "digits"


def test_python_api_refuses_by_default_and_accepts_trust(hostile):
    from sparsify.artifact import load_run
    from sparsify.errors import RunError
    from sparsify.trust import CodeTrust

    rewrite, markers, _ = hostile
    ref = f"{EVIL_MODULE}:make"
    run = rewrite(model={"kind": "import", "name": ref, "args": {}})
    with pytest.raises(RunError, match="consent"):
        load_run(run)
    assert not any(markers.iterdir())
    assert load_run(run, CodeTrust(refs=frozenset({ref}))).model is not None
    assert (markers / "called").exists()
