"""The run matrix: every sampler x step count on one model, common random numbers, honest numbers."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from bench.config import PRECISIONS, RunConfig, provenance, write_json_atomic
from bench.errors import UserError
from bench.measure import CountingDenoiser, PeakMemory, synchronize
from bench.noise import NoiseSource, StepNoise
from bench.registry import Registry, SamplerSpec, closest

DEFAULT_MODEL = {"cpu": "digits", "cuda": "fashion-mnist"}
DEFAULT_NUM_SAMPLES = {"cpu": 500, "cuda": 10_000}
DEFAULT_BATCH = {"cpu": 500, "cuda": 2_500}
KEY = ["sampler", "steps"]


@dataclass(frozen=True)
class SamplerChoice:
    """One sampler configuration: the label in reports, the spec and its resolved parameters."""

    label: str
    spec: SamplerSpec
    params: dict[str, Any]


@dataclass(frozen=True)
class Job:
    """One row of the results: a sampler configuration at one step count."""

    choice: SamplerChoice
    steps: int
    timesteps: tuple[int, ...] = field(repr=False)

    @property
    def key(self) -> tuple[str, int]:
        return (self.choice.label, self.steps)


def parse_params(text: str) -> dict[str, str]:
    """'eta=0.2,sections=10,15,20' -> {'eta': '0.2', 'sections': '10,15,20'}.

    A comma-separated piece without '=' continues the previous value, so list-valued
    parameters need no quoting.
    """
    params: dict[str, str] = {}
    last = None
    for piece in text.split(","):
        if "=" in piece:
            name, value = piece.split("=", 1)
            last = name.strip()
            if not last:
                raise UserError(f"bad sampler parameter {piece!r}: expected name=value")
            params[last] = value.strip()
        elif last is not None and piece.strip():
            params[last] += "," + piece.strip()
        elif piece.strip():
            raise UserError(f"bad sampler parameter {piece!r}: expected name=value")
    return params


def resolve_samplers(items: tuple[str, ...] | list[str], registry: Registry) -> list[SamplerChoice]:
    """Expand 'all', presets and 'name:param=value' items into sampler configurations."""
    choices: list[SamplerChoice] = []
    for item in items:
        for part in [item] if ":" in item else [p for p in item.split(",") if p]:
            name, _, param_text = part.partition(":")
            name = name.strip()
            if name == "all":
                choices += [SamplerChoice(s.name, s, s.resolve_params()) for s in registry.samplers.values()]
                choices += [SamplerChoice(p.name, registry.samplers[p.sampler],
                                          registry.samplers[p.sampler].resolve_params(p.params))
                            for p in registry.presets.values()]
                continue
            overrides = parse_params(param_text)
            if name in registry.presets:
                preset = registry.presets[name]
                spec = registry.samplers[preset.sampler]
                params = spec.resolve_params({**preset.params, **overrides})
            else:
                spec = registry.sampler(name)
                params = spec.resolve_params(overrides)
            label = name if not overrides else f"{name}:{','.join(f'{k}={v}' for k, v in overrides.items())}"
            choices.append(SamplerChoice(label, spec, params))
    unique: dict[str, SamplerChoice] = {}
    for choice in choices:
        unique.setdefault(choice.label, choice)
    if not unique:
        raise UserError("no samplers selected; try --samplers all")
    return list(unique.values())


def validate_steps(steps, num_timesteps: int) -> tuple[int, ...]:
    """Every requested step count is an integer in 1..T, checked before any work starts."""
    out = []
    for s in steps:
        if isinstance(s, str):
            try:
                s = int(s)
            except ValueError:
                raise UserError(f"steps must be integers, got {s!r}") from None
        if isinstance(s, bool) or not isinstance(s, int):
            raise UserError(f"steps must be integers, got {s!r}")
        if not 1 <= s <= num_timesteps:
            raise UserError(f"steps must be between 1 and T={num_timesteps}, got {s}")
        out.append(s)
    if not out:
        raise UserError("no step counts given")
    return tuple(dict.fromkeys(out))


def plan_jobs(choices: list[SamplerChoice], steps: tuple[int, ...], num_timesteps: int) -> list[Job]:
    """The matrix: each configuration at each step count; fixed-plan samplers once."""
    jobs = []
    for choice in choices:
        fixed = choice.spec.fixed_steps(num_timesteps, choice.params)
        for s in [fixed] if fixed is not None else steps:
            timesteps = choice.spec.timesteps(num_timesteps, s, choice.params)
            jobs.append(Job(choice, s, tuple(timesteps)))
    return jobs


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got {requested!r}")
    return torch.device(requested)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs CUDA; on CPU use fp32 or bf16")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def select_metrics(names: tuple[str, ...], registry: Registry) -> list:
    if "all" in names:
        return list(registry.metrics.values())
    out = []
    for name in names:
        if name == "none":
            continue
        if name not in registry.metrics:
            raise UserError(f"unknown metric {name!r}.{closest(name, registry.metrics)} "
                            f"Available: {', '.join(registry.metrics) or 'none'}")
        out.append(registry.metrics[name])
    return out


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """Save images in [-1, 1] as one PNG grid, atomically."""
    from torchvision.utils import save_image
    images = (images.float().clamp(-1, 1) + 1) / 2
    if images.shape[-1] < 32:  # tiny images (8x8 digits) are enlarged so a person can see them
        images = torch.nn.functional.interpolate(images, scale_factor=math.ceil(32 / images.shape[-1]), mode="nearest")
    tmp = path.with_name(path.stem + ".tmp.png")
    save_image(images, tmp, nrow=nrow, padding=2, pad_value=1.0)
    tmp.replace(path)


def slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in label)


class Harness:
    """Runs jobs on one model and writes the results folder."""

    def __init__(self, config: RunConfig, registry: Registry, out_dir: Path, denoiser, device: torch.device,
                 model_name: str, num_samples: int, batch_size: int, metric_specs: list, run_id: str):
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
        self.noise = NoiseSource(config.seed)
        self.dtype = torch.float32
        self.autocast = autocast_dtype(config.precision, device)

    def _batch_noise(self, start: int, stop: int) -> StepNoise:
        return StepNoise(self.noise, torch.arange(start, stop), self.denoiser.image_shape, self.device, self.dtype)

    def _sample(self, job: Job, counter: CountingDenoiser, noise: StepNoise, callback=None) -> torch.Tensor:
        spec = job.choice.spec
        return spec.fn(counter, noise.initial(), list(job.timesteps), noise, callback=callback,
                       **spec.sampler_kwargs(job.choice.params))

    def _warm_up_and_trace(self, job: Job, counter: CountingDenoiser) -> None:
        """Run the first few images untimed: warms caches and kernels, records the trajectory strip."""
        count = max(1, min(self.config.trajectory_images, self.num_samples))
        frames: list[tuple[torch.Tensor, torch.Tensor]] = []
        keep = set(round(i * (len(job.timesteps) - 1) / 7) for i in range(8))

        def callback(state):
            if state["step"] in keep:
                frames.append((state["x"].detach().cpu().clone(), state["x0"].detach().cpu().clone()))

        self._sample(job, counter, self._batch_noise(0, count), callback)
        if frames and self.config.trajectory_images > 0:
            # rows: for each image, x_t along the way then predicted x_0 along the way
            rows = []
            for i in range(count):
                rows += [f[0][i] for f in frames] + [f[1][i] for f in frames]
            path = self.out_dir / "trajectories" / f"{slug(job.choice.label)}-{job.steps}.png"
            path.parent.mkdir(exist_ok=True)
            save_grid(torch.stack(rows), path, nrow=len(frames))

    def run_job(self, job: Job, progress: tqdm | None) -> dict:
        """Sample num_samples images for one job; time, count, check and score them."""
        row = self._row_base(job)
        counter = CountingDenoiser(self.denoiser, autocast_dtype=self.autocast)
        try:
            self._warm_up_and_trace(job, counter)
            accumulators = [(spec.name, spec.create(self.denoiser, self._metric_context()))
                            for spec in self.metric_specs]
            accumulators = [(n, a) for n, a in accumulators if a is not None]
            counter.reset()
            if progress is not None:
                counter.on_call = lambda: progress.update(1)
            wall, batches, grid = 0.0, 0, []
            with PeakMemory(self.device) as memory:
                for start in range(0, self.num_samples, self.batch_size):
                    stop = min(start + self.batch_size, self.num_samples)
                    noise = self._batch_noise(start, stop)
                    synchronize(self.device)
                    began = time.perf_counter()
                    samples = self._sample(job, counter, noise)
                    synchronize(self.device)
                    wall += time.perf_counter() - began
                    batches += 1
                    self._check(samples, stop - start)
                    if len(grid) * self.batch_size < self.config.grid_images:
                        grid.append(samples[: self.config.grid_images].detach().cpu())
                    for _, acc in accumulators:
                        acc.update(samples)
            net = counter.network_seconds()
            nfe = counter.calls / batches
            row.update(nfe=nfe, wall_s=wall, s_per_image=wall / self.num_samples, ms_per_nfe=1000 * wall / nfe,
                       net_s=net, net_ms_per_call=1000 * net / counter.calls, overhead_frac=max(0.0, 1 - net / wall),
                       peak_mem_mb=memory.megabytes(), mem_kind=memory.kind)
            if self.config.grid_images > 0:
                save_grid(torch.cat(grid)[: self.config.grid_images],
                          self.out_dir / "samples" / f"{slug(job.choice.label)}-{job.steps}.png")
            for _, acc in accumulators:
                row.update(acc.compute())
            row["status"] = "ok"
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a broken sampler is recorded, and the run goes on
            row.update(status="error", error=f"{type(exc).__name__}: {exc}")
        return row

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
                "nfe": math.nan, "expected_nfe": job.choice.spec.expected_nfe(list(job.timesteps), job.choice.params),
                "num_samples": self.num_samples, "batch_size": self.batch_size, "model": self.model_name,
                "device": str(self.device), "compute_dtype": self.config.precision, "seed": self.config.seed,
                "status": "pending", "error": ""}


def write_csv_atomic(rows: list[dict], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pd.DataFrame(rows).to_csv(tmp, index=False)
    tmp.replace(path)


def default_run_id(model_name: str) -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + "-" + slug(Path(model_name).name)


def prepare_out_dir(out: str | None, results_root: Path, model_name: str, resume: bool, force: bool) -> Path:
    """The run folder: never overwrite results without --resume or --force."""
    out_dir = Path(out) if out else results_root / default_run_id(model_name)
    if resume:
        if not (out_dir / "results.csv").exists():
            raise UserError(f"--resume {out_dir}: no results.csv there to resume from")
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise UserError(f"{out_dir} already holds results; use --resume to continue it or --force to replace it")
        import shutil
        shutil.rmtree(out_dir)
    return out_dir


TIMING_COLUMNS = ["wall_s", "s_per_image", "ms_per_nfe", "net_s", "net_ms_per_call", "overhead_frac", "peak_mem_mb"]


def load_model(arg: str, registry: Registry, device: torch.device):
    """A registered model name, a path to one of our weight files, or a diffusers folder."""
    if arg in registry.models or Path(arg).exists():
        from models.weights import load_model_arg
        return load_model_arg(arg, registry, device)
    raise UserError(f"unknown model {arg!r}.{closest(arg, registry.models)} Give a registered name "
                    f"({', '.join(sorted(registry.models))}), a .safetensors weight file or a diffusers folder")


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
    jobs = plan_jobs(choices, steps, denoiser.num_timesteps)
    out_dir = prepare_out_dir(out, results_root, model_name, resume, force)

    done: dict[tuple[str, int], dict] = {}
    if resume:
        from bench.report import read_results_csv
        previous = read_results_csv(out_dir / "results.csv").to_dict("records")
        done = {(r["sampler"], int(r["steps"])): r for r in previous if r.get("status") == "ok"}
    run_id = out_dir.name
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "config.json", {
        "run_id": run_id, "config": dataclasses.replace(config, steps=steps).to_dict(), "model": model_name,
        "num_samples": num_samples, "batch_size": batch_size, "num_timesteps": denoiser.num_timesteps,
        "model_info": denoiser.info.__dict__, "schedule": getattr(denoiser.schedule.config, "__dict__", None),
        "jobs": [{"sampler": j.choice.label, "steps": j.steps, "params": j.choice.params,
                  "timesteps": list(j.timesteps)} for j in jobs],
        "started_utc": datetime.now(timezone.utc).isoformat(), **provenance(device_name(device))})

    harness = Harness(config, registry, out_dir, denoiser, device, model_name, num_samples, batch_size,
                      metric_specs, run_id)
    rows = {job.key: done[job.key] for job in jobs if job.key in done}
    todo = [job for job in jobs if job.key not in done]
    csv_path = out_dir / "results.csv"
    ordered = lambda: [rows[j.key] for j in jobs if j.key in rows]  # noqa: E731
    matrix = tqdm(todo, desc="configurations", unit="cfg", disable=quiet, position=0)
    for job in matrix:
        matrix.set_postfix_str(f"{job.choice.label} @ {job.steps}")
        batches = math.ceil(num_samples / batch_size)
        with tqdm(total=job.choice.spec.expected_nfe(list(job.timesteps), job.choice.params) * batches, desc="  NFE",
                  unit="call", leave=False, disable=quiet, position=1) as bar:
            rows[job.key] = harness.run_job(job, bar)
        write_csv_atomic(ordered(), csv_path)
    if not todo:
        write_csv_atomic(ordered(), csv_path)
    from bench.report import build_report
    build_report(out_dir)
    return out_dir


def summary_table(out_dir: Path) -> str:
    """A compact text table of a results folder for the terminal."""
    from bench.report import read_results_csv
    df = read_results_csv(out_dir / "results.csv")
    cols = [c for c in ["sampler", "steps", "nfe", "wall_s", "ms_per_nfe", "overhead_frac", "fid", "fid_floor",
                        "oracle_fd", "status"] if c in df.columns]
    return df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}")
