"""`bench train`: the smoke preset end to end, exact resume, and the learning-rate and EMA rules."""

from __future__ import annotations

import argparse
import json
import math
import shutil

import pytest
import torch
from torch import nn

import models.train as train_module
from bench.errors import UserError
from models.train import PRESETS, add_subparser, ema_decay_at, lr_at, update_ema
from models.weights import REQUIRED_CARD_FIELDS, load_state

PROVENANCE_FIELDS = ("steps_trained", "final_loss", "wall_time_s", "device", "command", "sample_fid", "notes")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_subparser(parser.add_subparsers())
    return parser.parse_args(["train", *argv])


def run_smoke(tmp_path, name: str, *extra: str) -> dict:
    """Train the smoke preset into tmp_path/NAME.safetensors and return its card."""
    out = tmp_path / f"{name}.safetensors"
    args = parse("--preset", "smoke", "--device", "cpu", "--out", str(out),
                 "--checkpoint", str(tmp_path / f"{name}.ckpt.pt"), *extra)
    assert args.func(args) == 0
    return json.loads(out.with_suffix(".json").read_text())


def test_smoke_run_writes_weights_and_a_complete_card(tmp_path):
    card = run_smoke(tmp_path, "smoke")
    assert all(name in card for name in REQUIRED_CARD_FIELDS + PROVENANCE_FIELDS)
    assert (card["steps_trained"], card["architecture"], card["dataset"]) == (6, "seed-unet", "digits")
    assert card["command"].startswith("python -m bench train --preset smoke --steps 6")
    assert set(load_state(tmp_path / "smoke.safetensors")) == {k for k in _smoke_network().state_dict()}


def _smoke_network() -> nn.Module:
    from models.networks import build_network

    return build_network("seed-unet", PRESETS["smoke"].network)


def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    saved = train_module.save_checkpoint

    def keep_step_3(state, path, preset_name, overrides=()):  # keep a copy of the mid-run checkpoint
        saved(state, path, preset_name, overrides)
        if state.step == 3:
            shutil.copy(path, tmp_path / "step3.ckpt.pt")

    monkeypatch.setattr(train_module, "save_checkpoint", keep_step_3)
    run_smoke(tmp_path, "full")
    card = run_smoke(tmp_path, "resumed", "--resume", str(tmp_path / "step3.ckpt.pt"))
    assert card["steps_trained"] == 6
    full, resumed = load_state(tmp_path / "full.safetensors"), load_state(tmp_path / "resumed.safetensors")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_resume_from_another_preset_is_refused(tmp_path):
    run_smoke(tmp_path, "smoke")
    args = parse("--preset", "digits", "--device", "cpu", "--out", str(tmp_path / "d.safetensors"),
                 "--resume", str(tmp_path / "smoke.ckpt.pt"))
    with pytest.raises(UserError, match="smoke.ckpt.pt"):
        args.func(args)


def test_unknown_preset_lists_the_presets():
    args = parse("--preset", "imagenet")
    presets = ("digits, digits-cond, fashion-mnist, fashion-mnist-cond, fashion-mnist-context, digits-flow, "
               "smoke-flow, smoke")
    with pytest.raises(UserError, match=presets):
        args.func(args)


def test_required_presets_exist_and_fashion_cond_is_conditional():
    assert {"digits", "fashion-mnist", "fashion-mnist-cond", "smoke"} <= set(PRESETS)
    assert PRESETS["fashion-mnist-cond"].conditional and PRESETS["fashion-mnist-cond"].network["num_classes"] == 10
    assert not PRESETS["fashion-mnist"].conditional and not PRESETS["digits"].conditional


def test_lr_warms_up_linearly_then_decays_to_zero():
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 10, 100) == pytest.approx(0.5)
    assert lr_at(100, 1.0, 10, 100) == pytest.approx(0.0)


