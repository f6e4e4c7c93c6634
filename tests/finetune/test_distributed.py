"""Distributed fine-tuning: 2 gloo ranks equal 1 process at the same global batch; failures are clean."""

import pytest
import torch
from safetensors.torch import load_file

from sparsify.api import ModelSource, finetune_model, train_model
from sparsify.cli import main
from sparsify.distributed import DistContext, sharded_batches, usable_cores
from sparsify.finetune import TrainConfig
from sparsify.schedule import ScheduleOptions
from sparsify.trust import TRUST_ALL
from tests.models import tiny_dataset


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    train_model(ModelSource("tests.models:make_tiny", data="tests.models:tiny_dataset"),
                TrainConfig(epochs=1, progress=False), root / "dense")
    return root


def test_shards_of_a_global_batch_are_the_single_process_batch():
    ds = tiny_dataset()
    one = [b.batch[0] for b in sharded_batches(ds, 16, 3, DistContext(0, 1))]
    ranks = [list(sharded_batches(ds, 16, 3, DistContext(r, 2))) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 8
    for k, batch in enumerate(one):
        assert ranks[0][k].global_size == ranks[1][k].global_size == len(batch)
        both = torch.cat([ranks[0][k].batch[0], ranks[1][k].batch[0]])
        assert torch.equal(torch.sort(both, dim=0).values, torch.sort(batch, dim=0).values)


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(dense_run):
    """The whole DDP path: spawn, shard, all-reduce, gradual masks broadcast, rank 0 writes."""
    if usable_cores() < 2:
        pytest.skip("needs 2 cores")
    schedule = ScheduleOptions("gradual", final_sparsity=0.6, start=0.0, end=0.5, every=2, unit="step")
    runs = {}
    for nproc in (1, 2):
        cfg = TrainConfig(epochs=2, lr=0.01, batch_size=16, nproc=nproc, progress=False)
        finetune_model(dense_run / "dense", cfg, dense_run / f"ft{nproc}", schedule=schedule, trust=TRUST_ALL)
        runs[nproc] = (load_file(str(dense_run / f"ft{nproc}" / "weights.safetensors")),
                       load_file(str(dense_run / f"ft{nproc}" / "masks.safetensors")))
    (w1, m1), (w2, m2) = runs[1], runs[2]
    assert set(m1) == set(m2) == {"fc1.weight", "fc2.weight"}
    for name in m1:
        assert torch.equal(m1[name], m2[name]), f"{name}: masks differ"
        assert not m1[name].all()
    for name in w1:
        err = float((w1[name] - w2[name]).abs().max())
        assert err <= 1e-5, f"{name}: 2-rank weights differ from 1-rank by {err:.2e}"
    import json

    step = json.loads((dense_run / "ft2" / "manifest.json").read_text())["recipe"][-1]
    assert step["world_size"] == 2 and step["config"]["nproc"] == 2


def test_nproc_beyond_the_cores_is_refused(dense_run, capsys):
    out = dense_run / "too-many"
    code = main(["finetune", str(dense_run / "dense"), "--nproc", str(usable_cores() + 1), "--no-progress",
                 "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and f"more than the {usable_cores()} CPU cores" in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.slow
def test_a_dying_rank_takes_the_job_down_cleanly(dense_run, capsys):
    if usable_cores() < 2:
        pytest.skip("needs 2 cores")
    out = dense_run / "died"
    code = main(["finetune", str(dense_run / "dense"), "--data", "tests.models:dying_dataset", "--nproc", "2",
                 "--epochs", "1", "--no-progress", "--trust-code", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "rank 1" in err and "no run was written" in err and err.count("\n") == 1
    assert not out.exists()
