"""The model side of class-conditional sampling: the conditional oracle, cond_acc, and conditional networks."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
import torch

from bench.denoiser import eps_from_prediction
from bench.errors import UserError
from bench.report import guidance_plots, guidance_sentences
from bench.sampling import GuidedDenoiser
from bench.schedule import NoiseSchedule
from models.data import load_dataset
from models.features import load_card
from models.metrics import ClassAccuracy, classifier_labels, create_cond_acc
from models.oracle import ConditionalOracleDenoiser, OracleDenoiser, make_conditional_mixture
from models.train import PRESETS, RunConfig, train, training_target
from models.weights import load_denoiser
from tests.helpers import run_sampler


@pytest.fixture(scope="module")
def cond_oracle():
    return ConditionalOracleDenoiser(make_conditional_mixture(8))


def gaussian_eps(x: torch.Tensor, a: float, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """eps* of one diagonal Gaussian N(mean, var) at alpha_bar a: sqrt(1-a) (x - sqrt(a) mean) / (a var + 1 - a)."""
    return math.sqrt(1 - a) * (x - math.sqrt(a) * mean) / (a * var + 1 - a)


def mixture_eps(x: torch.Tensor, a: float, mixture) -> torch.Tensor:
    """eps* of the whole mixture for one flattened row: the responsibility-weighted component eps*."""
    var = a * mixture.variances + 1 - a                                             # (K, D)
    log_density = -0.5 * (((x - math.sqrt(a) * mixture.means) ** 2 / var) + var.log()).sum(1)
    responsibility = torch.softmax(log_density + mixture.weights.log(), 0)          # (K,)
    components = torch.stack([gaussian_eps(x, a, m, v) for m, v in zip(mixture.means, mixture.variances,
                                                                        strict=True)])
    return responsibility @ components


def test_guided_conditional_oracle_is_exact_row_by_row(cond_oracle):
    mixture, w = cond_oracle.mixture, 2.0
    labels = torch.tensor([3, 0, 1, 2, 0, 3])
    t = torch.tensor([999, 600, 300, 50, 5, 400])
    x = torch.randn(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    guided = GuidedDenoiser(cond_oracle, w)(x, t, labels)
    for row, (label, step) in enumerate(zip(labels.tolist(), t.tolist(), strict=True)):
        a, flat = float(cond_oracle.schedule.alpha_bar[step]), x[row].flatten()
        expected = ((1 + w) * gaussian_eps(flat, a, mixture.means[label], mixture.variances[label])
                    - w * mixture_eps(flat, a, mixture))
        torch.testing.assert_close(guided[row].flatten(), expected, rtol=1e-9, atol=1e-10)


def test_conditional_oracle_gives_each_rows_component_eps_and_null_rows_the_mixture_eps(cond_oracle):
    mixture, k = cond_oracle.mixture, cond_oracle.num_classes
    labels = torch.tensor([2, k, 0, 3, k, 1, 2, 0])
    t = torch.tensor([10, 500, 500, 990, 10, 250, 700, 0])
    x = torch.randn(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = cond_oracle(x, t, labels)
    for row, (label, step) in enumerate(zip(labels.tolist(), t.tolist(), strict=True)):
        a = float(cond_oracle.schedule.alpha_bar[step])
        if label == k:
            expected = mixture_eps(x[row].flatten(), a, mixture).view(1, 8, 8)
        else:
            expected = gaussian_eps(x[row].flatten(), a, mixture.means[label], mixture.variances[label]).view(1, 8, 8)
        torch.testing.assert_close(eps[row], expected, rtol=1e-10, atol=1e-12)


def test_conditional_oracle_without_labels_is_the_unconditional_mixture(cond_oracle):
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = OracleDenoiser(cond_oracle.mixture)(x, 300)
    torch.testing.assert_close(cond_oracle(x, 300), expected, rtol=0, atol=0)


def test_conditional_oracle_refuses_a_label_beyond_the_null_label(cond_oracle):
    with pytest.raises(UserError, match="0..4"):
        cond_oracle(torch.zeros(2, 1, 8, 8), 5, torch.tensor([0, 5]))


def test_bayes_classifier_recovers_the_component_of_exact_samples(cond_oracle):
    mixture = cond_oracle.mixture
    generator = torch.Generator().manual_seed(2)
    labels = torch.arange(400) % cond_oracle.num_classes
    x = mixture.means[labels] + mixture.variances[labels].sqrt() * torch.randn(400, 64, generator=generator,
                                                                                dtype=torch.float64)
    assert torch.equal(cond_oracle.classify(x.view(400, 1, 8, 8)), labels)  # components are far apart


def test_cond_acc_counts_only_labelled_batches():
    accuracy = ClassAccuracy(lambda images: images.flatten(1)[:, 0].long())
    accuracy.update(torch.tensor([[0.0], [1.0], [2.0]]), labels=None)
    assert math.isnan(accuracy.compute()["cond_acc"])
    accuracy.update(torch.tensor([[0.0], [1.0], [2.0], [3.0]]), labels=torch.tensor([0, 1, 0, 3]))
    assert accuracy.compute() == {"cond_acc": 0.75, "cond_acc_n": 4}


def test_cond_acc_of_real_test_digits_is_the_classifiers_test_accuracy():
    images, labels = load_dataset("digits", "test")
    accuracy = ClassAccuracy(classifier_labels("digits"))
    for batch, batch_labels in zip(images.split(100), labels.split(100), strict=True):
        accuracy.update(batch, labels=batch_labels)
    assert accuracy.compute()["cond_acc"] == pytest.approx(load_card("digits")["test_accuracy"], abs=1e-12)


def test_cond_acc_applies_only_to_conditional_models(oracle, cond_oracle):
    assert create_cond_acc(oracle, {}) is None
    assert isinstance(create_cond_acc(cond_oracle, {}), ClassAccuracy)


def guidance_results() -> pd.DataFrame:
    rows = [("ddpm", 0.0, 9.0, 0.91), ("ddpm", 1.0, 6.0, 0.95), ("ddpm", 3.0, 12.0, 0.99),
            ("ddim", 0.0, 14.0, 0.90), ("ddim", 1.0, 15.0, 0.94), ("ddim", 3.0, 11.0, 0.98)]
    return pd.DataFrame([{"sampler": s, "steps": 20, "status": "ok", "guidance": w, "fid": f, "cond_acc": a}
                         for s, w, f, a in rows])


def test_guidance_sentences_name_each_samplers_lowest_fid_scale():
    lines = guidance_sentences(guidance_results())
    assert len(lines) == 2
    assert "**ddim**, the best guidance scale is w = 3: lowest FID 11" in lines[0]
    assert "**ddpm**, the best guidance scale is w = 1: lowest FID 6" in lines[1]
    assert "cond_acc goes from 0.910 at w = 0 to 0.990 at w = 3" in lines[1]


def test_guidance_plot_only_when_guidance_varies(tmp_path):
    assert guidance_plots(guidance_results(), tmp_path) == ["plots/quality_vs_guidance.png"]
    assert (tmp_path / "plots" / "quality_vs_guidance.png").stat().st_size > 0
    single = guidance_results().assign(guidance=2.0)
    assert guidance_plots(single, tmp_path / "single") == [] and guidance_sentences(single) == []


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_training_target_is_what_the_denoiser_converts_back_to_eps(prediction_type):
    schedule = NoiseSchedule.linear(1000)
    generator = torch.Generator().manual_seed(3)
    x0 = torch.randn(6, 1, 8, 8, generator=generator, dtype=torch.float64)
    eps = torch.randn(6, 1, 8, 8, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    alpha_bar = schedule.alpha_bar.to(torch.float64)
    target = training_target(x0, eps, alpha_bar[t], prediction_type)
    recovered = eps_from_prediction(target, schedule.add_noise(x0, t, eps), t, alpha_bar, prediction_type)
    torch.testing.assert_close(recovered, eps, rtol=1e-9, atol=1e-9)


def test_a_v_preset_writes_a_v_card(tmp_path):
    preset = dataclasses.replace(PRESETS["smoke"], prediction_type="v")
    run = RunConfig(preset, 2, 4, 1e-3, 0, torch.device("cpu"), tmp_path / "v.safetensors", tmp_path / "v.ckpt.pt",
                    None)
    path = train(run)
    assert load_denoiser(path).info.prediction_type == "v"


def test_conditional_presets_drop_labels_to_the_null_label_and_fashion_cond_predicts_v():
    for name in ("digits-cond", "fashion-mnist-cond"):
        preset = PRESETS[name]
        assert preset.conditional and preset.network["num_classes"] == 10 and 0.1 <= preset.label_dropout <= 0.2
    assert PRESETS["fashion-mnist-cond"].prediction_type == "v"


@pytest.mark.parametrize(("guidance", "target"), [(0.0, 0.90), (2.0, 0.95)])
def test_shipped_digits_cond_samples_are_classified_as_their_label(registry, guidance, target):
    denoiser = registry.model("digits-cond").load()
    spec = registry.samplers["ddim"]
    images = torch.arange(100)
    x, _ = run_sampler(spec, spec.resolve_params(), denoiser, 50, images, guidance=guidance)
    accuracy = ClassAccuracy(classifier_labels("digits"))
    accuracy.update(x, labels=images % 10)  # the seam's balanced labels: image i has class i mod 10
    assert accuracy.compute()["cond_acc"] >= target
