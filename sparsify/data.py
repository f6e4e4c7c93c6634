"""Data sets and input specifications.

A data reference is one of:
- ``digits``: scikit-learn's bundled ``load_digits`` (1797 8x8 images), split train/val/test
  70/15/15 with a fixed seed; images scaled to [0, 1], shape (N, 1, 8, 8).
- ``path.npz``: arrays ``x`` and ``y`` (optionally ``x_val``/``y_val`` and ``x_test``/``y_test``);
  for a model with several named inputs, one array per input name instead of ``x``
  (``input_ids``, ``attention_mask``, ``y``; ``input_ids_val``, ...).
- ``package.module:attr``: a ``Dataset``, a ``DataLoader``, a factory returning one of them, or a
  dict with keys ``train`` / ``val`` / ``test``.
When no validation/test split is given, the data is split 80/10/10 with a fixed seed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from sparsify.errors import DataError
from sparsify.inputspec import InputSpec

SPLIT_SEED = 20240611
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}


@dataclasses.dataclass
class Splits:
    """Train / validation / test data sets of (input, label) pairs."""

    train: Dataset
    val: Dataset
    test: Dataset
    name: str


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse ``1,3,32,32`` into a shape tuple."""
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise DataError(f"--input-shape {text!r} should be comma-separated positive integers, e.g. 1,3,32,32") from None
    if not shape or any(s <= 0 for s in shape):
        raise DataError(f"--input-shape {text!r} should be comma-separated positive integers, e.g. 1,3,32,32")
    return shape


def make_input_specs(shapes: Sequence[str], dtypes: Sequence[str] | None = None) -> list[InputSpec]:
    """Input specs from ``--input-shape`` (repeatable) and ``--input-dtype`` (one, or one per shape)."""
    dtypes = list(dtypes or ["float32"])
    if len(dtypes) == 1:
        dtypes = dtypes * len(shapes)
    if len(dtypes) != len(shapes):
        raise DataError(f"got {len(dtypes)} --input-dtype values for {len(shapes)} --input-shape values; give one, or one per shape")
    for d in dtypes:
        if d not in DTYPES:
            raise DataError(f"--input-dtype {d!r} is not supported; expected one of {', '.join(DTYPES)}")
    names = ["input"] if len(shapes) == 1 else [f"input_{i}" for i in range(len(shapes))]
    return [InputSpec(n, parse_input_shape(s), d) for n, s, d in zip(names, shapes, dtypes)]


def input_shape(spec: InputSpec, batch: int | None = None, seq: int | None = None) -> tuple[int, ...]:
    """The spec's shape with the batch axis set to ``batch`` and its other dynamic axes to ``seq``."""
    shape = list(spec.shape)
    if batch is not None:
        shape[0] = batch
    if seq is not None:
        for axis in spec.dynamic:
            if axis > 0:
                shape[axis] = seq
    return tuple(shape)


