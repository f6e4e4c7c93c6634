"""One InputSpec for data, export and the benchmark: dtypes by name, dynamic dims, dict round trip."""

import numpy as np

from sparsify.bench.backends import as_input_spec
from sparsify.inputspec import InputSpec


def test_numpy_dtypes_are_stored_by_name():
    assert InputSpec("x", (1, 4), np.dtype(np.float32)).dtype == "float32"
    assert InputSpec("m", (1, 4), np.bool_).dtype == "bool"
    assert InputSpec("x", (1, 4), np.dtype(np.float32)) == InputSpec("x", (1, 4), "float32")


def test_dict_round_trip_keeps_value_ranges_and_named_dims():
    ids = InputSpec("ids", (1, 16), "int64", (0, 1), "index", 0, 100, "embedding rows")
    assert InputSpec.from_dict(ids.to_dict()) == ids and ids.describe_range() == "0..99 (embedding rows)"
    assert InputSpec("x", ("N", None, 8), "float32").to_dict() == {"name": "x", "shape": ["N", None, 8],
                                                                  "dtype": "float32"}


def test_a_run_directory_spec_reaches_the_benchmark_unchanged():
    mask = InputSpec("mask", (1, 16), "int64", (0, 1), "mask")
    assert as_input_spec(mask) is mask
    assert as_input_spec(("x", (None, 8), np.float32)) == InputSpec("x", (None, 8), "float32")
