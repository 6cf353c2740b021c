"""Ancestral DDPM sampling on the full or a respaced schedule (Ho et al. 2020; Nichol & Dhariwal 2021)."""

from __future__ import annotations

import math

import torch

from bench import Param, Preset, SamplerSpec, hookimpl, x0_from_eps

VARIANCES = ("small", "large")


def ancestral_step(x: torch.Tensor, eps: torch.Tensor, alpha_bar_t: float, alpha_bar_prev: float,
                   variance: str, noise: torch.Tensor | None) -> torch.Tensor:
    """x_prev ~ N(mu, sigma^2) on the respaced schedule beta' = 1 - alpha_bar_t / alpha_bar_prev.

    mu = (x - beta' / sqrt(1 - alpha_bar_t) * eps) / sqrt(1 - beta'); sigma^2 is the posterior
    variance beta~' ('small') or beta' ('large'). `noise=None` adds no noise (the last step).
    """
    beta = 1.0 - alpha_bar_t / alpha_bar_prev
    mean = torch.add(x, eps, alpha=-beta / math.sqrt(1.0 - alpha_bar_t)).mul_(1 / math.sqrt(1.0 - beta))
    if noise is None:
        return mean
    var = beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) if variance == "small" else beta
    return mean.add_(noise, alpha=math.sqrt(var))


def sample_ancestral(denoiser, x, timesteps, noise, *, variance="small", callback=None, cond=None, **_):
    """Ancestral sampling, x_{t-1} = mu_theta(x_t, t) + sigma_t z (Ho et al. 2020, Alg. 2), on any plan."""
    transitions = denoiser.schedule.transitions(timesteps)
    for i, (t, alpha_bar_t, alpha_bar_prev) in enumerate(transitions):
        eps = denoiser(x, t, cond)
        if callback is not None:
            callback({"step": i, "t": t, "x": x, "x0": x0_from_eps(x, eps, alpha_bar_t)})
        is_last = i == len(transitions) - 1
        x = ancestral_step(x, eps, alpha_bar_t, alpha_bar_prev, variance, None if is_last else noise(i))
    return x


_VARIANCE = Param("small", "posterior variance beta~ ('small') or beta ('large')", VARIANCES)


@hookimpl
def register_samplers(register):
    register(SamplerSpec("ddpm", sample_ancestral, "Ancestral DDPM over all T steps, sigma^2 = beta~ "
                         "(posterior variance, 'fixed small'; Ho et al. 2020)", {"variance": _VARIANCE},
                         plan="full"))
    register(SamplerSpec("stride-uniform", sample_ancestral, "Ancestral sampling on an evenly respaced "
                         "schedule (stride sampling; Nichol & Dhariwal 2021)", {"variance": _VARIANCE},
                         plan="uniform"))
    register(SamplerSpec("stride-quadratic", sample_ancestral, "Ancestral sampling on a quadratically "
                         "respaced schedule, dense near t=0 (Song et al. 2021)", {"variance": _VARIANCE},
                         plan="quadratic"))
    register(SamplerSpec("stride", sample_ancestral, "Ancestral sampling on sections of the schedule, "
                         "e.g. '10,15,20' (Nichol & Dhariwal 2021)",
                         {"variance": _VARIANCE,
                          "sections": Param("10,15,25", "steps per equal section of [0, T), comma-separated")},
                         plan="sections"))


@hookimpl
def register_presets(register):
    register(Preset("ddpm-large", "ddpm", {"variance": "large"},
                    "Ancestral DDPM over all T steps, sigma^2 = beta ('fixed large'; Ho et al. 2020)"))
