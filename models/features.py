"""FID feature spaces: a small CNN classifier per dataset, and torch-fidelity's Inception-v3 from a local file.

Inception-v3 features mean little on 8x8 or 28x28 grayscale images and its weights cannot be
downloaded at run time, so each dataset gets a small classifier whose penultimate layer (the
`features` output, taken before its ReLU) is the feature space. `python -m bench train-features`
trains one with a fixed seed and writes, into models/weights/:

- features-NAME.safetensors: the network weights;
- features-NAME.json: the card (architecture, held-out accuracy, time, device, command, floors);
- features-NAME-stats.safetensors: mean and covariance (float64) of the training split's features,
  their count, and a seeded subsample of real feature rows for KID and precision/recall.

Both classes are registered with torch-fidelity (`sampler-bench-NAME`, `inception-v3-compat`), take
uint8 images as torch-fidelity does, and FID is torch-fidelity's `fid_statistics_to_metric`.
Images in [-1, 1] are quantized to uint8 first, exactly as if they had been saved as PNG files.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torch_fidelity
import torch_fidelity.utils
from safetensors.torch import load_file, save_file
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from bench.errors import UserError
from models.data import DATASETS, load_dataset

WEIGHTS_DIR = Path(__file__).parent / "weights"
EXTRACTOR_PREFIX = "sampler-bench-"
INCEPTION_NAME = "inception-v3-compat"
INCEPTION_URL = URL_INCEPTION_V3
CACHE_ENV = "SAMPLER_BENCH_CACHE"
FLOOR_SIZES = (100, 250, 500, 1000, 2000, 5000, 10000)
FLOOR_REPEATS = 20
FIT_MIN_SIZE = 1000  # smaller n are further from the 1/n regime
REAL_SUBSAMPLE = 2000  # real feature rows kept for KID and precision/recall


@dataclass(frozen=True)
class FeatureNetConfig:
    """A small CNN: one conv + ReLU + 2x2 max-pool per width, 2x2 average pool, linear features, linear head."""

    in_channels: int
    widths: tuple[int, ...]
    feature_dim: int
    num_classes: int


@dataclass(frozen=True)
class TrainConfig:
    """How a feature extractor is trained (Adam, cross-entropy, fixed seed)."""

    dataset: str
    epochs: int
    batch_size: int = 128
    learning_rate: float = 2e-3
    seed: int = 0
    device: str = "cpu"


NET_CONFIGS = {
    "digits": FeatureNetConfig(1, (32, 64), 64, 10),
    "fashion-mnist": FeatureNetConfig(1, (32, 64, 128), 128, 10),
    "cifar10": FeatureNetConfig(3, (64, 128, 256), 256, 10),
}
DEFAULT_EPOCHS = {"digits": 40, "fashion-mnist": 5, "cifar10": 20}


class FeatureNet(nn.Module):
    """Classifier whose `features(x)` (penultimate layer, before its ReLU) is the FID feature space."""

    def __init__(self, config: FeatureNetConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels = config.in_channels
        for width in config.widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            channels = width
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.embed = nn.Linear(channels * 4, config.feature_dim)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Feature vectors (B, feature_dim) of float images in [-1, 1]."""
        return self.embed(self.trunk(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes)."""
        return self.head(F.relu(self.features(images)))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Quantize images in [-1, 1] to uint8 0..255 (values outside are clipped), as saving a PNG would."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 back to float32 in [-1, 1]."""
    return images.to(torch.float32) / 127.5 - 1


def weights_path(dataset: str, folder: Path = WEIGHTS_DIR) -> Path:
    """The classifier's weights file (safetensors)."""
    return folder / f"features-{dataset}.safetensors"


def card_path(dataset: str, folder: Path = WEIGHTS_DIR) -> Path:
    """The classifier's JSON card."""
    return folder / f"features-{dataset}.json"


def stats_path(dataset: str, folder: Path = WEIGHTS_DIR) -> Path:
    """The training split's reference statistics (safetensors)."""
    return folder / f"features-{dataset}-stats.safetensors"


def shipped_datasets(folder: Path = WEIGHTS_DIR) -> tuple[str, ...]:
    """Datasets that have a trained feature extractor, its card and its reference statistics."""
    return tuple(name for name in DATASETS if weights_path(name, folder).is_file()
                 and card_path(name, folder).is_file() and stats_path(name, folder).is_file())


def _require_shipped(dataset: str, folder: Path) -> None:
    if dataset not in shipped_datasets(folder):
        raise UserError(f"no feature extractor for dataset {dataset!r} in {str(folder)!r}; "
                        f"train one with 'python -m bench train-features --dataset {dataset}'")


@functools.lru_cache(maxsize=8)
def load_card(dataset: str, folder: Path = WEIGHTS_DIR) -> dict:
    """The JSON card of a trained feature extractor."""
    _require_shipped(dataset, folder)
    return json.loads(card_path(dataset, folder).read_text())


def load_feature_net(dataset: str, folder: Path = WEIGHTS_DIR) -> FeatureNet:
    """The trained classifier for `dataset`, in eval mode, on the CPU."""
    _require_shipped(dataset, folder)
    net = FeatureNet(NET_CONFIGS[dataset])
    net.load_state_dict(load_file(str(weights_path(dataset, folder))))
    return net.eval().requires_grad_(False)


@dataclass(frozen=True)
class ReferenceStats:
    """Feature statistics of real images: mean (D,), covariance (D, D) in float64, count, real feature rows."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    real_features: torch.Tensor

    def as_fidelity(self) -> dict[str, np.ndarray]:
        """The {'mu', 'sigma'} dict torch-fidelity's FID functions take."""
        return {"mu": self.mu, "sigma": self.sigma}


def reference_stats_from_features(features: torch.Tensor, seed: int = 0, keep: int = REAL_SUBSAMPLE) -> ReferenceStats:
    """Statistics of real feature rows (torch-fidelity's estimator: np.mean and np.cov, ddof=1)."""
    stats = fid_features_to_statistics(features.to(torch.float64).cpu())
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(features), generator=generator)[:keep]
    return ReferenceStats(stats["mu"], stats["sigma"], len(features), features[rows].to(torch.float32).cpu())


