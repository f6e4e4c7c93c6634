"""timm-style (fused qkv) and torchvision-style (nn.MultiheadAttention) ViTs, and a MobileNetV3
block (hardswish_, hardsigmoid_): heads, FFN neurons and the residual stream removed exactly."""

from __future__ import annotations

import pytest
import torch

from sparsify.graph.capture import capture
from sparsify.graph.pointwise import CONST, ZERO, unary_behaviour
from sparsify.passes.slim import masked_model, slim_model
from sparsify.structured import merge_masks, plan_structured
from tests import models as V
from tests.helpers import assert_close, onnx_outputs
from tests.models import randomize_norms


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _head_channel(model, x):
    heads = plan_structured(model, (x,), structure="head", ratio=0.5)
    chans = plan_structured(model, (x,), structure="channel", ratio=0.5)
    return merge_masks(heads.masks, chans.masks), heads, chans


@pytest.mark.parametrize("ctor,prefix", [(V.TimmViT, "blocks"), (V.TorchvisionViT, "layers")])
def test_vit_heads_ffn_and_stream_are_removed_exactly(ctor, prefix):
    torch.manual_seed(0)
    model = randomize_norms(ctor())
    x = _x(2, 3, 16, 16)
    masks, heads, chans = _head_channel(model, x)
    assert len([g for g in heads.groups if g.kind == "head" and not g.skipped]) == 2
    stream = [g for g in chans.groups if not g.skipped and g.total_channels == 32]
    assert stream, f"the residual stream is not pruned: {chans.skipped}"
    res = slim_model(model, masks, (x,))
    st = res.module.state_dict()
    stem = "patch_embed.weight" if ctor is V.TimmViT else "conv_proj.weight"
    assert st[stem].shape[0] == 16  # hidden size 32 -> 16
    token = "cls_token" if ctor is V.TimmViT else "class_token"
    assert st[token].shape[-1] == 16
    # ~ a quarter of the parameters: hidden, heads and FFN all halved
    assert res.report.params_after < 0.3 * res.report.params_before
    ref_model = masked_model(model, masks)
    for batch in (1, 3):
        xs = _x(batch, 3, 16, 16, seed=batch)
        with torch.no_grad():
            ref = ref_model(xs)
        assert_close(res.module(xs), ref, atol=1e-5)
        outs, _ = onnx_outputs(res.module, (x,), (xs,))
        assert_close(outs[0], ref.numpy(), atol=1e-5)


def test_mobilenetv3_block_with_inplace_hardswish_is_pruned():
    torch.manual_seed(0)
    model = randomize_norms(V.MobileNetV3Block())
    x = _x(2, 3, 8, 8)
    plan = plan_structured(model, (x,), ratio=0.5)
    assert not [r for r in plan.skipped.values() if "no channel rule" in r], plan.skipped
    res = slim_model(model, plan.masks, (x,))
    assert res.report.params_after < 0.45 * res.report.params_before
    xs = _x(3, 3, 8, 8, seed=5)
    with torch.no_grad():
        assert_close(res.module(xs), masked_model(model, plan.masks)(xs), atol=1e-5)


class _Unary(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x * 2.0)


@pytest.mark.parametrize("fn,expected", [
    (lambda x: torch.nn.functional.hardswish(x, inplace=True), ZERO),
    (lambda x: torch.relu_(x), ZERO),
    (lambda x: torch.nn.functional.gelu(x, approximate="tanh"), ZERO),
    (lambda x: torch.nn.functional.dropout(x, 0.3, training=False), ZERO),  # eval mode: the identity
    (lambda x: torch.nn.functional.dropout(x, 0.3, training=True), None),  # random: not pointwise
    (lambda x: torch.nn.functional.hardsigmoid(x, inplace=True), CONST),
    (lambda x: torch.sigmoid(x), CONST),
    (lambda x: torch.clamp(x, min=0.5), CONST),
    (lambda x: torch.clamp(x, min=-1.0, max=1.0), ZERO),
    (lambda x: torch.softmax(x, -1), None),  # not pointwise
    (lambda x: torch.cumsum(x, -1), None),  # not pointwise
])
def test_pointwise_behaviour_is_derived_from_aten(fn, expected):
    gm = capture(_Unary(fn), (_x(2, 6),)).gm
    nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
    last = nodes[-1]
    assert unary_behaviour(last) == expected, last.target
