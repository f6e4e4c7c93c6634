"""Block pruning (`prune --block RxC`): whole blocks of each weight's 2-D view, at the sparsity asked."""

from __future__ import annotations

import json

import pytest
import torch

from sparsify.block import plan_block
from sparsify.pruner import parse_block
from sparsify.cli import main
from sparsify.errors import PruneError
from sparsify.masks import apply_masks
from sparsify.models import build_builtin


def blocks_are_whole(mask: torch.Tensor, r: int, c: int) -> bool:
    """Every R x C block of the 2-D view (edge blocks cut short) is all kept or all pruned."""
    m = mask.reshape(mask.shape[0], -1)
    rows, cols = m.shape
    for i in range(0, rows, r):
        for j in range(0, cols, c):
            b = m[i:i + r, j:j + c]
            if b.any() and not b.all():
                return False
    return True


@pytest.mark.parametrize("text, shape", [("4x1", (4, 1)), ("1x4", (1, 4)), (" 16X1 ", (16, 1)), ("2x2", (2, 2))])
def test_parse_block(text, shape):
    assert parse_block(text) == shape


@pytest.mark.parametrize("text", ["4", "4x", "x4", "1x1", "0x4", "65x1", "4x1x2", "a x b"])
def test_parse_block_rejects(text):
    with pytest.raises(PruneError, match="--block"):
        parse_block(text)


@pytest.mark.parametrize("block", ["4x1", "1x4", "2x8"])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_block_masks_hit_the_sparsity_in_whole_blocks(block, scope):
    model = build_builtin("digits-cnn")  # conv weights: blocks of the (out, in*kh*kw) view
    plan = plan_block(model, 0.75, block, scope=scope)
    r, c = parse_block(block)
    assert plan.pattern == f"block {r}x{c}"
    total = sum(m.numel() for m in plan.masks.values())
    pruned = sum(int((~m).sum()) for m in plan.masks.values())
    assert abs(pruned - 0.75 * total) <= r * c * (len(plan.masks) if scope == "layer" else 1)
    for name, mask in plan.masks.items():
        assert mask.shape == dict(model.named_parameters())[name].shape
        assert blocks_are_whole(mask, r, c), name
        if scope == "layer":
            assert abs(int((~mask).sum()) - 0.75 * mask.numel()) <= r * c, name


def test_magnitude_keeps_the_blocks_of_largest_mean():
    model = build_builtin("digits-mlp")
    plan = plan_block(model, 0.5, "4x1")
    w = model.fc2.weight.detach().abs().reshape(64, 4, 256).mean(1)  # per 4x1 block
    keep = plan.masks["fc2.weight"].reshape(64, 4, 256)[:, 0, :]
    assert w[~keep].max() <= w[keep].min()


def test_weights_an_earlier_mask_pruned_stay_pruned():
    model = build_builtin("digits-mlp")
    first = plan_block(model, 0.5, "1x4")
    apply_masks(model, first.masks)
    second = plan_block(model, 0.8, "4x1")
    for name, mask in second.masks.items():
        assert not (mask & ~first.masks[name]).any(), name


def test_prune_block_through_the_cli(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["prune", "digits-mlp", "--sparsity", "0.9", "--block", "4x1", "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    step = manifest["recipe"][-1]
    assert step["pattern"] == "block 4x1" and step["block"] == "4x1" and step["sparsity"] == 0.9
    assert main(["inspect", str(out)]) == 0  # the run reads back


@pytest.mark.parametrize("extra, message", [
    ([], "--block prunes with --sparsity"),
    (["--nm", "2:4"], "cannot be combined|does not combine"),
    (["--sparsity", "0.5", "--method", "wanda"], "not available for blocks"),
    (["--sparsity", "0.5", "--block", "3"], "should look like RxC"),
])
def test_prune_block_bad_combinations_exit_2_naming_block(tmp_path, capsys, extra, message):
    args = ["prune", "digits-mlp", *extra, "-o", str(tmp_path / "r")]
    if "--block" not in extra:
        args[2:2] = ["--block", "4x1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "block" in err or "nm" in err
    import re
    assert re.search(message, err), err


def test_block_pruned_run_exports_as_bsr_and_runs_equal_to_dense(tmp_path, capsys):
    import numpy as np
    import onnx
    import onnxruntime as ort

    run, sparse, dense = tmp_path / "r", tmp_path / "m.onnx", tmp_path / "d.onnx"
    assert main(["prune", "digits-mlp", "--sparsity", "0.9", "--block", "4x1", "-o", str(run)]) == 0
    # The threshold converts this small model's layers (the fixed rules keep a model this small dense).
    assert main(["export", str(run), "--mode", "sparse", "--density-threshold", "1", "-o", str(sparse)]) == 0
    out = capsys.readouterr().out
    assert "4x1 blocks" in out and "max abs" in out, out  # verified against the masked model
    model = onnx.load(str(sparse))
    blocks = {n.input[1]: [list(a.ints) for a in n.attribute if a.name == "blocksize"]
              for n in model.graph.node if n.domain == "ai.sparsify"}
    assert blocks["fc1.weight.csr_data"] == [[4, 1]] and blocks["fc2.weight.csr_data"] == [[4, 1]], blocks
    assert blocks["head.weight.csr_data"] == [[2, 1]]  # 10 rows: 4x1 blocks do not divide them, 2x1 do
    assert main(["export", str(run), "-o", str(dense)]) == 0
    shape = [d.dim_value or 3 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(sparse), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    expected = ort.InferenceSession(str(dense), providers=["CPUExecutionProvider"]).run(None, {
        model.graph.input[0].name: x})[0]
    from sparsify.sparse_ops import reference_evaluator
    reference = reference_evaluator(model).run(None, {model.graph.input[0].name: x})[0]
    for got in (np.load(tmp_path / "y.npy"), reference):
        assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-5


def test_inspect_names_the_block_pattern_of_a_run(tmp_path, capsys):
    from sparsify.inspect_model import classify_pattern, inspect_run

    out = tmp_path / "r"
    assert main(["prune", "digits-mlp", "--sparsity", "0.9", "--block", "4x1", "-o", str(out)]) == 0
    rows = {r.tensor: r.pattern for r in inspect_run(out).rows}
    assert rows["fc1.weight"] == "block 4x1" and rows["fc2.weight"] == "block 4x1", rows
    assert rows["head.weight"] == "block 2x1", rows  # 10 rows: the edge block is cut to 2
    w = torch.randn(32, 32)
    assert classify_pattern((w * (torch.rand(32, 32) < 0.2)).numpy()) == "unstructured"
    keep = (torch.rand(2, 32) < 0.3).repeat_interleave(16, 0)
    assert classify_pattern((w * keep).numpy()) == "block 16x1"
