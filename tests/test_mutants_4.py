"""Tests for the survivors of the fourth hand mutation run (docs/mutation-run-4.md)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.errors import UserError
from bench.noise import NoiseSource, StepNoise
from bench.ode import Evaluation
from bench.sampling import batch_noise


def _noise(images=torch.arange(4), shape=(1, 8, 8)):
    return StepNoise(NoiseSource(0), torch.as_tensor(images), shape, dtype=torch.float64)


# --------------------------------------------------------------------------- samplers


def test_dpm_adaptive_with_exactly_k_trained_times_left_takes_a_k_stage_step_not_ddim():
    """'when fewer than k are left, the rest is one first-order step': with exactly k left it is a full step."""
    from samplers.adaptive import solve_adaptive
    from tests.helpers import discrete_oracle

    den = discrete_oracle()
    x = batch_noise(0, torch.arange(2), den.image_shape, dtype=torch.float64).initial()
    _, nfe = solve_adaptive(den, x, 3, 0, order=3, rtol=1e6, atol=1e6, h_init=10.0)
    assert nfe.tolist() == [3, 3]  # eps at s, then the two inner stages of DPM-Solver-3 at t = 2 and 1
    _, nfe = solve_adaptive(den, x, 2, 0, order=3, rtol=1e6, atol=1e6, h_init=10.0)
    assert nfe.tolist() == [1, 1]  # two left: one DDIM step


@pytest.mark.parametrize("eta", [0.5, 0.25])
def test_dpmpp_3m_sde_equals_k_diffusions_loop_at_an_eta_between_zero_and_one(registry, oracle, eta):
    """The noise of each step is sigma' sqrt(1 - e^{-2 eta h}) s_noise: only eta = 0 and 1 were compared."""
    from tests.test_kdiffusion import StepNoiseSampler, _kd_model, _run, kd_dpmpp_3m_sde
    from tests.test_kdiffusion import _noise as kd_noise

    ours, plan = _run(registry, "dpmpp-3m-sde", {"eta": eta, "s_noise": 0.9}, oracle, 10)
    sigmas = [oracle.schedule.sigma_at(t) for t in plan] + [0.0]
    noise = kd_noise()
    x_T = noise.initial() * math.sqrt(1 + sigmas[0] ** 2)
    theirs = kd_dpmpp_3m_sde(_kd_model(oracle), x_T, sigmas, StepNoiseSampler(noise), eta=eta, s_noise=0.9)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


def test_each_restart_draws_its_own_noise(registry, oracle):
    """Restart's K re-noisings are independent draws (Xu et al. Alg. 1): K distinct streams, none of noise(i)."""
    from samplers.kdiffusion import EXTRA_STREAM, sample_restart

    base, asked = _noise(), []

    def noise(i):
        asked.append(i)
        return base(i)

    spec = registry.samplers["restart"]
    timesteps = spec.timesteps(oracle.schedule, 10, spec.resolve_params())
    sample_restart(oracle, base.initial(), timesteps, noise, restart_times=3, restart_steps=2)
    restarts = [i for i in asked if EXTRA_STREAM <= i < -1]
    assert len(restarts) == 3 and len(set(restarts)) == 3, asked


def test_afs_never_replaces_the_first_call_of_a_tail_seeded_with_history(registry, oracle):
    """AFS stands in for the run's very first evaluation; a tail with history starts from a real one."""
    spec = registry.samplers["dpm-solver++"]
    params = spec.resolve_params({"order": 3})
    timesteps = spec.timesteps(oracle.schedule, 10, params)
    x = batch_noise(0, torch.arange(4), oracle.image_shape, dtype=torch.float64).initial()
    states = []
    spec.fn(oracle, x, timesteps, None, callback=lambda s: states.append({**s, "x": s["x"].clone()}),
            **spec.sampler_kwargs(params))
    history = [Evaluation(s["t"], s["x"], oracle(s["x"], s["t"])) for s in states[:3]]
    tails = [spec.fn(oracle, states[3]["x"], timesteps[3:], None, history=history,
                     **spec.sampler_kwargs(spec.resolve_params({"order": 3, "afs": afs}))) for afs in (False, True)]
    assert torch.equal(tails[0], tails[1])


