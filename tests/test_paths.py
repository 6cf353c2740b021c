"""Noise paths (bench.paths): exact coefficients, every solver on every path, and diffusers' flow schedulers
as step-by-step cross-checks (same sigmas, same model outputs, same noise)."""

from __future__ import annotations

import math

import pytest
import torch

from bench.denoiser import Denoiser, DenoiserInfo
from bench.errors import UserError
from bench.paths import PATH_KINDS, FlowPath, PathConfig, eps_from_native, flow_shift, make_path
from bench.plans import make_plan
from bench.sampling import batch_noise
from bench.schedule import NoiseSchedule
from tests.helpers import run_sampler

CONTINUOUS = ("vp-continuous", "ve", "flow")


@pytest.mark.parametrize("kind", CONTINUOUS)
def test_lambda_and_edm_sigma_inverses_are_exact(kind):
    path = make_path(PathConfig(kind))
    for frac in (0.0, 0.1, 0.37, 0.8, 1.0):
        t = path.t_min + frac * (path.t_max - path.t_min)
        assert path.t_from_lambda(path.lambda_at(t)) == pytest.approx(t, rel=1e-12, abs=1e-15)
        assert path.t_from_sigma(path.sigma_at(t)) == pytest.approx(t, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("kind", CONTINUOUS)
def test_alpha_bar_is_the_vp_equivalent_of_the_native_coefficients(kind):
    path = make_path(PathConfig(kind))
    t = 0.5 * (path.t_min + path.t_max)
    a, s = path.alpha(t), path.sigma(t)
    assert path.alpha_bar_at(t) == pytest.approx(a * a / (a * a + s * s), rel=1e-14)
    assert path.lambda_at(t) == pytest.approx(math.log(a / s), rel=1e-14)
    assert path.alpha_bar_at(-1) == 1.0 and path.sigma_at(-1) == 0.0
    lams = [path.lambda_at(path.t_min + f * (path.t_max - path.t_min)) for f in (0, 0.25, 0.5, 0.75, 1)]
    assert all(b < a for a, b in zip(lams, lams[1:]))  # noise rises with t on every path


@pytest.mark.parametrize("kind", CONTINUOUS)
def test_native_derivatives_match_finite_differences(kind):
    path = make_path(PathConfig(kind))
    t, h = 0.4 * path.t_max + 0.6 * path.t_min, 1e-6 * path.t_max
    assert path.d_alpha(t) == pytest.approx((path.alpha(t + h) - path.alpha(t - h)) / (2 * h), rel=1e-5, abs=1e-8)
    assert path.d_sigma(t) == pytest.approx((path.sigma(t + h) - path.sigma(t - h)) / (2 * h), rel=1e-5, abs=1e-8)


def test_vp_continuous_linear_matches_the_discrete_schedule_at_the_trained_times():
    path, schedule = make_path(PathConfig("vp-continuous")), NoiseSchedule.linear(1000)
    for t in (0, 100, 500, 999):  # DPM-Solver: continuous t = (n + 1) / T carries alpha_bar[n] to O(1/T)
        log_continuous, log_discrete = math.log(path.alpha_bar_at((t + 1) / 1000)), math.log(schedule.alpha_bar_at(t))
        assert log_continuous == pytest.approx(log_discrete, abs=0.01 * (1 + abs(log_discrete)))


def test_flow_shift_is_sd3s_and_keeps_the_ends():
    assert flow_shift(0.5, 3.0) == pytest.approx(0.75)
    assert flow_shift(1.0, 3.0) == 1.0 and flow_shift(0.0, 3.0) == 0.0
    path = make_path(PathConfig("flow", shift=3.0))
    times = make_plan("uniform", path, 5)
    assert times[0] == pytest.approx(flow_shift(0.999, 3.0)) and times[-1] == pytest.approx(flow_shift(0.001, 3.0))


@pytest.mark.parametrize("kind", CONTINUOUS)
@pytest.mark.parametrize("plan", ["uniform", "quadratic", "logsnr", "karras"])
def test_every_continuous_plan_gives_n_distinct_decreasing_times_within_the_path(kind, plan):
    path = make_path(PathConfig(kind))
    for n in (1, 2, 3, 10, 57):
        times = make_plan(plan, path, n)
        assert len(times) == n and all(b < a for a, b in zip(times, times[1:]))
        assert times[0] == pytest.approx(path.t_max) and (n == 1 or times[-1] == pytest.approx(path.t_min))


def test_flow_sigmas_are_diffusers_dpmsolver_flow_grid():
    np = pytest.importorskip("numpy")
    path = make_path(PathConfig("flow", shift=3.0))
    alphas = np.linspace(1, 1 / 1000, 11)
    sigmas = 1.0 - alphas
    expected = np.flip(3.0 * sigmas / (1 + 2.0 * sigmas))[:-1]
    assert make_plan("flow-sigmas", path, 10) == pytest.approx(list(expected), rel=1e-12)


@pytest.mark.parametrize("plan", ["full", "leading", "trailing", "linspace"])
def test_integer_timestep_plans_are_refused_on_a_continuous_path(plan):
    with pytest.raises(UserError, match="continuous time"):
        make_plan(plan, make_path(PathConfig("flow")), 10)


def test_flow_sigmas_are_refused_off_the_flow_path():
    with pytest.raises(UserError, match="flow models"):
        make_plan("flow-sigmas", NoiseSchedule.linear(1000), 10)
    with pytest.raises(UserError, match="flow models"):
        make_plan("flow-sigmas", make_path(PathConfig("ve")), 10)


@pytest.mark.parametrize("field,value", [("kind", "warp"), ("shift", 0.0), ("shift", -1.0), ("shift", math.nan),
                                         ("shift", math.inf), ("sigma_min", 100.0)])
def test_bad_path_configs_are_one_line_errors(field, value):
    with pytest.raises(UserError):
        PathConfig(**{field: value})


# --------------------------------------------------------------------------- prediction conversions


@pytest.mark.parametrize("kind", ["eps", "x0", "v", "flow"])
def test_every_prediction_type_converts_back_to_the_true_eps(kind):
    generator = torch.Generator().manual_seed(0)
    x0, eps = (torch.randn(6, 4, generator=generator, dtype=torch.float64) for _ in range(2))
    path = make_path(PathConfig("flow"))
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 0.99], dtype=torch.float64)
    alpha, sigma, d_alpha, d_sigma = (c.view(-1, 1) for c in path.coefficients_of(t))
    x = alpha * x0 + sigma * eps
    norm = (alpha**2 + sigma**2).sqrt()
    prediction = {"eps": eps, "x0": x0, "v": (alpha / norm) * eps - (sigma / norm) * x0,
                  "flow": d_alpha * x0 + d_sigma * eps}[kind]
    if kind == "flow":
        assert torch.allclose(prediction, eps - x0)  # on the flow path the velocity is eps - x_0
    assert torch.allclose(eps_from_native(prediction, x, alpha, sigma, d_alpha, d_sigma, kind), eps, atol=1e-10)


