"""The interface every sampler is written against, and the one place predictions are converted.

A sampler calls `denoiser(x_t, t, cond=None)` and gets the noise prediction eps(x_t, t) for
a batch with timesteps t in 0..T-1. Networks that predict x_0 or v, or that take
time as a float t/T (seed 002) rather than an integer index (seed 000), are adapted here.

Noise levels between trained timesteps (EDM's round_sigma, Karras et al. 2022, App. C.3.4):
a discrete-time model (`continuous_time = False`, every trained network here) only ever saw
integer t, so a fractional t is rounded to the nearest trained timestep (half up), never
truncated, and a solver that wants an intermediate noise level asks `round_time(t)` first and
computes its coefficients from float64 alpha_bar at the rounded time, so they describe the
noise level the network actually received. A continuous-time model (the Gaussian oracle,
whose eps* is exact at any alpha_bar) sets `continuous_time = True` and gets t unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bench.errors import UserError
from bench.schedule import NoiseSchedule

PREDICTION_TYPES = ("eps", "x0", "v", "flow", "edm")  # flow and edm: continuous paths only (bench.paths)
TIME_INPUTS = ("index", "fraction", "fraction-1")


def _gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] broadcast against `like` (batch first), in like's dtype and device."""
    out = values.to(like.device)[t.to(like.device)].to(like.dtype)
    return out.view(-1, *[1] * (like.dim() - 1))


