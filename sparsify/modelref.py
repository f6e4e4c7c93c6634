"""Model references: built-in names and ``package.module:attr`` imports, plus weight loading.

A reference is recorded in a run's manifest as ``{"kind": "builtin"|"import", "name": ..., "args": {...}}``
so that the run can rebuild the module later; weights always come from the run's safetensors.

A reference read from a file is data: an ``import`` reference is imported and called only with
the user's consent (:class:`CodeTrust`), because a run directory may come from anyone.
"""

from __future__ import annotations

import ast
import copy
import importlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from sparsify.errors import ModelError, SparsifyError
from sparsify.trust import CodeTrust, require_consent
from sparsify.models import BUILTIN_MODELS, build_builtin
from sparsify.models.size import check_model_size


def parse_model_args(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings → kwargs; values are Python literals when they parse, else strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ModelError(f"--model-arg {item!r} should look like key=value")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def import_attr(ref: str, error: type[SparsifyError] = ModelError, what: str = "model") -> Any:
    """Import ``package.module:attr`` (attr may be dotted) and return the attribute."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise error(f"{what} reference {ref!r} should look like 'package.module:attr'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise error(f"{what} reference {ref!r}: module {module_name!r} could not be imported ({type(exc).__name__}: {exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise error(f"{what} reference {ref!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def build_model(ref: Mapping[str, Any], trust: CodeTrust = CodeTrust(), source: str | Path = "the model reference") -> nn.Module:
    """Build the module a reference describes; an import reference needs ``trust`` to allow it.

    Parameters and buffers are first counted on the meta device, and a module larger than
    :func:`sparsify.limits.memory_limit` is refused before it is allocated.
    """
    kind, name, args = ref.get("kind"), ref.get("name"), dict(ref.get("args") or {})
    if kind in ("hf", "torchvision"):  # data, not code: a config and weights (trust_remote_code=False)
        from sparsify.models.hub import build_hub_model

        return build_hub_model(ref)
    if kind == "builtin":
        check_model_size(lambda: build_builtin(str(name), **args), str(name))
        return build_builtin(str(name), **args)
    if kind == "import":
        require_consent(str(name), "model.name", source, trust)
        obj = import_attr(str(name))
        if isinstance(obj, nn.Module):
            if args:
                raise ModelError(f"model reference {name!r} is an nn.Module instance; it takes no --model-arg (got {sorted(args)})")
            return copy.deepcopy(obj)
        if callable(obj):
            check_model_size(lambda: obj(**args), str(name))
            try:
                module = obj(**args)
            except Exception as exc:
                raise ModelError(f"model factory {name!r} failed with arguments {args}: {type(exc).__name__}: {exc}") from exc
            if not isinstance(module, nn.Module):
                raise ModelError(f"model factory {name!r} returned a {type(module).__name__}; expected a torch.nn.Module")
            return module
        raise ModelError(f"model reference {name!r} is a {type(obj).__name__}; expected an nn.Module or a factory returning one")
    raise ModelError(f"model reference kind {kind!r} is not known; expected 'builtin', 'import', 'hf' or 'torchvision'")


def model_ref(spec: str, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest reference for a ``--model`` value (a built-in name or ``module:attr``)."""
    if spec in BUILTIN_MODELS:
        return {"kind": "builtin", "name": spec, "args": dict(args or {})}
    if ":" in spec:
        return {"kind": "import", "name": spec, "args": dict(args or {})}
    raise ModelError(
        f"unknown built-in model {spec!r}; expected one of {', '.join(sorted(BUILTIN_MODELS))}, "
        "a run directory, or an import reference 'package.module:attr'"
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights from ``.safetensors`` or a ``torch.load(weights_only=True)`` state dict."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise ModelError(f"weights file {path} is not a valid safetensors file: {exc}") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"weights file {path} is not a plain state dict of tensors: it holds pickled objects or is not a "
            f"torch file ({type(exc).__name__}), and sparsify refuses such files by design because reading them "
            "could run code; save the weights with safetensors (safetensors.torch.save_file) or as a dict of "
            "tensors (torch.save(model.state_dict(), ...))"
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"weights file {path} should hold a dict of parameter name → tensor")
    return obj


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a state dict strictly; any missing, unexpected or mis-shaped key is an error listing them."""
    own = model.state_dict()
    _check_fit(own, {k: tuple(v.shape) for k, v in state.items()}, source)
    with torch.no_grad():
        for key, target in own.items():
            target.copy_(state[key])


def load_weights_file(model: nn.Module, path: str | Path, error: type[SparsifyError] = ModelError) -> None:
    """Load a ``.safetensors`` file strictly, reading each tensor straight into the model's own."""
    from sparsify.safetensors_io import read_header, read_tensors

    path = Path(path)
    entries = read_header(path, error)
    own = model.state_dict()
    _check_fit(own, {k: e.shape for k, e in entries.items()}, str(path))

    def destination(entry):
        t = own[entry.name]
        return t if t.dtype == entry.dtype and t.is_contiguous() else torch.empty(entry.shape, dtype=entry.dtype)

    with torch.no_grad():
        for entry, t in read_tensors(path, entries, destination, error):
            if t is not own[entry.name]:
                own[entry.name].copy_(t)


def _check_fit(own: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    missing = sorted(set(own) - set(shapes))
    unexpected = sorted(set(shapes) - set(own))
    wrong = [f"{k}: file {shapes[k]}, model {tuple(own[k].shape)}"
             for k in sorted(set(own) & set(shapes)) if tuple(own[k].shape) != shapes[k]]
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes {_short(wrong)}")
    if problems:
        raise ModelError(f"weights from {source} do not fit the model: " + "; ".join(problems))


def _short(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', …' if len(items) > limit else ''}] ({len(items)})"
