"""Order of accuracy of the deterministic solvers, measured against the exact ODE map of a Gaussian.

For a single Gaussian the probability-flow ODE is solved in closed form (the oracle's
`exact_ode_map`), so a solver's error can be measured without trusting any other implementation:
  * float64 throughout, on the one-component oracle (model 'gaussian-single', a continuous-time
    model, so grid times are used as given);
  * a logSNR-uniform grid in continuous time from t = T-1 to t = 0;
  * the state the solver reports (callback) at the last grid point, before the final jump to
    sigma = 0 (a denoising step, scored separately by the conformance tests), against the exact map;
  * the order is minus the slope of log(error) against log(NFE), fitted where the error is far
    above round-off.
A multistep method's lower-order warm-up caps its global order, so each solver that accepts
`history` (see `bench.ode.Evaluation`) is measured twice: with its first SEED_POINTS evaluations
taken from the exact trajectory (the method's own order) and with its standard warm-up (what users
get). `python -m bench orders` prints the table that the README shows.
"""

from __future__ import annotations

import argparse
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.errors import UserError
from bench.ode import Evaluation
from bench.plans import logsnr_times

ORDER_MODEL = "gaussian-single"
STEPS = (20, 28, 40, 57, 80, 113, 160, 226, 320)  # grid sizes; NFE 20..320 for one-call-per-step solvers
SEED_POINTS = 3        # exact evaluations seeded ahead of the run (enough for 4th-order multistep methods)
ROUND_OFF_FLOOR = 1e-11  # errors below this are round-off, not truncation, and are left out of the fit
NUM_IMAGES = 16


@dataclass(frozen=True)
class OrderCase:
    """One row of the table: a sampler (or preset) with parameters and the order its paper claims."""

    label: str
    sampler: str
    nominal: int
    params: dict[str, Any] = field(default_factory=dict)


ORDER_CASES: tuple[OrderCase, ...] = (
    OrderCase("ddim", "ddim", 1),
    OrderCase("euler", "euler", 1),
    OrderCase("heun", "heun", 2),
    OrderCase("dpm-solver-2", "dpm-solver-2", 2),
    OrderCase("dpmpp-2m", "dpm-solver++", 2, {"order": 2}),
    OrderCase("dpmpp-3m", "dpm-solver++", 3, {"order": 3}),
    OrderCase("unip-2", "unipc", 2, {"order": 2, "corrector": False}),  # UniPC's predictor alone
    OrderCase("unipc-2-bh2", "unipc-bh2", 3),  # UniC raises UniP-p to p + 1 (Zhao et al. 2023, Thm 3.1)
    OrderCase("unipc-3-bh1", "unipc-bh1", 4),
    OrderCase("unipc-3-bh2", "unipc", 4),
    OrderCase("deis-2", "deis-2", 2),
    OrderCase("deis-3", "deis", 3),
    OrderCase("ipndm-4", "ipndm", 4),  # equal-step Adams-Bashforth weights: 2 on unequal steps
    OrderCase("ipndm-v-4", "ipndm-v", 4),
    OrderCase("plms", "plms", 4),  # the Adams-Bashforth order of its weights; equal-step weights as iPNDM
    OrderCase("flow-heun", "flow-heun", 2),          # in the path's own time: continuous paths only
    OrderCase("flow-midpoint", "flow-midpoint", 2),
    OrderCase("lms", "lms", 4),  # k-diffusion's LMS: Adams-Bashforth in EDM sigma on the actual (unequal) steps
    # more solvers: add OrderCase rows above this line
)


@dataclass(frozen=True)
class OrderResult:
    case: OrderCase
    nfe: list[int]
    errors: list[float]
    seeded_errors: list[float] | None

    @property
    def order(self) -> float:
        return fit_order(self.nfe, self.errors)

    @property
    def seeded_order(self) -> float | None:
        return None if self.seeded_errors is None else fit_order(self.nfe, self.seeded_errors)


