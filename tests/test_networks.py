"""The shipped networks: output shapes, the null label, and the eps / x0 / v and time-input adapters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.denoiser import Denoiser, DenoiserInfo
from bench.errors import UserError
from bench.schedule import NoiseSchedule
from models.networks import build_network, time_input_kind

T = 1000


def small_config(arch: str, size: int, num_classes: int = 0) -> dict:
    """A cheap config of `arch` for `size` x `size` images."""
    if arch == "seed-unet":
        return {"channels": (4, 8, 8), "embed_dim": 8, "image_size": size, "num_timesteps": T}
    if arch == "context-unet":
        return {"n_feat": 8, "num_classes": num_classes or 10, "image_size": size, "groups": 4}
    return {"base_channels": 8, "channel_mults": (1, 2), "image_size": size, "num_classes": num_classes, "groups": 4}


def time_argument(arch: str, batch: int) -> torch.Tensor:
    t = torch.randint(0, T, (batch,))
    return t if time_input_kind(arch) == "index" else t.float() / T


@pytest.mark.parametrize("size", [8, 28, 14])
@pytest.mark.parametrize("arch", ["seed-unet", "context-unet", "ddpm-unet"])
def test_unconditional_output_has_input_shape(arch, size):
    network = build_network(arch, small_config(arch, size)).eval()
    x = torch.randn(3, 1, size, size)
    assert network(x, time_argument(arch, 3)).shape == x.shape


@pytest.mark.parametrize("size", [8, 28])
@pytest.mark.parametrize("arch", ["context-unet", "ddpm-unet"])
def test_conditional_output_has_input_shape(arch, size):
    network = build_network(arch, small_config(arch, size, num_classes=10)).eval()
    x = torch.randn(3, 1, size, size)
    assert network(x, time_argument(arch, 3), torch.tensor([0, 5, 9])).shape == x.shape


@pytest.mark.parametrize("arch", ["context-unet", "ddpm-unet"])
def test_no_labels_means_the_null_label(arch):
    torch.manual_seed(0)
    network = build_network(arch, small_config(arch, 8, num_classes=10)).eval()
    x, t = torch.randn(4, 1, 8, 8), time_argument(arch, 4)
    with torch.no_grad():
        assert torch.equal(network(x, t), network(x, t, torch.full((4,), 10)))


def test_labels_change_the_conditional_output():
    torch.manual_seed(0)
    network = build_network("ddpm-unet", small_config("ddpm-unet", 8, num_classes=10)).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 10])
    with torch.no_grad():
        assert not torch.allclose(network(x, t, torch.tensor([1, 1])), network(x, t, torch.tensor([2, 2])))


def test_three_input_channels_are_supported():
    network = build_network("ddpm-unet", {"in_channels": 3, "base_channels": 8, "channel_mults": (1, 2),
                                          "groups": 4, "image_size": 8})
    assert network(torch.randn(2, 3, 8, 8), torch.tensor([1, 2])).shape == (2, 3, 8, 8)


def test_unconditional_networks_refuse_labels():
    network = build_network("seed-unet", small_config("seed-unet", 8))
    with pytest.raises(UserError, match="unconditional"):
        network(torch.randn(1, 1, 8, 8), torch.tensor([1]), torch.tensor([0]))


def test_unknown_architecture_and_field_are_user_errors():
    with pytest.raises(UserError, match="unknown architecture"):
        build_network("vit", {})
    with pytest.raises(UserError, match="n_feat"):
        build_network("seed-unet", {"n_feat": 3})


class KnownPrediction(nn.Module):
    """Predicts eps, x0 or v exactly for one known (x0, eps) pair, reading t in its own time convention."""

    def __init__(self, x0, eps, alpha_bar, prediction_type, time_kind):
        super().__init__()
        self.x0, self.eps, self.alpha_bar = x0, eps, alpha_bar
        self.prediction_type, self.time_kind = prediction_type, time_kind

    def forward(self, x_t, time_arg, cond=None):
        if self.time_kind == "index":
            t = time_arg.long()
        else:
            offset = 1 if self.time_kind == "fraction-1" else 0
            t = (time_arg * T).round().long() - offset
        a = self.alpha_bar[t].float().view(-1, 1, 1, 1)
        if self.prediction_type == "eps":
            return self.eps
        if self.prediction_type == "x0":
            return self.x0
        return a.sqrt() * self.eps - (1 - a).sqrt() * self.x0


@pytest.mark.parametrize("time_kind", ["index", "fraction", "fraction-1"])
@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_adapters_recover_the_true_eps(prediction_type, time_kind):
    schedule = NoiseSchedule.linear(T)
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 1, 8, 8, generator=generator), torch.randn(4, 1, 8, 8, generator=generator)
    t = torch.tensor([0, 1, 500, 998])
    x_t = schedule.add_noise(x0, t, eps)
    network = KnownPrediction(x0, eps, schedule.alpha_bar, prediction_type, time_kind)
    denoiser = Denoiser(schedule, DenoiserInfo("known", (1, 8, 8), prediction_type=prediction_type), network,
                        time_input_kind=time_kind)
    torch.testing.assert_close(denoiser(x_t, t), eps, atol=2e-4, rtol=1e-4)
