"""Corrupted sparse files are rejected at load with ModelFileError naming the node and tensor."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from sparsify.errors import ModelFileError
from sparsify.runtime import Session

T = "fc1.weight.csr_"


def mutate(src, dst, name, fn):
    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(init).copy()), name))
            break
    else:
        raise AssertionError(f"no initializer {name}")
    onnx.save(model, str(dst))
    return dst


def swap_first_rows(p):
    i = int(np.flatnonzero(np.diff(p) > 0)[0]) + 1
    p[i], p[i + 1] = p[i + 1] + 1, p[i]
    return p


def set_(i, v):
    def fn(a):
        a[i] = v
        return a
    return fn


def unsort_first_row(idx):
    idx[0], idx[1] = idx[1], idx[0]
    return idx


CASES = [
    ("indptr", swap_first_rows, "indptr should be non-decreasing"),
    ("indptr", set_(0, 1), r"indptr\[0\] is 1 but should be 0"),
    ("indptr", lambda p: p[:-1], "indptr size 64 should be 65"),
    ("indptr", lambda p: p.astype(np.float32), "dtype float32; expected int32 or int64"),
    ("indices", set_(0, 32), r"column index 32 at indices\[0\]( \(row \d+\))? should be in \[0, 32\)"),
    ("indices", unsort_first_row, "should be strictly increasing"),
    ("indices", lambda a: a[:-1], "indices size .* should be .* \\(indptr\\[-1\\]\\)"),
    ("indices", lambda a: a.reshape(1, -1), "shape \\[1, \\d+\\]; expected 1-D"),
    ("data", lambda a: np.concatenate([a, a[:1]]), "data size .* should be .* \\(indptr\\[-1\\]\\)"),
    ("data", lambda a: a.astype(np.int32), "dtype int32; expected float32 or float64"),
]


@pytest.mark.parametrize("part, fn, message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_corrupt_csr_is_rejected_naming_tensor_and_node(pairs, tmp_path, part, fn, message):
    sparse = pairs["mlp"][2]
    bad = mutate(sparse, tmp_path / "bad.onnx", T + part, fn)
    with pytest.raises(ModelFileError) as info:
        Session(bad)
    text = str(info.value)
    assert f"'{T}{part}'" in text, text
    assert "SparseLinear node 'node_linear.sparse'" in text, text
    assert __import__("re").search(message, text), text


def test_bias_of_wrong_length_is_rejected(pairs, tmp_path):
    bad = mutate(pairs["mlp"][2], tmp_path / "bad.onnx", "fc1.bias", lambda b: b[:-1])
    with pytest.raises(ModelFileError, match=r"bias tensor 'fc1.bias' has shape \[63\] float32; expected \[64\]"):
        Session(bad)


def with_attrs(src, dst, **attrs):
    """Copy the model at ``src`` to ``dst`` with attributes of its first node replaced."""
    model = onnx.load(str(src))
    for a in model.graph.node[0].attribute:
        if a.name in attrs:
            a.CopyFrom(helper.make_attribute(a.name, attrs[a.name]))
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize("attrs, message", [
    # The arrays' column indices go up to 31: shape [64, 8] is a lie the indices reveal.
    ({"shape": [64, 8], "weight_shape": [64, 8]},
     rf"indices tensor '{T}indices' is corrupt: column index \d+ .* should be in \[0, 8\)"),
    ({"shape": [64, 8]}, r"weight_shape \[64, 32\] should be shape \[64, 8\] or its transpose"),
    ({"activation": "swish"}, "activation 'swish' should be one of"),
    ({"activation": b"\xffrelu"}, r"attribute 'activation' is not UTF-8 text \(b'\\xffrelu'\)"),
    ({"shape": [64.5, 32.0]}, "attribute 'shape' has type FLOATS; expected INTS"),
])
def test_bad_attributes_are_rejected_by_the_runtime_and_inspect(pairs, tmp_path, attrs, message):
    from sparsify.inspect_model import inspect_onnx

    bad = with_attrs(pairs["mlp"][2], tmp_path / "bad.onnx", **attrs)
    for load in (Session, inspect_onnx):
        with pytest.raises(ModelFileError, match=message) as info:
            load(bad)
        assert "SparseLinear node 'node_linear.sparse'" in str(info.value)


def test_csr_arrays_must_be_initializers(pairs, tmp_path):
    model = onnx.load(str(pairs["mlp"][2]))
    model.graph.node[0].input[2] = "x"
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ModelFileError, match="indices tensor 'x' is not an initializer"):
        Session(tmp_path / "bad.onnx")


def test_truncated_and_missing_files(pairs, tmp_path):
    data = pairs["mlp"][2].read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="cut.onnx"):
        Session(tmp_path / "cut.onnx")
    with pytest.raises(ModelFileError, match="does not exist"):
        Session(tmp_path / "missing.onnx")


@pytest.mark.parametrize("kind, weight, node", [
    ("mlp", "fc1.weight", "SparseLinear node 'node_linear.sparse'"),
    ("cnn", "c1.weight", "SparseConv node"),  # stride 1
    ("cnn", "c4.weight", "SparseConv node"),  # stride 2
])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_negative_column_index_that_would_wrap_into_range_is_rejected(pairs, tmp_path, kind, weight, node, dtype):
    # -65508 narrowed to int16 is 28, a valid column: the range must be checked as stored.
    stored = -65536 + 28

    def negative(a):
        a = a.astype(dtype)
        a[0] = stored
        return a

    bad = mutate(pairs[kind][2], tmp_path / "bad.onnx", f"{weight}.csr_indices", negative)
    with pytest.raises(ModelFileError) as info:
        Session(bad)
    text = str(info.value)
    assert f"indices tensor '{weight}.csr_indices' is corrupt: column index {stored} at indices[0]" in text, text
    assert node in text, text
    from sparsify.inspect_model import inspect_onnx
    with pytest.raises(ModelFileError, match=f"column index {stored}"):
        inspect_onnx(bad)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_column_index_that_would_wrap_down_into_range_is_rejected(pairs, tmp_path, dtype):
    def high(a):
        a = a.astype(dtype)
        a[0] = 65536 + 3  # int16 would read 3
        return a

    bad = mutate(pairs["mlp"][2], tmp_path / "bad.onnx", T + "indices", high)
    with pytest.raises(ModelFileError, match=r"column index 65539 at indices\[0\] \(row \d+\) should be in \[0, 32\)"):
        Session(bad)


def _one_nonzero_linear(path, rows, cols):
    from sparsify.sparse_ops import make_node

    inits = [numpy_helper.from_array(np.array([2.0], np.float32), "d"),
             numpy_helper.from_array(np.array([cols - 1], np.int32), "i"),
             numpy_helper.from_array(np.r_[0, np.ones(rows, np.int64)].astype(np.int64), "p")]
    nodes = [helper.make_node("Relu", ["x"], ["r"]),  # the sparse input's width is unknown at load
             make_node("SparseLinear", "r", ("d", "i", "p"), None, "y", "fc", (rows, cols), "none", "w",
                       (rows, cols), "Gemm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", "K"])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", rows])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                      helper.make_opsetid("ai.sparsify", 1)]), str(path))
    return path


def test_a_shape_whose_batch1_layout_plan_would_exceed_the_memory_bound_keeps_the_csr(tmp_path, monkeypatch):
    # 10^5 x 10^6 with one nonzero: the sliced-ELL plan (one int64 per 16x16 window) needs 3.1 GB.
    monkeypatch.setenv("SPARSIFY_MAX_BYTES", str(256 << 20))
    sess = Session(_one_nonzero_linear(tmp_path / "m.onnx", 100_000, 1_000_000), batch1="auto")
    assert sess.describe()[-1].startswith("sparse: fc (batch 1: CSR"), sess.describe()
    x = np.zeros((1, 1_000_000), np.float32)
    x[0, -1] = 3.0
    y = sess.run(None, {"x": x})[0]
    assert y.shape == (1, 100_000) and y[0, 0] == 6.0 and np.count_nonzero(y) == 1


def test_a_layer_whose_input_row_exceeds_the_memory_bound_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSIFY_MAX_BYTES", str(256 << 20))
    with pytest.raises(ModelFileError, match=r"SparseLinear node 'fc': one input row of 1000000000 features .* "
                                             r"would allocate 3.7 GiB, more than the limit"):
        Session(_one_nonzero_linear(tmp_path / "m.onnx", 4, 10**9))


B = "fc1.weight.csr_"  # the block model's fc1: 64 x 32 in 4x1 blocks (16 block rows, 32 block columns)
BLOCK_CASES = [
    ("indptr", lambda p: p[:-1], r"indptr size 16 should be 17 \(block rows \+ 1\)"),
    ("indptr", swap_first_rows, "indptr should be non-decreasing"),
    ("indptr", set_(0, 1), r"indptr\[0\] is 1 but should be 0"),
    ("indices", set_(0, 32), r"block column index 32 at indices\[0\] \(block row \d+\) should be in \[0, 32\)"),
    ("indices", set_(0, -65536 + 3), r"block column index -65533 at indices\[0\]"),
    ("indices", unsort_first_row, "should be strictly increasing"),
    ("indices", lambda a: a[:-1], r"indices size .* should be .* \(indptr\[-1\]\)"),
    ("data", lambda a: a.reshape(-1), r"shape \[\d+\]; expected \[blocks, 4, 1\] \(blocksize\)"),
    ("data", lambda a: a.reshape(-1, 2, 2), r"shape \[\d+, 2, 2\]; expected \[blocks, 4, 1\] \(blocksize\)"),
    ("data", lambda a: np.concatenate([a, a[:1]]), r"data size .* should be .* \(indptr\[-1\]\)"),
]


@pytest.mark.parametrize("part, fn, message", BLOCK_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(BLOCK_CASES)])
def test_corrupt_block_arrays_are_rejected_naming_tensor_and_node(pairs, tmp_path, part, fn, message):
    from sparsify.inspect_model import inspect_onnx

    sparse = pairs["block"][2]
    model = onnx.load(str(sparse))
    assert [list(a.ints) for n in model.graph.node for a in n.attribute
            if a.name == "blocksize" and n.input[1] == B + "data"] == [[4, 1]]
    bad = mutate(sparse, tmp_path / "bad.onnx", B + part,
                 lambda a: fn(a.astype(np.int32) if part == "indices" else a))
    # Per-row order is the runtime's check (the kernels rely on it); inspect checks the rest.
    for load in (Session,) if fn is unsort_first_row else (Session, inspect_onnx):
        with pytest.raises(ModelFileError) as info:
            load(bad)
        text = str(info.value)
        assert f"'{B}{part}'" in text and "SparseLinear node '" in text, text
        assert __import__("re").search(message, text), text


@pytest.mark.parametrize("blocksize, message", [
    ([3, 1], r"blocksize \[3, 1\] should divide shape \[64, 32\]"),
    ([2, 1], r"data tensor .* has shape \[\d+, 4, 1\]; expected \[blocks, 2, 1\]"),
    ([0, 1], "blocksize"),
    ([4], "blocksize"),
])
def test_a_blocksize_that_does_not_fit_the_arrays_is_rejected(pairs, tmp_path, blocksize, message):
    model = onnx.load(str(pairs["block"][2]))
    node = next(n for n in model.graph.node if n.input[1] == B + "data")
    for a in node.attribute:
        if a.name == "blocksize":
            a.CopyFrom(helper.make_attribute("blocksize", blocksize))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ModelFileError, match=message) as info:
        Session(tmp_path / "bad.onnx")
    assert "SparseLinear node '" in str(info.value)
