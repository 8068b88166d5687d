"""Multi-process training under torchrun: who am I, and averaging across processes.

capsgen is data-parallel the way DistributedDataParallel is — every process holds the whole
model, takes its slice of the same global batch and the same per-step randomness, and the
gradients are averaged before each optimizer step, so all processes keep identical weights.
It does not wrap modules in ``DistributedDataParallel``: a family's step calls its networks
directly and often runs several forward passes before one backward (a GAN's D on real and on
fake images, then G through a frozen D), which DDP's wrapper handles only with
``find_unused_parameters`` and care per family. Averaging in :meth:`Task.optimizer_step`
(one flat all-reduce per optimizer step) gives the same mathematics for every family.

Batch norm: on CUDA (nccl) the GAN families convert batch norm to ``SyncBatchNorm``
(statistics over the global batch); on the CPU (gloo) torch has no SyncBatchNorm kernel, so
each process normalises with the statistics of its own slice — a multi-process GAN run on CPU
is then a valid run but not bit-equal to a one-process run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def mean_(self, tensors: list[torch.Tensor]) -> None:
        """Average ``tensors`` over all processes, in place (one all-reduce of a flat buffer)."""
        if not self.active or not tensors:
            return
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n

    def any_(self, flags: list[bool]) -> list[bool]:
        """Element-wise OR of ``flags`` over processes (e.g. 'stop now', 'out of time')."""
        if not self.active:
            return list(flags)
        import torch.distributed as dist

        t = torch.tensor([float(f) for f in flags])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


SINGLE = Distributed()


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device: torch.device) -> Distributed:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); SINGLE otherwise."""
    if not launched_by_torchrun():
        return SINGLE
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Distributed(rank, world, local)
