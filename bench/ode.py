"""What the ODE solvers share: noise levels in the papers' variables, step orders, seeded history, NFE rules.

Conventions (VP, as the schedule): x_t = alpha_t x_0 + sigma_t eps with alpha_t = sqrt(alpha_bar),
sigma_t = sqrt(1 - alpha_bar), lambda_t = log(alpha_t / sigma_t) (DPM-Solver), and EDM's
sigma_edm = sigma_t / alpha_t with x_edm = x / alpha_t (Karras et al. 2022). The last grid
time is followed by the jump to clean data (alpha = 1, sigma = 0, lambda = +inf), which every
solver here takes as the denoising step x_0 = x0_hat(x, t_last).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from bench.errors import UserError
from bench.plans import KARRAS_RHO, PLANS
from bench.registry import Param

AFS_PARAM = Param(False, "analytical first step: use x_T as the first eps, saving one call")


def plan_params(default: str) -> dict[str, Param]:
    """The timestep plan (any but 'full') and the Karras exponent, declared the same way by every solver."""
    return {"plan": Param(default, "timestep plan", tuple(p for p in PLANS if p != "full")),
            "rho": Param(KARRAS_RHO, "Karras plan exponent (plan=karras)", low=1e-3, high=100.0)}


@dataclass(frozen=True)
class Level:
    """One noise level, from float64 alpha_bar at time t (t = -1: clean data)."""

    t: int | float
    alpha_bar: float

    @property
    def alpha(self) -> float:
        return math.sqrt(self.alpha_bar)

    @property
    def sigma(self) -> float:
        return math.sqrt(1.0 - self.alpha_bar)

    @property
    def lam(self) -> float:
        """lambda = log(alpha / sigma), +inf when clean."""
        return math.inf if self.alpha_bar == 1.0 else 0.5 * (math.log(self.alpha_bar) - math.log1p(-self.alpha_bar))

    @property
    def sigma_edm(self) -> float:
        """EDM's sigma = sigma / alpha, 0 when clean."""
        return math.sqrt((1.0 - self.alpha_bar) / self.alpha_bar)

    @property
    def clean(self) -> bool:
        return self.alpha_bar == 1.0


def level(schedule, t: int | float) -> Level:
    """The noise level at time t (a plan entry or a rounded intermediate time; t < 0 is clean data)."""
    return Level(t, schedule.alpha_bar_at(t))


def levels(schedule, timesteps: Sequence) -> list[Level]:
    """The plan's levels followed by the clean level the last step lands on."""
    return [level(schedule, t) for t in timesteps] + [Level(-1, 1.0)]


class Evaluation(NamedTuple):
    """One model evaluation on a trajectory: time t, state x_t and the eps the model returned there.

    Multistep solvers accept `history=[Evaluation, ...]` (oldest first, all at times before the
    plan's first time) and treat them as evaluations they made themselves, so they run at full
    order from the first step. `bench.orders` seeds it from the exact trajectory to measure a
    method's own order; the harness never passes it (it is not a declared parameter).
    """

    t: int | float
    x: torch.Tensor
    eps: torch.Tensor


def step_order(order: int, step: int, num_steps: int, history: int, lower_order_final: bool,
               final_threshold: int = 15) -> int:
    """The order a multistep method uses for step `step` (0-based) of a plan of `num_steps` times.

    Warm-up: at most 1 + the number of earlier evaluations available (`history` counts the
    seeded ones too). Lower-order-final (Lu et al. 2022b, as diffusers: plans under 15 steps):
    the step into the plan's last time uses at most order 2 and the jump to clean data is the
    first-order denoising step anyway, so short plans stay stable near t = 0.
    """
    order = min(order, step + 1 + history)
    if lower_order_final and num_steps + history < final_threshold:  # the whole plan, seeded part included
        order = min(order, num_steps - step)
    return max(order, 1)


def multistep_nfe(timesteps: Sequence, params: Mapping) -> int:
    """One call per plan time, less the first one when AFS supplies it."""
    return len(timesteps) - (1 if params.get("afs") else 0)


def two_stage_nfe(timesteps: Sequence, params: Mapping) -> int:
    """Two calls per step between plan times, one for the final denoising step (Heun: 2N-1), less AFS's."""
    return 2 * len(timesteps) - 1 - (1 if params.get("afs") else 0)


def check_afs(timesteps: Sequence, params: Mapping) -> None:
    """AFS replaces the first call, so it needs at least two plan times."""
    if params.get("afs") and len(timesteps) < 2:
        raise UserError(f"afs=true needs steps >= 2 (the first step's eps comes from x_T), got {len(timesteps)}")


def afs_eps(x: torch.Tensor) -> torch.Tensor:
    """The analytical first step (AFS, diff-sampler; Zhou et al. 2024): at t = T-1, x_T is almost pure
    noise (alpha_bar ~ 4e-5 on the linear schedule), so eps(x_T) ~ x_T and the first call is saved."""
    return x.clone()
