"""Timing on a shared machine: per-batch medians and spread, repeats that leave the scores alone, load flags."""

import json
import math

import pytest
import torch

from bench.config import RunConfig
from bench.harness import Harness, run_benchmark
from bench.selection import plan_jobs, resolve_samplers
from bench.timing import BatchTimes, MachineState, repeat_until, summarize, timing_warning

QUIET = MachineState(load=0.5, cores=2, threads=1)


def test_summary_is_the_median_and_quartiles_of_seconds_per_image():
    times = BatchTimes()
    for seconds in (1.0, 2.0, 3.0, 4.0, 100.0):  # one batch hit by a neighbour's burst
        times.add(seconds, 10)
    times.passes = 1
    row = summarize(times, num_images=50, before=QUIET, after=QUIET)
    assert row["s_per_image"] == pytest.approx(0.3)
    assert row["wall_s"] == pytest.approx(15.0)  # the median, not the 110 s sum
    assert (row["wall_s_q1"], row["wall_s_q3"]) == pytest.approx((10.0, 20.0))
    assert (row["wall_s_min"], row["wall_s_max"]) == pytest.approx((5.0, 500.0))
    assert row["timing_spread"] == pytest.approx((0.4 - 0.2) / 0.3)


def test_the_median_step_ignores_a_burst_that_hit_two_steps_of_a_single_batch():
    times = BatchTimes()
    steps = [0.1] * 8 + [5.0, 5.0]  # 10 steps of a 10-image batch; a neighbour took the cores for two of them
    times.add(sum(steps), 10, steps)
    times.passes = 1
    row = summarize(times, num_images=10, before=QUIET, after=QUIET)
    assert row["wall_s"] == pytest.approx(10.8)
    assert row["wall_s_steps"] == pytest.approx(1.0)  # 10 steps x 0.1 s


def test_a_single_timed_batch_has_no_spread():
    times = BatchTimes()
    times.add(2.0, 4)
    assert math.isnan(summarize(times, 4, QUIET, QUIET)["timing_spread"])


def test_repeats_stop_at_the_minimum_time_or_the_pass_limit():
    def one_pass(into):
        into.add(0.3, 1)

    first = BatchTimes()
    one_pass(first)
    first.passes = 1
    assert repeat_until(1.0, first, one_pass).passes == 4
    capped = BatchTimes(seconds=[0.0], images=[1], passes=1)
    assert repeat_until(1.0, capped, lambda into: into.add(0.0, 1), max_passes=3).passes == 3


def test_busy_machine_and_wide_spread_are_warned_about():
    row = {"sampler": "ddim", "steps": 10, "busy": False, "timing_spread": 0.1, "timing_batches": 5}
    assert timing_warning(row) is None
    assert "noisy" in timing_warning(row | {"timing_spread": 0.9})
    busy = row | {"busy": True, "load_before": 3.2, "load_after": 2.9, "cpu_cores": 2}
    assert "busy" in timing_warning(busy)
    assert MachineState(load=3.0, cores=2, threads=1).busy and not QUIET.busy


def _harness(registry, oracle, tmp_path, min_timed_s):
    config = RunConfig(model="gaussian-oracle", num_samples=12, batch_size=4, grid_images=0, trajectory_images=0,
                       bootstrap=0)
    harness = Harness(config, registry, tmp_path, oracle, torch.device("cpu"), "gaussian-oracle", 12, 4,
                      [registry.metrics["oracle-fd"]], "t")
    harness.min_timed_s = min_timed_s
    return harness


def test_repeated_timing_passes_leave_nfe_and_scores_unchanged(registry, oracle, tmp_path):
    job = plan_jobs(resolve_samplers(["ddim:eta=1"], registry), (5,), oracle.schedule)[0]
    once = _harness(registry, oracle, tmp_path, 0.0).run_job(job, None)
    repeated = _harness(registry, oracle, tmp_path, 1e9).run_job(job, None)  # every pass up to MAX_PASSES
    assert once["timing_passes"] == 1 and repeated["timing_passes"] > 1
    assert repeated["timing_batches"] == 3 * repeated["timing_passes"]
    for column in ("nfe", "rows_evaluated", "oracle_fd", "mean_err", "var_err"):
        assert repeated[column] == once[column], column


def test_config_json_records_timing_provenance(registry, tmp_path):
    config = RunConfig(samplers=("ddim",), steps=(2,), model="gaussian-oracle", num_samples=4, batch_size=2,
                       grid_images=0, trajectory_images=0, metrics=("none",))
    out = run_benchmark(config, registry, out=str(tmp_path / "run"), quiet=True)
    timing = json.loads((out / "config.json").read_text())["timing"]
    assert timing["world_size"] == 1 and timing["batch_size"] == 2
    assert timing["threads"] == torch.get_num_threads() and timing["torch"] == torch.__version__
    assert {"device_name", "cuda", "tf32_matmul", "compile", "cpu_cores"} <= set(timing)


def test_a_busy_machine_is_warned_about_on_stderr_and_in_the_report(registry, tmp_path, monkeypatch, capsys):
    import bench.timing
    monkeypatch.setattr(bench.timing.MachineState, "now", classmethod(lambda cls: cls(load=7.5, cores=2, threads=1)))
    config = RunConfig(samplers=("ddim",), steps=(2,), model="gaussian-oracle", num_samples=4, batch_size=2,
                       grid_images=0, trajectory_images=0, metrics=("none",))
    out = run_benchmark(config, registry, out=str(tmp_path / "run"), quiet=True)
    assert "warning: ddim @ 2: the machine was busy (load average 7.5" in capsys.readouterr().err
    assert "## Timing warnings" in (out / "report.md").read_text()


def test_many_busy_configurations_are_counted_in_one_report_line():
    import pandas as pd

    from bench.report import timing_warnings
    rows = [{"sampler": f"s{i}", "steps": 10, "status": "ok", "busy": True, "load_before": 3.0 + i, "load_after": 3.0,
             "cpu_cores": 2, "timing_spread": 0.1, "timing_batches": 5} for i in range(7)]
    (line,) = timing_warnings(pd.DataFrame(rows))
    assert line.startswith("7 of 7 configurations were timed while the machine was busy (load average up to 9.0")


def test_our_own_threads_do_not_make_the_machine_busy():
    assert not MachineState(load=2.0, cores=2, threads=2).busy  # the load of our own sampling alone
    assert MachineState(load=2.6, cores=2, threads=2).busy      # plus half a core of someone else's work
    assert not MachineState(load=1.4, cores=4, threads=1).busy  # others use cores we do not need
