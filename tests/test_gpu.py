"""CUDA paths, run only where a GPU is present (`-m gpu`; skipped without CUDA by conftest).

`scripts/gpu_check.sh` runs these plus the timed CUDA default run in one command.
"""

import json

import pandas as pd
import pytest
import torch
from torch import nn

from bench.cli import main
from bench.denoiser import Denoiser, DenoiserInfo
from bench.measure import CountingDenoiser, PeakMemory
from bench.schedule import NoiseSchedule

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


class DtypeProbe(nn.Module):
    """Records the dtype its convolution computes in; returns zeros (eps = 0)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.seen: list[torch.dtype] = []

    def forward(self, x, t):
        out = self.conv(x)
        self.seen.append(out.dtype)
        return torch.zeros_like(out)


def _probe_denoiser():
    probe = DtypeProbe()
    return Denoiser(NoiseSchedule.linear(100), DenoiserInfo("probe", (1, 8, 8)), probe, device=CUDA).to(CUDA), probe


def test_network_time_on_cuda_comes_from_events_and_is_positive():
    denoiser, _ = _probe_denoiser()
    counter = CountingDenoiser(denoiser)
    x = torch.randn(256, 1, 8, 8, device=CUDA)
    for _ in range(3):
        counter(x, 50)
    assert len(counter._events) == 3 and counter.calls == 3
    assert counter.network_seconds() > 0


def test_peak_memory_on_cuda_is_max_allocated_within_the_block():
    with PeakMemory(CUDA) as memory:
        block = torch.empty(64 * 2**20, dtype=torch.uint8, device=CUDA)
        del block
    assert memory.kind == "cuda_max_allocated" and memory.megabytes() >= 64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_really_runs_the_network_under_autocast(dtype):
    denoiser, probe = _probe_denoiser()
    out = CountingDenoiser(denoiser, autocast_dtype=dtype)(torch.randn(4, 1, 8, 8, device=CUDA), 10)
    assert probe.seen == [dtype] and out.dtype == torch.float32


def test_compiled_digits_network_matches_eager_on_cuda(registry):
    eager = registry.load_model("digits", CUDA)
    compiled = registry.load_model("digits", CUDA)
    compiled.network = torch.compile(compiled.network, dynamic=False)
    x = torch.randn(512, 1, 8, 8, device=CUDA)
    torch.testing.assert_close(compiled(x, 500), eager(x, 500), rtol=1e-3, atol=1e-3)


def test_end_to_end_fashion_mnist_run_on_cuda(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--samplers", "ddim", "ddpm", "--steps", "20", "--model", "fashion-mnist", "--num-samples",
                 "1000", "--batch-size", "500", "--precision", "bf16", "--compile", "--quiet", "--out", str(out)]) == 0
    df = pd.read_csv(out / "results.csv")
    assert (df["status"] == "ok").all() and set(df["device"]) == {"cuda"}
    assert (df["mem_kind"] == "cuda_max_allocated").all() and df["fid"].notna().all()
    config = json.loads((out / "config.json").read_text())
    assert config["compile"]["enabled"] and config["device_name"] == torch.cuda.get_device_name(CUDA)


def test_compiled_training_on_cuda_writes_weights(tmp_path):
    out = tmp_path / "smoke.safetensors"
    assert main(["train", "--preset", "smoke", "--device", "cuda", "--compile", "--out", str(out),
                 "--checkpoint", str(tmp_path / "smoke.ckpt.pt")]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["steps_trained"] == 6 and card["device"] == torch.cuda.get_device_name(CUDA)