def eps_from_prediction(prediction: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        alpha_bar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Convert a network's eps / x0 / v prediction into eps."""
    if prediction_type == "eps":
        return prediction
    a = _gather(alpha_bar, t, x_t)
    if prediction_type == "x0":
        return (x_t - a.sqrt() * prediction) / (1 - a).sqrt()
    if prediction_type == "v":  # v = sqrt(a) eps - sqrt(1-a) x0  =>  eps = sqrt(1-a) x_t + sqrt(a) v
        return (1 - a).sqrt() * x_t + a.sqrt() * prediction
    raise UserError(f"unknown prediction type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor | float) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
    if isinstance(alpha_bar_t, float):  # the common case in samplers: two fused ops, no temporaries
        return torch.add(x_t, eps, alpha=-math.sqrt(1 - alpha_bar_t)).mul_(1 / math.sqrt(alpha_bar_t))
    a = torch.as_tensor(alpha_bar_t, dtype=x_t.dtype, device=x_t.device)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def time_input(t: torch.Tensor, num_timesteps: int, time_input_kind: str) -> torch.Tensor:
    """What the network's time argument is: the integer index, t/T, or (t+1)/T (seed 002's 1-indexing)."""
    if time_input_kind == "index":
        return t
    if time_input_kind == "fraction":
        return t.to(torch.float32) / num_timesteps
    if time_input_kind == "fraction-1":
        return (t.to(torch.float32) + 1) / num_timesteps
    raise UserError(f"unknown time input {time_input_kind!r}; expected one of {TIME_INPUTS}")


@dataclass(frozen=True)
class DenoiserInfo:
    """What the harness and reports need to know about a model."""

    name: str
    image_shape: tuple[int, ...]
    num_classes: int = 0
    prediction_type: str = "eps"
    dataset: str | None = None
    path: str = "vp-discrete"     # the noise path kind (bench.paths), recorded with every result
    shift: float | None = None    # the flow path's time shift


class Denoiser:
    """Wrap a network as eps(x_t, t, cond); subclasses may override `predict_eps` directly."""

    continuous_time = False  # True: eps is defined at any real t (the oracle); False: trained integer t only

    def __init__(self, schedule: NoiseSchedule, info: DenoiserInfo, network: nn.Module | Callable | None = None,
                 time_input_kind: str = "index", device: torch.device | str = "cpu"):
        if info.prediction_type not in PREDICTION_TYPES:
            raise UserError(f"unknown prediction type {info.prediction_type!r}; expected one of {PREDICTION_TYPES}")
        continuous = bool(getattr(schedule, "continuous", False))
        if info.prediction_type in ("flow", "edm") and not continuous:
            raise UserError(f"prediction type {info.prediction_type!r} needs a continuous-time path (flow, ve), "
                            "not vp-discrete")
        if continuous:
            self.continuous_time = True  # eps is defined at any real t on a continuous path
            from bench.paths import path_shift
            info = DenoiserInfo(**{**info.__dict__, "path": schedule.kind, "shift": path_shift(schedule)})
        self.schedule = schedule
        self.info = info
        self.network = network
        self.time_input_kind = time_input_kind
        self.device = torch.device(device)
        self._alpha_bar = schedule.alpha_bar.to(self.device, torch.float32) if not continuous else None

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.info.image_shape

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    def to(self, device: torch.device | str) -> Denoiser:
        """Move the network and cached schedule tensors to `device`."""
        self.device = torch.device(device)
        if isinstance(self.network, nn.Module):
            self.network.to(self.device)
        if not getattr(self.schedule, "continuous", False):
            self._alpha_bar = self.schedule.alpha_bar.to(self.device, torch.float32)
        return self

    def network_forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """The raw network call, in the network's own time and output conventions."""
        time_arg = time_input(t, self.num_timesteps, self.time_input_kind)
        if cond is None:
            return self.network(x_t, time_arg)
        return self.network(x_t, time_arg, cond)

    def _predict_eps_on_path(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """A network on a continuous path: the VP state is scaled to the path's native x = alpha x_0 + sigma eps,
        the network sees its own time (t * 1000 for 'index' networks, t for 'fraction'; EDM's c_noise and c_in for
        'edm'), and its output is converted to eps, which is the same in both coordinates (bench.paths)."""
        from bench.paths import TIME_RESOLUTION, edm_preconditioning, eps_from_native

        shape = (-1, *[1] * (x_t.dim() - 1))
        alpha, sigma, d_alpha, d_sigma = self.schedule.coefficients_of(t)
        scale = (alpha * alpha + sigma * sigma).sqrt()
        x_native = x_t * scale.to(x_t.dtype).view(shape)
        kind = self.info.prediction_type
        if kind == "edm":  # D(x; s) = c_skip x + c_out F(c_in x, c_noise) on x = x_native / alpha, s = sigma / alpha
            sigma_edm = sigma / alpha
            c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma_edm, self.schedule.path_config.sigma_data)
            x_edm = x_native / alpha.to(x_t.dtype).view(shape)
            out = self._call(x_edm * c_in.to(x_t.dtype).view(shape), c_noise.to(x_t.dtype), cond)
            denoised = c_skip.to(x_t.dtype).view(shape) * x_edm + c_out.to(x_t.dtype).view(shape) * out
            return (x_edm - denoised) / sigma_edm.to(x_t.dtype).view(shape)
        resolution = getattr(getattr(self.schedule, "path_config", None), "num_timesteps", TIME_RESOLUTION)
        time_arg = (t * resolution if self.time_input_kind == "index" else t).to(x_t.dtype)
        out = self._call(x_native, time_arg, cond)
        coefficients = [c.to(x_t.dtype).view(shape) for c in (alpha, sigma, d_alpha, d_sigma)]
        return eps_from_native(out, x_native, *coefficients, kind)

    def _call(self, x: torch.Tensor, time_arg: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return self.network(x, time_arg) if cond is None else self.network(x, time_arg, cond)

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """eps(x_t, t) for timesteps t of shape (B,): int64, or float64 for continuous-time models."""
        if getattr(self.schedule, "continuous", False):
            return self._predict_eps_on_path(x_t, t, cond)
        prediction = self.network_forward(x_t, t, cond)
        if t.is_floating_point():  # continuous-time networks: alpha_bar between trained timesteps
            rows = torch.arange(t.shape[0], device=t.device)  # alpha_bar per row, gathered row by row
            return eps_from_prediction(prediction, x_t, rows, self.schedule.alpha_bar_of(t), self.info.prediction_type)
        return eps_from_prediction(prediction, x_t, t, self._alpha_bar, self.info.prediction_type)

    def round_time(self, t: float) -> int | float:
        """The time the model is evaluated at for a requested real t (see the module docstring).

        Discrete-time models: the nearest trained timestep, half up, clamped to 0..T-1.
        Continuous-time models: t itself.
        """
        if self.continuous_time:
            return t
        return min(max(math.floor(float(t) + 0.5), 0), self.num_timesteps - 1)

    def model_time(self, t: int | float | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
        """t as the (B,) tensor `predict_eps` receives: int64 trained timesteps, or float64 real times
        for continuous-time models. A fractional t is rounded as `round_time` does, never truncated."""
        if isinstance(t, torch.Tensor):
            t = t.to(device)
        else:
            t = torch.as_tensor(t, device=device, dtype=torch.float64 if isinstance(t, float) else torch.long)
        if t.is_floating_point():
            if self.continuous_time:
                t = t.to(torch.float64)
            else:
                t = torch.floor(t.to(torch.float64) + 0.5).clamp_(0, self.num_timesteps - 1).long()
        return t.expand(batch) if t.dim() == 0 else t

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, t: int | float | torch.Tensor,
                 cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.predict_eps(x_t, self.model_time(t, x_t.shape[0], x_t.device), cond)
