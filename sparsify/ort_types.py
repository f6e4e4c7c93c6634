"""ONNX element types, ONNX Runtime's type strings (``NodeArg.type``) and numpy dtypes: one table."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

ORT_TYPE_STRINGS: dict[int, str] = {
    TensorProto.FLOAT: "tensor(float)", TensorProto.DOUBLE: "tensor(double)",
    TensorProto.FLOAT16: "tensor(float16)", TensorProto.INT8: "tensor(int8)",
    TensorProto.INT16: "tensor(int16)", TensorProto.INT32: "tensor(int32)",
    TensorProto.INT64: "tensor(int64)", TensorProto.UINT8: "tensor(uint8)",
    TensorProto.UINT16: "tensor(uint16)", TensorProto.UINT32: "tensor(uint32)",
    TensorProto.UINT64: "tensor(uint64)", TensorProto.BOOL: "tensor(bool)",
}

NUMPY_DTYPES: dict[str, np.dtype] = {text: np.dtype(helper.tensor_dtype_to_np_dtype(elem))
                                     for elem, text in ORT_TYPE_STRINGS.items()}


def ort_type_string(elem_type: int) -> str:
    """ORT's type string of an ONNX element type (``tensor(type N)`` for one ORT does not name)."""
    return ORT_TYPE_STRINGS.get(elem_type, f"tensor(type {elem_type})")
