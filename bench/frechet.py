"""Fréchet distances of weighted feature rows and bootstrap intervals: the statistics behind FID's
confidence interval (models/metrics.py) and the paired comparisons (bench/paired.py), in one place."""

from __future__ import annotations

import numpy as np
import torch

CONFIDENCE = 0.95
_BOOTSTRAP_CHUNK_ELEMENTS = 2e7  # bounds the (resamples, D, N) temporary in weighted_fid


def resample_counts(num_images: int, resamples: int, seed: int) -> torch.Tensor:
    """(resamples, num_images) multiplicities of image indices drawn with replacement, seeded."""
    generator = torch.Generator().manual_seed(seed)
    drawn = torch.randint(num_images, (resamples, num_images), generator=generator)
    return torch.zeros(resamples, num_images, dtype=torch.float64).scatter_add_(
        1, drawn, torch.ones(resamples, num_images, dtype=torch.float64))


def _trace_sqrt_product(sqrt_reference: torch.Tensor, covariances: torch.Tensor) -> torch.Tensor:
    """tr sqrt(C R) for a batch of covariances C, as tr sqrt(R^1/2 C R^1/2) (symmetric, so eigvalsh)."""
    middle = sqrt_reference @ covariances @ sqrt_reference
    return torch.linalg.eigvalsh((middle + middle.mT) / 2).clamp(min=0).sqrt().sum(-1)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def weighted_fid(features: torch.Tensor, weights: torch.Tensor, reference) -> torch.Tensor:
    """FID of each row-weighting of `features` (weights (B, N), integer counts summing to N) against
    `reference` (anything with float64 numpy `.mu` and `.sigma`), vectorised; all-ones weights give the plain FID."""
    x = features.to(torch.float64)
    n = weights.sum(1, keepdim=True).to(torch.float64)
    mu_ref = torch.from_numpy(reference.mu)
    sigma_ref = torch.from_numpy(reference.sigma)
    sqrt_ref = _sqrt_psd(sigma_ref)
    chunk = max(1, int(_BOOTSTRAP_CHUNK_ELEMENTS // max(1, x.numel())))
    out = []
    for w, count in zip(weights.to(torch.float64).split(chunk), n.split(chunk), strict=True):
        mean = w @ x / count                                            # (b, D)
        second = (x.T.unsqueeze(0) * w.unsqueeze(1)) @ x                # (b, D, D)
        cov = (second - count.unsqueeze(-1) * mean.unsqueeze(2) * mean.unsqueeze(1)) / (count.unsqueeze(-1) - 1)
        diff = ((mean - mu_ref) ** 2).sum(1)
        trace = cov.diagonal(dim1=1, dim2=2).sum(1) + sigma_ref.trace()
        out.append(diff + trace - 2 * _trace_sqrt_product(sqrt_ref, cov))
    return torch.cat(out)


def shifted_interval(point: float, values: torch.Tensor, confidence: float = CONFIDENCE,
                     floor: float | None = None) -> tuple[float, float]:
    """Percentile interval of bootstrap values shifted so that their median is `point` (resampling with
    duplicates biases a Fréchet distance upwards; the shift removes that bias); clipped at `floor` if given."""
    values = values.numpy()
    shift = float(np.median(values)) - point
    tail = (1 - confidence) / 2 * 100
    low, high = (float(v) - shift for v in np.percentile(values, [tail, 100 - tail]))
    if floor is not None:
        low, high = max(floor, low), max(floor, high)
    return low, high
