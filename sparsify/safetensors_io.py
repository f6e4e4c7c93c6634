"""Reading ``.safetensors`` files with plain reads, straight into the tensors that keep the data.

The safetensors library maps the whole file into memory, and every page it touches stays
resident until the mapping goes: loading a model through it costs the file's size in RSS on
top of the model. Reading each tensor's bytes into its destination costs nothing beyond the
model. The format is small and fixed (an 8-byte little-endian header length, a JSON header
of ``name -> {dtype, shape, data_offsets}``, the data), and every header field is checked
before anything is read.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable, Iterator

import torch

from sparsify.errors import SparsifyError

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
MAX_HEADER = 100 << 20


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor of the file: dtype, shape and its byte range in the file."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def read_header(path: Path, error: type[SparsifyError]) -> dict[str, Entry]:
    """The tensors of a safetensors file, checked against the format and the file's size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= n <= min(MAX_HEADER, size - 8):
                raise error(f"{path} is not a readable safetensors file: header length {n} does not fit "
                            f"the file's {size:,} bytes")
            header = json.loads(f.read(n).decode("utf-8"))
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not a readable safetensors file: its header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise error(f"{path} is not a readable safetensors file: its header is not a JSON object")
    base, entries, ranges = 8 + n, {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise error(f"{path}: tensor {name!r} has an invalid header entry {str(info)[:120]}") from exc
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if any(d < 0 for d in shape) or not 0 <= start <= end or end - start != nbytes or base + end > size:
            raise error(f"{path}: tensor {name!r} ({info['dtype']} {list(shape)}) claims bytes [{start}, {end}) "
                        f"of a data section of {size - base:,} bytes; expected {nbytes:,} bytes inside it")
        entries[name] = Entry(name, dtype, shape, base + start, base + end)
        ranges.append((start, end, name))
    ranges.sort()
    for (_, end, a), (start, _, b) in zip(ranges, ranges[1:]):
        if start < end:
            raise error(f"{path}: tensors {a!r} and {b!r} overlap in the file")
    return entries


def read_tensors(path: Path, entries: dict[str, Entry], destination: Callable[[Entry], torch.Tensor],
                 error: type[SparsifyError]) -> Iterator[tuple[Entry, torch.Tensor]]:
    """Read each entry into ``destination(entry)`` (a contiguous tensor of its dtype and shape),
    yielding (entry, tensor) as each is filled."""
    try:
        with open(path, "rb", buffering=0) as f:
            for entry in sorted(entries.values(), key=lambda e: e.start):
                out = destination(entry)
                if out.dtype != entry.dtype or tuple(out.shape) != entry.shape or not out.is_contiguous():
                    raise error(f"{path}: tensor {entry.name!r} cannot be read into a {out.dtype} "
                                f"{list(out.shape)} tensor")
                f.seek(entry.start)
                view = memoryview(out.reshape(-1).view(torch.uint8).numpy()) if out.numel() else memoryview(b"")
                got = 0
                while got < len(view):
                    n = f.readinto(view[got:])
                    if not n:
                        raise error(f"{path}: tensor {entry.name!r} ends early; the file is truncated")
                    got += n
                yield entry, out
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from exc


def load(path: Path, error: type[SparsifyError]) -> dict[str, torch.Tensor]:
    """Every tensor of the file, each in fresh memory."""
    entries = read_header(path, error)
    return {e.name: t for e, t in read_tensors(path, entries, lambda e: torch.empty(e.shape, dtype=e.dtype), error)}
