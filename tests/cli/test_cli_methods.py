"""The prune/finetune flags of issue 17 through the command line: data-aware methods, schedules, bad input."""

import json

import numpy as np
import pytest

from sparsify.cli import main

TINY = ["tests.models:make_tiny", "--data", "tests.models:tiny_dataset", "--trust-code"]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    assert main(["train", *TINY, "--epochs", "1", "--no-progress", "-o", str(root / "dense")]) == 0
    return root


def test_prune_with_sparsegpt_reports_layers_and_records_calibration(dense, capsys):
    out = dense / "sgpt"
    assert main(["prune", str(dense / "dense"), "--method", "sparsegpt", "--sparsity", "0.5",
                 "--calibration-batches", "2", "--trust-code", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "sparsegpt [1/2] fc1.weight" in err and "sparsegpt [2/2] fc2.weight" in err
    step = json.loads((out / "manifest.json").read_text())["recipe"][-1]
    assert step["method"] == "sparsegpt" and step["calibration"]["batches"] == 2
    assert [layer["tensor"] for layer in step["layers"]] == ["fc1.weight", "fc2.weight"]


def test_gradual_finetune_from_the_cli_records_its_points(dense, capsys):
    out = dense / "g"
    assert main(["finetune", str(dense / "dense"), "--schedule", "gradual", "--final-sparsity", "0.8", "--end", "0.5",
                 "--every", "2", "--unit", "step", "--epochs", "1", "--batch-size", "16", "--no-progress",
                 "--trust-code", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "schedule point at step 0" in printed and "target 0.8," in printed
    sched = json.loads((out / "manifest.json").read_text())["recipe"][-1]["schedule"]
    assert sched["final_sparsity"] == 0.8 and sched["curve"].startswith("cubic")
    assert sched["points"][-1]["weight_sparsity"] == pytest.approx(0.8, abs=0.01)


@pytest.mark.parametrize("argv, message", [
    (["finetune", "{dense}", "--schedule", "gradual", "--final-sparsity", "0.5", "--start", "0.6", "--end", "0.3"],
     "before it starts"),
    (["finetune", "{dense}", "--schedule", "gradual", "--final-sparsity", "1.2"], r"should be a float in [0, 1)"),
    (["finetune", "{dense}", "--schedule", "gradual", "--nm", "4:2"], "0 < N < M"),
    (["finetune", "{dense}", "--schedule", "gradual", "--final-sparsity", "0.5", "--every", "50"], "holds no interval"),
    (["prune", "{dense}", "--nm", "2:2"], "0 < N < M"),
    (["prune", "{dense}", "--method", "wanda", "--sparsity", "0.5", "--scope", "global"], "use scope=layer"),
    (["prune", "{dense}", "--method", "sparsegpt", "--sparsity", "0.5", "--data", "{bad_npz}"],
     "calibration batch 0 has inputs of shape [(64, 9)]"),
    (["prune", "digits-mlp", "--method", "wanda", "--sparsity", "0.5"], "this step needs data"),
])
def test_bad_input_is_one_paragraph_exit_2_and_no_run(dense, tmp_path, capsys, argv, message):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((100, 9), np.float32), y=np.zeros(100, np.int64))
    argv = [a.format(dense=dense / "dense", bad_npz=bad) for a in argv]
    out = tmp_path / "out"
    code = main([*argv, "--trust-code", "--no-progress", "-o", str(out)] if argv[0] == "finetune"
                else [*argv, "--trust-code", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()
