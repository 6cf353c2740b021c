"""Hardening pass on bookkeeping (issue 17, after mutation round 5): keys, bounds, counts and which value is kept.

Each test pins one documented bookkeeping rule that a one-line slip could break without any earlier test noticing:
which registration wins a name clash, a preset with refused parameters, the fields of the model fingerprint, the
"N more (of M)" timing-warning line on a resumed run, the per-rank timing summary (slowest rank, summed batches,
fastest batch, threads before), the spread warning's batch count, tune-plan's calibration noise and its
--calibration-images bound, an integer Param given a fraction, an unbounded range's text, the CPU network time over
several calls, `bench perf`'s worst overhead and median over repeats, the shipped model order and shift, and the
diffusers config defaults (linear betas, use_flow_sigmas). All are small: the largest runs the Gaussian oracle on
4 images.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench.errors import UserError

RUN = ["run", "--num-samples", "4", "--batch-size", "2", "--grid-images", "0", "--trajectory-images", "0",
       "--quiet"]


# --------------------------------------------------------------------------- bench.plugins


def test_a_preset_whose_parameters_its_sampler_refuses_is_reported_and_dropped(tmp_path):
    from bench.plugins import load_registry

    plugin = tmp_path / "badpreset.py"
    plugin.write_text(
        "from bench import Preset, hookimpl\n"
        "@hookimpl\n"
        "def register_presets(register):\n"
        "    register(Preset('ddim-negative', 'ddim', {'eta': -1.0}, 'eta below its lower bound 0'))\n"
        "    register(Preset('ddim-fine', 'ddim', {'eta': 0.25}, 'a valid one'))\n")
    registry = load_registry([str(plugin)])
    assert "ddim-negative" not in registry.presets
    assert registry.presets["ddim-fine"].plugin == str(plugin)
    assert any(e.startswith("preset 'ddim-negative'") and e.endswith("; ignored") for e in registry.errors)


# --------------------------------------------------------------------------- bench.reference


def _fake_denoiser(schedule="linear", weights=(0.5, 0.5)):
    info = SimpleNamespace(path="vp-discrete", shift=None, prediction_type="eps", image_shape=(1, 2, 2))
    mixture = SimpleNamespace(means=torch.zeros(2, 4), variances=torch.ones(2), weights=torch.tensor(weights))
    return SimpleNamespace(info=info, schedule=schedule, mixture=mixture)


def test_the_model_fingerprint_depends_on_the_schedule_and_the_mixture_weights():
    from bench.reference import model_fingerprint

    base = model_fingerprint(_fake_denoiser())
    assert base == model_fingerprint(_fake_denoiser())
    assert model_fingerprint(_fake_denoiser(schedule="cosine")) != base
    assert model_fingerprint(_fake_denoiser(weights=(0.25, 0.75))) != base


# --------------------------------------------------------------------------- bench.harness


def test_the_count_of_more_timing_warnings_is_of_the_configurations_this_run_sampled(tmp_path, monkeypatch, capsys):
    import pandas as pd

    import bench.harness
    import bench.jobs
    from bench.cli import main

    monkeypatch.setattr(bench.jobs, "MIN_TIMED_S", 0.0)
    monkeypatch.setattr(bench.harness, "timing_warning", lambda row: f"busy {row['steps']}")
    out = tmp_path / "run"
    assert main([*RUN, "--model", "gaussian-oracle", "--metrics", "none", "--samplers", "ddim",
                 "--steps", "1,2,3,4,5,6,7,8,9", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: 4 more configurations (of 9) had busy or noisy timings" in err
    results = pd.read_csv(out / "results.csv")
    assert (results["batch_size"] == 2).all() and (results["num_samples"] == 4).all()  # --batch-size 2 of 4
    results[results["steps"] <= 2].to_csv(out / "results.csv", index=False)  # as if interrupted after two rows
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("warning: busy")] == [
        f"warning: busy {s}" for s in range(3, 8)]
    assert "warning: 2 more configurations (of 7) had busy or noisy timings" in err


# --------------------------------------------------------------------------- bench.timing


def _times(seconds, images, passes=1):
    from bench.timing import BatchTimes

    t = BatchTimes()
    for s, n in zip(seconds, images, strict=True):
        t.add(s, n)
    t.passes = passes
    return t


def test_summarize_gives_the_fastest_batch_as_min_and_the_threads_before_and_after():
    from bench.timing import MachineState, summarize

    row = summarize(_times([4.0, 1.0, 2.0], [2, 2, 2]), 6, MachineState(0.0, 8, 3), MachineState(0.0, 8, 5))
    assert row["wall_s_min"] == 0.5 * 6 and row["wall_s_max"] == 2.0 * 6 and row["wall_s"] == 1.0 * 6
    assert (row["threads_before"], row["threads"]) == (3, 5)


def test_summarize_ranks_takes_the_slowest_ranks_wall_time_and_sums_the_batches():
    from bench.timing import MachineState, summarize_ranks

    state = MachineState(0.0, 8, 1)
    fast, slow = _times([1.0, 1.0], [2, 2]), _times([3.0, 3.0, 3.0], [2, 2, 2])
    out = summarize_ranks([fast, slow], [4, 6], [state, state], [state, state], 10)
    assert out["wall_s"] == 1.5 * 6  # the slower rank: 1.5 s per image on its 6 images
    assert out["timing_batches"] == 5
    assert out["s_per_image"] == pytest.approx(0.9) and out["world_size"] == 2


def test_the_spread_warning_counts_timed_batches_not_passes():
    from bench.timing import BUSY_SPREAD, timing_warning

    row = {"sampler": "ddim", "steps": 3, "busy": False, "timing_spread": BUSY_SPREAD + 0.5,
           "timing_batches": 12, "timing_passes": 4}
    assert "across 12 timed batches" in timing_warning(row)


# --------------------------------------------------------------------------- bench.tune


def test_tune_plan_hands_the_calibration_stream_to_the_descent(tmp_path, monkeypatch):
    import bench.tune
    from bench.cli import main

    seeds = []
    real = bench.tune.tune_one

    def recording(spec, params, denoiser, steps, references, indices, noise_seed):
        seeds.append(noise_seed)
        return real(spec, params, denoiser, steps, references, indices, noise_seed)

    monkeypatch.setattr(bench.tune, "tune_one", recording)
    assert main(["tune-plan", "--model", "gaussian-single", "--calibration-images", "2", "--samplers", "ddim",
                 "--nfe", "3", "--seed", "5", "--out", str(tmp_path / "plan.json")]) == 0
    assert seeds == [bench.tune.calibration_seed(5)]


def test_calibration_images_may_be_exactly_one_hundred_thousand(tmp_path, monkeypatch):
    import bench.plugins
    from bench.tune import run_tune

    class Validated(Exception):
        pass

    def stop(*args, **kwargs):
        raise Validated

    monkeypatch.setattr(bench.plugins, "load_registry", stop)  # the first thing after the checks

    def args(count):
        return SimpleNamespace(threads=0, nfe="3", calibration_images=count, out=str(tmp_path / "plan.json"),
                               force=False, samplers=["ddim"], model="gaussian-single", seed=0)

    for good in (1, 100_000):
        with pytest.raises(Validated):
            run_tune(args(good))
    for bad in (0, 100_001):
        with pytest.raises(UserError, match="--calibration-images must be in 1..100000"):
            run_tune(args(bad))


# --------------------------------------------------------------------------- bench.registry


def test_an_integer_parameter_refuses_a_fraction_and_accepts_a_whole_float():
    from bench.registry import Param

    param = Param(3, "a count", low=1)
    assert param.convert("n", 2.0) == 2 and type(param.convert("n", 2.0)) is int
    with pytest.raises(UserError, match="is not a valid int"):
        param.convert("n", 2.5)


def test_a_half_bounded_range_is_written_open_at_infinity():
    from bench.registry import Param

    assert Param(1.0, "a scale", low=0.0).allowed() == "in [0, inf)"
    assert Param(1.0, "a shift", high=2.0).allowed() == "in (-inf, 2]"


# --------------------------------------------------------------------------- bench.measure


def test_cpu_network_seconds_add_up_over_calls(monkeypatch):
    import bench.measure
    from bench.measure import CountingDenoiser

    clock = iter([0.0, 10.0, 11.0, 20.0, 20.0, 22.0])  # per call: call start, network start, network end
    monkeypatch.setattr(bench.measure, "time", SimpleNamespace(perf_counter=lambda: next(clock)))

    class Inner:
        schedule, info = None, None

        def __call__(self, x_t, t, cond=None):
            return x_t

    counter = CountingDenoiser(Inner())
    x = torch.zeros(3, 1, 2, 2)
    counter(x, torch.zeros(3))
    counter(x, torch.zeros(3))
    assert counter.network_seconds() == 3.0
    assert (counter.calls, counter.rows, counter.call_starts) == (2, 6, [0.0, 20.0])


# --------------------------------------------------------------------------- bench.perf


def test_perf_takes_the_median_overhead_of_the_repeats():
    from bench.perf import _time_job

    rows = [{"status": "ok", "nfe": 3, "wall_s": w, "overhead_frac": o}
            for w, o in ((1.0, 0.10), (3.0, 0.50), (2.0, 0.20))]
    harness = SimpleNamespace(run_job=lambda job, bar: rows.pop(0))
    assert _time_job(harness, SimpleNamespace(steps=3), 3) == {"steps": 3, "nfe": 3, "wall_s": 2.0,
                                                               "overhead_frac": 0.20}


def test_perf_fails_on_the_worst_samplers_overhead(tmp_path, monkeypatch):
    import bench.perf

    overhead = {"a": 0.01, "b": 0.20}
    choice = {name: SimpleNamespace(label=name, spec=SimpleNamespace(fixed_steps=lambda T, p: None), params={})
              for name in ("lin", "a", "b")}
    harness = SimpleNamespace(model_name="m", device=torch.device("cpu"))
    monkeypatch.setattr(bench.perf, "_harness", lambda *a: (harness, SimpleNamespace(num_timesteps=1000,
                                                                                     schedule=None)))
    monkeypatch.setattr(bench.perf, "resolve_samplers",
                        lambda specs, registry: [choice["a"], choice["b"]] if specs == ["all"] else [choice["lin"]])
    monkeypatch.setattr(bench.perf, "plan_jobs", lambda choices, steps, schedule: [
        SimpleNamespace(label=c.label, steps=s) for c in choices for s in steps])
    monkeypatch.setattr(bench.perf, "_time_job", lambda h, job, repeats: {
        "steps": job.steps, "nfe": job.steps, "wall_s": 0.1 + 0.01 * job.steps,
        "overhead_frac": overhead.get(job.label, 0.0)})
    out = tmp_path / "perf.json"
    args = SimpleNamespace(model=None, device="cpu", sampler="lin", steps="10,20,50", overhead_steps=50,
                           num_samples=4, repeats=1, full_run=False, out=str(out), plugin=None)
    assert bench.perf.run_perf(args) == 1
    report = json.loads(out.read_text())
    assert report["overhead"]["worst"] == 0.20 and report["overhead"]["passed"] is False
    assert report["linearity"]["passed"] is True


# --------------------------------------------------------------------------- models.builtin


def test_shipped_weights_list_the_default_model_first_and_only_carded_files(tmp_path):
    from models.builtin import DEFAULT_MODEL, shipped_weights
    from models.weights import REQUIRED_CARD_FIELDS

    card = json.dumps({name: "x" for name in REQUIRED_CARD_FIELDS})
    for stem in ("aaa", DEFAULT_MODEL, "zzz", "nocard"):
        (tmp_path / f"{stem}.safetensors").write_bytes(b"")
        if stem != "nocard":
            (tmp_path / f"{stem}.json").write_text(card)
    assert [p.stem for p in shipped_weights(tmp_path)] == [DEFAULT_MODEL, "aaa", "zzz"]


def test_a_shipped_model_has_a_shift_only_on_the_flow_path(tmp_path, monkeypatch):
    import models.builtin
    from models.weights import REQUIRED_CARD_FIELDS

    paths = []
    for stem, path in (("vp", None), ("fl", {"kind": "flow", "shift": 3.0})):
        card = {name: "x" for name in REQUIRED_CARD_FIELDS}
        card.pop("path", None)
        if path is not None:
            card["path"] = path
        (tmp_path / f"{stem}.json").write_text(json.dumps(card))
        paths.append(tmp_path / f"{stem}.safetensors")
    monkeypatch.setattr(models.builtin, "shipped_weights", lambda: paths)
    specs = []
    models.builtin.register_models(register=specs.append)
    by_name = {s.name: s for s in specs}
    assert (by_name["vp"].path, by_name["vp"].shift) == ("vp-discrete", None)
    assert (by_name["fl"].path, by_name["fl"].shift) == ("flow", 3.0)


# --------------------------------------------------------------------------- models.diffusers_adapter


def test_a_scheduler_config_without_beta_schedule_gives_diffusers_linear_betas():
    from bench.schedule import NoiseSchedule, ScheduleConfig
    from models.diffusers_adapter import schedule_from_config

    schedule = schedule_from_config({"num_train_timesteps": 1000}, Path("scheduler_config.json"))
    assert torch.equal(schedule.betas, NoiseSchedule.from_config(ScheduleConfig("linear", 1000, 1e-4, 0.02)).betas)


def test_use_flow_sigmas_makes_a_flow_path_with_its_flow_shift():
    from models.diffusers_adapter import path_from_config

    path, prediction = path_from_config({"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True,
                                         "flow_shift": 3.0, "num_train_timesteps": 1000}, Path("s.json"))
    assert prediction == "flow" and path.kind == "flow" and path.path_config.shift == 3.0


# --------------------------------------------------------------------------- bench.distributed (one process)


def test_launched_processes_defaults_local_rank_to_rank_and_refuses_rank_equal_to_world_size():
    from bench.distributed import launched_processes

    assert launched_processes({}) == (0, 1, 0)
    assert launched_processes({"WORLD_SIZE": "4", "RANK": "3"}) == (3, 4, 3)
    assert launched_processes({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(UserError, match="RANK=4 is not in 0..WORLD_SIZE-1"):
        launched_processes({"WORLD_SIZE": "4", "RANK": "4"})


# --------------------------------------------------------------------------- bench.harness (resume, config.json)


def test_a_guided_rows_recorded_timesteps_are_checked_on_resume(tmp_path, capsys):
    from bench.harness import _rows_still_valid
    from bench.selection import job_key

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"jobs": [{"sampler": "ddim", "steps": 3, "guidance": 2.0,
                                            "timesteps": [999, 500, 0]}]}))
    job = SimpleNamespace(key=job_key("ddim", 3, 2.0), timesteps=(999, 666, 333), steps=3,
                          choice=SimpleNamespace(label="ddim"))
    assert _rows_still_valid({job.key: {"status": "ok"}}, [job], config) == {}
    assert "ddim @ 3: its timesteps differ" in capsys.readouterr().err
    same = SimpleNamespace(key=job.key, timesteps=(999, 500, 0), steps=3, choice=job.choice)
    assert _rows_still_valid({job.key: {"status": "ok"}}, [same], config) == {job.key: {"status": "ok"}}


def test_config_json_and_the_rows_record_the_batch_size_and_plan_used(tmp_path, monkeypatch):
    import pandas as pd

    import bench.jobs
    from bench.cli import main

    monkeypatch.setattr(bench.jobs, "MIN_TIMED_S", 0.0)
    out = tmp_path / "run"
    assert main(["run", "--num-samples", "3", "--grid-images", "0", "--trajectory-images", "0", "--quiet",
                 "--model", "gaussian-oracle", "--metrics", "none", "--samplers", "ddim:plan=quadratic", "--steps", "4",
                 "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["num_samples"], config["batch_size"]) == (3, 3)  # the default batch, capped at the samples
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert (row["plan"], row["batch_size"], row["num_samples"]) == ("quadratic", 3, 3)


# --------------------------------------------------------------------------- bench.timing (passes, busy text)


def test_timing_batches_count_every_batch_of_every_pass():
    from bench.timing import MachineState, summarize

    state = MachineState(0.0, 8, 1)
    row = summarize(_times([1.0, 1.0, 1.0, 1.0], [2, 2, 2, 2], passes=2), 4, state, state)
    assert (row["timing_batches"], row["timing_passes"]) == (4, 2)


def test_the_busy_warning_gives_the_load_before_and_after():
    from bench.timing import timing_warning

    row = {"sampler": "ddim", "steps": 3, "busy": True, "load_before": 1.0, "load_after": 3.0, "cpu_cores": 2}
    assert "load average 1.0 before, 3.0 after, on 2 cores" in timing_warning(row)


# --------------------------------------------------------------------------- bench.cli (integer options)


def test_run_threads_must_be_positive_and_bootstrap_may_be_zero():
    from bench.cli import build_parser

    parser = build_parser()
    base = ["run", "--model", "gaussian-oracle"]
    assert parser.parse_args([*base, "--bootstrap", "0", "--threads", "1"]).bootstrap == 0
    assert parser.parse_args([*base, "--grid-images", "0", "--trajectory-images", "0"]).grid_images == 0
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--threads", "0"])
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--bootstrap", "-1"])
