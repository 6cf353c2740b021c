"""Noise paths: x_t = alpha(t) x_0 + sigma(t) eps, for every kind of model the samplers run on.

Kinds (`PATH_KINDS`):
  * `vp-discrete`: today's DDPM schedules over T integer timesteps (`bench.schedule.NoiseSchedule`,
    unchanged bit for bit);
  * `vp-continuous`: the same betas as a continuous-time VP path (DPM-Solver's NoiseScheduleVP('linear'):
    log alpha(t) = -(b1 - b0) t^2 / 4 - b0 t / 2, b0 = T beta_start, b1 = T beta_end, t in [1e-3, 1];
    or the cosine schedule's closed form);
  * `ve`: EDM / k-diffusion, alpha = 1, sigma = t in [sigma_min, sigma_max] (0.002 .. 80, Karras et al. 2022);
  * `flow`: rectified flow / flow matching (SD3, Flux), alpha = 1 - t, sigma = t, t in (0, 1).

Every solver is written in VP coordinates: a state x on any path is carried as x / sqrt(alpha^2 + sigma^2),
which is a VP state with alpha_bar = alpha^2 / (alpha^2 + sigma^2). eps and x_0 are the same in both
coordinates, and log-SNR lambda = log(alpha / sigma) and EDM's sigma / alpha do not change, so DDIM,
DPM-Solver, UniPC, DEIS, iPNDM, PLMS and Euler/Heun in EDM's sigma run on every path without knowing
which it is; the path supplies alpha_bar_at(t), lambda_at, sigma_at and their exact inverses (float64),
and the Denoiser converts the network's native input and output (bench.denoiser). x_T = N(0, I) is the
VP state at the path's noisiest plan time on every kind, and the clean end (alpha_bar = 1) is x_0 itself.

Solvers that integrate in the path's own time (Heun and the midpoint method in flow time) ask for the
native coefficients alpha(t), sigma(t) and their derivatives.

Times: continuous paths take real t; the time before the last plan time is the clean end, which every
solver reaches with the denoising step (t = -1 stands for it, as on vp-discrete). A flow plan never starts
at t = 1 exactly: there alpha = 0, and x_0 cannot be recovered from eps (the first plan time is 1 - 1/T,
as in diffusers' flow sigmas for multistep solvers).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from bench.errors import UserError
from bench.schedule import NoiseSchedule, ScheduleConfig, as_time

PATH_KINDS = ("vp-discrete", "vp-continuous", "ve", "flow")
CONTINUOUS_KINDS = ("vp-continuous", "ve", "flow")
TIME_RESOLUTION = 1000  # continuous paths: the largest step count, and t's scale for "index" networks


@dataclass(frozen=True)
class PathConfig:
    """Which path a model was trained on, written next to every result (config.json, results.csv, cards)."""

    kind: str = "vp-discrete"
    shift: float = 1.0            # flow: t' = s t / (1 + (s - 1) t) on every plan placed in t (SD3, diffusers)
    sigma_min: float = 0.002      # ve: EDM's range
    sigma_max: float = 80.0
    sigma_data: float = 0.5       # ve with EDM preconditioning (Karras et al. 2022, Table 1)
    t_min: float = 1e-3           # vp-continuous: DPM-Solver's epsilon
    schedule: str = "linear"      # vp-continuous: the betas it continues (linear or cosine)
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_timesteps: int = 1000

    def __post_init__(self):
        if self.kind not in PATH_KINDS:
            raise UserError(f"unknown noise path {self.kind!r}; expected one of {', '.join(PATH_KINDS)}")
        for name in ("shift", "sigma_min", "sigma_max", "sigma_data", "t_min", "beta_start", "beta_end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise UserError(f"path {name} must be a finite number > 0, got {value!r}")
        if not self.sigma_min < self.sigma_max:
            raise UserError(f"path sigma_min {self.sigma_min} must be below sigma_max {self.sigma_max}")
        if not self.t_min < 1:
            raise UserError(f"path t_min must be in (0, 1), got {self.t_min}")

    def to_dict(self) -> dict:
        return asdict(self)


def flow_shift(t: float, shift: float) -> float:
    """SD3's time shift t' = s t / (1 + (s - 1) t) (Esser et al. 2024; diffusers' `shift`)."""
    return shift * t / (1 + (shift - 1) * t)


class ContinuousPath:
    """A path on real times; subclasses give alpha(t), sigma(t), their derivatives and the exact inverses."""

    kind = ""
    continuous = True
    num_timesteps = TIME_RESOLUTION

    def __init__(self, config: PathConfig):
        self.path_config = config
        self.config = config  # what config.json records as the model's schedule

    # --- native coefficients (float64)
    def alpha(self, t: float) -> float:
        raise NotImplementedError

    def sigma(self, t: float) -> float:
        raise NotImplementedError

    def d_alpha(self, t: float) -> float:
        raise NotImplementedError

    def d_sigma(self, t: float) -> float:
        raise NotImplementedError

    def coefficients_of(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Native (alpha, sigma, alpha', sigma') for a tensor of times, float64 (one evaluation per distinct t)."""
        return tuple(self._map(t, f) for f in (self.alpha, self.sigma, self.d_alpha, self.d_sigma))

    def alpha_sigma_of(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Native (alpha, sigma) for a tensor of times, float64."""
        return self._map(t, self.alpha), self._map(t, self.sigma)

    @staticmethod
    def _map(t: torch.Tensor, fn) -> torch.Tensor:
        t = t.to(torch.float64)
        values, inverse = torch.unique(t.reshape(-1), return_inverse=True)
        mapped = torch.tensor([fn(v) for v in values.tolist()], dtype=torch.float64, device=t.device)
        return mapped[inverse].view(t.shape)

    @property
    def t_max(self) -> float:
        """The noisiest plan time."""
        raise NotImplementedError

    @property
    def t_min(self) -> float:
        """The least noisy plan time; the step after it lands on clean data."""
        raise NotImplementedError

    # --- VP-equivalent noise levels, what the solvers read
    def alpha_bar_at(self, t: float) -> float:
        """alpha^2 / (alpha^2 + sigma^2) at t; 1 (clean data) for t < 0."""
        if t < 0:
            return 1.0
        self._check(t)
        a, s = self.alpha(t), self.sigma(t)
        return a * a / (a * a + s * s)

    def alpha_bar_of(self, t: torch.Tensor) -> torch.Tensor:
        """`alpha_bar_at` for a tensor of times, float64 on t's device."""
        return self._map(t, self.alpha_bar_at)

    def sigma_at(self, t: float) -> float:
        """EDM's sigma = sigma / alpha (0 when clean)."""
        if t < 0:
            return 0.0
        return self.sigma(t) / self.alpha(t)

    def lambda_at(self, t: float) -> float:
        """lambda = log(alpha / sigma) (+inf when clean)."""
        if t < 0:
            return math.inf
        return math.log(self.alpha(t)) - math.log(self.sigma(t))

    def t_from_sigma(self, sigma_edm: float) -> float:
        """The time with sigma / alpha = sigma_edm (exact); -1 for 0 (clean)."""
        if sigma_edm == 0:
            return -1.0
        return self._time_from_lambda(-math.log(sigma_edm))

    def t_from_lambda(self, lam: float) -> float:
        """The time with log(alpha / sigma) = lam (exact); -1 for +inf (clean)."""
        if lam == math.inf:
            return -1.0
        return self._time_from_lambda(lam)

    def _time_from_lambda(self, lam: float) -> float:
        raise NotImplementedError

    def scale(self, t: float) -> float:
        """sqrt(alpha^2 + sigma^2): native state = scale * VP state."""
        a, s = self.alpha(t), self.sigma(t)
        return math.sqrt(a * a + s * s)

    def shifted(self, t: float) -> float:
        """A time placed in t (uniform, quadratic plans), after the path's shift (flow only)."""
        return t

    @property
    def raw_t_range(self) -> tuple[float, float]:
        """(t_max, t_min) before the shift: where plans placed in t start and end."""
        return self.t_max, self.t_min

    def _check(self, t: float) -> None:
        if t > self.t_max * (1 + 1e-12) + 1e-12:
            raise ValueError(f"time {t!r} is beyond this {self.kind} path's noisiest time {self.t_max!r}")

    def transitions(self, timesteps) -> list[tuple[float, float, float]]:
        """(t, alpha_bar at t, alpha_bar at the next visited time) for a decreasing plan; clean after the last."""
        timesteps = [as_time(t) for t in timesteps]
        nexts = timesteps[1:] + [-1]
        return [(t, self.alpha_bar_at(t), self.alpha_bar_at(n)) for t, n in zip(timesteps, nexts)]

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The native forward process x_t = alpha(t) x_0 + sigma(t) eps for a batch of real times."""
        alpha, sigma = self.alpha_sigma_of(t)
        shape = (-1, *[1] * (x0.dim() - 1))
        return alpha.to(x0.dtype).view(shape) * x0 + sigma.to(x0.dtype).view(shape) * eps

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path_config})"


class FlowPath(ContinuousPath):
    """Rectified flow: alpha = 1 - t, sigma = t; the network's velocity is u = eps - x_0."""

    kind = "flow"

    def alpha(self, t):
        return 1.0 - t

    def sigma(self, t):
        return t

    def d_alpha(self, t):
        return -1.0

    def d_sigma(self, t):
        return 1.0

    @property
    def raw_t_range(self):
        return 1.0 - 1.0 / self.path_config.num_timesteps, 1.0 / self.path_config.num_timesteps

    @property
    def t_max(self):
        return self.shifted(self.raw_t_range[0])

    @property
    def t_min(self):
        return self.shifted(self.raw_t_range[1])

    def shifted(self, t):
        return flow_shift(t, self.path_config.shift)

    def _time_from_lambda(self, lam):
        return 1.0 / (1.0 + math.exp(lam)) if lam > -700 else 1.0


class VEPath(ContinuousPath):
    """Variance exploding (EDM, k-diffusion): alpha = 1, sigma = t."""

    kind = "ve"

    def alpha(self, t):
        return 1.0

    def sigma(self, t):
        return t

    def d_alpha(self, t):
        return 0.0

    def d_sigma(self, t):
        return 1.0

    @property
    def t_max(self):
        return self.path_config.sigma_max

    @property
    def t_min(self):
        return self.path_config.sigma_min

    def _time_from_lambda(self, lam):
        return math.exp(-lam)


class VPContinuousPath(ContinuousPath):
    """Continuous-time VP (Song et al. 2021; DPM-Solver's NoiseScheduleVP): sigma = sqrt(1 - alpha^2)."""

    kind = "vp-continuous"

    def __init__(self, config: PathConfig):
        super().__init__(config)
        if config.schedule not in ("linear", "cosine"):
            raise UserError(f"vp-continuous continues the linear or cosine betas, not {config.schedule!r}")
        self.beta_0 = config.beta_start * config.num_timesteps
        self.beta_1 = config.beta_end * config.num_timesteps

    def log_alpha(self, t: float) -> float:
        if self.path_config.schedule == "linear":
            return -0.25 * t * t * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
        s = 0.008  # the cosine schedule's alpha_bar(t) = f(t) / f(0), f(t) = cos((t + s) / (1 + s) pi / 2)^2
        return math.log(math.cos((t + s) / (1 + s) * math.pi / 2)) - math.log(math.cos(s / (1 + s) * math.pi / 2))

    def d_log_alpha(self, t: float) -> float:
        if self.path_config.schedule == "linear":
            return -0.5 * t * (self.beta_1 - self.beta_0) - 0.5 * self.beta_0
        s = 0.008
        u = (t + s) / (1 + s) * math.pi / 2
        return -math.tan(u) * math.pi / (2 * (1 + s))

    def alpha(self, t):
        return math.exp(self.log_alpha(t))

    def sigma(self, t):
        return math.sqrt(-math.expm1(2 * self.log_alpha(t)))

    def d_alpha(self, t):
        return self.alpha(t) * self.d_log_alpha(t)

    def d_sigma(self, t):
        a = self.alpha(t)
        return -a * self.d_alpha(t) / self.sigma(t)

    @property
    def t_max(self):
        return 1.0 if self.path_config.schedule == "linear" else 0.9946  # cosine: alpha stays > 0 (DPM-Solver)

    @property
    def t_min(self):
        return self.path_config.t_min

    def _time_from_lambda(self, lam):
        log_alpha = -0.5 * math.log1p(math.exp(-2 * lam)) if lam > -350 else lam
        if self.path_config.schedule == "linear":
            delta = self.beta_1 - self.beta_0
            return -4 * log_alpha / (math.sqrt(self.beta_0**2 - 4 * delta * log_alpha) + self.beta_0) \
                if delta else -2 * log_alpha / self.beta_0
        s = 0.008
        f0 = math.cos(s / (1 + s) * math.pi / 2)
        return math.acos(min(1.0, math.exp(log_alpha) * f0)) * 2 * (1 + s) / math.pi - s


def make_path(config: PathConfig, schedule: NoiseSchedule | None = None):
    """The path object a config describes; `vp-discrete` is the model's NoiseSchedule itself."""
    if config.kind == "vp-discrete":
        if schedule is None:
            schedule = NoiseSchedule.from_config(ScheduleConfig(config.schedule, config.num_timesteps,
                                                                config.beta_start, config.beta_end))
        return schedule
    return {"flow": FlowPath, "ve": VEPath, "vp-continuous": VPContinuousPath}[config.kind](config)


def path_kind(schedule) -> str:
    """The kind of a schedule or path object."""
    return getattr(schedule, "kind", "vp-discrete")


def path_shift(schedule) -> float | None:
    """The flow shift of a path (None for the other kinds)."""
    config = getattr(schedule, "path_config", None)
    return config.shift if config is not None and config.kind == "flow" else None


# --------------------------------------------------------------------------- prediction conversions

# What a network on a continuous path may predict: eps, x0, v (in VP-normalised coordinates),
# flow (velocity u = d x_t / dt in native coordinates, u = eps - x_0 on the flow path: diffusers'
# flow_prediction), or edm (a raw network F inside EDM's preconditioning, Karras et al. 2022 Table 1).
PATH_PREDICTIONS = ("eps", "x0", "v", "flow", "edm")


def eps_from_native(prediction: torch.Tensor, x_native: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                    d_alpha: torch.Tensor, d_sigma: torch.Tensor, kind: str) -> torch.Tensor:
    """eps from a network's native output at x_native = alpha x_0 + sigma eps (per-row coefficient tensors).

    flow: the velocity u = alpha' x_0 + sigma' eps; with x = alpha x_0 + sigma eps, eps = (alpha' x - alpha u) /
    (alpha' sigma - alpha sigma'), which on the flow path (alpha' = -1, sigma' = 1) is eps = x + (1 - t) u.
    """
    if kind == "eps":
        return prediction
    if kind == "x0":
        return (x_native - alpha * prediction) / sigma
    if kind == "v":  # v in VP-normalised coordinates: eps = sqrt(1 - ab) x_vp + sqrt(ab) v
        norm = (alpha * alpha + sigma * sigma).sqrt()
        return (sigma / norm) * (x_native / norm) + (alpha / norm) * prediction
    if kind == "flow":
        return (d_alpha * x_native - alpha * prediction) / (d_alpha * sigma - alpha * d_sigma)
    raise UserError(f"unknown prediction type {kind!r} on a continuous path; expected one of "
                    f"{', '.join(PATH_PREDICTIONS)}")


def edm_preconditioning(sigma_edm: torch.Tensor, sigma_data: float):
    """c_skip, c_out, c_in, c_noise of Karras et al. (2022), Table 1 ("EDM" column), per row."""
    total = sigma_edm**2 + sigma_data**2
    return (sigma_data**2 / total, sigma_edm * sigma_data / total.sqrt(), 1 / total.sqrt(), sigma_edm.log() / 4)
