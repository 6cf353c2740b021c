"""Every check that raises a UserError is made to raise it by some test, and one value inside it is accepted.

A coverage run with per-test contexts (README, "How good are the tests?") listed the `raise UserError` lines that
no fast test reached: 46 of 195 checks. Deleting such a check, or moving its bound, could not fail any test. Each
test here triggers one of them, asserts the message names what is wrong, and where the check has a bound, shows
that the value on the good side of it passes.
"""

from __future__ import annotations

import json
import shutil
from argparse import Namespace
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.errors import UserError

WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "weights"


def refused(argv, capsys, *fragments) -> str:
    """main(argv) exits 2 with one error line holding every fragment."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


# --------------------------------------------------------------------------- bench/denoiser.py, bench/device.py

def test_a_denoiser_refuses_an_unknown_prediction_type_and_takes_each_known_one():
    from bench.denoiser import PREDICTION_TYPES, Denoiser, DenoiserInfo
    from bench.schedule import NoiseSchedule

    schedule = NoiseSchedule.linear(10)
    for kind in (k for k in PREDICTION_TYPES if k not in ("flow", "edm")):  # those two need a continuous path
        assert Denoiser(schedule, DenoiserInfo("m", (1, 2, 2), prediction_type=kind), lambda x, t: x).info
    with pytest.raises(UserError, match="unknown prediction type 'score'"):
        Denoiser(schedule, DenoiserInfo("m", (1, 2, 2), prediction_type="score"), lambda x, t: x)


def test_autocast_refuses_an_unknown_precision_even_when_called_directly():
    from bench.device import PRECISIONS, autocast_dtype

    assert autocast_dtype("fp32", torch.device("cpu")) is None
    assert "fp32" in PRECISIONS
    with pytest.raises(UserError, match="--precision must be one of .*got 'fp64'"):
        autocast_dtype("fp64", torch.device("cpu"))


# --------------------------------------------------------------------------- bench/distributed.py

def test_on_main_raises_the_main_ranks_user_error_on_every_rank_and_returns_its_value_otherwise():
    from bench.distributed import Processes

    class Peer(Processes):  # rank 1 of 2: the broadcast delivers what rank 0 sent
        def __init__(self, payload):
            super().__init__(rank=1, world_size=2)
            self.payload = payload

        def broadcast(self, obj):
            return self.payload

    with pytest.raises(UserError, match="^no such model$"):
        Peer(("error", "no such model")).on_main(lambda: pytest.fail("only rank 0 runs fn"))
    assert Peer(("ok", 42)).on_main(lambda: pytest.fail("only rank 0 runs fn")) == 42


# --------------------------------------------------------------------------- bench/harness.py

def test_model_defaults_refuse_non_positive_counts_that_bypass_the_config(monkeypatch):
    from bench.config import RunConfig
    from bench.harness import _model_defaults

    for n, b in ((4, 1), (1, 1)):
        assert _model_defaults(RunConfig(num_samples=n, batch_size=b), torch.device("cpu"))[1:] == (n, b)
    for counts in ({"num_samples": -3}, {"batch_size": -1}):
        bad = RunConfig(num_samples=4, batch_size=1)
        for name, value in counts.items():
            object.__setattr__(bad, name, value)
        with pytest.raises(UserError, match="--num-samples and --batch-size must be positive"):
            _model_defaults(bad, torch.device("cpu"))


def test_an_unregistered_default_model_is_named_with_how_to_pick_another(sandbox, capsys, monkeypatch):
    from bench import harness

    monkeypatch.setitem(harness.DEFAULT_MODEL, "cpu", "no-such-default")
    refused(["run", "--samplers", "ddim", "--steps", "2", "--num-samples", "2", "--device", "cpu"], capsys,
            "the default model 'no-such-default' for cpu is not registered", "--model")
    assert not Path("results").exists()


def test_an_out_that_is_a_file_is_refused_and_left_as_it_was(sandbox, capsys):
    Path("taken").write_text("mine")
    refused(["run", "--model", "gaussian-oracle", "--samplers", "ddim", "--steps", "2", "--num-samples", "2",
             "--out", "taken"], capsys, "--out taken is a file, not a folder")
    assert Path("taken").read_text() == "mine"


# --------------------------------------------------------------------------- bench/orders.py

def test_orders_refuse_a_model_without_a_single_gaussian_oracle_and_an_unknown_solver(capsys):
    refused(["orders", "--model", "gaussian-oracle"], capsys,
            "--model gaussian-oracle: orders need an exact single-Gaussian oracle", "gaussian-single")
    refused(["orders", "--solvers", "ddim,dpm-solver-9"], capsys, "unknown solver 'dpm-solver-9' for orders",
            "ddim")


# --------------------------------------------------------------------------- bench/paired.py

def test_paired_means_refuse_a_feature_file_that_is_not_a_finite_vector(tmp_path):
    from bench.paired import paired_mean_table

    (tmp_path / "features").mkdir()
    good = np.linspace(1.0, 2.0, 6)
    bad = {"matrix": good.reshape(2, 3), "nan": np.where(good > 1.5, np.nan, good), "inf": good / 0.0}
    for name, values in {"a": good, "b": good + 0.25, **bad}.items():
        np.save(tmp_path / "features" / f"{name}.npy", values)

    def frame(*names):
        return pd.DataFrame([{"sampler": n, "steps": 5, "nfe": 5, "status": "ok", "ref_rmse": 1.0,
                              "ref_rmse_file": f"features/{n}.npy"} for n in names])

    assert paired_mean_table(tmp_path, frame("a", "b"), "ref_rmse", resamples=20).iloc[0]["diff"] == \
        pytest.approx(-0.25)
    for name in bad:
        with pytest.raises(UserError, match=f"{name}.npy: expected a finite vector"):
            paired_mean_table(tmp_path, frame("a", name), "ref_rmse", resamples=20)


# --------------------------------------------------------------------------- bench/paths.py

def test_a_path_needs_t_min_below_1_and_vp_continuous_needs_linear_or_cosine_betas():
    from bench.paths import PathConfig, VPContinuousPath

    assert PathConfig(kind="vp-continuous", t_min=0.999).t_min == 0.999
    for t_min in (1, 1.0, 2.5):
        with pytest.raises(UserError, match=f"path t_min must be in \\(0, 1\\), got {t_min}"):
            PathConfig(kind="vp-continuous", t_min=t_min)
    for schedule in ("linear", "cosine"):
        assert VPContinuousPath(PathConfig(kind="vp-continuous", schedule=schedule)).alpha(0.5) > 0
    with pytest.raises(UserError, match="vp-continuous continues the linear or cosine betas, not 'sigmoid'"):
        VPContinuousPath(PathConfig(kind="vp-continuous", schedule="sigmoid"))


# --------------------------------------------------------------------------- bench/perf.py

def test_perf_refuses_an_out_file_that_exists_before_measuring(tmp_path, capsys):
    out = tmp_path / "perf.json"
    out.write_text("{}")
    refused(["perf", "--out", str(out)], capsys, f"--out {out} already exists; name a new file")
    assert out.read_text() == "{}"


# --------------------------------------------------------------------------- bench/plans.py

def test_the_full_plan_takes_t_steps_or_none_and_refuses_any_other_count():
    from bench.plans import full_plan

    assert full_plan(4) == full_plan(4, 4) == [3, 2, 1, 0]
    for steps in (3, 5):
        with pytest.raises(UserError, match=f"visits all T=4 timesteps; got steps={steps}"):
            full_plan(4, steps)


def test_karras_plans_need_rho_above_0_on_both_discrete_and_continuous_models():
    from bench.paths import PathConfig, make_path
    from bench.plans import continuous_karras, karras_times
    from bench.schedule import NoiseSchedule

    schedule = NoiseSchedule.linear(100)
    path = make_path(PathConfig(kind="ve"))
    assert len(karras_times(schedule, 5, rho=0.5)) == 5 and len(continuous_karras(path, 5, rho=0.5)) == 5
    for rho in (0, -7.0, float("nan")):
        with pytest.raises(UserError, match="rho must be > 0 for the karras plan"):
            karras_times(schedule, 5, rho=rho)
        with pytest.raises(UserError, match="rho must be > 0 for the karras plan"):
            continuous_karras(path, 5, rho=rho)


def test_continuous_plans_take_1_to_t_steps_and_refuse_the_rest():
    from bench.paths import PathConfig, make_path
    from bench.plans import continuous_plan

    path = make_path(PathConfig(kind="flow"))
    assert len(continuous_plan("uniform", path, 1)) == 1
    assert len(continuous_plan("uniform", path, path.num_timesteps)) == path.num_timesteps
    for steps in (0, path.num_timesteps + 1, True, 2.0, None):
        with pytest.raises(UserError, match=f"steps must be between 1 and {path.num_timesteps}, got {steps!r}"):
            continuous_plan("uniform", path, steps)


def test_a_continuous_plan_that_does_not_strictly_decrease_is_refused(monkeypatch):
    from bench import plans
    from bench.paths import PathConfig, make_path

    path = make_path(PathConfig(kind="flow"))
    monkeypatch.setitem(plans.CONTINUOUS_PLANS, "uniform", lambda p, n: [1.0, 0.5, 0.5])
    with pytest.raises(UserError, match="not strictly decreasing on this flow path"):
        plans.continuous_plan("uniform", path, 3)
    monkeypatch.setitem(plans.CONTINUOUS_PLANS, "uniform", lambda p, n: [1.0, 0.5, 0.25])
    assert plans.continuous_plan("uniform", path, 3) == [1.0, 0.5, 0.25]


def test_make_plan_refuses_an_unknown_plan_by_name():
    from bench.plans import PLANS, make_plan

    assert make_plan("uniform", 10, 2) and "uniform" in PLANS
    with pytest.raises(UserError, match="unknown timestep plan 'karas'; expected one of"):
        make_plan("karas", 10, 2)


# --------------------------------------------------------------------------- bench/registry.py

def test_an_unknown_model_is_named_with_a_suggestion_and_the_registered_ones(registry):
    assert registry.model("gaussian-single").name == "gaussian-single"
    with pytest.raises(UserError, match="unknown model 'gaussian-singel'.*gaussian-single") as info:
        registry.model("gaussian-singel")
    assert "Available:" in str(info.value)


def test_the_sections_plan_needs_integer_timesteps_and_its_own_step_count(registry):
    from bench.paths import PathConfig, make_path
    from bench.schedule import NoiseSchedule

    spec = registry.samplers["stride"]
    params = spec.resolve_params({"sections": "2,3"})
    schedule = NoiseSchedule.linear(100)
    assert len(spec.timesteps(schedule, 5, params)) == 5 and len(spec.timesteps(schedule, None, params)) == 5
    for steps in (4, 6):
        with pytest.raises(UserError, match=f"stride: sections '2,3' give 5 steps, not {steps}"):
            spec.timesteps(schedule, steps, params)
    with pytest.raises(UserError, match="sections plan cuts T integer timesteps and cannot run on this model's "
                                        "flow path"):
        spec.timesteps(make_path(PathConfig(kind="flow")), 5, params)


# --------------------------------------------------------------------------- bench/sampling.py

def test_guided_sampling_refuses_a_call_without_labels():
    from bench.sampling import GuidedDenoiser

    class Cond:
        num_classes = 3

        def __call__(self, x, t, cond=None):
            return torch.zeros_like(x) if cond is None else cond.float().view(-1, 1, 1, 1).expand_as(x)

    guided = GuidedDenoiser(Cond(), 2.0)
    with pytest.raises(UserError, match="guided sampling needs class labels"):
        guided(torch.zeros(2, 1, 2, 2), torch.tensor([5, 5]))
    out = guided(torch.zeros(2, 1, 2, 2), torch.tensor([5, 5]), torch.tensor([1, 2]))
    assert out[:, 0, 0, 0].tolist() == pytest.approx([(1 + 2) * 1 - 2 * 3, (1 + 2) * 2 - 2 * 3])


# --------------------------------------------------------------------------- bench/selection.py

def test_selection_refuses_empty_choices_and_non_integer_steps(registry):
    from bench.selection import plan_jobs, resolve_samplers, validate_steps

    with pytest.raises(UserError, match="no samplers selected; try --samplers all"):
        resolve_samplers([], registry)
    with pytest.raises(UserError, match="no step counts given"):
        validate_steps([], 10)
    for bad in (True, 2.5, None):
        with pytest.raises(UserError, match=f"steps must be integers, got {bad!r}"):
            validate_steps([bad], 10)
    assert validate_steps([2, "3", 2], 10) == (2, 3)
    from bench.paths import PathConfig, make_path

    integer_only = [c for c in resolve_samplers(["all"], registry) if c.spec.name == "ddpm"]
    with pytest.raises(UserError, match="no configuration can run on this model: ddpm"):
        plan_jobs(integer_only, (4,), make_path(PathConfig(kind="flow")))


# --------------------------------------------------------------------------- bench/tune.py

def _tune_args(tmp_path, **over):
    base = dict(model="gaussian-single", samplers=["ddim"], nfe="2", calibration_images=4, seed=0, threads=None,
                out=str(tmp_path / "plans.json"), force=False)
    return Namespace(**{**base, **over})


def test_tune_plan_refuses_an_existing_out_a_missing_folder_and_a_conditional_model(tmp_path, capsys):
    out = tmp_path / "plans.json"
    out.write_text("{}")
    refused(["tune-plan", "--model", "gaussian-single", "--samplers", "ddim", "--nfe", "2", "--out", str(out)],
            capsys, f"--out {out} exists; pass --force to replace it")
    assert out.read_text() == "{}"
    refused(["tune-plan", "--model", "gaussian-single", "--samplers", "ddim", "--nfe", "2", "--out",
             str(tmp_path / "no" / "plans.json")], capsys, f"folder {tmp_path / 'no'} does not exist")
    refused(["tune-plan", "--model", "gaussian-oracle-cond", "--samplers", "ddim", "--nfe", "2", "--out",
             str(tmp_path / "c.json")], capsys, "tune-plan tunes unconditional models")


def test_tune_one_refuses_a_step_count_no_start_plan_can_run(registry, oracle):
    from bench.tune import START_PLANS, tune_one

    spec = registry.samplers["ddim"]
    with pytest.raises(UserError, match=f"ddim: none of the start plans {', '.join(START_PLANS)} runs with 0 steps"):
        tune_one(spec, spec.resolve_params({}), oracle, 0, None, torch.arange(2), 0)


# --------------------------------------------------------------------------- models/

def test_datasets_refuse_an_unknown_split():
    from models.data import SPLITS, load_dataset

    assert load_dataset("digits", "test")[0].shape[0] > 0 and "test" in SPLITS
    with pytest.raises(UserError, match="unknown split 'valid' for dataset 'digits'; expected one of"):
        load_dataset("digits", "valid")


def test_cifar10_without_its_folder_is_not_found_rather_than_corrupt(tmp_path, monkeypatch):
    from models.data import CIFAR10_ENV, load_dataset

    monkeypatch.delenv(CIFAR10_ENV, raising=False)
    with pytest.raises(UserError, match=f"dataset 'cifar10' not found in '{tmp_path}': download") as info:
        load_dataset("cifar10", "test", data_dir=str(tmp_path))
    assert "corrupt" not in str(info.value)
    with pytest.raises(UserError, match="dataset 'cifar10' not found: download"):
        load_dataset("cifar10", "test")
    (tmp_path / "cifar-10-batches-py").mkdir()  # the folder is there but empty: that one is incomplete
    with pytest.raises(UserError, match="is incomplete or corrupt"):
        load_dataset("cifar10", "test", data_dir=str(tmp_path))


def test_feature_extractors_refuse_a_dataset_with_none_shipped(tmp_path):
    from models.features import load_card, load_feature_net, reference_stats

    for load in (load_card, load_feature_net, reference_stats):
        with pytest.raises(UserError, match="no feature extractor for dataset 'digits' in .*train-features "
                                            "--dataset digits"):
            load("digits", tmp_path)


def test_fid_refuses_to_compute_before_any_samples():
    from models.metrics import FeatureMetrics

    metrics = FeatureMetrics(lambda x: x, None, None, seed=0, bootstrap=10)
    with pytest.raises(UserError, match="fid: no samples were passed to update"):
        metrics.compute()


def test_networks_refuse_an_unknown_architecture_and_labels_to_an_unconditional_unet():
    from models.networks import build_network, time_input_kind

    assert time_input_kind("ddpm-unet") == "index" and time_input_kind("context-unet") == "fraction"
    with pytest.raises(UserError, match="unknown architecture 'ddpm-net'; expected one of"):
        time_input_kind("ddpm-net")
    net = build_network("ddpm-unet", {"base_channels": 8, "channel_mults": [1], "image_size": 8, "groups": 4})
    x, t = torch.zeros(2, 1, 8, 8), torch.tensor([1, 2])
    assert net(x, t).shape == x.shape
    with pytest.raises(UserError, match="this ddpm-unet is unconditional"):
        net(x, t, torch.tensor([0, 1]))


def test_training_refuses_cuda_without_it_images_of_another_size_and_other_set_options(tmp_path, monkeypatch):
    from models import train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="--device cuda:1 asked for, but CUDA is not available"):
        train.resolve_device("cuda:1")
    preset = train.get_preset("digits")
    wrong = replace(preset, network={**preset.network, "image_size": 16})
    with pytest.raises(UserError, match="expects 16x16 images, dataset 'digits' has 8x8"):
        train.load_training_data(wrong, None)
    assert train.load_training_data(preset, None)[0].shape[-1] == 8


def test_a_checkpoint_resumes_only_with_the_set_options_it_was_trained_with(tmp_path):
    from models import train

    preset = train.get_preset("digits")
    run = train.RunConfig(preset=preset, steps=1, batch_size=2, lr=1e-3, seed=0, device=torch.device("cpu"),
                          out=tmp_path / "w.safetensors", checkpoint=tmp_path / "c.ckpt.pt", data_dir=None,
                          overrides=("lr=0.001",))
    state = train.make_state(run)
    train.save_checkpoint(state, run.checkpoint, preset.name, run.overrides)
    train.load_checkpoint(train.make_state(run), run.checkpoint, preset.name, ("lr=0.001",))
    with pytest.raises(UserError, match=r"trained with --set \['lr=0.001'\], not \[\]; resume with the same"):
        train.load_checkpoint(train.make_state(run), run.checkpoint, preset.name, ())


def test_an_existing_checkpoint_is_not_replaced_unless_it_is_the_one_resumed(tmp_path):
    from models import train

    preset = train.get_preset("digits")
    run = train.RunConfig(preset=preset, steps=1, batch_size=2, lr=1e-3, seed=0, device=torch.device("cpu"),
                          out=tmp_path / "w.safetensors", checkpoint=tmp_path / "c.ckpt.pt", data_dir=None)
    train.refuse_overwrite(run, None, False)  # nothing there yet
    run.checkpoint.write_bytes(b"old")
    with pytest.raises(UserError, match="c.ckpt.pt' exists from an earlier run; continue it with --resume"):
        train.refuse_overwrite(run, None, False)
    with pytest.raises(UserError, match="exists from an earlier run"):
        train.refuse_overwrite(run, tmp_path / "other.ckpt.pt", False)
    train.refuse_overwrite(run, run.checkpoint, False)
    train.refuse_overwrite(run, None, True)


def _shipped_copy(tmp_path, name="digits"):
    for suffix in (".safetensors", ".json"):
        shutil.copy(WEIGHTS / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    return tmp_path / f"{name}.safetensors"


def test_weights_are_saved_only_as_safetensors(tmp_path):
    from models.weights import save_weights

    for name in ("w.pt", "w.bin", "w"):
        with pytest.raises(UserError, match="weights are saved as .safetensors"):
            save_weights({"a": torch.zeros(1)}, tmp_path / name, {})
    assert not any(tmp_path.iterdir())


def test_a_card_lacking_fields_or_with_a_bad_shape_or_config_is_named(tmp_path):
    from models.weights import load_denoiser, read_card

    weights = _shipped_copy(tmp_path)
    card = json.loads((tmp_path / "digits.json").read_text())
    assert read_card(weights)["image_shape"] == card["image_shape"]

    def with_card(**changes):
        (tmp_path / "digits.json").write_text(json.dumps({k: v for k, v in {**card, **changes}.items()
                                                          if v is not ...}))
        return weights

    with pytest.raises(UserError, match="lacks the fields schedule, time_input"):
        read_card(with_card(schedule=..., time_input=...))
    for shape in ([1, 8], [1, 8, 0], [1, 8, 8.0], "1x8x8", [1, 8, True]):
        with pytest.raises(UserError, match="image_shape must be \\[channels, height, width\\]"):
            read_card(with_card(image_shape=shape))
    for name in ("network_config", "schedule"):
        with pytest.raises(UserError, match=f"{name} must be a JSON object"):
            read_card(with_card(**{name: [1]}))
    with_card()
    with pytest.raises(UserError, match="weight file .*missing.safetensors' does not exist"):  # not "card missing"
        load_denoiser(tmp_path / "missing.safetensors")
    assert load_denoiser(weights).image_shape == tuple(card["image_shape"])


def test_a_pickled_state_must_be_a_dict_of_tensors_and_a_weight_file_must_exist(tmp_path):
    from models.weights import load_state

    torch.save({"a": torch.ones(2)}, tmp_path / "ok.pt")
    assert load_state(tmp_path / "ok.pt")["a"].tolist() == [1.0, 1.0]
    for i, bad in enumerate(([torch.ones(2)], {"a": [1.0, 2.0]}, {"ema": {"a": 3}})):
        torch.save(bad, tmp_path / f"bad{i}.pt")
        with pytest.raises(UserError, match=f"bad{i}.pt' does not hold a state dict of tensors"):
            load_state(tmp_path / f"bad{i}.pt")
    torch.save({"ema": {"a": torch.zeros(1)}, "model": {"a": torch.ones(1)}}, tmp_path / "ckpt.pt")
    assert load_state(tmp_path / "ckpt.pt")["a"].tolist() == [0.0]
    with pytest.raises(UserError, match="weight file .*nothing.pt' does not exist"):
        load_state(tmp_path / "nothing.pt")
    (tmp_path / "w.bin").write_bytes((tmp_path / "ok.pt").read_bytes())
    with pytest.raises(UserError, match="w.bin': unsupported weight file type; expected one of .safetensors"):
        load_state(tmp_path / "w.bin")


# --------------------------------------------------------------------------- bounds found by boundary mutants
# The same coverage run planted `<` for `<=`, `x - 1` for `x` and the like in every guarded condition and ran the
# tests covering that line; these are the bounds whose edge no test had given.

def test_a_rank_runs_from_0_to_world_size_minus_1_and_world_size_0_is_refused():
    from bench.distributed import launched_processes

    assert launched_processes({"WORLD_SIZE": "2", "RANK": "0"}) == (0, 2, 0)
    for env in ({"WORLD_SIZE": "2", "RANK": "-1"}, {"WORLD_SIZE": "0", "RANK": "0"},
                {"WORLD_SIZE": "-1", "RANK": "0"}):
        with pytest.raises(UserError, match=f"RANK={env['RANK']} is not in 0..WORLD_SIZE-1 with "
                                            f"WORLD_SIZE={env['WORLD_SIZE']}"):
            launched_processes(env)


def test_local_rank_must_be_below_the_visible_gpu_count(monkeypatch):
    from bench import distributed

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    env = {"WORLD_SIZE": "4", "RANK": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "1"}
    with pytest.raises(UserError, match="LOCAL_RANK=2 but this node has 2 visible CUDA device"):
        distributed.init_processes(torch.device("cuda"), {**env, "LOCAL_RANK": "2"})
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail("the check comes first"))
    with pytest.raises(pytest.fail.Exception, match="the check comes first"):  # LOCAL_RANK=1 passes the check
        distributed.init_processes(torch.device("cuda"), {**env, "LOCAL_RANK": "1"})


def test_as_many_processes_as_images_is_allowed_and_one_more_is_refused(sandbox, registry, monkeypatch):
    from bench import harness
    from bench.config import RunConfig
    from bench.distributed import Processes

    class Reached(Exception):
        pass

    def stop(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(harness, "init_processes", lambda device: (Processes(0, 3), device))
    monkeypatch.setattr(harness, "resolve_samplers", stop)
    def config(n):
        return RunConfig(model="gaussian-oracle", samplers=("ddim",), steps=(2,), num_samples=n, device="cpu")

    with pytest.raises(Reached):
        harness.run_benchmark(config(3), registry)
    with pytest.raises(UserError, match="3 processes for 2 images: every process needs at least one"):
        harness.run_benchmark(config(2), registry)


def test_orders_grids_run_from_seed_points_plus_2_to_t(capsys):
    from bench.orders import SEED_POINTS

    low = SEED_POINTS + 2
    assert main(["orders", "--solvers", "ddim", "--images", "1", "--steps", f"{low},1000"]) == 0
    out = capsys.readouterr().out
    assert f"({low}) |" in out and "(1000) |" in out
    for steps in (f"{low - 1},40", "20,1001", "20"):
        refused(["orders", "--solvers", "ddim", "--images", "1", "--steps", steps], capsys,
                f"--steps needs at least two grid sizes in {low}..1000")


def _count_names():
    from bench.config import COUNT_BOUNDS

    return sorted(COUNT_BOUNDS)


@pytest.mark.parametrize("name", _count_names())
def test_config_json_counts_are_read_back_inside_their_bounds_edges_included(name, tmp_path):
    from bench.config import COUNT_BOUNDS
    from bench.report import check_config_values

    low, high = COUNT_BOUNDS[name]
    places = [lambda v: {"config": {name: v}}]
    if name in ("num_samples", "batch_size"):
        places.append(lambda v: {"config": {}, name: v})
    for place in places:
        for value in (low, high):
            check_config_values(place(value), tmp_path / "config.json")
        for value in (low - 1, high + 1):
            with pytest.raises(UserError, match=f"{name} must be an integer in \\[{low}, {high:,}\\], got {value}"):
                check_config_values(place(value), tmp_path / "config.json")


def test_plan_file_times_lie_in_the_models_range_edges_included():
    from bench.paths import PathConfig, make_path
    from bench.schedule import NoiseSchedule
    from bench.tune import check_times

    schedule = NoiseSchedule.linear(10)
    assert check_times([9, 0], schedule, "f") == [9, 0] and check_times([9.0, 4.0], schedule, "f") == [9, 4]
    for times in ([10, 0], [5, -1], [5.5, 1]):
        with pytest.raises(UserError, match="f: timesteps must be integers in 0..9"):
            check_times(times, schedule, "f")
    path = make_path(PathConfig(kind="flow"))
    assert check_times([path.t_max, 1e-6], path, "g") == [path.t_max, 1e-6]
    for times in ([path.t_max * 1.001, 0.5], [0.5, 0.0], [0.5, -0.1]):
        with pytest.raises(UserError, match=f"g: times must lie in \\(0, {path.t_max:g}\\] on this flow path"):
            check_times(times, path, "g")
