"""Helpers shared by tests."""

from __future__ import annotations

import torch

from bench.noise import NoiseSource, StepNoise


def run_sampler(spec, params, denoiser, steps, images, seed=0, dtype=torch.float32, noise=None, callback=None):
    """Run one registered sampler on the given image indices; returns x_0 and the timesteps."""
    timesteps = spec.timesteps(denoiser.num_timesteps, steps, params)
    noise = noise or StepNoise(NoiseSource(seed), torch.as_tensor(images), denoiser.image_shape, dtype=dtype)
    x = spec.fn(denoiser, noise.initial(), timesteps, noise, callback=callback, **spec.sampler_kwargs(params))
    return x, timesteps


def all_configurations(registry):
    """(label, spec, params) for every registered sampler and preset: new plugins are tested too."""
    out = [(name, spec, spec.resolve_params()) for name, spec in registry.samplers.items()]
    out += [(p.name, registry.samplers[p.sampler], registry.samplers[p.sampler].resolve_params(p.params))
            for p in registry.presets.values()]
    return out
