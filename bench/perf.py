"""`python -m bench perf`: the speed targets, checked by measurement rather than by unit tests.

1. Cost grows linearly with steps (seed 001 claims sampling is quadratic; it is not: each
   step is one network call). 2. The harness's own overhead (time outside the network)
   stays under 5% of sampling time. 3. Optionally, the default run finishes within its
   budget (5 minutes on CPU, 15 on CUDA).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.config import RunConfig
from bench.device import pick_device
from bench.errors import UserError
from bench.harness import Harness, load_model, run_benchmark
from bench.selection import plan_jobs, resolve_samplers

OVERHEAD_TARGET = 0.05
LINEARITY_R2 = 0.99
DEFAULT_RUN_BUDGET_S = {"cpu": 300, "cuda": 900}


def add_arguments(p) -> None:
    p.add_argument("--model", help="model to time (default: the embedded default for the device)")
    p.add_argument("--device", default="auto")
    p.add_argument("--sampler", default="ddim", help="sampler for the linearity check (default ddim)")
    p.add_argument("--steps", default="10,20,50,100,200", help="step counts for the linearity check")
    p.add_argument("--overhead-steps", type=int, default=50, help="steps for the overhead check")
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per point (median is used)")
    p.add_argument("--full-run", action="store_true", help="also time the whole default `run --samplers all`")
    p.add_argument("--out", help="write the measurements as JSON here")


def _harness(model: str | None, device_arg: str, num_samples: int, registry, scratch: Path):
    """A harness that times sampling only: no metrics, no images written."""
    device = pick_device(device_arg)
    from bench.harness import DEFAULT_MODEL
    name = model or DEFAULT_MODEL[device.type]
    denoiser = load_model(name, registry, device)
    config = RunConfig(model=name, num_samples=num_samples, batch_size=num_samples, metrics=("none",),
                       grid_images=0, trajectory_images=0)
    harness = Harness(config, registry, scratch, denoiser, device, name, num_samples, num_samples, [], "perf")
    return harness, denoiser


def _time_job(harness: Harness, job, repeats: int) -> dict:
    rows = [harness.run_job(job, None) for _ in range(repeats)]
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        raise RuntimeError(bad[0]["error"])
    return {"steps": job.steps, "nfe": rows[0]["nfe"], "wall_s": statistics.median(r["wall_s"] for r in rows),
            "overhead_frac": statistics.median(r["overhead_frac"] for r in rows)}


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares y = a + b x; returns (a, b, R^2)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys) or 1e-300
    return a, b, 1 - ss_res / ss_tot


def run_perf(args) -> int:
    """Measure the targets, print them, write JSON with --out; exit 1 when one is missed."""
    if args.out:  # checked before minutes of measuring, not after
        out = Path(args.out)
        if out.is_dir() or not out.parent.is_dir():
            raise UserError(f"--out {out}: expected a file in an existing folder")
        if out.exists():
            raise UserError(f"--out {out} already exists; name a new file")
    with tempfile.TemporaryDirectory() as scratch:
        return _run_perf(args, Path(scratch))


def _run_perf(args, scratch: Path) -> int:
    from bench.plugins import load_registry
    registry = load_registry(tuple(getattr(args, "plugin", None) or ()))
    harness, denoiser = _harness(args.model, args.device, args.num_samples, registry, scratch)
    T = denoiser.num_timesteps
    steps = tuple(int(s) for s in args.steps.split(","))
    report: dict = {"model": harness.model_name, "device": str(harness.device), "num_samples": args.num_samples}

    choice = resolve_samplers([args.sampler], registry)
    points = [_time_job(harness, job, args.repeats) for job in plan_jobs(choice, steps, denoiser.schedule)]
    a, b, r2 = linear_fit([p["nfe"] for p in points], [p["wall_s"] for p in points])
    report["linearity"] = {"points": points, "intercept_s": a, "s_per_nfe": b, "r2": r2,
                           "passed": r2 >= LINEARITY_R2}
    print(f"linearity ({args.sampler}): wall = {a:.4f} s + {b * 1000:.3f} ms x NFE, R^2 = {r2:.4f} "
          f"({'ok' if r2 >= LINEARITY_R2 else 'NOT linear'}, target R^2 >= {LINEARITY_R2})")

    overheads = {}
    for sampler_choice in resolve_samplers(["all"], registry):
        fixed = sampler_choice.spec.fixed_steps(T, sampler_choice.params)
        if fixed is not None and fixed != args.overhead_steps:
            continue  # full-schedule samplers share the ancestral loop timed through the stride samplers
        job = plan_jobs([sampler_choice], (args.overhead_steps,), denoiser.schedule)[0]
        overheads[sampler_choice.label] = _time_job(harness, job, args.repeats)["overhead_frac"]
        print(f"overhead {sampler_choice.label:<20} {overheads[sampler_choice.label]:.2%}")
    worst = max(overheads.values())
    report["overhead"] = {"per_sampler": overheads, "worst": worst, "target": OVERHEAD_TARGET,
                          "passed": worst < OVERHEAD_TARGET}
    print(f"worst overhead {worst:.2%} ({'ok' if worst < OVERHEAD_TARGET else 'ABOVE'} target {OVERHEAD_TARGET:.0%})")

    if args.full_run:
        budget = DEFAULT_RUN_BUDGET_S[harness.device.type]
        began = time.perf_counter()
        run_benchmark(RunConfig(device=args.device, model=args.model), registry, out=str(scratch / "run"),
                      quiet=True)
        elapsed = time.perf_counter() - began
        report["default_run"] = {"seconds": elapsed, "budget_s": budget, "passed": elapsed <= budget}
        print(f"default run: {elapsed:.1f} s ({'ok' if elapsed <= budget else 'OVER'} budget {budget} s)")

    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    passed = all(v.get("passed", True) for v in report.values() if isinstance(v, dict))
    return 0 if passed else 1
