"""Scale-out over clusters: shards of a batch for job arrays (the manifests of their runs:
manifests.py).

A shard is a deterministic 1/N of the inputs, chosen by a hash of each input's path relative
to the folder it was found in (its name, for a file given directly): the same on every machine
and every re-run, whatever order a folder lists in. Without ``--shard`` the job-array
environment of SLURM, Kubernetes indexed jobs or AWS Batch array jobs is read.
A shard's run appends to ``avemo-manifest.<I>-of-<N>.jsonl`` (``Shard.manifest_name``).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Mapping

from .errors import AvemoError


class ShardError(AvemoError):
    """A malformed ``--shard`` or job-array environment."""


@dataclass(frozen=True)
class Shard:
    index: int  # 0 .. count - 1
    count: int
    origin: str = "--shard"  # where it came from (the option, or the job-array variables)

    def __post_init__(self):
        if self.count < 1:
            raise ShardError(f"shard {self.index}/{self.count} ({self.origin}): the count must "
                             f"be 1 or more")
        if not 0 <= self.index < self.count:
            raise ShardError(f"shard {self.index}/{self.count} ({self.origin}): the index must "
                             f"be 0 to {self.count - 1}")

    def takes(self, key: str) -> bool:
        """Whether the input with this key (relative path, '/'-separated) is this shard's."""
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index

    @property
    def manifest_name(self) -> str:
        return f"avemo-manifest.{self.index}-of-{self.count}.jsonl"


def parse_shard(text: str) -> Shard:
    """``I/N`` (I from 0 to N-1)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ShardError(f"--shard {text}: expected I/N, e.g. 0/4 (I from 0 to N-1)") from None
    return Shard(i, n, f"--shard {text}")


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ShardError(f"{name}={env[name]!r}: not a whole number") from None


def shard_from_env(env: Mapping[str, str] | None = None) -> Shard | None:
    """The shard a job-array task is, from its environment; None outside a job array.

    SLURM: ``SLURM_ARRAY_TASK_ID`` minus ``SLURM_ARRAY_TASK_MIN`` (divided by
    ``SLURM_ARRAY_TASK_STEP`` when the array has a step) of ``SLURM_ARRAY_TASK_COUNT``.
    Kubernetes indexed jobs (``JOB_COMPLETION_INDEX``) and AWS Batch array jobs
    (``AWS_BATCH_JOB_ARRAY_INDEX``) give only the index: the count comes from ``AVEMO_SHARDS``
    (the Job's completions, the array's size).
    """
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        task = _int(env, "SLURM_ARRAY_TASK_ID")
        first = _int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        step = _int(env, "SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in env else 1
        count = _int(env, "SLURM_ARRAY_TASK_COUNT")
        return Shard((task - first) // max(1, step), count,
                     f"SLURM array task {task} of {count}")
    for name, system in (("JOB_COMPLETION_INDEX", "Kubernetes indexed job"),
                         ("AWS_BATCH_JOB_ARRAY_INDEX", "AWS Batch array job")):
        if name in env:
            if "AVEMO_SHARDS" not in env:
                raise ShardError(f"{name} is set ({system}) but not AVEMO_SHARDS, the number of "
                                 f"shards: set it to the job's size, or pass --shard I/N")
            index, count = _int(env, name), _int(env, "AVEMO_SHARDS")
            return Shard(index, count, f"{system} index {index} of {count}")
    return None
