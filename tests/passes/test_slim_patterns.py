"""Each pattern: plan at ratio 0.5, slim, expected shapes, exact vs the masked model in torch and ORT."""

from __future__ import annotations

import pytest
import torch

from sparsify.passes.slim import masked_model, slim_model
from sparsify.structured import plan_structured
from tests import models as M
from tests.helpers import assert_close, onnx_outputs, random_like


def img(h: int = 8):
    return lambda: torch.randn(2, 3, h, h, generator=torch.Generator().manual_seed(3))


def seq(t: int, c: int):
    return lambda: torch.randn(2, t, c, generator=torch.Generator().manual_seed(3))


def ids(vocab: int, t: int):
    return lambda: torch.randint(0, vocab, (2, t), generator=torch.Generator().manual_seed(3))


# name: (constructor, example input, structure, {tensor: expected slim shape})
CASES = {
    "linear_chain": (M.LinearChain, seq(4, 12), "channel",
                     {"fc1.weight": (16, 12), "fc2.weight": (12, 16), "fc3.weight": (5, 12)}),
    "conv_bn_relu": (M.ConvBNReLU, img(), "channel",
                     {"conv1.weight": (8, 3, 3, 3), "bn1.running_var": (8,), "conv2.weight": (12, 8, 3, 3),
                      "bn2.weight": (12,), "fc.weight": (5, 12)}),
    "residual": (M.small_resnet, img(), "channel",
                 {"stem.weight": (8, 3, 7, 7), "layers.0.conv1.weight": (8, 8, 3, 3),
                  "layers.1.conv2.weight": (8, 8, 3, 3), "layers.1.bn2.bias": (8,), "fc.weight": (5, 8)}),
    "concat": (M.Concat, img(), "channel",
               {"a.weight": (4, 3, 3, 3), "b.weight": (6, 3, 1, 1), "bn.weight": (10,), "c.weight": (5, 10, 3, 3)}),
    "split_chunk": (M.SplitChunk, img(), "channel",
                    {"a.weight": (8, 3, 1, 1), "b.weight": (6, 3, 1, 1), "fc.weight": (3, 3)}),
    "depthwise_grouped": (M.DepthwiseGrouped, img(), "channel",
                          {"pw1.weight": (8, 3, 1, 1), "dw.weight": (8, 1, 3, 3), "pw2.weight": (8, 8, 1, 1),
                           "gc.weight": (8, 4, 3, 3), "fc.weight": (4, 8)}),
    "squeeze_excite": (M.SqueezeExcite, img(), "channel",
                       {"conv.weight": (8, 3, 3, 3), "se1.weight": (4, 8), "se2.weight": (8, 4),
                        "out.weight": (4, 8, 1, 1)}),
    "conv_flatten_linear": (M.ConvFlattenLinear, img(), "channel",
                            {"conv.weight": (4, 3, 3, 3), "fc1.weight": (8, 64), "fc2.weight": (3, 8)}),
    "group_norm": (M.ConvGroupNorm, img(), "channel",
                   {"conv1.weight": (8, 3, 3, 3), "gn.weight": (8,), "conv2.weight": (4, 8, 3, 3)}),
    "upsample_pad": (M.UpsamplePad, img(), "channel", {"c1.weight": (8, 3, 3, 3), "c2.weight": (4, 8, 3, 3)}),
    "global_pool": (M.GlobalPool, img(), "channel", {"conv.weight": (8, 3, 3, 3), "fc.weight": (3, 8)}),
    "layer_norm": (M.LayerNormMLP, seq(3, 10), "channel",
                   {"fc1.weight": (16, 10), "ln.weight": (16,), "fc2.weight": (4, 16)}),
    "channel_shuffle": (M.ChannelShuffle, img(), "channel",
                        {"conv1.weight": (8, 3, 1, 1), "conv2.weight": (4, 8, 3, 3)}),
    "mha_heads": (M.MHABlock, seq(5, 8), "head",
                  {"attn.in_proj_weight": (48, 32), "attn.out_proj.weight": (32, 16)}),
    "qkv_heads": (M.SelfAttention, seq(5, 32), "head",
                  {"q.weight": (16, 32), "k.bias": (16,), "v.weight": (16, 32), "o.weight": (32, 16)}),
    "qkv_heads_explicit": (lambda: M.SelfAttention(explicit=True), seq(5, 32), "head",
                           {"q.weight": (16, 32), "k.weight": (16, 32), "o.weight": (32, 16)}),
    "ffn_neurons": (M.TransformerFFN, seq(5, 6), "channel",
                    {"inp.weight": (8, 6), "ln.weight": (8,), "fc1.weight": (24, 8), "fc2.weight": (8, 24)}),
    "patch_embed": (M.PatchEmbed, img(16), "channel",
                    {"proj.weight": (8, 3, 4, 4), "ln.bias": (8,), "fc.weight": (3, 8)}),
    "embedding": (M.EmbeddingModel, ids(30, 7), "channel",
                  {"emb.weight": (30, 8), "fc1.weight": (12, 8), "fc2.weight": (3, 12)}),
    "encoder_embedding_dim": (M.small_bert, ids(50, 8), "channel",
                              {"tok.weight": (50, 16), "pos": (1, 8, 16), "ln.weight": (16,),
                               "layers.0.attention.query.weight": (32, 16), "layers.1.fc1.weight": (32, 16),
                               "layers.1.fc2.weight": (16, 32), "classifier.weight": (3, 16)}),
    "gpt2_conv1d": (M.GPT2MLP, seq(5, 12), "channel",
                    {"c_fc.weight": (12, 16), "c_fc.bias": (16,), "c_proj.weight": (16, 6), "mm": (6, 10),
                     "out.weight": (3, 10)}),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def pruned(request):
    ctor, make_input, structure, shapes = CASES[request.param]
    torch.manual_seed(0)
    model = M.randomize_norms(ctor())
    x = make_input()
    plan = plan_structured(model, (x,), structure=structure, ratio=0.5)
    result = slim_model(model, plan.masks, (x,))
    return request.param, model, x, plan, result, shapes


def test_slim_shapes(pruned):
    name, model, x, plan, result, shapes = pruned
    state = result.module.state_dict()
    got = {k: tuple(state[k].shape) for k in shapes}
    assert got == shapes
    if name == "split_chunk":
        # the chunks keep whatever the importance chose; their inputs add up to the kept channels
        assert state["c1.weight"].shape[1] + state["c2.weight"].shape[1] == 8
        assert state["d1.weight"].shape[1] + state["d2.weight"].shape[1] == 6
    assert result.report.params_after < result.report.params_before
    assert result.report.macs_after < result.report.macs_before


def test_slim_matches_masked_model_in_torch_and_onnxruntime(pruned):
    name, model, x, plan, result, shapes = pruned
    ref_model = masked_model(model, plan.masks)
    run = random_like(x, 3, seed=11)  # another batch size than the capture
    with torch.no_grad():
        ref = ref_model(run)
        got = result.module(run)
    assert_close(got, ref, atol=1e-5)
    outs, proto = onnx_outputs(result.module, (x,), (run,))
    assert_close(outs[0], ref.numpy(), atol=1e-5)
    # the ONNX graph carries the slim weights, not the original ones
    inits = {tuple(i.dims) for i in proto.graph.initializer}
    first = next(iter(shapes.values()))
    assert first in inits or tuple(reversed(first)) in inits or len(first) == 1

