"""Family (b): run directories (manifest fields, safetensors headers, masks) -- where the cases
of the manifest-schema work join the suite.

A case is ``(name, make)``: ``make(folder)`` writes a run directory (start from ``base_run``, a
pruned digits-mlp run, and break one thing); every command that reads runs must then exit 0,
2 or 3 with one line on stderr (``oracle.check_cli``). Add cases to RUN_DIR_CASES.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest

from tests.fuzz.oracle import check_cli


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    from sparsify.cli import main

    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(["prune", "digits-mlp", "--sparsity", "0.5", "-o", str(run)]) == 0
    return run


def _copy(base: Path, folder: Path) -> Path:
    run = folder / "run"
    shutil.copytree(base, run)
    return run


def manifest_not_json(base: Path, folder: Path) -> Path:
    run = _copy(base, folder)
    (run / "manifest.json").write_text("{ not json")
    return run


def manifest_a_list(base: Path, folder: Path) -> Path:
    run = _copy(base, folder)
    (run / "manifest.json").write_text(json.dumps([1, 2, 3]))
    return run


def weights_truncated(base: Path, folder: Path) -> Path:
    run = _copy(base, folder)
    data = (run / "weights.safetensors").read_bytes()
    (run / "weights.safetensors").write_bytes(data[: len(data) // 2])
    return run


RUN_DIR_CASES: dict[str, Callable[[Path, Path], Path]] = {
    "manifest not JSON": manifest_not_json,
    "manifest a list": manifest_a_list,
    "weights truncated": weights_truncated,
}


@pytest.mark.parametrize("name", sorted(RUN_DIR_CASES))
def test_run_directory_through_inspect_and_export_exits_cleanly(base_run, tmp_path, capfd, name):
    run = RUN_DIR_CASES[name](base_run, tmp_path)
    check_cli(["inspect", str(run)], capfd)
    check_cli(["export", str(run), "--no-verify", "-o", str(tmp_path / "m.onnx")], capfd)


# -- seeded manifest mutations ------------------------------------------------------------------

HOSTILE_VALUES = [None, True, -1, 0, 2**31, 10**12, 2**63, 1e308, -0.5, "", "x" * 5000, "os:system",
                  "../../etc/passwd", [], [None], [[[[[]]]]], {}, {"kind": "import"}, {"a": {"b": {"c": 1}}}]


def _paths(value, prefix=()):
    """Every path (tuple of keys and indexes) into a JSON document."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _mutate(manifest: dict, rng) -> str:
    """Apply one seeded mutation in place; returns what it did."""
    paths = [p for p in _paths(manifest) if p]
    path = paths[rng.integers(len(paths))]
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    action = rng.integers(3)
    if action == 0 and isinstance(parent, dict):
        del parent[path[-1]]
        return f"delete {path}"
    if action == 1 and isinstance(parent, dict):
        parent[f"unknown_{rng.integers(100)}"] = 1
        return f"add a key beside {path}"
    value = HOSTILE_VALUES[rng.integers(len(HOSTILE_VALUES))]
    parent[path[-1]] = value
    return f"set {path} = {str(value)[:40]}"


@pytest.mark.seeds(30, 400)
def test_mutated_manifest_is_refused_cleanly_or_read(base_run, tmp_path, capfd, seed):
    import numpy as np

    run = _copy(base_run, tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    what = _mutate(manifest, np.random.default_rng(seed))
    (run / "manifest.json").write_text(json.dumps(manifest))
    marker = tmp_path / "MARKER"
    assert check_cli(["inspect", str(run)], capfd) in (0, 2), what
    check_cli(["prune", str(run), "--sparsity", "0.6", "-o", str(tmp_path / "p")], capfd)
    assert not marker.exists()


@pytest.mark.seeds(10, 100)
def test_byte_flipped_safetensors_are_refused_cleanly(base_run, tmp_path, capfd, seed):
    """Flips in a weights or masks file whose recorded size and hash are updated to match."""
    import numpy as np

    from sparsify.fileio import sha256_file

    rng = np.random.default_rng(seed)
    run = _copy(base_run, tmp_path)
    name = ("weights.safetensors", "masks.safetensors")[seed % 2]
    data = bytearray((run / name).read_bytes())
    header = int.from_bytes(data[:8], "little") + 8
    for _ in range(1 + rng.integers(4)):  # mostly in the header, where the structure is
        pos = rng.integers(header) if rng.random() < 0.7 else rng.integers(len(data))
        data[pos] ^= 1 << int(rng.integers(8))
    (run / name).write_bytes(bytes(data))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": sha256_file(run / name), "bytes": len(data)}
    (run / "manifest.json").write_text(json.dumps(manifest))
    check_cli(["inspect", str(run)], capfd)
    check_cli(["export", str(run), "--no-verify", "-o", str(tmp_path / "m.onnx")], capfd)
