import numpy as np
import pytest
import torch

from sparsify.data import load_data
from sparsify.errors import DataError


def test_digits_split_is_fixed_and_disjoint():
    a, b = load_data("digits"), load_data("digits")
    assert (len(a.train), len(a.val), len(a.test)) == (1257, 269, 271)
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert a.train.tensors[0].shape[1:] == (1, 8, 8)
    assert float(a.train.tensors[0].max()) <= 1.0


def test_npz_data(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.random.rand(50, 3).astype(np.float32), y=np.arange(50) % 2)
    s = load_data(str(tmp_path / "d.npz"))
    assert len(s.train) + len(s.val) + len(s.test) == 50
    np.savez(tmp_path / "bad.npz", inputs=np.zeros(3))
    with pytest.raises(DataError, match=r"should hold arrays 'x' and 'y'; it holds \['inputs'\]"):
        load_data(str(tmp_path / "bad.npz"))
    (tmp_path / "junk.npz").write_bytes(b"nope")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_data(str(tmp_path / "junk.npz"))


def test_module_data_reference_and_unknown():
    s = load_data("tests.models:tiny_dataset")
    assert len(s.train) == 96
    with pytest.raises(DataError, match="unknown data reference"):
        load_data("imagenet")
