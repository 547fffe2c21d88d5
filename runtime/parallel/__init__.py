"""Tensor parallelism at load time: the process group, this rank's config, and the slices it reads.

`runtime.load(..., tp_plan="auto")` (and `from_pretrained`) on an artifact compiled with `--tp`
(compiler/passes/shard.py wrote its plan, parallel.json): under torchrun the process group is
initialised from the environment (NCCL for CUDA devices, gloo for CPU) unless the caller already
did; the config gets this rank and the number of ranks, so model.py builds this rank's share of
every split param; each rank reads only its slices of the checkpoint (runtime/parallel/slices.py);
the model's collectives run on the group (ctx.group). Without torchrun (no RANK / WORLD_SIZE in the
environment) it is one rank holding everything.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from runtime.errors import ArtifactError, ConfigError
from runtime.parallel.plan import Plan, Split, read_plan
from runtime.parallel.slices import Piece, through

PLANS = ("auto",)


def process_group(device="cpu"):
    """(group, rank, number of ranks): torch.distributed's default group, initialised from torchrun's
    environment when nobody has yet; (None, 0, 1) for a lone process."""
    import torch.distributed as dist
    if not dist.is_available():
        raise RuntimeError("tensor parallelism needs torch.distributed, which this torch build lacks")
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return None, 0, 1
        dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    return dist.group.WORLD, dist.get_rank(), dist.get_world_size()


def rank_device(device, rank: int):
    """A CUDA device without an index becomes this rank's own GPU (LOCAL_RANK under torchrun)."""
    device = torch.device(device)
    if device.type != "cuda" or device.index is not None:
        return device
    local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


@dataclass
class TensorParallel:
    plan: Plan
    group: object
    rank: int
    size: int
    device: torch.device

    @classmethod
    def open(cls, directory, tp_plan, device) -> "TensorParallel":
        if tp_plan not in PLANS:
            raise ValueError(f"tp_plan must be one of {', '.join(map(repr, PLANS))} (the plan the compiler derives) "
                             f"or None, got {tp_plan!r}")
        plan = read_plan(directory)
        if plan is None:
            raise ArtifactError(f"{directory}: compiled without a tensor-parallel plan; compile it with "
                                "`graphspec compile SPEC --tp N` (runtime.from_pretrained(..., tp_plan='auto') does)")
        group, rank, size = process_group(device)
        return cls(plan, group, rank, size, rank_device(device, rank))

    @property
    def overrides(self) -> dict:
        return {self.plan.size: self.size, self.plan.rank: self.rank}

    def shard(self, config: dict) -> "Shard":
        return Shard(self.plan, config, self.rank)

    def report(self) -> dict:
        return {"rank": self.rank, "ranks": self.size, "split": len(self.plan.split)}


class Shard:
    """What this rank holds of each tensor: the hooks of runtime.weights' plan_load (shapes) and
    load_into (reads)."""

    def __init__(self, plan: Plan, config: dict, rank: int):
        self.plan, self.config, self.rank = plan, config, rank

    def held(self, tensor: str):
        """(dim, start, length) of a split tensor, "rank0" for one only rank 0 holds, None: all of it."""
        entry = self.plan.of(tensor)
        if not isinstance(entry, Split):
            return entry
        try:
            return entry.dim, int(entry.start.evaluate(self.config)), int(entry.length.evaluate(self.config))
        except Exception as err:
            raise ConfigError(f"tensor parallelism: the slice of {tensor} ({entry.start}, {entry.length}) "
                              f"cannot be computed: {err}") from None

    def shapes(self, targets, shapes) -> list[tuple]:
        out = []
        for target, shape in zip(targets, shapes):
            held = self.held(target)
            if isinstance(held, tuple):
                dim, _, length = held
                shape = tuple(length if d == dim else n for d, n in enumerate(shape))
            out.append(tuple(shape))
        return out

    def read(self, assignment, checkpoint) -> list[torch.Tensor] | None:
        """The assignment's targets as this rank holds them, reading only its slices; None when it
        holds every target whole (the caller reads them as usual)."""
        held = [self.held(t) for t in assignment.targets]
        if all(h is None for h in held):
            return None
        items = through(assignment.rule, [Piece.of(checkpoint, s) for s in assignment.sources], self.config, checkpoint)
        out = []
        for item, h in zip(items, held):
            if h == "rank0" and self.rank != 0:
                out.append(torch.zeros(item.shape, dtype=item.dtype))
            elif isinstance(h, tuple):
                out.append(item.narrow(*h).read(checkpoint))
            else:
                out.append(item.read(checkpoint))
        return out


__all__ = ["TensorParallel", "Shard", "process_group", "read_plan"]
