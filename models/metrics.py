"""Built-in metrics: FID (with bootstrap CI, floor, KID, precision/recall) and the oracle's exact Fréchet distance.

`fid` keys (feature space: the dataset's shipped classifier, or Inception-v3 from --fid-weights for
3-channel images):
- fid: torch-fidelity's FID of all samples against the training split's reference statistics;
- fid_ci_low, fid_ci_high: 95% bootstrap interval (feature rows resampled with a seeded generator;
  the bootstrap distribution is shifted so its median is `fid`, because resampling with
  duplicates biases FID upwards);
- fid_floor: FID of the same number of held-out real images (what a perfect sampler scores), NaN if unknown;
- kid, kid_std: torch-fidelity's KID (polynomial kernel, 20 subsets of min(500, n) rows) against
  the stored subsample of real training features;
- prc_precision, prc_recall: torch-fidelity's improved precision/recall (k=3; not named plain
  'precision', which is the harness's autocast-precision column) between equal-size sets of
  generated and real features (the larger set subsampled with a seeded generator); NaN below 4 rows.

`cond-acc` keys (class-conditional models with a shipped dataset classifier, or the conditional
oracle): cond_acc, the share of samples that the classifier assigns to the class they were sampled
for (the labels reach `update(samples, labels)`; NaN when none were given), and cond_acc_n, the
number of labelled samples it counts. The oracle's classifier is its exact Bayes classifier.

`oracle-fd` keys (Gaussian-mixture oracle only): oracle_fd (Fréchet distance between the samples'
mean/covariance and the mixture's exact ones, in pixel space), mean_err (max |mean error|),
var_err (max |per-pixel variance error|).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

from bench import MetricSpec, hookimpl
from bench.errors import UserError
from bench.frechet import CONFIDENCE, resample_counts, shifted_interval, weighted_fid
from models.data import DATASETS
from models.features import (
    ReferenceStats,
    create_classifier_extractor,
    create_inception_extractor,
    extract_features,
    fid_from_features,
    fid_from_stats,
    floor_fid,
    from_uint8,
    inception_reference_stats,
    load_feature_net,
    reference_stats,
    shipped_datasets,
    to_uint8,
)

KID_SUBSETS = 20  # torch-fidelity default 100 x 1000 rows takes ~10 s on a CPU; KID is unbiased at any size
KID_SUBSET_SIZE = 500
PRC_NEIGHBORHOOD = 3


class MomentAccumulator:
    """Streaming count, sum and sum of outer products of flattened rows, in float64 on the CPU."""

    def __init__(self, dim: int):
        self.count = 0
        self.total = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, rows: torch.Tensor) -> None:
        """Add a batch (B, ...) flattened to (B, dim)."""
        x = rows.reshape(rows.shape[0], -1).to("cpu", torch.float64)
        self.count += x.shape[0]
        self.total += x.sum(0)
        self.outer += x.T @ x

    def mean(self) -> torch.Tensor:
        """Mean of the rows seen so far."""
        return self.total / self.count

    def covariance(self) -> torch.Tensor:
        """Unbiased (ddof=1) covariance, as np.cov and torch-fidelity compute it."""
        mean = self.mean()
        return (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)


def bootstrap_fid(features: torch.Tensor, reference: ReferenceStats, resamples: int, seed: int) -> torch.Tensor:
    """FID of `resamples` bootstrap resamples (rows drawn with replacement, seeded) of `features`."""
    return weighted_fid(features, resample_counts(features.shape[0], resamples, seed), reference)


def bootstrap_interval(point: float, samples: torch.Tensor, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of bootstrap FIDs shifted so that their median is `point`; a distance is never negative."""
    return shifted_interval(point, samples, confidence, floor=0.0)


