"""Where this process sits in a data-parallel run started by ``torchrun`` (or alone).

Both training commands (``mcnc train`` and ``mcnc finetune``) join the process group the same
way and add up per-process counts with :func:`sum_over_processes`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class Context:
    """Rank, world size and device of this process (rank 0 of 1 on the CPU when alone)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0


DEVICES = ("auto", "cpu", "cuda")


def init_distributed(device: str = "auto") -> Context:
    """Join the process group torchrun set up (gloo on CPU, nccl on GPU); single process else.

    Args:
        device: ``auto`` (CUDA when there is one), ``cpu`` or ``cuda``.

    Raises:
        ValueError: an unknown ``device``, or ``cuda`` on a machine without CUDA.
    """
    if device not in DEVICES:
        raise ValueError(f"--device {device}: choose one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here; use --device cpu "
                         "(or auto)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = device != "cpu" and torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if world == 1:
        return Context(device=device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(device)
    return Context(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def sum_over_processes(values: list[float], ctx: Context) -> list[float]:
    """``values`` summed over all processes in float64 (unchanged in a single process)."""
    if ctx.world == 1:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()
