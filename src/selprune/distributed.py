"""Data parallelism through torch.distributed (as `accelerate launch` or `torchrun` set it up).

Each process takes every world-th chunk; statistics and evaluation sums are added across processes
before anything is decided, so every process selects the same neurons, and only rank 0 writes.
Outside a distributed launch all of this is a no-op.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def shard(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """This process's share of the chunks: every world-th one, starting at its rank."""
    return tuple(t[rank()::world()] for t in tensors)


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Add a tensor across processes in place (on the backend's device), and return it."""
    if active():
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        moved = tensor.to(device)
        dist.all_reduce(moved)
        tensor.copy_(moved)
    return tensor


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def barrier() -> None:
    if active():
        dist.barrier()


def init_from_env() -> None:
    """Join the process group that `accelerate launch` / `torchrun` describe in the environment."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not active():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
