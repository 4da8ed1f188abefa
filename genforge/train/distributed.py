"""Data-parallel training under torchrun: the only module that imports `torch.distributed`.

The training loop is written for one process and asks this module for what differs when there are
several: which rank it is, how to wrap the model (DDP, or FSDP2 `fully_shard` per block with
`--fsdp`), how to skip gradient sync on accumulation micro-steps, how to average a metric, and how
to gather or scatter full (unsharded) model and optimizer states for checkpoints. A plain
`genforge train` runs as a world of one and none of this touches torch.distributed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from genforge.errors import GenforgeError


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    fsdp: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init(fsdp: bool = False) -> World:
    """Join the process group torchrun set up (env RANK/WORLD_SIZE), or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        if fsdp:
            raise GenforgeError("--fsdp shards the model over processes; run under torchrun.")
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        return World(device=device)
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    return World(rank, size, local_rank, device, fsdp)


@contextlib.contextmanager
def joined(fsdp: bool = False) -> Iterator[World]:
    """The process group for a run (`init`), left when the run ends. A run that finished waits
    for every rank before any tears the group down: a rank that destroys its gloo group while
    another still talks to it can abort in the C++ teardown ("terminate called without an active
    exception", seen under load on 2 cores). A rank that failed does not wait, as the others may
    never get there."""
    world = init(fsdp)
    finished = False
    try:
        yield world
        finished = True
    finally:
        if world.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                if finished:
                    dist.barrier()
                dist.destroy_process_group()


def wrap(model: nn.Module, world: World) -> nn.Module:
    """The model as the training step should call it: itself, DDP, or FSDP2-sharded in place."""
    if not world.distributed:
        return model
    if world.fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.layers:
            fully_shard(block)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [world.local_rank] if world.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, without torch.compile's and DDP's wrappers (their names prefix its keys)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, world: World, sync: bool):
    """Skip the gradient all-reduce on accumulation micro-steps (it happens once, on the last)."""
    if not world.distributed or sync:
        if world.fsdp:
            model.set_requires_gradient_sync(True)
        yield
    elif world.fsdp:
        model.set_requires_gradient_sync(False)
        yield
    else:
        with model.no_sync():
            yield


def mean(value: torch.Tensor, world: World) -> float:
    """The mean of a scalar over all ranks."""
    if not world.distributed:
        return float(value)
    import torch.distributed as dist

    t = value.detach().to(world.device, torch.float32).reshape(1).clone()
    dist.all_reduce(t)
    return float(t) / world.size


def total(values: list[float], world: World) -> list[float]:
    """Element-wise sums of a list of numbers over all ranks."""
    if not world.distributed:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj, world: World):
    """Rank 0's `obj` on every rank (e.g. whether a checkpoint was found)."""
    if not world.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def full_state(model: nn.Module, optimizer, world: World) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts on CPU (every rank must call it; rank 0 saves)."""
    if not world.fsdp:
        m = unwrap(model)
        return {k: v.detach().cpu() for k, v in m.state_dict().items()}, optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (
        get_model_state_dict(model, options=opts),
        get_optimizer_state_dict(model, optimizer, options=opts),
    )


def load_optimizer(model: nn.Module, optimizer, state: dict, world: World) -> None:
    """Load a full optimizer state (as `full_state` returns it) into a possibly sharded optimizer."""
    if not world.fsdp:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
    set_optimizer_state_dict(model, optimizer, state, options=opts)
