"""Feed generation: batch dim rules, dtypes and value ranges, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from sparsify.bench.backends import InputSpec
from sparsify.bench.inputs import dims_from_shapes, feed_shape, make_feeds
from sparsify.errors import DataError

SPECS = [
    InputSpec("x", (None, 3, 4), np.dtype(np.float32)),
    InputSpec("ids", ("batch", 5), np.dtype(np.int64)),
    InputSpec("mask", (1, 5), np.dtype(np.bool_)),
]


def test_batch_dim_is_set_and_values_follow_dtype():
    feeds = make_feeds(SPECS, 6, seed=3)
    assert feeds["x"].shape == (6, 3, 4) and feeds["x"].dtype == np.float32
    assert feeds["ids"].shape == (6, 5) and feeds["ids"].dtype == np.int64
    assert feeds["mask"].shape == (6, 5) and feeds["mask"].dtype == np.bool_
    ids = make_feeds(SPECS, 500, seed=3)["ids"]
    assert ids.min() == 0 and ids.max() == 9
    x = make_feeds(SPECS, 500, seed=3)["x"]
    assert abs(float(x.mean())) < 0.1 and 0.9 < float(x.std()) < 1.1


def test_same_seed_same_feeds_other_seed_other_feeds():
    a, b, c = (make_feeds(SPECS, 2, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a["x"], b["x"])
    assert not np.array_equal(a["x"], c["x"])


def test_static_batch_other_than_one_must_match():
    spec = InputSpec("x", (4, 2), np.dtype(np.float32))
    assert feed_shape(spec, 4) == (4, 2)
    with pytest.raises(DataError, match=r"'x' has a static batch dim 4; cannot benchmark batch 8"):
        feed_shape(spec, 8, where="m.onnx")


def test_other_dynamic_dims_need_values():
    spec = InputSpec("tokens", ("N", "seq"), np.dtype(np.int64))
    assert feed_shape(spec, 2, {"seq": 7}) == (2, 7)
    with pytest.raises(DataError, match=r"m\.onnx: input 'tokens' has the dynamic dim 1 \('seq'\) and no size "
                                        r"for it is recorded or given; give one --input-shape per input"):
        feed_shape(spec, 2, where="m.onnx")


def test_input_shapes_size_named_dims_and_must_fit():
    specs = [InputSpec("ids", ("N", "seq"), np.dtype(np.int64)), InputSpec("x", (None, "seq", 4), np.dtype(np.float32))]
    dims = dims_from_shapes(specs, ["9,7", "1,7,4"], "m.onnx")
    assert dims == {"seq": 7}  # the batch axis is --batch's, however named
    feeds = make_feeds(specs, 3, dims=dims, recorded={"ids": {"name": "ids", "shape": [1, 128]}})
    assert feeds["ids"].shape == (3, 7) and feeds["x"].shape == (3, 7, 4)  # given over recorded
    assert dims_from_shapes(specs, [], "m.onnx") == {}
    for shapes, message in ((["1,7"], r"got 1 --input-shape for m\.onnx, which has 2 input\(s\)"),
                            (["1,7", "1,7"], r"--input-shape 1,7 has 2 dims; input 'x' of m\.onnx has 3"),
                            (["1,7", "1,7,5"], r"dim 2 of input 'x' is fixed at 4 in m\.onnx, not 5"),
                            (["1,x", "1,7,4"], r"comma-separated positive integers")):
        with pytest.raises(DataError, match=message):
            dims_from_shapes(specs, shapes, "m.onnx")
