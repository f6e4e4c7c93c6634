"""The schema of a run's ``manifest.json``: every field's type, range and size.

A manifest is checked whole before anything it names is read, imported or allocated, so a
field of the wrong type or out of range is one error naming the field, never a traceback from
deeper down. Unknown top-level fields are errors (a typo must not be silently ignored).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from sparsify.data import DTYPES
from sparsify.errors import RunError, one_paragraph
from sparsify.limits import check_bytes, human_bytes

FORMAT = "sparsify.run"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
MASKS = "masks.safetensors"

# Kinds of model reference a manifest may record (modelref.build_model builds each).
MODEL_KINDS = ("builtin", "import", "hf", "torchvision")
MAX_MANIFEST_BYTES = 64 << 20
MAX_DEPTH = 32          # nesting of any JSON value in the manifest
MAX_ITEMS = 1_000_000   # JSON values in the whole manifest
MAX_TEXT = 4096         # characters of a name, reference or path
MAX_INPUTS = 64
MAX_RANK = 8
MAX_DIM = 2**31 - 1
MAX_JSON_INT = 2**53
MAX_RECIPE_TEXT = 1 << 20  # characters of the YAML recipe a run records
# Verification and calibration feed batches of up to this many samples of the recorded inputs.
CHECKED_BATCH = 16
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Invalid(Exception):
    """A field that breaks the schema: its dotted path and what was expected."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"field {where}: {message}")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _expect(cond: bool, where: str, expected: str, value: Any) -> None:
    if not cond:
        shown = json.dumps(value)[:80] if isinstance(value, (str, int, float, bool, type(None))) else _kind(value)
        raise _Invalid(where, f"expected {expected}, got {shown}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _text(v: Any, where: str, limit: int = MAX_TEXT) -> str:
    _expect(isinstance(v, str) and 0 < len(v) <= limit, where, f"a non-empty string of at most {limit} characters", v)
    return v


def _object(v: Any, where: str, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> dict:
    _expect(isinstance(v, dict), where, "an object", v)
    missing = [k for k in required if k not in v]
    if missing:
        raise _Invalid(where, f"lacks {', '.join(repr(k) for k in missing)}")
    if required or optional:
        unknown = sorted(set(v) - set(required) - set(optional))
        if unknown:
            raise _Invalid(where, f"has unknown entries {unknown}; expected {sorted({*required, *optional})}")
    return v


def _json_size(value: Any, where: str) -> None:
    """Bound the nesting depth and the number of values of any JSON document."""
    stack, count = [(value, 0)], 0
    while stack:
        v, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise _Invalid(where, f"is nested deeper than {MAX_DEPTH} levels")
        if count > MAX_ITEMS:
            raise _Invalid(where, f"holds more than {MAX_ITEMS:,} values")
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)


def _model(v: Any) -> None:
    from sparsify.models import BUILTIN_MODELS

    ref = _object(v, "model", ("kind", "name"), ("args",))
    _expect(ref["kind"] in MODEL_KINDS, "model.kind", f"one of {', '.join(MODEL_KINDS)}", ref["kind"])
    name = _text(ref["name"], "model.name")
    if ref["kind"] == "builtin":
        _expect(name in BUILTIN_MODELS, "model.name", f"a built-in model ({', '.join(sorted(BUILTIN_MODELS))})", name)
    args = ref.get("args") or {}
    _object(args, "model.args")
    for key, arg in args.items():
        _expect(bool(_KEY.fullmatch(key)), "model.args", "keyword names (identifiers)", key)
        _json_value(arg, f"model.args.{key}")


def _json_value(v: Any, where: str) -> None:
    """A plain JSON value whose integers fit a double exactly (no 10**400)."""
    if _is_int(v):
        _expect(abs(v) <= MAX_JSON_INT, where, "an integer of magnitude at most 2**53", v)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _json_value(x, f"{where}[{i}]")
    elif isinstance(v, dict):
        for k, x in v.items():
            _json_value(x, f"{where}.{k}")


def _inputs(v: Any) -> None:
    _expect(isinstance(v, list) and 0 < len(v) <= MAX_INPUTS, "inputs", f"a list of 1 to {MAX_INPUTS} inputs", v)
    names = set()
    for i, spec in enumerate(v):
        where = f"inputs[{i}]"
        _object(spec, where, ("name", "shape", "dtype"), ("dynamic", "values", "low", "high", "source"))
        name = _text(spec["name"], f"{where}.name", 200)
        _expect(name not in names, f"{where}.name", "a name no other input has", name)
        names.add(name)
        shape = spec["shape"]
        _expect(isinstance(shape, list) and 0 < len(shape) <= MAX_RANK, f"{where}.shape",
                f"a list of 1 to {MAX_RANK} dimensions", shape)
        for d in shape:
            _expect(_is_int(d) and 0 < d <= MAX_DIM, f"{where}.shape", f"positive integer sizes up to {MAX_DIM}", d)
        _expect(spec["dtype"] in DTYPES, f"{where}.dtype", f"one of {', '.join(DTYPES)}", spec["dtype"])
        _input_values(spec, where)
        per_sample = 1
        for d in shape[1:]:
            per_sample *= d
        itemsize = DTYPES[spec["dtype"]].itemsize
        nbytes = per_sample * max(CHECKED_BATCH, shape[0]) * itemsize
        check_bytes(nbytes, f"manifest field {where} (shape {shape}, {spec['dtype']}, batch "
                            f"{max(CHECKED_BATCH, shape[0])})", RunError)


def _input_values(spec: dict, where: str) -> None:
    """The optional entries of an input: dynamic axes and the valid values of its elements."""
    from sparsify.inputspec import VALUE_KINDS

    dynamic = spec.get("dynamic", [0])
    _expect(isinstance(dynamic, list) and 0 < len(dynamic) <= len(spec["shape"])
            and all(_is_int(a) and 0 <= a < len(spec["shape"]) for a in dynamic)
            and len(set(dynamic)) == len(dynamic), f"{where}.dynamic", "distinct axes of the shape", dynamic)
    _expect(spec.get("values", "normal") in VALUE_KINDS, f"{where}.values", f"one of {', '.join(VALUE_KINDS)}",
            spec.get("values"))
    low, high = spec.get("low", 0), spec.get("high")
    _expect(_is_int(low) and abs(low) <= MAX_JSON_INT, f"{where}.low", "an integer", low)
    _expect(high is None or (_is_int(high) and low < high <= MAX_JSON_INT), f"{where}.high",
            "null or an integer above low", high)
    _optional_text(spec.get("source"), f"{where}.source")


def _files(v: Any) -> None:
    files = _object(v, "files", (WEIGHTS, MASKS))
    for name in (WEIGHTS, MASKS):
        entry = _object(files[name], f"files.{name}", ("sha256", "bytes"))
        _expect(isinstance(entry["sha256"], str) and bool(_SHA256.fullmatch(entry["sha256"])),
                f"files.{name}.sha256", "64 lowercase hexadecimal digits", entry["sha256"])
        _expect(_is_int(entry["bytes"]) and 0 <= entry["bytes"] <= MAX_JSON_INT, f"files.{name}.bytes",
                "a byte count", entry["bytes"])


def _optional_text(v: Any, where: str) -> None:
    if v is not None:
        _text(v, where)


def _list_of_objects(v: Any, where: str) -> None:
    _expect(isinstance(v, list), where, "a list", v)
    for i, item in enumerate(v):
        _expect(isinstance(item, dict), f"{where}[{i}]", "an object", item)


def _versions(v: Any) -> None:
    _object(v, "versions")
    for key, value in v.items():
        _expect(isinstance(value, str) and len(value) <= 200, f"versions.{key}", "a version string", value)


def _recipe_file(v: Any) -> None:
    """The YAML recipe a run was made from by `sparsify apply` (sparsify.recipe.Recipe.record)."""
    rec = _object(v, "recipe_file", ("name", "source", "stage", "sha256", "text"))
    for key in ("name", "source", "stage"):
        _text(rec[key], f"recipe_file.{key}")
    _expect(isinstance(rec["sha256"], str) and bool(_SHA256.fullmatch(rec["sha256"])), "recipe_file.sha256",
            "64 lowercase hexadecimal digits", rec["sha256"])
    _expect(isinstance(rec["text"], str) and len(rec["text"]) <= MAX_RECIPE_TEXT, "recipe_file.text",
            f"the recipe's YAML text, at most {MAX_RECIPE_TEXT} characters", rec["text"])


FIELDS: dict[str, Callable[[Any], None]] = {
    "format": lambda v: _expect(v == FORMAT, "format", repr(FORMAT), v),
    "format_version": lambda v: _expect(_is_int(v) and v == FORMAT_VERSION, "format_version",
                                        f"{FORMAT_VERSION} (the version this sparsify reads)", v),
    "created": lambda v: _text(v, "created", 64),
    "versions": _versions,
    "model": _model,
    "inputs": _inputs,
    "data": lambda v: _optional_text(v, "data"),
    "example_inputs": lambda v: _optional_text(v, "example_inputs"),
    "recipe": lambda v: _list_of_objects(v, "recipe"),
    "sparsity": lambda v: _object(v, "sparsity"),
    "metrics": lambda v: _object(v, "metrics"),
    "files": _files,
    "recipe_file": _recipe_file,
}
REQUIRED = ("format", "format_version", "model", "inputs", "files")


def validate(doc: Any) -> dict[str, Any]:
    """``doc`` when it satisfies the schema; raises ``_Invalid`` naming the first bad field."""
    _expect(isinstance(doc, dict), "(top level)", "an object", doc)
    _json_size(doc, "(top level)")
    _object(doc, "(top level)", REQUIRED, tuple(k for k in FIELDS if k not in REQUIRED))
    for key in FIELDS:
        if key in doc:
            FIELDS[key](doc[key])
    return doc


def parse_manifest(path: Path) -> dict[str, Any]:
    """Read ``path`` as a manifest: bounded size, valid JSON, and the schema; RunError otherwise."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise RunError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if size > MAX_MANIFEST_BYTES:
        raise RunError(f"{path} is {human_bytes(size)}; a run manifest is at most {human_bytes(MAX_MANIFEST_BYTES)}")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or an integer of >4300 digits
        raise RunError(f"{path} is not valid JSON ({one_paragraph(exc, 300)}); the run is corrupt") from exc
    except RecursionError:
        raise RunError(f"{path} is nested too deeply to be a run manifest; the run is corrupt") from None
    except OSError as exc:
        raise RunError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if isinstance(doc, dict) and doc.get("format") != FORMAT:
        raise RunError(f"{path} is not a sparsify run manifest (format should be {FORMAT!r})")
    try:
        return validate(doc)
    except _Invalid as exc:
        raise RunError(f"{path}: {exc}; the run is corrupt or was written by another program") from None
