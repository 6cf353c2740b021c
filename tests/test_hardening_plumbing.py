"""Hardening of the bookkeeping around the samplers (issue 17, item 8: the "plumbing" self-mutation pass).

Guards the branches and tables that the numeric tests never reach: parameter parsing and validation boundaries
(bench.selection), the ComfyUI/A1111 alias tables (bench.aliases), the run-config bounds (bench.config), resume and
warm-up bookkeeping (bench.harness), the trajectory strip, file stems and paired-metric choice (bench.jobs), the
folder locks and safe paths (bench.folder), model cards and weight loading (models.weights), the training
schedule, EMA warm-up, label dropout, checkpoints and time limit (models.train), and the datasets' pixel scale
(models.data). Every test names the property it pins; docs/hardening-2026-12-02.md lists the planted bugs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bench.errors import UserError
from tests.helpers import dead_pid, needs_dataset

# --------------------------------------------------------------------------- bench.selection


def test_a_piece_without_equals_continues_the_previous_list_value():
    from bench.selection import parse_params

    assert parse_params("eta=0.2,sections=10,15,20") == {"eta": "0.2", "sections": "10,15,20"}
    assert parse_params("sections=10, 15 ,") == {"sections": "10,15"}
    with pytest.raises(UserError, match="expected name=value"):
        parse_params("10,eta=1")
    with pytest.raises(UserError, match="given twice"):
        parse_params("eta=1,eta=2")


def test_a_list_with_a_parameterised_sampler_in_it_says_how_to_split_it():
    from bench.plugins import load_registry
    from bench.selection import resolve_samplers

    registry = load_registry()
    with pytest.raises(UserError) as info:
        resolve_samplers(["ddim,euler:plan=trailing"], registry)
    message = str(info.value)
    assert "unknown sampler" not in message and "its own argument" in message
    assert message.endswith("--samplers ddim 'euler:plan=trailing'")
    # a lone parameterised sampler and a plain list are still fine
    labels = [c.label for c in resolve_samplers(["ddim,euler", "ddim:eta=0.5,plan=trailing"], registry)]
    assert labels == ["ddim", "euler", "ddim:eta=0.5,plan=trailing"]


def test_steps_keep_the_given_order_drop_repeats_and_accept_t_itself():
    from bench.selection import validate_steps

    assert validate_steps(["20", 5, 10, 5], 1000) == (20, 5, 10)
    assert validate_steps([1000], 1000) == (1000,)
    with pytest.raises(UserError, match="between 1 and T=1000"):
        validate_steps([1001], 1000)


def test_classes_keep_the_given_order_and_refuse_the_null_label():
    from bench.selection import validate_classes

    assert validate_classes(["3", 1, 3], 10) == (3, 1)
    assert validate_classes([9], 10) == (9,)
    assert validate_classes((), 4) == (0, 1, 2, 3)
    with pytest.raises(UserError, match="outside 0..9"):
        validate_classes([10], 10)  # 10 is the null label of classifier-free guidance, not a class


def test_metric_none_is_skipped_and_the_names_after_it_are_still_read(registry):
    from bench.selection import select_metrics

    name = next(iter(registry.metrics))
    assert [m.name for m in select_metrics(("none", name), registry)] == [name]
    with pytest.raises(UserError, match="unknown metric"):
        select_metrics(("none", "no-such-metric"), registry)


def test_every_configuration_of_all_is_marked_as_chosen_by_all(registry):
    from bench.selection import every_configuration

    choices = every_configuration(registry)
    assert choices and all(c.from_all for c in choices)
    assert {c.label for c in choices} >= set(registry.presets)


def test_a_name_given_after_all_keeps_the_choice_of_all(registry):
    from bench.selection import resolve_samplers

    choices = {c.label: c for c in resolve_samplers(["all", "dpmpp-2m"], registry)}
    assert choices["dpmpp-2m"].from_all  # the first occurrence is kept
    assert not resolve_samplers(["dpmpp-2m", "all"], registry)[0].from_all


# --------------------------------------------------------------------------- bench.aliases


@pytest.mark.parametrize("name, configuration", [
    ("ddpm+normal", "ddim:eta=1,plan=linspace"),          # ComfyUI's ddpm: the ancestral step, DDIM eta = 1
    ("euler+ddim_uniform", "euler:plan=leading"),          # ddim_uniform is the 'leading' plan
    ("ipndm_v+karras", "ipndm:variable_step=true,plan=karras"),
    ("DPM++ 2M SDE", "dpm-solver++-sde:order=2,plan=exponential"),  # A1111's Automatic for it: exponential
    ("PLMS", "plms:warmup=improved-euler,plan=leading"),
    ("Restart", "restart:restart_min=0.1,restart_max=2,restart_steps=9,restart_times=1,plan=karras"),
    ("dpm_adaptive+karras", "dpm-adaptive"),
])
def test_alias_table_entries(name, configuration):
    from bench.aliases import ALIASES

    assert ALIASES[name] == configuration


def test_an_unsupported_comfyui_scheduler_is_named_as_having_no_counterpart():
    from bench.aliases import resolve_alias

    with pytest.raises(UserError, match="ComfyUI's 'linear_quadratic' has no counterpart"):
        resolve_alias("euler+linear_quadratic")
    with pytest.raises(UserError, match="unknown ComfyUI scheduler 'karas'"):
        resolve_alias("euler+karas")


# --------------------------------------------------------------------------- bench.config


def test_run_config_count_bounds_and_the_shift_key():
    from bench.config import RunConfig

    assert RunConfig(grid_images=0, trajectory_images=0, bootstrap=0).grid_images == 0
    for bad in (dict(num_samples=True), dict(grid_images=-1), dict(batch_size=0)):
        with pytest.raises(UserError):
            RunConfig(**bad)
    assert "shift" not in RunConfig().to_dict()
    assert RunConfig(shift=2.0).to_dict()["shift"] == 2.0


# --------------------------------------------------------------------------- bench.harness


def test_model_defaults_cap_the_batch_at_the_number_of_images():
    from bench.config import RunConfig
    from bench.harness import _model_defaults

    cpu = torch.device("cpu")
    assert _model_defaults(RunConfig(), cpu) == ("digits", 500, 500)
    assert _model_defaults(RunConfig(num_samples=3, batch_size=10), cpu) == ("digits", 3, 3)
    assert _model_defaults(RunConfig(model="m", num_samples=30), cpu) == ("m", 30, 30)


def test_warm_up_covers_the_full_and_the_last_partial_batch_doubled_when_guided(oracle):
    from bench.config import RunConfig
    from bench.harness import _compile_and_warm_up

    cpu = torch.device("cpu")
    unguided = [SimpleNamespace(guidance=None)]
    assert _compile_and_warm_up(RunConfig(), oracle, cpu, unguided, 5, 2)["batch_rows"] == [1, 2]
    assert _compile_and_warm_up(RunConfig(), oracle, cpu, unguided, 4, 2)["batch_rows"] == [2]
    guided = [SimpleNamespace(guidance=0.0), SimpleNamespace(guidance=1.5)]
    assert _compile_and_warm_up(RunConfig(), _Conditional(oracle), cpu, guided, 5, 2)["batch_rows"] == [1, 2, 4]


class _Conditional:
    """A conditional stand-in that answers any call (warm-up only needs the call to go through)."""

    def __init__(self, inner):
        self.inner, self.num_classes = inner, 3

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x, t, cond=None):
        return torch.zeros_like(x)


def test_a_nan_guidance_read_back_from_results_csv_is_no_guidance():
    from bench.harness import _guidance_of

    assert _guidance_of({"guidance": float("nan")}) is None
    assert _guidance_of({"guidance": None}) is None
    assert _guidance_of({"guidance": 0.0}) == 0.0


def test_resume_keeps_a_finished_row_whose_timesteps_were_never_recorded(tmp_path, registry, oracle):
    from bench.harness import _rows_still_valid
    from bench.selection import plan_jobs, resolve_samplers

    jobs = plan_jobs(resolve_samplers(["ddim"], registry), (5, 10), oracle.schedule)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"config": {}, "jobs": [
        {"sampler": "ddim", "steps": 10, "guidance": None, "timesteps": [1, 2, 3]}]}))
    done = {job.key: {"status": "ok", "steps": job.steps} for job in jobs}
    kept = _rows_still_valid(done, jobs, config)
    assert list(kept) == [jobs[0].key]  # steps 5: no record, kept; steps 10: recorded plan differs, redone


# --------------------------------------------------------------------------- bench.jobs


def _job(label="ddim", steps=5, guidance=None):
    return SimpleNamespace(choice=SimpleNamespace(label=label), steps=steps, guidance=guidance, timesteps=[0] * steps)


def test_file_stems_name_a_guidance_of_zero():
    from bench.jobs import Harness

    assert Harness._file_stem(_job(guidance=None)) == "ddim-5"
    assert Harness._file_stem(_job(guidance=0.0)) == "ddim-5-w0"
    assert Harness._file_stem(_job(guidance=1.5)) == "ddim-5-w1.5"


def test_trajectory_strip_keeps_the_asked_number_of_images_and_puts_x_t_before_x0(tmp_path, monkeypatch):
    import bench.jobs
    from bench.jobs import Harness

    harness = SimpleNamespace(config=SimpleNamespace(trajectory_images=3), num_samples=5, batch_size=5,
                              out_dir=tmp_path, _file_stem=Harness._file_stem)
    frames, callback = Harness._trajectory_recorder(harness, _job(steps=8))
    for i in range(8):
        x = torch.arange(5.0).view(5, 1, 1, 1) + 10 * i  # image j at step i: 10 i + j
        callback({"step": i, "x": x, "x0": -x})
    assert len(frames) == 8 and frames[0][0].shape[0] == 3
    saved = {}
    monkeypatch.setattr(bench.jobs, "save_grid", lambda images, path, nrow: saved.update(images=images, nrow=nrow))
    Harness._save_trajectory(harness, _job(steps=8), frames)
    values = saved["images"].flatten().tolist()
    assert saved["nrow"] == 8 and len(values) == 3 * 16
    for j in range(3):  # image j: x_t at the 8 steps, then predicted x_0 at the 8 steps
        assert values[16 * j: 16 * j + 8] == [10.0 * i + j for i in range(8)]
        assert values[16 * j + 8: 16 * j + 16] == [-(10.0 * i + j) for i in range(8)]


def test_the_paired_metric_is_fids_even_when_the_oracle_comes_first():
    from bench.jobs import paired_metric

    oracle_fd = SimpleNamespace(paired_column="oracle_fd", paired_rows=None)
    fid = SimpleNamespace(paired_column="fid", paired_rows=None)
    other = SimpleNamespace(paired_column="x", paired_rows=None)
    assert paired_metric([oracle_fd, other, fid]) is fid
    assert paired_metric([other, oracle_fd]) is oracle_fd
    assert paired_metric([other]) is other
    assert paired_metric([SimpleNamespace()]) is None


def test_batches_cover_every_image_once_and_cut_the_last():
    from bench.jobs import Harness

    assert Harness.batches(SimpleNamespace(num_samples=5, batch_size=2)) == [(0, 2), (2, 4), (4, 5)]
    assert Harness.batches(SimpleNamespace(num_samples=4, batch_size=4)) == [(0, 4)]


# --------------------------------------------------------------------------- bench.folder


def _write_lock(folder: Path, pid, host, age_s: float = 0.0) -> None:
    from bench.folder import LOCK_NAME

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    path.write_text(json.dumps({"pid": pid, "host": host, "command": "x", "started": "then"}))
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))


def test_a_lock_is_ours_only_for_our_pid_on_our_host(tmp_path):
    from bench.folder import read_lock

    _write_lock(tmp_path / "a", os.getpid(), "another-host")
    assert read_lock(tmp_path / "a")["host"] == "another-host"  # our pid number on another machine: not ours
    _write_lock(tmp_path / "b", os.getppid(), socket.gethostname())
    assert read_lock(tmp_path / "b")["pid"] == os.getppid()  # a live process of this host holds it
    _write_lock(tmp_path / "c", os.getpid(), socket.gethostname())
    assert read_lock(tmp_path / "c") is None
    _write_lock(tmp_path / "d", dead_pid(), socket.gethostname())
    assert read_lock(tmp_path / "d") is None


def test_another_hosts_lock_is_fresh_until_the_stale_age(tmp_path, monkeypatch):
    from bench.folder import LOCK_STALE_ENV, read_lock

    monkeypatch.delenv(LOCK_STALE_ENV, raising=False)
    _write_lock(tmp_path / "fresh", 1, "another-host", age_s=3600)
    assert read_lock(tmp_path / "fresh") is not None
    _write_lock(tmp_path / "old", 1, "another-host", age_s=7 * 3600)
    assert read_lock(tmp_path / "old") is None
    monkeypatch.setenv(LOCK_STALE_ENV, "100")
    assert read_lock(tmp_path / "fresh") is None
    _write_lock(tmp_path / "new", 1, "another-host", age_s=10)
    assert read_lock(tmp_path / "new") is not None


def test_acquire_replaces_a_lock_whose_process_is_gone(tmp_path):
    from bench.folder import LOCK_NAME, acquire_lock, release_lock

    _write_lock(tmp_path, dead_pid(), socket.gethostname())
    path = acquire_lock(tmp_path)
    try:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        release_lock(tmp_path)
    assert not path.exists()


@pytest.mark.parametrize("name", ["features/..", "features/a/b", "../features/x.npy", "/features/x.npy"])
def test_feature_files_must_sit_directly_in_features(tmp_path, name):
    from bench.folder import feature_file

    with pytest.raises(UserError):
        feature_file(tmp_path, name)
    assert feature_file(tmp_path, "features/x.npy") == tmp_path / "features" / "x.npy"


def test_a_linked_top_level_file_is_refused(tmp_path):
    from bench.folder import refuse_links

    (tmp_path / "elsewhere.csv").write_text("")
    (tmp_path / "run").mkdir()
    refuse_links(tmp_path / "run")
    (tmp_path / "run" / "results.csv").symlink_to(tmp_path / "elsewhere.csv")
    with pytest.raises(UserError, match="symbolic link"):
        refuse_links(tmp_path / "run")


def test_load_array_accepts_bool_and_unsigned_arrays(tmp_path):
    from bench.folder import load_array

    for array in (np.array([True, False]), np.array([1, 2], dtype=np.uint8), np.array([1.5])):
        np.save(tmp_path / "a.npy", array)
        assert load_array(tmp_path / "a.npy").tolist() == array.tolist()
    np.save(tmp_path / "s.npy", np.array(["x"]))
    with pytest.raises(UserError, match="numeric"):
        load_array(tmp_path / "s.npy")


# --------------------------------------------------------------------------- models.weights


def test_a_training_checkpoint_loads_its_ema_weights(tmp_path):
    from models.weights import load_state

    torch.save({"model": {"w": torch.zeros(2)}, "ema": {"w": torch.ones(2)}, "step": 3}, tmp_path / "c.pt")
    assert load_state(tmp_path / "c.pt")["w"].tolist() == [1.0, 1.0]


def _card(num_classes, config_classes):
    config = {"in_channels": 1, "image_size": 8}
    if config_classes is not None:
        config["num_classes"] = config_classes
    return {"image_shape": [1, 8, 8], "num_classes": num_classes, "network_config": config, "schedule": {}}


def test_a_card_without_classes_for_a_conditional_network_is_refused():
    from models.weights import _check_card_values

    _check_card_values(_card(0, 0), Path("m.json"))
    _check_card_values(_card(0, None), Path("m.json"))
    _check_card_values(_card(10, 10), Path("m.json"))
    for card in (_card(0, 10), _card(10, 5)):
        with pytest.raises(UserError, match="disagree"):
            _check_card_values(card, Path("m.json"))


def test_a_conditional_card_for_a_network_config_without_classes_is_a_user_error():
    """Once a real bug: the message formatted config["num_classes"], so this card was a KeyError traceback."""
    from models.weights import _check_card_values

    with pytest.raises(UserError, match="disagree"):
        _check_card_values(_card(10, None), Path("m.json"))


def _tiny_weights(tmp_path, prediction_type="eps", metadata=None):
    from safetensors.torch import save_file

    from bench.schedule import ScheduleConfig
    from models.networks import build_network, network_config, time_input_kind
    from models.weights import make_card, save_weights

    config = {"channels": (4, 8, 8), "embed_dim": 8, "image_size": 8, "num_timesteps": 100}
    network = build_network("seed-unet", config)
    card = make_card(name="m", architecture="seed-unet", network_config=network_config("seed-unet", config),
                     dataset="digits", image_shape=(1, 8, 8), num_classes=0, schedule=ScheduleConfig("linear", 100),
                     prediction_type=prediction_type, time_input=time_input_kind("seed-unet"))
    path = save_weights(network, tmp_path / "m.safetensors", card)
    if metadata is not None:  # rewrite the weights with other safetensors metadata (e.g. none, as older files)
        save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path), metadata=metadata)
    return path


def test_an_edm_card_without_a_continuous_path_is_refused(tmp_path):
    from models.weights import load_denoiser

    with pytest.raises(UserError, match="prediction_type 'edm' needs a continuous path"):
        load_denoiser(_tiny_weights(tmp_path, "edm"))


def test_weights_without_path_metadata_load_as_their_card_says(tmp_path):
    from models.weights import load_denoiser

    denoiser = load_denoiser(_tiny_weights(tmp_path, metadata={}))
    assert denoiser.info.prediction_type == "eps" and denoiser.num_timesteps == 100


# --------------------------------------------------------------------------- models.train


def test_lr_at_the_boundaries_of_warm_up_and_decay():
    from models.train import lr_at

    assert lr_at(0, 1.0, 4, 12) == 0.25       # the first step already learns: (0 + 1) / warm-up
    assert lr_at(3, 1.0, 4, 12) == 1.0
    assert lr_at(4, 1.0, 4, 12) == 1.0        # decay starts at the peak
    assert lr_at(8, 1.0, 4, 12) == pytest.approx(0.5)
    assert lr_at(12, 1.0, 4, 12) == pytest.approx(0.0, abs=1e-15)
    assert lr_at(20, 1.0, 4, 12) == pytest.approx(0.0, abs=1e-15)  # past the end it stays at 0


def test_ema_warm_up_values():
    from models.train import ema_decay_at

    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(10, 0.999) == pytest.approx(11 / 20)
    assert ema_decay_at(10**6, 0.999) == 0.999


def test_time_limit_reserve_is_five_percent_at_most_a_minute_plus_two_steps():
    from models.train import time_limit_reserve

    assert time_limit_reserve(100.0, 1.5) == pytest.approx(5.0 + 3.0)
    assert time_limit_reserve(7200.0, 1.0) == pytest.approx(62.0)


def test_overrides_accept_zero_and_refuse_an_ema_decay_of_one():
    from models.train import apply_overrides, get_preset

    preset = apply_overrides(get_preset("smoke"), ["weight_decay=0", "warmup_steps=0", "label_dropout=0"])
    assert (preset.weight_decay, preset.warmup_steps, preset.label_dropout) == (0.0, 0, 0.0)
    assert apply_overrides(get_preset("smoke"), ["ema_decay=0"]).ema_decay == 0.0
    with pytest.raises(UserError, match="ema_decay"):
        apply_overrides(get_preset("smoke"), ["ema_decay=1"])


def _parse(*argv):
    from models.train import add_subparser

    parser = argparse.ArgumentParser()
    add_subparser(parser.add_subparsers())
    return parser.parse_args(["train", *argv])


def test_time_limit_is_given_in_minutes(tmp_path):
    from models.train import run_config_from_args

    args = _parse("--preset", "smoke", "--device", "cpu", "--out", str(tmp_path / "m.safetensors"), "--time-limit",
                  "2.5")
    assert run_config_from_args(args).time_limit_s == 150.0


def _conditional_run(tmp_path, label_dropout):
    import dataclasses

    from models.train import RunConfig, get_preset

    preset = dataclasses.replace(get_preset("digits-cond"), label_dropout=label_dropout, warmup_steps=1,
                                 network={**get_preset("digits-cond").network, "base_channels": 4, "groups": 2})
    return RunConfig(preset, 2, 64, 1e-3, 0, torch.device("cpu"), tmp_path / "m.safetensors",
                     tmp_path / "m.ckpt.pt", None)


@pytest.mark.parametrize("label_dropout, nulls", [(0.0, 0), (1.0, 64)])
def test_label_dropout_replaces_labels_by_the_null_label_k(tmp_path, label_dropout, nulls):
    from bench.schedule import NoiseSchedule
    from models.train import make_state, training_step

    run = _conditional_run(tmp_path, label_dropout)
    state = make_state(run)
    seen = []

    def forward(x, t, cond):
        seen.append(cond)
        return state.model(x, t, cond)

    images, labels = torch.zeros(6, 1, 8, 8), torch.arange(6)
    training_step(state, run, NoiseSchedule.from_config(run.preset.schedule), images, labels, "index", forward)
    cond = seen[0]
    assert int((cond == 10).sum()) == nulls
    assert bool(((cond == 10) | (cond < 6)).all())


def test_training_checkpoints_at_the_last_step_and_keeps_the_last_200_losses(tmp_path):
    from models.train import run_config_from_args, train

    def run(steps, *extra):
        args = _parse("--preset", "smoke", "--device", "cpu", "--steps", str(steps), "--batch-size", "4",
                      "--out", str(tmp_path / "m.safetensors"), "--checkpoint", str(tmp_path / "m.ckpt.pt"), *extra)
        return run_config_from_args(args)

    train(run(4))  # checkpoint_every = 3: written at step 3 and at the last step, 4
    checkpoint = torch.load(tmp_path / "m.ckpt.pt", weights_only=True)
    assert int(checkpoint["step"]) == 4
    checkpoint["recent_losses"] = torch.full((200,), 1000.0, dtype=torch.float64)
    torch.save(checkpoint, tmp_path / "m.ckpt.pt")
    train(run(5), resume=tmp_path / "m.ckpt.pt")
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["steps_trained"] == 5
    assert card["final_loss"] < 999.0  # the oldest of 201 losses left the window, the new one came in


# --------------------------------------------------------------------------- models.data


def test_digits_pixels_span_exactly_minus_one_to_one():
    from models.data import load_dataset

    images, _ = load_dataset("digits", "train")
    assert float(images.min()) == -1.0 and float(images.max()) == 1.0


def test_an_idx_file_with_trailing_bytes_is_refused(tmp_path):
    from models.data import read_idx

    body = bytes([0, 0, 0x08, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3])
    (tmp_path / "ok.idx").write_bytes(body)
    assert read_idx(tmp_path / "ok.idx").tolist() == [1, 2, 3]
    (tmp_path / "long.idx").write_bytes(body + b"\x00")
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_idx(tmp_path / "long.idx")


@needs_dataset("fashion-mnist")
def test_fashion_mnist_pixels_span_exactly_minus_one_to_one():
    from models.data import load_dataset

    images, _ = load_dataset("fashion-mnist", "test")
    assert float(images.min()) == -1.0 and float(images.max()) == 1.0


# --------------------------------------------------------------------------- whole runs (gaussian oracle, tiny)

RUN = ["run", "--model", "gaussian-oracle", "--num-samples", "4", "--batch-size", "2", "--metrics", "none",
       "--grid-images", "0", "--quiet"]


@pytest.fixture
def quick(monkeypatch):
    import bench.jobs

    monkeypatch.setattr(bench.jobs, "MIN_TIMED_S", 0.0)  # one timed pass is enough here


def test_the_strip_comes_from_the_first_batch_only_and_rows_evaluated_are_per_image(tmp_path, monkeypatch, quick):
    import pandas as pd

    import bench.jobs
    from bench.cli import main

    strips = []
    real = bench.jobs.save_grid

    def keep(images, path, nrow=8):
        strips.append((path.parent.name, images.shape[0], nrow))
        real(images, path, nrow=nrow)

    monkeypatch.setattr(bench.jobs, "save_grid", keep)
    out = tmp_path / "run"
    assert main([*RUN, "--samplers", "ddim", "--steps", "10", "--trajectory-images", "2", "--out", str(out)]) == 0
    assert strips == [("trajectories", 2 * 16, 8)]  # 2 images x (8 x_t + 8 x_0), 8 frames a row
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert (row["nfe"], row["rows_evaluated"], row["status"]) == (10, 10, "ok")


def test_resume_redoes_a_row_whose_status_was_nfe_mismatch(tmp_path, monkeypatch, quick):
    import pandas as pd

    from bench.cli import main
    from bench.jobs import Harness

    out = tmp_path / "run"
    assert main([*RUN, "--samplers", "ddim,euler", "--steps", "3", "--trajectory-images", "0",
                 "--out", str(out)]) == 0
    table = pd.read_csv(out / "results.csv")
    table.loc[table["sampler"] == "euler", "status"] = "nfe_mismatch"
    table.to_csv(out / "results.csv", index=False)
    ran, original = [], Harness.run_job

    def counting(self, job, bar):
        ran.append(job.choice.label)
        return original(self, job, bar)

    monkeypatch.setattr(Harness, "run_job", counting)
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert ran == ["euler"]
    assert set(pd.read_csv(out / "results.csv")["status"]) == {"ok"}


def test_five_timing_warnings_are_shown_and_the_rest_counted(tmp_path, monkeypatch, capsys, quick):
    import bench.harness
    from bench.cli import main

    monkeypatch.setattr(bench.harness, "timing_warning", lambda row: f"busy {row['steps']}")
    out = tmp_path / "run"
    assert main([*RUN, "--samplers", "ddim", "--steps", "1,2,3,4,5,6,7", "--trajectory-images", "0",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("warning: busy")] == [
        f"warning: busy {s}" for s in range(1, 6)]
    assert "warning: 2 more configurations (of 7) had busy or noisy timings" in err


# --------------------------------------------------------------------------- bench.cli, bench.device


@pytest.mark.parametrize("error, code, message", [
    (__import__("bench.cli", fromlist=["Terminated"]).Terminated(), 143, "interrupted"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (OSError(__import__("errno").EDQUOT, "Disk quota exceeded"), 2, "free some space"),
    (OSError(__import__("errno").EFBIG, "File too large"), 2, "free some space"),
    (UserError("bad thing"), 2, "error: bad thing"),
    (RuntimeError("oops"), 1, "this is a bug"),
])
def test_exit_codes_and_messages_of_each_kind_of_failure(monkeypatch, capsys, sandbox, error, code, message):
    import bench.cli

    def fail(args):
        raise error

    parser = SimpleNamespace(parse_args=lambda argv: argparse.Namespace(func=fail))
    monkeypatch.setattr(bench.cli, "build_parser", lambda: parser)
    assert bench.cli.main(["anything"]) == code
    assert message in capsys.readouterr().err


def test_fp16_is_refused_on_cpu_and_bf16_autocasts_there():
    from bench.device import autocast_dtype

    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(UserError, match="fp16 needs CUDA"):
        autocast_dtype("fp16", cpu)
