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
    with pytest.raises(ModelFileError, match=r"m\.onnx: the external data of this ONNX model could not be loaded"):
        load_onnx(path, external_data=True)