def test_edm_preconditioned_network_that_outputs_the_exact_f_gives_the_exact_eps():
    from bench.paths import edm_preconditioning

    path = make_path(PathConfig("ve"))
    generator = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 1, 2, 2, generator=generator), torch.randn(3, 1, 2, 2, generator=generator)
    sigma_true = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)

    def exact_f(x_in, c_noise):  # F such that D = c_skip x + c_out F is the true x_0
        s = torch.exp(4 * c_noise.to(torch.float64)).view(-1, 1, 1, 1)
        c_skip, c_out, c_in, _ = (c.view(-1, 1, 1, 1) for c in edm_preconditioning(s.view(-1), 0.5))
        x = x_in / c_in
        return ((x0 - c_skip * x) / c_out).float()

    denoiser = Denoiser(path, DenoiserInfo("edm", (1, 2, 2), prediction_type="edm"), exact_f, "index")
    x_native = x0 + sigma_true.view(-1, 1, 1, 1).float() * eps
    x_vp = x_native / (1 + sigma_true**2).sqrt().view(-1, 1, 1, 1).float()
    assert torch.allclose(denoiser(x_vp, sigma_true), eps, atol=1e-4)


def test_flow_and_edm_predictions_are_refused_on_vp_discrete():
    with pytest.raises(UserError, match="continuous-time path"):
        Denoiser(NoiseSchedule.linear(1000), DenoiserInfo("m", (1, 2, 2), prediction_type="flow"), lambda x, t: x)


