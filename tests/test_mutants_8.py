"""Tests for the survivors of hand mutation run 8 (docs/mutation-run-8.md)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from tests.helpers import idx_bytes


def test_edm_stochastic_churns_at_a_level_exactly_at_s_tmin_and_at_s_tmax():
    """Karras et al. 2022, Alg. 2: gamma_i = min(S_churn / N, sqrt(2) - 1) where S_tmin <= sigma_i <= S_tmax, both
    ends included. With S_tmin = S_tmax = sigma_k of one plan level, exactly step k churns: it alone asks for
    step noise."""
    from bench.ode import levels
    from bench.plans import make_plan
    from bench.schedule import NoiseSchedule
    from models.oracle import OracleDenoiser, make_mixture
    from samplers.karras import sample_edm_stochastic

    den = OracleDenoiser(make_mixture(8), NoiseSchedule.linear(1000))
    plan = make_plan("karras", den.schedule, 8)
    lv = levels(den.schedule, plan)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for k in (1, 4):
        asked = []
        sigma = lv[k].sigma_edm
        sample_edm_stochastic(den, x, plan, lambda step, asked=asked: asked.append(step) or torch.zeros_like(x),
                              s_churn=4.0, s_tmin=sigma, s_tmax=sigma)
        assert asked == [k]


def test_the_time_embedding_is_the_transformers_sinusoid_with_frequencies_spaced_over_half_the_dimension():
    """Vaswani et al.'s PE(t, i) = cos / sin(t / max_period^(i / half)), i = 0..half-1 (guided-diffusion's
    timestep_embedding, diffusers with downscale_freq_shift=0): the form the shipped ddpm-unet weights were trained
    with. The lowest frequency is max_period^(-(half-1)/half), not 1/max_period."""
    import math

    from models.networks import sinusoidal_embedding

    t = torch.tensor([0.0, 1.0, 7.5, 100.0])
    dim, period = 8, 10000.0
    half = dim // 2
    expected = torch.tensor([[f(v / period ** (i / half)) for f in (math.cos, math.sin) for i in range(half)]
                             for v in t.tolist()])
    torch.testing.assert_close(sinusoidal_embedding(t, dim), expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(sinusoidal_embedding(t, dim, max_period=100.0)[2, half - 1],
                               torch.tensor(math.cos(7.5 / 100.0 ** ((half - 1) / half))), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("count", [4, 5, 6, 7])
def test_force_names_up_to_five_foreign_entries_and_counts_only_the_rest(tmp_path, count):
    """--force on a results folder holding files the tool did not write refuses, naming the first five (sorted) and
    then 'and K more' for the K = count - 5 others; with five or fewer every one is named and nothing is 'more'."""
    from bench.errors import UserError
    from bench.results import TOOL, prepare_out_dir

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.csv").write_text("sampler,steps\n")
    (folder / "config.json").write_text(json.dumps({"tool": TOOL, "config": {}}))
    names = [f"notes{i}.txt" for i in range(count)]
    for name in names:
        (folder / name).write_text("mine")
    with pytest.raises(UserError) as caught:
        prepare_out_dir(str(folder), tmp_path, "m", resume=False, force=True)
    message = str(caught.value)
    assert all(name in message for name in names[:5])
    if count > 5:
        assert f" and {count - 5} more" in message
    else:
        assert " more" not in message
    assert sorted(p.name for p in folder.iterdir()) == sorted(["results.csv", "config.json", *names])


def _idx(array: np.ndarray) -> bytes:
    """An IDX file, gzipped as the Debian package ships them."""
    return gzip.compress(idx_bytes(array))


@pytest.mark.parametrize("labels", [np.array([1, 2]), np.array([1, 2, 3, 4]), np.array([[1], [2], [3]])])
def test_fashion_mnist_refuses_a_labels_file_that_does_not_give_one_label_per_image(tmp_path, labels):
    """Three images need exactly three labels, shaped (3,): a labels file of another length (a truncated or
    mismatched download) would pair images with the wrong classes, so it is a UserError, not a silent load."""
    from bench.errors import UserError
    from models.data import _fashion_mnist

    for prefix in ("train", "t10k"):
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(_idx(np.full((3, 28, 28), 7, dtype=np.uint8)))
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(_idx(labels))
    with pytest.raises(UserError, match="unexpected shapes"):
        _fashion_mnist("train", str(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(_idx(np.array([0, 1, 9])))
    pixels, got = _fashion_mnist("test", str(tmp_path))
    assert pixels.shape == (3, 1, 28, 28) and got.tolist() == [0, 1, 9]


def test_there_is_no_fid_floor_for_fewer_than_two_images():
    """FID needs a covariance, so at least two images: floor_fid is None at n = 0 and 1 for every shipped dataset,
    and a number from n = 2 on (the fit a + b/n extrapolates below the smallest measured size)."""
    from models.features import floor_fid, load_card, shipped_datasets

    datasets = [d for d in shipped_datasets() if load_card(d).get("floors")]
    assert datasets
    for dataset in datasets:
        assert floor_fid(dataset, 0) is None and floor_fid(dataset, 1) is None
        assert isinstance(floor_fid(dataset, 2), float)
