"""Family (d): feeds to ``Session.run``, drawn by hypothesis (derandomized: the same cases on
every run): wrong containers, names, dtypes, ranks and sizes, empty batches, NaN and inf,
non-contiguous and read-only arrays, array subclasses, odd output names. Each run ends in a
clean DataError/KernelInputError or in the reference evaluator's result."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsify.runtime import Session
from tests.fuzz.conftest import feed_sets
from tests.fuzz.oracle import assert_same, clean, reference_outputs

pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning"),
              pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")]  # np.matrix feeds

SHORT, LONG = 120, 2000
DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.bool_, np.complex64, ">f4", "<f8", np.uint8]


def _examples(config) -> int:
    return LONG if config.getoption("--fuzz-long") else SHORT


@st.composite
def arrays(draw, good_shape: tuple[int, ...], good_dtype, well_formed: bool = False):
    """Arrays for input x: of any batch (0 included), values (NaN, inf, tiny, huge) and memory
    layout; unless ``well_formed``, also of the wrong rank, dims and dtype, or masked."""
    shape_kind = draw(st.sampled_from(["good", "empty batch"] if well_formed
                                      else ["good", "good", "empty batch", "rank", "dims"]))
    batch = draw(st.integers(1, 6))
    if shape_kind == "good":
        shape = (batch, *good_shape[1:])
    elif shape_kind == "empty batch":
        shape = (0, *good_shape[1:])
    elif shape_kind == "rank":
        shape = (batch, *good_shape[1:], 1) if draw(st.booleans()) else good_shape[1:]
    else:
        shape = (batch, *[d + draw(st.integers(-1, 2)) for d in good_shape[1:]])
    dtype = np.dtype(good_dtype if well_formed else draw(st.sampled_from([good_dtype, good_dtype, *DTYPES])))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1.0, 1.0, 1e-30, 1e30]))
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    special = draw(st.sampled_from([None, None, np.nan, np.inf, -np.inf]))
    if x.size and special is not None and np.issubdtype(dtype, np.floating):
        x.reshape(-1)[draw(st.integers(0, x.size - 1))] = special
    layouts = ["c", "fortran", "strided", "readonly", "matrix", "memmap"] + ([] if well_formed else ["masked"])
    layout = draw(st.sampled_from(layouts))
    if layout == "fortran":
        x = np.asfortranarray(x)
    elif layout == "strided" and x.ndim:
        x = np.repeat(x, 2, axis=-1)[..., ::2]
    elif layout == "readonly":
        x.flags.writeable = False
    elif layout == "masked":
        x = np.ma.masked_array(x, mask=np.zeros(x.shape, bool))
    elif layout == "matrix" and x.ndim == 2:
        x = np.asmatrix(x)
    elif layout == "memmap":
        x = x.view(np.memmap)
    return x


@st.composite
def feeds(draw, good_shape, good_dtype):
    kind = draw(st.sampled_from(["dict", "dict", "dict", "extra", "missing", "renamed", "list", "none", "scalar",
                                 "nested", "int key"]))
    x = draw(arrays(good_shape, good_dtype))
    return {"dict": {"x": x}, "extra": {"x": x, "z": x}, "missing": {}, "renamed": {"X": x}, "list": [x],
            "none": None, "scalar": {"x": 1.5}, "nested": {"x": x.tolist() if x.size < 50 else [1.0]},
            "int key": {"x": x, 0: x}}[kind]


OUTPUT_NAMES = st.sampled_from([None, None, None, ["y"], ("y",), [], ["y", "y"], ["nope"], [0], 5, "y", [None], b"y"])


def _judge(sess, path, feed, names, must_run: bool) -> None:
    got, err = clean(sess.run, names, feed)
    if err is not None:
        assert not must_run, f"a well-formed feed was refused: {err}"
        return
    x = np.asarray(feed["x"])
    want = reference_outputs(path, {"x": x})
    assert want is not None, f"Session ran a feed of shape {x.shape} {x.dtype} that the reference rejects"
    if names is not None:
        want = [want[0] for _ in names]
    assert_same([np.asarray(g) for g in got], want, f"{path.name} with a feed of shape {x.shape}")


@pytest.mark.parametrize("kind", ["mlp", "cnn", "cnn-f64"])
def test_any_feed_to_session_run_ends_cleanly_or_correctly(base_files, request, kind):
    sess = Session(base_files[kind])
    good = feed_sets(kind)[0]["x"]

    @settings(max_examples=_examples(request.config), derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(feed=feeds(good.shape, good.dtype), names=OUTPUT_NAMES)
    def check(feed, names):
        _judge(sess, base_files[kind], feed, names, must_run=False)

    check()


@pytest.mark.parametrize("kind", ["mlp", "cnn", "cnn-f64"])
def test_well_formed_feeds_of_any_batch_values_and_layout_run_correctly(base_files, request, kind):
    sess = Session(base_files[kind])
    good = feed_sets(kind)[0]["x"]

    @settings(max_examples=_examples(request.config) // 2, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(x=arrays(good.shape, good.dtype, well_formed=True), names=st.sampled_from([None, ["y"], ("y", "y")]))
    def check(x, names):
        # An empty batch may be refused: the CNN's Reshape [0, -1] of (0, 24) is ambiguous (ONNX).
        _judge(sess, base_files[kind], {"x": x}, names, must_run=x.shape[0] > 0)

    check()