# --------------------------------------------------------------------------- solvers on every path


class TinyVelocityNet(torch.nn.Module):
    """A fixed random network u(x, t) standing in for a flow model (time input t * 1000, diffusers' convention)."""

    def __init__(self, channels: int = 1):
        super().__init__()
        generator = torch.Generator().manual_seed(7)
        self.weight = torch.nn.Parameter(0.3 * torch.randn(channels, channels, 3, 3, generator=generator))

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1) / 1000
        return torch.tanh(torch.nn.functional.conv2d(x, self.weight, padding=1)) * (1 + t) - 0.5 * x * t


def flow_denoiser(shift: float = 1.0) -> Denoiser:
    """The tiny flow model in float64: the cross-checks compare algorithms, not float32 round-off (near t = 1 the
    VP-coordinate x_0 costs float32 about 1e-7 / alpha, ~3e-4 at shift 3's first time; see the README)."""
    path = FlowPath(PathConfig("flow", shift=shift))
    network = TinyVelocityNet().double()
    return Denoiser(path, DenoiserInfo("tiny-flow", (1, 4, 4), prediction_type="flow"), network, "index")


def _states(registry, name, denoiser, steps, plan=None, images=4, **params):
    spec = registry.samplers[name]
    resolved = spec.resolve_params({**({"plan": plan} if plan else {}), **params})
    seen = []
    x, timesteps = run_sampler(spec, resolved, denoiser, steps, torch.arange(images), dtype=torch.float64,
                               callback=lambda s: seen.append((s["t"], s["x"].clone())))
    path = denoiser.schedule
    native = [(t, x_vp * path.scale(float(t))) for t, x_vp in seen]  # the states in the path's own x
    return x, timesteps, native


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_on_a_flow_path_is_ddim_and_the_native_flow_euler_step_element_by_element(registry, shift):
    denoiser = flow_denoiser(shift)
    x_euler, times, _ = _states(registry, "euler", denoiser, 8)
    x_ddim, _, _ = _states(registry, "ddim", denoiser, 8)
    path = denoiser.schedule
    x = batch_noise(0, torch.arange(4), (1, 4, 4), dtype=torch.float64).initial() * path.scale(times[0])
    for t, t_next in zip([*times], [*times[1:], 0.0]):
        x = x + (t_next - t) * denoiser.network(x, torch.full((4,), t * 1000, dtype=torch.float64))  # x + (s - t) u
    assert torch.allclose(x_euler, x_ddim, atol=1e-10)
    assert torch.allclose(x_euler, x, atol=1e-10)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_on_a_flow_path_equals_diffusers_flowmatch_euler_step_by_step(registry, shift):
    diffusers = pytest.importorskip("diffusers")
    denoiser = flow_denoiser(shift)
    x_ours, times, ours = _states(registry, "euler", denoiser, 10)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    unshifted = [0.999 - i * (0.998 / 9) for i in range(10)]  # our uniform plan before the shift
    scheduler.set_timesteps(sigmas=unshifted)
    assert scheduler.sigmas[:-1].tolist() == pytest.approx(times, rel=1e-6)
    sample = ours[0][1]
    for i, timestep in enumerate(scheduler.timesteps):
        assert torch.allclose(sample, ours[i][1], atol=1e-5), i
        sample = scheduler.step(denoiser.network(sample, timestep.expand(4).double()), timestep, sample).prev_sample
    assert torch.allclose(sample, x_ours, atol=1e-5)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_dpmpp_2m_on_a_flow_path_equals_diffusers_dpmsolver_with_flow_sigmas(registry, shift):
    diffusers = pytest.importorskip("diffusers")
    denoiser = flow_denoiser(shift)
    x_ours, times, ours = _states(registry, "dpm-solver++", denoiser, 10, plan="flow-sigmas")
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction",
        algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero", lower_order_final=True)
    scheduler.set_timesteps(10)
    assert scheduler.sigmas[:-1].tolist() == pytest.approx(times, rel=1e-6)
    sample = ours[0][1]
    for i, timestep in enumerate(scheduler.timesteps):  # diffusers rounds its timesteps to integers; the model
        assert torch.allclose(sample, ours[i][1], atol=1e-5), i  # is evaluated at sigma * 1000 on both sides
        output = denoiser.network(sample, torch.full((4,), times[i] * 1000, dtype=torch.float64))
        sample = scheduler.step(output, timestep, sample).prev_sample
    assert torch.allclose(sample, x_ours, atol=1e-5)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_heun_equals_diffusers_flowmatch_heun_given_the_same_sigmas(registry, shift):
    diffusers = pytest.importorskip("diffusers")
    denoiser = flow_denoiser(shift)
    x_ours, times, ours = _states(registry, "flow-heun", denoiser, 6)
    scheduler = diffusers.FlowMatchHeunDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(6)
    sigmas = torch.tensor([*times, 0.0], dtype=torch.float32)  # the same sigmas, interleaved as diffusers does
    scheduler.sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
    scheduler.timesteps = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2)]) * 1000
    sample, calls = ours[0][1], 0
    for timestep in scheduler.timesteps:
        sample = scheduler.step(denoiser.network(sample, timestep.expand(4).double()), timestep, sample).prev_sample
        calls += 1
    assert calls == 2 * 6 - 1
    assert torch.allclose(sample, x_ours, atol=1e-5)


