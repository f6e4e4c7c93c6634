import pytest
import torch
from torch import nn

from sparsify.finetune import TrainConfig, make_optimizer
from sparsify.masks import apply_masks, enforce_masks_after_steps, fold_masks, get_masks, plain_state_dict
from sparsify.pruner import plan_unstructured
from tests.helpers import assert_close
from tests.models import make_tiny


def _masked_model():
    model = make_tiny(width=32)
    plan = plan_unstructured(model, 0.7, scope="layer")
    apply_masks(model, plan.masks)
    return model, plan.masks


@pytest.mark.parametrize("optimizer, wd", [("sgd", 0.1), ("adam", 0.1), ("adamw", 0.5)])
def test_pruned_weights_stay_exactly_zero_through_optimizer_steps(optimizer, wd):
    model, masks = _masked_model()
    before = {k: v.detach().clone() for k, v in plain_state_dict(model).items()}
    cfg = TrainConfig(optimizer=optimizer, lr=0.05, weight_decay=wd, momentum=0.9)
    opt = make_optimizer(model, cfg)
    enforce_masks_after_steps(opt, model)
    g = torch.Generator().manual_seed(1)
    for _ in range(25):
        x = torch.randn(16, 8, generator=g)
        loss = model(x).pow(2).mean() + 1.0
        opt.zero_grad()
        loss.backward()
        opt.step()
        for name, mask in masks.items():
            module_name, _, tname = name.rpartition(".")
            module = model.get_submodule(module_name)
            effective = getattr(module, tname)
            original = getattr(module.parametrizations, tname).original
            assert torch.all(effective[~mask] == 0.0), f"{name}: effective pruned weight moved ({optimizer})"
            assert torch.all(original[~mask] == 0.0), f"{name}: stored pruned weight moved ({optimizer})"
    after = plain_state_dict(model)
    for name, mask in masks.items():
        assert not torch.equal(after[name][mask], before[name][mask]), "kept weights should train"


def test_fold_keeps_values_and_plain_names():
    model, masks = _masked_model()
    x = torch.randn(5, 8)
    expected = model(x)
    state = plain_state_dict(model)
    assert set(state) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    fold_masks(model)
    assert get_masks(model) == {}
    assert_close(model(x), expected)
    for name, mask in masks.items():
        assert torch.all(state[name][~mask] == 0)


def test_apply_masks_rejects_wrong_names_and_shapes():
    from sparsify.errors import PruneError

    model = make_tiny()
    with pytest.raises(PruneError, match="no module 'nope'"):
        apply_masks(model, {"nope.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(PruneError, match=r"shape \(3, 3\).*\(16, 8\)"):
        apply_masks(model, {"fc1.weight": torch.ones(3, 3, dtype=torch.bool)})


def test_folding_a_copy_leaves_the_original_masked_and_working():
    import copy

    model, masks = _masked_model()
    x = torch.randn(3, 8)
    expected = model(x)
    folded = fold_masks(copy.deepcopy(model))
    assert_close(folded(x), expected)
    assert_close(model(x), expected)  # the original still has its parametrizations
    assert set(get_masks(model)) == set(masks)


def test_batchnorm_recalibration_restores_statistics_and_keeps_weights():
    from torch.utils.data import TensorDataset

    from sparsify.finetune import recalibrate_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    x = torch.randn(128, 1, 6, 6) * 3 + 1
    ds = TensorDataset(x, torch.zeros(128, dtype=torch.long))
    model[1].running_mean.fill_(100.0)
    model[1].momentum = 0.3
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    model.eval()
    assert recalibrate_batchnorm(model, ds, batches=4, batch_size=32) == 1
    with torch.no_grad():
        expected = model[0](x).mean(dim=(0, 2, 3))
    assert_close(model[1].running_mean, expected, atol=1e-5, rtol=1e-5)
    assert model[1].momentum == 0.3 and not model.training
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_training_keeps_the_lowest_validation_loss_epoch_start_included():
    from sparsify.finetune import TrainConfig, evaluate, train

    torch.manual_seed(0)
    x = torch.randn(96, 6)
    y = (x[:, 0] > 0).long()
    ds = torch.utils.data.TensorDataset(x, y)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    history = train(model, ds, ds, TrainConfig(epochs=4, lr=0.05, batch_size=16, progress=False))
    summary, epochs = history[-1], history[:-1]
    losses = [summary["start_val_loss"]] + [h["val_loss"] for h in epochs]
    assert summary["best_epoch"] == min(range(len(losses)), key=losses.__getitem__)
    assert summary["best_val_loss"] == pytest.approx(min(losses), abs=1e-6)
    assert evaluate(model, ds)["loss"] == pytest.approx(min(losses), abs=1e-5)  # those weights are kept
    # A run that only gets worse (a learning rate far too high) keeps its start.
    start = evaluate(model, ds)["loss"]
    worse = train(model, ds, ds, TrainConfig(epochs=2, lr=50.0, batch_size=16, progress=False))
    assert all(h["val_loss"] > start for h in worse[:-1])
    assert worse[-1]["best_epoch"] == 0
    assert evaluate(model, ds)["loss"] == pytest.approx(start, abs=1e-6)
