"""The noise schedule shared by every sampler and model.

Indexing convention, written down once:
  * timesteps are integers 0..T-1;
  * x_t = sqrt(alpha_bar[t]) * x_0 + sqrt(1 - alpha_bar[t]) * eps, eps ~ N(0, I);
  * alpha_bar "before the first timestep" is 1 (so the step out of t=0 reaches clean data);
  * a real t between two timesteps interpolates log alpha_bar linearly (DPM-Solver's discrete
    schedule), and the noise-level helpers sigma_at / lambda_at with their exact inverses
    t_from_sigma / t_from_lambda live here, in float64, and nowhere else.
The DDPM tutorial (seed 000) reads alpha_bar[t - 1] at t = 0, which silently wraps to the
last element in Python; `alpha_bar_prev` exists so no sampler ever indexes t - 1 itself.
"""

from __future__ import annotations

import bisect
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


def as_time(t) -> int | float:
    """A plan entry as a Python number: int when integral (a trained timestep), else float."""
    value = float(t)
    return int(value) if value.is_integer() else value


@dataclass(frozen=True)
class ScheduleConfig:
    """How a schedule was built, so it can be written next to results and rebuilt."""

    kind: str = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02


class NoiseSchedule:
    """beta, alpha and alpha_bar in float64 for timesteps 0..T-1: the `vp-discrete` noise path (bench.paths)."""

    kind = "vp-discrete"
    continuous = False

    def __init__(self, betas: torch.Tensor, config: ScheduleConfig | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() == 0 or not bool(((betas > 0) & (betas < 1)).all()):
            raise UserError("betas must be a non-empty sequence of values in (0, 1)")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        self.config = config
        # Python floats (float64) for the scalar helpers samplers call once per step.
        self._alpha_bar_list = self.alpha_bar.tolist()
        self._log_alpha_bar = self.alpha_bar.log().tolist()
        self._neg_log_alpha_bar = [-v for v in self._log_alpha_bar]

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

    @property
    def t_max(self) -> int:
        """The noisiest timestep, T - 1 (where every plan starts)."""
        return self.num_timesteps - 1

    @property
    def t_min(self) -> int:
        """The least noisy timestep, 0 (the step after it lands on clean data)."""
        return 0

    def alpha_bar_at(self, t: float) -> float:
        """alpha_bar at a real time t: exact at integers, 1 (clean data) for t < 0.

        Between integers log alpha_bar is interpolated linearly, as DPM-Solver's discrete
        NoiseScheduleVP does, so every noise level between alpha_bar[0] and alpha_bar[T-1]
        has exactly one time and the inverses below are exact.
        """
        if t < 0:
            return 1.0
        index = int(t)
        if index == t:
            return self._alpha_bar_list[self._checked(index)]
        self._checked(t)
        frac = t - index
        log_a = self._log_alpha_bar[index] * (1 - frac) + self._log_alpha_bar[index + 1] * frac
        return math.exp(log_a)

    def alpha_bar_of(self, t: torch.Tensor) -> torch.Tensor:
        """`alpha_bar_at` for a tensor of times (integer or real), in float64 on t's device."""
        table = self.alpha_bar.to(t.device)
        if not t.is_floating_point():
            return torch.where(t < 0, torch.ones((), dtype=torch.float64, device=t.device), table[t.clamp(min=0)])
        t = t.to(torch.float64)
        log_table = table.log()
        index = t.floor().clamp(0, self.num_timesteps - 1).long()
        upper = (index + 1).clamp(max=self.num_timesteps - 1)
        frac = t - index
        interpolated = (log_table[index] * (1 - frac) + log_table[upper] * frac).exp()
        exact = torch.where(frac == 0, table[index], interpolated)
        return torch.where(t < 0, torch.ones((), dtype=torch.float64, device=t.device), exact)

    def sigma_at(self, t: float) -> float:
        """EDM's sigma(t) = sqrt((1 - alpha_bar) / alpha_bar): x_t / sqrt(alpha_bar) = x_0 + sigma eps."""
        a = self.alpha_bar_at(t)
        return math.sqrt((1 - a) / a)

    def lambda_at(self, t: float) -> float:
        """Half the log-SNR, lambda = log(sqrt(alpha_bar) / sqrt(1 - alpha_bar)) (DPM-Solver); +inf when clean."""
        a = self.alpha_bar_at(t)
        return math.inf if a == 1.0 else 0.5 * (math.log(a) - math.log1p(-a))

    def t_from_lambda(self, lam: float) -> float:
        """The real time t with lambda_at(t) = lam (the exact inverse of the interpolation); -1 for +inf."""
        if lam == math.inf:
            return -1.0
        return self._t_from_log_alpha_bar(-math.log1p(math.exp(-2 * lam)) if lam > -350 else 2 * lam)

    def t_from_sigma(self, sigma: float) -> float:
        """The real time t with sigma_at(t) = sigma (the exact inverse of the interpolation); -1 for 0."""
        if sigma == 0:
            return -1.0
        return self._t_from_log_alpha_bar(-math.log1p(sigma * sigma))

    def _t_from_log_alpha_bar(self, log_a: float) -> float:
        table = self._log_alpha_bar  # strictly decreasing
        last = self.num_timesteps - 1
        tol = 1e-12 * (1 + abs(log_a))  # accept round-off just outside [alpha_bar[T-1], alpha_bar[0]]
        if not table[last] - tol <= log_a <= table[0] + tol:
            raise ValueError(f"noise level log alpha_bar={log_a!r} is outside this schedule's range "
                             f"[{table[last]!r}, {table[0]!r}]")
        # the first index whose log alpha_bar is <= log_a, searching the increasing negated table
        upper = bisect.bisect_left(self._neg_log_alpha_bar, -log_a)
        if upper == 0:
            return 0.0
        if upper > last:
            return float(last)
        if table[upper] == log_a:
            return float(upper)
        lower = upper - 1
        return lower + (table[lower] - log_a) / (table[lower] - table[upper])

    def _checked(self, t):
        if t > self.num_timesteps - 1:
            raise ValueError(f"time {t!r} is beyond this schedule's last timestep {self.num_timesteps - 1}")
        return t

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

    def transitions(self, timesteps) -> list[tuple[int | float, float, float]]:
        """(t, alpha_bar at t, alpha_bar at the next visited time) for a decreasing plan.

        The last entry's next alpha_bar is 1: the step out of the last timestep lands on x_0.
        Integer timesteps stay ints; real times (continuous-time grids) stay floats.
        """
        timesteps = [as_time(t) for t in timesteps]
        nexts = timesteps[1:] + [-1]
        return [(t, self.alpha_bar_at(t), self.alpha_bar_at(n)) for t, n in zip(timesteps, nexts)]

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The forward process q(x_t | x_0) for a batch of integer timesteps t."""
        a = self.alpha_bar.to(x0.device)[t].to(x0.dtype).view(-1, *[1] * (x0.dim() - 1))
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def __repr__(self) -> str:
        return f"NoiseSchedule(T={self.num_timesteps}, config={self.config})"
