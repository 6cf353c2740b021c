"""Weight files and model cards: exact round trips, and every kind of bad file refused with its name."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from bench.denoiser import Denoiser, DenoiserInfo
from bench.errors import UserError
from bench.registry import ModelSpec, Registry
from bench.schedule import NoiseSchedule, ScheduleConfig
from models.builtin import describe, shipped_weights
from models.networks import build_network, network_config, time_input_kind
from models.weights import card_path, load_denoiser, load_model_arg, load_state, make_card, save_weights

CONFIGS = {
    "seed-unet": {"channels": (4, 8, 8), "embed_dim": 8, "image_size": 8, "num_timesteps": 100},
    "context-unet": {"n_feat": 8, "num_classes": 10, "image_size": 8, "groups": 4},
    "ddpm-unet": {"base_channels": 8, "channel_mults": (1, 2), "image_size": 8, "num_classes": 10, "groups": 4},
}
SCHEDULE = ScheduleConfig("linear", 100)


def write_model(tmp_path, arch="seed-unet", name="model"):
    """Save a randomly initialised network of `arch` with its card; returns (network, weights path)."""
    torch.manual_seed(0)
    network = build_network(arch, CONFIGS[arch]).eval()
    num_classes = CONFIGS[arch].get("num_classes", 0)
    card = make_card(name=name, architecture=arch, network_config=network_config(arch, CONFIGS[arch]),
                     dataset="digits", image_shape=(1, 8, 8), num_classes=num_classes, schedule=SCHEDULE,
                     time_input=time_input_kind(arch), steps_trained=0, description=f"a random {arch}")
    return network, save_weights(network, tmp_path / f"{name}.safetensors", card)


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_round_trip_gives_identical_outputs(tmp_path, arch):
    network, path = write_model(tmp_path, arch)
    loaded = load_denoiser(path)
    schedule = NoiseSchedule.from_config(SCHEDULE)
    direct = Denoiser(schedule, DenoiserInfo("model", (1, 8, 8)), network, time_input_kind=time_input_kind(arch))
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 50, 99])
    assert torch.equal(loaded(x, t), direct(x, t))


def test_card_fields_reach_the_denoiser(tmp_path):
    _, path = write_model(tmp_path, "ddpm-unet")
    denoiser = load_denoiser(path)
    assert (denoiser.info.dataset, denoiser.image_shape, denoiser.num_classes, denoiser.num_timesteps) == \
        ("digits", (1, 8, 8), 10, 100)


def test_corrupt_file_is_a_user_error_naming_it(tmp_path):
    _, path = write_model(tmp_path)
    path.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(UserError, match="model.safetensors"):
        load_denoiser(path)


def test_truncated_file_is_a_user_error_naming_it(tmp_path):
    _, path = write_model(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="model.safetensors"):
        load_denoiser(path)


def test_weights_of_another_architecture_are_refused(tmp_path):
    _, path = write_model(tmp_path, "ddpm-unet")
    card = json.loads(card_path(path).read_text())
    card.update(architecture="seed-unet", network_config=CONFIGS["seed-unet"], num_classes=0)
    card_path(path).write_text(json.dumps(card))
    with pytest.raises(UserError, match="model.safetensors.*seed-unet"):
        load_denoiser(path)


def test_missing_card_is_a_user_error_naming_it(tmp_path):
    _, path = write_model(tmp_path)
    card_path(path).unlink()
    with pytest.raises(UserError, match="model.json"):
        load_denoiser(path)


def test_plain_tensor_pickle_loads(tmp_path):
    network, path = write_model(tmp_path)
    pickle_path = path.with_suffix(".pt")
    torch.save(network.state_dict(), pickle_path)
    card_path(pickle_path).write_text(card_path(path).read_text())
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 4])
    assert torch.equal(load_denoiser(pickle_path)(x, t), load_denoiser(path)(x, t))


class Malicious:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    _, path = write_model(tmp_path)
    marker = tmp_path / "pwned"
    pickle_path = tmp_path / "evil.pt"
    torch.save({"weight": Malicious(marker)}, pickle_path)
    card_path(pickle_path).write_text(card_path(path).read_text())
    with pytest.raises(UserError, match="evil.pt"):
        load_denoiser(pickle_path)
    assert not marker.exists()


def test_unknown_weight_suffix_is_refused(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\x80\x04N.")
    with pytest.raises(UserError, match="model.bin"):
        load_state(tmp_path / "model.bin")


def test_model_arg_accepts_a_registered_name_and_a_path(tmp_path):
    _, path = write_model(tmp_path)
    registry = Registry(models={"mine": ModelSpec("mine", "test", lambda device: load_denoiser(path, device))})
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([7])
    assert torch.equal(load_model_arg("mine", registry)(x, t), load_model_arg(str(path), registry)(x, t))


def test_unknown_model_arg_lists_registered_names():
    registry = Registry(models={"digits": ModelSpec("digits", "d", lambda device: None)})
    with pytest.raises(UserError, match="Registered models: digits"):
        load_model_arg("nonsense", registry)


def test_builtin_registers_only_weights_with_model_cards(tmp_path):
    write_model(tmp_path, name="digits")
    write_model(tmp_path, name="other")
    (tmp_path / "orphan.safetensors").write_bytes(b"")
    (tmp_path / "features.safetensors").write_bytes(b"")
    (tmp_path / "features.json").write_text('{"architecture": "FeatureNet", "dataset": "digits"}')
    assert [p.stem for p in shipped_weights(tmp_path)] == ["digits", "other"]
    assert describe(tmp_path / "digits.json") == "a random seed-unet"


def test_shipped_cards_are_complete():
    from models.weights import read_card

    for path in shipped_weights():
        card = read_card(path)
        assert card["dataset"] in ("digits", "fashion-mnist")
        assert card["command"].startswith("python -m bench train --preset")


@pytest.fixture
def tiny_diffusers_folder(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2",
                                        prediction_type="v_prediction")
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    scheduler.save_pretrained(tmp_path / "pipe" / "scheduler")
    return tmp_path / "pipe", unet.eval(), scheduler


def test_diffusers_folder_gives_the_unets_prediction(tiny_diffusers_folder):
    folder, unet, scheduler = tiny_diffusers_folder
    denoiser = load_model_arg(str(folder), Registry())
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 90])
    a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        v = unet(x, t).sample
    torch.testing.assert_close(denoiser(x, t), (1 - a).sqrt() * x + a.sqrt() * v)
    torch.testing.assert_close(denoiser.schedule.betas.float(), scheduler.betas)


def test_missing_diffusers_says_how_to_install(tiny_diffusers_folder, monkeypatch):
    folder, _, _ = tiny_diffusers_folder
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(UserError, match=r"sampler-bench\[diffusers\]"):
        load_model_arg(str(folder), Registry())


def test_diffusers_pickle_only_folder_is_refused(tiny_diffusers_folder):
    folder, unet, _ = tiny_diffusers_folder
    for weights in (folder / "unet").glob("*.safetensors"):
        os.remove(weights)
    torch.save(unet.state_dict(), folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(UserError, match="no .safetensors"):
        load_model_arg(str(folder), Registry())


# ---------------------------------------------------------------- diffusers configs: lines the fast suite never ran
def test_a_scheduler_config_is_found_in_scheduler_then_the_folder_then_the_unet_and_must_be_json(tmp_path):
    from models.diffusers_adapter import read_scheduler_config

    unet = tmp_path / "unet"
    unet.mkdir()
    with pytest.raises(UserError, match="no scheduler_config.json in"):
        read_scheduler_config(tmp_path, unet)
    (unet / "scheduler_config.json").write_text('{"beta_end": 0.03}')
    assert read_scheduler_config(tmp_path, unet)["beta_end"] == 0.03
    (tmp_path / "scheduler_config.json").write_text('{"beta_end": 0.04}')
    assert read_scheduler_config(tmp_path, unet)["beta_end"] == 0.04
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text("{not json")
    with pytest.raises(UserError, match="scheduler_config.json' is not valid JSON"):
        read_scheduler_config(tmp_path, unet)


def test_trained_betas_win_and_unknown_schedules_or_predictions_are_named(tmp_path):
    from models.diffusers_adapter import prediction_type, schedule_from_config

    betas = [0.001, 0.01, 0.1]
    schedule = schedule_from_config({"trained_betas": betas, "beta_schedule": "linear"}, tmp_path)
    assert schedule.num_timesteps == 3 and schedule.betas.tolist() == pytest.approx(betas)
    cosine = schedule_from_config({"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 50}, tmp_path)
    assert cosine.num_timesteps == 50 and cosine.config.kind == "cosine"
    with pytest.raises(UserError, match="beta_schedule 'sigmoid' is not supported"):
        schedule_from_config({"beta_schedule": "sigmoid"}, tmp_path)
    assert [prediction_type({"prediction_type": k}, tmp_path) for k in ("epsilon", "sample", "v_prediction")] == \
        ["eps", "x0", "v"] and prediction_type({}, tmp_path) == "eps"
    with pytest.raises(UserError, match="prediction_type 'flow' is not supported"):
        prediction_type({"prediction_type": "flow"}, tmp_path)


def test_an_edm_or_flow_config_with_a_bad_entry_is_an_error_naming_the_file(tmp_path):
    from models.diffusers_adapter import path_from_config

    source = tmp_path / "scheduler_config.json"
    path, kind = path_from_config({"_class_name": "EDMEulerScheduler", "sigma_max": 10, "_path": str(source)}, source)
    assert (kind, path.kind, path.t_max) == ("edm", "ve", 10.0)
    with pytest.raises(UserError, match="EDM prediction_type 'v_prediction' is not supported") as info:
        path_from_config({"_class_name": "EDMEulerScheduler", "prediction_type": "v_prediction"}, source)
    assert str(source) in str(info.value)
    with pytest.raises(UserError, match="shift = 'big' is not a number"):
        path_from_config({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": "big"}, source)
