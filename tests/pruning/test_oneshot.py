"""Data-aware one-shot pruning: Wanda and SparseGPT on Linear, Conv and attention weights."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsify.calibration import _conv_columns, find_targets, HessianCapture
from sparsify.errors import DataError, PruneError
from sparsify.oneshot import plan_data_aware
from sparsify.pruner import _keep_top
from sparsify.reconstruct import sparsegpt, wanda_mask
from tests.helpers import assert_close


def _correlated(n=512, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 6, generator=g, dtype=torch.float64)
    x = base @ torch.randn(6, d, generator=g, dtype=torch.float64) + 0.1 * torch.randn(n, d, generator=g,
                                                                                         dtype=torch.float64)
    w = torch.randn(12, d, generator=g, dtype=torch.float64)
    return x, w


def _err(x, w, w_new):
    return float(((x @ (w - w_new).T) ** 2).sum() / (x @ w.T).pow(2).sum())


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.8])
def test_sparsegpt_hits_the_count_and_beats_mask_only_pruning(sparsity):
    x, w = _correlated()
    h = x.T @ x
    new, keep, err = sparsegpt(w, h, sparsity=sparsity, block_size=8)
    assert int((~keep).sum()) == round(sparsity * w.numel())
    assert torch.all(new[~keep] == 0)
    assert err == pytest.approx(_err(x, w, new), rel=1e-6)
    mag = w * _keep_top(w.abs(), round(sparsity * w.numel()))
    wanda = w * wanda_mask(w, h, sparsity=sparsity)
    assert err < _err(x, w, wanda) and err < _err(x, w, mag)


def test_sparsegpt_moves_a_pruned_weight_onto_its_duplicate_input():
    g = torch.Generator().manual_seed(0)
    col = torch.randn(200, 1, generator=g, dtype=torch.float64)
    x = torch.cat([col, col + 1e-4 * torch.randn(200, 1, generator=g, dtype=torch.float64),
                   torch.randn(200, 1, generator=g, dtype=torch.float64)], 1)
    w = torch.tensor([[0.7, 0.2, 1.0]], dtype=torch.float64)
    pruned = torch.tensor([[True, False, False]])
    new, keep, err = sparsegpt(w, x.T @ x, sparsity=1 / 3, pruned=pruned, dampening=1e-8)
    assert keep.tolist() == [[False, True, True]]
    assert_close(new, torch.tensor([[0.0, 0.9, 1.0]], dtype=torch.float64), atol=1e-3, rtol=0)
    assert err < 1e-6


def test_sparsegpt_with_nothing_to_prune_keeps_the_weights():
    x, w = _correlated()
    new, keep, err = sparsegpt(w, x.T @ x, sparsity=0.0)
    assert keep.all() and err == 0.0
    assert_close(new, w)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_nm_masks_keep_exactly_n_of_m_and_respect_earlier_pruning(method):
    x, w = _correlated()
    pruned = torch.zeros_like(w, dtype=torch.bool)
    pruned[0, :4] = True  # a whole group already pruned stays pruned
    if method == "wanda":
        keep = wanda_mask(w, x.T @ x, nm=(2, 4), pruned=pruned)
    else:
        _, keep, _ = sparsegpt(w, x.T @ x, nm=(2, 4), pruned=pruned)
    groups = (keep & ~pruned).reshape(12, -1, 4).sum(-1)
    assert torch.all(groups[1:] == 2) and groups[0, 0] == 0
    assert not torch.any(keep & pruned)


def test_wanda_ranks_by_weight_times_input_norm_within_each_row():
    x, w = _correlated()
    h = x.T @ x
    keep = wanda_mask(w, h, sparsity=0.5)
    score = w.abs() * torch.sqrt(torch.diagonal(h))
    assert torch.all(keep.sum(1) == 12)
    for r in range(w.shape[0]):
        assert score[r][~keep[r]].max() <= score[r][keep[r]].min()


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, (3, 2), stride=2, dilation=(1, 2), padding=(2, 0)),
    nn.Conv2d(4, 8, 3, groups=2, padding="same", padding_mode="reflect"), nn.Conv1d(3, 5, 3, padding=2),
])
def test_conv_columns_reproduce_the_convolution(conv):
    torch.manual_seed(0)
    x = torch.randn(2, conv.in_channels, 9, 7) if isinstance(conv, nn.Conv2d) else torch.randn(2, 3, 11)
    cols = _conv_columns(conv, x)  # (N·L, groups, cols)
    w = conv.weight.reshape(conv.groups, conv.out_channels // conv.groups, -1)
    out = torch.einsum("ngc,goc->ngo", cols, w).reshape(cols.shape[0], -1) + conv.bias
    expected = conv(x)
    assert_close(out.reshape(2, -1, conv.out_channels).permute(0, 2, 1).reshape(expected.shape), expected.detach(),
                 atol=1e-5, rtol=1e-5)


def test_attention_output_projection_sees_the_attention_output():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(3, 5, 8)
    target = find_targets(nn.Sequential(mha), ["0.out_proj.weight"])["0.out_proj.weight"]
    rows = HessianCapture(target).blocks((x, x, x), {"need_weights": False})[0]
    with torch.no_grad():
        expected = mha(x, x, x, need_weights=False)[0]
        assert_close(F.linear(rows, mha.out_proj.weight, mha.out_proj.bias).reshape(expected.shape), expected,
                     atol=1e-5, rtol=1e-5)


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        t = torch.relu(self.conv(x)).flatten(2).transpose(1, 2)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.fc(t.mean(1))


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_plan_covers_conv_attention_and_linear_and_sparsegpt_stays_closest(method):
    torch.manual_seed(0)
    model = _Mixed().eval()
    batches = [(torch.randn(16, 1, 6, 6),) for _ in range(4)]
    lines = []
    plan = plan_data_aware(model, method, batches, sparsity=0.5, progress=lines.append)
    assert set(plan.masks) == {"conv.weight", "attn.in_proj_weight", "attn.out_proj.weight", "fc.weight"}
    assert [r["tensor"] for r in plan.layers] == ["conv.weight", "attn.in_proj_weight", "attn.out_proj.weight",
                                                  "fc.weight"]
    assert len(lines) == 4 and "[4/4]" in lines[-1]
    for name, mask in plan.masks.items():
        assert int((~mask).sum()) == round(0.5 * mask.numel()), name
        assert torch.all(plan.weights[name][~mask] == 0)
    assert not torch.any(model.fc.weight == 0)


def test_sparsegpt_output_is_closer_to_dense_than_magnitude_on_the_whole_model():
    import copy

    from sparsify.masks import apply_masks
    from sparsify.oneshot import write_weights
    from sparsify.pruner import plan_unstructured

    torch.manual_seed(0)
    model = _Mixed().eval()
    batches = [(torch.randn(16, 1, 6, 6),) for _ in range(6)]
    x = torch.randn(64, 1, 6, 6)
    with torch.no_grad():
        dense = model(x)
        errs = {}
        for method in ("magnitude", "sparsegpt"):
            m = copy.deepcopy(model)
            if method == "magnitude":
                plan = plan_unstructured(m, 0.6)
            else:
                plan = plan_data_aware(m, method, batches, sparsity=0.6)
                write_weights(m, plan.weights)
            apply_masks(m, plan.masks)
            errs[method] = float((m(x) - dense).pow(2).mean())
    assert errs["sparsegpt"] < errs["magnitude"]


def test_unsupported_tensor_and_unused_layer_are_named():
    model = _Mixed()
    with pytest.raises(PruneError, match=r"attn\.in_proj_bias belongs to a MultiheadAttention.*--ignore"):
        find_targets(model, ["attn.in_proj_bias"])

    class Unused(_Mixed):
        def __init__(self):
            super().__init__()
            self.spare = nn.Linear(8, 8)

    with pytest.raises(PruneError, match=r"spare\.weight is never used"):
        plan_data_aware(Unused().eval(), "wanda", [(torch.randn(4, 1, 6, 6),)], sparsity=0.5)


def test_calibration_data_of_the_wrong_shape_is_a_data_error():
    from sparsify.calibration import check_batches

    with pytest.raises(DataError, match=r"calibration batch 0 has inputs of shape \[\(4, 1, 9, 9\)\]"):
        check_batches([(torch.randn(4, 1, 9, 9),)], [(1, 1, 8, 8)])
    with pytest.raises(DataError, match="could not run through the model"):
        plan_data_aware(_Mixed().eval(), "sparsegpt", [(torch.randn(4, 3, 6, 6),)], sparsity=0.5)
