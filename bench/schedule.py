"""The noise schedule shared by every sampler and model.

Indexing convention, written down once:
  * timesteps are integers 0..T-1;
  * x_t = sqrt(alpha_bar[t]) * x_0 + sqrt(1 - alpha_bar[t]) * eps, eps ~ N(0, I);
  * alpha_bar "before the first timestep" is 1 (so the step out of t=0 reaches clean data).
The DDPM tutorial (seed 000) reads alpha_bar[t - 1] at t = 0, which silently wraps to the
last element in Python; `alpha_bar_prev` exists so no sampler ever indexes t - 1 itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.errors import UserError

BETA_SCHEDULES = ("linear", "cosine", "scaled-linear")


def make_betas(kind: str = "linear", num_timesteps: int = 1000, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> torch.Tensor:
    """Betas in float64: linear (Ho et al.), cosine (Nichol & Dhariwal), scaled-linear (LDM)."""
    if num_timesteps < 1:
        raise UserError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if kind == "scaled-linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    if kind == "cosine":
        s = 0.008
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise UserError(f"unknown beta schedule {kind!r}; expected one of {', '.join(BETA_SCHEDULES)}")


@dataclass(frozen=True)
class ScheduleConfig:
    """How a schedule was built, so it can be written next to results and rebuilt."""

    kind: str = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02


class NoiseSchedule:
    """beta, alpha and alpha_bar in float64 for timesteps 0..T-1."""

    def __init__(self, betas: torch.Tensor, config: ScheduleConfig | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() == 0 or not bool(((betas > 0) & (betas < 1)).all()):
            raise UserError("betas must be a non-empty sequence of values in (0, 1)")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        self.config = config

    @classmethod
    def from_config(cls, config: ScheduleConfig) -> NoiseSchedule:
        """Build the schedule a ScheduleConfig describes."""
        return cls(make_betas(config.kind, config.num_timesteps, config.beta_start, config.beta_end), config)

    @classmethod
    def linear(cls, num_timesteps: int = 1000) -> NoiseSchedule:
        """Ho et al.'s default: betas linear from 1e-4 to 0.02."""
        return cls.from_config(ScheduleConfig("linear", num_timesteps))

    @property
    def num_timesteps(self) -> int:
        """T, the number of timesteps the model was trained on."""
        return int(self.betas.numel())

    def alpha_bar_at(self, t: int) -> float:
        """alpha_bar[t], with alpha_bar before the first timestep (t = -1) equal to 1."""
        return 1.0 if t < 0 else float(self.alpha_bar[t])

    def alpha_bar_prev(self) -> torch.Tensor:
        """alpha_bar[t - 1] for every t, with the value 1 at t = 0 (never a wrap-around)."""
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])

    def posterior_variance(self) -> torch.Tensor:
        """beta~_t = (1 - alpha_bar[t-1]) / (1 - alpha_bar[t]) * beta_t; zero at t = 0."""
        return (1 - self.alpha_bar_prev()) / (1 - self.alpha_bar) * self.betas

    def respace(self, timesteps) -> NoiseSchedule:
        """The schedule on a subset of timesteps (Nichol & Dhariwal 2021, Sec. 4).

        beta'_k = 1 - alpha_bar[t_k] / alpha_bar[t_{k-1}], so alpha_bar' equals alpha_bar on
        the kept timesteps. `timesteps` may be given in either order.
        """
        kept = sorted(int(t) for t in timesteps)
        if len(set(kept)) != len(kept) or not kept or kept[0] < 0 or kept[-1] >= self.num_timesteps:
            raise UserError(f"respace needs distinct timesteps in 0..{self.num_timesteps - 1}")
        alpha_bar = self.alpha_bar[kept]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        return NoiseSchedule(1 - alpha_bar / prev)

    def transitions(self, timesteps) -> list[tuple[int, float, float]]:
        """(t, alpha_bar[t], alpha_bar at the next visited timestep) for a decreasing plan.

        The last entry's next alpha_bar is 1: the step out of the last timestep lands on x_0.
        """
        timesteps = [int(t) for t in timesteps]
        nexts = timesteps[1:] + [-1]
        return [(t, self.alpha_bar_at(t), self.alpha_bar_at(n)) for t, n in zip(timesteps, nexts)]

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The forward process q(x_t | x_0) for a batch of integer timesteps t."""
        a = self.alpha_bar.to(x0.device)[t].to(x0.dtype).view(-1, *[1] * (x0.dim() - 1))
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def __repr__(self) -> str:
        return f"NoiseSchedule(T={self.num_timesteps}, config={self.config})"
