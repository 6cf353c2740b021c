"""`python -m bench tune-plan`: timestep plans tuned to a model, by distance to the exact trajectory.

Method: coordinate descent on the plan's interior times, minimising the mean ref_rmse (bench.reference:
RMS distance to the probability-flow ODE solution from the same x_T) of the solver's output on calibration
images. The ends stay where every plan puts them (the path's noisiest time and t_min, so the final
denoising step is unchanged); each sweep visits the interior times in turn and tries `CANDIDATES` values
spread over the open interval between its neighbours (integer timesteps on a discrete-time model, real
times on a continuous path), keeping a move only when it lowers the calibration error, with the search
window halved after each sweep. Because the error of the whole solver run is what is measured, multistep
solvers (whose error depends on every step) are handled the same as single-step ones. This is the
"optimised time steps" idea of Xue et al. (2024) with the distance to the teacher ODE solution as the
objective, as in GITS (Chen et al. 2024), searched by coordinate descent instead of dynamic programming.
It starts from the best of the solver's hand-made plans (uniform, quadratic, logsnr, karras) on the same
calibration images (descending from the best two and keeping the better result) and never returns a plan
worse than that start.

Calibration images are disjoint from any run's evaluation images: their noise comes from a separate seed
stream (`calibration_seed(seed)`), so image i of a calibration set never shares x_T with image i of a run.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

from bench.errors import UserError

PLAN_FILE_VERSION = 1
START_PLANS = ("uniform", "quadratic", "logsnr", "karras")
CANDIDATES = 8
SWEEPS = 6
STARTS = 2  # coordinate descent from the best STARTS hand-made plans; the better result is kept
CALIBRATION_STREAM = 0x5EED_CA11  # added to the run seed (mod 2^63) for the calibration images' noise


def calibration_seed(seed: int) -> int:
    """The seed stream of the calibration images, disjoint from the run seed's."""
    return (seed + CALIBRATION_STREAM) % (2**63)


# --------------------------------------------------------------------------- plan files


def _read_plan_file(path: str) -> dict:
    file = Path(path)
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise UserError(f"plan file {path!r} does not exist (write one with python -m bench tune-plan)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"plan file {path!r} is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("version") != PLAN_FILE_VERSION or \
            not isinstance(data.get("plans"), dict):
        raise UserError(f"plan file {path!r} is not a sampler-bench plan file (expected version {PLAN_FILE_VERSION} "
                        "and a 'plans' object)")
    return data


def check_times(times, schedule, where: str) -> list:
    """A plan read from a file: strictly decreasing, distinct, within the model's times (integers on
    vp-discrete), or a UserError naming the file and entry."""
    if not isinstance(times, list) or not times or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in times):
        raise UserError(f"{where}: timesteps must be a non-empty list of finite numbers")
    if any(not b < a for a, b in zip(times, times[1:])):
        raise UserError(f"{where}: timesteps must be strictly decreasing and distinct, got {times}")
    if getattr(schedule, "continuous", False):
        if times[0] > schedule.t_max * (1 + 1e-9) or times[-1] <= 0:
            raise UserError(f"{where}: times must lie in (0, {schedule.t_max:g}] on this {schedule.kind} path")
        return [float(t) for t in times]
    if not all(float(t).is_integer() for t in times) or times[0] > schedule.num_timesteps - 1 or times[-1] < 0:
        raise UserError(f"{where}: timesteps must be integers in 0..{schedule.num_timesteps - 1}")
    return [int(t) for t in times]


def plan_from_file(path: str, sampler: str, schedule, steps: int | None) -> list:
    """The tuned plan for `sampler` with `steps` plan times from a plan file (the entry with that step count)."""
    data = _read_plan_file(path)
    entries = {label: e for label, e in data["plans"].items() if isinstance(e, dict) and e.get("sampler") == sampler}
    if not entries:
        raise UserError(f"plan file {path!r} has no plan for sampler {sampler!r} (it has: "
                        f"{', '.join(sorted(data['plans'])) or 'none'})")
    if len(entries) > 1:
        raise UserError(f"plan file {path!r} has several plans for sampler {sampler!r} ({', '.join(entries)}); "
                        "tune them into separate files")
    label, entry = next(iter(entries.items()))
    by_steps = entry.get("steps") if isinstance(entry.get("steps"), dict) else {}
    if steps is None or str(steps) not in by_steps:
        raise UserError(f"plan file {path!r} has no {label} plan with {steps} steps (it has "
                        f"{', '.join(sorted(by_steps, key=int)) or 'none'}); run with --steps one of those")
    times = by_steps[str(steps)].get("timesteps") if isinstance(by_steps[str(steps)], dict) else None
    times = check_times(times, schedule, f"plan file {path!r}, {label} @ {steps}")
    if len(times) != steps:
        raise UserError(f"plan file {path!r}, {label} @ {steps}: {len(times)} timesteps listed, not {steps}")
    return times