@pytest.mark.parametrize("kind", PATH_KINDS)
def test_every_deterministic_solver_converges_to_the_exact_ode_map_on_every_path(registry, kind):
    name = "gaussian-single" if kind == "vp-discrete" else f"gaussian-single-{kind}"
    denoiser = registry.model(name).load("cpu")
    x_T = batch_noise(0, torch.arange(32), denoiser.image_shape, dtype=torch.float64).initial()
    for sampler in ("ddim", "euler", "heun", "dpmpp-2m", "dpmpp-3m", "unipc-bh2", "deis", "ipndm", "plms",
                    "flow-heun", "flow-midpoint"):
        spec = registry.samplers.get(sampler) or registry.samplers[registry.presets[sampler].sampler]
        if spec.paths is not None and kind not in spec.paths:
            continue
        preset = registry.presets[sampler].params if sampler in registry.presets else {}
        errors = []
        for steps in (25, 50):
            params = spec.resolve_params({**preset, "plan": "logsnr"})
            x, times = run_sampler(spec, params, denoiser, steps, torch.arange(32), dtype=torch.float64)
            exact = denoiser.mixture.exact_ode_map(x_T, denoiser.schedule.alpha_bar_at(times[0]), 1.0)
            errors.append(float((x - exact).pow(2).mean().sqrt()))
        assert errors[1] < 0.7 * errors[0] and errors[1] < 0.1, (sampler, kind, errors)


def test_a_flow_time_stepper_on_vp_discrete_is_a_one_line_error(registry):
    spec = registry.samplers["flow-heun"]
    with pytest.raises(UserError, match="vp-discrete"):
        spec.timesteps(NoiseSchedule.linear(1000), 10, spec.resolve_params())


# --------------------------------------------------------------------------- diffusers folders on other paths


def _tiny_unet(diffusers):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()


