"""Backends: how a model path is loaded with N threads and run on numpy feeds.

A :class:`Backend` has a ``name`` and ``load(path, threads) -> Runner``; a :class:`Runner`
exposes ``input_specs`` and ``run(feeds) -> list[np.ndarray]``. Built-in backends:

- ``ort``: ONNX Runtime, CPUExecutionProvider, ``intra_op_num_threads=threads``,
  ``inter_op_num_threads=1``, sequential execution, all graph optimizations;
- ``sparsify``: the sparse runtime ``sparsify.runtime.Session(path, threads=N)``
  (imported lazily, with a clear error when it is not available);
- ``torch``: an ``nn.Module`` obtained from a loader callable; the default loader reads a
  run directory (see :func:`load_run_module`). Register another with
  ``register_backend("torch", lambda: TorchBackend(my_loader))``.

Backends are registered by factory (a zero-argument callable returning a Backend) so that
heavy imports happen only when a backend is used. The memory probe re-creates the backend
in a fresh process, which works when the factory is a module-level function or class.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from sparsify.bench.modelfile import ModelFile
from sparsify.errors import ModelError, ModelFileError
from sparsify.inputspec import InputSpec
from sparsify.ort_types import NUMPY_DTYPES
from sparsify.trust import CodeTrust

if TYPE_CHECKING:
    import torch

@runtime_checkable
class Runner(Protocol):
    """A loaded model, ready to run."""

    input_specs: Sequence[InputSpec]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run once on the feeds (input name -> array); return the outputs in graph order."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Loads a model path into a Runner that uses ``threads`` threads."""

    name: str

    def load(self, path: Path, threads: int) -> Runner:
        """Load the model at ``path`` (checked to exist) for ``threads`` threads."""
        ...


BackendFactory = Callable[[], Backend]

def _ort_dtype(type_str: str, where: str) -> np.dtype:
    try:
        return NUMPY_DTYPES[type_str]
    except KeyError:
        raise ModelFileError(
            f"{where}: input type {type_str!r} is not supported by the benchmark; "
            f"expected one of {sorted(NUMPY_DTYPES)}"
        ) from None


def specs_from_node_args(args: Sequence[Any], where: str) -> list[InputSpec]:
    """InputSpecs from ORT-style NodeArgs (``.name``, ``.shape``, ``.type``)."""
    return [
        InputSpec(a.name, tuple(d if isinstance(d, int) or d is None else str(d) for d in a.shape),
                  _ort_dtype(a.type, where))
        for a in args
    ]


class OrtRunner:
    """An ``onnxruntime.InferenceSession`` behind the Runner interface."""

    def __init__(self, path: Path, threads: int) -> None:
        from sparsify.ortsession import ort_session

        self.session = ort_session(path, threads)
        self.input_specs = specs_from_node_args(self.session.get_inputs(), str(path))

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the session; outputs in graph order."""
        return self.session.run(None, feeds)


class OrtBackend:
    """ONNX Runtime on the CPU."""

    name = "ort"

    def load(self, path: Path, threads: int) -> Runner:
        """An InferenceSession with ``threads`` intra-op threads."""
        return OrtRunner(path, threads)


class SparsifyRunner:
    """The sparse runtime's ``Session`` behind the Runner interface."""

    def __init__(self, session: Any, input_specs: Sequence[InputSpec]) -> None:
        self.session = session
        self.input_specs = list(input_specs)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the session; outputs in graph order."""
        return list(self.session.run(None, feeds))


class SparsifyBackend:
    """The sparsify sparse runtime (``sparsify.runtime.Session``)."""

    name = "sparsify"

    def load(self, path: Path, threads: int) -> Runner:
        """A runtime Session with ``threads`` threads."""
        from sparsify.runtime import Session

        session = Session(os.fspath(path), threads=threads)
        return SparsifyRunner(session, specs_from_node_args(session.get_inputs(), str(path)))


TorchLoader = Callable[[Path], Any]


def as_input_spec(obj: Any) -> InputSpec:
    """An InputSpec from an InputSpec, an object with ``name``/``shape``/``dtype`` attributes,
    a mapping with those keys, or a ``(name, shape, dtype)`` triple (dtype numpy, str or torch)."""
    if isinstance(obj, InputSpec):
        return obj
    if isinstance(obj, Mapping):
        name, shape, dtype = obj["name"], obj["shape"], obj["dtype"]
    elif all(hasattr(obj, a) for a in ("name", "shape", "dtype")):
        name, shape, dtype = obj.name, obj.shape, obj.dtype
    else:
        name, shape, dtype = obj
    if hasattr(dtype, "is_floating_point"):  # a torch.dtype
        import torch

        dtype = torch.empty((), dtype=dtype).numpy().dtype
    return InputSpec(str(name), tuple(shape), np.dtype(dtype))


def _outputs_to_numpy(out: Any) -> list[np.ndarray]:
    if hasattr(out, "detach"):
        return [out.detach().cpu().numpy()]
    if isinstance(out, Mapping):
        return [a for v in out.values() for a in _outputs_to_numpy(v)]
    if isinstance(out, (list, tuple)):
        return [a for v in out for a in _outputs_to_numpy(v)]
    return [np.asarray(out)]


class TorchRunner:
    """An ``nn.Module`` in eval mode, called with the feeds as positional tensors in spec order."""

    def __init__(self, module: torch.nn.Module, input_specs: Sequence[InputSpec], threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self._torch = torch
        self.threads = threads
        self.module = module.eval()
        self.input_specs = [as_input_spec(s) for s in input_specs]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Call the module under ``torch.inference_mode``; outputs flattened to numpy arrays."""
        torch = self._torch
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(feeds[s.name]) for s in self.input_specs))
        return _outputs_to_numpy(out)


