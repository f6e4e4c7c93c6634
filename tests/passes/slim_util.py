"""Shared helpers for the structured-pruning tests: masked reference, ONNX round trip."""

from __future__ import annotations


import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from sparsify.passes.slim import masked_model  # noqa: F401  (the reference the tests compare with)


def onnx_outputs(module: nn.Module, example: tuple[torch.Tensor, ...], run_inputs: tuple[torch.Tensor, ...]):
    """Export with the dynamo exporter (dynamic batch), check the model, run it in ORT."""
    dyn = tuple({0: torch.export.Dim("batch")} for _ in example)
    prog = torch.onnx.export(module, example, dynamo=True, dynamic_shapes=dyn, verbose=False)
    proto = prog.model_proto
    onnx.checker.check_model(proto)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {n: x.numpy() for n, x in zip(names, run_inputs)}), proto


def random_like(x: torch.Tensor, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if x.dtype.is_floating_point:
        return torch.randn((batch,) + tuple(x.shape[1:]), generator=g)
    hi = int(x.max()) + 1
    return torch.randint(0, hi, (batch,) + tuple(x.shape[1:]), generator=g)


def to_np(t) -> np.ndarray:
    return t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