def test_a_flowmatch_folder_loads_as_a_flow_model_and_samples_as_diffusers_does(tmp_path, registry):
    diffusers = pytest.importorskip("diffusers")
    from models.diffusers_adapter import load_diffusers

    unet = _tiny_unet(diffusers)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    scheduler.save_pretrained(tmp_path / "pipe" / "scheduler")
    denoiser = load_diffusers(tmp_path / "pipe")
    assert (denoiser.schedule.kind, denoiser.info.prediction_type, denoiser.info.shift) == ("flow", "flow", 3.0)
    denoiser.network.double()  # both sides in float64: the check compares algorithms, not round-off
    x_ours, times, ours = _states(registry, "euler", denoiser, 6, images=2)
    unet = unet.double()
    scheduler.set_timesteps(sigmas=[0.999 - i * (0.998 / 5) for i in range(6)])
    sample = ours[0][1]
    with torch.no_grad():
        for timestep in scheduler.timesteps:
            sample = scheduler.step(unet(sample, timestep.double()).sample, timestep, sample).prev_sample
    assert torch.allclose(sample, x_ours, atol=1e-4)


def test_an_edm_folder_loads_on_the_ve_path_with_edms_preconditioning(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from models.diffusers_adapter import load_diffusers

    unet = _tiny_unet(diffusers)
    scheduler = diffusers.EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5)
    unet.save_pretrained(tmp_path / "edm" / "unet")
    scheduler.save_pretrained(tmp_path / "edm" / "scheduler")
    denoiser = load_diffusers(tmp_path / "edm")
    assert (denoiser.schedule.kind, denoiser.info.prediction_type) == ("ve", "edm")
    sigma = torch.tensor([2.0], dtype=torch.float64)
    x_native = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model_input = scheduler.precondition_inputs(x_native, sigma.float())
        output = unet(model_input, scheduler.precondition_noise(sigma.float())).sample
        denoised = scheduler.precondition_outputs(x_native, output, sigma.float())
    eps = denoiser(x_native / math.sqrt(1 + 4.0), sigma)
    assert torch.allclose(eps, (x_native - denoised) / 2.0, atol=1e-5)


def test_a_dynamic_shift_flow_config_is_a_one_line_error(tmp_path):
    from models.diffusers_adapter import path_from_config

    with pytest.raises(UserError, match="use_dynamic_shifting"):
        path_from_config({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True}, tmp_path)


# --------------------------------------------------------------------------- cards and the command line


def test_a_flow_network_with_a_vp_card_is_refused(tmp_path):
    import json

    from bench.cli import main

    assert main(["train", "--preset", "smoke-flow", "--out", str(tmp_path / "f.safetensors"), "--checkpoint",
                 str(tmp_path / "f.ckpt.pt")]) == 0
    card = json.loads((tmp_path / "f.json").read_text())
    assert card["path"]["kind"] == "flow" and card["prediction_type"] == "flow"
    del card["path"]
    card["prediction_type"] = "v"
    (tmp_path / "f.json").write_text(json.dumps(card))
    from models.weights import load_denoiser
    with pytest.raises(UserError, match="trained on the flow path but their card says vp-discrete"):
        load_denoiser(tmp_path / "f.safetensors")


