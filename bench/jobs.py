"""One job of the matrix: sample its images batch by batch (on this process's share), time, count, check and
score them, and turn the result into a results row. The matrix around it is bench/harness.py."""

from __future__ import annotations

import inspect
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench.config import RunConfig
from bench.device import autocast_dtype
from bench.distributed import JobShare, Processes, shard_state
from bench.errors import UserError
from bench.measure import CountingDenoiser, PeakMemory, synchronize
from bench.noise import NoiseSource
from bench.paired import PairedRowsWriter, save_reference
from bench.registry import Registry
from bench.results import (
    save_grid,
    slug,
)
from bench.sampling import batch_noise, image_labels, is_guided, sample
from bench.selection import (
    Job,
)
from bench.timing import (
    MIN_TIMED_S,
    BatchTimes,
    MachineState,
    repeat_until,
    summarize_ranks,
)


def accepts_labels(update) -> bool:
    """Whether a metric accumulator's update() takes the images' class labels."""
    return _accepts(update, "labels")


def _accepts(update, name: str) -> bool:
    try:
        return name in inspect.signature(update).parameters
    except (TypeError, ValueError):
        return False


class JobFailed(Exception):
    """A configuration failed on some rank; the row records the error."""


class Harness:
    """Runs jobs on one model and writes the results folder."""

    def __init__(self, config: RunConfig, registry: Registry, out_dir: Path, denoiser, device: torch.device,
                 model_name: str, num_samples: int, batch_size: int, metric_specs: list, run_id: str,
                 classes: tuple[int, ...] | None = None, processes: Processes = Processes()):
        self.config = config
        self.processes = processes  # this rank's place in a torchrun launch (rank 0 of 1 otherwise)
        self.registry = registry
        self.out_dir = out_dir
        self.denoiser = denoiser
        self.device = device
        self.model_name = model_name
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.metric_specs = metric_specs
        self.run_id = run_id
        self.classes = classes
        self.noise = NoiseSource(config.seed)
        self.dtype = torch.float32
        self.autocast = autocast_dtype(config.precision, device)
        self.min_timed_s = MIN_TIMED_S
        self.references: dict = {}  # guidance -> bench.reference.References, for the ref-error metric
        self.last_noise_draws = 0
        self.last_image_nfe = None

    def _sample(self, job: Job, counter: CountingDenoiser, start: int, stop: int, callback=None) -> torch.Tensor:
        indices = torch.arange(start, stop)
        noise = batch_noise(self.noise, indices, self.denoiser.image_shape, self.device, self.dtype)
        stats: dict = {}
        samples = sample(job.choice.spec, job.choice.params, counter, job.timesteps, indices, noise=noise,
                         classes=self.classes, guidance=job.guidance, callback=callback, stats=stats)
        self.last_noise_draws = noise.draws  # > 0: the sampler drew fresh noise, so it is stochastic
        self.last_image_nfe = stats.get("image_nfe")  # an adaptive sampler's calls per image
        return samples

    def _trajectory_recorder(self, job: Job) -> tuple[list, object]:
        """A callback for the first timed batch that keeps x_t and predicted x_0 of its first images at 8 steps.

        The frames stay on the device (no synchronisation inside the clock) until the strip is saved.
        """
        count = min(self.config.trajectory_images, self.num_samples)
        frames: list[tuple[torch.Tensor, torch.Tensor]] = []
        keep = set(round(i * (len(job.timesteps) - 1) / 7) for i in range(8))

        def callback(state):
            if state["step"] in keep:
                frames.append((state["x"][:count].detach().clone(), state["x0"][:count].detach().clone()))

        return frames, (callback if count > 0 else None)

    def _save_trajectory(self, job: Job, frames: list) -> None:
        """Rows: for each image, x_t along the way then predicted x_0 along the way."""
        if not frames:
            return
        rows = []
        for i in range(frames[0][0].shape[0]):
            rows += [f[0][i].cpu() for f in frames] + [f[1][i].cpu() for f in frames]
        from bench.folder import subfolder
        path = subfolder(self.out_dir, "trajectories") / f"{self._file_stem(job)}.png"
        save_grid(torch.stack(rows), path, nrow=len(frames))

    def run_job(self, job: Job, progress: tqdm | None) -> dict | None:
        """Sample num_samples images for one job; time, count, check and score them.

        The first pass over the images is timed batch by batch and scored; when it took less than
        bench.timing.MIN_TIMED_S, the same images are sampled again (timed only) until it did.
        In a multi-process run each rank samples its share of the batches, rank 0 merges the shares
        (bench.distributed) and returns the row, and the other ranks return None.
        """
        row = self._row_base(job)
        share = JobShare()
        accumulators, paired, writer, frames = [], None, None, []
        try:
            accumulators, paired, writer, frames = self._sample_share(job, progress, share)
        except KeyboardInterrupt as exc:
            exc.out_dir = self.out_dir  # the CLI says where the finished rows are
            raise
        except Exception as exc:  # a broken sampler is recorded, and the run goes on
            share.error = f"{type(exc).__name__}: {exc}"
        if self.processes.world_size > 1:
            if share.error is None:
                share.metric_states = {name: shard_state(name, acc) for name, acc in accumulators}
            if writer is not None and not self.processes.is_main:
                share.paired = writer.pieces
        shares = self.processes.gather(share)
        if shares is None:
            return None
        try:
            self._finish(job, row, shares, accumulators, paired, writer, frames)
        except JobFailed as exc:
            row.update(status="error", error=str(exc))
        except Exception as exc:
            row.update(status="error", error=f"{type(exc).__name__}: {exc}")
        return row

    def _sample_share(self, job: Job, progress: tqdm | None, share: JobShare):
        """This process's batches: sampled, checked, scored into fresh accumulators, timed (and repeated)."""
        counter = CountingDenoiser(self.denoiser, autocast_dtype=self.autocast)
        frames, record = self._trajectory_recorder(job)
        accumulators = []
        for spec in self.metric_specs:
            try:
                accumulator = spec.create(self.denoiser, self._metric_context(job))
            except UserError:
                raise
            except Exception as exc:  # a broken metric plugin is blamed by name; the other metrics go on
                share.metric_errors[spec.name] = f"create(): {type(exc).__name__}: {exc}"
                continue
            if accumulator is not None:
                accumulators.append((spec.name, accumulator))
        wants_labels = {n: accepts_labels(a.update) for n, a in accumulators}  # inspected once, not per batch
        wants_indices = {n: _accepts(a.update, "indices") for n, a in accumulators}
        paired = paired_metric([a for _, a in accumulators])
        writer = PairedRowsWriter(self.out_dir, self._file_stem(job), self.num_samples,
                                  in_memory=not self.processes.is_main) if paired else None
        if progress is not None:
            counter.on_call = lambda: progress.update(1)
        mine = self.processes.share(self.batches())
        share.times, share.batches = BatchTimes(), len(mine)
        share.images = sum(stop - start for start, stop in mine)
        share.before = MachineState.now()
        with PeakMemory(self.device) as memory:
            for start, stop in mine:
                samples = self._timed_sample(job, counter, start, stop, share.times, record if start == 0 else None)
                self._check(samples, stop - start)
                if start < self.config.grid_images:
                    share.grid.append((start, samples[: self.config.grid_images - start].detach().cpu()))
                labels = image_labels(torch.arange(start, stop), self.classes)
                share.noise_draws += self.last_noise_draws
                if self.last_image_nfe is not None:
                    share.image_nfe += [int(v) for v in self.last_image_nfe]
                for name, acc in list(accumulators):
                    try:
                        extra = {"indices": torch.arange(start, stop)} if wants_indices[name] else {}
                        if labels is not None and wants_labels[name]:
                            acc.update(samples, labels=labels, **extra)
                        else:
                            acc.update(samples, **extra)
                    except Exception as exc:  # this metric is dropped from the row; the others are kept
                        share.metric_errors[name] = f"update(): {type(exc).__name__}: {exc}"
                        accumulators.remove((name, acc))
                        if acc is paired:
                            paired, writer = None, writer.abort()
                if writer is not None:
                    writer.add(start, paired.paired_rows(samples))
                del samples
            share.times.passes = 1
            if mine and counter.calls == 0:
                raise ValueError("the sampler never called the network")
            share.calls, share.rows = counter.calls, counter.rows
            counter.on_call = None

            def one_pass(into: BatchTimes) -> None:
                for start, stop in mine:
                    self._timed_sample(job, counter, start, stop, into)
            if mine:
                repeat_until(self.min_timed_s, share.times, one_pass)
        share.after = MachineState.now()
        share.net_seconds, share.total_calls = counter.network_seconds(), counter.calls
        share.peak_mem_mb, share.mem_kind = memory.megabytes(), memory.kind
        return accumulators, paired, writer, frames

    def _finish(self, job: Job, row: dict, shares: list[JobShare], accumulators: list, paired, writer,
                frames: list) -> None:
        """Rank 0 (or the only process): merge the shares, fill the row, write the job's files."""
        errors = [(rank, s.error) for rank, s in enumerate(shares) if s.error]
        if errors:
            rank, error = errors[0]
            raise JobFailed(error if len(shares) == 1 else f"rank {rank}: {error}")
        metric_errors = {name: error for s in reversed(shares) for name, error in s.metric_errors.items()}
        for name, acc in list(accumulators):
            if name in metric_errors:  # failed on another rank: it is dropped on every rank
                accumulators.remove((name, acc))
                if acc is paired:
                    paired, writer = None, writer.abort()
        if len(shares) > 1:
            for name, acc in accumulators:
                acc.merge_shards([s.metric_states[name] for s in shares])
            for s in shares[1:]:
                for start, rows in s.paired:
                    writer.add(start, rows)
        calls, batches = sum(s.calls for s in shares), sum(s.batches for s in shares)
        nfe = calls / batches
        adaptive_error = None
        if job.choice.spec.adaptive:  # calls per image vary: their mean, checked against the rows counted
            nfe, row["nfe_max"], adaptive_error = self._adaptive_nfe(job, shares)
        net, total_calls = sum(s.net_seconds for s in shares), sum(s.total_calls for s in shares)
        timed = [s for s in shares if s.batches]
        row.update(nfe=nfe, rows_evaluated=sum(s.rows for s in shares) / self.num_samples)
        row.update(summarize_ranks([s.times for s in timed], [s.images for s in timed], [s.before for s in timed],
                                   [s.after for s in timed], self.num_samples))
        row["world_size"] = len(shares)  # every process of the run, those that got no batch included
        row.update(ms_per_nfe=1000 * row["wall_s"] / nfe, net_s=sum(s.net_seconds / s.times.passes for s in timed),
                   net_ms_per_call=1000 * net / total_calls,
                   overhead_frac=max(0.0, 1 - net / sum(s.times.total_s for s in timed)),
                   peak_mem_mb=max(s.peak_mem_mb for s in timed), mem_kind=shares[0].mem_kind)
        self._save_trajectory(job, frames)
        if self.config.grid_images > 0:
            grid = [images for _, images in sorted((p for s in shares for p in s.grid), key=lambda p: p[0])]
            save_grid(torch.cat(grid)[: self.config.grid_images],
                      self.out_dir / "samples" / f"{self._file_stem(job)}.png")
        stochastic = any(s.noise_draws for s in shares)
        for name, acc in accumulators:
            column = getattr(acc, "paired_mean_column", None)
            if column is not None and stochastic:  # a distance to the ODE solution means nothing for an SDE
                row[f"{column}_note"] = "stochastic sampler (draws fresh noise): no reference trajectory to compare"
                continue
            try:
                row.update(acc.compute())
                if column is not None:
                    row[f"{column}_file"] = self._save_per_image(job, column, acc.per_image_values())
            except UserError:
                raise
            except Exception as exc:
                metric_errors[name] = f"compute(): {type(exc).__name__}: {exc}"
                if acc is paired:
                    paired, writer = None, writer.abort()
        if writer is not None:  # the metric's own bootstrap values, when it has them, spare the report a recomputation
            row["features_file"] = writer.close(getattr(paired, "bootstrap_values", None))
            save_reference(self.out_dir, paired.paired_column, *paired.paired_reference())
        exact = adaptive_error is None if job.choice.spec.adaptive else nfe == job.expected_nfe
        row["status"] = "ok" if exact else "nfe_mismatch"
        if metric_errors:
            plugins = {spec.name: spec.plugin for spec in self.metric_specs}
            blamed = "; ".join(f"metric {name!r} (plugin {plugins.get(name, '?')!r}) failed in {error}"
                               for name, error in metric_errors.items())
            tqdm.write(f"warning: {job.choice.label} @ {job.steps}: {blamed}", file=sys.stderr)
        messages = [blamed + " (its columns are empty; the other metrics are kept)"] if metric_errors else []
        if adaptive_error is not None:
            messages.insert(0, adaptive_error)
        elif not job.choice.spec.adaptive and nfe != job.expected_nfe:
            messages.insert(0, f"counted {nfe:g} network calls per image, the sampler declares {job.expected_nfe} "
                            "(its nfe_per_step or nfe() is wrong, or it calls the network more than it says)")
        if messages:
            row["error"] = "; ".join(messages)

    def _adaptive_nfe(self, job: Job, shares: list) -> tuple[float, float, str | None]:
        """An adaptive sampler's (mean, max) calls per image and, when its own per-image count disagrees with
        the forward rows the harness counted (two per image and call when guided), what is wrong."""
        per_image = [v for s in shares for v in s.image_nfe]
        rows = sum(s.rows for s in shares)
        per_call = 2 if is_guided(job.guidance, self.denoiser.num_classes) else 1
        if len(per_image) != self.num_samples:
            mean = rows / per_call / self.num_samples
            return mean, math.nan, (f"the adaptive sampler reported calls for {len(per_image)} of "
                                    f"{self.num_samples} images (it must return AdaptiveSample(x0, nfe))")
        mean = sum(per_image) / self.num_samples
        if sum(per_image) * per_call != rows:
            counted = rows / per_call / self.num_samples
            return counted, max(per_image), (f"counted {counted:g} network calls per image, the adaptive sampler "
                                             f"reports {mean:g} (its per-image count is wrong)")
        return mean, float(max(per_image)), None

    def _save_per_image(self, job: Job, column: str, values) -> str:
        """features/<stem>.<column>.npy: a metric's per-image values, for paired mean differences (bench.paired)."""
        import numpy as np

        from bench.folder import subfolder
        folder = subfolder(self.out_dir, "features")
        name = f"{self._file_stem(job)}.{column}.npy"
        tmp = folder / f"{self._file_stem(job)}.{column}.tmp.npy"
        np.save(tmp, np.asarray(values, dtype=np.float64))
        tmp.replace(folder / name)
        return f"features/{name}"

    def batches(self) -> list[tuple[int, int]]:
        """(start, stop) of every batch of images, the same whatever the number of processes."""
        return [(start, min(start + self.batch_size, self.num_samples))
                for start in range(0, self.num_samples, self.batch_size)]

    def _timed_sample(self, job: Job, counter: CountingDenoiser, start: int, stop: int,
                      times: BatchTimes, callback=None) -> torch.Tensor:
        """Sample one batch with the clock around exactly the sampling (synchronised on CUDA)."""
        synchronize(self.device)
        first_call = len(counter.call_starts)
        began = time.perf_counter()
        samples = self._sample(job, counter, start, stop, callback)
        synchronize(self.device)
        ended = time.perf_counter()
        starts = counter.call_starts[first_call:] if self.device.type == "cpu" else []  # CUDA calls return early
        # seconds per network call; none when the sampler never called the network (run_job reports that)
        calls = [b - a for a, b in zip(starts, [*starts[1:], ended], strict=True)] if starts else []
        times.add(ended - began, stop - start, calls)
        return samples

    @staticmethod
    def _file_stem(job: Job) -> str:
        guided = "" if job.guidance is None else f"-w{job.guidance:g}"
        return f"{slug(job.choice.label)}-{job.steps}{guided}"

    def _metric_context(self, job: Job | None = None) -> dict:
        return {"num_samples": self.num_samples, "device": str(self.device), "seed": self.config.seed,
                "fid_weights": self.config.fid_weights, "bootstrap": self.config.bootstrap,
                "references": self.references, "guidance": None if job is None else job.guidance}

    def _check(self, samples, expected_rows: int) -> None:
        shape = (expected_rows, *self.denoiser.image_shape)
        if not isinstance(samples, torch.Tensor) or tuple(samples.shape) != shape:
            got = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
            raise ValueError(f"sampler returned shape {got}, expected {shape}")
        if not samples.is_floating_point():
            raise ValueError(f"sampler returned a {samples.dtype} tensor; samples must be floating point")
        if not bool(torch.isfinite(samples).all()):
            raise ValueError("sampler returned NaN or inf values")

    def _row_base(self, job: Job) -> dict:
        return {"run_id": self.run_id, "sampler": job.choice.label, "base_sampler": job.choice.spec.name,
                "plugin": job.choice.spec.plugin, "params": json.dumps(job.choice.params, sort_keys=True),
                "plan": job.choice.spec.plan_name(job.choice.params), "steps": job.steps,
                "guidance": job.guidance, "cfg_scale": None if job.guidance is None else 1.0 + job.guidance,
                "nfe": math.nan, "expected_nfe": job.expected_nfe,
                "num_samples": self.num_samples, "batch_size": self.batch_size, "model": self.model_name,
                "device": str(self.device), "compute_dtype": self.config.precision, "seed": self.config.seed,
                "path": self.denoiser.info.path, "shift": self.denoiser.info.shift,
                "prediction_type": self.denoiser.info.prediction_type,
                "status": "pending", "error": ""}


def paired_metric(accumulators: list):
    """The accumulator whose per-image rows are saved for paired comparisons: FID's, else the oracle's."""
    candidates = [a for a in accumulators if hasattr(a, "paired_rows")]
    for column in ("fid", "oracle_fd"):
        for acc in candidates:
            if acc.paired_column == column:
                return acc
    return candidates[0] if candidates else None
