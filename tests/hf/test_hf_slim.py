"""Heads, FFN neurons and the hidden size of Hugging Face models removed exactly: the slim ONNX
in ONNX Runtime equals the masked model at two sequence lengths and two batch sizes."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch

from sparsify.data import random_inputs
from sparsify.export.onnx_export import export_onnx
from sparsify.masks import fold_masks
from sparsify.passes.slim import slim_model
from sparsify.structured import merge_masks, plan_structured
from tests.helpers import assert_close
from tests.hf.tiny import task

# (model, attention): BERT, GPT-2 and ViT with SDPA go through the CLI in test_hf_cli.py (whose
# export verifies two sequence lengths and batch sizes); here the eager attention of each, and
# DistilBERT, RoBERTa and GPT-2 with its tied LM head.
CASES = [("bert", "eager"), ("gpt2", "eager"), ("vit", "eager"), ("distilbert", "sdpa"), ("roberta", "sdpa"),
         ("gpt2-lm", "sdpa")]


def _open(hf_dirs, name, attn):
    from sparsify.api import ModelSource, open_model

    shapes = [] if name == "vit" else ["1,16"]
    return open_model(ModelSource(f"hf:{hf_dirs(name, attn)}", hf_task=task(name), input_shapes=shapes))


@pytest.mark.parametrize("name,attn", CASES)
def test_head_channel_slim_onnx_equals_masked_model(hf_dirs, tmp_path, name, attn):
    run = _open(hf_dirs, name, attn)
    model, specs = run.model, run.inputs
    dynamic = [s.dynamic for s in specs]
    example = random_inputs(specs)
    plans = [plan_structured(model, example, structure=s, ratio=0.5, dynamic=dynamic) for s in ("head", "channel")]
    heads = [g for g in plans[0].groups if g.kind == "head" and not g.skipped]
    assert len(heads) == 2, plans[0]
    stream = [g for g in plans[1].groups if not g.skipped and g.total_channels == 32]
    assert stream, f"the hidden size is not pruned: {plans[1].skipped}"
    masks = merge_masks(*(p.masks for p in plans))
    res = slim_model(model, masks, example, dynamic=dynamic)
    rep = res.report
    print(f"{name}/{attn}: params {rep.params_before} -> {rep.params_after}, MACs {rep.macs_before} -> "
          f"{rep.macs_after}, slim max abs err {rep.max_abs_err:.2e}")
    # heads, FFN neurons and hidden size halved: about a quarter of the prunable parameters remain
    assert rep.params_after < 0.45 * rep.params_before
    assert rep.macs_after < 0.35 * rep.macs_before
    ref = copy.deepcopy(model)
    from sparsify.masks import apply_masks

    apply_masks(ref, masks)
    ref = fold_masks(ref).eval()
    path = tmp_path / "slim.onnx"
    export_onnx(res.module, example, path, [s.name for s in specs], dynamic=dynamic)
    proto = onnx.load(str(path))
    if name != "vit":  # a dynamic sequence axis in the file
        dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
        assert dims[0] and dims[1], dims
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert names == [s.name for s in specs]
    seqs = (None,) if name == "vit" else (16, 9)
    for seq in seqs:
        for batch in (1, 3):
            xs = random_inputs(specs, batch=batch, seq=seq, seed=batch * 31 + (seq or 0))
            with torch.no_grad():
                want = ref(*xs)
            want = want if isinstance(want, tuple) else (want,)
            got = sess.run(None, {n: x.numpy() for n, x in zip(names, xs)})
            for w, g in zip(want, got):
                assert_close(g, w.numpy(), atol=1e-5)
