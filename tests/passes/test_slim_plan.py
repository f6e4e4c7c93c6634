"""Planning options, bad input, partial masks, unanalysable ops, and save/load of slim models."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsify.errors import ModelFileError, PruneError
from sparsify.passes.slim import load_slim, masked_model, save_slim, slim_model
from sparsify.structured import merge_masks, plan_structured
from tests import models as M
from tests.helpers import assert_close


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class SigmoidHidden(nn.Module):
    """A hidden layer whose activation maps 0 to 0.5: pruned channels are not zero after it."""

    def __init__(self, bias: bool = True):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3, bias=bias)

    def forward(self, x):
        return self.fc2(torch.sigmoid(self.fc1(x)))


class SigmoidConv(nn.Module):
    """conv -> sigmoid -> conv (1x1, or 3x3 zero-padded): the fold is exact only for the 1x1."""

    def __init__(self, k: int):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, k, padding=k // 2)

    def forward(self, x):
        return self.c2(torch.sigmoid(self.c1(x))).mean((2, 3))


def _producer_masks(prefix: str, shape: tuple[int, ...], n_pruned: int) -> dict[str, torch.Tensor]:
    rows = torch.ones(shape[0], dtype=torch.bool)
    rows[:n_pruned] = False
    w = rows.reshape((-1,) + (1,) * (len(shape) - 1)).expand(shape).clone()
    return {f"{prefix}.weight": w, f"{prefix}.bias": rows}


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, "half"])
def test_ratio_outside_range_is_rejected(ratio):
    with pytest.raises(PruneError, match=r"ratio=.* should be a float in \[0, 1\)"):
        plan_structured(M.LinearChain(), (_x(2, 12),), ratio=ratio)


def test_targets_matching_nothing_is_rejected():
    with pytest.raises(PruneError, match="targets='nope' matches no parameter"):
        plan_structured(M.LinearChain(), (_x(2, 12),), ratio=0.5, targets="nope")
    model = M.randomize_norms(M.ConvBNReLU())
    with pytest.raises(PruneError, match=r"targets='bn1' matches no layer that produces channels \(producers: conv1"):
        plan_structured(model, (_x(2, 3, 8, 8),), ratio=0.5, targets="bn1")


def test_bad_options_name_the_valid_values():
    with pytest.raises(PruneError, match="criterion='l3' should be one of"):
        plan_structured(M.LinearChain(), (_x(2, 12),), ratio=0.5, criterion="l3")
    with pytest.raises(PruneError, match="structure='block' should be one of"):
        plan_structured(M.LinearChain(), (_x(2, 12),), ratio=0.5, structure="block")


def test_plan_is_printable_and_json_and_leaves_the_model_alone():
    model = M.randomize_norms(M.ConvBNReLU())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = plan_structured(model, (_x(2, 3, 8, 8),), ratio=0.5)
    text = str(plan)
    assert "conv1: 8/16 channels kept" in text and "conv2: 12/24 channels kept" in text
    d = json.loads(plan.to_json())
    assert {g["name"] for g in d["groups"] if not g["skipped"]} == {"conv1", "conv2"}
    assert d["masks"]["conv1.weight"] == {"shape": [16, 3, 3, 3], "kept": 8 * 27}
    # the group's masks cover producer rows, bias, BN affine and the consumer's input slice
    m = plan.masks
    pruned = (~m["conv1.weight"].flatten(1).any(1)).nonzero().flatten()
    assert len(pruned) == 8
    assert not m["conv1.bias"][pruned].any() and not m["bn1.weight"][pruned].any()
    assert not m["bn1.bias"][pruned].any() and not m["conv2.weight"][:, pruned].any()
    assert "bn1.running_mean" not in m
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_l1_prunes_the_smallest_channels():
    model = M.LinearChain()
    with torch.no_grad():
        model.fc1.weight[:8] *= 0.01  # the group's importance sums rows, bias and fc2's columns
        model.fc1.bias[:8] *= 0.01
        model.fc2.weight[:, :8] *= 0.01
    plan = plan_structured(model, (_x(2, 12),), ratio=0.25, targets="fc1")
    kept = plan.masks["fc1.weight"].any(1)
    assert kept[:8].sum() == 0 and kept[8:].all()
    assert "fc2.bias" not in plan.masks  # fc2's group not targeted


def test_global_scope_taylor_random_and_round_to():
    model = M.randomize_norms(M.small_resnet())
    x = _x(2, 3, 8, 8)
    batches = [(_x(4, 3, 8, 8, seed=i), torch.randint(0, 5, (4,))) for i in range(2)]
    plans = {
        "global": plan_structured(model, (x,), ratio=0.5, scope="global"),
        "taylor": plan_structured(model, (x,), ratio=0.5, criterion="taylor", calib_batches=batches),
        "random": plan_structured(model, (x,), ratio=0.5, criterion="random", seed=1),
        "round": plan_structured(model, (x,), ratio=0.3, round_to=4),
    }
    for name, plan in plans.items():
        res = slim_model(model, plan.masks, (x,))
        with torch.no_grad():
            assert_close(res.module(x), masked_model(model, plan.masks)(x), atol=1e-5)
    kept_global = sum(g.kept_units for g in plans["global"].groups if not g.skipped)
    total = sum(g.total_units for g in plans["global"].groups if not g.skipped)
    assert kept_global == total - total // 2
    for g in plans["round"].groups:
        if not g.skipped:
            assert g.kept_units % 4 == 0, g
    r1 = plan_structured(model, (x,), ratio=0.5, criterion="random", seed=1)
    assert all(torch.equal(r1.masks[k], plans["random"].masks[k]) for k in r1.masks)
    with pytest.raises(PruneError, match="taylor' needs calib_batches"):
        plan_structured(model, (x,), ratio=0.5, criterion="taylor")


def test_heads_and_ffn_neurons_together():
    model = M.randomize_norms(M.small_bert(layers=2))
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    heads = plan_structured(model, (ids,), structure="head", ratio=0.5)
    ffn = plan_structured(model, (ids,), structure="channel", ratio=0.5, targets=r"fc1")
    masks = merge_masks(heads.masks, ffn.masks)
    res = slim_model(model, masks, (ids,))
    st = res.module.state_dict()
    assert tuple(st["layers.0.attention.query.weight"].shape) == (16, 32)
    assert tuple(st["layers.1.fc1.weight"].shape) == (32, 32)
    assert tuple(st["tok.weight"].shape) == (50, 32)  # residual stream untouched
    run = torch.randint(0, 50, (3, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_close(res.module(run), masked_model(model, masks)(run), atol=1e-5)


def test_opaque_op_is_skipped_with_its_name_and_location():
    model = M.Opaque()
    plan = plan_structured(model, (_x(2, 8),), ratio=0.5)
    reason = plan.skipped["fc1"]
    assert "cumsum" in reason and "models.py" in reason
    assert "fc1.weight" not in plan.masks and "fc2.weight" in plan.masks
    # masks that prune fc1 anyway: the channel is kept, with the reason, and the model stays exact
    masks = {"fc1.weight": torch.ones(16, 8, dtype=torch.bool), "fc1.bias": torch.ones(16, dtype=torch.bool)}
    masks["fc1.weight"][:4] = False
    masks["fc1.bias"][:4] = False
    res = slim_model(model, masks, (_x(2, 8),))
    assert tuple(res.module.state_dict()["fc1.weight"].shape) == (16, 8)
    group = next(g for g in res.report.groups if g["name"] == "fc1")
    assert group["kept_channels"] == 16 and any("cumsum" in r for r in group["reasons"])
    x = _x(5, 8, seed=2)
    with torch.no_grad():
        assert_close(res.module(x), masked_model(model, masks)(x), atol=1e-5)


def test_producer_only_masks_are_enough_when_the_channel_is_zero():
    model = M.LinearChain()
    masks = {"fc1.weight": torch.ones(32, 12, dtype=torch.bool), "fc1.bias": torch.ones(32, dtype=torch.bool)}
    masks["fc1.weight"][::2] = False
    masks["fc1.bias"][::2] = False
    res = slim_model(model, masks, (_x(2, 12),))
    assert tuple(res.module.state_dict()["fc2.weight"].shape) == (24, 16)


def test_unmasked_bias_keeps_the_channel_and_says_why():
    model = M.LinearChain()
    masks = {"fc1.weight": torch.ones(32, 12, dtype=torch.bool)}
    masks["fc1.weight"][:10] = False
    res = slim_model(model, masks, (_x(2, 12),))
    assert tuple(res.module.state_dict()["fc1.weight"].shape) == (32, 12)
    group = next(g for g in res.report.groups if g["name"] == "fc1")
    assert group["kept_channels"] == 32 and "fc1.bias (dim 0) is not masked" in group["reasons"][0]
    x = _x(4, 12, seed=3)
    with torch.no_grad():
        assert_close(res.module(x), masked_model(model, masks)(x), atol=1e-5)


def test_sigmoid_constant_is_folded_into_the_consumer_bias():
    """Producer rows masked, consumer columns not: sigmoid(0) = 0.5 moves into fc2's bias."""
    model = SigmoidHidden()
    masks = _producer_masks("fc1", (8, 6), 4)
    res = slim_model(model, masks, (_x(2, 6),))
    assert tuple(res.module.state_dict()["fc2.weight"].shape) == (3, 4)
    xs = _x(5, 6, seed=4)
    with torch.no_grad():
        assert_close(res.module(xs), masked_model(model, masks)(xs), atol=1e-5)


