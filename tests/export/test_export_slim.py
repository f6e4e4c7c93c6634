import onnx
import pytest
from onnx import numpy_helper

from sparsify.api import ModelSource, export_model, prune_model, reference_module
from sparsify.artifact import load_run
from sparsify.errors import ExportError


@pytest.fixture(scope="module")
def channel_run(digits_cnn_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("slim") / "channels"
    prune_model(ModelSource(str(digits_cnn_run / "dense")), out, structure="channel", ratio=0.5)
    return out


def test_slim_onnx_is_smaller_and_verified(channel_run, tmp_path):
    path, report, summary = export_model(channel_run, tmp_path / "slim.onnx", mode="slim")
    assert report.ok and report.max_abs <= 1e-5
    assert summary["torch_max_abs"] <= 1e-5
    assert summary["params_after"] < 0.35 * summary["params_before"]
    assert summary["macs_after"] < 0.35 * summary["macs_before"]
    assert summary["slim_weight_bytes"] < summary["dense_weight_bytes"]
    assert summary["slim_bytes"] == path.stat().st_size
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    conv_out = sorted(numpy_helper.to_array(i).shape[0] for i in model.graph.initializer if len(i.dims) == 4)
    assert max(conv_out) == 32, "the widest conv (64 channels dense) keeps half of its channels"
    assert any("units kept" in line for line in summary["lines"])


def test_slim_torch_artifact_round_trips_without_pickle(channel_run, tmp_path):
    import torch

    from sparsify.passes.slim import load_slim

    path, report, _ = export_model(channel_run, tmp_path / "slim.pt2", mode="slim", fmt="torch")
    assert report.ok
    slim = load_slim(path)
    ref = reference_module(load_run(channel_run))
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert (slim(x) - ref(x)).abs().max() <= 1e-5


def test_slim_of_a_run_without_masks_is_an_error(digits_cnn_run, tmp_path):
    with pytest.raises(ExportError, match="has no masks"):
        export_model(digits_cnn_run / "dense", tmp_path / "x.onnx", mode="slim")
    assert not (tmp_path / "x.onnx").exists()


def test_torch_format_only_for_slim(digits_cnn_run, tmp_path):
    with pytest.raises(ExportError, match="--format torch is available for --mode slim only"):
        export_model(digits_cnn_run / "pruned", tmp_path / "x.pt2", mode="dense", fmt="torch")


def test_inspect_shows_groups_of_a_structured_run(channel_run):
    from sparsify.inspect_model import inspect_path

    text = inspect_path(channel_run).table()
    assert "group block1.conv1: 16/32 channels kept" in text
    assert "group head: not pruned (channels reach the model output" in text
    assert "channel" in text


def test_heads_and_ffn_neurons_in_one_prune(tmp_path):
    from sparsify.errors import PruneError

    run, plan = prune_model(ModelSource("digits-vit"), tmp_path / "vit", structure="head,channel", ratio=0.5)
    masks = run.masks
    assert int(masks["blocks.0.attn.in_proj_weight"].any(dim=1).sum()) == 3 * 64 // 2, "half the heads"
    assert int(masks["blocks.0.fc1.weight"].any(dim=1).sum()) == 64, "half the FFN neurons"
    assert "blocks.0.fc1" not in plan.skipped and "blocks.0.attn" not in plan.skipped
    assert "head" in plan.skipped
    path, report, summary = export_model(tmp_path / "vit", tmp_path / "vit.onnx", mode="slim")
    assert report.ok and summary["params_after"] < 0.6 * summary["params_before"]
    with pytest.raises(PruneError, match="one or more of channel, head"):
        prune_model(ModelSource("digits-vit"), tmp_path / "x", structure="head,head")
    with pytest.raises(PruneError, match="one or more of channel, head"):
        prune_model(ModelSource("digits-vit"), tmp_path / "x", structure="filters")
