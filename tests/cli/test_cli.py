import json

import pytest

from sparsify.cli import main


def test_train_prune_finetune_inspect_export(tmp_path, capsys):
    d = tmp_path
    assert main(["train", "tests.models:make_tiny", "--data", "tests.models:tiny_dataset",
                 "--epochs", "2", "--no-progress", "-o", str(d / "dense")]) == 0
    assert main(["prune", str(d / "dense"), "--sparsity", "0.5", "--scope", "global", "--trust-code", "-o", str(d / "pruned")]) == 0
    assert main(["finetune", str(d / "pruned"), "--epochs", "1", "--distill", "--no-progress", "--trust-code", "-o", str(d / "ft")]) == 0
    manifest = json.loads((d / "ft" / "manifest.json").read_text())
    assert [s["step"] for s in manifest["recipe"]] == ["train", "prune", "finetune"]
    assert manifest["recipe"][2]["config"]["distill"] is True
    assert len(manifest["metrics"]["finetune_history"]) == 2
    capsys.readouterr()
    assert main(["inspect", str(d / "ft"), "--trust-code", "tests.models:make_tiny"]) == 0
    out = capsys.readouterr().out
    assert "fc1.weight" in out and "unstructured" in out and "MACs per sample" in out
    assert main(["export", str(d / "ft"), "--trust-code", "-o", str(d / "m.onnx")]) == 0
    assert "max abs" in capsys.readouterr().out
    assert main(["inspect", str(d / "m.onnx"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"]["sparsity"] > 0.4


@pytest.mark.parametrize("argv, message", [
    (["prune", "resnet9000", "--sparsity", "0.5"], "unknown built-in model 'resnet9000'"),
    (["prune", "digits-mlp", "--sparsity", "1.0"], r"should be a float in [0, 1)"),
    (["prune", "digits-mlp", "--sparsity", "0.5", "--targets", "^nothing$"], "matches no prunable tensor"),
    (["prune", "nomod.x:y", "--sparsity", "0.5", "--input-shape", "1,8"], "could not be imported"),
    (["finetune", "/nonexistent/run", "--data", "digits"], "does not exist"),
])
def test_bad_input_exits_nonzero_with_one_paragraph_and_no_output(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    code = main([*argv, "-o", str(out)])
    err = capsys.readouterr().err
    assert code != 0
    assert message in err
    assert err.count("\n") <= 1, "one paragraph"
    assert not out.exists()


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "f"
    blocker.write_text("")
    assert main(["prune", "digits-mlp", "--sparsity", "0.5", "-o", str(blocker / "run")]) != 0
    assert "cannot create the output folder" in capsys.readouterr().err


def test_distill_uses_the_recorded_dense_parent(tmp_path, capsys, monkeypatch):
    import sparsify.api as api

    d = tmp_path
    assert main(["train", "tests.models:make_tiny", "--data", "tests.models:tiny_dataset",
                 "--epochs", "1", "--no-progress", "-o", str(d / "dense")]) == 0
    assert main(["prune", str(d / "dense"), "--sparsity", "0.9", "--trust-code", "-o", str(d / "pruned")]) == 0
    seen = {}
    real = api.teacher_for

    def spy(run, teacher=None):
        model = real(run, teacher)
        seen["fc1"] = model.fc1.weight.detach().clone()
        return model

    monkeypatch.setattr(api, "teacher_for", spy)
    assert main(["finetune", str(d / "pruned"), "--epochs", "1", "--distill", "--no-progress", "--trust-code", "-o", str(d / "ft")]) == 0
    dense = api.load_run(d / "dense", api.TRUST_ALL).model.fc1.weight
    assert (seen["fc1"] == dense).all(), "the teacher is the dense parent, not the pruned student"
    # A changed parent is refused rather than silently used.
    assert main(["prune", str(d / "dense"), "--sparsity", "0.3", "--trust-code", "-o", str(d / "dense")]) == 0
    assert main(["finetune", str(d / "pruned"), "--epochs", "1", "--distill", "--no-progress", "--trust-code", "-o", str(d / "ft2")]) != 0
    assert "changed since" in capsys.readouterr().err


def test_the_run_command_parses_without_importing_torch():
    """A deployment host runs `sparsify run` without paying torch's import (about 1.5 s)."""
    import subprocess
    import sys

    code = ("import sys; from sparsify.cli import build_parser, _command_of; "
            "argv = ['run', 'm.onnx', '--input', 'x.npy', '-o', 'y.npy']; "
            "args = build_parser(_command_of(argv)).parse_args(argv); "
            "assert args.func.__name__ == 'cmd_run' and 'torch' not in sys.modules, sorted(sys.modules)[:5]")
    subprocess.run([sys.executable, "-c", code], check=True)
