"""The timed loop: run each job of the matrix on one model, count, time, check and score it.

What runs is decided in bench/selection.py, where the network runs in bench/device.py, how a
sampler is called in bench/sampling.py, and what is written in bench/results.py.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench.config import RunConfig, provenance
from bench.device import autocast_dtype, compile_network, device_name, pick_device, warm_up_network
from bench.errors import UserError
from bench.measure import CountingDenoiser, PeakMemory, synchronize
from bench.noise import NoiseSource
from bench.paired import PairedRowsWriter, save_reference
from bench.registry import Registry
from bench.results import (
    TIMING_COLUMNS,
    prepare_out_dir,
    save_grid,
    slug,
    start_results_csv,
    summary_table,
    write_csv_atomic,
    write_run_config,
)
from bench.sampling import batch_noise, image_labels, sample
from bench.selection import (
    Job,
    job_key,
    plan_jobs,
    resolve_samplers,
    select_metrics,
    validate_classes,
    validate_guidance,
    validate_steps,
)
from bench.timing import (
    MIN_TIMED_S,
    BatchTimes,
    MachineState,
    repeat_until,
    summarize,
    timing_provenance,
    timing_warning,
)

DEFAULT_MODEL = {"cpu": "digits", "cuda": "fashion-mnist"}
DEFAULT_NUM_SAMPLES = {"cpu": 500, "cuda": 10_000}
DEFAULT_BATCH = {"cpu": 500, "cuda": 2_500}
KEY = ["sampler", "steps", "guidance"]
__all__ = ["TIMING_COLUMNS", "Harness", "load_model", "run_benchmark", "summary_table"]


def accepts_labels(update) -> bool:
    """Whether a metric accumulator's update() takes the images' class labels."""
    try:
        return "labels" in inspect.signature(update).parameters
    except (TypeError, ValueError):
        return False


class Harness:
    """Runs jobs on one model and writes the results folder."""

    def __init__(self, config: RunConfig, registry: Registry, out_dir: Path, denoiser, device: torch.device,
                 model_name: str, num_samples: int, batch_size: int, metric_specs: list, run_id: str,
                 classes: tuple[int, ...] | None = None):
        self.config = config
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

    def _sample(self, job: Job, counter: CountingDenoiser, start: int, stop: int, callback=None) -> torch.Tensor:
        indices = torch.arange(start, stop)
        noise = batch_noise(self.noise, indices, self.denoiser.image_shape, self.device, self.dtype)
        return sample(job.choice.spec, job.choice.params, counter, job.timesteps, indices, noise=noise,
                      classes=self.classes, guidance=job.guidance, callback=callback)

    def _warm_up_and_trace(self, job: Job, counter: CountingDenoiser) -> None:
        """Run the first few images untimed: warms caches and kernels, records the trajectory strip."""
        count = max(1, min(self.config.trajectory_images, self.num_samples))
        frames: list[tuple[torch.Tensor, torch.Tensor]] = []
        keep = set(round(i * (len(job.timesteps) - 1) / 7) for i in range(8))

        def callback(state):
            if state["step"] in keep:
                frames.append((state["x"].detach().cpu().clone(), state["x0"].detach().cpu().clone()))

        self._sample(job, counter, 0, count, callback)
        if frames and self.config.trajectory_images > 0:
            # rows: for each image, x_t along the way then predicted x_0 along the way
            rows = []
            for i in range(count):
                rows += [f[0][i] for f in frames] + [f[1][i] for f in frames]
            path = self.out_dir / "trajectories" / f"{self._file_stem(job)}.png"
            path.parent.mkdir(exist_ok=True)
            save_grid(torch.stack(rows), path, nrow=len(frames))

    def run_job(self, job: Job, progress: tqdm | None) -> dict:
        """Sample num_samples images for one job; time, count, check and score them.

        The first pass over the images is timed batch by batch and scored; when it took less than
        bench.timing.MIN_TIMED_S, the same images are sampled again (timed only) until it did.
        """
        row = self._row_base(job)
        counter = CountingDenoiser(self.denoiser, autocast_dtype=self.autocast)
        try:
            self._warm_up_and_trace(job, counter)
            accumulators = [(spec.name, spec.create(self.denoiser, self._metric_context()))
                            for spec in self.metric_specs]
            accumulators = [(n, a) for n, a in accumulators if a is not None]
            paired = paired_metric([a for _, a in accumulators])
            writer = PairedRowsWriter(self.out_dir, self._file_stem(job), self.num_samples) if paired else None
            counter.reset()
            if progress is not None:
                counter.on_call = lambda: progress.update(1)
            times, grid = BatchTimes(), []
            before = MachineState.now()
            with PeakMemory(self.device) as memory:
                for start, stop in self.batches():
                    samples = self._timed_sample(job, counter, start, stop, times)
                    self._check(samples, stop - start)
                    if start < self.config.grid_images:
                        grid.append(samples[: self.config.grid_images - start].detach().cpu())
                    labels = image_labels(torch.arange(start, stop), self.classes)
                    for _, acc in accumulators:
                        if labels is not None and accepts_labels(acc.update):
                            acc.update(samples, labels=labels)
                        else:
                            acc.update(samples)
                    if writer is not None:
                        writer.add(start, paired.paired_rows(samples))
                    del samples
                times.passes = 1
                if counter.calls == 0:
                    raise ValueError("the sampler never called the network")
                calls, rows_evaluated = counter.calls, counter.rows
                counter.on_call = None

                def one_pass(into: BatchTimes) -> None:
                    for start, stop in self.batches():
                        self._timed_sample(job, counter, start, stop, into)
                repeat_until(self.min_timed_s, times, one_pass)
            after = MachineState.now()
            net = counter.network_seconds()
            nfe = calls / len(self.batches())
            row.update(nfe=nfe, rows_evaluated=rows_evaluated / self.num_samples)
            row.update(summarize(times, self.num_samples, before, after))
            row.update(ms_per_nfe=1000 * row["wall_s"] / nfe, net_s=net / times.passes,
                       net_ms_per_call=1000 * net / counter.calls,
                       overhead_frac=max(0.0, 1 - net / times.total_s),
                       peak_mem_mb=memory.megabytes(), mem_kind=memory.kind)
            if self.config.grid_images > 0:
                save_grid(torch.cat(grid)[: self.config.grid_images],
                          self.out_dir / "samples" / f"{self._file_stem(job)}.png")
            for _, acc in accumulators:
                row.update(acc.compute())
            if writer is not None:
                row["features_file"] = writer.close()
                save_reference(self.out_dir, paired.paired_column, *paired.paired_reference())
            row["status"] = "ok" if nfe == job.expected_nfe else "nfe_mismatch"
            if nfe != job.expected_nfe:
                row["error"] = (f"counted {nfe:g} network calls per image, the sampler declares {job.expected_nfe} "
                                "(its nfe_per_step or nfe() is wrong, or it calls the network more than it says)")
        except KeyboardInterrupt as exc:
            exc.out_dir = self.out_dir  # the CLI says where the finished rows are
            raise
        except Exception as exc:  # a broken sampler is recorded, and the run goes on
            row.update(status="error", error=f"{type(exc).__name__}: {exc}")
        return row

    def batches(self) -> list[tuple[int, int]]:
        """(start, stop) of every batch of images, the same whatever the number of processes."""
        return [(start, min(start + self.batch_size, self.num_samples))
                for start in range(0, self.num_samples, self.batch_size)]

    def _timed_sample(self, job: Job, counter: CountingDenoiser, start: int, stop: int,
                      times: BatchTimes) -> torch.Tensor:
        """Sample one batch with the clock around exactly the sampling (synchronised on CUDA)."""
        synchronize(self.device)
        began = time.perf_counter()
        samples = self._sample(job, counter, start, stop)
        synchronize(self.device)
        times.add(time.perf_counter() - began, stop - start)
        return samples

    @staticmethod
    def _file_stem(job: Job) -> str:
        guided = "" if job.guidance is None else f"-w{job.guidance:g}"
        return f"{slug(job.choice.label)}-{job.steps}{guided}"

    def _metric_context(self) -> dict:
        return {"num_samples": self.num_samples, "device": str(self.device), "seed": self.config.seed,
                "fid_weights": self.config.fid_weights, "bootstrap": self.config.bootstrap}

    def _check(self, samples, expected_rows: int) -> None:
        shape = (expected_rows, *self.denoiser.image_shape)
        if not isinstance(samples, torch.Tensor) or tuple(samples.shape) != shape:
            got = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
            raise ValueError(f"sampler returned shape {got}, expected {shape}")
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
                "status": "pending", "error": ""}


def paired_metric(accumulators: list):
    """The accumulator whose per-image rows are saved for paired comparisons: FID's, else the oracle's."""
    candidates = [a for a in accumulators if hasattr(a, "paired_rows")]
    for column in ("fid", "oracle_fd"):
        for acc in candidates:
            if acc.paired_column == column:
                return acc
    return candidates[0] if candidates else None


def load_model(arg: str, registry: Registry, device: torch.device):
    """A registered model name, or a path a registered model source opens (weight file, diffusers folder)."""
    return registry.load_model(arg, device)


def _guidance_of(row: dict) -> float | None:
    value = row.get("guidance")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _compile(config: RunConfig, denoiser, device: torch.device, jobs: list[Job], num_samples: int,
             batch_size: int) -> dict:
    """--compile: compile the network once per model and warm every batch shape up, outside every clock."""
    if not config.compile:
        return {"enabled": False}
    if not compile_network(denoiser):
        return {"enabled": False, "note": "the model has no torch network to compile"}
    sizes = {batch_size, num_samples % batch_size or batch_size, max(1, min(config.trajectory_images, num_samples))}
    factors = {2 if job.guidance else 1 for job in jobs}
    seconds = warm_up_network(denoiser, [s * f for s in sizes for f in factors], autocast_dtype(config.precision,
                                                                                                 device))
    return {"enabled": True, "mode": "torch.compile(dynamic=False)", "compile_and_warm_up_s": seconds,
            "batch_rows": sorted(s * f for s in sizes for f in factors)}


def _model_defaults(config: RunConfig, device: torch.device) -> tuple[str, int, int]:
    model = config.model or DEFAULT_MODEL[device.type]
    num_samples = config.num_samples or DEFAULT_NUM_SAMPLES[device.type]
    batch_size = min(config.batch_size or DEFAULT_BATCH[device.type], num_samples)
    if num_samples < 1 or batch_size < 1:
        raise UserError("--num-samples and --batch-size must be positive")
    return model, num_samples, batch_size


def run_benchmark(config: RunConfig, registry: Registry, out: str | None = None, resume: bool = False,
                  force: bool = False, results_root: Path = Path("results"), quiet: bool = False) -> Path:
    """Run the matrix and write results.csv, config.json, sample grids and the report.

    All user errors are raised before anything is written.
    """
    device = pick_device(config.device)
    autocast_dtype(config.precision, device)
    model_name, num_samples, batch_size = _model_defaults(config, device)
    if config.model is None and model_name not in registry.models:
        raise UserError(f"the default model {model_name!r} for {device.type} is not registered "
                        f"(are its weights in models/weights/?); pass --model, e.g. --model gaussian-oracle")
    choices = resolve_samplers(config.samplers, registry)
    metric_specs = select_metrics(config.metrics, registry)
    denoiser = load_model(model_name, registry, device)
    steps = validate_steps(config.steps, denoiser.num_timesteps)
    classes = validate_classes(config.classes, denoiser.num_classes)
    guidance = validate_guidance(config.guidance, denoiser.num_classes)
    jobs = plan_jobs(choices, steps, denoiser.schedule, guidance)
    out_dir = prepare_out_dir(out, results_root, model_name, resume, force)
    compile_info = _compile(config, denoiser, device, jobs, num_samples, batch_size)

    done: dict[tuple[str, int], dict] = {}
    if resume:
        from bench.report import read_results_csv
        previous = read_results_csv(out_dir / "results.csv").to_dict("records")
        done = {job_key(r["sampler"], r["steps"], _guidance_of(r)): r for r in previous if r.get("status") == "ok"}
    run_id = out_dir.name
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    write_run_config(out_dir, {
        "run_id": run_id, "config": dataclasses.replace(config, steps=steps).to_dict(), "model": model_name,
        "num_samples": num_samples, "batch_size": batch_size, "num_timesteps": denoiser.num_timesteps,
        "model_info": denoiser.info.__dict__, "schedule": getattr(denoiser.schedule.config, "__dict__", None),
        "classes": list(classes) if classes else None, "compile": compile_info,
        "jobs": [{"sampler": j.choice.label, "steps": j.steps, "guidance": j.guidance, "params": j.choice.params,
                  "timesteps": list(j.timesteps), "expected_nfe": j.expected_nfe} for j in jobs],
        "timing": timing_provenance(device, batch_size, compiled=bool(compile_info.get("enabled"))),
        "started_utc": datetime.now(timezone.utc).isoformat(), **provenance(device_name(device))}, resume=resume)
    if not resume:
        start_results_csv(out_dir / "results.csv")

    harness = Harness(config, registry, out_dir, denoiser, device, model_name, num_samples, batch_size,
                      metric_specs, run_id, classes)
    rows = {job.key: done[job.key] for job in jobs if job.key in done}
    todo = [job for job in jobs if job.key not in done]
    csv_path = out_dir / "results.csv"
    ordered = lambda: [rows[j.key] for j in jobs if j.key in rows]  # noqa: E731
    matrix = tqdm(todo, desc="configurations", unit="cfg", disable=quiet, position=0)
    for job in matrix:
        matrix.set_postfix_str(f"{job.choice.label} @ {job.steps}" + ("" if job.guidance is None else
                                                                       f", w={job.guidance:g}"))
        batches = math.ceil(num_samples / batch_size)
        with tqdm(total=job.expected_nfe * batches, desc="  NFE",
                  unit="call", leave=False, disable=quiet, position=1) as bar:
            rows[job.key] = harness.run_job(job, bar)
        warning = timing_warning(rows[job.key])
        if warning:
            tqdm.write(f"warning: {warning}", file=sys.stderr)
        write_csv_atomic(ordered(), csv_path)
    if not todo:
        write_csv_atomic(ordered(), csv_path)
    from bench.report import build_report
    build_report(out_dir)
    return out_dir