# --------------------------------------------------------------------------- paths


def test_the_cosine_vp_continuous_path_inverts_lambda_and_sigma_exactly():
    from bench.paths import PathConfig, make_path

    path = make_path(PathConfig("vp-continuous", schedule="cosine"))
    for frac in (0.0, 0.1, 0.37, 0.8, 1.0):
        t = path.t_min + frac * (path.t_max - path.t_min)
        assert path.t_from_lambda(path.lambda_at(t)) == pytest.approx(t, rel=1e-9, abs=1e-12)
        assert path.t_from_sigma(path.sigma_at(t)) == pytest.approx(t, rel=1e-9, abs=1e-12)


# --------------------------------------------------------------------------- harness, report, paired


def test_the_trajectory_strip_has_eight_frames_from_the_first_to_the_last_step():
    from types import SimpleNamespace

    from bench.jobs import Harness

    for steps in (10, 20, 50):
        harness = SimpleNamespace(config=SimpleNamespace(trajectory_images=1), num_samples=4)
        frames, callback = Harness._trajectory_recorder(harness, SimpleNamespace(timesteps=list(range(steps))))
        for i in range(steps):
            callback({"step": i, "x": torch.full((4, 1), float(i)), "x0": torch.zeros(4, 1)})
        seen = [int(f[0][0, 0]) for f in frames]
        assert len(seen) == 8 and seen[0] == 0 and seen[-1] == steps - 1, (steps, seen)


def test_the_budget_table_lists_six_ties_without_and_zero_more(tmp_path, monkeypatch):
    import bench.paired
    from bench.report import budget_table

    names = list("abcdefgh")
    values = [1.0, 1.001, 1.002, 1.003, 1.004, 1.005, 1.006, 2.0]  # a best, six ties, one clearly worse
    df = pd.DataFrame({"sampler": names, "steps": [5] * 8, "nfe": [5] * 8, "status": ["ok"] * 8,
                       "ref_rmse": values, "ref_rmse_ci_low": [v - 0.1 for v in values],
                       "ref_rmse_ci_high": [v + 0.1 for v in values]})
    base = torch.linspace(0.9, 1.1, 200)
    wobble = torch.linspace(-0.05, 0.07, 200)
    boots = {f"{n} @ 5": base + (v - 1.0) + (wobble[torch.randperm(200, generator=torch.Generator().manual_seed(k))]
                                             if 0 < k < 7 else 0) for k, (n, v) in enumerate(zip(names, values))}
    monkeypatch.setattr(bench.paired, "row_bootstraps", lambda *args, **kwargs: boots)
    ties = budget_table(tmp_path, df, "ref_rmse", {}).iloc[0]["ties"]
    assert ties == "b @ 5, c @ 5, d @ 5, e @ 5, f @ 5, g @ 5", ties


def test_a_repeated_row_in_results_csv_keeps_the_last_one(capsys):
    from bench.report import check_row_values

    df = pd.DataFrame({"sampler": ["ddim", "ddim", "euler"], "steps": [5, 5, 5], "status": ["ok"] * 3,
                       "nfe": [5, 5, 5], "wall_s": [1.0, 2.0, 3.0]})
    out = check_row_values(df, Path("results.csv"))
    assert out[out["sampler"] == "ddim"]["wall_s"].tolist() == [2.0]
    assert "repeated row" in capsys.readouterr().err


def _ref_rmse_folder(tmp_path, vectors: dict) -> pd.DataFrame:
    (tmp_path / "features").mkdir()
    rows = []
    for name, values in vectors.items():
        np.save(tmp_path / "features" / f"{name}-5.ref_rmse.npy", np.asarray(values, dtype=np.float64))
        rows.append({"sampler": name, "steps": 5, "nfe": 5, "status": "ok", "ref_rmse": float(np.mean(values)),
                     "ref_rmse_file": f"features/{name}-5.ref_rmse.npy"})
    return pd.DataFrame(rows)


