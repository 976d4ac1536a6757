"""Multi-process training under torchrun: who this process is, its device, and the collectives training needs.

A plain `python -m training` has no WORLD_SIZE in its environment: it runs as one process with no
process group, and every helper here is then a no-op, so single-process runs are unchanged.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, TypeVar

import torch
import torch.distributed as dist

from contract.cpus import worker_cpus

from .config import ConfigError

T = TypeVar("T")
# torchrun's variables; a launcher that sets them (srun, mpirun scripts) works the same way.
ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


# How long a rank whose peer failed waits, quietly, for torchrun to stop it.
PEER_REPORT_GRACE_S = 30.0


class PeerFailed(Exception):
    """Another rank failed a step all ranks check together and reports why; this one stops quietly."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size


def from_env() -> DistInfo:
    """This process's place in the job, from the launcher's environment (one process when unset)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return DistInfo()
        info = DistInfo(rank=int(os.environ["RANK"]), world_size=world,
                        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except (KeyError, ValueError):
        raise ConfigError(f"WORLD_SIZE is set, so {', '.join(ENV_VARS)} must be integers set by the "
                          "launcher; start multi-process runs with torchrun") from None
    if not 0 <= info.rank < world or not 0 <= info.local_rank < info.local_world_size:
        raise ConfigError(f"RANK {info.rank} / LOCAL_RANK {info.local_rank} do not fit WORLD_SIZE {world} / "
                          f"LOCAL_WORLD_SIZE {info.local_world_size}")
    return info


def set_threads(info: DistInfo, threads: Optional[int]) -> None:
    """Intra-op threads of this process: --threads, else $OMP_NUM_THREADS, else the CPUs shared out.

    Several ranks on one node each using every core oversubscribe it badly, so ranks split the CPUs
    this process may run on. torchrun itself sets OMP_NUM_THREADS=1 when it starts more than one
    process per node and the variable is unset; --threads is the way to give ranks more.
    """
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    elif info.local_world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, worker_cpus() // info.local_world_size))


def rank_device(device: torch.device, info: DistInfo) -> torch.device:
    """Under torchrun each rank drives the GPU numbered by its LOCAL_RANK."""
    if device.type != "cuda" or not info.enabled:
        return device
    count = torch.cuda.device_count()
    if info.local_rank >= count:
        raise ConfigError(f"local rank {info.local_rank} has no GPU of its own ({count} visible); start at most "
                          f"{count} processes per node or pass --no-cuda")
    torch.cuda.set_device(info.local_rank)
    return torch.device("cuda", info.local_rank)


@contextlib.contextmanager
def process_group(info: DistInfo, device: torch.device, timeout_s: float) -> Iterator[None]:
    """The job's process group for the duration of the block: NCCL on CUDA, gloo on the CPU.

    timeout_s bounds every collective (and the wait for all ranks to join), so a rank that hangs
    ends the job with an error instead of blocking the others forever; a rank that exits is
    noticed by torchrun, which stops the rest at once.
    """
    if not info.enabled:
        yield
        return
    cuda = device.type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=device if cuda else None)
    try:
        yield
    except BaseException as exc:
        if not lost_peers(exc):  # a broken group can block in teardown; the process is exiting anyway
            dist.destroy_process_group()
        raise
    # Rank 0 is still writing the run's outputs when the others get here. A rank that tore gloo down
    # and exited meanwhile could abort in gloo's teardown ("terminate called without an active
    # exception", seen in 1 of 4 test runs); leaving together avoids it.
    dist.barrier()
    dist.destroy_process_group()


# How gloo and NCCL word a dead or stuck peer when the error surfaces as a plain RuntimeError
# (from DDP's gradient all-reduce inside backward(), for one) rather than as a DistError.
_PEER_FAILURE_MARKERS = ("gloo/transport", "Connection reset by peer", "Connection closed by peer",
                         "NCCL communicator was aborted", "Timed out waiting", "Broken pipe")


def lost_peers(exc: BaseException) -> bool:
    """Whether exc says that the other processes of the job could not be reached in time."""
    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and active() and any(m in str(exc) for m in _PEER_FAILURE_MARKERS)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """t summed over all ranks, in place; t itself when running alone."""
    if active():
        dist.all_reduce(t)
    return t


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    Each rank updates its running statistics from its own batches after DDP's per-step broadcast;
    evaluating with rank 0's makes every rank measure exactly the weights rank 0 saves.
    """
    if active():
        for b in module.buffers():
            dist.broadcast(b, 0)


def local_main_first(info: DistInfo, device: torch.device, fn: Callable[[], T]) -> T:
    """fn() on each node's local rank 0 first, then on its other ranks.

    For dataset loading: local rank 0 decodes and caches while the others wait, so they read the
    cache instead of decoding beside it. After each turn all ranks learn whether any failed, so a bad
    input stops every rank promptly: the one that failed raises its error, the others PeerFailed.
    """
    if not info.enabled:
        return fn()
    result: Optional[T] = None
    error: Optional[Exception] = None
    for main_turn in (True, False):
        if (info.local_rank == 0) == main_turn:
            try:
                result = fn()
            except Exception as exc:  # re-raised below, after the other ranks know
                error = exc
        failed = all_sum(torch.tensor([0 if error is None else 1], device=device))
        if failed.item():
            if error is not None:
                raise error
            raise PeerFailed()
    return result  # type: ignore[return-value]
