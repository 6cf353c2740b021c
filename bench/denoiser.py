"""The interface every sampler is written against, and the one place predictions are converted.

A sampler calls `denoiser(x_t, t, cond=None)` and gets the noise prediction eps(x_t, t) for
a batch with integer timesteps t in 0..T-1. Networks that predict x_0 or v, or that take
time as a float t/T (seed 002) rather than an integer index (seed 000), are adapted here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bench.errors import UserError
from bench.schedule import NoiseSchedule

PREDICTION_TYPES = ("eps", "x0", "v")
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


class Denoiser:
    """Wrap a network as eps(x_t, t, cond); subclasses may override `predict_eps` directly."""

    def __init__(self, schedule: NoiseSchedule, info: DenoiserInfo, network: nn.Module | Callable | None = None,
                 time_input_kind: str = "index", device: torch.device | str = "cpu"):
        if info.prediction_type not in PREDICTION_TYPES:
            raise UserError(f"unknown prediction type {info.prediction_type!r}; expected one of {PREDICTION_TYPES}")
        self.schedule = schedule
        self.info = info
        self.network = network
        self.time_input_kind = time_input_kind
        self.device = torch.device(device)
        self._alpha_bar = schedule.alpha_bar.to(self.device, torch.float32)

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
        self._alpha_bar = self.schedule.alpha_bar.to(self.device, torch.float32)
        return self

    def network_forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """The raw network call, in the network's own time and output conventions."""
        time_arg = time_input(t, self.num_timesteps, self.time_input_kind)
        if cond is None:
            return self.network(x_t, time_arg)
        return self.network(x_t, time_arg, cond)

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """eps(x_t, t) for integer timesteps t of shape (B,)."""
        prediction = self.network_forward(x_t, t, cond)
        return eps_from_prediction(prediction, x_t, t, self._alpha_bar, self.info.prediction_type)

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, t: int | torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.long)
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        return self.predict_eps(x_t, t, cond)
