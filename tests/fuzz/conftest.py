"""Fixtures of the fuzz suite: base model files, the allocation limit, seeded case counts."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests import models

# A hostile file may ask for terabytes: the suite runs under a limit any CI machine can honour.
FUZZ_ALLOC_LIMIT = 256 << 20


def pytest_configure(config):
    config.addinivalue_line("markers", "seeds(short, long): parametrize the test's `seed` over range(short), "
                                       "or range(long) with --fuzz-long")


def pytest_generate_tests(metafunc):
    marker = metafunc.definition.get_closest_marker("seeds")
    if marker is not None:
        short, long = marker.args
        metafunc.parametrize("seed", range(long if metafunc.config.getoption("--fuzz-long") else short))


@pytest.fixture
def fuzz_long(request) -> None:
    """Skips the test unless --fuzz-long is given (cases too slow for every CI run)."""
    if not request.config.getoption("--fuzz-long"):
        pytest.skip("runs with --fuzz-long")


@pytest.fixture(autouse=True)
def _allocation_limit(monkeypatch):
    monkeypatch.setenv("SPARSIFY_MAX_BYTES", str(FUZZ_ALLOC_LIMIT))


# Base models: kind -> (builder, builder options). Index and pointer dtypes and float64 vary.
BASES = {
    "mlp": (models.sparse_onnx_mlp, {}),
    "mlp-i64": (models.sparse_onnx_mlp, {"index_dtype": np.int64, "ptr_dtype": np.int64}),
    "mlp-u16": (models.sparse_onnx_mlp, {"index_dtype": np.uint16, "ptr_dtype": np.int32}),
    "cnn": (models.sparse_onnx_cnn, {}),
    "cnn-f64": (models.sparse_onnx_cnn, {"dtype": np.float64, "index_dtype": np.int64}),
}


@pytest.fixture(scope="session")
def base_files(tmp_path_factory):
    """kind -> path of the unmutated model (checked by onnx.checker)."""
    root = tmp_path_factory.mktemp("fuzz-bases")
    out = {}
    for kind, (build, options) in BASES.items():
        model = build(**options)
        onnx.checker.check_model(model)
        path = root / f"{kind}.onnx"
        onnx.save(model, str(path))
        out[kind] = path
    return out


def feed_sets(kind: str) -> list[dict[str, np.ndarray]]:
    """Inputs at batch 1 and 3 for a base kind."""
    family = kind.split("-")[0]
    dtype = np.float64 if kind.endswith("f64") else np.float32
    return [models.sparse_onnx_feeds(family, b, seed=b, dtype=dtype) for b in (1, 3)]