def test_ema_update_is_the_weighted_average():
    model, ema = nn.Linear(2, 2), nn.Linear(2, 2)
    expected = [0.9 * e.detach() + 0.1 * m.detach() for e, m in zip(ema.parameters(), model.parameters(), strict=True)]
    update_ema(ema, model, 0.9)
    assert all(torch.allclose(e, x) for e, x in zip(ema.parameters(), expected, strict=True))
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1) and ema_decay_at(10**6, 0.999) == 0.999


def test_time_limit_checkpoints_and_stops_then_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, capsys):
    run_smoke(tmp_path, "full")
    # A limit no step fits in: the run stops cleanly after its first step, with a checkpoint and weights.
    monkeypatch.setattr(train_module, "time_limit_reserve", lambda limit_s, per_step: 1e9)
    card = run_smoke(tmp_path, "limited", "--time-limit", "1")
    assert card["steps_trained"] == 1
    assert "--resume" in capsys.readouterr().out
    monkeypatch.undo()
    card = run_smoke(tmp_path, "limited", "--resume", str(tmp_path / "limited.ckpt.pt"))
    assert card["steps_trained"] == 6
    full, resumed = load_state(tmp_path / "full.safetensors"), load_state(tmp_path / "limited.safetensors")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_time_limit_must_be_a_positive_number_of_minutes(tmp_path, value):
    with pytest.raises(UserError, match="--time-limit"):
        run_smoke(tmp_path, "bad", "--time-limit", value)


def test_time_limit_reserve_keeps_room_for_two_steps_and_a_checkpoint():
    assert train_module.time_limit_reserve(600, 0.5) == pytest.approx(30 + 1.0)
    assert train_module.time_limit_reserve(7200, 0.1) == pytest.approx(60 + 0.2)


# ---------------------------------------------------------------- lines the fast suite never ran (coverage)
@pytest.mark.parametrize("item,words", [
    ("ema_decay", "expected KEY=VALUE"),
    ("ema_decay=", "expected KEY=VALUE"),
    ("learning_rate=1", "not a settable key"),
    ("net.width=8", "not a settable key"),
    ("weight_decay=fast", "expected float"),
    ("net.channel_mults=1,x", "expected comma-separated integers"),
    ("grad_clip=nan", "expected a finite number >= 0"),
    ("warmup_steps=-1", "expected a finite number >= 0"),
    ("prediction_type=velocity", "expected one of eps, x0, v, flow"),
    ("timestep_sampling=beta", "expected one of uniform, logit-normal"),
])
def test_a_bad_set_override_is_an_error_naming_it(item, words):
    from bench.errors import UserError
    from models.train import apply_overrides, get_preset

    preset = get_preset("digits-cond")  # a ddpm-unet: channel_mults is one of its network fields
    with pytest.raises(UserError, match=words):
        apply_overrides(preset, [item])
    with pytest.raises(UserError, match="given twice"):
        apply_overrides(preset, ["weight_decay=0", "weight_decay=0.1"])
    changed = apply_overrides(preset, ["weight_decay=0.004", "net.channel_mults=1,2", "timestep_sampling=logit-normal"])
    assert (changed.weight_decay, changed.network["channel_mults"], changed.timestep_sampling) == (
        0.004, (1, 2), "logit-normal")


def test_logit_normal_training_times_are_sd3s_sigmoid_of_a_standard_normal():
    """t/T = sigmoid(u), u ~ N(0, 1) (Esser et al. 2024): median T/2, and P(T/4 <= t < 3T/4) = P(|u| < log 3)
    = 0.7267, where uniform times give 0.5."""
    from models.train import sample_train_timesteps

    t = sample_train_timesteps("logit-normal", 1000, 40_000, torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) <= 999
    assert abs(float(t.double().median()) - 499.5) < 10
    middle = float(((t >= 250) & (t < 750)).double().mean())
    assert middle == pytest.approx(math.erf(math.log(3) / math.sqrt(2)), abs=0.01)
    uniform = sample_train_timesteps("uniform", 1000, 40_000, torch.Generator().manual_seed(0))
    assert float(((uniform >= 250) & (uniform < 750)).double().mean()) == pytest.approx(0.5, abs=0.01)
