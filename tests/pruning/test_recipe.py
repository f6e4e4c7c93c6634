"""YAML recipes: strict validation before any work, the same checks as the flags, runs that remember them."""

import json

import pytest

from sparsify.cli import main
from sparsify.recipe import RecipeError, parse_recipe, shipped

TINY = """\
name: tiny
model: tests.models:make_tiny
data: tests.models:tiny_dataset
stages:
  - name: dense
    train: {epochs: 1, lr: 0.01}
  - name: p50
    prune: {sparsity: 0.5, method: sparsegpt, calibration_batches: 2}
  - name: g75
    finetune:
      epochs: 2
      batch_size: 32
      distill: true
      schedule: {final_sparsity: 0.75, start: 0.0, end: 0.5, every: 1, unit: step}
  - name: onnx
    export: {mode: dense}
"""


def test_every_shipped_recipe_is_valid_and_covers_each_builtin():
    recipes = shipped()
    for model in ("digits-mlp", "digits-cnn", "digits-vit"):
        assert f"{model}-90" in recipes and f"{model}-c50" in recipes
    for name, text in recipes.items():
        recipe = parse_recipe(text, name)
        assert recipe.name == name
        assert [s.action for s in recipe.stages] == ["train", "finetune", "export"]


@pytest.mark.parametrize("edit, where, message", [
    (("sparsity: 0.5", 'sparsity: "0.5"'), r"line 8, stages\[1\]\.prune\.sparsity", r"should be a number .*'0.5' \(str\)"),
    (("sparsity: 0.5", "sparsity: 1.0"), r"line 8, stages\[1\]\.prune\.sparsity", r"should be a float in \[0, 1\)"),
    (("epochs: 2", "epochs: 2.5"), r"line 11, stages\[2\]\.finetune\.epochs", "should be an integer"),
    (("end: 0.5", "end: -0.5"), r"line 14, stages\[2\]\.finetune\.schedule\.end", r"in \[0, 1\]"),
    (("start: 0.0, end: 0.5", "start: 0.6, end: 0.5"), r"line 14, stages\[2\]\.finetune\.schedule\.end",
     "before it starts"),
    (("sparsity: 0.5, method: sparsegpt", "nm: '4:4'"), r"line 8, stages\[1\]\.prune\.nm", "0 < N < M"),
    (("batch_size: 32", "batch_sise: 32"), r"line 12, stages\[2\]\.finetune\.batch_sise", "unknown field"),
    (("lr: 0.01", "lr: 1e-2"), r"line 6, stages\[0\]\.train\.lr", r"write it with a decimal point"),
    (("  - name: onnx", "  - name: g75"), r"line 15, stages\[3\]\.name", "two stages are named 'g75'"),
    (("    export: {mode: dense}", "    export: {mode: dense}\n    from: nowhere"), r"stages\[3\]\.from",
     "should name an earlier stage"),
    (("    train: {epochs: 1, lr: 0.01}", "    train: {epochs: 1, lr: 0.01}\n    prune: {sparsity: 0.5}"),
     r"line 5, stages\[0\]", "exactly one of"),
    (("data: tests.models:tiny_dataset\n", ""), r"line 4, stages\[0\]", "needs data"),
    (("name: tiny\n", "name: tiny\nname: other\n"), r"line 2, name", "appears twice"),
    (("model: tests.models:make_tiny", "model: [1, 2]"), r"line 2, model", "should be a string"),
    (("model: tests.models:make_tiny", "model: resnet9000"), r"line 2, model", "should be a built-in"),
    (("stages:", "stages: 3\nold:"), r"line 5, old", "unknown field 'old'"),
    (("    train: {epochs: 1, lr: 0.01}", "    train: {epochs: 1, progress: false}"), r"stages\[0\]\.train\.progress",
     "command-line setting"),
    (("name: tiny", "name: !!python/object/apply:os.system ['true']"), "line 1", "not valid for a recipe"),
    (("stages:", "stages: [unclosed"), "line", "not valid for a recipe"),
])
def test_a_bad_recipe_names_file_line_and_field_and_nothing_runs(tmp_path, capsys, edit, where, message):
    old, new = edit
    assert old in TINY
    path = tmp_path / "bad.yaml"
    path.write_text(TINY.replace(old, new, 1))
    out = tmp_path / "out"
    assert main(["apply", str(path), "-o", str(out), "--no-progress", "--trust-code"]) == 2
    err = capsys.readouterr().err
    assert f"{path}" in err, err
    assert __import__("re").search(where, err), err
    assert __import__("re").search(message, err), err
    assert err.count("\n") == 1, "one paragraph"
    assert not out.exists()


def test_flags_and_recipe_fields_share_one_validation(tmp_path, capsys):
    assert main(["prune", "digits-mlp", "--sparsity", "1.0", "-o", str(tmp_path / "x")]) == 2
    flag_err = capsys.readouterr().err
    with pytest.raises(RecipeError) as info:
        parse_recipe(TINY.replace("sparsity: 0.5", "sparsity: 1.0"), "r.yaml")
    reason = "sparsity=1.0 should be a float in [0, 1)"
    assert reason in flag_err and reason in str(info.value)


def test_unknown_recipe_lists_the_shipped_ones(capsys):
    assert main(["apply", "no-such-recipe"]) == 2
    assert "digits-vit-90" in capsys.readouterr().err


@pytest.mark.slow
def test_apply_runs_every_stage_and_runs_remember_the_recipe(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    out = tmp_path / "job"
    assert main(["apply", str(path), "-o", str(out), "--no-progress"]) == 2  # it names code: consent first
    assert "line 2, model" in capsys.readouterr().err and not out.exists()
    assert main(["apply", str(path), "-o", str(out), "--no-progress", "--trust-code"]) == 0
    printed = capsys.readouterr().out
    for name in ("dense", "p50", "g75"):
        manifest = json.loads((out / name / "manifest.json").read_text())
        assert manifest["recipe_file"]["stage"] == name and manifest["recipe_file"]["text"] == TINY
        assert f"{name}: {out / name}" in printed
    assert (out / "onnx.onnx").is_file()
    steps = json.loads((out / "g75" / "manifest.json").read_text())["recipe"]
    assert [s["step"] for s in steps] == ["train", "prune", "finetune"]
    assert steps[1]["method"] == "sparsegpt" and len(steps[1]["layers"]) == 2
    points = steps[2]["schedule"]["points"]
    assert points[-1]["target"] == pytest.approx(0.75) and points[-1]["weight_sparsity"] == pytest.approx(0.75, abs=0.01)
    assert main(["inspect", str(out / "g75"), "--trust-code"]) == 0
    shown = capsys.readouterr().out
    assert "made by recipe 'tiny', stage 'g75'" in shown and "final_sparsity: 0.75" in shown
    assert "gradual unstructured schedule" in shown
