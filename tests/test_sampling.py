"""The sampling seam: per-image labels, the classifier-free guidance wrapper, and what the harness records."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from bench.config import RunConfig
from bench.denoiser import Denoiser, DenoiserInfo
from bench.errors import UserError
from bench.harness import run_benchmark
from bench.measure import CountingDenoiser
from bench.plugins import load_registry
from bench.registry import ModelSpec
from bench.sampling import GuidedDenoiser, image_labels
from bench.schedule import NoiseSchedule
from tests.helpers import run_sampler

NUM_CLASSES = 3


class LabelledDenoiser(Denoiser):
    """A conditional model with a known answer: eps = 0.5 x + 0.1 (label - 1), and 0.3 x for the null label."""

    def __init__(self, num_timesteps: int = 50):
        super().__init__(NoiseSchedule.linear(num_timesteps), DenoiserInfo("labelled", (1, 4, 4), NUM_CLASSES))

    def predict_eps(self, x_t, t, cond=None):
        assert cond is not None and cond.shape == (x_t.shape[0],)
        offset = (cond.to(x_t.dtype) - 1).view(-1, 1, 1, 1)
        null = (cond == NUM_CLASSES).view(-1, 1, 1, 1)
        return torch.where(null, 0.3 * x_t, 0.5 * x_t + 0.1 * offset)


def test_labels_cycle_through_the_classes_by_image_index():
    assert image_labels(torch.arange(7), range(3)).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert image_labels(torch.tensor([5, 6, 7]), (3, 7)).tolist() == [7, 3, 7]
    assert image_labels(torch.arange(4), None) is None


def test_guided_eps_is_one_plus_w_conditional_minus_w_null_row_by_row():
    model = LabelledDenoiser()
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    cond = torch.tensor([0, 1, 2, 2, 1, 0])
    w = 2.5
    guided = GuidedDenoiser(model, w)(x, 10, cond)
    expected = (1 + w) * (0.5 * x + 0.1 * (cond - 1).double().view(-1, 1, 1, 1)) - w * 0.3 * x
    torch.testing.assert_close(guided, expected, rtol=0, atol=1e-12)


def test_a_guided_step_is_one_network_call_of_twice_the_rows():
    counter = CountingDenoiser(LabelledDenoiser())
    GuidedDenoiser(counter, 1.0)(torch.randn(5, 1, 4, 4), torch.full((5,), 7), torch.arange(5) % NUM_CLASSES)
    assert (counter.calls, counter.rows) == (1, 10)


@pytest.mark.parametrize("guidance,rows_per_call", [(None, 1), (0.0, 1), (2.0, 2)])
def test_seam_counts_calls_and_rows_for_guided_and_unguided_sampling(registry, guidance, rows_per_call):
    spec = registry.samplers["ddim"]
    counter = CountingDenoiser(LabelledDenoiser())
    run_sampler(spec, spec.resolve_params(), counter, 6, torch.arange(4), guidance=guidance)
    assert counter.calls == 6 and counter.rows == 6 * 4 * rows_per_call


def test_guided_samples_do_not_depend_on_the_batch_an_image_lands_in(registry):
    spec = registry.samplers["ddim"]
    params = spec.resolve_params({"eta": 1.0})
    whole, _ = run_sampler(spec, params, LabelledDenoiser(), 5, torch.arange(6), guidance=1.5)
    part, _ = run_sampler(spec, params, LabelledDenoiser(), 5, torch.arange(3, 6), guidance=1.5)
    torch.testing.assert_close(whole[3:], part, rtol=0, atol=1e-6)


def _registry_with_labelled_model():
    registry = load_registry()
    registry.models["labelled"] = ModelSpec("labelled", "test model", lambda device: LabelledDenoiser().to(device))
    return registry


def test_guidance_is_a_matrix_dimension_with_honest_nfe_and_rows(tmp_path):
    config = RunConfig(samplers=("ddim",), steps=(4,), model="labelled", num_samples=6, batch_size=4,
                       metrics=("none",), guidance=("0", "2"), grid_images=0, trajectory_images=0)
    out = run_benchmark(config, _registry_with_labelled_model(), out=str(tmp_path / "run"), quiet=True)
    df = pd.read_csv(out / "results.csv").set_index("guidance")
    assert list(df.index) == [0.0, 2.0] and (df["status"] == "ok").all()
    assert (df["nfe"] == 4).all() and df.loc[0.0, "rows_evaluated"] == 4 and df.loc[2.0, "rows_evaluated"] == 8
    assert df.loc[2.0, "cfg_scale"] == 3.0


@pytest.mark.parametrize("kwargs,message", [
    ({"model": "gaussian-oracle", "guidance": ("1",)}, "--guidance needs a class-conditional model"),
    ({"model": "gaussian-oracle", "classes": ("1",)}, "--classes needs a class-conditional model"),
    ({"model": "labelled", "classes": ("3",)}, "label 3 is outside 0..2"),
    ({"model": "labelled", "classes": ("x",)}, "--classes: 'x' is not an integer"),
    ({"model": "labelled", "guidance": ("lots",)}, "--guidance: 'lots' is not a number"),
    ({"model": "labelled", "guidance": ("-1",)}, "finite and >= 0"),
    ({"model": "labelled", "guidance": ("nan",)}, "finite and >= 0"),
])
def test_bad_guidance_and_class_options_are_refused_before_anything_is_written(tmp_path, kwargs, message):
    config = RunConfig(samplers=("ddim",), steps=(4,), num_samples=4, metrics=("none",), **kwargs)
    with pytest.raises(UserError, match=message):
        run_benchmark(config, _registry_with_labelled_model(), out=str(tmp_path / "run"), quiet=True)
    assert not (tmp_path / "run").exists()


def test_all_runs_a_sampler_whose_defaults_equal_a_preset_once_under_the_preset_name(registry):
    from bench.selection import resolve_samplers

    labels = [c.label for c in resolve_samplers(["all"], registry)]
    assert "dpmpp-2m" in labels and "dpm-solver++" not in labels
    assert len({(c.spec.name, repr(sorted(c.params.items()))) for c in resolve_samplers(["all"], registry)}) == \
        len(labels)


def test_guidance_keeps_a_real_valued_time_as_given(registry):
    seen = []

    class Recorder(LabelledDenoiser):
        def __call__(self, x_t, t, cond=None):
            seen.append(t)
            return super().__call__(x_t, round(t), cond)

    GuidedDenoiser(Recorder(), 1.0)(torch.zeros(2, 1, 4, 4), 12.25, torch.tensor([0, 1]))
    assert seen == [12.25]


def test_threads_option_sets_and_records_torch_threads(tmp_path):
    import json

    before = torch.get_num_threads()
    try:
        config = RunConfig(samplers=("ddim",), steps=(2,), model="gaussian-oracle", num_samples=4, metrics=("none",),
                           threads=1, grid_images=0, trajectory_images=0)
        out = run_benchmark(config, load_registry(), out=str(tmp_path / "run"), quiet=True)
        assert json.loads((out / "config.json").read_text())["timing"]["threads"] == 1
        assert (pd.read_csv(out / "results.csv")["threads"] == 1).all()
    finally:
        torch.set_num_threads(before)


def test_a_run_of_many_samplers_gets_one_quality_panel_per_family(tmp_path):
    config = RunConfig(samplers=("all",), steps=(5,), model="gaussian-oracle", num_samples=16, metrics=("oracle-fd",),
                       grid_images=0, trajectory_images=0)
    out = run_benchmark(config, load_registry(), out=str(tmp_path / "run"), quiet=True)
    assert (out / "plots" / "quality_vs_nfe_by_family.png").stat().st_size > 0
    assert "plots/quality_vs_nfe_by_family.png" in (out / "report.md").read_text()


def _x0(denoiser, x, t, eps):
    a = denoiser.schedule.alpha_bar_at(t)
    return (x - (1 - a) ** 0.5 * eps) / a**0.5


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_clipping_gives_the_eps_of_the_clipped_x0(oracle, mode):
    from bench.sampling import ClippedDenoiser

    x = 3 * torch.randn(5, 1, 8, 8, dtype=torch.float64)
    t = 400
    raw = _x0(oracle, x, t, oracle(x, t))
    clipped = _x0(oracle, x, t, ClippedDenoiser(oracle, mode, 0.9)(x, t))
    if mode == "static":
        torch.testing.assert_close(clipped, raw.clamp(-1, 1))
    else:
        s = torch.quantile(raw.abs().flatten(1), 0.9, dim=1).clamp(min=1).view(-1, 1, 1, 1)
        torch.testing.assert_close(clipped, torch.maximum(torch.minimum(raw, s), -s) / s)
    assert clipped.abs().max() <= 1 + 1e-9


def test_clipping_leaves_an_x0_inside_the_data_range_alone(oracle):
    from bench.sampling import ClippedDenoiser

    x0 = 0.5 * torch.rand(3, 1, 8, 8, dtype=torch.float64)
    a = oracle.schedule.alpha_bar_at(100)
    x = a**0.5 * x0 + (1 - a) ** 0.5 * torch.randn_like(x0)
    eps = (x - a**0.5 * x0) / (1 - a) ** 0.5  # the eps whose predicted x0 is x0, inside [-1, 1]
    model = Denoiser(oracle.schedule, DenoiserInfo("fixed", (1, 8, 8)))
    model.predict_eps = lambda x_t, t, cond=None: eps
    for mode in ("static", "dynamic"):
        torch.testing.assert_close(ClippedDenoiser(model, mode)(x, 100), eps)


def test_clip_options_are_accepted_by_every_sampler_validated_and_recorded(registry, tmp_path):
    spec = registry.samplers["dpm-solver++"]
    params = spec.resolve_params({"clip_x0": "dynamic", "clip_percentile": "0.99"})
    assert params["clip_x0"] == "dynamic" and "clip_x0" not in spec.sampler_kwargs(params)
    with pytest.raises(UserError, match="clip_x0='sometimes' must be one of none, static, dynamic"):
        spec.resolve_params({"clip_x0": "sometimes"})
    with pytest.raises(UserError, match="clip_percentile"):
        spec.resolve_params({"clip_percentile": "1.5"})
    config = RunConfig(samplers=("ddim:clip_x0=static",), steps=(5,), model="gaussian-oracle", num_samples=8,
                       metrics=("none",), grid_images=0, trajectory_images=0)
    out = run_benchmark(config, load_registry(), out=str(tmp_path / "run"), quiet=True)
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert row["status"] == "ok" and '"clip_x0": "static"' in row["params"]
