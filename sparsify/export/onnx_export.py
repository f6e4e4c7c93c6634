"""Dense ONNX export of a torch module (masks folded by the caller) with a dynamic batch axis."""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from sparsify.errors import ExportError, one_paragraph
from sparsify.export.onnx_write import Target, data_file_name, use_external_data, write_onnx
from sparsify.export.verify import set_eval
from sparsify.progress import LARGE_BYTES, bar

DEFAULT_OPSET = 18


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints and warnings (errors still raise)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def export_onnx(module: nn.Module, example_inputs: Sequence[torch.Tensor], target: str | Path | Target,
                input_names: Sequence[str], output_names: Sequence[str] | None = None,
                dynamic_batch: bool = True, opset: int = DEFAULT_OPSET, external_data: str = "auto",
                check: bool = True, dynamic: Sequence[Sequence[int]] | None = None,
                metadata: dict[str, str] | None = None) -> bool:
    """Export ``module`` to ``target`` (torch.export-based exporter); returns whether the weights
    went to a data file beside the model.

    ``external_data`` (auto, always, never) decides that (see :mod:`sparsify.export.onnx_write`).
    The weights are streamed to disk: no serialized copy of them is held in memory. ``check``
    runs :func:`check_onnx` on the graph while its weights are in an external data file (an
    inline file is then written from it), which costs no copy of the weights.

    The batch axis is dynamic (unless ``dynamic_batch=False``), and so is every other axis
    ``dynamic`` lists per input (e.g. a sequence axis, named ``seq`` in the file).
    ``metadata`` goes to the model's ``metadata_props``.
    """
    import onnx
    import onnx_ir as ir

    if not isinstance(target, Target):
        target = Target(Path(target), data_file_name(Path(target).name))
    from sparsify.graph.capture import export_program

    set_eval(module)
    inputs = tuple(example_inputs)
    model: nn.Module | torch.export.ExportedProgram = module
    if dynamic_batch:
        # Captured first (a size of 1 would be specialized, so dynamic axes are exported at 2),
        # with the ranges torch infers for the dynamic axes (e.g. seq <= the position table).
        with _quiet(), torch.no_grad():
            model = export_program(module, inputs, dynamic)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                model, inputs, None, dynamo=True, input_names=list(input_names),
                output_names=list(output_names) if output_names else None,
                opset_version=opset, optimize=True, verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; name the model and the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.onnx.export failed for {type(module).__name__}: {first}") from exc
    if dynamic_batch:
        _name_dynamic_dims(program.model, model)
    program.model.metadata_props.update(metadata or {})
    nbytes = sum(v.const_value.nbytes for v in program.model.graph.initializers.values() if v.const_value is not None)
    external = use_external_data(nbytes, external_data, type(module).__name__)
    large = nbytes >= LARGE_BYTES
    try:
        with bar(nbytes, f"write {target.path.name}", large=large) as shown:
            def saved(tensor, _info) -> None:
                shown.update(tensor.nbytes)

            what = f"exported ONNX model for {type(module).__name__}"
            if external:
                ir.save(program.model, target.path, external_data=target.data_name, callback=saved)
                if check:
                    check_onnx(target.path, what)
            else:  # streamed into one protobuf from a scratch copy with external data
                with tempfile.TemporaryDirectory(dir=target.path.parent, prefix=".scratch-") as scratch:
                    scratch_path = Path(scratch) / "model.onnx"
                    ir.save(program.model, scratch_path, external_data="model.onnx.data", callback=saved)
                    if check:  # checked with its weights on disk: the same graph, without a copy of them
                        check_onnx(scratch_path, what)
                    shown.reset(total=nbytes)
                    shown.set_description(f"inline {target.path.name}")
                    write_onnx(onnx.load(str(scratch_path), load_external_data=False), Path(scratch), target,
                               external=False, progress=lambda _name, done, _total: shown.update(done - shown.n))
    except OSError as exc:  # a full disk, most often: the weights are the bulk of the file
        raise ExportError(f"cannot write the ONNX model to {target.path.parent}: {exc.strerror or exc}; "
                          f"it needs about {nbytes / 2**30:.2f} GiB free there") from exc
    finally:
        _detach_weights(program)
    return external


def _name_dynamic_dims(model, program: torch.export.ExportedProgram) -> None:
    """Name the file's dynamic dims as the capture did ("batch", "seq") instead of torch's symbols
    ("s77"), everywhere they appear (inputs, outputs, intermediate shapes)."""
    import onnx_ir as ir

    rename = getattr(program, "sparsify_dim_names", {})
    if not rename:
        return
    values = [*model.graph.inputs, *model.graph.outputs, *(v for node in model.graph for v in node.outputs)]
    for value in values:
        shape = value.shape
        if shape is None or not any(isinstance(d, ir.SymbolicDim) and d.value in rename for d in shape):
            continue
        value.shape = ir.Shape([ir.SymbolicDim(rename[d.value]) if isinstance(d, ir.SymbolicDim) and d.value in rename
                                else d for d in shape])


def _detach_weights(program) -> None:
    """Drop the exported graph's references to the module's tensors, so that releasing the
    module frees them: onnxscript's rewrite rules (module-level objects) keep the last graph
    they matched, with its tensors, until they match another."""
    for value in program.model.graph.initializers.values():
        value.const_value = None
    program.model.graph.initializers.clear()
    try:
        from onnxscript.rewriter._matcher import SimplePatternMatcher
    except ImportError:  # another onnxscript: nothing known to forget
        return
    for obj in gc.get_objects():
        if issubclass(type(obj), SimplePatternMatcher):  # type(): a dead weakproxy raises on isinstance
            for attr in ("_graph", "_current_node", "_match"):
                if hasattr(obj, attr):
                    setattr(obj, attr, None)


def check_onnx(path: Path, what: str) -> None:
    """``onnx.checker`` with full shape inference on the file at ``path`` (external data stays on disk)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{what} fails onnx.checker: {one_paragraph(exc)}") from exc


def return_freed_memory() -> None:
    """Hand memory freed inside the process back to the system (glibc's ``malloc_trim``; a no-op
    elsewhere), so that the next large allocation (ONNX Runtime loading the file just written)
    does not come on top of it: freed tensor memory otherwise stays in the process's heap."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` from the symbols already loaded (no library search), or None."""
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_weights(module: nn.Module) -> None:
    """Free a module's parameters and buffers (moved to the meta device) once nothing needs them.

    The exporter leaves reference cycles to the old tensors, so a collection follows.
    """
    module.to("meta")
    gc.collect()
    return_freed_memory()
