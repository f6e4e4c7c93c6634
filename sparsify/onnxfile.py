"""One way to read an ONNX file, shared by ``inspect``, ``bench`` and the runtime, and one
way to ask ONNX shape inference about it (the CSR pass and the runtime's partition).

A path that is missing, not ONNX, or whose external data cannot be read becomes a
:class:`ModelFileError` that names the file, instead of a protobuf traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sparsify.errors import ModelFileError

if TYPE_CHECKING:
    import onnx


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_onnx(path: str | os.PathLike, *, external_data: bool = False) -> onnx.ModelProto:
    """The ONNX model at ``path``, with the weights stored beside it only when ``external_data``.

    Raises ModelFileError naming the file when it does not exist or cannot be read, is not a
    serialized ``onnx.ModelProto``, has no graph with at least one output, or (with
    ``external_data``) references external data that cannot be loaded.
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path} does not exist or is not a file; expected an ONNX model file")
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except OSError as exc:
        raise ModelFileError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError) as exc:
        raise ModelFileError(
            f"{path} is not an ONNX model: it could not be parsed as a serialized onnx.ModelProto "
            f"({type(exc).__name__}: {_first_line(exc)}); expected an ONNX model file"
        ) from exc
    if model.ir_version <= 0 or not model.HasField("graph") or len(model.graph.output) == 0:
        raise ModelFileError(
            f"{path} is not an ONNX model: expected an ONNX model with a graph and at least one output, "
            f"but found ir_version={model.ir_version}, {len(model.graph.node)} nodes and "
            f"{len(model.graph.output)} outputs"
        )
    if external_data:
        try:
            onnx.load_external_data_for_model(model, os.fspath(path.parent))
        except (onnx.checker.ValidationError, OSError) as exc:
            raise ModelFileError(f"{path}: the external data of this ONNX model could not be loaded: "
                                 f"{_first_line(exc)}") from exc
    return model


def inferred_graph(model: onnx.ModelProto) -> onnx.GraphProto | None:
    """``model``'s graph after ONNX shape inference (not strict), or None where it fails:
    inference is best effort, and callers decide what to do without it."""
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    except Exception:  # any failure inside onnx's inference means "nothing inferred"
        return None


def initializer_array(tensor: onnx.TensorProto, base_dir: str | os.PathLike | None = None):
    """The values of an initializer as a numpy array, reading external data relative to
    ``base_dir`` without loading it into ``tensor`` (so the proto stays small)."""
    import onnx
    from onnx import numpy_helper

    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    info = {e.key: e.value for e in tensor.external_data}
    base = Path(base_dir if base_dir is not None else ".").resolve()
    location = info.get("location", "")
    path = (base / location).resolve()
    if not location or base not in path.parents:
        raise ModelFileError(f"initializer {tensor.name!r}: external data location {location!r} is not a file "
                             f"inside {base}")
    try:
        offset, length = int(info.get("offset", 0)), int(info["length"]) if "length" in info else -1
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length) if length >= 0 else f.read()
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"initializer {tensor.name!r}: external data in {path} cannot be read: {exc}") from exc
    header = onnx.TensorProto()
    header.name, header.data_type = tensor.name, tensor.data_type
    header.dims.extend(tensor.dims)
    header.raw_data = data
    try:
        return numpy_helper.to_array(header)
    except ValueError as exc:
        raise ModelFileError(f"initializer {tensor.name!r}: external data in {path} does not fit its shape "
                             f"{list(tensor.dims)}: {exc}") from exc
