"""The run matrix on one model: set it up, skip what a resumed run has, run each job, write the folder.

What runs is decided in bench/selection.py, where the network runs in bench/device.py, how a
sampler is called in bench/sampling.py, one job is sampled, timed and scored in bench/jobs.py, and
what is written in bench/results.py.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench.config import RunConfig, provenance
from bench.device import autocast_dtype, compile_network, device_name, pick_device, warm_up_network
from bench.distributed import init_processes
from bench.errors import UserError
from bench.folder import acquire_lock, refresh_lock, release_lock, subfolder
from bench.jobs import Harness
from bench.registry import Registry
from bench.results import (
    TIMING_COLUMNS,
    prepare_out_dir,
    start_results_csv,
    summary_table,
    write_csv_atomic,
    write_run_config,
)
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
    timing_provenance,
    timing_warning,
)

DEFAULT_MODEL = {"cpu": "digits", "cuda": "fashion-mnist"}
DEFAULT_NUM_SAMPLES = {"cpu": 500, "cuda": 10_000}
DEFAULT_BATCH = {"cpu": 500, "cuda": 2_500}
KEY = ["sampler", "steps", "guidance"]
TIMING_WARNINGS_SHOWN = 5  # busy/noisy timing warnings printed one by one; the rest are counted in one line
__all__ = ["TIMING_COLUMNS", "Harness", "load_model", "run_benchmark", "summary_table"]


def load_model(arg: str, registry: Registry, device: torch.device):
    """A registered model name, or a path a registered model source opens (weight file, diffusers folder)."""
    return registry.load_model(arg, device)


def _rows_still_valid(done: dict, jobs: list[Job], config_path: Path) -> dict:
    """Finished rows whose job still visits the timesteps recorded when it ran; the others are redone, with a
    warning (the code or a plugin changed the plan since), so a resumed run never mixes two plans in one row."""
    from bench.report import read_config

    recorded = {}
    for entry in read_config(config_path).get("jobs") or []:
        try:
            recorded[job_key(entry["sampler"], entry["steps"], entry.get("guidance"))] = entry.get("timesteps")
        except (TypeError, ValueError, KeyError, AttributeError):  # an entry this version cannot read: no record
            continue
    kept = {}
    for job in jobs:
        if job.key not in done:
            continue
        if recorded.get(job.key, list(job.timesteps)) == list(job.timesteps):
            kept[job.key] = done[job.key]
        else:
            print(f"warning: {job.choice.label} @ {job.steps}: its timesteps differ from those recorded when it ran "
                  "(the code or a plugin changed); redoing it", file=sys.stderr)
    return kept


def _guidance_of(row: dict) -> float | None:
    value = row.get("guidance")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _compile_and_warm_up(config: RunConfig, denoiser, device: torch.device, jobs: list[Job], num_samples: int,
                         batch_size: int) -> dict:
    """Once per model, outside every clock: compile the network (--compile) and call it at every batch shape
    the timed loop will use (a full batch, the last batch; twice the rows when guided)."""
    compiled = bool(config.compile) and compile_network(denoiser)
    rows = sorted({s * (2 if job.guidance else 1) for s in {batch_size, num_samples % batch_size or batch_size}
                   for job in jobs})
    seconds = warm_up_network(denoiser, rows, autocast_dtype(config.precision, device))
    info = {"enabled": compiled, "warm_up_s": seconds, "batch_rows": rows}
    if compiled:
        info.update(mode="torch.compile(dynamic=False)", compile_and_warm_up_s=seconds)
    elif config.compile:
        info["note"] = "the model has no torch network to compile"
    return info


def apply_shift(denoiser, shift: float) -> None:
    """--shift: the flow model's plans placed in t use this shift instead of the model's own."""
    import dataclasses as dc

    from bench.paths import make_path
    path = denoiser.schedule
    if getattr(path, "kind", "vp-discrete") != "flow":
        raise UserError(f"--shift applies to flow models; this model's path is {getattr(path, 'kind', 'vp-discrete')}")
    denoiser.schedule = make_path(dc.replace(path.path_config, shift=float(shift)))
    denoiser.info = dc.replace(denoiser.info, shift=float(shift))


def check_tensor_file(path: str, what: str) -> None:
    """A UserError unless `path` is a weights file that loads without running code: .safetensors, or a
    pickle that torch.load(weights_only=True) accepts (tensors and containers only)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{what} {path}: no such file")
    try:
        if file.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        else:
            torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code-bearing pickles, others for corrupt files
        raise UserError(f"{what} {path}: refusing to load it: not a plain tensor file that safetensors or "
                        f"torch.load(weights_only=True) accepts ({type(exc).__name__})") from None


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

    All user errors are raised before anything is written. `--threads` holds for the run only: the caller's
    torch thread count is restored afterwards (a library caller's, or the next test's, timings and round-off).
    """
    threads = torch.get_num_threads()
    try:
        return _run_benchmark(config, registry, out, resume, force, results_root, quiet)
    finally:
        torch.set_num_threads(threads)


def _run_benchmark(config: RunConfig, registry: Registry, out: str | None, resume: bool, force: bool,
                   results_root: Path, quiet: bool) -> Path:
    if config.threads:
        from bench.timing import cpu_cores
        if config.threads > cpu_cores():
            print(f"warning: --threads {config.threads} is more than the {cpu_cores()} usable cores; the extra threads "
                  "wait for each other and make the timings slower and noisier", file=sys.stderr)
        torch.set_num_threads(config.threads)
    processes, device = init_processes(pick_device(config.device))
    autocast_dtype(config.precision, device)
    model_name, num_samples, batch_size = _model_defaults(config, device)
    if processes.world_size > num_samples:
        raise UserError(f"{processes.world_size} processes for {num_samples} images: every process needs at least "
                        "one image; launch fewer processes or raise --num-samples")
    if config.model is None and model_name not in registry.models:
        raise UserError(f"the default model {model_name!r} for {device.type} is not registered "
                        f"(are its weights in models/weights/?); pass --model, e.g. --model gaussian-oracle")
    if config.fid_weights:
        check_tensor_file(config.fid_weights, "--fid-weights")
    choices = resolve_samplers(config.samplers, registry)
    metric_specs = select_metrics(config.metrics, registry)
    denoiser = load_model(model_name, registry, device)
    if config.shift is not None:
        apply_shift(denoiser, config.shift)
    steps = validate_steps(config.steps, denoiser.num_timesteps)
    classes = validate_classes(config.classes, denoiser.num_classes)
    guidance = validate_guidance(config.guidance, denoiser.num_classes)
    jobs = plan_jobs(choices, steps, denoiser.schedule, guidance)
    from bench.tune import check_plan_files_for
    check_plan_files_for(jobs, denoiser)
    out_dir, created = processes.on_main(lambda: _take_folder(out, results_root, model_name, resume, force))
    try:
        return _run_matrix(config, registry, processes, device, denoiser, model_name, num_samples, batch_size,
                           metric_specs, jobs, classes, steps, out_dir, resume, quiet)
    finally:
        if processes.is_main:
            release_lock(out_dir)
            if created and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()  # failed before writing anything: leave no empty folder behind


def _take_folder(out, results_root: Path, model_name: str, resume: bool, force: bool) -> tuple[Path, bool]:
    """The checked results folder, locked for this process (one writer per folder), and whether we created it."""
    out_dir = prepare_out_dir(out, results_root, model_name, resume, force)
    created = not out_dir.exists()
    acquire_lock(out_dir)
    return out_dir, created


def _run_matrix(config, registry, processes, device, denoiser, model_name, num_samples, batch_size, metric_specs,
                jobs, classes, steps, out_dir: Path, resume: bool, quiet: bool) -> Path:
    """Everything after the folder is taken: compile and warm up, write config.json, run the jobs, the report."""
    compile_info = _compile_and_warm_up(config, denoiser, device, jobs, num_samples, batch_size)

    done: dict[tuple[str, int], dict] = {}
    if resume:
        from bench.report import read_results_csv
        previous = processes.on_main(lambda: read_results_csv(out_dir / "results.csv").to_dict("records"))
        done = {job_key(r["sampler"], r["steps"], _guidance_of(r)): r for r in previous if r.get("status") == "ok"}
        done = _rows_still_valid(done, jobs, out_dir / "config.json")
    references, reference_info = _references(config, registry, denoiser, metric_specs, jobs, num_samples,
                                             batch_size, classes, processes, out_dir)
    run_id = out_dir.name
    if processes.is_main:
        _start_folder(out_dir, resume, {
        "reference": reference_info,
        "run_id": run_id, "config": dataclasses.replace(config, steps=steps).to_dict(), "model": model_name,
        "num_samples": num_samples, "batch_size": batch_size, "num_timesteps": denoiser.num_timesteps,
        "model_info": denoiser.info.__dict__, "schedule": getattr(denoiser.schedule.config, "__dict__", None),
        "classes": list(classes) if classes else None, "compile": compile_info,
        "jobs": [{"sampler": j.choice.label, "steps": j.steps, "guidance": j.guidance, "params": j.choice.params,
                  "timesteps": list(j.timesteps), "expected_nfe": j.expected_nfe} for j in jobs],
        "timing": timing_provenance(device, batch_size, processes.world_size,
                                    compiled=bool(compile_info.get("enabled"))),
        "started_utc": datetime.now(timezone.utc).isoformat(), **provenance(device_name(device))})

    harness = Harness(config, registry, out_dir, denoiser, device, model_name, num_samples, batch_size,
                      metric_specs, run_id, classes, processes)
    harness.references = references
    quiet = quiet or not processes.is_main
    rows = {job.key: done[job.key] for job in jobs if job.key in done}
    todo = [job for job in jobs if job.key not in done]
    csv_path = out_dir / "results.csv"
    ordered = lambda: [rows[j.key] for j in jobs if j.key in rows]  # noqa: E731
    matrix = tqdm(todo, desc="configurations", unit="cfg", disable=quiet, position=0)
    untrusted = 0
    for job in matrix:
        matrix.set_postfix_str(f"{job.choice.label} @ {job.steps}" + ("" if job.guidance is None else
                                                                       f", w={job.guidance:g}"))
        batches = math.ceil(num_samples / batch_size)
        with tqdm(total=None if job.expected_nfe is None else job.expected_nfe * batches, desc="  NFE",
                  unit="call", leave=False, disable=quiet, position=1) as bar:
            row = harness.run_job(job, bar)
        if row is None:  # a rank other than 0: its share went to rank 0
            continue
        rows[job.key] = row
        warning = timing_warning(rows[job.key])
        if warning:
            untrusted += 1
            if untrusted <= TIMING_WARNINGS_SHOWN:
                tqdm.write(f"warning: {warning}", file=sys.stderr)
        write_csv_atomic(ordered(), csv_path)
        refresh_lock(out_dir)
    if untrusted > TIMING_WARNINGS_SHOWN:
        print(f"warning: {untrusted - TIMING_WARNINGS_SHOWN} more configurations (of {len(todo)}) had busy or noisy "
              "timings; see the report's timing section and the busy/timing_spread columns", file=sys.stderr)
    if processes.is_main:
        if not todo:
            write_csv_atomic(ordered(), csv_path)
        from bench.report import build_report
        build_report(out_dir)
    processes.barrier()  # the other ranks return once rank 0 has written the folder
    processes.close()
    return out_dir


def _references(config, registry, denoiser, metric_specs, jobs, num_samples, batch_size, classes, processes,
                out_dir: Path) -> tuple[dict, dict | None]:
    """The reference ODE solutions of this rank's images for each guidance scale, when ref-error is selected
    (bench.reference); computed once, outside every clock, cached next to the results folder."""
    if not any(spec.name == "ref-error" for spec in metric_specs):
        return {}, None
    from bench.reference import compute_references

    all_batches = [(start, min(start + batch_size, num_samples)) for start in range(0, num_samples, batch_size)]
    mine = processes.share(all_batches)
    cache_root = out_dir.resolve().parent if processes.world_size == 1 else None
    references, info = {}, {}
    for guidance in dict.fromkeys(job.guidance for job in jobs):
        refs = compute_references(registry, denoiser, mine, config.seed, num_samples, classes, guidance, cache_root)
        references[guidance] = refs
        info[str(guidance)] = refs.info
    return references, info


def _start_folder(out_dir: Path, resume: bool, config: dict) -> None:
    """config.json, and an empty results.csv for a new run (rank 0 only)."""
    subfolder(out_dir, "samples")
    write_run_config(out_dir, config, resume=resume)
    if not resume:
        start_results_csv(out_dir / "results.csv")


