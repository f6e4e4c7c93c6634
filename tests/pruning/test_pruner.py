import pytest
import torch

from sparsify.errors import PruneError
from sparsify.masks import apply_masks
from sparsify.models import build_builtin
from sparsify.pruner import plan_unstructured


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_layer_scope_hits_the_target_in_every_tensor(sparsity):
    model = build_builtin("digits-mlp")
    plan = plan_unstructured(model, sparsity, scope="layer")
    assert set(plan.masks) == {"fc1.weight", "fc2.weight", "head.weight"}
    for name, mask in plan.masks.items():
        assert int((~mask).sum()) == round(sparsity * mask.numel()), name


def test_magnitude_prunes_the_smallest_weights():
    model = build_builtin("digits-mlp")
    plan = plan_unstructured(model, 0.6, scope="layer")
    w, m = model.fc1.weight.detach().abs(), plan.masks["fc1.weight"]
    assert w[~m].max() <= w[m].min()


def test_global_scope_uses_one_threshold_and_total_count():
    model = build_builtin("digits-cnn")
    plan = plan_unstructured(model, 0.8, scope="global")
    total = sum(m.numel() for m in plan.masks.values())
    pruned = sum(int((~m).sum()) for m in plan.masks.values())
    assert pruned == round(0.8 * total)
    weights = dict(model.named_parameters())
    kept_min = min(weights[n].detach().abs()[m].min() for n, m in plan.masks.items() if m.any())
    pruned_max = max(weights[n].detach().abs()[~m].max() for n, m in plan.masks.items() if (~m).any())
    assert pruned_max <= kept_min
    per_tensor = {n: 1 - m.float().mean().item() for n, m in plan.masks.items()}
    assert max(per_tensor.values()) - min(per_tensor.values()) > 0.05, "global scope should differ per layer"


def test_random_method_is_seeded():
    model = build_builtin("digits-mlp")
    a = plan_unstructured(model, 0.5, method="random", seed=3).masks
    b = plan_unstructured(model, 0.5, method="random", seed=3).masks
    c = plan_unstructured(model, 0.5, method="random", seed=4).masks
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_targets_and_ignore_select_tensors():
    model = build_builtin("digits-vit")
    plan = plan_unstructured(model, 0.5, targets=r"blocks\.\d+\.(fc1|fc2)\.weight", ignore=r"blocks\.1\.")
    assert set(plan.masks) == {"blocks.0.fc1.weight", "blocks.0.fc2.weight"}
    default = plan_unstructured(model, 0.5)
    assert "blocks.0.attn.in_proj_weight" in default.masks and "blocks.0.attn.out_proj.weight" in default.masks


def test_repruning_keeps_earlier_masks():
    model = build_builtin("digits-mlp")
    first = plan_unstructured(model, 0.5, method="random", seed=1).masks
    apply_masks(model, first)
    second = plan_unstructured(model, 0.8).masks
    for name in first:
        assert not torch.any(second[name] & ~first[name]), "a pruned weight came back"
        assert int((~second[name]).sum()) == round(0.8 * second[name].numel())


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_sparsity_outside_range_is_rejected(bad):
    with pytest.raises(PruneError, match=r"should be a float in \[0, 1\)"):
        plan_unstructured(build_builtin("digits-mlp"), bad)


def test_targets_matching_nothing_lists_candidates():
    with pytest.raises(PruneError, match=r"matches no prunable tensor.*fc1\.weight"):
        plan_unstructured(build_builtin("digits-mlp"), 0.5, targets="^conv")
    with pytest.raises(PruneError, match="not a valid regular expression"):
        plan_unstructured(build_builtin("digits-mlp"), 0.5, targets="(")


def test_nm_keeps_n_best_of_every_m():
    from sparsify.pruner import plan_nm

    model = build_builtin("digits-mlp")
    plan = plan_nm(model, 2, 4)
    for name, mask in plan.masks.items():
        groups = mask.reshape(-1, 4)
        assert torch.all(groups.sum(dim=1) == 2), name
        w = dict(model.named_parameters())[name].detach().abs().reshape(-1, 4)
        kept_min = torch.where(groups, w, torch.full_like(w, float("inf"))).min(dim=1).values
        pruned_max = torch.where(~groups, w, torch.full_like(w, -1.0)).max(dim=1).values
        assert torch.all(pruned_max <= kept_min)


def test_nm_rejects_bad_specs_and_ragged_rows():
    from sparsify.pruner import parse_nm, plan_nm

    with pytest.raises(PruneError, match="0 < N < M"):
        parse_nm("4:4")
    with pytest.raises(PruneError, match="N:M"):
        parse_nm("two:four")
    with pytest.raises(PruneError, match=r"stem\.0\.weight has rows of 9 weights, not a multiple of M=4"):
        plan_nm(build_builtin("digits-cnn"), 2, 4)
    assert "stem.0.weight" not in plan_nm(build_builtin("digits-cnn"), 2, 4, ignore="stem").masks


def test_inspect_names_the_pattern():
    import numpy as np

    from sparsify.inspect_model import classify_pattern
    from sparsify.pruner import plan_nm

    model = build_builtin("digits-mlp")
    w = (model.fc2.weight * plan_nm(model, 2, 4).masks["fc2.weight"]).detach().numpy()
    assert classify_pattern(w) == "2:4"
    w = model.fc2.weight.detach().numpy().copy()
    assert classify_pattern(w) == "dense"
    w[3] = 0
    assert classify_pattern(w) == "channel"
    w[5, 7] = 0
    assert classify_pattern(w) == "unstructured"
    assert classify_pattern(np.zeros((4, 4))) == "empty"


def test_keep_top_matches_a_stable_sort_with_ties():
    from sparsify.pruner import _keep_top

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (40, 7), generator=g).float()  # many ties
    for n_prune in (0, 1, 13, 140, 279, 280):
        expected = torch.ones(280, dtype=torch.bool)
        expected[torch.argsort(scores.reshape(-1), stable=True)[:n_prune]] = False
        assert torch.equal(_keep_top(scores, n_prune), expected.reshape(40, 7)), n_prune