def save_reference_stats(stats: ReferenceStats, path: Path) -> None:
    """Write statistics as safetensors: mu, sigma (float64), count, real_features (float32)."""
    save_file({"mu": torch.from_numpy(stats.mu), "sigma": torch.from_numpy(stats.sigma),
               "count": torch.tensor([stats.count], dtype=torch.int64),
               "real_features": stats.real_features.contiguous()}, str(path))


@functools.lru_cache(maxsize=8)
def load_reference_stats_file(path: Path) -> ReferenceStats:
    """Reference statistics saved by `save_reference_stats`."""
    tensors = load_file(str(path))
    return ReferenceStats(tensors["mu"].numpy(), tensors["sigma"].numpy(), int(tensors["count"][0]),
                          tensors["real_features"])


def reference_stats(dataset: str, folder: Path = WEIGHTS_DIR) -> ReferenceStats:
    """The shipped training-split statistics of `dataset` in its classifier's feature space."""
    _require_shipped(dataset, folder)
    return load_reference_stats_file(stats_path(dataset, folder))


def fid_from_stats(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    """torch-fidelity's Fréchet distance between two {'mu', 'sigma'} dicts."""
    return float(fid_statistics_to_metric(stats_1, stats_2, verbose=False)["frechet_inception_distance"])


def fid_from_features(features: torch.Tensor, reference: ReferenceStats) -> float:
    """torch-fidelity's FID of feature rows (N, D) against reference statistics."""
    return fid_from_stats(fid_features_to_statistics(features.to(torch.float64).cpu()), reference.as_fidelity())


class ClassifierFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity wrapper of a FeatureNet; registered as 'sampler-bench-NAME' for each dataset."""

    def __init__(self, name: str, features_list, feature_extractor_weights_dir: str | None = None, **kwargs):
        super().__init__(name, features_list)
        self.dataset = name.removeprefix(EXTRACTOR_PREFIX)
        folder = Path(feature_extractor_weights_dir) if feature_extractor_weights_dir else WEIGHTS_DIR
        self.net = load_feature_net(self.dataset, folder)

    @classmethod
    def from_net(cls, dataset: str, net: FeatureNet) -> ClassifierFeatureExtractor:
        """Wrap an in-memory network (during training, before its weights are saved)."""
        extractor = cls.__new__(cls)
        FeatureExtractorBase.__init__(extractor, extractor_name(dataset), ["features"])
        extractor.dataset = dataset
        extractor.net = net.eval().requires_grad_(False)
        return extractor

    @staticmethod
    def get_provided_features_list():
        return "features", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"fid": "features", "kid": "features", "prc": "features", "isc": "logits"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)

    def forward(self, x):
        """uint8 images (B, C, H, W) -> a tuple of the requested features, float32."""
        if x.dtype != torch.uint8:
            raise TypeError(f"expected uint8 images as torch-fidelity passes them, got {x.dtype}")
        features = self.net.features(from_uint8(x))
        outputs = {"features": features, "logits": self.net.head(F.relu(features))}
        return tuple(outputs[name] for name in self.features_list)


def extractor_name(dataset: str) -> str:
    """The torch-fidelity registry name of a dataset's classifier extractor."""
    return EXTRACTOR_PREFIX + dataset


def register_with_fidelity() -> None:
    """Register one classifier extractor per known dataset with torch-fidelity (idempotent)."""
    for dataset in NET_CONFIGS:
        if extractor_name(dataset) not in FEATURE_EXTRACTORS_REGISTRY:
            torch_fidelity.register_feature_extractor(extractor_name(dataset), ClassifierFeatureExtractor)


register_with_fidelity()


def create_classifier_extractor(dataset: str, device: str = "cpu") -> FeatureExtractorBase:
    """The shipped classifier of `dataset` through torch-fidelity's own factory, on `device`."""
    _require_shipped(dataset, WEIGHTS_DIR)
    extractor = torch_fidelity.utils.create_feature_extractor(extractor_name(dataset), ["features"], cuda=False,
                                                               verbose=False)
    return extractor.to(device)


def create_inception_extractor(weights: str | Path, device: str = "cpu") -> FeatureExtractorBase:
    """torch-fidelity's Inception-v3 (2048-d pool features) from a local weights file."""
    if not Path(weights).is_file():
        raise UserError(f"Inception-v3 weights file {str(weights)!r} not found. On a machine with internet, "
                        f"download {INCEPTION_URL} and pass its local path with --fid-weights")
    from models.weights import load_state

    # torch-fidelity unpickles its weights file with weights_only=False, which runs any code a pickle holds.
    # So the user's file is read here the safe way (safetensors, or torch.load(weights_only=True), which
    # refuses code), and torch-fidelity is handed a copy holding nothing but those tensors.
    state = load_state(weights)
    with tempfile.TemporaryDirectory(prefix="sampler-bench-inception-") as folder:
        plain = Path(folder) / "inception-v3.pt"
        torch.save(state, plain)
        extractor = torch_fidelity.utils.create_feature_extractor(
            INCEPTION_NAME, ["2048"], cuda=False, verbose=False, feature_extractor_weights_path=str(plain))
    return extractor.to(device)


@torch.no_grad()
def extract_features(extractor: FeatureExtractorBase, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Features (N, D) float64 on the CPU of float images in [-1, 1]; grayscale is repeated to 3
    channels for Inception, which only takes RGB."""
    device = next(extractor.parameters()).device
    rows = []
    for batch in images.split(batch_size):
        pixels = to_uint8(batch)
        if isinstance(extractor, FeatureExtractorInceptionV3) and pixels.shape[1] == 1:
            pixels = pixels.repeat(1, 3, 1, 1)
        rows.append(extractor(pixels.to(device))[0].to("cpu", torch.float64))
    return torch.cat(rows) if rows else torch.zeros(0, 0, dtype=torch.float64)


def cache_dir() -> Path:
    """Where statistics computed on first use live: $SAMPLER_BENCH_CACHE or ~/.cache/sampler-bench."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "sampler-bench"))


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def inception_reference_stats(dataset: str, weights: str | Path, device: str = "cpu",
                              data_dir: str | None = None) -> ReferenceStats:
    """Inception statistics of `dataset`'s training split: computed from the local dataset on first use,
    then read from the cache dir (file named after the dataset and the weights file's hash)."""
    extractor = create_inception_extractor(weights, device)
    path = cache_dir() / f"inception-{dataset}-{_file_digest(Path(weights))}-stats.safetensors"
    if path.is_file():
        return load_reference_stats_file(path)
    images, _ = load_dataset(dataset, "train", data_dir)
    stats = reference_stats_from_features(extract_features(extractor, images, batch_size=100))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_reference_stats(stats, path)
    return stats


def floor_sizes(total: int, sizes=FLOOR_SIZES) -> list[int]:
    """Sample sizes at which the floor is measured directly: the standard sizes the test split can
    supply without repeats, plus a quarter, a half and all of the test split."""
    return sorted({size for size in sizes if size <= total} | {total // 4, total // 2, total})


def compute_floors(test_features: torch.Tensor, reference: ReferenceStats, sizes=FLOOR_SIZES,
                   repeats: int = FLOOR_REPEATS, seed: int = 0) -> dict:
    """FID of n held-out real images against the training statistics.

    Measured as the mean over `repeats` random subsets (without replacement) of the test split for
    every n it can supply; for larger n, extrapolated (clipped at 0) from a least-squares fit
    FID(n) = a + b/n over the measured n >= FIT_MIN_SIZE, or the two largest measured n (FID's bias is
    linear in 1/n: Chong & Forsyth 2020, "Effectively Unbiased FID"). Resampling with replacement is
    not used: duplicates inflate FID.
    """
    generator = torch.Generator().manual_seed(seed)
    total = len(test_features)
    measured = {}
    for size in floor_sizes(total, sizes):
        values = [fid_from_features(test_features[torch.randperm(total, generator=generator)[:size]], reference)
                  for _ in range(repeats if size < total else 1)]
        measured[size] = {"fid": float(np.mean(values)), "std": float(np.std(values)), "repeats": len(values),
                          "method": "subset"}
    fit_sizes = [size for size in measured if size >= FIT_MIN_SIZE]
    fit_sizes = fit_sizes if len(fit_sizes) >= 2 else sorted(measured)[-2:]
    slope, intercept = np.polyfit([1 / size for size in fit_sizes], [measured[s]["fid"] for s in fit_sizes], 1)
    table = dict(measured)
    for size in sizes:
        if size not in table:
            table[size] = {"fid": max(0.0, float(intercept + slope / size)), "method": "extrapolated a + b/n"}
    return {"sizes": {str(size): table[size] for size in sorted(table)},
            "fit": {"intercept": float(intercept), "slope": float(slope), "sizes": fit_sizes}}


def interpolate_floor(floors: dict, n: int) -> float:
    """Floor at n samples: piecewise linear in 1/n between measured sizes, the a + b/n fit outside them."""
    measured = sorted(int(size) for size, row in floors["sizes"].items() if row["method"] == "subset")
    if measured[0] <= n <= measured[-1]:
        inverse = np.array([1 / size for size in reversed(measured)])
        values = np.array([floors["sizes"][str(size)]["fid"] for size in reversed(measured)])
        return float(np.interp(1 / n, inverse, values))
    return max(0.0, floors["fit"]["intercept"] + floors["fit"]["slope"] / n)


def floor_fid(dataset: str | None, n: int) -> float | None:
    """FID a perfect sampler scores with n samples (held-out real images vs. training statistics),
    or None when `dataset` has no shipped feature extractor or floors."""
    if dataset not in shipped_datasets() or n < 2:
        return None
    floors = load_card(dataset).get("floors")
    return interpolate_floor(floors, n) if floors else None


def _batches(count: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(count, generator=generator)
    return order.split(batch_size)


@torch.no_grad()
def accuracy(net: FeatureNet, images: torch.Tensor, labels: torch.Tensor, device: str = "cpu") -> float:
    """Fraction of correctly classified images (inputs quantized to uint8 like FID's)."""
    correct = 0
    for batch, target in zip(images.split(1000), labels.split(1000), strict=True):
        logits = net(from_uint8(to_uint8(batch)).to(device))
        correct += int((logits.argmax(1).cpu() == target).sum())
    return correct / len(labels)


def train_feature_net(config: TrainConfig, images: torch.Tensor, labels: torch.Tensor) -> FeatureNet:
    """Train a FeatureNet with Adam and cross-entropy; initialisation and batch order come from config.seed."""
    torch.manual_seed(config.seed)
    net = FeatureNet(NET_CONFIGS[config.dataset]).to(config.device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    steps = config.epochs * -(-len(labels) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.learning_rate, total_steps=steps)
    generator = torch.Generator().manual_seed(config.seed)
    net.train()
    for _ in range(config.epochs):
        for rows in _batches(len(labels), config.batch_size, generator):
            loss = F.cross_entropy(net(images[rows].to(config.device)), labels[rows].to(config.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return net.eval().requires_grad_(False).cpu()


def _command(args: argparse.Namespace) -> str:
    parts = ["python -m bench train-features", f"--dataset {args.dataset}", f"--epochs {args.epochs}",
             f"--seed {args.seed}", f"--device {args.device}"]
    return " ".join(parts)


def run_train_features(args: argparse.Namespace) -> int:
    """Train, evaluate and save a dataset's feature extractor, its reference statistics and floors."""
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    args.epochs = args.epochs or DEFAULT_EPOCHS[args.dataset]
    config = TrainConfig(args.dataset, args.epochs, seed=args.seed, device=args.device)
    out = Path(args.out)
    existing = [str(p) for p in (weights_path(args.dataset, out), stats_path(args.dataset, out),
                                 card_path(args.dataset, out)) if p.exists()]
    if existing and not args.force:
        raise UserError(f"{', '.join(existing)} already exist (shipped or an earlier run); pass --out FOLDER to "
                        "write elsewhere, or --force to replace them")
    train_images, train_labels = load_dataset(args.dataset, "train", args.data_dir)
    test_images, test_labels = load_dataset(args.dataset, "test", args.data_dir)
    start = time.perf_counter()
    net = train_feature_net(config, from_uint8(to_uint8(train_images)), train_labels)
    train_seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    save_file(net.state_dict(), str(weights_path(args.dataset, out)))
    extractor = ClassifierFeatureExtractor.from_net(args.dataset, net)
    train_features = extract_features(extractor, train_images)
    test_features = extract_features(extractor, test_images)
    stats = reference_stats_from_features(train_features, seed=args.seed)
    save_reference_stats(stats, stats_path(args.dataset, out))
    card = {
        "dataset": args.dataset, "architecture": "FeatureNet", "config": asdict(NET_CONFIGS[args.dataset]),
        "feature_dim": NET_CONFIGS[args.dataset].feature_dim, "feature_layer": "embed (penultimate, before ReLU)",
        "train": asdict(config), "train_images": len(train_labels), "test_images": len(test_labels),
        "train_accuracy": accuracy(net, train_images, train_labels),
        "test_accuracy": accuracy(net, test_images, test_labels),
        "train_seconds": round(train_seconds, 1), "device": str(args.device),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "torch_fidelity": torch_fidelity.__version__, "command": _command(args),
        "stats": {"file": stats_path(args.dataset, out).name, "split": "train", "count": stats.count,
                  "real_features_kept": len(stats.real_features)},
        "floors": compute_floors(test_features, stats, seed=args.seed),
    }
    card_path(args.dataset, out).write_text(json.dumps(card, indent=2) + "\n")
    load_card.cache_clear()
    load_reference_stats_file.cache_clear()
    print(f"{args.dataset}: test accuracy {card['test_accuracy']:.4f}, trained in {train_seconds:.0f} s; "
          f"wrote {weights_path(args.dataset, out)}, {card_path(args.dataset, out)}, {stats_path(args.dataset, out)}")
    return 0


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Add `train-features` to the CLI's subparsers."""
    parser = subparsers.add_parser("train-features", help="train a dataset's FID feature extractor "
                                   "and write its weights, card and reference statistics")
    parser.add_argument("--dataset", required=True, choices=sorted(NET_CONFIGS))
    parser.add_argument("--epochs", type=int, default=None, help="default: digits 40, fashion-mnist 5, cifar10 20")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    parser.add_argument("--out", default=str(WEIGHTS_DIR), help="output folder (default: models/weights)")
    parser.add_argument("--num-threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--force", action="store_true", help="replace existing extractor files (never done without)")
    parser.set_defaults(func=run_train_features)
    return parser


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m models.features")
    _sub = _parser.add_subparsers(required=True)
    add_subparser(_sub)
    _args = _parser.parse_args()
    raise SystemExit(_args.func(_args))
