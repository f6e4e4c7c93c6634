"""A sparse ONNX file whose graph structure or attributes do not hold together is refused at
load (ModelFileError naming the node and value); what only the real shapes reveal fails at run
time as KernelInputError naming the node, never as a traceback from numpy or ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from sparsify.errors import KernelInputError, ModelFileError
from sparsify.runtime import Session
from tests import models


def _save(model, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def _set_attr(node, name, value):
    for a in node.attribute:
        if a.name == name:
            a.CopyFrom(helper.make_attribute(name, value))


def dangling(m):
    _node(m, "n_a1").input[0] = "view"


def cycle(m):
    _node(m, "conv1").input[0] = "a1"


def output_without_writer(m):
    m.graph.output[0].name = "nothing"


def written_twice(m):
    _node(m, "n_t").output[0] = "c1"


def writes_an_input(m):
    _node(m, "n_t").output[0] = "x"


def writes_an_initializer(m):
    _node(m, "n_t").output[0] = "axes"


def duplicate_initializer(m):
    m.graph.initializer.append(m.graph.initializer[0])


@pytest.mark.parametrize("mutate, message", [
    (dangling, r"Add node 'n_a1' reads 'view', which no node, graph input or initializer provides"),
    (cycle, r"the graph has a cycle: SparseConv node 'conv1', .*Add node 'n_a1'"),
    (output_without_writer, r"graph output 'nothing' is written by no node, graph input or initializer"),
    (written_twice, r"value 'c1' is written twice, by SparseConv node 'conv1' and Transpose node 'n_t'"),
    (writes_an_input, r"Transpose node 'n_t' writes 'x', which is already a graph input"),
    (writes_an_initializer, r"Transpose node 'n_t' writes 'axes', which is already an initializer"),
    (duplicate_initializer, r"initializer names \['conv1.data'\] appear more than once"),
])
def test_broken_graph_structure_is_refused_at_load_naming_node_and_value(tmp_path, mutate, message):
    m = models.sparse_onnx_cnn()
    mutate(m)
    with pytest.raises(ModelFileError, match=message):
        Session(_save(m, tmp_path))


def test_pads_that_would_need_terabytes_are_refused_at_load(tmp_path):
    m = models.sparse_onnx_cnn()
    _set_attr(_node(m, "conv1"), "pads", [100000] * 4)
    with pytest.raises(ModelFileError, match=r"SparseConv node 'conv1': pads \[100000, 100000, 100000, 100000\] on "
                                             r"a \(10, 10\) input .* would allocate .* more than the limit"):
        Session(_save(m, tmp_path))


def test_pads_checked_at_run_time_when_the_input_size_is_dynamic(tmp_path):
    m = models.sparse_onnx_cnn()
    _set_attr(_node(m, "conv1"), "pads", [100000] * 4)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    sess = Session(_save(m, tmp_path))
    with pytest.raises(KernelInputError, match=r"SparseConv node 'conv1': pads .* would allocate"):
        sess.run(None, models.sparse_onnx_feeds("cnn", 1))


def test_conv_whose_channels_disagree_with_its_declared_input_is_refused_at_load(tmp_path):
    m = models.sparse_onnx_cnn()
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 4  # conv1 takes 3 channels
    with pytest.raises(ModelFileError, match=r"SparseConv node 'conv1': input of shape \[None, 4, 10, 10\] should be "
                                             r"\(N, 3, H, W\)"):
        Session(_save(m, tmp_path))


def test_conv_whose_group_disagrees_with_its_input_fails_naming_the_node(tmp_path):
    m = models.sparse_onnx_cnn()
    _set_attr(_node(m, "conv2"), "group", 1)  # then it takes 8 channels; it gets 16
    sess = Session(_save(m, tmp_path))
    with pytest.raises(KernelInputError, match=r"m.onnx: SparseConv node 'conv2': input of shape \[2, 16, 10, 10\] "
                                               r"should be \(N, 8, H, W\)"):
        sess.run(None, models.sparse_onnx_feeds("cnn", 2))


def test_conv_whose_output_would_be_empty_is_refused_at_load(tmp_path):
    m = models.sparse_onnx_cnn()
    _set_attr(_node(m, "conv1"), "dilations", [9, 9])
    with pytest.raises(ModelFileError, match=r"input of spatial size \(10, 10\) gives an output of \(-6, -6\)"):
        Session(_save(m, tmp_path))


@pytest.mark.parametrize("glue", ["numpy", "ort"])
def test_strides_the_next_op_cannot_take_fail_naming_that_node(tmp_path, glue):
    m = models.sparse_onnx_cnn()
    _set_attr(_node(m, "conv1"), "strides", [2, 2])  # (N, 16, 5, 5) + a (1, 16, 10, 10) constant
    sess = Session(_save(m, tmp_path), glue=glue)
    with pytest.raises(KernelInputError, match="n_a1") as info:
        sess.run(None, models.sparse_onnx_feeds("cnn", 2))
    assert "\n" not in str(info.value)


def test_an_ort_segment_that_rejects_its_input_is_reported_naming_the_segment(tmp_path):
    m = models.sparse_onnx_cnn()
    # The file declares conv2's output as (N, 24, 5, 5); with stride 1 it is (N, 24, 10, 10).
    m.graph.value_info.append(helper.make_tensor_value_info("c2", TensorProto.FLOAT, ["N", 24, 5, 5]))
    _set_attr(_node(m, "conv2"), "strides", [1, 1])
    sess = Session(_save(m, tmp_path))
    with pytest.raises(KernelInputError, match=r"the segment \['n_t', 'n_m', 'n_r'\] failed in ONNX Runtime on "
                                               r"inputs of shapes \{'c2': \[2, 24, 10, 10\]\}"):
        sess.run(None, models.sparse_onnx_feeds("cnn", 2))


@pytest.mark.parametrize("shape", [[-1, -1], [-2, 12], [0, 0, 0]])
def test_bad_reshape_shapes_are_clean_errors(tmp_path, shape):
    m = models.sparse_onnx_cnn()
    for init in m.graph.initializer:
        if init.name == "shape":
            init.CopyFrom(onnx.numpy_helper.from_array(np.array(shape, np.int64), "shape"))
    for glue in ("numpy", "ort"):
        try:
            sess = Session(_save(m, tmp_path), glue=glue)
            sess.run(None, models.sparse_onnx_feeds("cnn", 2))
        except (ModelFileError, KernelInputError) as exc:
            assert "n_r" in str(exc) or "Reshape" in str(exc), str(exc)
        else:
            raise AssertionError(f"Reshape to {shape} ran")


def test_sparse_input_of_the_wrong_element_type_is_refused_at_load(tmp_path):
    m = models.sparse_onnx_cnn()
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    with pytest.raises(ModelFileError, match=r"SparseConv node 'conv1': its input 'x' has ONNX element type DOUBLE "
                                             "but its weights are float32"):
        Session(_save(m, tmp_path))
