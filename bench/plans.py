"""Timestep plans: which of the T training timesteps a sampler visits, computed once.

Every plan returns a strictly decreasing list of distinct timesteps in 0..T-1 of exactly
the requested length, so a first-order sampler asked for N steps makes exactly N network
calls. (Common public code gives 31 steps when 30 are asked for, e.g. range(0, 1000, 33),
or visits t=0 twice; the tests check every N from 1 to T for every plan here.)

Plans defined by noise levels ('logsnr', 'karras') need the NoiseSchedule: they place N real
times between T-1 and 0 (`logsnr_times`, `karras_times`, also used in continuous time by
`bench.orders`) and round them to trained timesteps with `distinct_timesteps`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from bench.errors import UserError
from bench.schedule import NoiseSchedule

KARRAS_RHO = 7.0  # Karras et al. (2022), Eq. 5


def _validate(num_timesteps: int, num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int):
        raise UserError(f"steps must be an integer, got {num_steps!r}")
    if not 1 <= num_steps <= num_timesteps:
        raise UserError(f"steps must be between 1 and T={num_timesteps}, got {num_steps}")


def _warped(num_timesteps: int, num_steps: int, warp: Callable[[float], float]) -> list[int]:
    """t_i = i + round(warp(i / (N - 1)) * (T - N)) for a nondecreasing warp on [0, 1].

    The `i +` term makes the sequence strictly increasing whatever the rounding, t_0 = 0 and
    t_{N-1} = T - 1, so there are exactly N distinct timesteps for every N <= T.
    """
    if num_steps == 1:
        return [num_timesteps - 1]
    span = num_timesteps - num_steps
    ascending = [i + round(warp(i / (num_steps - 1)) * span) for i in range(num_steps)]
    return ascending[::-1]


def full_plan(num_timesteps: int, num_steps: int | None = None) -> list[int]:
    """Every timestep, T-1 down to 0 (ancestral DDPM)."""
    if num_steps is not None and num_steps != num_timesteps:
        raise UserError(f"the full plan visits all T={num_timesteps} timesteps; got steps={num_steps}")
    return list(range(num_timesteps - 1, -1, -1))


def uniform_plan(num_timesteps: int, num_steps: int) -> list[int]:
    """Evenly spaced from T-1 to 0 inclusive (Nichol & Dhariwal's respacing, DDIM 'uniform')."""
    _validate(num_timesteps, num_steps)
    return _warped(num_timesteps, num_steps, lambda u: u)


def quadratic_plan(num_timesteps: int, num_steps: int) -> list[int]:
    """Quadratically spaced, dense near t=0 (Song et al. 2021, DDIM 'quad')."""
    _validate(num_timesteps, num_steps)
    return _warped(num_timesteps, num_steps, lambda u: u * u)


def linspace_plan(num_timesteps: int, num_steps: int) -> list[int]:
    """diffusers' 'linspace' spacing: round(linspace(0, T-1, N)), both ends included, .5 rounded to even."""
    _validate(num_timesteps, num_steps)
    if num_steps == 1:
        return [num_timesteps - 1]
    stride = (num_timesteps - 1) / (num_steps - 1)
    # round() is half to even, as numpy's round in diffusers (999 / 6 * 1 = 166.5 -> 166, not 167).
    # Strides >= 1 never round two values onto one integer, so these are distinct.
    return [round(i * stride) for i in range(num_steps)][::-1]


def leading_plan(num_timesteps: int, num_steps: int) -> list[int]:
    """diffusers' 'leading' spacing: i * (T // N); the first step starts below T-1.

    Lin et al. (2023) show this start leaves signal the model never saw at t = T-1; it is
    kept so users can measure that effect.
    """
    _validate(num_timesteps, num_steps)
    stride = num_timesteps // num_steps
    return [i * stride for i in range(num_steps)][::-1]


def trailing_plan(num_timesteps: int, num_steps: int) -> list[int]:
    """diffusers' 'trailing' spacing: round(T - i * T / N) - 1 (.5 to even), starting at T-1 (Lin et al. 2023)."""
    _validate(num_timesteps, num_steps)
    stride = num_timesteps / num_steps
    return [round(num_timesteps - i * stride) - 1 for i in range(num_steps)]  # half to even, as numpy


def parse_sections(sections: str | Sequence[int]) -> list[int]:
    """'10,15,20' -> [10, 15, 20], with a clear error for anything else."""
    if isinstance(sections, str):
        try:
            counts = [int(part) for part in sections.replace(" ", "").split(",") if part]
        except ValueError:
            raise UserError(f"sections must be comma-separated integers like '10,15,20', got {sections!r}") from None
    else:
        counts = [int(c) for c in sections]
    if not counts or any(c < 1 for c in counts):
        raise UserError(f"sections must be positive integers like '10,15,20', got {sections!r}")
    return counts


def sections_plan(num_timesteps: int, sections: str | Sequence[int]) -> list[int]:
    """Nichol & Dhariwal's sections: T is cut into equal parts and part k gets counts[k] steps.

    '10,15,20' with T=1000 puts 10 evenly spaced steps in 0..333, 15 in 334..666 and 20 in
    667..999, 45 in all (the T mod len(counts) leftover timesteps go to the first parts, as in
    guided-diffusion's space_timesteps).
    """
    counts = parse_sections(sections)
    base, extra = divmod(num_timesteps, len(counts))
    ascending: list[int] = []
    start = 0
    for k, count in enumerate(counts):
        size = base + (1 if k < extra else 0)
        if count > size:
            raise UserError(f"section {k} has {size} timesteps but {count} steps were asked for")
        ascending += [start + t for t in _warped(size, count, lambda u: u)[::-1]]
        start += size
    return ascending[::-1]


def logsnr_times(schedule: NoiseSchedule, num_steps: int) -> list[float]:
    """N real times, T-1 down to 0, evenly spaced in lambda = log-SNR / 2 (Lu et al. 2022a, Sec. 3.4)."""
    if getattr(schedule, "continuous", False):
        return continuous_logsnr(schedule, num_steps)
    last = schedule.num_timesteps - 1
    if num_steps == 1:
        return [float(last)]
    lam_max, lam_min = schedule.lambda_at(0), schedule.lambda_at(last)
    lams = [lam_min + i / (num_steps - 1) * (lam_max - lam_min) for i in range(num_steps)]
    return [float(last)] + [schedule.t_from_lambda(lam) for lam in lams[1:-1]] + [0.0]


def karras_times(schedule: NoiseSchedule, num_steps: int, rho: float = KARRAS_RHO) -> list[float]:
    """N real times for Karras et al.'s sigmas (2022, Eq. 5) from sigma(T-1) down to sigma(0).

    sigma_i = (sigma_max^(1/rho) + i / (N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.
    """
    if not rho > 0:
        raise UserError(f"rho must be > 0 for the karras plan, got {rho}")
    last = schedule.num_timesteps - 1
    if num_steps == 1:
        return [float(last)]
    lo, hi = schedule.sigma_at(0) ** (1 / rho), schedule.sigma_at(last) ** (1 / rho)
    sigmas = [(hi + i / (num_steps - 1) * (lo - hi)) ** rho for i in range(num_steps)]
    return [float(last)] + [schedule.t_from_sigma(s) for s in sigmas[1:-1]] + [0.0]


def distinct_timesteps(times: Sequence[float], num_timesteps: int) -> list[int]:
    """Round decreasing real times T-1 .. 0 to N distinct trained timesteps, keeping both ends.

    Each time is rounded to the nearest integer; where rounding makes a step collide with the
    one after it (towards t = 0), that step moves up to the next free integer. Nothing moves
    when nothing collides, and a move never passes the room the steps above it need.
    """
    num_steps = len(times)
    ascending = [math.floor(float(t) + 0.5) for t in reversed(times)]  # half up, as Denoiser
    out: list[int] = []
    for i, t in enumerate(ascending):
        t = min(max(t, i), num_timesteps - num_steps + i)  # leave room for the steps on either side
        out.append(t if not out else max(t, out[-1] + 1))
    return out[::-1]


def logsnr_plan(schedule: NoiseSchedule, num_steps: int) -> list[int]:
    """Evenly spaced in log-SNR from T-1 to 0, rounded to trained timesteps (DPM-Solver's 'logSNR')."""
    _validate(schedule.num_timesteps, num_steps)
    return distinct_timesteps(logsnr_times(schedule, num_steps), schedule.num_timesteps)


def karras_plan(schedule: NoiseSchedule, num_steps: int, rho: float = KARRAS_RHO) -> list[int]:
    """Karras et al.'s polynomial sigmas (rho = 7) from sigma(T-1) to sigma(0), rounded to timesteps."""
    _validate(schedule.num_timesteps, num_steps)
    return distinct_timesteps(karras_times(schedule, num_steps, rho), schedule.num_timesteps)


def discrete_plan(num_timesteps: int, num_steps: int) -> list[int]:
    """diff-sampler's 'discrete' schedule (for LDM / Stable Diffusion models) as its examples run it.

    diff-sampler places steps uniformly in the network's own time index between the times of
    sigma_max and sigma_min (schedule_rho=1 in its Stable Diffusion example; its formula leaves
    the start un-rooted, so other rho values are not what it describes). Our plans already work
    in the trained time index from T-1 to 0, so this is the time-uniform plan under that name.
    """
    return uniform_plan(num_timesteps, num_steps)



# ComfyUI's schedulers (comfy/samplers.py) and k-diffusion's sigma schedules, as plans of trained timesteps.
# ComfyUI evaluates a discrete model at fractional timesteps (log-sigma interpolation); here, as for every plan,
# times are rounded to trained timesteps (`distinct_timesteps`), so exactly N distinct ones are visited.

def exponential_plan(schedule: NoiseSchedule, num_steps: int) -> list[int]:
    """k-diffusion's get_sigmas_exponential (ComfyUI's and A1111's 'exponential'): sigma uniform in log between
    sigma(T-1) and sigma(0). Uniform in log sigma is uniform in lambda = -log sigma, so these are exactly the
    logSNR plan's times (`logsnr_times`), under k-diffusion's name."""
    return logsnr_plan(schedule, num_steps)


def beta_times(num_timesteps: int, num_steps: int, alpha: float = 0.6, beta: float = 0.6) -> list[float]:
    """ComfyUI's beta_scheduler (Lee et al. 2024, "Beta Sampling is All You Need"): t_i = (T-1) F^-1(1 - i/N),
    i = 0..N-1, with F the Beta(alpha, beta) CDF; t_0 = T-1 and the last time is (T-1) F^-1(1/N), above 0."""
    from scipy.special import betaincinv

    quantiles = [1 - i / num_steps for i in range(num_steps)]
    return [(num_timesteps - 1) * float(q) for q in betaincinv(alpha, beta, quantiles)]


def beta_plan(num_timesteps: int, num_steps: int) -> list[int]:
    """ComfyUI's 'beta' (alpha = beta = 0.6) rounded to distinct timesteps. ComfyUI rounds with numpy's rint and
    drops repeated timesteps, so it can run fewer steps than asked; here a colliding step moves up instead."""
    _validate(num_timesteps, num_steps)
    return distinct_timesteps(beta_times(num_timesteps, num_steps), num_timesteps)


def kl_optimal_times(schedule: NoiseSchedule, num_steps: int) -> list[float]:
    """The KL-optimal schedule of Align Your Steps (Sabour et al. 2024), ComfyUI's 'kl_optimal':
    sigma_i = tan((1 - i/(N-1)) arctan(sigma_max) + i/(N-1) arctan(sigma_min)), sigma(T-1) down to sigma(0)."""
    last = schedule.num_timesteps - 1
    if num_steps == 1:
        return [float(last)]
    top, bottom = math.atan(schedule.sigma_at(last)), math.atan(schedule.sigma_at(0))
    inner = [math.tan(top + i / (num_steps - 1) * (bottom - top)) for i in range(1, num_steps - 1)]
    return [float(last)] + [schedule.t_from_sigma(s) for s in inner] + [0.0]


def kl_optimal_plan(schedule: NoiseSchedule, num_steps: int) -> list[int]:
    """Align Your Steps' KL-optimal sigmas (float64 here, float32 in ComfyUI), rounded to distinct timesteps."""
    _validate(schedule.num_timesteps, num_steps)
    return distinct_timesteps(kl_optimal_times(schedule, num_steps), schedule.num_timesteps)


def sgm_uniform_plan(num_timesteps: int, num_steps: int) -> list[int]:
    """ComfyUI's 'sgm_uniform' (normal_scheduler with sgm=True, as Stability's generative-models): N + 1 times
    evenly spaced from T-1 to 0 with the last dropped, t_i = (T-1)(1 - i/N); the final step jumps to clean data
    from (T-1)/N, never visiting t = 0 (unlike 'normal', our 'linspace'). Rounded to distinct timesteps."""
    _validate(num_timesteps, num_steps)
    times = [(num_timesteps - 1) * (num_steps - i) / num_steps for i in range(num_steps)]  # one rounding: ties stay
    return distinct_timesteps(times, num_timesteps)


def simple_plan(num_timesteps: int, num_steps: int) -> list[int]:
    """ComfyUI's 'simple' scheduler: every (T/N)-th trained timestep down from the top, t_i = T-1 - int(i * (T/N))
    in ComfyUI's float arithmetic; ends at ceil(T/N) - 1, never visiting t = 0. Distinct since T/N >= 1."""
    _validate(num_timesteps, num_steps)
    stride = num_timesteps / num_steps
    return [num_timesteps - 1 - int(i * stride) for i in range(num_steps)]


# --------------------------------------------------------------------------- continuous-time paths


def _continuous_ends(path) -> tuple[float, float]:
    return float(path.t_max), float(path.t_min)


def _placed_in_t(path, num_steps: int, warp: Callable[[float], float]) -> list[float]:
    """N times from the path's raw t_max down to t_min placed by warp(u) (u = 0 at t_min), then shifted."""
    hi, lo = path.raw_t_range
    if num_steps == 1:
        return [path.shifted(hi)]
    return [path.shifted(lo + warp(1 - i / (num_steps - 1)) * (hi - lo)) for i in range(num_steps)]


def continuous_uniform(path, num_steps: int) -> list[float]:
    """Evenly spaced in the path's own time from t_max to t_min (flow: then shifted, SD3's grid)."""
    return _placed_in_t(path, num_steps, lambda u: u)


def continuous_quadratic(path, num_steps: int) -> list[float]:
    """Quadratically spaced in the path's time, dense near t_min (then shifted on flow)."""
    return _placed_in_t(path, num_steps, lambda u: u * u)


def continuous_logsnr(path, num_steps: int) -> list[float]:
    """Evenly spaced in lambda = log(alpha / sigma) between the path's ends (DPM-Solver's logSNR), exact inverse."""
    hi, lo = _continuous_ends(path)
    if num_steps == 1:
        return [hi]
    lam_hi, lam_lo = path.lambda_at(hi), path.lambda_at(lo)
    inner = [path.t_from_lambda(lam_hi + i / (num_steps - 1) * (lam_lo - lam_hi)) for i in range(1, num_steps - 1)]
    return [hi, *inner, lo]


def continuous_karras(path, num_steps: int, rho: float = KARRAS_RHO) -> list[float]:
    """Karras et al.'s sigmas (Eq. 5) in the path's EDM sigma = sigma / alpha, between its ends."""
    if not rho > 0:
        raise UserError(f"rho must be > 0 for the karras plan, got {rho}")
    hi, lo = _continuous_ends(path)
    if num_steps == 1:
        return [hi]
    top, bottom = path.sigma_at(hi) ** (1 / rho), path.sigma_at(lo) ** (1 / rho)
    inner = [path.t_from_sigma((top + i / (num_steps - 1) * (bottom - top)) ** rho) for i in range(1, num_steps - 1)]
    return [hi, *inner, lo]


def flow_sigmas(path, num_steps: int) -> list[float]:
    """diffusers' flow sigmas for multistep solvers (DPMSolverMultistep/UniPC `use_flow_sigmas`): 1 - linspace(1,
    1/T, N + 1), shifted, flipped, the last (0) dropped; so a run reproduces a diffusers pipeline's grid."""
    if path.kind != "flow":
        raise UserError(f"the flow-sigmas plan is diffusers' grid for flow models; this model's path is {path.kind}")
    total = path.path_config.num_timesteps
    alphas = [1 + i / num_steps * (1 / total - 1) for i in range(num_steps + 1)]
    return [path.shifted(1 - a) for a in alphas][::-1][:-1]


CONTINUOUS_PLANS: dict[str, Callable[..., list[float]]] = {
    "uniform": continuous_uniform, "time-uniform": continuous_uniform, "quadratic": continuous_quadratic,
    "logsnr": continuous_logsnr, "karras": continuous_karras, "flow-sigmas": flow_sigmas,
}


def continuous_plan(name: str, path, num_steps: int | None, **options) -> list[float]:
    """A plan of real times on a continuous path; the plans over trained integer timesteps are refused."""
    if name not in CONTINUOUS_PLANS:
        raise UserError(f"timestep plan {name!r} picks trained integer timesteps and cannot run on this model's "
                        f"{path.kind} path (continuous time); use one of {', '.join(CONTINUOUS_PLANS)}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= path.num_timesteps:
        raise UserError(f"steps must be between 1 and {path.num_timesteps}, got {num_steps!r}")
    kwargs = {"rho": options["rho"]} if name == "karras" and options.get("rho") is not None else {}
    times = CONTINUOUS_PLANS[name](path, num_steps, **kwargs)
    if any(not b < a for a, b in zip(times, times[1:])):
        raise UserError(f"plan {name!r} with {num_steps} steps gives times that are not strictly decreasing on this "
                        f"{path.kind} path: {times}")
    return times


PLANS: dict[str, Callable[..., list[int]]] = {
    "full": full_plan,
    "uniform": uniform_plan,
    "time-uniform": uniform_plan,
    "quadratic": quadratic_plan,
    "linspace": linspace_plan,
    "leading": leading_plan,
    "trailing": trailing_plan,
    "logsnr": logsnr_plan,
    "karras": karras_plan,
    "discrete": discrete_plan,
    "flow-sigmas": flow_sigmas,
    "exponential": exponential_plan,
    "beta": beta_plan,
    "kl_optimal": kl_optimal_plan,
    "sgm_uniform": sgm_uniform_plan,
    "simple": simple_plan,
}
# plans that read alpha_bar and so need the NoiseSchedule
SCHEDULE_PLANS = ("logsnr", "karras", "exponential", "kl_optimal")
PLAN_OPTIONS = {"karras": ("rho",)}    # plan parameters, consumed here and never passed to samplers


def make_plan(name: str, schedule_or_T: NoiseSchedule | int, num_steps: int | None, **options) -> list[int]:
    """Look a plan up by name and compute it (sections are handled by `sections_plan`).

    `schedule_or_T` is the NoiseSchedule, or just T for plans that only need the number of
    timesteps. `options` are plan parameters such as rho; those a plan does not use are ignored.
    """
    if name not in PLANS:
        raise UserError(f"unknown timestep plan {name!r}; expected one of {', '.join(PLANS)}")
    if getattr(schedule_or_T, "continuous", False):
        return continuous_plan(name, schedule_or_T, num_steps, **options)
    if name == "flow-sigmas":
        raise UserError("the flow-sigmas plan is diffusers' grid for flow models; this model's path is vp-discrete")
    if isinstance(schedule_or_T, NoiseSchedule):
        schedule, num_timesteps = schedule_or_T, schedule_or_T.num_timesteps
    else:
        schedule, num_timesteps = None, int(schedule_or_T)
    if name == "full":
        return full_plan(num_timesteps, num_steps)
    if name in SCHEDULE_PLANS:
        if schedule is None:
            raise UserError(f"timestep plan {name!r} places steps by noise level and needs the model's noise "
                            f"schedule, not just T={num_timesteps}")
        kwargs = {k: options[k] for k in PLAN_OPTIONS.get(name, ()) if options.get(k) is not None}
        return PLANS[name](schedule, num_steps, **kwargs)
    return PLANS[name](num_timesteps, num_steps)
