"""Helpers shared by tests."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.sampling import batch_noise, sample
from models.data import FASHION_MNIST_ENV

# Debian packages that hold data sets some tests read. CI installs them (.ci/run sets CI=true);
# a fresh machine with only Python skips those tests with the package named.
DATASET_PACKAGES = {"fashion-mnist": ("dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist",
                                      "train-images-idx3-ubyte.gz")}


def in_ci() -> bool:
    """True under .ci/run (and most CI services), where every data set package is installed."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


DATASET_ENV = {"fashion-mnist": FASHION_MNIST_ENV}  # the folder the loader itself looks in first


def dataset_installed(dataset: str) -> bool:
    """Whether `dataset`'s files are where the loader looks: the folder its environment variable names, or
    where its Debian package puts them."""
    _, folder, probe = DATASET_PACKAGES[dataset]
    given = os.environ.get(DATASET_ENV[dataset])
    return any(Path(f, probe).is_file() for f in (given, folder) if f)


def needs_dataset(dataset: str):
    """Skip unless `dataset`'s files are found (its Debian package, or the folder its environment variable
    names); under CI never skip, so a missing package fails."""
    package, folder, _ = DATASET_PACKAGES[dataset]
    return pytest.mark.skipif(not in_ci() and not dataset_installed(dataset),
                              reason=f"needs Debian's {package} ({folder}): apt-get install {package}; CI installs it")


def run_sampler(spec, params, denoiser, steps, images, seed=0, dtype=torch.float32, noise=None, callback=None,
                guidance=None, classes=None, stats=None):
    """Run one registered sampler through the sampling seam on the given image indices; returns x_0 and the plan.
    An adaptive sampler's calls per image go to stats["image_nfe"] when `stats` is a dict."""
    timesteps = spec.timesteps(denoiser.schedule, steps, params)
    noise = noise or batch_noise(seed, torch.as_tensor(images), denoiser.image_shape, dtype=dtype)
    x = sample(spec, params, denoiser, timesteps, images, noise=noise, callback=callback, guidance=guidance,
               classes=classes, stats=stats)
    return x, timesteps


def all_configurations(registry):
    """(label, spec, params) for every registered sampler and preset: new plugins are tested too."""
    out = [(name, spec, spec.resolve_params()) for name, spec in registry.samplers.items()]
    out += [(p.name, registry.samplers[p.sampler], registry.samplers[p.sampler].resolve_params(p.params))
            for p in registry.presets.values()]
    return out


_PATH_ORACLES: dict = {}


def oracle_for(spec, oracle):
    """The oracle itself, or, for a sampler restricted to continuous paths (flow-heun), the same mixture on the
    first path it runs on: conformance tests run every registered sampler where it can run."""
    if spec.paths is None or "vp-discrete" in spec.paths:
        return oracle
    kind = spec.paths[0]
    if kind not in _PATH_ORACLES:
        from bench.paths import PathConfig, make_path
        from models.oracle import OracleDenoiser
        _PATH_ORACLES[kind] = OracleDenoiser(oracle.mixture, make_path(PathConfig(kind)))
    return _PATH_ORACLES[kind]


def discrete_oracle():
    """The Gaussian-mixture oracle as a discrete-time model (trained integer timesteps only, as `round_time` gives),
    recording what it is evaluated at: `seen`, the first row's timestep of each call, and `times`, each call's
    whole (B,) timestep tensor (an adaptive solver evaluates every image at its own time)."""
    from models.oracle import OracleDenoiser, make_mixture

    class DiscreteOracle(OracleDenoiser):
        continuous_time = False

        def __init__(self):
            super().__init__(make_mixture(8))
            self.seen, self.times = [], []

        def predict_eps(self, x_t, t, cond=None):
            assert not t.is_floating_point()
            self.seen.append(int(t[0]))
            self.times.append(t.clone())
            return super().predict_eps(x_t, t, cond)

    return DiscreteOracle()



def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file holding a uint8 array (LeCun's format: two zero bytes, type 0x08, ndim, big-endian dims, data)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def dead_pid() -> int:
    """The pid of a process that has exited (a stale lock's holder)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
