"""DDIM (Song, Meng & Ermon 2021): the non-Markovian generalisation of DDPM, eta-controlled."""

from __future__ import annotations

import math

import torch

from bench import Param, Preset, SamplerSpec, hookimpl, x0_from_eps
from bench.plans import PLANS
from samplers.ancestral import ancestral_step


def ddim_sigma(alpha_bar_t: float, alpha_bar_prev: float, eta: float) -> float:
    """sigma_t(eta) = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev) (DDIM Eq. 16)."""
    return eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev))


def sample_ddim(denoiser, x, timesteps, noise, *, eta=0.0, sigma_hat=False, callback=None, cond=None, **_):
    """DDIM: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z (Song et al. 2021, Eq. 12).

    With sigma_hat, the paper's sigma^ = sqrt(1 - a_t / a_prev) is used; as in the paper (Sec. 5)
    and its code, that is the DDPM update with the larger variance, since 1 - a_prev - sigma^2
    can be negative on coarse plans.
    """
    transitions = denoiser.schedule.transitions(timesteps)
    for i, (t, alpha_bar_t, alpha_bar_prev) in enumerate(transitions):
        eps = denoiser(x, t, cond)
        x0 = x0_from_eps(x, eps, alpha_bar_t)
        if callback is not None:
            callback({"step": i, "t": t, "x": x, "x0": x0})
        is_last = i == len(transitions) - 1
        if sigma_hat:
            x = ancestral_step(x, eps, alpha_bar_t, alpha_bar_prev, "large", None if is_last else noise(i))
            continue
        sigma = ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)
        x = torch.add(math.sqrt(alpha_bar_prev) * x0, eps, alpha=math.sqrt(max(1 - alpha_bar_prev - sigma**2, 0.0)))
        if not is_last and sigma > 0:
            x.add_(noise(i), alpha=sigma)
    return x


@hookimpl
def register_samplers(register):
    register(SamplerSpec(
        "ddim", sample_ddim, "DDIM (Song et al. 2021); eta=0 deterministic, eta=1 equals ancestral "
        "sampling with beta~ on the same timesteps",
        {"eta": Param(0.0, "noise scale: 0 deterministic, 1 DDPM posterior variance", low=0.0),
         "sigma_hat": Param(False, "use the paper's larger sigma^ = sqrt(1 - a_t/a_prev) instead of eta"),
         "plan": Param("uniform", "timestep plan", tuple(p for p in PLANS if p != "full"))},
        plan="uniform"))


@hookimpl
def register_presets(register):
    register(Preset("ddim-eta0.5", "ddim", {"eta": 0.5}, "DDIM with eta=0.5"))
    register(Preset("ddim-eta1", "ddim", {"eta": 1.0}, "DDIM with eta=1 (ancestral, posterior variance)"))
    register(Preset("ddim-sigma-hat", "ddim", {"sigma_hat": True}, "DDIM with the paper's sigma^ "
                    "(DDPM update, larger variance)"))
