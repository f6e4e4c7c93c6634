"""Writing ONNX files of any size: weights inline, or in one external data file beside the model.

A single protobuf holds at most 2 GiB, so larger models keep their weights in ``NAME.data``
next to ``NAME`` (ONNX external data, locations relative to the model). Tensors are streamed
one at a time from wherever they are (inline bytes, or an external file of another model), so
writing never needs a second copy of the weights in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import secrets
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from sparsify.errors import ExportError, SparsifyError
from sparsify.fileio import workspace
from sparsify.limits import human_bytes

EXTERNAL_DATA_CHOICES = ("auto", "always", "never")
# The protobuf limit of one serialized message.
PROTOBUF_LIMIT = (2 << 30) - 1
# 'auto' moves the weights out once they pass 2 GiB less 256 MiB left for the graph itself.
EXTERNAL_THRESHOLD = (2 << 30) - (256 << 20)
# Tensors up to this many bytes stay inside the .onnx either way (shapes, scalars, small biases).
INLINE_MAX = 1024
_CHUNK = 16 << 20
_EXTERNAL = onnx.TensorProto.EXTERNAL

# Called with (tensor name, bytes written so far, bytes in all) after each tensor is written.
Progress = Callable[[str, int, int], None]


def data_file_name(model_name: str) -> str:
    """The external data file of the model file ``model_name``."""
    return f"{model_name}.data"


def _external_info(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, wherever it is stored (no data is read)."""
    if t.data_location == _EXTERNAL:
        length = _external_info(t).get("length")
        if length is not None:
            return int(length)
        count = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
        return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    if t.HasField("raw_data"):
        return len(t.raw_data)
    return t.ByteSize()


def file_bytes(target: "Target") -> int:
    """Bytes of a written model: the .onnx file plus its external data file, if any."""
    return sum(p.stat().st_size for p in (target.path, target.data_path) if p.is_file())


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all initializers of the main graph."""
    return sum(tensor_nbytes(t) for t in model.graph.initializer)


def use_external_data(nbytes: int, choice: str, what: str) -> bool:
    """Whether a model with ``nbytes`` of weights is written with external data under ``choice``."""
    if choice not in EXTERNAL_DATA_CHOICES:
        raise ExportError(f"--external-data {choice!r} should be one of {', '.join(EXTERNAL_DATA_CHOICES)}")
    if choice == "always":
        return True
    if choice == "never":
        if nbytes > EXTERNAL_THRESHOLD:
            raise ExportError(f"{what} holds {human_bytes(nbytes)} of weights; a single ONNX file holds at most "
                              f"2 GiB, so it needs --external-data auto or always (weights in a .data file beside it)")
        return False
    return nbytes > EXTERNAL_THRESHOLD


def tensor_chunks(t: onnx.TensorProto, base_dir: Path) -> Iterator[bytes | memoryview]:
    """The raw little-endian bytes of a tensor, in chunks; external data is read from ``base_dir``."""
    if t.data_location == _EXTERNAL:
        info = _external_info(t)
        offset, length = int(info.get("offset", 0)), tensor_nbytes(t)
        with open(base_dir / info["location"], "rb") as f:
            f.seek(offset)
            while length > 0:
                chunk = f.read(min(_CHUNK, length))
                if not chunk:
                    raise ExportError(f"external data of tensor {t.name!r} ends early in {base_dir / info['location']}")
                length -= len(chunk)
                yield chunk
    elif t.HasField("raw_data"):
        yield memoryview(t.raw_data)
    else:
        yield numpy_helper.to_array(t).tobytes()


def _streamed(t: onnx.TensorProto) -> bool:
    """True for tensors written apart from the graph: external ones and any above INLINE_MAX bytes."""
    return t.data_location == _EXTERNAL or tensor_nbytes(t) > INLINE_MAX


def _header(t: onnx.TensorProto) -> onnx.TensorProto:
    """The tensor without its data (name, type, dims)."""
    h = onnx.TensorProto()
    h.name, h.data_type, h.doc_string = t.name, t.data_type, t.doc_string
    h.dims.extend(t.dims)
    return h


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a writer puts a model: ``path``, and ``data_name`` for its external data beside it."""

    path: Path
    data_name: str

    @property
    def data_path(self) -> Path:
        return self.path.parent / self.data_name


@contextlib.contextmanager
def atomic_onnx(dest: Path, error: type[SparsifyError] = ExportError) -> Iterator[Target]:
    """A target in the write's private folder beside ``dest`` (``sparsify.fileio.workspace``:
    removed on failure, SIGTERM or by the next write after a SIGKILL); on success the model and
    its data replace ``dest``'s, on failure ``dest`` is untouched.

    The new data file gets a name the old model does not read (``NAME.data``, else
    ``NAME.<token>.data``), is moved first, and the model replaces the old one in one rename:
    a reader sees the old pair or the new pair, never a mix. The old model's data file is
    removed afterwards.
    """
    dest = Path(dest)
    if dest.is_dir():
        raise error(f"output path {dest} is a directory; expected a file path")
    with workspace(dest, error) as work:
        parent = work.parent
        old = _our_data_files(dest)
        data_name = data_file_name(dest.name)
        if data_name in old:
            data_name = f"{dest.name}.{secrets.token_hex(4)}.data"
        target = Target(work / dest.name, data_name)
        yield target
        try:
            if target.data_path.exists():
                os.replace(target.data_path, parent / data_name)
            os.replace(target.path, dest)
        except OSError as exc:
            raise error(f"cannot write {dest}: {exc.strerror or exc}") from None
        fsync_dir(parent)
        for name in old - {data_name}:
            (parent / name).unlink(missing_ok=True)