def check_plan_files_for(jobs, denoiser) -> None:
    """Every plan file a run uses was tuned on this model (fingerprint) and path, or a one-line error naming both."""
    from bench.reference import model_fingerprint

    fingerprint = None
    for job in jobs:
        plan = str(job.choice.params.get("plan", ""))
        if not plan.startswith("file:"):
            continue
        data = _read_plan_file(plan[5:])
        fingerprint = fingerprint or model_fingerprint(denoiser)
        if data.get("model_fingerprint") != fingerprint:
            raise UserError(f"plan file {plan[5:]!r} was tuned on model {data.get('model')!r} (fingerprint "
                            f"{data.get('model_fingerprint')}), not on this model {denoiser.info.name!r} "
                            f"(fingerprint {fingerprint}); tune a plan for this model")


# --------------------------------------------------------------------------- the tuner


def _error(spec, params, denoiser, times, references, indices, noise_seed) -> float:
    from bench.sampling import batch_noise, sample

    noise = batch_noise(noise_seed, indices, denoiser.image_shape, denoiser.device)
    with torch.no_grad():
        x = sample(spec, params, denoiser, times, indices, noise=noise)
    if noise.draws:
        raise UserError(f"{spec.name} draws fresh noise (a stochastic sampler): tune-plan tunes deterministic "
                        "samplers, whose distance to the ODE solution is meaningful")
    return float((x.to(torch.float64) - references.to(torch.float64)).reshape(len(indices), -1).pow(2).mean(1)
                 .sqrt().mean())


def _candidates(low, high, current, width: float, integer: bool) -> list:
    """Up to CANDIDATES values in the open interval (low, high) around `current`, `width` wide."""
    lo, hi = max(low, current - width / 2), min(high, current + width / 2)
    values = [lo + (hi - lo) * (k + 0.5) / CANDIDATES for k in range(CANDIDATES)]
    if integer:
        values = sorted({int(round(v)) for v in values} - {current})
        return [v for v in values if low < v < high]
    return [v for v in values if low < v < high and v != current]


def _descend(spec, params, denoiser, plan: list, error: float, integer: bool, references, indices,
             noise_seed) -> tuple[list, float, int]:
    """Coordinate descent from `plan` (module docstring); returns the plan, its error and the solver runs made."""
    runs, width = 0, float(plan[0] - plan[-1])
    for _sweep in range(SWEEPS):
        for i in range(1, len(plan) - 1):
            for value in _candidates(plan[i + 1], plan[i - 1], plan[i], width, integer):
                trial = plan[:i] + [value] + plan[i + 1:]
                trial_error = _error(spec, params, denoiser, trial, references, indices, noise_seed)
                runs += 1
                if trial_error < error:
                    plan, error = trial, trial_error
        width /= 2
    return plan, error, runs


def tune_one(spec, params, denoiser, steps: int, references, indices, noise_seed) -> dict:
    """Coordinate descent from the best hand-made plan (module docstring)."""
    schedule = denoiser.schedule
    integer = not getattr(schedule, "continuous", False)
    starts = {}
    for name in START_PLANS:
        if "plan" in spec.params and name not in (spec.params["plan"].choices or ()):
            continue
        try:
            times = spec.timesteps(schedule, steps, {**params, "plan": name})
        except UserError:
            continue
        starts[name] = (list(times), _error(spec, {**params, "plan": name}, denoiser, times, references, indices,
                                            noise_seed))
    if not starts:
        raise UserError(f"{spec.name}: none of the start plans {', '.join(START_PLANS)} runs with {steps} steps")
    ranked = sorted(starts, key=lambda k: starts[k][1])
    start_name = ranked[0]
    evaluations = len(starts)
    best, best_error = list(starts[start_name][0]), starts[start_name][1]
    for name in ranked[:STARTS]:
        plan, error, runs = _descend(spec, params, denoiser, list(starts[name][0]), starts[name][1], integer,
                                     references, indices, noise_seed)
        evaluations += runs
        if error < best_error:
            best, best_error = plan, error
    return {"timesteps": [int(t) if integer else float(t) for t in best], "calibration_ref_rmse": best_error,
            "start_plan": start_name, "start_ref_rmse": starts[start_name][1],
            "hand_made": {k: v[1] for k, v in starts.items()}, "solver_runs": evaluations}