class TorchBackend:
    """PyTorch eager; ``loader(path)`` returns ``(module, input_specs)`` or an object with
    ``.module`` and ``.input_specs`` attributes. Input specs are InputSpecs or
    ``(name, shape, dtype)`` triples (dtype numpy or torch)."""

    def __init__(self, loader: TorchLoader, name: str = "torch") -> None:
        self.loader = loader
        self.name = name

    def load(self, path: Path, threads: int) -> Runner:
        """Load the module through the loader and wrap it."""
        loaded = self.loader(path)
        if isinstance(loaded, tuple) and len(loaded) == 2:
            module, specs = loaded
        elif hasattr(loaded, "module") and hasattr(loaded, "input_specs"):
            module, specs = loaded.module, loaded.input_specs
        else:
            raise ModelError(
                f"{path}: the torch loader returned {type(loaded).__name__}; expected "
                "(module, input_specs) or an object with .module and .input_specs"
            )
        return TorchRunner(module, specs, threads)


def load_run_module(path: Path, trust: CodeTrust | None = None) -> Any:
    """The default torch loader for a run directory: the run's masked model in eval mode with
    masks folded, and the input specs recorded in its manifest. ``trust`` allows the code
    reference the run may name (see :func:`sparsify.artifact.load_run`)."""
    from sparsify.artifact import load_run

    run = load_run(path, trust or CodeTrust())
    return run.reference_module(), list(run.inputs)


def default_torch_backend(trust: CodeTrust | None = None) -> Backend:
    """TorchBackend with the default run-directory loader, allowing the code ``trust`` allows."""
    return TorchBackend(functools.partial(load_run_module, trust=trust) if trust else load_run_module)


_REGISTRY: dict[str, BackendFactory] = {
    "ort": OrtBackend,
    "sparsify": SparsifyBackend,
    "torch": default_torch_backend,
}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Register (or replace) the backend ``name``; ``factory()`` must return a Backend."""
    if not name or not isinstance(name, str):
        raise ValueError(f"backend name {name!r} should be a non-empty string")
    if not callable(factory):
        raise ValueError(f"factory for backend {name!r} should be callable, got {type(factory).__name__}")
    _REGISTRY[name] = factory


def available_backends() -> list[str]:
    """Names of the registered backends, sorted."""
    return sorted(_REGISTRY)


def get_backend(name: str, trust: CodeTrust | None = None) -> Backend:
    """A fresh Backend instance for ``name``; ``trust`` reaches the default torch backend's run loader."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"backend {name!r} is not registered; expected one of {available_backends()}") from None
    return factory(trust) if trust is not None and takes_trust(name) else factory()


def takes_trust(name: str) -> bool:
    """True when the backend registered as ``name`` is the default torch one (it takes ``trust``)."""
    return _REGISTRY.get(name) is default_torch_backend


def factory_reference(name: str) -> str | None:
    """``"module:qualname"`` of the factory registered as ``name``, if a fresh process can import it."""
    factory = _REGISTRY.get(name)
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        return None
    return f"{module}:{qualname}"


def resolve_factory(reference: str) -> BackendFactory:
    """Import a factory from a ``"module:qualname"`` reference."""
    module_name, _, qualname = reference.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def pick_backend(model: ModelFile, requested: str | None = None) -> str:
    """The backend for a model: ``requested`` if given; else ``torch`` for a run directory,
    ``sparsify`` for an ONNX graph using ``ai.sparsify`` ops, ``ort`` otherwise."""
    if requested is not None:
        if requested not in _REGISTRY:
            raise ValueError(f"backend {requested!r} is not registered; expected one of {available_backends()}")
        return requested
    if model.kind == "run":
        return "torch"
    return "sparsify" if model.uses_sparsify_ops else "ort"
