"""sampler-bench: a plugin-based benchmark for diffusion-model samplers."""

from bench.denoiser import Denoiser, DenoiserInfo, x0_from_eps
from bench.hookspecs import hookimpl
from bench.noise import NoiseSource, StepNoise
from bench.registry import AdaptiveSample, MetricSpec, ModelSpec, Param, Preset, SamplerSpec
from bench.schedule import NoiseSchedule

__version__ = "0.1.0"
__all__ = ["AdaptiveSample", "Denoiser", "DenoiserInfo", "MetricSpec", "ModelSpec", "NoiseSchedule", "NoiseSource",
           "Param", "Preset", "SamplerSpec", "StepNoise", "hookimpl", "x0_from_eps"]
