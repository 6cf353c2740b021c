"""ref-error: the distance of each sample to the exact ODE solution from the same x_T (bench.reference)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.reference import CONVERGENCE_STEPS, REFERENCE_SOLVER, compute_references, model_fingerprint
from bench.sampling import batch_noise
from tests.helpers import run_sampler

RUN = ["run", "--num-samples", "24", "--batch-size", "8", "--metrics", "ref-error", "--quiet", "--bootstrap", "50"]


def _rows(folder):
    return pd.read_csv(folder / "results.csv").set_index("sampler")


def test_ref_rmse_is_zero_for_the_reference_solver_against_itself(tmp_path, registry):
    denoiser = registry.model("gaussian-oracle").load("cpu")
    name, params, steps = REFERENCE_SOLVER
    refs = compute_references(registry, denoiser, [(0, 8)], 0, 8)
    spec = registry.samplers[name]
    x, _ = run_sampler(spec, spec.resolve_params(params), denoiser, steps, torch.arange(8))
    assert torch.equal(x, refs.for_images(0, 8))


def test_ref_rmse_equals_the_closed_form_distance_on_the_single_gaussian(tmp_path, registry):
    out = tmp_path / "r"
    assert main([*RUN, "--model", "gaussian-single", "--samplers", "ddim", "--steps", "10", "--out", str(out)]) == 0
    row = _rows(out).loc["ddim"]
    denoiser = registry.model("gaussian-single").load("cpu")
    spec = registry.samplers["ddim"]
    x, times = run_sampler(spec, spec.resolve_params(), denoiser, 10, torch.arange(24))
    x_T = batch_noise(0, torch.arange(24), denoiser.image_shape, dtype=torch.float64).initial()
    exact = denoiser.mixture.exact_ode_map(x_T, denoiser.schedule.alpha_bar_at(times[0]), 1.0)
    expected = (x.double() - exact.float().double()).reshape(24, -1).pow(2).mean(1).sqrt().mean()
    assert row["ref_rmse"] == pytest.approx(float(expected), rel=1e-6)
    assert row["ref_rmse_ci_low"] < row["ref_rmse"] < row["ref_rmse_ci_high"]
    config = json.loads((out / "config.json").read_text())
    assert config["reference"]["None"]["solver"].startswith("exact ODE map")


def test_ref_rmse_does_not_depend_on_the_batch_size(tmp_path):
    common = [*RUN, "--model", "gaussian-oracle", "--samplers", "dpmpp-2m", "--steps", "6"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common[:4], "12", *common[5:], "--out", str(tmp_path / "b")]) == 0
    a, b = _rows(tmp_path / "a").loc["dpmpp-2m"], _rows(tmp_path / "b").loc["dpmpp-2m"]
    assert a["ref_rmse"] == pytest.approx(b["ref_rmse"], rel=1e-12)
    assert a["ref_rmse_ci_low"] == pytest.approx(b["ref_rmse_ci_low"], rel=1e-12)


def test_stochastic_samplers_get_no_ref_rmse_and_say_why(tmp_path):
    out = tmp_path / "r"
    assert main([*RUN, "--model", "gaussian-oracle", "--samplers", "ddim", "ddim-eta1", "dpmpp-2m-sde", "--steps", "5",
                 "--out", str(out)]) == 0
    rows = _rows(out)
    assert rows.loc["ddim", "ref_rmse"] > 0
    for name in ("ddim-eta1", "dpmpp-2m-sde"):
        assert pd.isna(rows.loc[name, "ref_rmse"]) and "stochastic" in rows.loc[name, "ref_rmse_note"]
    assert "No ref_rmse for ddim-eta1, dpmpp-2m-sde" in (out / "report.md").read_text()


def test_ref_rmse_falls_with_nfe_and_pairs_at_equal_nfe(tmp_path):
    out = tmp_path / "r"
    assert main([*RUN, "--model", "gaussian-oracle", "--samplers", "ddim", "dpmpp-2m", "--steps", "5,10,20",
                 "--out", str(out)]) == 0
    rows = pd.read_csv(out / "results.csv")
    for name, group in rows.groupby("sampler"):
        values = group.sort_values("nfe")["ref_rmse"].tolist()
        assert values == sorted(values, reverse=True), name
    paired = pd.read_csv(out / "paired.csv")
    ref = paired[paired["column"] == "ref_rmse"]
    paired_width, unpaired_width = ref["paired_high"] - ref["paired_low"], ref["unpaired_high"] - ref["unpaired_low"]
    assert len(ref) == 3 and (paired_width <= unpaired_width).all()
    assert (out / "plots" / "ref_rmse_vs_nfe.png").is_file()
    assert "Empirical order on this model" in (out / "report.md").read_text()


def test_the_reference_is_cached_and_reused_and_a_changed_model_misses(tmp_path, registry):
    common = [*RUN, "--model", "gaussian-oracle", "--samplers", "ddim", "--steps", "4"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--out", str(tmp_path / "b")]) == 0
    first = json.loads((tmp_path / "a" / "config.json").read_text())["reference"]["None"]
    second = json.loads((tmp_path / "b" / "config.json").read_text())["reference"]["None"]
    assert not first["cache_hit"] and second["cache_hit"] and first["cache"] == second["cache"]
    assert first["network_calls_per_image"] == REFERENCE_SOLVER[2] and second["network_calls_per_image"] == 0
    # every image-call counted: 24 images' solves and the convergence check's first batch (8 images) at its steps
    assert first["network_calls"] == 24 * REFERENCE_SOLVER[2] + 8 * CONVERGENCE_STEPS and second["network_calls"] == 0
    assert _rows(tmp_path / "a").loc["ddim", "ref_rmse"] == _rows(tmp_path / "b").loc["ddim", "ref_rmse"]
    denoiser = registry.model("gaussian-oracle").load("cpu")
    before = model_fingerprint(denoiser)
    denoiser.mixture.means[0, 0] += 1e-3
    assert model_fingerprint(denoiser) != before


def test_the_reference_cost_is_outside_every_rows_wall_time(tmp_path):
    out = tmp_path / "r"
    assert main([*RUN, "--model", "gaussian-oracle", "--samplers", "ddim", "--steps", "4", "--out", str(out)]) == 0
    reference = json.loads((out / "config.json").read_text())["reference"]["None"]
    assert reference["seconds"] > 0 and "convergence" in reference
    assert reference["convergence"]["rms_difference"] < reference["convergence"]["tolerance"]
    saved = np.load(out / "features" / "ddim-4.ref_rmse.npy")
    assert saved.shape == (24,) and np.isfinite(saved).all()


def test_the_report_has_an_xy_grid_a_heatmap_and_a_budget_table_with_ties(tmp_path):
    out = tmp_path / "r"
    assert main([*RUN, "--model", "gaussian-oracle", "--metrics", "oracle-fd", "ref-error", "--samplers", "ddim",
                 "ddim:plan=quadratic", "ddim-eta1", "--steps", "4,8", "--grid-images", "8", "--out", str(out)]) == 0
    assert (out / "plots" / "xy_grid.png").is_file() and (out / "plots" / "heatmap.png").is_file()
    from PIL import Image
    with Image.open(out / "plots" / "xy_grid.png") as grid:
        assert grid.size[0] > 200 and grid.size[1] > 100
    md = (out / "report.md").read_text()
    assert "| budget (NFE) | best |" in md and "not significantly worse" in md
    assert "![plots/xy_grid.png](plots/xy_grid.png)" in md and "heatmap.png" in (out / "report.html").read_text()
    budget = md.split("| budget (NFE) | best |")[1].split("\n\n")[0]
    assert budget.count("\n| ") == 2  # budgets 4 and 8