def _subsample(rows: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    return rows if len(rows) <= size else rows[torch.randperm(len(rows), generator=generator)[:size]]


def kid_and_prc(features: torch.Tensor, real: torch.Tensor, seed: int) -> dict[str, float]:
    """torch-fidelity's KID and precision/recall between generated and real feature rows."""
    out = {"kid": math.nan, "kid_std": math.nan, "prc_precision": math.nan, "prc_recall": math.nan}
    real = real.to(torch.float64)
    subset = min(KID_SUBSET_SIZE, len(features), len(real))
    if subset >= 2:
        kid = kid_features_to_metric(features, real, kid_subsets=KID_SUBSETS, kid_subset_size=subset,
                                     rng_seed=seed, verbose=False)
        out["kid"], out["kid_std"] = kid[KEY_METRIC_KID_MEAN], kid[KEY_METRIC_KID_STD]
    size = min(len(features), len(real))
    if size > PRC_NEIGHBORHOOD:
        generator = torch.Generator().manual_seed(seed)
        prc = prc_features_to_metric(_subsample(features, size, generator).float(),
                                     _subsample(real, size, generator).float(),
                                     prc_neighborhood=PRC_NEIGHBORHOOD, save_cpu_ram=False, verbose=False)
        out["prc_precision"], out["prc_recall"] = prc[KEY_METRIC_PRECISION], prc[KEY_METRIC_RECALL]
    return out


class FeatureMetrics:
    """Streams samples through a feature extractor, keeping only float64 feature rows on the CPU."""

    def __init__(self, extractor, reference: ReferenceStats, floor: float | None, seed: int, bootstrap: int):
        self.extractor = extractor
        self.reference = reference
        self.floor = floor
        self.seed = seed
        self.bootstrap = bootstrap
        self.rows: list[torch.Tensor] = []

    def update(self, samples: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Extract the batch's features; the images themselves are not kept (labels are not used)."""
        self.rows.append(extract_features(self.extractor, samples))

    def shard_state(self) -> dict:
        """This process's share for rank 0 (bench.distributed): its feature rows, batch by batch."""
        return {"rows": self.rows}

    def merge_shards(self, states: list[dict]) -> None:
        """Every rank's rows (in rank order; rank r was fed batches r, r + W, ...) back in global batch order."""
        from bench.distributed import interleave
        self.rows = interleave([state["rows"] for state in states])

    paired_column = "fid"  # bench.paired: the column that paired_rows() and paired_reference() rebuild

    def paired_rows(self, samples: torch.Tensor) -> torch.Tensor:
        """The per-image rows of the batch just passed to update(): its feature rows."""
        return self.rows[-1]

    def paired_reference(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) the FID is taken against."""
        return self.reference.mu, self.reference.sigma

    def features(self) -> torch.Tensor:
        """All feature rows seen so far, (N, D) float64."""
        return torch.cat(self.rows)

    def compute(self) -> dict[str, float]:
        """{'fid', 'fid_ci_low', 'fid_ci_high', 'fid_floor', 'kid', 'kid_std', 'prc_precision', 'prc_recall'}."""
        if not self.rows:
            raise UserError("fid: no samples were passed to update()")
        features = self.features()
        fid = fid_from_features(features, self.reference)
        low = high = math.nan
        if self.bootstrap > 0 and len(features) > 1:
            self.bootstrap_values = bootstrap_fid(features, self.reference, self.bootstrap, self.seed)  # bench.paired
            low, high = bootstrap_interval(fid, self.bootstrap_values)
        out = {"fid": fid, "fid_ci_low": low, "fid_ci_high": high,
               "fid_floor": math.nan if self.floor is None else self.floor}
        return out | kid_and_prc(features, self.reference.real_features, self.seed)


def create_fid(denoiser, context: dict) -> FeatureMetrics | None:
    """FID for models trained on a dataset with a shipped extractor, or on 3-channel data with --fid-weights."""
    dataset = denoiser.info.dataset
    if dataset not in DATASETS or tuple(denoiser.info.image_shape) != DATASETS[dataset].image_shape:
        return None
    device = context.get("device", "cpu")
    seed, bootstrap = int(context.get("seed", 0)), int(context.get("bootstrap", 200))
    weights = context.get("fid_weights")
    if weights and denoiser.info.image_shape[0] == 3:
        reference = inception_reference_stats(dataset, weights, device)
        return FeatureMetrics(create_inception_extractor(weights, device), reference, None, seed, bootstrap)
    if dataset not in shipped_datasets():
        return None
    floor = floor_fid(dataset, int(context.get("num_samples", 0)))
    return FeatureMetrics(create_classifier_extractor(dataset, device), reference_stats(dataset), floor, seed,
                          bootstrap)


@dataclass(frozen=True)
class OracleTruth:
    """The exact mean (D,) and covariance (D, D) of the oracle's data distribution, float64."""

    mean: torch.Tensor
    covariance: torch.Tensor


class OracleFD:
    """Streams samples' moments and compares them with the mixture's exact moments."""

    def __init__(self, truth: OracleTruth):
        self.truth = truth
        self.moments = MomentAccumulator(truth.mean.numel())

    def update(self, samples: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Add a batch's pixels to the streamed moments (labels are not used)."""
        self.moments.update(samples)

    def shard_state(self) -> dict:
        """This process's share for rank 0 (bench.distributed): its float64 count, sum and sum of outer products."""
        return {"count": self.moments.count, "total": self.moments.total, "outer": self.moments.outer}

    def merge_shards(self, states: list[dict]) -> None:
        """Sum every rank's moments, in rank order."""
        self.moments = MomentAccumulator(self.truth.mean.numel())
        for state in states:
            self.moments.count += state["count"]
            self.moments.total += state["total"]
            self.moments.outer += state["outer"]

    paired_column = "oracle_fd"  # bench.paired: the column that paired_rows() and paired_reference() rebuild

    def paired_rows(self, samples: torch.Tensor) -> torch.Tensor:
        """The per-image rows of a batch: its flattened pixels."""
        return samples.reshape(samples.shape[0], -1)

    def paired_reference(self) -> tuple[np.ndarray, np.ndarray]:
        """The mixture's exact (mean, covariance)."""
        return self.truth.mean.numpy(), self.truth.covariance.numpy()

    def compute(self) -> dict[str, float]:
        """{'oracle_fd', 'mean_err', 'var_err'}."""
        mean, cov = self.moments.mean(), self.moments.covariance()
        fd = fid_from_stats({"mu": mean.numpy(), "sigma": cov.numpy()},
                            {"mu": self.truth.mean.numpy(), "sigma": self.truth.covariance.numpy()})
        out = {"oracle_fd": fd, "mean_err": float((mean - self.truth.mean).abs().max()),
               "var_err": float((cov.diagonal() - self.truth.covariance.diagonal()).abs().max())}
        dim = self.truth.mean.numel()
        if self.moments.count <= dim:  # a singular sample covariance: the matrix square root is ill-conditioned
            out["oracle_fd_note"] = (f"{self.moments.count} images for {dim} pixels: the sample covariance is "
                                     "singular, so oracle_fd is strongly biased and unstable in its last digits; "
                                     f"use more than {dim} images")
        return out


def create_oracle_fd(denoiser, context: dict) -> OracleFD | None:
    """Exact Fréchet distance for models that carry their data distribution as `.mixture`."""
    mixture = getattr(denoiser, "mixture", None)
    if mixture is None:
        return None
    truth = OracleTruth(mixture.mean().to("cpu", torch.float64), mixture.covariance().to("cpu", torch.float64))
    return OracleFD(truth)


class ClassAccuracy:
    """Counts samples that `classify` (images -> class indices) assigns to the class they were sampled for."""

    def __init__(self, classify: Callable[[torch.Tensor], torch.Tensor]):
        self.classify = classify
        self.correct = 0
        self.count = 0

    def update(self, samples: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Classify a labelled batch; an unlabelled batch (unconditional sampling) is not counted."""
        if labels is None:
            return
        predicted = self.classify(samples).to("cpu")
        self.correct += int((predicted == torch.as_tensor(labels, device="cpu").long()).sum())
        self.count += len(predicted)

    def shard_state(self) -> dict:
        """This process's share for rank 0 (bench.distributed): its counts."""
        return {"correct": self.correct, "count": self.count}

    def merge_shards(self, states: list[dict]) -> None:
        """Add every rank's counts."""
        self.correct = sum(state["correct"] for state in states)
        self.count = sum(state["count"] for state in states)

    def compute(self) -> dict[str, float]:
        """{'cond_acc', 'cond_acc_n'}; cond_acc is NaN when no labelled sample was seen."""
        return {"cond_acc": self.correct / self.count if self.count else math.nan, "cond_acc_n": self.count}


def classifier_labels(dataset: str, device: str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """The dataset's shipped classifier as images in [-1, 1] -> class index, with inputs quantized to uint8
    as for FID (so cond_acc scores the images a user would save)."""
    net = load_feature_net(dataset).to(device)

    @torch.no_grad()
    def classify(images: torch.Tensor) -> torch.Tensor:
        return torch.cat([net(from_uint8(to_uint8(batch)).to(device)).argmax(1) for batch in images.split(500)])
    return classify


def create_cond_acc(denoiser, context: dict) -> ClassAccuracy | None:
    """cond_acc for class-conditional models: the conditional oracle's Bayes classifier, or the shipped
    classifier of the model's dataset when its classes are that dataset's classes."""
    num_classes = getattr(denoiser, "num_classes", 0)
    if not num_classes:
        return None
    if hasattr(denoiser, "classify"):
        return ClassAccuracy(denoiser.classify)
    dataset = denoiser.info.dataset
    if dataset not in shipped_datasets() or DATASETS[dataset].num_classes != num_classes \
            or tuple(denoiser.info.image_shape) != DATASETS[dataset].image_shape:
        return None
    return ClassAccuracy(classifier_labels(dataset, context.get("device", "cpu")))


class RefError:
    """Root-mean-square per-pixel distance of each image's sample to its reference ODE solution (bench.reference),
    averaged over images (`ref_rmse`), with a 95% bootstrap interval drawn with the same resampled image indices
    as FID's (so paired differences line up). Stochastic samplers get no value (bench.jobs blanks it)."""

    paired_mean_column = "ref_rmse"  # bench.jobs saves per_image_values() for paired mean differences

    def __init__(self, references, bootstrap: int, seed: int):
        self.references = references
        self.bootstrap = bootstrap
        self.seed = seed
        self.errors: dict[int, float] = {}

    def update(self, samples: torch.Tensor, indices: torch.Tensor) -> None:
        """Each image's RMS distance to its reference (float64)."""
        start = int(indices[0])
        reference = self.references.for_images(start, len(indices)).to(samples.device, torch.float64)
        rms = (samples.to(torch.float64) - reference).reshape(len(indices), -1).pow(2).mean(1).sqrt()
        self.errors.update(zip(indices.tolist(), rms.cpu().tolist()))

    def shard_state(self) -> dict:
        return {"errors": dict(self.errors)}

    def merge_shards(self, states: list[dict]) -> None:
        self.errors = {}
        for state in states:
            self.errors.update(state["errors"])

    def per_image_values(self) -> np.ndarray:
        """The per-image errors in image order (features/<stem>.ref_rmse.npy)."""
        return np.array([self.errors[i] for i in sorted(self.errors)], dtype=np.float64)

    def compute(self) -> dict[str, float]:
        values = torch.from_numpy(self.per_image_values())
        mean = float(values.mean())
        low = high = math.nan
        if self.bootstrap > 0 and len(values) > 1:
            counts = resample_counts(len(values), self.bootstrap, self.seed)
            low, high = shifted_interval(mean, counts @ values / len(values))
        return {"ref_rmse": mean, "ref_rmse_ci_low": low, "ref_rmse_ci_high": high}


def create_ref_error(denoiser, context: dict) -> RefError | None:
    """ref-error when the harness computed reference solutions for this run (deterministic ODE samplers)."""
    references = (context.get("references") or {}).get(context.get("guidance"))
    if references is None:
        return None
    return RefError(references, int(context.get("bootstrap", 200)), int(context.get("seed", 0)))


@hookimpl
def register_metrics(register):
    register(MetricSpec("fid", "FID in the dataset's classifier feature space (Inception-v3 with --fid-weights "
                        "for RGB), with 95% bootstrap CI, the real-data floor at the same n, KID and "
                        "precision/recall", create_fid))
    register(MetricSpec("oracle-fd", "Exact Fréchet distance between samples and the Gaussian-mixture "
                        "oracle's true distribution, plus max mean and per-pixel variance errors",
                        create_oracle_fd))
    register(MetricSpec("ref-error", "Distance to the exact trajectory: RMS per-pixel distance of each image to the "
                        "probability-flow ODE solution from the same x_T (DPM-Solver++(3M), 500 steps; exact on the "
                        "single-Gaussian oracle), with 95% bootstrap CI; empty for stochastic samplers",
                        create_ref_error))
    register(MetricSpec("cond-acc", "Share of class-conditional samples that the dataset's shipped classifier "
                        "(the oracle's Bayes classifier) assigns to the requested class", create_cond_acc))