def _our_data_files(dest: Path) -> set[str]:
    """External data files beside ``dest`` that the ONNX file now at ``dest`` reads and that
    are named after it (so they are ours to replace)."""
    if not dest.is_file() or not any(dest.parent.glob(f"{glob.escape(dest.name)}.*data")):
        return set()  # no data file beside it: no need to parse a model that may hold its weights inline
    try:
        model = onnx.load(str(dest), load_external_data=False)
    except Exception:  # not an ONNX file (or not readable): it names no data file of ours
        return set()
    return {name for name in external_files(model)
            if "/" not in name and "\\" not in name and name.startswith(f"{dest.name}.") and name.endswith(".data")}


def write_onnx(model: onnx.ModelProto, base_dir: Path, target: Target, *, external: bool,
               progress: Progress | None = None) -> list[Path]:
    """Write ``model`` to ``target`` (with its data file when ``external``); returns the files written.

    ``model`` may hold tensors inline or as external data relative to ``base_dir``; its
    initializers are rewritten in place to point at the new file. Tensors are streamed.
    """
    tensors = [t for t in model.graph.initializer if _streamed(t)]
    total = sum(tensor_nbytes(t) for t in tensors)
    if external:
        return _write_external(model, tensors, base_dir, target, total, progress)
    return [_write_inline(model, tensors, base_dir, target.path, total, progress)]


def _write_external(model: onnx.ModelProto, tensors: list[onnx.TensorProto], base_dir: Path, target: Target,
                    total: int, progress: Progress | None) -> list[Path]:
    name, dest, data_path = target.data_name, target.path, target.data_path
    if base_dir.resolve() == dest.parent.resolve() and any(_external_info(t).get("location") == name for t in tensors):
        raise ExportError(f"cannot write {data_path} over the external data it is read from")
    done = 0
    with open(data_path, "wb") as out:
        for t in tensors:
            offset = out.tell()
            for chunk in tensor_chunks(t, base_dir):
                out.write(chunk)
            length = out.tell() - offset
            t.ClearField("raw_data")
            for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
                t.ClearField(field)
            del t.external_data[:]
            t.data_location = _EXTERNAL
            for key, value in (("location", name), ("offset", str(offset)), ("length", str(length))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            done += length
            if progress:
                progress(t.name, done, total)
    onnx.save_model(model, str(dest))
    return [dest, data_path]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, length: int) -> bytes:
    """Tag and length of a length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(length)


# Field numbers in onnx.proto: ModelProto.graph, GraphProto.initializer, TensorProto.raw_data.
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9


def _write_inline(model: onnx.ModelProto, tensors: list[onnx.TensorProto], base_dir: Path, dest: Path,
                  total: int, progress: Progress | None) -> Path:
    """One self-contained protobuf, written as the model without its large tensors followed by a
    second ``graph`` field holding them: protobuf parsers merge repeated occurrences of a message
    field, so readers see one graph, and the tensors go to disk one at a time."""
    rest = onnx.ModelProto()
    _copy_fields(model, rest, skip="graph")
    _copy_fields(model.graph, rest.graph, skip="initializer")
    rest.graph.initializer.extend(t for t in model.graph.initializer if not _streamed(t))
    headers = [_header(t).SerializeToString() for t in tensors]
    sizes = [tensor_nbytes(t) for t in tensors]
    entries = [len(h) + len(_field(_TENSOR_RAW_DATA, n)) + n for h, n in zip(headers, sizes)]
    graph_len = sum(len(_field(_GRAPH_INITIALIZER, e)) + e for e in entries)
    head = rest.SerializeToString()
    if len(head) + graph_len > PROTOBUF_LIMIT:
        raise ExportError(f"{dest.name} would be {human_bytes(len(head) + graph_len)}; a single ONNX file holds "
                          "at most 2 GiB: write it with --external-data auto or always")
    done = 0
    with open(dest, "wb") as out:
        out.write(head)
        if tensors:
            out.write(_field(_MODEL_GRAPH, graph_len))
        for t, h, n, e in zip(tensors, headers, sizes, entries):
            out.write(_field(_GRAPH_INITIALIZER, e))
            out.write(h)
            out.write(_field(_TENSOR_RAW_DATA, n))
            written = 0
            for chunk in tensor_chunks(t, base_dir):
                out.write(chunk)
                written += len(chunk)
            if written != n:
                raise ExportError(f"tensor {t.name!r} holds {written} bytes; its header says {n}")
            done += n
            if progress:
                progress(t.name, done, total)
    return dest


def _copy_fields(src, dst, skip: str) -> None:
    """Copy every set field of protobuf message ``src`` into ``dst`` except ``skip``."""
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        if fd.is_repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def external_files(model: onnx.ModelProto) -> set[str]:
    """The external data locations the model's initializers name."""
    return {_external_info(t)["location"] for t in model.graph.initializer
            if t.data_location == _EXTERNAL and "location" in _external_info(t)}


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (after renames) where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