def fit_order(nfe: list[int], errors: list[float]) -> float:
    """-slope of the least-squares line through (log NFE, log error), over errors above round-off."""
    points = [(math.log(n), math.log(e)) for n, e in zip(nfe, errors) if e > ROUND_OFF_FLOOR]
    if len(points) < 2:
        return math.nan
    mean_x = sum(p[0] for p in points) / len(points)
    mean_y = sum(p[1] for p in points) / len(points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
    return -slope


def accepts_history(fn) -> bool:
    """Whether a sampler function takes the seeded-history keyword (multistep methods)."""
    return "history" in inspect.signature(fn).parameters


def _no_noise(step):
    raise RuntimeError("a deterministic solver asked for noise")


def solver_error(spec, params: dict, denoiser, steps: int, seeded: bool, num_images: int = NUM_IMAGES) -> float:
    """RMS error of the solver's state at t = 0 against the exact ODE map, on a continuous logSNR grid."""
    schedule, mixture = denoiser.schedule, denoiser.mixture
    grid = logsnr_times(schedule, steps)
    generator = torch.Generator().manual_seed(0)
    x_T = torch.randn(num_images, *denoiser.image_shape, generator=generator, dtype=torch.float64)
    a_T = schedule.alpha_bar_at(grid[0])

    def exact(t):
        return mixture.exact_ode_map(x_T, a_T, schedule.alpha_bar_at(t))

    kwargs = spec.sampler_kwargs(params)
    x, run_grid = x_T, grid
    if seeded:
        kwargs["history"] = [Evaluation(t, exact(t), denoiser(exact(t), t)) for t in grid[:SEED_POINTS]]
        x, run_grid = exact(grid[SEED_POINTS]), grid[SEED_POINTS:]
    seen = {}
    spec.fn(denoiser, x, run_grid, _no_noise, callback=lambda state: seen.update(state), **kwargs)
    if seen.get("t") != run_grid[-1]:
        raise RuntimeError(f"{spec.name}: the callback did not report the state at the last grid time")
    return float((seen["x"] - exact(grid[-1])).pow(2).mean().sqrt())


def measure(case: OrderCase, registry, denoiser, steps=STEPS, num_images: int = NUM_IMAGES) -> OrderResult:
    """Errors of one solver at every grid size, with the standard warm-up and (if it has history) seeded."""
    if case.sampler in registry.presets:
        preset = registry.presets[case.sampler]
        spec = registry.samplers[preset.sampler]
        params = spec.resolve_params({**preset.params, **case.params})
    else:
        spec = registry.sampler(case.sampler)
        params = spec.resolve_params(case.params)
    nfe = [spec.expected_nfe(logsnr_times(denoiser.schedule, n), params) for n in steps]
    errors = [solver_error(spec, params, denoiser, n, False, num_images) for n in steps]
    seeded = None
    if accepts_history(spec.fn):
        seeded = [solver_error(spec, params, denoiser, n, True, num_images) for n in steps]
    return OrderResult(case, nfe, errors, seeded)


PATH_ORDER_MODELS = ("gaussian-single", "gaussian-single-vp-continuous", "gaussian-single-ve", "gaussian-single-flow")


def runs_on(case: OrderCase, registry, denoiser) -> bool:
    """Whether the case's sampler runs on the denoiser's path (flow-time steppers need continuous time)."""
    name = registry.presets[case.sampler].sampler if case.sampler in registry.presets else case.sampler
    paths = registry.samplers[name].paths
    return paths is None or getattr(denoiser.schedule, "kind", "vp-discrete") in paths


def path_order_table(registry, models=PATH_ORDER_MODELS, steps=STEPS, num_images: int = NUM_IMAGES,
                     cases=ORDER_CASES) -> str:
    """One column per path kind: each solver's own order (seeded where it takes history) on that path's oracle."""
    denoisers = [registry.model(m).load("cpu") for m in models]
    kinds = [getattr(d.schedule, "kind", "vp-discrete") for d in denoisers]
    lines = ["| solver | nominal order | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for case in cases:
        cells = []
        for denoiser in denoisers:
            if not runs_on(case, registry, denoiser):
                cells.append("n/a")
                continue
            r = measure(case, registry, denoiser, steps, num_images)
            cells.append(f"{r.seeded_order if r.seeded_order is not None else r.order:.2f}")
        lines.append(f"| {case.label} | {case.nominal} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def order_table(results: list[OrderResult]) -> str:
    """The markdown table the README shows (singlestep solvers have no warm-up: both columns agree)."""
    lines = ["| solver | nominal order | measured order, own (seeded history) | measured order, standard warm-up "
             "| error (NFE), coarsest grid | error (NFE), finest grid |",
             "|---|---|---|---|---|---|"]
    for r in results:
        own = r.seeded_order if r.seeded_order is not None else r.order
        lines.append(f"| {r.case.label} | {r.case.nominal} | {own:.2f} | {r.order:.2f} "
                     f"| {r.errors[0]:.1e} ({r.nfe[0]}) | {r.errors[-1]:.1e} ({r.nfe[-1]}) |")
    return "\n".join(lines)


def run_orders(args) -> int:
    """`python -m bench orders`: measure and print the order table."""
    from bench.plugins import load_registry

    torch.set_num_threads(max(1, args.num_threads))
    registry = load_registry()
    models = [m.strip() for m in (args.model or ORDER_MODEL).split(",") if m.strip()]
    for name in models:
        registry.model(name)  # an unknown model is a one-line error naming the registered ones
    for name in models:
        denoiser = registry.model(name).load("cpu")
        if not hasattr(denoiser, "mixture") or denoiser.mixture.means.shape[0] != 1:
            raise UserError(f"--model {name}: orders need an exact single-Gaussian oracle with a closed-form ODE "
                            f"map, e.g. {', '.join(PATH_ORDER_MODELS)}")
    denoiser = registry.model(models[0]).load("cpu")
    cases = ORDER_CASES
    if args.solvers:
        wanted = [s.strip() for s in args.solvers.split(",") if s.strip()]
        known = {c.label: c for c in ORDER_CASES}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise UserError(f"unknown solver {unknown[0]!r} for orders; expected one of {', '.join(known)}")
        cases = tuple(known[w] for w in wanted)
    try:
        steps = tuple(int(s) for s in args.steps.split(","))
    except ValueError:
        raise UserError(f"--steps must be comma-separated integers like '20,40,80', got {args.steps!r}") from None
    if len(steps) < 2 or min(steps) < SEED_POINTS + 2 or max(steps) > denoiser.num_timesteps:
        raise UserError(f"--steps needs at least two grid sizes in {SEED_POINTS + 2}..{denoiser.num_timesteps}")
    if len(models) > 1:
        print(path_order_table(registry, models, steps, args.images, cases))
        return 0
    print(order_table([measure(case, registry, denoiser, steps, args.images) for case in cases
                       if runs_on(case, registry, denoiser)]))
    return 0


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Add `orders` to the CLI's subparsers."""
    parser = subparsers.add_parser("orders", help="measure each deterministic solver's order of accuracy against "
                                   "the exact ODE map of a Gaussian (prints a markdown table)")
    parser.add_argument("--solvers", default="", help=f"comma-separated rows (default: all of "
                        f"{', '.join(c.label for c in ORDER_CASES)})")
    parser.add_argument("--steps", default=",".join(map(str, STEPS)), help="grid sizes to fit over")
    parser.add_argument("--images", type=int, default=NUM_IMAGES, help="trajectories per grid size")
    parser.add_argument("--num-threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--model", default=None, help=f"the exact single-Gaussian oracle (default {ORDER_MODEL}); "
                        "comma-separated for one column per path, e.g. " + ",".join(PATH_ORDER_MODELS))
    parser.set_defaults(func=run_orders)
    return parser