def test_row_bootstraps_of_ref_rmse_are_resampled_means_around_the_row_mean(tmp_path):
    from bench.paired import row_bootstraps

    values = np.random.default_rng(0).uniform(0.5, 1.5, 40)
    df = _ref_rmse_folder(tmp_path, {"ddim": values})
    boots = row_bootstraps(tmp_path, df, "ref_rmse", 100)["ddim @ 5"]
    assert boots.shape == (100,) and values.min() <= float(boots.min()) and float(boots.max()) <= values.max()
    assert abs(float(boots.median()) - values.mean()) < 0.1


def test_the_unpaired_ref_rmse_interval_of_two_correlated_rows_is_wider_than_the_paired_one(tmp_path):
    from bench.paired import paired_mean_table

    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 1.5, 60)
    b = a + rng.normal(0.05, 0.01, 60)  # per image, b is a plus a small extra error
    table = paired_mean_table(tmp_path, _ref_rmse_folder(tmp_path, {"a": a, "b": b}), "ref_rmse", resamples=200)
    row = table.iloc[0]
    assert row["width_ratio"] < 0.5 and row["unpaired_high"] - row["unpaired_low"] > row["paired_high"] - row[
        "paired_low"]


# --------------------------------------------------------------------------- folders, aliases, cache, tune


def test_an_unreadable_lock_blocks_while_fresh_and_is_stale_after_a_minute(tmp_path):
    from bench.folder import LOCK_NAME, read_lock

    lock = tmp_path / LOCK_NAME
    lock.write_text('{"pid": ')  # a lock its writer has not finished writing
    assert read_lock(tmp_path) is not None
    old = time.time() - 3600
    os.utime(lock, (old, old))
    assert read_lock(tmp_path) is None


def test_comfyuis_uni_pc_is_unipc_with_b_of_h_equal_to_h(registry):
    from bench.selection import resolve_samplers

    for scheduler in ("karras", "normal", "simple"):
        (choice,) = resolve_samplers([f"uni_pc+{scheduler}"], registry)
        assert choice.spec.name == "unipc" and choice.params["variant"] == "bh1"


def test_a_reference_cached_for_one_seed_is_not_reused_for_another(tmp_path, registry):
    from bench.reference import compute_references

    denoiser = registry.model("gaussian-single").load("cpu")
    first = compute_references(registry, denoiser, [(0, 2)], 0, 2, cache_root=tmp_path)
    second = compute_references(registry, denoiser, [(0, 2)], 1, 2, cache_root=tmp_path)
    assert not first.info["cache_hit"] and not second.info["cache_hit"]
    assert not torch.equal(first.for_images(0, 2), second.for_images(0, 2))


def test_a_plan_file_time_of_t_is_refused_on_a_discrete_model():
    from bench.schedule import NoiseSchedule
    from bench.tune import check_times

    schedule = NoiseSchedule.linear(1000)
    assert check_times([999, 500, 0], schedule, "f") == [999, 500, 0]
    with pytest.raises(UserError, match="integers in 0..999"):
        check_times([1000, 500, 0], schedule, "f")


def test_tune_plans_objective_is_the_mean_per_image_rms_as_ref_rmse(registry):
    from bench.sampling import sample
    from bench.tune import _error

    denoiser = registry.model("gaussian-oracle").load("cpu")
    spec = registry.samplers["ddim"]
    params = spec.resolve_params()
    times = spec.timesteps(denoiser.schedule, 4, params)
    indices = torch.arange(2)
    x = sample(spec, params, denoiser, times, indices, noise=batch_noise(7, indices, denoiser.image_shape))
    references = x.clone().double()
    references[1] += 1.0  # image 0 exact, image 1 off by 1 at every pixel: per-image RMS 0 and 1
    assert _error(spec, params, denoiser, times, references, indices, 7) == pytest.approx(0.5, abs=1e-5)


def test_oracle_mean_err_is_the_largest_absolute_mean_error():
    from models.metrics import OracleFD, OracleTruth

    truth = OracleTruth(torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64))
    metric = OracleFD(truth)
    rows = torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = rows - rows.mean(0)
    rows[:, 2] += 1.0  # the mean is off by 1 in one coordinate only
    metric.update(rows)
    assert metric.compute()["mean_err"] == pytest.approx(1.0, abs=1e-9)

