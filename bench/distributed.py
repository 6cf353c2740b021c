"""Several processes, one result: `torchrun --nproc-per-node N -m bench run ...` on torch.distributed.

The plan of images and batches is global and does not depend on the number of processes: rank r
samples batches r, r + W, r + 2W, ... (W = world size) of it, with the same per-image noise as a
single process. After each configuration every rank sends rank 0 its share: timing, counts, the
metrics' float64 sufficient statistics (counts, sums, sums of outer products; FID feature rows, which
KID, precision/recall and the bootstrap need), the paired rows and the grid images. Rank 0 merges them
in a fixed order (feature rows back into global batch order, sums in rank order) and writes the
results folder; the other ranks write nothing. Backends: nccl on CUDA (one GPU per process,
cuda:LOCAL_RANK), gloo on CPU.
"""

from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from bench.errors import UserError
from bench.timing import BatchTimes, MachineState

RENDEZVOUS_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
TIMEOUT_VARIABLE = "SAMPLER_BENCH_DIST_TIMEOUT_S"  # how long a rank waits for the others (default 1800 s)


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of a run (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that merges the shares and writes the results folder."""
        return self.rank == 0

    def share(self, items: list) -> list:
        """This rank's items of a global list: items[rank::world_size] (EDM's seeds[rank::world_size])."""
        return items[self.rank::self.world_size]

    def gather(self, obj: Any) -> list | None:
        """Every rank's `obj` in rank order on rank 0 (None on the others); [obj] in a single process."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        with self._lost_peers():
            dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.world_size == 1:
            return obj
        box = [obj if self.is_main else None]
        with self._lost_peers():
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn):
        """fn() on rank 0 and its result on every rank; a UserError there is raised on every rank."""
        if self.world_size == 1:
            return fn()
        payload = None
        if self.is_main:
            try:
                payload = ("ok", fn())
            except UserError as exc:
                payload = ("error", str(exc))
        status, value = self.broadcast(payload)
        if status == "error":
            raise UserError(value)
        return value

    def barrier(self) -> None:
        if self.world_size > 1:
            with self._lost_peers():
                dist.barrier()

    @contextmanager
    def _lost_peers(self):
        """A collective that fails because another rank died is the user's one-line error, not a traceback."""
        try:
            yield
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise UserError(f"rank {self.rank}: lost contact with the other processes ({first}); a rank crashed "
                            "or was stopped (its error is above). The rows finished so far are in results.csv; "
                            "launch again with --resume FOLDER to finish the run") from None

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def launched_processes(environ=os.environ) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the variables torchrun (or srun with them exported) sets."""
    try:
        world = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise UserError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers ({exc})") from None
    if not 0 <= rank < world:  # also refuses WORLD_SIZE < 1
        raise UserError(f"RANK={rank} is not in 0..WORLD_SIZE-1 with WORLD_SIZE={world}")
    return rank, world, local


def init_processes(device: torch.device, environ=os.environ) -> tuple[Processes, torch.device]:
    """Join the process group when launched with WORLD_SIZE > 1; returns this rank and its device."""
    rank, world, local = launched_processes(environ)
    if world == 1:
        return Processes(), device
    missing = [name for name in RENDEZVOUS_VARIABLES if not environ.get(name)]
    if missing:
        raise UserError(f"WORLD_SIZE={world} but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                        "set: launch with `torchrun --nproc-per-node N -m bench run ...`, or export MASTER_ADDR, "
                        "MASTER_PORT, RANK and WORLD_SIZE on every process (see the README)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} visible CUDA "
                            "device(s): launch at most one process per GPU (--nproc-per-node), or use --device cpu")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=float(environ.get(TIMEOUT_VARIABLE, "1800")))
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=timeout)
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"could not join the process group at {environ.get('MASTER_ADDR')}:"
                            f"{environ.get('MASTER_PORT')} ({first}); check the rendezvous endpoint") from None
    if rank != 0:  # only rank 0 talks on stdout (the summary table, the paths); errors still reach stderr
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    return Processes(rank, world, local, backend), device


def interleave(shares: list[list]) -> list:
    """Undo the sharding: rank r holds global items r, r + W, ...; returns all items in global order."""
    world = len(shares)
    total = sum(len(s) for s in shares)
    return [shares[i % world][i // world] for i in range(total)]


@dataclass
class JobShare:
    """What one rank sends rank 0 after a configuration (the whole job in a single process)."""

    error: str | None = None
    batches: int = 0             # batches this rank sampled
    images: int = 0
    calls: int = 0               # network calls of the first (scored) pass
    rows: int = 0                # forward rows of the first pass
    total_calls: int = 0         # calls of all passes, timing repeats included
    net_seconds: float = 0.0     # network time of all passes
    times: BatchTimes = field(default_factory=BatchTimes)
    before: MachineState | None = None
    after: MachineState | None = None
    peak_mem_mb: float = math.nan
    mem_kind: str = ""
    grid: list = field(default_factory=list)           # (first image index, images) for the sample grid
    paired: list = field(default_factory=list)         # (first image index, rows) for features/<stem>.npy
    metric_states: dict = field(default_factory=dict)  # each working accumulator's shard_state(), by metric name
    metric_errors: dict = field(default_factory=dict)  # metric name -> what it raised (the others are kept)
    noise_draws: int = 0                                # fresh-noise draws of the scored pass (0: deterministic)
    image_nfe: list = field(default_factory=list)       # an adaptive sampler's calls per image (its images)


def shard_state(name: str, accumulator) -> dict:
    """A metric accumulator's share for rank 0; metrics that cannot be merged say so."""
    if not hasattr(accumulator, "shard_state") or not hasattr(accumulator, "merge_shards"):
        raise UserError(f"metric {name!r} cannot be merged across processes (its accumulator has no shard_state() "
                        "and merge_shards()); run it in a single process or leave it out with --metrics")
    return accumulator.shard_state()