def run_tune(args) -> int:
    """Entry point of `bench tune-plan`."""
    from bench.plugins import load_registry
    from bench.reference import compute_references, model_fingerprint
    from bench.selection import resolve_samplers

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        nfes = [int(v) for v in args.nfe.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--nfe must be comma-separated integers like 5,10, got {args.nfe!r}") from None
    if not nfes or any(n < 1 for n in nfes):
        raise UserError(f"--nfe values must be integers >= 1, got {args.nfe!r}")
    if args.calibration_images < 1 or args.calibration_images > 100_000:
        raise UserError(f"--calibration-images must be in 1..100000, got {args.calibration_images}")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserError(f"--out {out} exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    registry = load_registry()
    choices = resolve_samplers(args.samplers, registry)
    denoiser = registry.load_model(args.model, torch.device("cpu"))
    if denoiser.num_classes:
        raise UserError("tune-plan tunes unconditional models; this model is class-conditional")
    schedule = denoiser.schedule
    plans_to_make = []
    for choice in choices:
        if choice.spec.adaptive:
            raise UserError(f"{choice.label} chooses its own steps (an adaptive sampler): there is no plan to tune; "
                            "change its rtol/atol instead")
        for nfe in nfes:
            steps = _steps_for(choice, schedule, nfe)
            if steps is None:
                raise UserError(f"{choice.label}: no plan of at least 3 steps makes exactly {nfe} network calls")
            plans_to_make.append((choice, nfe, steps))
    seed = calibration_seed(args.seed)
    count = args.calibration_images
    began = time.perf_counter()
    references = compute_references(registry, denoiser, [(0, count)], seed, count).for_images(0, count)
    reference_s = time.perf_counter() - began
    indices = torch.arange(count)
    plans: dict = {}
    for choice, nfe, steps in plans_to_make:
        began = time.perf_counter()
        result = tune_one(choice.spec, choice.params, denoiser, steps, references, indices, seed)
        result.update(nfe=nfe, seconds=round(time.perf_counter() - began, 2),
                      network_calls=result["solver_runs"] * nfe * count)
        entry = plans.setdefault(choice.label, {"sampler": choice.spec.name, "params": dict(choice.params),
                                                "steps": {}})
        entry["steps"][str(steps)] = result
        print(f"{choice.label} @ {steps} steps ({nfe} NFE): calibration ref_rmse {result['start_ref_rmse']:.4g} "
              f"({result['start_plan']}) -> {result['calibration_ref_rmse']:.4g} in {result['seconds']:.1f} s",
              file=sys.stderr)
    data = {"version": PLAN_FILE_VERSION, "tool": "sampler-bench", "model": args.model,
            "model_fingerprint": model_fingerprint(denoiser), "path": getattr(schedule, "kind", "vp-discrete"),
            "method": "coordinate descent on the interior plan times minimising calibration ref_rmse (bench.tune)",
            "calibration": {"images": count, "seed": args.seed, "noise_seed": seed,
                            "reference_seconds": round(reference_s, 2)},
            "command": shlex.join(["python", "-m", "bench", *sys.argv[1:]]), "plans": plans}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


def _steps_for(choice, schedule, nfe: int) -> int | None:
    """The number of plan times whose expected NFE is exactly `nfe` (at least 3: two ends and one to move)."""
    for steps in range(3, min(nfe, schedule.num_timesteps) + 1):
        try:
            times = choice.spec.timesteps(schedule, steps, choice.params)
        except UserError:
            continue
        if choice.spec.expected_nfe(times, choice.params) == nfe:
            return steps
    return None


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Add `tune-plan` to the CLI's subparsers."""
    parser = subparsers.add_parser("tune-plan", help="tune a timestep plan per sampler and NFE to a model, by "
                                   "distance to the exact trajectory on calibration images (writes PLAN.json)")
    parser.add_argument("--model", required=True, help="registered model name or weight file")
    parser.add_argument("--samplers", nargs="+", required=True, metavar="SPEC", help="deterministic samplers")
    parser.add_argument("--nfe", required=True, help="comma-separated network-call budgets, e.g. 5,10")
    parser.add_argument("--calibration-images", type=int, default=256, help="images to tune on (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="the calibration seed stream is derived from it")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", required=True, help="plan file to write (JSON)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.set_defaults(func=run_tune)
    return parser
