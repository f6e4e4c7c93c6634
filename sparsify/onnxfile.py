"""One way to read an ONNX file, shared by ``inspect``, ``bench`` and the runtime, one way to
read a tensor or a node's attributes out of it, and one way to ask ONNX shape inference about it (the CSR pass and
the runtime's partition).

A path that is missing, not ONNX, or whose external data cannot be read becomes a
:class:`ModelFileError` that names the file, instead of a protobuf traceback. External-data
entries are checked before anything is read: the location must be a file inside the
model's folder (no absolute path, no ``..``, no symlink leading out), offset and length
non-negative decimal integers that stay inside that file and match the tensor's size.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from sparsify.errors import ModelFileError
from sparsify.limits import array_bytes, check_bytes

if TYPE_CHECKING:
    import numpy as np
    import onnx

_DECIMAL = re.compile(r"[0-9]{1,20}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_onnx(path: str | os.PathLike, *, external_data: bool = False) -> onnx.ModelProto:
    """The ONNX model at ``path``, with the weights stored beside it only when ``external_data``.

    Raises ModelFileError naming the file when it does not exist or cannot be read, is not a
    serialized ``onnx.ModelProto``, has no graph with at least one output, or (with
    ``external_data``) references external data that :func:`check_external_data` refuses
    or that cannot be loaded.
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
    bad_text = _non_utf8_field(model, "model")
    if bad_text is not None:
        where, value = bad_text
        raise ModelFileError(f"{path} is corrupt: {where} is not UTF-8 text ({value[:32]!r}); "
                             "expected an ONNX model file")
    if model.ir_version <= 0 or not model.HasField("graph") or len(model.graph.output) == 0:
        raise ModelFileError(
            f"{path} is not an ONNX model: expected an ONNX model with a graph and at least one output, "
            f"but found ir_version={model.ir_version}, {len(model.graph.node)} nodes and "
            f"{len(model.graph.output)} outputs"
        )
    if external_data:
        check_external_data(model, path)
        try:
            onnx.load_external_data_for_model(model, os.fspath(path.parent))
        except (onnx.checker.ValidationError, OSError, ValueError) as exc:
            raise ModelFileError(f"{path}: the external data of this ONNX model could not be loaded: "
                                 f"{_first_line(exc)}") from exc
    return model


def _non_utf8_field(message, where: str) -> tuple[str, bytes] | None:
    """(where, value) of the first text field holding bytes that are not UTF-8, or None.

    Protobuf hands such a field back as ``bytes`` instead of ``str``; every later use
    (sorting, formatting, ONNX Runtime) would fail on it. Tensors are checked by name and
    external-data entries only: their payload fields are bytes by design, and large.
    """
    import onnx
    from google.protobuf.descriptor import FieldDescriptor

    if isinstance(message, onnx.TensorProto):
        fields = [("name", message.name)] + [(f"external_data {e.key!r}", v) for e in message.external_data
                                              for v in (e.key, e.value)]
        for name, value in fields:
            if isinstance(value, bytes):
                return f"{where}.{name}", value
        return None
    for field, value in message.ListFields():
        # protobuf >= 5 has is_repeated; older ones only the label.
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        for i, v in enumerate(value if repeated else [value]):
            here = f"{where}.{field.name}" + (f"[{i}]" if repeated else "")
            if field.type == FieldDescriptor.TYPE_STRING and isinstance(v, bytes):
                return here, v
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                found = _non_utf8_field(v, here)
                if found is not None:
                    return found
    return None


def node_attrs(node: "onnx.NodeProto") -> dict[str, Any]:
    """A node's attributes by name, string ones as text (``load_onnx`` has refused non-UTF-8 ones;
    the ``ai.sparsify`` ops have their own schema-checked reader, ``sparse_ops.parse_attrs``)."""
    from onnx import helper

    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else v) for k, v in values.items()}


def inferred_graph(model: onnx.ModelProto) -> onnx.GraphProto | None:
    """``model``'s graph after ONNX shape inference (not strict), or None where it fails:
    inference is best effort, and callers decide what to do without it."""
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    except Exception:  # any failure inside onnx's inference means "nothing inferred"
        return None


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    import onnx

    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            yield from attr.tensors
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graph_tensors(attr.g)
            for g in attr.graphs:
                yield from _graph_tensors(g)


def external_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of ``model`` (initializers, attributes, subgraphs) stored as external data."""
    import onnx

    for tensor in _graph_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def _fixed_size(tensor: onnx.TensorProto) -> int | None:
    """Bytes the tensor's dims and element type need, or None for strings and unknown types."""
    import onnx
    from onnx import helper

    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    try:
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except (KeyError, ValueError):
        return None
    if any(d < 0 for d in tensor.dims):
        return None
    return array_bytes(tensor.dims, dtype)


