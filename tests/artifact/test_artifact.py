import json

import pytest
import torch

from sparsify.artifact import Run, load_run, save_run
from sparsify.inputspec import InputSpec
from sparsify.errors import RunError
from sparsify.masks import apply_masks
from sparsify.pruner import plan_unstructured
from sparsify.trust import TRUST_ALL
from tests.helpers import assert_close
from tests.models import make_tiny


def _run():
    model = make_tiny()
    apply_masks(model, plan_unstructured(model, 0.75).masks)
    return Run(model=model, model_ref={"kind": "import", "name": "tests.models:make_tiny", "args": {}},
               inputs=[InputSpec("input", (1, 8))], recipe=[{"step": "prune"}])


def test_round_trip_gives_identical_outputs_and_masks(tmp_path):
    run = _run()
    save_run(run, tmp_path / "r")
    back = load_run(tmp_path / "r", TRUST_ALL)
    x = torch.randn(7, 8)
    assert_close(back.model(x), run.model(x), atol=0, rtol=0)
    assert set(back.masks) == set(run.masks)
    assert all(torch.equal(back.masks[k], run.masks[k]) for k in run.masks)
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["sparsity"]["fc1.weight"]["sparsity"] == pytest.approx(0.75)
    assert manifest["inputs"] == [{"name": "input", "shape": [1, 8], "dtype": "float32"}]


def test_tampered_weights_are_detected(tmp_path):
    save_run(_run(), tmp_path / "r")
    f = tmp_path / "r" / "weights.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(RunError, match="weights.safetensors has SHA-256 .* modified or corrupted"):
        load_run(tmp_path / "r", TRUST_ALL)


@pytest.mark.parametrize("victim, message", [
    ("masks.safetensors", "is missing masks.safetensors"),
    ("manifest.json", "has no manifest.json"),
])
def test_missing_files_are_named(tmp_path, victim, message):
    save_run(_run(), tmp_path / "r")
    (tmp_path / "r" / victim).unlink()
    with pytest.raises(RunError, match=message):
        load_run(tmp_path / "r", TRUST_ALL)


def test_corrupt_manifest_is_reported(tmp_path):
    save_run(_run(), tmp_path / "r")
    (tmp_path / "r" / "manifest.json").write_text("{not json")
    with pytest.raises(RunError, match="not valid JSON"):
        load_run(tmp_path / "r", TRUST_ALL)


def test_corrupt_safetensors_with_matching_hash_is_reported(tmp_path):
    from sparsify.fileio import sha256_file

    save_run(_run(), tmp_path / "r")
    f = tmp_path / "r" / "masks.safetensors"
    f.write_bytes(b"garbage")
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    manifest["files"]["masks.safetensors"].update(sha256=sha256_file(f), bytes=f.stat().st_size)
    (tmp_path / "r" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunError, match="not a readable safetensors file"):
        load_run(tmp_path / "r", TRUST_ALL)


def test_save_refuses_to_replace_a_foreign_directory(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("precious")
    with pytest.raises(RunError, match="refusing to replace"):
        save_run(_run(), d)
    assert (d / "thesis.tex").read_text() == "precious"


def test_save_replaces_an_existing_run_and_failed_save_keeps_the_old(tmp_path, monkeypatch):
    save_run(_run(), tmp_path / "r")
    old = (tmp_path / "r" / "weights.safetensors").read_bytes()
    import sparsify.artifact as artifact

    def boom(*a, **k):
        raise RunError("disk full (simulated)")

    monkeypatch.setattr(artifact, "sparsity_report", boom)
    with pytest.raises(RunError, match="simulated"):
        save_run(_run(), tmp_path / "r")
    assert (tmp_path / "r" / "weights.safetensors").read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"], "no temp directory left behind"


def test_unwritable_output_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunError, match="cannot create the output folder"):
        save_run(_run(), blocker / "sub" / "run")


def test_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    from sparsify.errors import SparsifyError
    from sparsify.fileio import atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "out.json", SparsifyError) as tmp:
            assert tmp.suffix == ".json"
            tmp.write_text("{}")
        save_run(_run(), tmp_path / "r")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "r").stat().st_mode) == 0o755
