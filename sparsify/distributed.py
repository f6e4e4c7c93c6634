"""Distributed fine-tuning on torch.distributed: process launch, sharded batches, mask broadcast.

`sparsify finetune --nproc N` spawns N local processes (gloo on CPU, NCCL when every rank has
a GPU); `torchrun ... -m sparsify finetune ...` starts them itself (one machine or several,
through torchrun's rendezvous) and `context_from_env` joins the group it describes.

Every rank sees the same global batch sequence: one seeded permutation per epoch, cut into
global batches of ``batch_size`` samples, of which rank r takes positions r, r + N, r + 2N, …
(the interleaving torch's DistributedSampler uses). Unlike DistributedSampler, no sample is
repeated to pad the shards: each rank's loss is its sum divided by the global batch's size,
times N (DDP averages gradients over ranks), so N ranks compute the gradient of the same
mean loss as one process with the same global batch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import Dataset, default_collate

from sparsify.errors import SparsifyError


class DistributedError(SparsifyError):
    """A distributed fine-tune cannot start, or one of its ranks failed."""


@dataclasses.dataclass
class DistContext:
    """This process's place in the group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_nproc(nproc: int) -> None:
    """A process count this machine can run: at least 1, at most its usable cores (CPU ranks)."""
    if nproc < 1:
        raise DistributedError(f"--nproc {nproc} should be at least 1")
    cores = usable_cores()
    if nproc > cores and not torch.cuda.is_available():
        raise DistributedError(f"--nproc {nproc} is more than the {cores} CPU cores this process may use; "
                               f"give --nproc {cores} or less, or spread ranks over machines with torchrun "
                               "(see the README's distributed fine-tuning section)")


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def context_from_env() -> DistContext:
    """Join the process group torchrun (or `launch`) describes in the environment; rank 0 of 1 otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend(), init_method="env://")
    return DistContext(dist.get_rank(), dist.get_world_size())


def broadcast_masks(ctx: DistContext, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0's masks on every rank (names are the same on all ranks; values are sent as uint8)."""
    if not ctx.active:
        return masks
    import torch.distributed as dist

    out = {}
    for name in sorted(masks):
        t = masks[name].to(torch.uint8).contiguous()
        dist.broadcast(t, 0)
        out[name] = t.to(torch.bool)
    return out


def all_equal(ctx: DistContext, tensor: torch.Tensor) -> bool:
    """True when ``tensor`` is bitwise the same on every rank."""
    if not ctx.active:
        return True
    import torch.distributed as dist

    mine = tensor.detach().reshape(-1).to(torch.float64)
    ref = mine.clone()
    dist.broadcast(ref, 0)
    diff = torch.tensor([float((mine != ref).sum())])
    dist.all_reduce(diff)
    return float(diff) == 0.0


@dataclasses.dataclass
class ShardedBatch:
    """This rank's part of one global batch."""

    batch: Any
    global_size: int


def sharded_batches(ds: Dataset, batch_size: int, seed: int, ctx: DistContext) -> Iterator[ShardedBatch]:
    """Global batches of a seeded permutation (torch.randperm, as a shuffling DataLoader draws it), sharded.

    A global batch with fewer samples than ranks (the last one, at most) is skipped on every
    rank, since a rank with no sample cannot join the gradient all-reduce.
    """
    n = len(ds)  # type: ignore[arg-type]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    for start in range(0, n, batch_size):
        idx = perm[start:start + batch_size]
        if len(idx) < ctx.world:
            continue
        mine = idx[ctx.rank::ctx.world]
        yield ShardedBatch(default_collate([ds[i] for i in mine]), len(idx))


def free_port() -> int:
    """A TCP port on the loopback interface that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, errors: str, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(max(1, usable_cores() // world))
    try:
        ctx = context_from_env()
        fn(ctx, *args)
    except SparsifyError as exc:
        Path(errors, f"rank{rank}.json").write_text(json.dumps({"message": str(exc), "exit": exc.exit_code}))
        raise SystemExit(exc.exit_code) from None
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def launch(nproc: int, fn: Callable[..., Any], args: tuple, what: str) -> None:
    """Run ``fn(ctx, *args)`` on ``nproc`` local ranks; any failure becomes one DistributedError.

    When one rank fails or dies, the others are stopped; the first rank's own message is
    reported when it raised a SparsifyError.
    """
    check_nproc(nproc)
    import logging

    import torch.multiprocessing as mp

    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)  # our error says it in one paragraph

    with tempfile.TemporaryDirectory(prefix="sparsify-ranks-") as errors:
        try:
            mp.start_processes(_worker, args=(nproc, free_port(), errors, fn, args), nprocs=nproc, join=True,
                               start_method="spawn")
        except Exception as exc:  # ProcessRaisedException, ProcessExitedException
            reports = sorted(Path(errors).glob("rank*.json"))
            if reports:
                report = json.loads(reports[0].read_text())
                raise DistributedError(f"{what} on {nproc} processes: {reports[0].stem}: {report['message']}") from None
            rank = getattr(exc, "error_index", "?")
            how = (f"was killed by signal {exc.signal_name}" if getattr(exc, "signal_name", None)
                   else f"exited with code {getattr(exc, 'exit_code', '?')}" if hasattr(exc, "exit_code")
                   else f"failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}")
            raise DistributedError(f"{what} on {nproc} processes stopped: rank {rank} {how}; the other ranks "
                                   "were stopped and no run was written") from None