def test_slim_leaves_the_callers_model_unchanged_and_shares_its_folded_weights():
    """The bias fold and the slicing replace tensors: the caller's (already masked) model keeps its
    values bit for bit, and the masked copy holds the caller's weights instead of copies."""
    from sparsify.passes.slim import masked_model

    model = SigmoidHidden()
    masks = _producer_masks("fc1", (8, 6), 4)
    with torch.no_grad():
        model.fc1.weight.mul_(masks["fc1.weight"])
        model.fc1.bias.mul_(masks["fc1.bias"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masked = masked_model(model, masks)
    assert masked.fc1.weight.data_ptr() == model.fc1.weight.data_ptr()
    assert masked.fc2.weight.data_ptr() == model.fc2.weight.data_ptr()
    res = slim_model(model, masks, (_x(2, 6),))
    assert tuple(res.module.state_dict()["fc2.weight"].shape) == (3, 4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    unmasked = SigmoidHidden()
    original = unmasked.fc1.weight.detach().clone()
    copy_ = masked_model(unmasked, masks)
    assert torch.equal(unmasked.fc1.weight, original)
    assert torch.equal(copy_.fc1.weight, original * masks["fc1.weight"])


class TiedLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(self.a(x))


def test_masking_a_tied_weight_masks_it_under_every_name():
    from sparsify.passes.slim import masked_model

    model = TiedLinear()
    first = torch.ones(4, 4, dtype=torch.bool)
    first[0] = False
    second = torch.ones(4, 4, dtype=torch.bool)
    second[:, 1] = False
    m = masked_model(model, {"a.weight": first, "b.weight": second})
    assert m.a.weight is m.b.weight
    assert torch.equal(m.a.weight, model.a.weight * first * second)


def test_constant_without_an_exact_fold_keeps_the_channel():
    no_bias = SigmoidHidden(bias=False)
    res = slim_model(no_bias, _producer_masks("fc1", (8, 6), 4), (_x(2, 6),))
    group = next(g for g in res.report.groups if g["name"] == "fc1")
    assert group["kept_channels"] == 8 and "has no bias to fold" in group["reasons"][0]
    padded = SigmoidConv(3)
    masks = _producer_masks("c1", (8, 3, 3, 3), 4)
    res = slim_model(padded, masks, (_x(2, 3, 6, 6),))
    group = next(g for g in res.report.groups if g["name"] == "c1")
    assert group["kept_channels"] == 8 and "zero-pads its input" in group["reasons"][0]
    xs = _x(3, 3, 6, 6, seed=6)
    with torch.no_grad():
        assert_close(res.module(xs), masked_model(padded, masks)(xs), atol=1e-5)
    pointwise = SigmoidConv(1)
    res = slim_model(pointwise, masks, (_x(2, 3, 6, 6),))
    assert tuple(res.module.state_dict()["c2.weight"].shape) == (4, 4, 1, 1)
    with torch.no_grad():
        assert_close(res.module(xs), masked_model(pointwise, masks)(xs), atol=1e-5)


def test_partial_head_is_not_removed():
    model = M.SelfAttention()
    x = _x(2, 5, 32)
    rows = torch.ones(32, dtype=torch.bool)
    rows[:4] = False  # half of head 0 only
    masks = {f"{p}.weight": rows[:, None].expand(32, 32).clone() for p in "qkv"}
    masks.update({f"{p}.bias": rows.clone() for p in "qkv"})
    res = slim_model(model, masks, (x,))
    assert tuple(res.module.state_dict()["q.weight"].shape) == (32, 32)
    assert any("head" in r for g in res.report.groups for r in g["reasons"])


def test_bad_masks_are_rejected():
    with pytest.raises(PruneError, match="mask 'fc9.weight' names no parameter"):
        slim_model(M.LinearChain(), {"fc9.weight": torch.ones(2, dtype=torch.bool)}, (_x(2, 12),))
    with pytest.raises(PruneError, match=r"mask 'fc1.weight' has shape \(3,\), expected \(32, 12\)"):
        slim_model(M.LinearChain(), {"fc1.weight": torch.ones(3, dtype=torch.bool)}, (_x(2, 12),))


def test_save_and_load_without_pickle(tmp_path):
    model = M.randomize_norms(M.small_resnet())
    x = _x(2, 3, 8, 8)
    plan = plan_structured(model, (x,), ratio=0.5)
    res = slim_model(model, plan.masks, (x,))
    path = tmp_path / "slim.pt2"
    save_slim(res, path)
    import pickle

    def no_unpickling(*a, **k):
        raise AssertionError("load_slim must not unpickle anything")
    with pytest.MonkeyPatch.context() as mp:
        for mod, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
            mp.setattr(mod, name, no_unpickling)
        loaded = load_slim(path)
    xs = _x(3, 3, 8, 8, seed=5)
    with torch.no_grad():
        assert_close(loaded(xs), masked_model(model, plan.masks)(xs), atol=1e-5)
    # an ordinary module: eval/train flags, .to(), state_dict() and a plain call all work
    assert loaded.eval() is loaded and not loaded.training
    assert loaded.train(False) is loaded and not any(m.training for m in loaded.modules())
    assert loaded.train() is loaded and loaded.training
    loaded.eval()
    state = loaded.state_dict()
    assert state and all(isinstance(t, torch.Tensor) for t in state.values())
    as64 = loaded.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in as64.parameters())
    with torch.no_grad():
        assert_close(as64(xs.double()).float(), masked_model(model, plan.masks)(xs), atol=1e-5)
    # an archive that would unpickle a tensor is refused before torch reads it
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("model_weights_config.json"):
                data = data.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
            zout.writestr(item, data)
    with pytest.raises(ModelFileError, match="is pickled; refusing to load"):
        load_slim(bad)
    with pytest.raises(ModelFileError, match="not a .pt2 archive"):
        (tmp_path / "junk.pt2").write_bytes(b"junk")
        load_slim(tmp_path / "junk.pt2")


def test_dead_attention_weights_output_is_dropped():
    """nn.MultiheadAttention computes averaged weights nobody uses: slim must not trip on them."""
    model = M.MHABlock()
    x = _x(2, 5, 8)
    plan = plan_structured(model, (x,), structure="head", ratio=0.5)
    res = slim_model(model, plan.masks, (x,))
    ops = {str(n.target) for n in res.module.graph.nodes if n.op == "call_function"}
    assert not any("mean" in o for o in ops)
    assert res.report.macs_after < res.report.macs_before


def test_testbed_bert_embedding_dim_through_a_sliced_position_table():
    """pos[:, :T] is a view of a parameter: it joins the residual-stream group and is sliced."""
    from sparsify.models.testbeds import bert_style

    model = bert_style(vocab=60, dim=32, heads=4, ffn=64, layers=1, max_len=16)
    ids = torch.randint(0, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    plan = plan_structured(model, (ids,), ratio=0.5)
    assert "tok" in {g.name.split(" ")[0] for g in plan.groups if not g.skipped}
    res = slim_model(model, plan.masks, (ids,))
    st = res.module.state_dict()
    assert tuple(st["pos"].shape) == (1, 16, 16) and tuple(st["tok.weight"].shape) == (60, 16)
    run = torch.randint(0, 60, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_close(res.module(run), masked_model(model, plan.masks)(run), atol=1e-5)


def test_testbed_resnet_prunes_the_residual_streams():
    from sparsify.models.testbeds import resnet_style

    model = resnet_style(blocks=(1, 1), widths=(8, 16), num_classes=4)
    x = _x(2, 3, 32, 32)
    plan = plan_structured(model, (x,), ratio=0.5)
    res = slim_model(model, plan.masks, (x,))
    st = res.module.state_dict()
    assert tuple(st["stem.weight"].shape) == (4, 3, 7, 7)
    assert tuple(st["layers.1.down.0.weight"].shape) == (8, 4, 1, 1)
    assert tuple(st["fc.weight"].shape) == (4, 8)
    assert res.report.macs_after < 0.5 * res.report.macs_before  # the 3-channel stem dominates here
    with torch.no_grad():
        assert_close(res.module(x), masked_model(model, plan.masks)(x), atol=1e-5)


class MaxPoolTokens(nn.Module):
    """torch.max over tokens returns (values, indices): channels pass through the values."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.max(F.relu(self.fc1(x)), dim=1).values)


def test_tuple_output_reduction_keeps_channel_labels():
    model = MaxPoolTokens()
    x = _x(2, 5, 6)
    plan = plan_structured(model, (x,), ratio=0.5)
    res = slim_model(model, plan.masks, (x,))
    assert tuple(res.module.state_dict()["fc2.weight"].shape) == (3, 8)
    xs = _x(4, 5, 6, seed=7)
    with torch.no_grad():
        assert_close(res.module(xs), masked_model(model, plan.masks)(xs), atol=1e-5)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot capture it
            return self.fc(x)
        return -self.fc(x)


def test_model_that_cannot_be_captured_gives_a_model_error():
    from sparsify.errors import ModelError

    with pytest.raises(ModelError, match="torch.export could not capture DataDependent"):
        plan_structured(DataDependent(), (_x(2, 4),), ratio=0.5)


def test_gpt2_packed_attention_heads_and_embedding_dim():
    model = M.GPT2Attention()
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    heads = plan_structured(model, (ids,), structure="head", ratio=0.5)
    chans = plan_structured(model, (ids,), structure="channel", ratio=0.5)
    res = slim_model(model, merge_masks(heads.masks, chans.masks), (ids,))
    st = res.module.state_dict()
    assert tuple(st["c_attn.weight"].shape) == (16, 48)  # (in: half the stream, out: 3 x 2 heads x 8)
    assert tuple(st["wte.weight"].shape) == (50, 16) and tuple(st["lm.weight"].shape) == (50, 16)
    run = torch.randint(0, 50, (3, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = masked_model(model, merge_masks(heads.masks, chans.masks))(run)
        assert_close(res.module(run), ref, atol=1e-5)


def test_attention_with_a_mask_input():
    model = M.MaskedSelfAttention()
    x, mask = _x(2, 5, 6), torch.ones(2, 5)
    plan = plan_structured(model, (x, mask), structure="head", ratio=0.5)
    res = slim_model(model, plan.masks, (x, mask))
    assert tuple(res.module.state_dict()["query.weight"].shape) == (16, 32)
    xs, ms = _x(3, 5, 6, seed=8), (torch.rand(3, 5) > 0.3).float()
    with torch.no_grad():
        assert_close(res.module(xs, ms), masked_model(model, plan.masks)(xs, ms), atol=1e-5)


def test_min_channels_zero_ratio_and_batch_one_examples():
    model = M.LinearChain()
    x1 = _x(1, 12)  # batch 1: capture widens it so the batch stays dynamic
    plan = plan_structured(model, (x1,), ratio=0.9, min_channels=8)
    kept = {g.name: g.kept_channels for g in plan.groups if not g.skipped}
    assert kept == {"fc1": 8, "fc2": 8}
    res = slim_model(model, plan.masks, (x1,))
    xs = _x(7, 12, seed=9)
    with torch.no_grad():
        assert_close(res.module(xs), masked_model(model, plan.masks)(xs), atol=1e-5)
    none = plan_structured(model, (x1,), ratio=0.0)
    assert none.masks == {} and all(g.kept_units == g.total_units for g in none.groups)


class TiedLM(nn.Module):
    """Embedding reused as the output layer through x @ W.T."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.fc2(F.relu(self.fc1(h)))
        return h @ self.emb.weight.T


def test_tied_embedding_used_transposed_as_output_layer():
    model = TiedLM()
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    plan = plan_structured(model, (ids,), ratio=0.5)
    res = slim_model(model, plan.masks, (ids,))
    st = res.module.state_dict()
    assert tuple(st["emb.weight"].shape) == (40, 8) and tuple(st["fc1.weight"].shape) == (16, 8)
    run = torch.randint(0, 40, (3, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(res.module(run), masked_model(model, plan.masks)(run), atol=1e-5)


def test_models_with_mask_parametrizations_are_squashed_first():
    from torch.nn.utils import parametrize

    class Mask(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.register_buffer("m", m)

        def forward(self, w):
            return w * self.m

    model = M.LinearChain()
    plan = plan_structured(model, (_x(2, 12),), ratio=0.5)
    wrapped = M.LinearChain()
    wrapped.load_state_dict(model.state_dict())
    for name, mk in plan.masks.items():
        mod_name, _, p = name.rpartition(".")
        parametrize.register_parametrization(wrapped.get_submodule(mod_name), p, Mask(mk.float()))
    res = slim_model(wrapped, plan.masks, (_x(2, 12),))
    assert tuple(res.module.state_dict()["fc1.weight"].shape) == (16, 12)
    xs = _x(4, 12, seed=3)
    with torch.no_grad():
        assert_close(res.module(xs), wrapped(xs), atol=1e-5)
    again = plan_structured(wrapped, (_x(2, 12),), ratio=0.5)  # plans on the parametrized model too
    assert set(again.masks) == set(plan.masks)


@pytest.mark.parametrize("ctor,shape,expected", [
    (M.InvertedResidual, (2, 3, 8, 8), {"stem.weight": (8, 3, 3, 3), "dw.weight": (32, 1, 3, 3), "pj.weight": (8, 32, 1, 1)}),
    (M.ConvNeXtBlock, (2, 3, 16, 16), {"stem.weight": (8, 3, 4, 4), "dw.weight": (8, 1, 7, 7), "gamma": (8,),
                                      "fc1.weight": (32, 8), "fc2.weight": (8, 32)}),
])
def test_mobilenet_and_convnext_blocks(ctor, shape, expected):
    model = M.randomize_norms(ctor())
    x = _x(*shape)
    plan = plan_structured(model, (x,), ratio=0.5)
    res = slim_model(model, plan.masks, (x,))
    st = res.module.state_dict()
    assert {k: tuple(st[k].shape) for k in expected} == expected
    xs = _x(3, *shape[1:], seed=12)
    with torch.no_grad():
        assert_close(res.module(xs), masked_model(model, plan.masks)(xs), atol=1e-5)
