"""Processes and devices: one process, or several under torchrun (DistributedDataParallel).

    d, device = dist.setup("auto", num_threads=None)    # reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK
    ...
    model = d.parallel(module, device)                  # DistributedDataParallel under torchrun
    d.all_reduce_sum(tensor); d.barrier(); d.broadcast(obj); d.all_gather(obj)
    dist.teardown(d)

Every collective is a no-op with one process, so a training loop is written once for both cases.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from .run import TrainError


@dataclass
class Dist:
    """This process's place among the run's processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def master(self) -> bool:
        """Rank 0: the process that tokenises first, writes the run directory and prints."""
        return self.rank == 0

    def parallel(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """`module` in DistributedDataParallel when there are several processes, else itself. Every training
        loop's gradients reach the optimizer this way: a backward through the wrapper averages them over the
        processes (bucketed, overlapped with the backward); its no_sync() / require_backward_grad_sync skip
        that on micro-steps. A loss that is this process's share of the global one multiplies by `world`."""
        if self.world == 1:
            return module
        return torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """x summed over all processes, in place."""
        if self.world > 1:
            tdist.all_reduce(x, op=tdist.ReduceOp.SUM)
        return x

    def broadcast(self, obj):
        """Rank 0's `obj` on every process (a picklable value)."""
        if self.world == 1:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every process."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out


def setup(device: str = "auto", num_threads: int | None = None) -> tuple[Dist, torch.device]:
    """torchrun's environment -> a process group (gloo on CPU, nccl on CUDA); the device; CPU threads
    (`num_threads`, else torch's default split among the processes of this machine)."""
    want = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if num_threads is not None and num_threads < 1:
        raise TrainError(f"--num-threads must be >= 1, got {num_threads}")
    try:
        dev = torch.device(want)
    except RuntimeError:
        raise TrainError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available; use --device cpu")
    d = Dist()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)),
                 int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        if dev.type == "cuda":
            dev = torch.device(f"cuda:{d.local_rank}")
            torch.cuda.set_device(dev)
        tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if num_threads:
        torch.set_num_threads(num_threads)
    elif dev.type == "cpu" and d.local_world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // d.local_world))
    return d, dev


def teardown(d: Dist) -> None:
    if d.world > 1 and tdist.is_initialized():
        tdist.destroy_process_group()


__all__ = ["Dist", "setup", "teardown"]
