"""Hardening of the reporting and bookkeeping code (issue 17 item 8, area "reporting").

Guards what the numeric tests leave open in bench/report.py, bench/paired.py, bench/frechet.py, bench/timing.py,
bench/measure.py, bench/reference.py, bench/tune.py, bench/results.py, models/metrics.py and the floor/metric
parts of models/features.py: which row is best, on the frontier or a tie, the labels, sentences and counts of
report.md, boundaries (`<` vs `<=`), which side of a difference is "better", seeds, cache keys, the tuner's
acceptance rule and bookkeeping, busy-machine detection and the timing columns. Every test uses small
hand-computable inputs and asserts exact or documented values; each was checked to fail on a planted bug
(the list is in docs/hardening-2026-12-02.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from bench.errors import UserError

# --------------------------------------------------------------------------- helpers


def _ref_rmse_folder(folder: Path, vectors: dict, nfe: int = 5) -> pd.DataFrame:
    """A results table whose rows have per-image ref_rmse files in folder/features (as bench.jobs saves them)."""
    (folder / "features").mkdir(exist_ok=True)
    rows = []
    for name, values in vectors.items():
        np.save(folder / "features" / f"{name}-{nfe}.ref_rmse.npy", np.asarray(values, dtype=np.float64))
        rows.append({"sampler": name, "steps": nfe, "nfe": nfe, "status": "ok", "ref_rmse": float(np.mean(values)),
                     "ref_rmse_file": f"features/{name}-{nfe}.ref_rmse.npy"})
    return pd.DataFrame(rows)


def _state(load, cores, threads):
    from bench.timing import MachineState
    return MachineState(load, cores, threads)


# --------------------------------------------------------------------------- report.py: reading results.csv


def test_a_cut_off_last_line_drops_the_last_row_and_keeps_the_first(tmp_path, capsys):
    from bench.report import read_results_csv

    path = tmp_path / "results.csv"
    path.write_text("sampler,steps,status,nfe,wall_s\nddim,5,ok,5,1.0\neuler,5,ok,5,2.0")
    df = read_results_csv(path)
    assert df["sampler"].tolist() == ["ddim"]
    assert "no line end" in capsys.readouterr().err


def test_minus_infinity_in_a_column_that_may_be_negative_marks_the_row_invalid(capsys):
    from bench.report import INVALID, check_row_values

    df = pd.DataFrame({"sampler": ["a", "b"], "steps": [5, 5], "status": ["ok", "ok"], "nfe": [5, 5],
                       "wall_s": [1.0, 1.0], "kid": [-math.inf, -0.01]})  # KID is unbiased: it may be negative
    out = check_row_values(df, Path("results.csv"))
    assert out["status"].tolist() == [INVALID, "ok"]
    assert "kid is infinite" in out["error"].iloc[0]


def test_an_ok_row_without_wall_time_is_invalid(capsys):
    from bench.report import INVALID, check_row_values

    df = pd.DataFrame({"sampler": ["a", "b"], "steps": [5, 5], "status": ["ok", "ok"], "nfe": [5, 5],
                       "wall_s": [math.nan, 1.0]})
    out = check_row_values(df, Path("results.csv"))
    assert out["status"].tolist() == [INVALID, "ok"]
    assert out["error"].iloc[0] == "results.csv: wall_s is missing or NaN"


def test_the_first_problem_of_a_row_in_column_order_is_the_one_reported(capsys):
    from bench.report import check_row_values

    df = pd.DataFrame({"sampler": ["a"], "steps": [5], "status": ["ok"], "nfe": [-5], "wall_s": [math.inf]})
    out = check_row_values(df, Path("results.csv"))
    assert out["error"].iloc[0] == "results.csv: nfe is negative"


def test_quality_is_the_oracle_distance_when_the_fid_column_is_empty():
    from bench.report import quality_column

    df = pd.DataFrame({"sampler": ["a", "b"], "fid": [math.nan, math.nan], "oracle_fd": [1.0, 2.0]})
    assert quality_column(df) == ("oracle_fd", "Fréchet distance to the exact distribution")


# --------------------------------------------------------------------------- report.py: frontier, orders, guidance


def test_ref_rows_are_the_ok_rows_with_a_ref_rmse():
    from bench.report import ref_rows

    df = pd.DataFrame({"sampler": ["ddim", "ddpm", "bad"], "steps": [5] * 3, "status": ["ok", "ok", "failed"],
                       "ref_rmse": [0.1, math.nan, 0.2]})  # ddpm is stochastic: no reference trajectory
    assert ref_rows(df)["sampler"].tolist() == ["ddim"]
    assert ref_rows(df.drop(columns="ref_rmse")).empty


def test_of_two_rows_with_the_same_wall_time_only_the_better_one_is_on_the_frontier():
    from bench.report import pareto_front

    df = pd.DataFrame({"sampler": ["worse", "better", "slow"], "wall_s": [1.0, 1.0, 2.0], "q": [2.0, 1.0, 0.5]})
    assert pareto_front(df, "wall_s", "q")["sampler"].tolist() == ["better", "slow"]


def _ref_table(name, pairs):
    return pd.DataFrame([{"sampler": name, "steps": n, "nfe": n, "status": "ok", "ref_rmse": e} for n, e in pairs])


def test_the_empirical_order_is_given_for_two_nfe_values():
    from bench.report import empirical_orders

    lines = empirical_orders(_ref_table("ddim", [(10, 0.4), (20, 0.1)]))  # error / 4 per NFE x 2: order 2
    assert lines == ["ddim: order 2.00 over NFE 10-20, 2.00 between the two finest (ref_rmse 0.4 to 0.1)"]


def test_the_local_order_is_taken_between_the_two_finest_grids():
    from bench.report import empirical_orders

    # coarse pair: error / 8 (order 3); fine pair: error / 2 (order 1)
    (line,) = empirical_orders(_ref_table("heun", [(10, 0.8), (20, 0.1), (40, 0.05)]))
    assert ", 1.00 between the two finest" in line


def _guided(fid=True):
    rows = {"sampler": ["ddim"] * 3, "steps": [10] * 3, "nfe": [10] * 3, "status": ["ok"] * 3,
            "guidance": [0.0, 1.0, 2.0], "cond_acc": [0.5, 0.7, 0.9]}
    if fid:
        rows["fid"] = [3.0, 1.0, 2.0]
    return pd.DataFrame(rows)


def test_a_run_at_one_guidance_scale_is_not_a_guidance_sweep():
    from bench.report import guidance_sentences, has_guidance_sweep

    df = _guided().assign(guidance=1.5)
    assert not has_guidance_sweep(df) and guidance_sentences(df) == []
    assert has_guidance_sweep(_guided())


def test_the_guidance_sentence_names_the_lowest_fid_scale_and_the_cond_acc_trend():
    from bench.report import guidance_sentences

    assert guidance_sentences(_guided()) == [
        "With **ddim**, the best guidance scale is w = 1: lowest FID 1, cond_acc 0.700; cond_acc goes from 0.500 "
        "at w = 0 to 0.900 at w = 2."]


def test_without_a_quality_score_the_best_guidance_scale_has_the_highest_cond_acc():
    from bench.report import guidance_sentences

    (line,) = guidance_sentences(_guided(fid=False))
    assert line.startswith("With **ddim**, the best guidance scale is w = 2: highest cond_acc 0.900;")


# --------------------------------------------------------------------------- report.py: timing warnings


def _timed(name, busy, load_before=1.0, load_after=1.0, spread=0.05):
    return {"sampler": name, "steps": 5, "status": "ok", "busy": busy, "load_before": load_before,
            "load_after": load_after, "cpu_cores": 4, "timing_spread": spread, "timing_batches": 8}


def test_exactly_five_busy_configurations_are_each_listed():
    from bench.report import timing_warnings

    lines = timing_warnings(pd.DataFrame([_timed(f"s{i}", True, 6.0, 6.0) for i in range(5)]))
    assert len(lines) == 5 and all("the machine was busy" in line for line in lines)


def test_the_busy_summary_takes_the_highest_load_before_or_after_and_keeps_the_noisy_rows():
    from bench.report import timing_warnings

    rows = [_timed(f"s{i}", True, 5.0, 9.0 if i == 3 else 5.5) for i in range(6)]
    rows.append(_timed("noisy", False, spread=0.5))
    lines = timing_warnings(pd.DataFrame(rows))
    assert len(lines) == 2
    assert lines[0].startswith("6 of 7 configurations were timed while the machine was busy (load average up to "
                               "9.0 on 4 cores)")
    assert lines[1].startswith("noisy @ 5: seconds per image vary by 50%")


# --------------------------------------------------------------------------- report.py: budget sentences and table


def test_the_budget_sentence_gives_fid_as_a_multiple_of_the_floor():
    from bench.report import budget_sentences

    df = pd.DataFrame({"sampler": ["ddim"], "steps": [5], "nfe": [5], "status": ["ok"], "wall_s": [1.0],
                       "fid": [4.0], "fid_floor": [2.0]})
    assert budget_sentences(df, "fid", "FID")[0] == ("With at most 5 network calls per image, the best is **ddim** "
                                                    "at 5 steps: FID 4, 2× the floor of 2 (1 s for all images).")


def test_a_row_with_the_same_samples_as_the_best_is_a_tie(tmp_path, monkeypatch):
    import bench.paired
    from bench.report import budget_table

    df = pd.DataFrame({"sampler": ["ddim", "stride", "bad"], "steps": [5] * 3, "nfe": [5] * 3, "status": ["ok"] * 3,
                       "ref_rmse": [1.0, 1.0, 3.0]})
    same = torch.linspace(0.9, 1.1, 200, dtype=torch.float64)
    boots = {"ddim @ 5": same, "stride @ 5": same.clone(), "bad @ 5": same + 2.0}
    monkeypatch.setattr(bench.paired, "row_bootstraps", lambda *args, **kwargs: boots)
    assert budget_table(tmp_path, df, "ref_rmse", {}).iloc[0]["ties"] == "stride @ 5"


def test_a_fractional_adaptive_budget_keeps_its_decimal_and_the_ref_interval_is_shown(tmp_path, monkeypatch):
    import bench.paired
    from bench.report import budget_table

    monkeypatch.setattr(bench.paired, "row_bootstraps", lambda *args, **kwargs: {})
    df = pd.DataFrame({"sampler": ["ddim", "adaptive"], "steps": [5, 0], "nfe": [5.0, 5.5], "status": ["ok"] * 2,
                       "ref_rmse": [2.0, 1.0], "ref_rmse_ci_low": [1.5, 0.9], "ref_rmse_ci_high": [2.5, 1.1]})
    table = budget_table(tmp_path, df, "ref_rmse", {})
    assert table["budget"].tolist() == [5, 5.5]
    assert table["best"].tolist() == ["ddim @ 5", "adaptive @ 0"]
    assert table["ci_low"].tolist() == [1.5, 0.9] and table["ci_high"].tolist() == [2.5, 1.1]


def test_report_md_states_each_budget_once_in_the_tables_not_again_as_sentences(tmp_path):
    from bench.report import build_report

    rows = []
    for name, nfe, fd, ref in (("ddim", 5, 2.0, 0.4), ("ddim", 10, 1.0, 0.2), ("euler", 5, 3.0, 0.5),
                               ("euler", 10, 1.5, 0.3)):
        rows.append({"sampler": name, "steps": nfe, "status": "ok", "nfe": nfe, "wall_s": nfe / 10,
                     "oracle_fd": fd, "ref_rmse": ref})
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    (tmp_path / "config.json").write_text(json.dumps({"tool": "sampler-bench", "model": "m", "config": {}}))
    md = build_report(tmp_path).read_text()
    assert "With at most" not in md  # the budget tables say it; the sentences under them are dropped
    assert "## Which sampler at which budget, by distance to the exact trajectory" in md
    assert "| 10 | ddim @ 10 | 0.2 |" in md and "the Pareto frontier" in md


def test_compare_gives_the_wall_time_ratio_as_b_over_a(tmp_path):
    from bench.report import compare

    for name, wall in (("a", 2.0), ("b", 6.0)):
        folder = tmp_path / name
        folder.mkdir()
        pd.DataFrame([{"sampler": "ddim", "steps": 5, "status": "ok", "nfe": 5, "wall_s": wall,
                       "oracle_fd": 1.0 if name == "a" else 1.5}]).to_csv(folder / "results.csv", index=False)
    row = compare(tmp_path / "a", tmp_path / "b").iloc[0]
    assert row["wall_ratio_b_over_a"] == pytest.approx(3.0)
    assert row["oracle_fd_diff_b_minus_a"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- paired.py


def test_saved_bootstrap_values_of_another_resample_count_are_recomputed():
    from bench.paired import Reference, compare_rows

    gen = torch.Generator().manual_seed(0)
    rows = {"a": torch.randn(30, 2, generator=gen), "b": torch.randn(30, 2, generator=gen) + 0.5}
    reference = Reference("oracle_fd", np.zeros(2), np.eye(2))
    points = {"a": 1.0, "b": 2.0}
    fresh = compare_rows(rows, points, reference, resamples=40)[0]
    wrong = {"a": torch.zeros(10, dtype=torch.float64), "b": torch.full((10,), 5.0, dtype=torch.float64)}
    reused = compare_rows(rows, points, reference, resamples=40, known=wrong)[0]
    assert reused.paired == pytest.approx(fresh.paired) and reused.unpaired == pytest.approx(fresh.unpaired)


def test_same_rows_tolerance_is_relative_to_the_rows_scale():
    from bench.paired import same_rows

    a = torch.full((4, 3), 1000.0)
    assert same_rows(a, a + 0.01)            # 1e-5 of the scale: float32 rounding of equal samples
    assert not same_rows(a, a + 1.0)         # 1e-3 of the scale: a real difference
    assert not same_rows(torch.full((4, 3), 0.001), torch.full((4, 3), 0.0011))


def test_paired_ref_rmse_rows_put_the_lower_mean_first_and_diff_is_a_minus_b(tmp_path):
    from bench.paired import paired_mean_table

    worse = np.linspace(1.0, 2.0, 20)
    df = _ref_rmse_folder(tmp_path, {"worse": worse, "better": worse - 0.5})
    row = paired_mean_table(tmp_path, df, "ref_rmse", resamples=50).iloc[0]
    assert (row["a"], row["b"]) == ("better @ 5", "worse @ 5")
    assert row["diff"] == pytest.approx(-0.5)
    assert row["paired_low"] == pytest.approx(-0.5) and row["paired_high"] == pytest.approx(-0.5)
    assert bool(row["significant"])


def test_the_paired_sentence_names_the_better_side_by_the_sign_of_the_difference():
    from bench.paired import paired_sentences

    base = {"nfe": 5, "column": "fid", "paired_low": -2.0, "paired_high": -0.5, "unpaired_low": -3.0,
            "unpaired_high": 1.0, "width_ratio": 0.375, "significant": True, "same_samples": False}
    lines = paired_sentences(pd.DataFrame([{**base, "a": "x @ 5", "b": "y @ 5", "diff": -1.0},
                                           {**base, "a": "y @ 5", "b": "x @ 5", "diff": 1.0, "paired_low": 0.5,
                                            "paired_high": 2.0}]))
    assert lines[0].endswith("**x @ 5 is better**") and lines[1].endswith("**x @ 5 is better**")


def test_paired_report_counts_only_distinct_pairs_and_shows_the_best_against_each_other(tmp_path):
    from bench.paired import paired_report

    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 1.5, 30)
    vectors = {"a": base, "a2": base.copy(), "c": base + rng.normal(0.3, 0.05, 30),
               "d": base + rng.normal(0.6, 0.2, 30)}
    lines = paired_report(tmp_path, _ref_rmse_folder(tmp_path, vectors), {"config": {"bootstrap": 50}})
    assert "Across 5 pairs the paired interval" in lines[0]  # a/a2 are the same samples: left out of the median
    assert "all 6 pairs are in paired.csv" in lines[0]
    shown = lines[2:]  # the best (a or its copy a2, equal means) against each of the three others
    firsts = {line.split(" minus ")[0] for line in shown}
    assert len(shown) == 3 and firsts in ({"NFE 5: a @ 5"}, {"NFE 5: a2 @ 5"}), shown


def test_a_stale_paired_csv_is_removed_when_nothing_pairs_any_more(tmp_path):
    from bench.paired import paired_report

    (tmp_path / "paired.csv").write_text("old pairs\n")
    df = _ref_rmse_folder(tmp_path, {"only": [1.0, 2.0]})
    assert paired_report(tmp_path, df, {}) == []
    assert not (tmp_path / "paired.csv").exists()


def test_fid_infinity_subsets_follow_the_seeded_shuffle():
    from bench.paired import Reference, fid_infinity

    rows = torch.randn(60, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rows[:20] += 2.0  # the first third differs: unshuffled prefixes would see only it in the smallest subsets
    reference = Reference("fid", np.zeros(2), np.eye(2))
    assert fid_infinity(rows, reference, seed=0) != fid_infinity(rows, reference, seed=1)
    order = torch.randperm(60, generator=torch.Generator().manual_seed(0))
    sizes = np.unique(np.linspace(12, 60, 15).astype(int))
    from bench.frechet import weighted_fid
    distances = [float(weighted_fid(rows[order[:n]], torch.ones(1, n, dtype=torch.float64), reference)[0])
                 for n in sizes]
    slope, intercept = np.polyfit(1.0 / sizes, distances, 1)
    assert fid_infinity(rows, reference, seed=0) == pytest.approx((intercept, slope), rel=1e-9)


# --------------------------------------------------------------------------- frechet.py


def test_resample_counts_depend_on_the_seed_and_each_resample_draws_n_images():
    from bench.frechet import resample_counts

    a, b = resample_counts(10, 6, 0), resample_counts(10, 6, 1)
    assert not torch.equal(a, b) and torch.equal(a, resample_counts(10, 6, 0))
    assert a.sum(1).tolist() == [10.0] * 6 and a.shape == (6, 10)


def test_weighted_fid_of_a_zero_one_weighting_is_the_fid_of_that_subset():
    from bench.frechet import weighted_fid

    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reference = SimpleNamespace(mu=np.zeros(3), sigma=np.eye(3))
    weights = torch.zeros(1, 20, dtype=torch.float64)
    weights[0, :8] = 1.0
    subset = weighted_fid(x[:8], torch.ones(1, 8, dtype=torch.float64), reference)
    assert float(weighted_fid(x, weights, reference)[0]) == pytest.approx(float(subset[0]), rel=1e-10)


# --------------------------------------------------------------------------- timing.py and measure.py


def test_busy_needs_others_at_half_a_core_and_more_runnable_threads_than_cores():
    assert _state(6.0, 4, 4).busy          # others 2: 6 runnable threads on 4 cores
    assert not _state(4.2, 4, 4).busy      # others 0.2: our own threads
    assert not _state(3.0, 8, 2).busy      # others 1 but 3 runnable threads on 8 cores


def test_a_machine_busy_only_before_the_configuration_marks_the_row_busy():
    from bench.timing import BatchTimes, summarize

    times = BatchTimes()
    times.add(1.0, 4)
    times.passes = 1
    assert summarize(times, 4, _state(6.0, 4, 4), _state(1.0, 4, 4))["busy"] is True


def test_wall_s_steps_is_the_median_step_times_steps_times_images_per_pass():
    from bench.timing import BatchTimes, summarize

    times = BatchTimes()
    for _ in range(2):  # two passes over 4 images in one batch of 4 equal steps of 0.25 s
        times.add(1.0, 4, [0.25] * 4)
    times.passes = 2
    row = summarize(times, 4, _state(0.0, 4, 4), _state(0.0, 4, 4))
    assert row["wall_s"] == pytest.approx(1.0) and row["wall_s_steps"] == pytest.approx(1.0)
    assert times.step_image_calls == 32


def test_several_ranks_report_the_fewest_passes_any_busy_rank_and_the_slowest_step_time():
    from bench.timing import BatchTimes, summarize_ranks

    fast, slow = BatchTimes(), BatchTimes()
    fast.add(1.0, 4, [0.25] * 4)
    fast.passes = 3
    slow.add(2.0, 4, [0.5] * 4)
    slow.passes = 1
    quiet, busy = _state(0.0, 4, 4), _state(9.0, 4, 4)
    row = summarize_ranks([fast, slow], [4, 4], [quiet, quiet], [busy, quiet], 8)
    assert row["timing_passes"] == 1 and row["busy"] is True and row["world_size"] == 2
    assert row["wall_s_steps"] == pytest.approx(2.0) and row["wall_s"] == pytest.approx(2.0)


def test_a_spread_exactly_at_the_threshold_is_not_warned_about():
    from bench.timing import BUSY_SPREAD, timing_warning

    row = {"sampler": "ddim", "steps": 5, "busy": False, "timing_batches": 4}
    assert timing_warning({**row, "timing_spread": BUSY_SPREAD}) is None
    assert "vary by 26%" in timing_warning({**row, "timing_spread": 0.26})


def test_repeats_stop_at_the_pass_limit():
    from bench.timing import BatchTimes, repeat_until

    def one_pass(into):
        into.add(0.001, 1)

    times = BatchTimes()
    times.passes = 1
    assert repeat_until(10.0, times, one_pass, max_passes=3).passes == 3 and len(times.seconds) == 2


def test_the_counting_denoiser_counts_forward_rows_and_calls():
    from bench.measure import CountingDenoiser

    class Network:
        schedule, info = None, None

        def __call__(self, x, t, cond=None):
            return x

    counting = CountingDenoiser(Network())
    counting(torch.zeros(3, 2), torch.zeros(3))
    counting(torch.zeros(6, 2), torch.zeros(6))  # a guided call of 3 images evaluates 6 rows
    assert (counting.calls, counting.rows, len(counting.call_starts)) == (2, 9, 2)
    counting.reset()
    assert (counting.calls, counting.rows, counting.call_starts) == (0, 0, [])


# --------------------------------------------------------------------------- reference.py


def _fake_denoiser(shift):
    info = SimpleNamespace(path="vp-continuous", shift=shift, prediction_type="eps", image_shape=(1, 2, 2))
    return SimpleNamespace(info=info, schedule="linear")


def test_the_model_fingerprint_depends_on_the_path_shift():
    from bench.reference import model_fingerprint

    assert model_fingerprint(_fake_denoiser(1.0)) != model_fingerprint(_fake_denoiser(3.0))
    assert model_fingerprint(_fake_denoiser(3.0)) == model_fingerprint(_fake_denoiser(3.0))


def test_the_classes_key_keeps_label_boundaries():
    from bench.reference import _classes_key

    assert _classes_key((1, 11)) == "-c1.11" and _classes_key((11, 1)) == "-c11.1"
    assert _classes_key(None) == ""


def test_a_partial_set_of_batches_is_not_cached_and_a_full_one_is(tmp_path, registry):
    from bench.reference import CACHE_DIR, compute_references

    denoiser = registry.model("gaussian-single").load("cpu")
    part = compute_references(registry, denoiser, [(0, 2)], 0, 4, cache_root=tmp_path)
    assert not (tmp_path / CACHE_DIR).exists() or not list((tmp_path / CACHE_DIR).glob("*.npy"))
    full = compute_references(registry, denoiser, [(0, 2), (2, 4)], 0, 4, cache_root=tmp_path)
    assert not full.info["cache_hit"] and len(list((tmp_path / CACHE_DIR).glob("*.npy"))) == 1
    assert torch.equal(part.for_images(0, 2), full.for_images(0, 2))


def test_a_cache_hit_costs_no_network_calls(tmp_path, registry):
    from bench.reference import REFERENCE_SOLVER, compute_references

    denoiser = registry.model("gaussian-oracle").load("cpu")
    first = compute_references(registry, denoiser, [(0, 1)], 0, 1, cache_root=tmp_path)
    second = compute_references(registry, denoiser, [(0, 1)], 0, 1, cache_root=tmp_path)
    assert first.info["network_calls_per_image"] == min(REFERENCE_SOLVER[2], denoiser.num_timesteps)
    assert second.info["cache_hit"] and second.info["network_calls_per_image"] == 0


# --------------------------------------------------------------------------- tune.py


def _discrete_schedule(registry):
    return registry.model("gaussian-oracle").load("cpu").schedule


def test_a_plan_file_with_a_repeated_time_is_refused(registry):
    from bench.tune import check_times

    schedule = _discrete_schedule(registry)
    with pytest.raises(UserError, match="strictly decreasing and distinct"):
        check_times([10, 5, 5, 0], schedule, "plan")
    assert check_times([10, 5, 0], schedule, "plan") == [10, 5, 0]


def test_candidates_are_the_centres_of_eight_cells_of_the_window():
    from bench.tune import _candidates

    assert _candidates(0.0, 100.0, 50.0, 40.0, False) == pytest.approx([32.5, 37.5, 42.5, 47.5, 52.5, 57.5, 62.5,
                                                                        67.5])
    assert _candidates(0.0, 100.0, 50.0, 200.0, False) == pytest.approx([6.25, 18.75, 31.25, 43.75, 56.25, 68.75,
                                                                         81.25, 93.75])


def test_descent_keeps_the_plan_on_a_flat_objective_and_halves_the_window_each_sweep(monkeypatch):
    import bench.tune

    tried = []

    def flat(spec, params, denoiser, times, *rest):
        tried.append(times[1])
        return 1.0

    monkeypatch.setattr(bench.tune, "_error", flat)
    plan, error, runs = bench.tune._descend(None, {}, None, [100.0, 50.0, 0.0], 1.0, False, None, None, 0)
    assert plan == [100.0, 50.0, 0.0] and error == 1.0 and runs == bench.tune.SWEEPS * bench.tune.CANDIDATES
    per_sweep = [tried[k * 8:(k + 1) * 8] for k in range(bench.tune.SWEEPS)]
    for sweep, values in enumerate(per_sweep):
        half = 100.0 / 2 ** sweep / 2
        assert min(values) > 50.0 - half and max(values) < 50.0 + half
        assert min(values) == pytest.approx(50.0 - half + half / 8)


def test_tune_one_descends_from_the_two_best_starts_and_counts_every_solver_run(registry, monkeypatch):
    import bench.tune

    denoiser = registry.model("gaussian-oracle").load("cpu")
    spec = registry.samplers["ddim"]
    params = spec.resolve_params()
    score = {"uniform": 4.0, "quadratic": 1.0, "logsnr": 2.0, "karras": 3.0}
    descended = []

    def error(spec, params, denoiser, times, *rest):
        return score[params["plan"]]

    def descend(spec, params, denoiser, plan, error, *rest):
        descended.append(error)
        return plan, error, 5

    monkeypatch.setattr(bench.tune, "_error", error)
    monkeypatch.setattr(bench.tune, "_descend", descend)
    result = bench.tune.tune_one(spec, params, denoiser, 6, None, torch.arange(2), 0)
    starts = result["hand_made"]
    assert len(starts) >= 2
    assert sorted(descended) == sorted(starts.values())[:2]
    assert result["solver_runs"] == len(starts) + 5 * 2
    assert result["start_plan"] == min(starts, key=starts.get)


def test_a_budget_of_two_network_calls_has_no_plan_to_tune(registry):
    from bench.tune import _steps_for

    spec = registry.samplers["ddim"]
    choice = SimpleNamespace(spec=spec, params=spec.resolve_params())
    schedule = _discrete_schedule(registry)
    assert _steps_for(choice, schedule, 2) is None and _steps_for(choice, schedule, 4) == 4


def test_the_plan_files_network_calls_are_runs_times_nfe_times_images(tmp_path):
    from bench.cli import main

    out = tmp_path / "plan.json"
    assert main(["tune-plan", "--model", "gaussian-single", "--calibration-images", "3", "--samplers", "ddim",
                 "--nfe", "3", "--out", str(out)]) == 0
    (entry,) = json.loads(out.read_text())["plans"].values()
    result = entry["steps"]["3"]
    assert result["network_calls"] == result["solver_runs"] * 3 * 3


# --------------------------------------------------------------------------- models/metrics.py


def test_the_fid_interval_is_clipped_at_zero():
    from models.metrics import bootstrap_interval

    low, high = bootstrap_interval(0.05, torch.linspace(0.0, 2.0, 101, dtype=torch.float64))
    assert low == 0.0 and high == pytest.approx(1.0)  # median 1 shifted to 0.05; 97.5th percentile 1.95


def test_precision_and_recall_need_more_than_three_rows():
    from models.metrics import kid_and_prc

    gen = torch.Generator().manual_seed(0)
    real = torch.randn(10, 2, generator=gen, dtype=torch.float64)
    three = kid_and_prc(torch.randn(3, 2, generator=gen, dtype=torch.float64), real, 0)
    four = kid_and_prc(torch.randn(4, 2, generator=gen, dtype=torch.float64), real, 0)
    assert math.isnan(three["prc_precision"]) and math.isnan(three["prc_recall"])
    assert not math.isnan(four["prc_precision"]) and not math.isnan(four["prc_recall"])


def _oracle_metric(rows):
    from models.metrics import OracleFD, OracleTruth

    metric = OracleFD(OracleTruth(torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64)))
    metric.update(rows)
    return metric.compute()


def test_the_oracle_notes_a_singular_covariance_at_exactly_as_many_images_as_pixels():
    gen = torch.Generator().manual_seed(0)
    assert "oracle_fd_note" in _oracle_metric(torch.randn(4, 4, generator=gen, dtype=torch.float64))
    assert "oracle_fd_note" not in _oracle_metric(torch.randn(5, 4, generator=gen, dtype=torch.float64))


def test_oracle_var_err_is_the_largest_absolute_variance_error():
    rows = torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = (rows - rows.mean(0)) / rows.std(0)  # sample variance exactly 1 per pixel
    rows[:, 2] *= 2.0                          # variance 4 in one pixel: error 3 there, 0 elsewhere
    assert _oracle_metric(rows)["var_err"] == pytest.approx(3.0, abs=1e-9)


class _Refs:
    def __init__(self, rows):
        self.rows = rows

    def for_images(self, start, count):
        return self.rows[start:start + count]


def test_ref_error_of_one_image_has_no_interval_and_of_many_an_interval_of_means():
    from models.metrics import RefError

    one = RefError(_Refs(torch.zeros(1, 1, 2, 2)), 50, 0)
    one.update(torch.ones(1, 1, 2, 2), torch.arange(1))
    out = one.compute()
    assert out["ref_rmse"] == 1.0 and math.isnan(out["ref_rmse_ci_low"]) and math.isnan(out["ref_rmse_ci_high"])
    many = RefError(_Refs(torch.zeros(10, 1, 1, 1)), 100, 0)
    many.update(torch.arange(10, dtype=torch.float32).reshape(10, 1, 1, 1), torch.arange(10))
    out = many.compute()
    assert out["ref_rmse"] == pytest.approx(4.5) and 1.0 < out["ref_rmse_ci_low"] < 4.5 < out["ref_rmse_ci_high"] < 8


def test_ref_error_takes_its_bootstrap_seed_and_count_from_the_run():
    from models.metrics import create_ref_error

    metric = create_ref_error(None, {"references": {None: _Refs(torch.zeros(1))}, "seed": 7, "bootstrap": 33})
    assert (metric.seed, metric.bootstrap) == (7, 33)


# --------------------------------------------------------------------------- models/features.py (metric parts)


def test_to_uint8_rounds_to_the_nearest_level():
    from models.features import to_uint8

    assert to_uint8(torch.tensor([-1.0, 0.0, 1.0, 0.999, -0.999])).tolist() == [0, 128, 255, 255, 0]


def _floors(measured, intercept=0.0, slope=0.0):
    return {"sizes": {str(n): {"fid": v, "method": "subset"} for n, v in measured.items()},
            "fit": {"intercept": intercept, "slope": slope}}


def test_the_floor_is_linear_in_one_over_n_between_measured_sizes():
    from models.features import interpolate_floor

    # 1/200 lies 4/9 of the way from 1/1000 (FID 1) to 1/100 (FID 10)
    assert interpolate_floor(_floors({100: 10.0, 1000: 1.0}), 200) == pytest.approx(5.0)


def test_an_extrapolated_floor_is_never_negative():
    from models.features import interpolate_floor

    assert interpolate_floor(_floors({100: 1.0, 200: 0.5}, intercept=-1.0, slope=100.0), 1000) == 0.0
    assert interpolate_floor(_floors({100: 1.0, 200: 0.5}, intercept=-1.0, slope=100.0), 50) == pytest.approx(1.0)


def test_floor_sizes_add_a_quarter_a_half_and_all_of_the_test_split():
    from models.features import floor_sizes

    assert floor_sizes(1000, (100, 5000)) == [100, 250, 500, 1000]


def test_compute_floors_measures_the_whole_split_once_and_fits_the_two_largest_sizes():
    from models.features import compute_floors, reference_stats_from_features

    gen = torch.Generator().manual_seed(0)
    reference = reference_stats_from_features(torch.randn(200, 2, generator=gen, dtype=torch.float64))
    floors = compute_floors(torch.randn(40, 2, generator=gen, dtype=torch.float64), reference, sizes=(8,),
                            repeats=3)
    assert {n: row["repeats"] for n, row in floors["sizes"].items()} == {"8": 3, "10": 3, "20": 3, "40": 1}
    assert floors["fit"]["sizes"] == [20, 40]


# --------------------------------------------------------------------------- results.py


def test_each_resume_is_added_to_the_list_of_resumes(tmp_path):
    from bench.results import write_run_config

    write_run_config(tmp_path, {"command": "first", "started_utc": "t0", "git_commit": "c0", "config": {}})
    write_run_config(tmp_path, {"command": "second", "started_utc": "t1", "git_commit": "c1", "config": {}},
                     resume=True)
    write_run_config(tmp_path, {"command": "third", "started_utc": "t2", "git_commit": "c2", "config": {}},
                     resume=True)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["command"] == "first"
    assert [r["command"] for r in config["resumes"]] == ["second", "third"]


def test_a_folder_inside_a_tool_folder_is_foreign(tmp_path):
    from bench.results import _foreign_entries

    (tmp_path / "samples" / "mine.png").mkdir(parents=True)  # a folder, even with a .png name
    (tmp_path / "samples" / "ddim-5.png").write_bytes(b"")
    assert _foreign_entries(tmp_path) == ["samples/mine.png"]


def test_a_results_folder_from_before_the_tool_marker_is_recognised(tmp_path):
    from bench.results import is_results_folder

    (tmp_path / "results.csv").write_text("sampler,steps,status\n")
    (tmp_path / "config.json").write_text(json.dumps({"run_id": "r", "config": {}, "jobs": []}))
    assert is_results_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"config": {}}))
    assert not is_results_folder(tmp_path)
