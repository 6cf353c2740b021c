"""Tests for the survivors of hand mutation run 5, helper a (docs/mutation-run-5.md, part A)."""

from __future__ import annotations

import pandas as pd
import torch


def test_the_continuous_quadratic_plan_is_dense_near_t_min_on_the_ve_path():
    """'Quadratically spaced in the path's time, dense near t_min': t_i = lo + (1 - i/(N-1))^2 (hi - lo)."""
    from bench.paths import PathConfig, make_path
    from bench.plans import make_plan

    path = make_path(PathConfig("ve"))  # t in [0.002, 80], no shift
    assert make_plan("quadratic", path, 3) == [80.0, 0.002 + 0.25 * 79.998, 0.002]
    times = make_plan("quadratic", path, 5)
    assert times[1] - times[2] > times[2] - times[3] > times[3] - times[4]  # gaps shrink towards t_min


def test_the_paired_summary_gives_the_median_width_ratio_it_names(tmp_path, monkeypatch):
    """report.md: 'the paired interval is {x}x as wide as the unpaired one (median)': x is the median."""
    import bench.paired as paired

    table = pd.DataFrame({
        "nfe": [10, 10, 10], "guidance": [None] * 3, "a": ["p", "p", "p"], "b": ["q", "r", "s"],
        "column": ["oracle_fd"] * 3, "diff": [-0.1, -0.2, -0.3], "paired_low": [-0.2, -0.3, -0.4],
        "paired_high": [-0.05, -0.1, -0.2], "unpaired_low": [-1.0, -1.0, -1.0], "unpaired_high": [1.0, 1.0, 1.0],
        "width_ratio": [0.1, 0.2, 0.9], "significant": [True, True, True], "same_samples": [False, False, False]})
    monkeypatch.setattr(paired, "paired_table", lambda *a, **k: table)
    monkeypatch.setattr(paired, "paired_mean_table", lambda *a, **k: pd.DataFrame())
    lines = paired.paired_report(tmp_path, pd.DataFrame({"sampler": ["p"]}), {"config": {"bootstrap": 10}})
    assert "Across 3 pairs the paired interval is 0.20x as wide as the unpaired one (median)" in lines[0]
    assert (tmp_path / "paired.csv").is_file()


def test_prc_precision_is_of_the_generated_rows_against_the_real_ones():
    """torch-fidelity's convention: features_1 generated, features_2 real. Generated rows packed in the middle of
    the real cloud: all of them lie on the real manifold (precision 1), few real rows lie on theirs (low recall)."""
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    from models.metrics import PRC_NEIGHBORHOOD, kid_and_prc

    generator = torch.Generator().manual_seed(0)
    real = torch.randn(60, 4, generator=generator, dtype=torch.float64)
    generated = 0.05 * torch.randn(60, 4, generator=generator, dtype=torch.float64)
    out = kid_and_prc(generated, real, seed=0)
    expected = prc_features_to_metric(generated.float(), real.float(), prc_neighborhood=PRC_NEIGHBORHOOD,
                                      save_cpu_ram=False, verbose=False)
    assert out["prc_precision"] == expected[KEY_METRIC_PRECISION] == 1.0
    assert out["prc_recall"] == expected[KEY_METRIC_RECALL] < 0.5


def test_dpm_adaptive_calls_per_image_on_the_oracle_are_pinned():
    """The error scale is delta = max(atol, rtol max(|x_lower|, |x_prev|)) (Lu et al. 2022a, the module docstring);
    the calls each image takes from t = 999 to 0 at the default tolerance pin that rule (|x_higher| gives others)."""
    from bench.sampling import batch_noise
    from models.oracle import OracleDenoiser, make_mixture
    from samplers.adaptive import solve_adaptive

    den = OracleDenoiser(make_mixture(8))
    x = batch_noise(0, torch.arange(8), den.image_shape, dtype=torch.float64).initial()
    _, nfe = solve_adaptive(den, x, 999, 0, order=3)
    assert nfe.tolist() == [32, 34, 41, 39, 43, 34, 41, 41]
    _, nfe = solve_adaptive(den, x, 999, 0, order=2)
    assert nfe.tolist() == [53, 56, 53, 63, 51, 62, 51, 47]
