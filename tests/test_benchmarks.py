"""pytest-benchmark measurements (no time limits asserted; `--benchmark-enable` to time them).

Run `python -m pytest tests/test_benchmarks.py --benchmark-enable` for timings; the speed
targets themselves are checked by `python -m bench perf`.
"""

import pytest
import torch

from bench.measure import CountingDenoiser
from bench.noise import NoiseSource, StepNoise
from tests.helpers import run_sampler


@pytest.mark.parametrize("steps", [10, 100])
def test_benchmark_ddim_on_the_oracle(benchmark, registry, oracle, steps):
    spec = registry.samplers["ddim"]
    counter = CountingDenoiser(oracle)
    benchmark(lambda: run_sampler(spec, spec.resolve_params(), counter, steps, torch.arange(256)))
    assert counter.calls % steps == 0  # every round made exactly `steps` calls


def test_benchmark_step_noise_for_a_batch(benchmark):
    noise = StepNoise(NoiseSource(0), torch.arange(500), (1, 28, 28))
    out = benchmark(lambda: [noise(i) for i in range(16)])
    assert out[0].shape == (500, 1, 28, 28)
