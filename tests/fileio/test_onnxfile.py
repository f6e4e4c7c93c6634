"""``load_onnx``, shared by ``inspect`` and ``bench``: a file that is not ONNX is a ModelFileError naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsify.bench.modelfile import check_model_path
from sparsify.cli import main
from sparsify.errors import ModelFileError
from sparsify.inspect_model import inspect_path
from sparsify.onnxfile import load_onnx

NOT_ONNX = {
    "garbage": b"\x00\x01this is not a protobuf at all" * 10,
    "text": b"this is not a protobuf, just some text\n" * 3,
    "empty": b"",
}


def matmul_with_external_weight(path: Path) -> Path:
    w = numpy_helper.from_array(np.ones((8, 4), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    onnx.save(helper.make_model(graph), str(path), save_as_external_data=True,
              location=f"{path.name}.data", size_threshold=0)
    return path


@pytest.mark.parametrize("kind", sorted(NOT_ONNX))
def test_not_onnx_is_rejected_by_both_callers_naming_the_file(kind, tmp_path):
    bad = tmp_path / f"{kind}.onnx"
    bad.write_bytes(NOT_ONNX[kind])
    for load in (load_onnx, check_model_path, inspect_path):
        with pytest.raises(ModelFileError, match=rf"{kind}\.onnx is not an ONNX model") as info:
            load(bad)
        assert "expected an ONNX model" in str(info.value)


def test_cli_exits_2_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "notes.onnx"
    bad.write_bytes(NOT_ONNX["text"])
    assert main(["inspect", str(bad)]) == 2
    assert main(["bench", str(bad), "--repeat", "1", "--no-memory", "--no-progress"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("notes.onnx is not an ONNX model" in line for line in err), err


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"nope\.onnx does not exist"):
        load_onnx(tmp_path / "nope.onnx")


def test_external_data_is_loaded_only_on_request(tmp_path):
    path = matmul_with_external_weight(tmp_path / "m.onnx")
    header = load_onnx(path).graph.initializer[0]
    assert header.data_location == TensorProto.EXTERNAL and not header.raw_data
    assert numpy_helper.to_array(load_onnx(path, external_data=True).graph.initializer[0]).sum() == 32
    (tmp_path / "m.onnx.data").unlink()
    assert load_onnx(path).graph.initializer[0].name == "W"
    with pytest.raises(ModelFileError, match=r"m\.onnx: tensor 'W' stored as external data: its file 'm.onnx.data' "
                                             "does not exist beside the model"):
        load_onnx(path, external_data=True)


def _set_entry(path: Path, key: str, value: str | None) -> Path:
    model = onnx.load(str(path), load_external_data=False)
    init = model.graph.initializer[0]
    entries = {e.key: e.value for e in init.external_data}
    if value is None:
        entries.pop(key, None)
    else:
        entries[key] = value
    del init.external_data[:]
    for k, v in entries.items():
        init.external_data.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("key, value, message", [
    ("offset", "-8", r"has offset '-8'; expected a non-negative integer"),
    ("offset", "abc", r"has offset 'abc'; expected a non-negative integer"),
    ("offset", "1_0", r"has offset '1_0'; expected a non-negative integer"),
    ("length", "-1", r"has length '-1'; expected a non-negative integer"),
    ("length", "1e3", r"has length '1e3'; expected a non-negative integer"),
    ("offset", "4096", r"reads bytes \[4096, \d+\) of 'm.onnx.data', which holds 128 bytes"),
    ("length", "1000000", r"reads bytes \[0, 1000000\) of 'm.onnx.data', which holds 128 bytes"),
    ("length", "64", r"has 64 bytes in 'm.onnx.data', but dims \[8, 4\] of its element type need 128"),
    ("location", "../escape.data", r"points at '../escape.data', which is not a file inside the model's folder"),
    ("location", "/etc/passwd", r"points at '/etc/passwd', which is not a file inside the model's folder"),
    ("location", "sub/../../x", r"which is not a file inside the model's folder"),
    ("location", "missing.data", r"its file 'missing.data' does not exist beside the model"),
    ("location", None, r"has no usable 'location'"),
])
def test_bad_external_data_entries_are_clean_errors_naming_the_tensor(tmp_path, capsys, key, value, message):
    from sparsify.runtime import Session

    path = _set_entry(matmul_with_external_weight(tmp_path / "m.onnx"), key, value)
    for load in (lambda p: load_onnx(p, external_data=True), inspect_path, check_model_path, Session):
        with pytest.raises(ModelFileError, match=message) as info:
            load(path)
        assert "tensor 'W' stored as external data" in str(info.value)
    np.save(tmp_path / "x.npy", np.ones((1, 8), np.float32))
    for argv in (["inspect", str(path)], ["bench", str(path), "--repeat", "1", "--no-memory", "--no-progress"],
                 ["run", str(path), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]):
        assert main(argv) == 2
        assert "tensor 'W'" in capsys.readouterr().err


def test_external_data_through_a_symlink_leading_out_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.data").write_bytes(b"\0" * 128)
    inner = tmp_path / "model"
    inner.mkdir()
    path = matmul_with_external_weight(inner / "m.onnx")
    (inner / "link.data").symlink_to(outside / "secret.data")
    _set_entry(path, "location", "link.data")
    with pytest.raises(ModelFileError, match=r"tensor 'W' stored as external data points at 'link.data', which "
                                             r"resolves to .*secret.data: not a file inside the model's folder"):
        load_onnx(path, external_data=True)


def test_valid_external_data_with_offset_and_length_still_loads(tmp_path):
    path = matmul_with_external_weight(tmp_path / "m.onnx")
    _set_entry(path, "offset", "0")
    _set_entry(path, "length", "128")
    w = load_onnx(path, external_data=True).graph.initializer[0]
    assert numpy_helper.to_array(w).shape == (8, 4)


def _matmul_model(x_shape, w=None) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w") if w is None else w
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_mac_count_overflowing_int64_is_refused_by_inspect(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(_matmul_model(["batch", 2**31, 2**31, 4]), str(path))
    with pytest.raises(ModelFileError, match=r"the MAC count of MatMul node 'y' \(output \[1, 2147483648, 2147483648, "
                                             r"4\]\) is 7.379e\+19, which overflows int64"):
        inspect_path(path)
    assert main(["inspect", str(path)]) == 2


def test_mac_count_that_fits_int64_is_printed_exactly(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_matmul_model(["batch", 2**20, 2**20, 4]), str(path))
    (row,) = inspect_path(path).rows
    assert row.macs == 2**20 * 2**20 * 4 * 4


def test_truncated_initializer_is_refused_by_inspect_naming_it(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    w.raw_data = w.raw_data[:-5]
    path = tmp_path / "m.onnx"
    onnx.save(_matmul_model([1, 4], w), str(path))
    with pytest.raises(ModelFileError, match=r"tensor 'w' holds 59 bytes, but its dims \[4, 4\] need 64 "
                                             r"\(the file is truncated or corrupt\)"):
        inspect_path(path)


def test_inspect_refuses_csr_dims_that_disagree_with_the_arrays(tmp_path):
    from tests import models

    m = models.sparse_onnx_mlp()
    node = m.graph.node[0]
    for a in node.attribute:
        if a.name in ("shape", "weight_shape"):
            a.CopyFrom(helper.make_attribute(a.name, [2**40, 32]))
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    with pytest.raises(ModelFileError, match=r"SparseLinear node 'fc1': indptr tensor 'fc1.indptr' is corrupt: "
                                             r"indptr size 65 should be 1099511627777"):
        inspect_path(path)


def test_bench_refuses_a_declared_input_larger_than_the_allocation_limit(tmp_path, capsys, monkeypatch):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10**9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10**9])])
    path = tmp_path / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    monkeypatch.setenv("SPARSIFY_MAX_BYTES", str(1 << 30))
    assert main(["bench", str(path), "--repeat", "1", "--no-memory", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "input 'x' of shape [1, 1000000000] (float32)" in err and "more than the limit of 1.0 GiB" in err, err
    np.save(tmp_path / "x.npy", np.ones((1, 8), np.float32))
    assert main(["run", str(path), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 2
