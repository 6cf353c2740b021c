"""Timestep plans: which of the T training timesteps a sampler visits, computed once.

Every plan returns a strictly decreasing list of distinct timesteps in 0..T-1 of exactly
the requested length, so a first-order sampler asked for N steps makes exactly N network
calls. (Common public code gives 31 steps when 30 are asked for, e.g. range(0, 1000, 33),
or visits t=0 twice; the tests check every N from 1 to T for every plan here.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from bench.errors import UserError


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
    """diffusers' 'linspace' spacing: round(linspace(0, T-1, N)), both ends included."""
    _validate(num_timesteps, num_steps)
    if num_steps == 1:
        return [num_timesteps - 1]
    stride = (num_timesteps - 1) / (num_steps - 1)
    # Strides >= 1 never round two values onto one integer, so these are distinct.
    return [int(math.floor(i * stride + 0.5)) for i in range(num_steps)][::-1]


def leading_plan(num_timesteps: int, num_steps: int) -> list[int]:
    """diffusers' 'leading' spacing: i * (T // N); the first step starts below T-1.

    Lin et al. (2023) show this start leaves signal the model never saw at t = T-1; it is
    kept so users can measure that effect.
    """
    _validate(num_timesteps, num_steps)
    stride = num_timesteps // num_steps
    return [i * stride for i in range(num_steps)][::-1]


def trailing_plan(num_timesteps: int, num_steps: int) -> list[int]:
    """diffusers' 'trailing' spacing: round(T - i * T / N) - 1, starting at T-1 (Lin et al. 2023)."""
    _validate(num_timesteps, num_steps)
    stride = num_timesteps / num_steps
    return [int(math.floor(num_timesteps - i * stride + 0.5)) - 1 for i in range(num_steps)]


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

    '10,15,20' with T=1000 puts 10 evenly spaced steps in 0..332, 15 in 333..665 and 20 in
    666..999, 45 in all.
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


PLANS: dict[str, Callable[[int, int], list[int]]] = {
    "full": full_plan,
    "uniform": uniform_plan,
    "quadratic": quadratic_plan,
    "linspace": linspace_plan,
    "leading": leading_plan,
    "trailing": trailing_plan,
}


def make_plan(name: str, num_timesteps: int, num_steps: int | None) -> list[int]:
    """Look a plan up by name and compute it (sections are handled by `sections_plan`)."""
    if name not in PLANS:
        raise UserError(f"unknown timestep plan {name!r}; expected one of {', '.join(PLANS)}")
    if name == "full":
        return full_plan(num_timesteps, num_steps)
    return PLANS[name](num_timesteps, num_steps)