def padding_mask(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """0/1 int64 masks of ones then zeros along the last axis, each row keeping at least one 1."""
    if not shape or shape[-1] == 0:
        return torch.ones(shape, dtype=torch.int64)
    rows = int(torch.tensor(shape[:-1]).prod()) if len(shape) > 1 else 1
    lengths = torch.randint(1, shape[-1] + 1, (rows, 1), generator=gen)
    lengths[0] = shape[-1]  # one row unpadded, so every position is exercised
    return (torch.arange(shape[-1]).expand(rows, -1) < lengths).to(torch.int64).reshape(shape)


def random_inputs(specs: Sequence[InputSpec], batch: int | None = None, seed: int = 0,
                  seq: int | None = None) -> tuple[torch.Tensor, ...]:
    """Seeded valid inputs matching the specs: unit-scale floats, integers within their known
    range (see ``InputSpec.values``; ``[0, 10)`` when none is known), padding masks for masks.
    ``batch`` replaces the batch axis, ``seq`` every other dynamic axis."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for spec in specs:
        shape = input_shape(spec, batch, seq)
        dtype = DTYPES[spec.dtype]
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype))
        elif spec.values == "mask":
            out.append(padding_mask(shape, gen).to(dtype))
        elif dtype == torch.bool:
            out.append(torch.randint(0, 2, shape, generator=gen).bool())
        else:
            low, high = spec.valid_range() or (0, 10)
            out.append(torch.randint(low, high, shape, generator=gen, dtype=dtype))
    return tuple(out)


def check_inputs(specs: Sequence[InputSpec], arrays: Sequence[Any], where: str) -> None:
    """Raise DataError unless ``arrays`` fit ``specs``: count, rank, static sizes, integer ranges."""
    if len(arrays) != len(specs):
        raise DataError(f"{where}: got {len(arrays)} inputs; the model takes {len(specs)} "
                        f"({', '.join(s.name for s in specs)})")
    for spec, arr in zip(specs, arrays):
        shape = tuple(arr.shape)
        if len(shape) != len(spec.shape):
            raise DataError(f"{where}: input {spec.name!r} has shape {list(shape)}; expected rank "
                            f"{len(spec.shape)} like {list(spec.shape)}")
        fixed = [a for a in range(1, len(shape)) if a not in spec.dynamic and shape[a] != spec.shape[a]]
        if fixed:
            raise DataError(f"{where}: input {spec.name!r} has shape {list(shape)}; axis {fixed[0]} should be "
                            f"{spec.shape[fixed[0]]} (only axes {list(spec.dynamic)} may change size)")
        rng = spec.valid_range()
        if rng is None or not len(arr.reshape(-1)):
            continue
        t = torch.as_tensor(np.asarray(arr)) if not isinstance(arr, torch.Tensor) else arr
        if t.is_floating_point():
            raise DataError(f"{where}: input {spec.name!r} holds floats; it takes integers {spec.describe_range()}")
        lo, hi = int(t.min()), int(t.max())
        if lo < rng[0] or hi >= rng[1]:
            raise DataError(f"{where}: input {spec.name!r} has values in [{lo}, {hi}]; valid values are "
                            f"{spec.describe_range()}")


def input_specs_from_data(ds: Dataset) -> list[InputSpec]:
    """Input specs (batch 1) read off the first sample of a data set of (x, y) pairs."""
    x = _sample_inputs(ds[0])
    names = ["input"] if len(x) == 1 else [f"input_{i}" for i in range(len(x))]
    inv = {v: k for k, v in DTYPES.items()}
    return [InputSpec(n, (1, *t.shape), inv.get(t.dtype, "float32")) for n, t in zip(names, x)]


def _sample_inputs(sample: Any) -> tuple[torch.Tensor, ...]:
    if not isinstance(sample, (tuple, list)) or len(sample) < 2:
        raise DataError("each sample of the data set should be an (input, label) pair")
    x = sample[0]
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def load_digits_splits() -> Splits:
    """The bundled digits data set with a fixed, seeded 70/15/15 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_train, n_val = int(0.7 * len(x)), int(0.15 * len(x))
    idx = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}
    parts = {k: TensorDataset(x[v], y[v]) for k, v in idx.items()}
    return Splits(parts["train"], parts["val"], parts["test"], "digits")


