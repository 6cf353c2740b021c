"""Shared fixtures: the registry, the exact oracle, and helpers to run samplers on it."""

from __future__ import annotations

import pytest
import torch

from bench.plugins import load_registry
from models.oracle import OracleDenoiser, make_mixture

# Tests use small tensors: one thread avoids OpenMP spin-waits that make them 10-100x slower
# whenever anything else is using the cores.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def registry():
    return load_registry()


@pytest.fixture(scope="session")
def oracle():
    return OracleDenoiser(make_mixture(8))


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A fresh working folder that is also the cache home (where a bug log would go)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SAMPLER_BENCH_PLUGINS", raising=False)
    return tmp_path