def external_entry(tensor: onnx.TensorProto, base_dir: str | os.PathLike, where: str) -> tuple[Path, int, int]:
    """(file, offset, length) of a tensor stored as external data, after checking the entry:
    a relative location inside ``base_dir`` (no absolute path, no '..', no symlink leading out)
    naming a file, decimal non-negative offset and length inside that file, a length that
    matches the tensor's dims and type, and within the memory bound. ModelFileError otherwise."""
    base = Path(base_dir).resolve()
    where = f"{where}: tensor {tensor.name!r} stored as external data"
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    if not location or "\x00" in location:
        raise ModelFileError(f"{where} has no usable 'location'; expected a file name beside the model")
    if Path(location).is_absolute() or location.startswith(("/", "\\")) or ".." in re.split(r"[\\/]", location):
        raise ModelFileError(f"{where} points at {location!r}, which is not a file inside the model's folder "
                             "(no absolute paths or '..'); refusing to read it")
    target = (base / location).resolve()
    if base not in target.parents:
        raise ModelFileError(f"{where} points at {location!r}, which resolves to {target}: not a file inside the "
                             f"model's folder {base} (a symlink?); refusing to read it")
    if not target.is_file():
        raise ModelFileError(f"{where}: its file {location!r} does not exist beside the model")
    numbers = {}
    for key in ("offset", "length"):
        text = entries.get(key)
        if text is None:
            continue
        if not _DECIMAL.fullmatch(text.strip()):
            raise ModelFileError(f"{where} has {key} {text!r}; expected a non-negative integer")
        numbers[key] = int(text.strip())
    size = target.stat().st_size
    offset = numbers.get("offset", 0)
    length = numbers.get("length", size - offset)
    if offset > size or offset + length > size:
        raise ModelFileError(f"{where} reads bytes [{offset}, {offset + length}) of {location!r}, "
                             f"which holds {size} bytes")
    expected = _fixed_size(tensor)
    if expected is not None and expected != length:
        raise ModelFileError(f"{where} has {length} bytes in {location!r}, but dims {list(tensor.dims)} "
                             f"of its element type need {expected}")
    check_bytes(length, where, ModelFileError)
    return target, offset, length


def check_external_data(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Raise ModelFileError naming the tensor unless every external-data entry of ``model``
    (stored at ``path``) passes :func:`external_entry`."""
    for tensor in external_tensors(model):
        external_entry(tensor, Path(path).parent, str(path))


def tensor_array(tensor: onnx.TensorProto, where: str, base_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The numpy array of ``tensor`` after checking that its bytes match its dims and type;
    external data is read from ``base_dir`` (checked by :func:`external_entry`) without
    loading it into ``tensor``. ModelFileError naming ``where`` and the tensor otherwise."""
    import onnx
    from onnx import numpy_helper

    label = f"{where}: tensor {tensor.name!r}"
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        if base_dir is None:
            raise ModelFileError(f"{label} is stored as external data that was not loaded")
        target, offset, length = external_entry(tensor, base_dir, where)
        try:
            with open(target, "rb") as f:
                f.seek(offset)
                data = f.read(length)
        except OSError as exc:
            raise ModelFileError(f"{label}: its external data in {target} cannot be read: "
                                 f"{exc.strerror or exc}") from None
        header = onnx.TensorProto()
        header.name, header.data_type = tensor.name, tensor.data_type
        header.dims.extend(tensor.dims)
        header.raw_data = data
        tensor = header
    if any(d < 0 for d in tensor.dims):
        raise ModelFileError(f"{label} has negative dims {list(tensor.dims)}")
    expected = _fixed_size(tensor)
    if expected is None and tensor.data_type != onnx.TensorProto.STRING:
        raise ModelFileError(f"{label} has element type {tensor.data_type}, which is not a known ONNX tensor type")
    if expected is not None:
        if tensor.HasField("raw_data") and len(tensor.raw_data) != expected:
            raise ModelFileError(f"{label} holds {len(tensor.raw_data)} bytes, but its dims {list(tensor.dims)} "
                                 f"need {expected} (the file is truncated or corrupt)")
        check_bytes(expected, label, ModelFileError)
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:  # numpy_helper raises ValueError/TypeError/... on inconsistent fields
        raise ModelFileError(f"{label} cannot be read ({type(exc).__name__}: {_first_line(exc)}); "
                             "the file is truncated or corrupt") from None


def initializer_array(tensor: onnx.TensorProto, base_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The values of an initializer as a numpy array, reading external data relative to
    ``base_dir`` (the model's folder; the working directory when None) without loading it into
    ``tensor`` (so the proto stays small); checked as :func:`tensor_array` does."""
    return tensor_array(tensor, "model", base_dir if base_dir is not None else ".")
