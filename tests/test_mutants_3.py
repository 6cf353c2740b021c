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


def test_the_call_afs_saves_is_subtracted_from_a_two_stage_solvers_nfe():
    from bench.ode import two_stage_nfe

    assert two_stage_nfe([3, 2, 1], {}) == 5 and two_stage_nfe([3, 2, 1], {"afs": True}) == 4


def test_a_plan_file_on_a_continuous_path_may_not_end_at_t_zero():
    import pytest

    from bench.errors import UserError
    from bench.paths import PathConfig, make_path
    from bench.tune import check_times

    path = make_path(PathConfig("flow"))
    assert check_times([0.9, 0.5, 0.01], path, "plan") == [0.9, 0.5, 0.01]
    with pytest.raises(UserError, match=r"\(0, "):
        check_times([0.9, 0.5, 0.0], path, "plan")


def test_tune_candidates_stay_strictly_between_the_neighbours():
    from bench.tune import _candidates

    assert _candidates(10, 12, 11, 100.0, True) == []
    values = _candidates(10, 20, 15, 100.0, True)
    assert values and all(10 < v < 20 and v != 15 for v in values)


def test_a_fresh_lock_from_another_host_blocks_even_with_our_pid(tmp_path):
    import json
    import os

    from bench.folder import LOCK_NAME, read_lock

    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": "elsewhere", "command": "run"}))
    assert read_lock(tmp_path) is not None


def test_a_saved_bootstrap_file_of_another_resample_count_is_recomputed_not_used(tmp_path):
    """Round-3 survivor N14: row_bootstraps must check a saved .boot.npy's length against the resamples asked."""
    import numpy as np
    import pandas as pd

    from bench.cli import main
    from bench.paired import row_bootstraps

    out = tmp_path / "r"
    assert main(["run", "--model", "gaussian-oracle", "--samplers", "ddim", "--steps", "4", "--num-samples", "24",
                 "--batch-size", "24", "--metrics", "oracle-fd", "--quiet", "--out", str(out)]) == 0
    df = pd.read_csv(out / "results.csv")
    fresh = row_bootstraps(out, df, "oracle_fd", 50)["ddim @ 4"]
    np.save(out / "features" / "ddim-4.boot.npy", np.zeros(3))  # a file from a run with 3 resamples
    again = row_bootstraps(out, df, "oracle_fd", 50)["ddim @ 4"]
    assert again.shape == (50,) and bool((again == fresh).all())


def test_the_budget_table_counts_a_difference_whose_interval_straddles_zero_as_a_tie(tmp_path, monkeypatch):
    """Round-3 survivor N15: a tie is a paired interval of the difference to the best that includes 0 (low <= 0)."""
    import pandas as pd
    import torch

    import bench.paired
    from bench.report import budget_table

    df = pd.DataFrame({"sampler": ["a", "b", "c"], "steps": [5, 5, 5], "nfe": [5, 5, 5], "status": ["ok"] * 3,
                       "ref_rmse": [1.00, 1.01, 2.0], "ref_rmse_ci_low": [0.9, 0.9, 1.9],
                       "ref_rmse_ci_high": [1.1, 1.1, 2.1]})
    base = torch.linspace(0.9, 1.1, 200)
    wobble = torch.linspace(-0.05, 0.07, 200)[torch.randperm(200, generator=torch.Generator().manual_seed(0))]
    boots = {"a @ 5": base, "b @ 5": base + wobble, "c @ 5": base + 1.0}  # b: difference in [-0.05, 0.07]
    monkeypatch.setattr(bench.paired, "row_bootstraps", lambda *args, **kwargs: boots)
    table = budget_table(tmp_path, df, "ref_rmse", {})
    assert table.iloc[0]["best"] == "a @ 5" and table.iloc[0]["ties"] == "b @ 5"


def test_the_heatmap_outlines_the_best_cell_of_each_column():
    """Round-3 survivor N16: the outlined cell is each NFE column's minimum, not its maximum."""
    import math

    import pandas as pd

    from bench.report import best_cells

    table = pd.DataFrame({5: [3.0, 1.0, 2.0], 10: [0.5, 0.9, math.nan], 20: [math.nan] * 3},
                         index=["x", "y", "z"])
    assert best_cells(table) == [(0, 1), (1, 0)]


def test_a_reference_cached_for_one_class_list_is_not_reused_for_another(tmp_path, registry):
    """Found by the round-4 mutation run: the cache key ignored --classes, so class-1 rows reused class-0 solutions."""
    denoiser = registry.model("gaussian-oracle-cond").load("cpu")
    zero = compute_references(registry, denoiser, [(0, 2)], 0, 2, classes=(0,), cache_root=tmp_path)
    one = compute_references(registry, denoiser, [(0, 2)], 0, 2, classes=(1,), cache_root=tmp_path)
    assert not one.info["cache_hit"] and zero.info["cache"] != one.info["cache"]
    again = compute_references(registry, denoiser, [(0, 2)], 0, 2, classes=(1,), cache_root=tmp_path)
    assert again.info["cache_hit"]
