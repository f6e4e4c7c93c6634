"""Data sets and input specifications.

A data reference is one of:
- ``digits``: scikit-learn's bundled ``load_digits`` (1797 8x8 images), split train/val/test
  70/15/15 with a fixed seed; images scaled to [0, 1], shape (N, 1, 8, 8).
- ``path.npz``: arrays ``x`` and ``y`` (optionally ``x_val``/``y_val`` and ``x_test``/``y_test``).
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

SPLIT_SEED = 20240611
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One model input: name, shape (batch first) and dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "InputSpec":
        return InputSpec(str(d["name"]), tuple(int(s) for s in d["shape"]), str(d["dtype"]))


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


def random_inputs(specs: Sequence[InputSpec], batch: int | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Seeded unit-scale inputs matching the specs (batch dim replaced when ``batch`` is given)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for spec in specs:
        shape = spec.shape if batch is None else (batch, *spec.shape[1:])
        dtype = DTYPES[spec.dtype]
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype))
        elif dtype == torch.bool:
            out.append(torch.randint(0, 2, shape, generator=gen).bool())
        else:
            out.append(torch.randint(0, 10, shape, generator=gen, dtype=dtype))
    return tuple(out)


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


def _load_npz(path: Path) -> Splits:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        arrays = np.load(path, allow_pickle=False)
        keys = set(arrays.files)
    except Exception as exc:  # numpy raises several types for a bad file
        raise DataError(f"data file {path} is not a readable .npz archive: {exc}") from exc
    if not {"x", "y"} <= keys:
        raise DataError(f"data file {path} should hold arrays 'x' and 'y'; it holds {sorted(keys)}")

    def pair(xk: str, yk: str) -> TensorDataset:
        try:
            x, y = arrays[xk], arrays[yk]
        except ValueError as exc:  # object arrays need pickle, which is never allowed
            raise DataError(f"data file {path}: array {xk!r} or {yk!r} holds Python objects (pickled), which "
                            "sparsify refuses to read; store plain numeric arrays") from exc
        except Exception as exc:
            raise DataError(f"data file {path}: arrays {xk!r}/{yk!r} cannot be read: {exc}") from exc
        if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
            raise DataError(f"data file {path}: {xk} and {yk} should be numeric arrays; "
                            f"got dtypes {x.dtype} and {y.dtype}")
        if len(x) != len(y):
            raise DataError(f"data file {path}: {xk} has {len(x)} samples but {yk} has {len(y)}")
        xt = torch.from_numpy(np.ascontiguousarray(x))
        xt = xt.float() if xt.is_floating_point() else xt
        return TensorDataset(xt, torch.from_numpy(np.ascontiguousarray(y)).long())

    main = pair("x", "y")
    if {"x_val", "y_val"} <= keys:
        test = pair("x_test", "y_test") if {"x_test", "y_test"} <= keys else pair("x_val", "y_val")
        return Splits(main, pair("x_val", "y_val"), test, str(path))
    return _split(main, str(path))


def is_code_ref(ref: str) -> bool:
    """True when the data reference is ``package.module:attr`` (loading it imports and runs code)."""
    return ref != "digits" and not ref.endswith(".npz") and ":" in ref


def load_data(ref: str) -> Splits:
    """Resolve a data reference (see module docstring) into train/val/test splits."""
    if ref == "digits":
        return load_digits_splits()
    if ref.endswith(".npz"):
        return _load_npz(Path(ref))
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
