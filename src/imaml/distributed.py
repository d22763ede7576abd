"""Data-parallel meta-training over processes and machines with ``torch.distributed``.

Each meta-batch of B tasks is split into equal, contiguous shards, one per process (rank);
each rank computes the meta-gradient of its shard, the shard means are averaged with
``all_reduce``, and every rank takes the same optimizer step. Tasks are drawn by global
index, so the meta-batch does not depend on the number of processes: the parameters follow
those of one process up to floating-point rounding (whose effect Adam's first steps,
``lr·sign(g)``, enlarge in near-zero gradient entries). The logged figures are means over the
whole meta-batch too (:meth:`World.weighted_mean`), so a run's log does not depend on the
number of processes either, up to the same rounding.

Launch with ``torchrun``; the world is read from the environment it sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Backend: NCCL on GPUs,
gloo on CPUs, chosen from the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from imaml import tree
from imaml.types import Params


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` processes (``World()``: a single process)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes logs and checkpoints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.size > 1

    def shard(self, meta_batch: int) -> slice:
        """The tasks ``[start, stop)`` of a meta-batch of ``meta_batch`` that this rank computes.

        Raises ValueError unless the meta-batch divides evenly: unequal shards would weigh
        tasks unequally in the averaged gradient.
        """
        if meta_batch % self.size:
            raise ValueError(
                f"the meta-batch of {meta_batch} tasks does not split evenly over {self.size} "
                f"processes; choose a meta-batch that is a multiple of {self.size} "
                "(e.g. --set train.meta_batch=...) or another number of processes"
            )
        per_rank = meta_batch // self.size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def mean(self, values: Params) -> Params:
        """The average of ``values`` over all ranks (same keys and shapes on every rank).

        All tensors travel in one flat buffer, so this is one ``all_reduce`` per call.
        """
        if not self.is_distributed:
            return values
        flat, unflatten = tree.flatten(values)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        return unflatten(flat / self.size)

    def weighted_mean(self, values: Tensor, weight: float) -> Tensor:
        """The mean over ranks of ``values`` (any shape, same on every rank), each rank's
        weighted by its ``weight``, e.g. the number of tasks behind its means (one
        ``all_reduce``); ``values`` itself for one process.

        Logged diagnostics are means over a rank's shard of tasks; weighted by the shard sizes,
        their mean over ranks is the mean over the whole meta-batch.
        """
        if not self.is_distributed:
            return values
        flat = torch.cat([values.flatten() * weight, values.new_full((1,), weight)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        return (flat[:-1] / flat[-1]).view_as(values)

    def all(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (one ``all_reduce``); ``flag`` for one process.

        Decisions that stop the loop (e.g. a non-finite loss on one rank) must be taken by all
        ranks together, or the others wait forever in their next collective.
        """
        if not self.is_distributed:
            return flag
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces GPU tensors
        value = torch.tensor([int(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def broadcast(self, tensors: list[Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's values."""
        if self.is_distributed:
            for t in tensors:
                dist.broadcast(t, src=0)


class DeviceError(ValueError):
    """The requested device does not exist on this machine."""


def device_for(requested: str = "auto") -> torch.device:
    """The device to compute on: ``cuda:LOCAL_RANK`` for ``"auto"`` (when CUDA is available)
    and for ``"cuda"``, so that each process of a node takes its own GPU; else as given.

    Raises:
        DeviceError: ``"cuda"`` (or ``"auto"`` on a GPU machine) for a process whose
            ``LOCAL_RANK`` has no GPU of its own, e.g. more ``torchrun`` processes than GPUs.
    """
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested != "cuda":
        return torch.device(requested)
    rank, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if rank >= count:
        raise DeviceError(
            f"process {rank} of this node needs GPU cuda:{rank}, but {count} GPU(s) are visible: "
            f"launch at most {count} process(es) per node (torchrun --nproc_per_node), or pass "
            "--device cpu"
        )
    return torch.device("cuda", rank)


def init_world(device: torch.device, timeout_s: float = 600.0) -> World:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Without ``WORLD_SIZE`` (a plain ``python``/``imaml`` launch) it returns ``World()``.
    The backend is NCCL for a CUDA device, gloo otherwise.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return World(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def shutdown(world: World) -> None:
    """Leave the process group (a no-op for a single process).

    All ranks meet at a barrier first, so that none tears down its gloo threads while another
    still talks to it (seen once as a rank aborting at exit: "terminate called without an
    active exception").
    """
    if world.is_distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
