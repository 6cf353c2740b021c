"""Honest measurement: NFE counted at the network, network time per call, peak memory."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import torch

from bench.denoiser import Denoiser


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so the clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CountingDenoiser:
    """Wraps a Denoiser: counts every call (NFE) and times the network inside each call.

    The sampler sees this object, so the NFE comes from the harness, never from the
    sampler's own word. On CUDA the network is timed with events (no extra syncs).
    """

    def __init__(self, denoiser: Denoiser, on_call=None, autocast_dtype: torch.dtype | None = None):
        self.inner = denoiser
        self.schedule = denoiser.schedule
        self.info = denoiser.info
        self.on_call = on_call
        self.autocast_dtype = autocast_dtype
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.rows = 0  # forward rows: a guided call of B images evaluates 2B rows
        self.call_starts: list[float] = []  # perf_counter at each call: step intervals for bench.timing
        self._cpu_seconds = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x_t, t, cond=None):
        self.call_starts.append(time.perf_counter())
        self.calls += 1
        self.rows += x_t.shape[0]
        device = x_t.device
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self._forward(x_t, t, cond)
            end.record()
            self._events.append((start, end))
        else:
            began = time.perf_counter()
            out = self._forward(x_t, t, cond)
            self._cpu_seconds += time.perf_counter() - began
        if self.on_call is not None:
            self.on_call()
        return out

    def _forward(self, x_t, t, cond):
        if self.autocast_dtype is None:
            return self.inner(x_t, t, cond)
        with torch.autocast(x_t.device.type, dtype=self.autocast_dtype):
            return self.inner(x_t, t, cond).to(x_t.dtype)

    def network_seconds(self) -> float:
        """Seconds spent inside the network since the last reset (syncs CUDA first)."""
        if self._events:
            torch.cuda.synchronize()
            return self._cpu_seconds + sum(s.elapsed_time(e) for s, e in self._events) / 1000.0
        return self._cpu_seconds


class PeakMemory:
    """Peak memory of a block: CUDA max allocated, or the process's peak RSS on CPU.

    On Linux the RSS high-water mark is reset first (/proc/self/clear_refs), so the CPU
    number is this block's peak; where that is not possible it is the process's lifetime
    peak, and `kind` says so.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "peak_rss"

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.kind = "peak_rss_process"
        return self

    def __exit__(self, *exc):
        return False

    def megabytes(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
