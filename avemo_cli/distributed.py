"""Data-parallel training under ``torchrun`` (torch.distributed): who this process is.

``torchrun --nproc_per_node N -m avemo_cli train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their environment (multi-node:
the same command on every node with ``--nnodes``, ``--node_rank`` or ``--rdzv_endpoint``).
``Group.from_env`` joins them: gloo on CPU, NCCL on CUDA (one GPU per process, by
``LOCAL_RANK``). Without those variables it is a group of one and nothing is initialised, so
a plain ``avemo train`` runs exactly as before.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass
class Group:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    started: bool = False  # this object initialised the process group (and closes it)

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs and writes."""
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> "Group":
        """The group torchrun's environment describes, joined; ``device`` is what
        ``resolve_device`` chose (a CUDA device becomes this process's local GPU)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(device=device)
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local % max(1, torch.cuda.device_count()))
            torch.cuda.set_device(device)
        started = False
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            started = True
        return cls(rank, world, local, device, started)

    def share(self, items: list[T]) -> list[T]:
        """This rank's share of a list every rank holds in the same order (every world-th)."""
        return items[self.rank::self.world]

    def part(self, rows: np.ndarray) -> np.ndarray:
        """This rank's contiguous part of a global batch (parts differ by one row at most)."""
        return np.array_split(rows, self.world)[self.rank]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def total(self, *values: float) -> list[float]:
        """Each value summed over the ranks (float64)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        if self.device.type == "cuda":
            t = t.to(self.device)
        dist.all_reduce(t)
        return t.cpu().tolist()

    def close(self) -> None:
        if self.started and dist.is_initialized():
            dist.destroy_process_group()
