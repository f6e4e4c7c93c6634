"""MaxPool as numpy glue: ONNX Runtime's results, and ORT for the pools it does not take."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from sparsify.errors import ModelFileError
from tests.runtime.test_glue_depthwise import check_against_ort, glue_kind, model, session_and_reference


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 2], pads=[1, 0, 2, 1], dilations=[2, 1], storage_order=1),
    dict(kernel_shape=[2, 3], strides=[1, 3], auto_pad="VALID"),
])
def test_max_pool_runs_as_glue_and_matches_ort(tmp_path, attrs):
    dense = model([helper.make_node("MaxPool", ["x"], ["p"], **attrs), helper.make_node("Relu", ["p"], ["y"])], {})
    sess, ref = session_and_reference(tmp_path, dense)
    assert glue_kind(sess) == "numpy"
    check_against_ort(sess, ref)


def test_float16_max_pool_is_exact():
    from sparsify.runtime import glue
    node = helper.make_node("MaxPool", ["h"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    x = np.random.default_rng(0).standard_normal((1, 3, 9, 8)).astype(np.float16)
    (got,) = glue.compile_node(node, {})([x])
    (want,) = glue.compile_node(node, {})([x.astype(np.float32)])
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, want.astype(np.float16))


@pytest.mark.parametrize("attrs, outputs", [
    (dict(kernel_shape=[2, 2], ceil_mode=1), ["y"]),
    (dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER"), ["y"]),
    (dict(kernel_shape=[2, 2]), ["y", "idx"]),
])
def test_pools_the_glue_does_not_take_stay_in_ort(tmp_path, attrs, outputs):
    dense = model([helper.make_node("MaxPool", ["x"], outputs, **attrs)], {})
    if len(outputs) > 1:
        dense.graph.output.append(helper.make_tensor_value_info("idx", TensorProto.INT64, None))
    sess, ref = session_and_reference(tmp_path, dense)
    assert glue_kind(sess) == "ort"
    check_against_ort(sess, ref)


def test_bad_max_pool_attributes_name_the_node(tmp_path):
    dense = model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], pads=[2, 0, 0, 0], name="pool1")], {})
    with pytest.raises(ModelFileError, match=r"MaxPool node 'pool1'.*pads \[2, 0, 0, 0\].*below the kernel"):
        session_and_reference(tmp_path, dense)
