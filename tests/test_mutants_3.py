"""Tests for the survivors of the third hand mutation run (docs/mutation-run-3.md)."""

from __future__ import annotations

from bench.reference import compute_references


def test_a_reference_cached_at_one_guidance_scale_is_not_reused_at_another(tmp_path, registry):
    denoiser = registry.model("gaussian-oracle-cond").load("cpu")
    first = compute_references(registry, denoiser, [(0, 2)], 0, 2, guidance=1.0, cache_root=tmp_path)
    second = compute_references(registry, denoiser, [(0, 2)], 0, 2, guidance=3.0, cache_root=tmp_path)
    assert not first.info["cache_hit"] and not second.info["cache_hit"]
    assert first.info["cache"] != second.info["cache"]


def test_a_multistep_scheduler_with_flow_sigmas_takes_its_flow_shift_not_shift():
    from pathlib import Path

    from models.diffusers_adapter import path_from_config

    config = {"_class_name": "DPMSolverMultistepScheduler", "use_flow_sigmas": True, "flow_shift": 3.0,
              "prediction_type": "flow_prediction", "num_train_timesteps": 1000}
    path, prediction = path_from_config(config, Path("scheduler_config.json"))
    assert prediction == "flow" and path.path_config.shift == 3.0


def test_the_bootstrap_interval_is_shifted_by_the_median_not_the_mean_of_skewed_resamples():
    import torch

    from bench.frechet import shifted_interval

    values = torch.tensor([1.0] * 99 + [1001.0], dtype=torch.float64)  # median 1, mean 11
    low, high = shifted_interval(1.0, values)
    assert low == 1.0  # the 2.5th percentile, shifted by median - point = 0