def _split(ds: Dataset, name: str) -> Splits:
    n = len(ds)  # type: ignore[arg-type]
    if n < 3:
        raise DataError(f"data set {name!r} has {n} samples; at least 3 are needed to split train/val/test")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    n_val = max(1, n // 10)
    return Splits(Subset(ds, perm[2 * n_val:]), Subset(ds, perm[:n_val]), Subset(ds, perm[n_val:2 * n_val]), name)


def _as_dataset(obj: Any, name: str) -> Dataset:
    if isinstance(obj, DataLoader):
        return obj.dataset
    if isinstance(obj, Dataset) or (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")):
        return obj
    raise DataError(f"data reference {name!r} gave a {type(obj).__name__}; expected a torch Dataset or DataLoader")


def _load_npz(path: Path, input_names: Sequence[str] | None = None) -> Splits:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        arrays = np.load(path, allow_pickle=False)
        keys = set(arrays.files)
    except Exception as exc:  # numpy raises several types for a bad file
        raise DataError(f"data file {path} is not a readable .npz archive: {exc}") from exc
    names = list(input_names or [])
    if "x" not in keys and names and "y" in keys:
        missing = [n for n in names if n not in keys]
        if missing:
            raise DataError(f"data file {path} should hold one array per model input ({', '.join(names)}) and 'y'; "
                            f"it lacks {missing} (it holds {sorted(keys)})")
    elif not {"x", "y"} <= keys:
        hint = f", or one array per model input ({', '.join(names)}) and 'y'" if names else ""
        raise DataError(f"data file {path} should hold arrays 'x' and 'y'{hint}; it holds {sorted(keys)}")
    else:
        names = ["x"]

    def tensor(key: str) -> torch.Tensor:
        try:
            arr = arrays[key]
        except ValueError as exc:  # object arrays need pickle, which is never allowed
            raise DataError(f"data file {path}: array {key!r} holds Python objects (pickled), which "
                            "sparsify refuses to read; store plain numeric arrays") from exc
        except Exception as exc:
            raise DataError(f"data file {path}: array {key!r} cannot be read: {exc}") from exc
        if arr.dtype.kind not in "biuf":
            raise DataError(f"data file {path}: {key} should be a numeric array; got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
        return t.float() if t.is_floating_point() else t

    def pair(suffix: str) -> TensorDataset:
        xs = [tensor(n + suffix) for n in names]
        y = tensor("y" + suffix)
        for n, x in zip(names, xs):
            if len(x) != len(y):
                raise DataError(f"data file {path}: {n + suffix} has {len(x)} samples but y{suffix} has {len(y)}")
        return TensorDataset(*xs, y.long()) if len(xs) > 1 else TensorDataset(xs[0], y.long())

    main = pair("")
    if len(names) > 1:
        main = _Grouped(main)
    has = {sfx for sfx in ("_val", "_test") if {n + sfx for n in names} | {"y" + sfx} <= keys}
    if "_val" in has:
        val = pair("_val") if len(names) == 1 else _Grouped(pair("_val"))
        test = val if "_test" not in has else (pair("_test") if len(names) == 1 else _Grouped(pair("_test")))
        return Splits(main, val, test, str(path))
    return _split(main, str(path))


class _Grouped(Dataset):
    """(x1, ..., xk, y) samples as ((x1, ..., xk), y): a multi-input data set."""

    def __init__(self, ds: TensorDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        *xs, y = self.ds[i]
        return tuple(xs), y


def is_code_ref(ref: str) -> bool:
    """True when the data reference is ``package.module:attr`` (loading it imports and runs code)."""
    return ref != "digits" and not ref.endswith(".npz") and ":" in ref


def load_data(ref: str, input_names: Sequence[str] | None = None) -> Splits:
    """Resolve a data reference (see module docstring) into train/val/test splits; an .npz may
    hold one array per model input, named as in ``input_names``, instead of ``x``."""
    if ref == "digits":
        return load_digits_splits()
    if ref.endswith(".npz"):
        return _load_npz(Path(ref), input_names)
    if is_code_ref(ref):
        from sparsify.modelref import import_attr

        obj = import_attr(ref, DataError, "data")
        if callable(obj) and not isinstance(obj, (Dataset, DataLoader)):
            obj = obj()
        if isinstance(obj, dict):
            missing = {"train", "val"} - set(obj)
            if missing:
                raise DataError(f"data reference {ref!r} returned a dict without {sorted(missing)}; expected keys train, val (and optionally test)")
            val = _as_dataset(obj["val"], ref)
            return Splits(_as_dataset(obj["train"], ref), val, _as_dataset(obj.get("test", obj["val"]), ref), ref)
        return _split(_as_dataset(obj, ref), ref)
    raise DataError(f"unknown data reference {ref!r}; expected 'digits', a .npz file, or 'package.module:attr'")


def loader(ds: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A single-process DataLoader, seeded when shuffling."""
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen)


def split_batch(batch: Any) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """(inputs tuple, labels) from a DataLoader batch of (x, y)."""
    x, y = batch[0], batch[1]
    return (tuple(x) if isinstance(x, (tuple, list)) else (x,)), y


def read_example_inputs(path: str | Path, specs: Sequence[InputSpec]) -> list[np.ndarray]:
    """Named arrays from an .npz (one per model input, batch first), checked against the specs:
    names, ranks, static sizes and the valid range of every integer input."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--example-inputs {path}: no such file; expected an .npz with one array per input "
                        f"({', '.join(s.name for s in specs)})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # numpy raises several types for a bad file (object arrays need pickle: refused)
        raise DataError(f"--example-inputs {path} is not a readable .npz of numeric arrays: {exc}") from exc
    names = [s.name for s in specs]
    if len(specs) == 1 and len(arrays) == 1 and names[0] not in arrays:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing, extra = [n for n in names if n not in arrays], sorted(set(arrays) - set(names))
    if missing or extra:
        raise DataError(f"--example-inputs {path} should hold arrays named {names}; "
                        + "; ".join(p for p in (f"missing {missing}" if missing else "",
                                                f"unexpected {extra}" if extra else "") if p))
    out = [arrays[n] for n in names]
    check_inputs(specs, out, f"--example-inputs {path}")
    return out
