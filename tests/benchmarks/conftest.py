"""Checks shared by the benchmark-script smoke tests."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_doc(path: Path, schema: str) -> dict[str, Any]:
    """The JSON document at ``path``, checked for the schema tag and the common envelope (with
    the load averages before and after the run)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["schema"] == schema
    assert set(doc) >= {"created", "machine", "config", "load"}
    assert doc["machine"]["logical_cores"] >= 1 and doc["machine"]["cpu"]
    for when in ("before", "after"):
        load = doc["load"][when]
        assert len(load) == 3 and all(isinstance(v, float) and v >= 0 for v in load), (when, load)
    return doc


def assert_png(path: Path) -> None:
    """A PNG file of non-trivial size."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > 1000


def positive(*values: Any) -> None:
    """Every value is a finite number > 0."""
    for v in values:
        assert isinstance(v, (int, float)) and not isinstance(v, bool), v
        assert math.isfinite(v) and v > 0, v


def no_temp_files(folder: Path) -> None:
    """Atomic writes leave no temporary files behind, and the results are not private (0o600) files."""
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
    for p in folder.iterdir():
        if p.suffix in (".json", ".png"):
            assert p.stat().st_mode & 0o044, f"{p} is readable by its owner only"
