"""Sparse files store the kernels' index dtypes; files written with uint16 indices still load."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from sparsify.kernels.csr import INDEX_DTYPES
from sparsify.runtime import Session


def test_exported_indices_take_the_kernels_dtype(pairs):
    for kind in ("mlp", "cnn", "block"):
        model = onnx.load(str(pairs[kind][2]))
        stored = {numpy_helper.to_array(i).dtype for i in model.graph.initializer if i.name.endswith("csr_indices")}
        assert stored == {np.dtype(np.int16)}, (kind, stored)
        assert stored <= set(INDEX_DTYPES)


def test_uint16_indices_of_older_files_still_load(pairs, tmp_path):
    for kind in ("mlp", "cnn", "block"):
        sparse = pairs[kind][2]
        model = onnx.load(str(sparse))
        for init in model.graph.initializer:
            if init.name.endswith("csr_indices"):
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.uint16), init.name))
        old = tmp_path / f"{kind}_uint16.onnx"
        onnx.save(model, str(old))
        feeds = {i.name: np.random.default_rng(0).standard_normal(
            [d if isinstance(d, int) else 2 for d in i.shape]).astype(np.float32) for i in Session(sparse).get_inputs()}
        (want,) = Session(sparse).run(None, feeds)[:1]
        (got,) = Session(old).run(None, feeds)[:1]
        assert np.array_equal(got, want), kind