@pytest.mark.parametrize("argv,words", [
    (["--model", "gaussian-oracle-flow", "--shift", "0"], ["--shift", "> 0"]),
    (["--model", "gaussian-oracle-flow", "--shift", "nan"], ["--shift"]),
    (["--model", "gaussian-oracle", "--shift", "3"], ["--shift", "flow models", "vp-discrete"]),
    (["--model", "gaussian-oracle-flow", "--samplers", "ddpm"], ["ddpm", "continuous time"]),
    (["--model", "gaussian-oracle-flow", "--samplers", "ddim:plan=leading"], ["leading", "continuous time"]),
    (["--model", "gaussian-oracle", "--samplers", "flow-heun"], ["flow-heun", "vp-discrete"]),
    (["--model", "gaussian-oracle", "--samplers", "ddim:plan=flow-sigmas"], ["flow-sigmas", "flow models"]),
])
def test_path_mistakes_on_the_command_line_are_one_line_errors_that_write_nothing(tmp_path, capsys, monkeypatch,
                                                                                   argv, words):
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    base = ["run", "--samplers", "ddim", "--steps", "4", "--num-samples", "8", "--metrics", "none", "--quiet",
            "--out", "r"]
    assert main([*base, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and all(w in err[0] for w in words), err
    assert not (tmp_path / "r").exists()


def test_a_flow_run_records_its_path_shift_and_prediction_everywhere(tmp_path, capsys):
    import json

    import pandas as pd

    from bench.cli import main

    out = tmp_path / "r"
    assert main(["run", "--model", "gaussian-oracle-flow", "--shift", "3", "--samplers", "ddim", "flow-heun",
                 "--steps", "5", "--num-samples", "16", "--metrics", "oracle-fd", "--quiet", "--out", str(out)]) == 0
    rows = pd.read_csv(out / "results.csv")
    assert set(rows["path"]) == {"flow"} and set(rows["shift"]) == {3.0} and set(rows["status"]) == {"ok"}
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["shift"] == 3.0 and config["model_info"]["path"] == "flow"
    assert "on the flow (shift 3) noise path" in (out / "report.md").read_text()
    first = config["jobs"][0]["timesteps"][0]
    assert first == pytest.approx(flow_shift(0.999, 3.0))


def test_compare_gives_no_paired_interval_across_paths(tmp_path, capsys):
    from bench.cli import main

    common = ["run", "--samplers", "ddim", "--steps", "5", "--num-samples", "16", "--metrics", "oracle-fd", "--quiet"]
    assert main([*common, "--model", "gaussian-oracle", "--out", str(tmp_path / "vp")]) == 0
    assert main([*common, "--model", "gaussian-oracle-flow", "--out", str(tmp_path / "flow")]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "vp"), str(tmp_path / "flow")]) == 0
    captured = capsys.readouterr()
    assert "not the same samples" in captured.err and "diff_ci_low" not in captured.out


# ---------------------------------------------------------------- lines the fast suite never ran (coverage, round 7)
PATH_CONFIGS = [PathConfig("flow"), PathConfig("flow", shift=3.0), PathConfig("ve"), PathConfig("vp-continuous"),
                PathConfig("vp-continuous", schedule="cosine")]


@pytest.mark.parametrize("config", PATH_CONFIGS, ids=lambda c: f"{c.kind}-{c.schedule}-{c.shift}")
def test_clean_data_is_the_limit_of_every_level_and_every_inverse(config):
    path = make_path(config)
    assert path.lambda_at(-1) == math.inf and path.sigma_at(-1) == 0.0 and path.alpha_bar_at(-1) == 1.0
    assert path.t_from_lambda(math.inf) == -1.0 and path.t_from_sigma(0.0) == -1.0
    for frac in (0.0, 0.3, 1.0):  # and the inverses of this configuration (shifted flow, cosine vp) are exact
        t = path.t_min + frac * (path.t_max - path.t_min)
        assert path.t_from_sigma(path.sigma_at(t)) == pytest.approx(t, rel=1e-9, abs=1e-12)
        assert path.alpha_bar_at(t) == pytest.approx(1 / (1 + path.sigma_at(t) ** 2), rel=1e-12)
        assert path.scale(t) == pytest.approx(math.hypot(path.alpha(t), path.sigma(t)), rel=1e-14)


@pytest.mark.parametrize("config", PATH_CONFIGS, ids=lambda c: f"{c.kind}-{c.schedule}-{c.shift}")
def test_a_time_beyond_the_noisiest_is_refused_and_the_noisiest_itself_is_not(config):
    path = make_path(config)
    assert 0 < path.alpha_bar_at(path.t_max) < path.alpha_bar_at(path.t_min) < 1
    with pytest.raises(ValueError, match=f"beyond this {config.kind} path"):
        path.alpha_bar_at(path.t_max * (1 + 1e-6) + 1e-6)


