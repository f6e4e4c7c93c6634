"""Every manifest field is checked (type, range, size) before anything it names is used."""

import json

import pytest

from sparsify.api import ModelSource, open_model
from sparsify.artifact import read_manifest, save_run
from sparsify.cli import main
from sparsify.errors import RunError


@pytest.fixture(scope="module")
def good_manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("schema")
    save_run(open_model(ModelSource("digits-mlp")), root / "run")
    return root / "run"


@pytest.fixture
def run_with(good_manifest, tmp_path):
    """A copy of a good run whose manifest is edited by ``edit(manifest)``."""
    import shutil

    def make(edit):
        dest = tmp_path / "run"
        shutil.copytree(good_manifest, dest)
        manifest = json.loads((dest / "manifest.json").read_text())
        edit(manifest)
        (dest / "manifest.json").write_text(json.dumps(manifest))
        return dest

    return make


def _set(path, value):
    def edit(m):
        *parents, last = path
        target = m
        for key in parents:
            target = target[key]
        target[last] = value
    return edit


def _drop(key):
    return lambda m: m.pop(key)


W = "weights.safetensors"
CASES = [
    (_set(["files"], None), "field files: expected an object, got null"),
    (_set(["files", W], "x"), f"field files.{W}: expected an object"),
    (_set(["files", W, "sha256"], "abc"), "64 lowercase hexadecimal digits"),
    (_set(["files", W, "bytes"], -1), f"field files.{W}.bytes: expected a byte count"),
    (_set(["files", W, "bytes"], 1), "but the manifest records 1;"),  # wrong size: caught before hashing
    (_drop("files"), "lacks 'files'"),
    (_set(["model"], None), "field model: expected an object, got null"),
    (_set(["model", "kind"], "exec"), "field model.kind: expected one of builtin, import"),
    (_set(["model", "name"], 5), "field model.name: expected a non-empty string"),
    (_set(["model", "name"], "resnet9000"), "field model.name: expected a built-in model"),
    (_set(["model", "args"], [1]), "field model.args: expected an object"),
    (_set(["model", "args"], {"bad key": 1}), "keyword names"),
    (_set(["model", "args"], {"hidden": 10**30}), "integer of magnitude at most 2**53"),
    (_set(["model", "extra"], 1), "field model: has unknown entries ['extra']"),
    (_set(["inputs"], None), "field inputs: expected a list of 1 to 64 inputs"),
    (_set(["inputs"], []), "field inputs: expected a list of 1 to 64 inputs"),
    (_set(["inputs", 0, "shape"], [1, -3]), "field inputs[0].shape: expected positive integer sizes"),
    (_set(["inputs", 0, "shape"], [1, 2.5]), "field inputs[0].shape: expected positive integer sizes"),
    (_set(["inputs", 0, "shape"], [1, True]), "field inputs[0].shape: expected positive integer sizes"),
    (_set(["inputs", 0, "shape"], []), "field inputs[0].shape: expected a list of 1 to 8 dimensions"),
    (_set(["inputs", 0, "dtype"], "complex64"), "field inputs[0].dtype: expected one of float32"),
    (_set(["inputs", 0, "shape"], [1, 2**30, 2**30]), "would allocate"),
    (_set(["inputs", 0, "name"], ""), "field inputs[0].name"),
    (lambda m: m["inputs"].append(dict(m["inputs"][0])), "field inputs[1].name: expected a name no other input has"),
    (_set(["format_version"], "1"), "field format_version: expected 1"),
    (_set(["format_version"], 2), "field format_version: expected 1"),
    (_set(["created"], 5), "field created"),
    (_set(["versions"], {"torch": 2}), "field versions.torch: expected a version string"),
    (_set(["data"], 5), "field data: expected a non-empty string"),
    (_set(["recipe"], {}), "field recipe: expected a list"),
    (_set(["recipe"], [1]), "field recipe[0]: expected an object"),
    (_set(["metrics"], []), "field metrics: expected an object"),
    (_set(["sparsity"], "x"), "field sparsity: expected an object"),
    (_set(["surprise"], 1), "has unknown entries ['surprise']"),
    (_set(["recipe"], [{"a": json.loads("[" * 40 + "]" * 40)}]), "nested deeper than 32 levels"),
]


@pytest.mark.parametrize("edit, message", CASES)
def test_bad_field_is_named_before_anything_is_built(run_with, capsys, edit, message):
    run = run_with(edit)
    with pytest.raises(RunError) as info:
        read_manifest(run)
    assert message in str(info.value)
    assert main(["inspect", str(run)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"format": "sparsify.run", "x": ' + "9" * 5000 + "}", "not valid JSON"),
    ("\xff\xfe", "not valid JSON"),
    ("[]", "field (top level): expected an object"),
])
def test_unparseable_manifests(good_manifest, tmp_path, capsys, text, message):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(good_manifest, run)
    (run / "manifest.json").write_bytes(text.encode("latin-1"))
    assert main(["inspect", str(run)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_model_args_that_would_allocate_too_much_are_refused_before_allocating(run_with, capsys, monkeypatch):
    monkeypatch.setenv("SPARSIFY_MAX_BYTES", str(64 << 20))
    run = run_with(_set(["model", "args"], {"hidden": 10**7}))  # ~2.6 GB of parameters
    assert main(["prune", str(run), "--sparsity", "0.5", "-o", str(run.parent / "out")]) == 2
    err = capsys.readouterr().err
    assert "would allocate" in err and "digits-mlp" in err and "SPARSIFY_MAX_BYTES" in err


def test_negative_model_args_are_a_clean_error(run_with, capsys):
    run = run_with(_set(["model", "args"], {"hidden": -1}))
    assert main(["prune", str(run), "--sparsity", "0.5", "-o", str(run.parent / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot be built with arguments {'hidden': -1}" in err and err.count("\n") == 1


@pytest.mark.parametrize("values, message", [
    ([0.25, 0.75], "holds the value 0.25"),
    ([float("nan"), 1.0], "holds the value nan"),
    ([2, 0], "holds the value 2"),
])
def test_masks_must_be_exactly_zero_or_one(tmp_path, capsys, values, message):
    import torch
    from safetensors.torch import load_file, save_file

    from sparsify.api import prune_model
    from sparsify.fileio import sha256_file

    prune_model(ModelSource("digits-mlp"), tmp_path / "run", sparsity=0.9)
    path = tmp_path / "run" / "masks.safetensors"
    masks = load_file(str(path))
    name = sorted(masks)[0]
    bad = torch.zeros(masks[name].shape, dtype=torch.float32 if isinstance(values[0], float) else torch.int64)
    bad.view(-1)[: len(values)] = torch.tensor(values, dtype=bad.dtype)
    masks[name] = bad
    save_file(masks, str(path))
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    manifest["files"]["masks.safetensors"] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    code = main(["finetune", str(tmp_path / "run"), "--data", "digits", "--epochs", "1", "--no-progress",
                 "-o", str(tmp_path / "ft")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and repr(name) in err
    assert not (tmp_path / "ft").exists()
