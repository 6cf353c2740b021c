"""Timing that holds on a shared machine: per-batch clocks, repeats of short configurations, spread and load.

Modelled on torch.utils.benchmark's blocked_autorange: a configuration whose first pass over all
its images takes less than MIN_TIMED_S is sampled again, pass after pass, on the same images (only
the clock uses the repeats; the samples that are scored are those of the first pass) until the
measured time reaches MIN_TIMED_S. Every batch is timed separately, so a configuration reports the
median seconds per image and its spread (interquartile range, min and max over batches), and the
load average and torch thread count before and after it. Long configurations are timed once.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

MIN_TIMED_S = 0.5      # repeat a configuration's pass over its images until this much time is measured
MAX_PASSES = 20        # ... but never more than this many passes
BUSY_SPREAD = 0.25     # (q3 - q1) / median of seconds per image above this: the timing is flagged as noisy
TIMING_COLUMNS = ["wall_s", "wall_s_steps", "wall_s_q1", "wall_s_q3", "wall_s_min", "wall_s_max", "s_per_image",
                  "images_per_s", "timing_spread", "step_spread", "timing_batches", "timing_passes", "load_before",
                  "load_after", "cpu_cores", "threads_before", "threads", "busy", "world_size"]


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> float:
    """One-minute load average, NaN where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return math.nan


@dataclass(frozen=True)
class MachineState:
    """What else the machine was doing: one-minute load average, usable cores, torch threads."""

    load: float
    cores: int
    threads: int

    @classmethod
    def now(cls) -> MachineState:
        return cls(load_average(), cpu_cores(), torch.get_num_threads())

    @property
    def busy(self) -> bool:
        """Someone else's work competes with ours: the load beyond our own threads is at least half a core,
        and with it more runnable threads than cores (the one-minute load includes our own sampling)."""
        others = self.load - self.threads
        return others >= 0.5 and others + self.threads > self.cores


@dataclass
class BatchTimes:
    """Seconds and image counts of every timed batch of one configuration, over all passes."""

    seconds: list[float] = field(default_factory=list)
    images: list[int] = field(default_factory=list)
    passes: int = 0
    step_per_image: list[float] = field(default_factory=list)  # every step's seconds / the batch's images
    step_image_calls: int = 0                                   # sum over batches of steps x images

    def add(self, seconds: float, images: int, steps: list[float] = ()) -> None:
        """One batch: its seconds and images, and (CPU) the seconds of each step, network call to network call."""
        self.seconds.append(seconds)
        self.images.append(images)
        self.step_per_image.extend(step / images for step in steps)
        self.step_image_calls += len(steps) * images

    @property
    def total_s(self) -> float:
        return sum(self.seconds)

    def per_image(self) -> list[float]:
        return [s / n for s, n in zip(self.seconds, self.images, strict=True)]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3), linear interpolation as numpy's default; one value gives it three times."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def summarize(times: BatchTimes, num_images: int, before: MachineState, after: MachineState) -> dict:
    """The timing columns of one configuration (wall times are for all `num_images`, from the batch medians).

    wall_s_steps is the same time from the median step instead (every step's seconds, network call
    to network call, over all batches): with one timed batch it still ignores a burst that hit some
    of the steps.
    """
    per_image = times.per_image()
    q1, median, q3 = quartiles(per_image)
    steps = times.step_per_image
    step_q1, step_median, step_q3 = quartiles(steps) if steps else (math.nan,) * 3
    return {"wall_s": median * num_images,
            "wall_s_steps": step_median * times.step_image_calls / max(1, times.passes),
            "wall_s_q1": q1 * num_images, "wall_s_q3": q3 * num_images,
            "wall_s_min": min(per_image) * num_images, "wall_s_max": max(per_image) * num_images,
            "s_per_image": median, "images_per_s": 1 / median if median > 0 else math.inf,
            "timing_spread": (q3 - q1) / median if len(per_image) > 1 and median > 0 else math.nan,
            "step_spread": (step_q3 - step_q1) / step_median if len(steps) > 1 and step_median > 0 else math.nan,
            "timing_batches": len(per_image), "timing_passes": times.passes,
            "load_before": before.load, "load_after": after.load, "cpu_cores": after.cores,
            "threads_before": before.threads, "threads": after.threads, "busy": bool(before.busy or after.busy)}


def summarize_ranks(times: list[BatchTimes], images: list[int], before: list[MachineState],
                    after: list[MachineState], num_images: int) -> dict:
    """Timing columns of a configuration sampled by several processes at once.

    Each rank's wall time is its median seconds per image times its share of the images; the run
    waits for the slowest rank, so wall_s (and its spread) are the slowest rank's, s_per_image and
    images_per_s are for all images together, and the load is the highest any rank saw. With one
    rank this is `summarize`.
    """
    ranks = [summarize(t, n, b, a) for t, n, b, a in zip(times, images, before, after, strict=True)]
    out = dict(max(ranks, key=lambda r: r["wall_s"]))
    out.update(s_per_image=out["wall_s"] / num_images, images_per_s=num_images / out["wall_s"] if out["wall_s"] else
               math.inf, timing_batches=sum(r["timing_batches"] for r in ranks),
               timing_passes=min(r["timing_passes"] for r in ranks),
               load_before=max(r["load_before"] for r in ranks), load_after=max(r["load_after"] for r in ranks),
               busy=any(r["busy"] for r in ranks), world_size=len(ranks),
               wall_s_steps=max(r["wall_s_steps"] for r in ranks))
    return out


def timing_warning(row: dict) -> str | None:
    """A one-line warning when a row's timing is not to be trusted, else None."""
    label = f"{row.get('sampler')} @ {row.get('steps')}"
    if row.get("busy"):
        return (f"{label}: the machine was busy (load average {row['load_before']:.1f} before, "
                f"{row['load_after']:.1f} after, on {row['cpu_cores']} cores); its wall time may be inflated")
    spread = row.get("timing_spread", math.nan)
    if isinstance(spread, float) and spread > BUSY_SPREAD:
        return (f"{label}: seconds per image vary by {spread:.0%} (interquartile range over median) across "
                f"{row['timing_batches']} timed batches; its wall time is noisy")
    return None


def repeat_until(min_seconds: float, first: BatchTimes, one_pass: Callable[[BatchTimes], None],
                 max_passes: int = MAX_PASSES) -> BatchTimes:
    """Run `one_pass` (which adds its batches to the BatchTimes) until the measured time reaches min_seconds."""
    while first.total_s < min_seconds and first.passes < max_passes:
        one_pass(first)
        first.passes += 1
    return first


def timing_provenance(device: torch.device, batch_size: int, world_size: int = 1, compiled: bool = False) -> dict:
    """What a timing depends on besides the sampler: device, processes, versions, math modes, threads."""
    cuda = device.type == "cuda"
    return {
        "device_name": torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
        "device_type": device.type, "world_size": world_size, "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(), "compile": compiled,
        "batch_size": batch_size, "threads": torch.get_num_threads(), "cpu_cores": cpu_cores(),
        "min_timed_s": MIN_TIMED_S, "max_passes": MAX_PASSES,
    }
