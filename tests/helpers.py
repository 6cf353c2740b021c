"""Helpers shared by tests."""

from __future__ import annotations

import torch

from bench.sampling import batch_noise, sample


def run_sampler(spec, params, denoiser, steps, images, seed=0, dtype=torch.float32, noise=None, callback=None,
                guidance=None, classes=None):
    """Run one registered sampler through the sampling seam on the given image indices; returns x_0 and the plan."""
    timesteps = spec.timesteps(denoiser.schedule, steps, params)
    noise = noise or batch_noise(seed, torch.as_tensor(images), denoiser.image_shape, dtype=dtype)
    x = sample(spec, params, denoiser, timesteps, images, noise=noise, callback=callback, guidance=guidance,
               classes=classes)
    return x, timesteps


def all_configurations(registry):
    """(label, spec, params) for every registered sampler and preset: new plugins are tested too."""
    out = [(name, spec, spec.resolve_params()) for name, spec in registry.samplers.items()]
    out += [(p.name, registry.samplers[p.sampler], registry.samplers[p.sampler].resolve_params(p.params))
            for p in registry.presets.values()]
    return out
