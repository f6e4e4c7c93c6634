"""Gradual pruning inside fine-tuning: the cubic schedule, N:M ramps, iterative channel pruning."""

import pytest
import torch

from sparsify.finetune import TrainConfig, train
from sparsify.masks import get_masks, iter_masks
from sparsify.options import OptionError
from sparsify.schedule import GradualPruner, ScheduleOptions, cubic, schedule_points
from tests.models import make_tiny, tiny_dataset


def test_cubic_points_follow_zhu_and_gupta():
    opts = ScheduleOptions("gradual", final_sparsity=0.9, start=0.1, end=0.9, every=2).validate()
    points = schedule_points(opts, epochs=10, steps_per_epoch=5)
    assert [p.step for p in points] == [5, 15, 25, 35, 45]  # epochs 1, 3, 5, 7, 9
    n = 4
    assert [p.target for p in points] == pytest.approx([0.9 + (0 - 0.9) * (1 - k / n) ** 3 for k in range(5)])
    assert points[0].target == 0.0 and points[-1].target == pytest.approx(0.9)
    assert cubic(1, 2, 0.5, 0.9) == pytest.approx(0.9 - 0.4 / 8)


def test_nm_ramp_steps_from_m_down_to_n():
    opts = ScheduleOptions("gradual", nm="2:8", start=0.0, end=1.0, every=1, unit="step").validate()
    labels = [p.label for p in schedule_points(opts, epochs=1, steps_per_epoch=6)]
    assert labels[0] == "8:8" and labels[-1] == "2:8"
    keeps = [int(label.split(":")[0]) for label in labels]
    assert keeps == sorted(keeps, reverse=True)


@pytest.mark.parametrize("fields, message", [
    (dict(final_sparsity=0.9, start=0.5, end=0.2), r"ends \(end=0.2\) before it starts \(start=0.5\)"),
    (dict(final_sparsity=0.9, start=0.5, end=0.5), "before it starts"),
    (dict(final_sparsity=1.0), r"final_sparsity=1.0 should be a float in \[0, 1\)"),
    (dict(final_sparsity=-0.1), r"should be a float in \[0, 1\)"),
    (dict(), "needs final_sparsity"),
    (dict(nm="4:4"), "0 < N < M"),
    (dict(final_sparsity=0.5, every=0), r"every=0 should be an integer >= 1"),
    (dict(final_sparsity="0.5"), r"final_sparsity should be a number .*got '0.5' \(str\)"),
])
def test_bad_schedules_are_rejected_naming_the_field(fields, message):
    with pytest.raises(OptionError, match=message):
        ScheduleOptions("gradual", **fields).validate()


def test_a_window_without_an_interval_is_rejected():
    opts = ScheduleOptions("gradual", final_sparsity=0.5, start=0.0, end=0.3, every=5).validate()
    with pytest.raises(OptionError, match="holds no interval"):
        schedule_points(opts, epochs=10, steps_per_epoch=3)


def _checked_train(monkeypatch, model, pruner, cfg):
    """Train while checking, after every optimizer step, that pruned weights are 0.0 and masks only shrink."""
    import sparsify.finetune as ft

    real = ft.enforce_masks_after_steps
    seen = {"steps": 0, "masks": {}}

    def check(*_):
        for fqn, module, tname, p in iter_masks(model):
            original = getattr(module.parametrizations, tname).original
            assert torch.all(original[~p.mask] == 0.0), f"{fqn}: a pruned weight moved"
            assert torch.all(getattr(module, tname)[~p.mask] == 0.0)
            before = seen["masks"].get(fqn)
            assert before is None or not torch.any(p.mask & ~before), f"{fqn}: a pruned weight came back"
            seen["masks"][fqn] = p.mask.clone()
        seen["steps"] += 1

    def enforce_then_check(optimizer, m):
        handle = real(optimizer, m)
        optimizer.register_step_post_hook(check)
        return handle

    monkeypatch.setattr(ft, "enforce_masks_after_steps", enforce_then_check)
    history = train(model, tiny_dataset(), tiny_dataset(), cfg, pruner=pruner)
    return history, seen


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_fixed_mask_guarantee_holds_at_every_step_of_a_schedule(monkeypatch, optimizer):
    model = make_tiny(width=32)
    cfg = TrainConfig(epochs=3, lr=0.05, batch_size=16, optimizer=optimizer, weight_decay=0.1, progress=False)
    opts = ScheduleOptions("gradual", final_sparsity=0.75, start=0.0, end=0.6, every=2, unit="step").validate()
    pruner = GradualPruner(opts, model, (torch.randn(1, 8),), cfg.epochs, 8)
    history, seen = _checked_train(monkeypatch, model, pruner, cfg)
    assert seen["steps"] == 24
    record = pruner.finish(model)
    sparsities = [p["weight_sparsity"] for p in record["points"]]
    assert sparsities == sorted(sparsities) and sparsities[-1] == pytest.approx(0.75, abs=1e-3)
    for name, mask in get_masks(model).items():
        assert int((~mask).sum()) == round(0.75 * mask.numel()), name
    assert history[-1]["best_epoch"] >= 3 * 0.6  # only epochs after the last point count


def test_nm_schedule_ends_at_exact_n_of_m(monkeypatch):
    model = make_tiny(width=32)
    cfg = TrainConfig(epochs=2, lr=0.01, batch_size=16, progress=False)
    opts = ScheduleOptions("gradual", nm="2:4", start=0.0, end=0.5, every=2, unit="step").validate()
    pruner = GradualPruner(opts, model, (torch.randn(1, 8),), cfg.epochs, 8)
    _checked_train(monkeypatch, model, pruner, cfg)
    record = pruner.finish(model)
    assert [p["target"] for p in record["points"]][-1] == "2:4"
    assert any(p["target"] == "3:4" for p in record["points"])
    for name, mask in get_masks(model).items():
        assert torch.all(mask.reshape(-1, 4).sum(1) == 2), name


def test_iterative_channel_pruning_removes_channels_in_steps(monkeypatch):
    model = make_tiny(width=16)
    cfg = TrainConfig(epochs=2, lr=0.01, batch_size=16, progress=False)
    opts = ScheduleOptions("gradual", structure="channel", final_sparsity=0.5, start=0.0, end=0.5, every=2,
                           unit="step").validate()
    pruner = GradualPruner(opts, model, (torch.randn(1, 8),), cfg.epochs, 8)
    _checked_train(monkeypatch, model, pruner, cfg)
    record = pruner.finish(model)
    reached = [p["reached"] for p in record["points"]]
    assert reached == sorted(reached) and reached[-1] == pytest.approx(0.5) and 0 < reached[1] < 0.5
    rows = get_masks(model)["fc1.weight"].all(dim=1)
    assert int((~rows).sum()) == 8  # half the hidden channels
    assert torch.equal(get_masks(model)["fc2.weight"].all(dim=0), rows)  # the consumer's input slice too