@pytest.mark.parametrize("config", PATH_CONFIGS, ids=lambda c: f"{c.kind}-{c.schedule}-{c.shift}")
def test_add_noise_is_alpha_x0_plus_sigma_eps_at_each_images_own_time(config):
    path = make_path(config)
    times = torch.tensor([path.t_max, path.t_min, 0.5 * (path.t_min + path.t_max), path.t_min], dtype=torch.float64)
    x0, eps = torch.randn(4, 1, 2, 2, dtype=torch.float64), torch.randn(4, 1, 2, 2, dtype=torch.float64)
    alpha, sigma = path.alpha_sigma_of(times)
    assert alpha.tolist() == [path.alpha(t) for t in times.tolist()]
    assert sigma.tolist() == [path.sigma(t) for t in times.tolist()]
    noisy = path.add_noise(x0, times, eps)
    for i, t in enumerate(times.tolist()):
        torch.testing.assert_close(noisy[i], path.alpha(t) * x0[i] + path.sigma(t) * eps[i], rtol=1e-12, atol=0)
    coefficients = path.coefficients_of(times)
    assert [c.tolist() for c in coefficients[2:]] == [[path.d_alpha(t) for t in times.tolist()],
                                                      [path.d_sigma(t) for t in times.tolist()]]


def test_a_vp_discrete_config_without_a_schedule_builds_its_own_betas():
    schedule = make_path(PathConfig("vp-discrete", beta_start=2e-4, beta_end=0.03, num_timesteps=500))
    assert isinstance(schedule, NoiseSchedule) and schedule.num_timesteps == 500
    assert float(schedule.betas[0]) == pytest.approx(2e-4) and float(schedule.betas[-1]) == pytest.approx(0.03)


@pytest.mark.parametrize("raw,message", [
    ("flow", "path must be a JSON object"),
    ({"kind": "flow", "shfit": 3.0}, "unknown path key 'shfit'"),
    ({"kind": "flow", "shift": -1}, "path shift must be a finite number > 0"),
    ({"kind": "warp"}, "unknown noise path 'warp'"),
])
def test_a_cards_bad_path_entry_is_an_error_naming_the_card(tmp_path, raw, message):
    from models.weights import card_path_config

    source = tmp_path / "m.json"
    assert card_path_config({}, source) == PathConfig("vp-discrete")  # cards from before paths existed
    assert card_path_config({"path": {"kind": "flow", "shift": 3.0}}, source) == PathConfig("flow", shift=3.0)
    with pytest.raises(UserError, match=message) as info:
        card_path_config({"path": raw}, source)
    assert str(source) in str(info.value)


@pytest.mark.parametrize("kind", ["x0", "v"])
def test_real_times_on_a_discrete_model_convert_with_each_rows_interpolated_alpha_bar(kind):
    """A continuous-time network on vp-discrete (float t): each row's eps uses alpha_bar at its own real time,
    log-linear between trained timesteps, and at whole-number times the trained alpha_bar exactly."""
    schedule = NoiseSchedule.linear(1000)
    denoiser = Denoiser(schedule, DenoiserInfo("m", (1, 2, 2), prediction_type=kind), lambda x, t: 0.5 * x, "index")
    x = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    times = torch.tensor([10.5, 500.25, 998.9, 300.0], dtype=torch.float64)
    eps = denoiser.predict_eps(x, times)
    for i, t in enumerate(times.tolist()):
        a = schedule.alpha_bar_at(t)
        lower, upper = float(schedule.alpha_bar[int(t)]), float(schedule.alpha_bar[min(int(t) + 1, 999)])
        assert a == pytest.approx(math.exp(math.log(lower) * (1 - t % 1) + math.log(upper) * (t % 1)), rel=1e-12)
        expected = ((x[i] - math.sqrt(a) * 0.5 * x[i]) / math.sqrt(1 - a) if kind == "x0"
                    else math.sqrt(1 - a) * x[i] + math.sqrt(a) * 0.5 * x[i])
        torch.testing.assert_close(eps[i], expected, rtol=1e-10, atol=1e-12)
    whole = denoiser.predict_eps(x[3:], torch.tensor([300]))
    torch.testing.assert_close(eps[3:], whole, rtol=1e-7, atol=1e-9)  # the network-dtype table of the int path
