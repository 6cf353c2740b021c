"""Tests for the survivors of hand mutation run 5, helper b (plumbing, reporting and model loading).

Each test pins one documented behaviour that a planted bug of docs/mutation-run-5.md (part B) broke and its targeted
test files did not notice (W01, W02, W03, W04, W05, W06, W09, W10, W11, W12). W01 and W03 were then killed by the
whole fast suite, but only by the way: W01 by a k-diffusion comparison that happens to use eta = 1.0, and W03 only
where the optional diffusers package is installed. The other eight survived the whole fast suite. These tests are
small and fast (about 5 s in all): the largest samples 4 images of the Gaussian oracle.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench.errors import UserError

# --------------------------------------------------------------------------- bench.registry (W01)


def test_a_parameters_declared_bounds_are_inclusive_at_both_ends():
    from bench.plugins import load_registry
    from bench.registry import Param

    param = Param(0.5, "a fraction", low=0.0, high=1.0)
    assert param.allowed() == "in [0, 1]"
    assert param.convert("p", "1.0") == 1.0 and param.convert("p", 0) == 0.0
    with pytest.raises(UserError, match=r"must be in \[0, 1\]"):
        param.convert("p", 1.0000001)
    ddim = load_registry().samplers["ddim"]
    params = ddim.resolve_params({"clip_x0": "dynamic", "clip_percentile": "1.0"})  # COMMON_PARAMS: high = 1.0
    assert params["clip_percentile"] == 1.0


# --------------------------------------------------------------------------- bench.plugins (W02)


def test_a_plugin_preset_named_like_a_sampler_is_reported_and_ignored(tmp_path):
    from bench.plugins import load_registry

    plugin = tmp_path / "shadow.py"
    plugin.write_text(
        "from bench import Preset, hookimpl\n"
        "@hookimpl\n"
        "def register_presets(register):\n"
        "    register(Preset('ddim', 'ddim', {'eta': 1.0}, 'a preset that takes the name of a sampler'))\n")
    registry = load_registry([str(plugin)])
    assert "ddim" not in registry.presets
    assert registry.samplers["ddim"].name == "ddim"
    assert any("preset 'ddim'" in e and "shares a sampler's name" in e for e in registry.errors)


# --------------------------------------------------------------------------- models.diffusers_adapter (W03)


def test_a_scheduler_config_with_trained_betas_null_uses_its_beta_schedule():
    from bench.schedule import NoiseSchedule, ScheduleConfig
    from models.diffusers_adapter import schedule_from_config

    config = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
              "beta_schedule": "linear", "trained_betas": None}  # what DDPMScheduler.save_pretrained writes
    schedule = schedule_from_config(config, Path("scheduler_config.json"))
    expected = NoiseSchedule.from_config(ScheduleConfig("linear", 1000, 0.0001, 0.02))
    assert torch.equal(schedule.betas, expected.betas)


# --------------------------------------------------------------------------- bench.results (W04)


def test_a_resumed_config_keeps_the_first_runs_commit_and_records_the_resuming_one(tmp_path):
    from bench.results import write_run_config

    write_run_config(tmp_path, {"command": "first", "started_utc": "t0", "git_commit": "c0", "config": {}})
    write_run_config(tmp_path, {"command": "second", "started_utc": "t1", "git_commit": "c1", "config": {}},
                     resume=True)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["command"], config["started_utc"], config["git_commit"]) == ("first", "t0", "c0")
    assert config["resumes"] == [{"command": "second", "started_utc": "t1", "git_commit": "c1"}]


# --------------------------------------------------------------------------- bench.reference (W05)


def test_the_model_fingerprint_depends_on_the_prediction_type():
    from bench.reference import model_fingerprint

    def fake(prediction):
        info = SimpleNamespace(path="vp-discrete", shift=None, prediction_type=prediction, image_shape=(1, 2, 2))
        return SimpleNamespace(info=info, schedule="linear")

    assert model_fingerprint(fake("eps")) != model_fingerprint(fake("v"))
    assert model_fingerprint(fake("v")) == model_fingerprint(fake("v"))


# --------------------------------------------------------------------------- bench.harness (W06)

RUN = ["run", "--num-samples", "4", "--batch-size", "2", "--grid-images", "0", "--trajectory-images", "0",
       "--quiet"]


@pytest.fixture
def one_pass(monkeypatch):
    import bench.jobs

    monkeypatch.setattr(bench.jobs, "MIN_TIMED_S", 0.0)  # one timed pass is enough here


def test_exactly_five_timing_warnings_are_all_shown_with_no_count_of_more(tmp_path, monkeypatch, capsys, one_pass):
    import bench.harness
    from bench.cli import main

    monkeypatch.setattr(bench.harness, "timing_warning", lambda row: f"busy {row['steps']}")
    assert main([*RUN, "--model", "gaussian-oracle", "--metrics", "none", "--samplers", "ddim",
                 "--steps", "1,2,3,4,5", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("warning: busy")] == [
        f"warning: busy {s}" for s in range(1, 6)]
    assert "more configurations" not in err


# --------------------------------------------------------------------------- bench.jobs (W09)


def test_net_s_is_the_network_time_of_one_pass_over_the_images(tmp_path, monkeypatch):
    import pandas as pd

    import bench.jobs
    from bench.cli import main
    from bench.measure import CountingDenoiser
    from bench.timing import MAX_PASSES

    monkeypatch.setattr(bench.jobs, "MIN_TIMED_S", 1e9)  # repeat the pass until the pass limit
    monkeypatch.setattr(CountingDenoiser, "network_seconds", lambda self: 2.0)  # over all passes
    out = tmp_path / "run"
    assert main([*RUN, "--model", "gaussian-oracle", "--metrics", "none", "--samplers", "ddim", "--steps", "3",
                 "--out", str(out)]) == 0
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert row["timing_passes"] == MAX_PASSES
    assert row["net_s"] == pytest.approx(2.0 / MAX_PASSES, rel=1e-12)
    assert row["net_ms_per_call"] == pytest.approx(1000 * 2.0 / (MAX_PASSES * 2 * 3), rel=1e-12)  # 2 batches x 3


# --------------------------------------------------------------------------- bench.cli (W12)


def test_a_seed_of_two_to_the_63_minus_one_is_accepted_and_one_more_refused():
    import argparse

    from bench.cli import seed_int

    assert seed_int(str(2**63 - 1)) == 2**63 - 1
    assert seed_int(str(-(2**63))) == -(2**63)
    for bad in (2**63, -(2**63) - 1):
        with pytest.raises(argparse.ArgumentTypeError, match="must be between"):
            seed_int(str(bad))


# --------------------------------------------------------------------------- bench.timing (W10)


def test_load_before_and_after_are_each_the_highest_any_rank_saw():
    from bench.timing import BatchTimes, MachineState, summarize_ranks

    def times():
        t = BatchTimes()
        t.add(1.0, 2, [0.5, 0.5])
        t.passes = 1
        return t

    one = summarize_ranks([times()], [2], [MachineState(1.0, 8, 1)], [MachineState(3.0, 8, 1)], 2)
    assert (one["load_before"], one["load_after"]) == (1.0, 3.0)
    two = summarize_ranks([times(), times()], [2, 2], [MachineState(1.0, 8, 1), MachineState(2.0, 8, 1)],
                          [MachineState(5.0, 8, 1), MachineState(4.0, 8, 1)], 4)
    assert (two["load_before"], two["load_after"]) == (2.0, 5.0)


# --------------------------------------------------------------------------- bench.tune (W11)


def test_tune_plan_calibrates_on_the_calibration_stream_of_the_seed(tmp_path, monkeypatch):
    import bench.reference
    from bench.cli import main
    from bench.tune import calibration_seed

    seeds = []
    real = bench.reference.compute_references

    def recording(registry, denoiser, batches, seed, *args, **kwargs):
        seeds.append(seed)
        return real(registry, denoiser, batches, seed, *args, **kwargs)

    monkeypatch.setattr(bench.reference, "compute_references", recording)
    out = tmp_path / "plan.json"
    assert main(["tune-plan", "--model", "gaussian-single", "--calibration-images", "2", "--samplers", "ddim",
                 "--nfe", "3", "--seed", "7", "--out", str(out)]) == 0
    assert seeds == [calibration_seed(7)] and calibration_seed(7) != 7
    calibration = json.loads(out.read_text())["calibration"]
    assert (calibration["seed"], calibration["noise_seed"]) == (7, calibration_seed(7))
