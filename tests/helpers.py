"""Helpers shared by the whole test suite."""

from __future__ import annotations

import numpy as np

# Per-dtype tolerances for comparing a candidate against a reference.
TOLERANCES = {
    np.dtype(np.float64): (1e-10, 1e-9),
    np.dtype(np.float32): (1e-5, 1e-4),
}


def to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def assert_close(actual, expected, atol: float | None = None, rtol: float | None = None) -> None:
    """Shape, then dtype, then values; the failure names the largest abs and rel error."""
    a, e = to_numpy(actual), to_numpy(expected)
    assert a.shape == e.shape, f"shape {a.shape} should be {e.shape}"
    assert a.dtype == e.dtype, f"dtype {a.dtype} should be {e.dtype}"
    d_atol, d_rtol = TOLERANCES.get(e.dtype, (0.0, 0.0))
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    if a.size == 0:
        return
    diff = np.abs(a.astype(np.float64) - e.astype(np.float64))
    rel = diff / np.maximum(np.abs(e.astype(np.float64)), 1e-30)
    np.testing.assert_allclose(
        a, e, atol=atol, rtol=rtol,
        err_msg=f"max abs err {diff.max():.3e}, max rel err {rel.max():.3e}",
    )


def onnx_outputs(module, example: tuple, run_inputs: tuple):
    """Export ``module`` with the dynamo exporter (dynamic batch), check the model, run
    ``run_inputs`` in ONNX Runtime; returns (outputs, ModelProto)."""
    import onnx
    import onnxruntime as ort
    import torch

    dyn = tuple({0: torch.export.Dim("batch")} for _ in example)
    proto = torch.onnx.export(module, example, dynamo=True, dynamic_shapes=dyn, verbose=False).model_proto
    onnx.checker.check_model(proto)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {n: x.numpy() for n, x in zip(names, run_inputs)}), proto


def random_like(x, batch: int, seed: int):
    """A seeded tensor like ``x`` with ``batch`` rows: normal for floats, ids below ``x.max() + 1`` for integers."""
    import torch

    g = torch.Generator().manual_seed(seed)
    if x.dtype.is_floating_point:
        return torch.randn((batch,) + tuple(x.shape[1:]), generator=g)
    hi = int(x.max()) + 1
    return torch.randint(0, hi, (batch,) + tuple(x.shape[1:]), generator=g)


def with_conversion_record(src, dest, **record):
    """A copy of the ONNX file ``src`` at ``dest`` whose conversion record is ``record``."""
    import json

    import onnx

    from sparsify.runtime.conversion_record import CONVERSION_METADATA

    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    props[CONVERSION_METADATA] = json.dumps(record)
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(dest))
    return dest
