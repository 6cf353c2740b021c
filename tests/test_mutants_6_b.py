"""Mutation run 6, part b (plumbing, reporting and loading): tests for the mutants the fast suite let through.

Each test pins one documented property; docs: /work/tmp/r6/b/report.md (Y06, Y07, Y08, Y13).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from bench import config as bench_config
from bench import measure
from models import features


class _LinearInner:
    """Stands in for a Denoiser: a linear layer, so CPU autocast makes it compute in bfloat16."""

    def __init__(self):
        torch.manual_seed(0)
        self.linear = nn.Linear(16, 16)
        self.schedule = None
        self.info = None

    def __call__(self, x_t, t, cond=None):
        return self.linear(x_t.flatten(1)).reshape(x_t.shape)


def test_an_autocast_network_call_returns_eps_in_the_dtype_of_x():
    inner = _LinearInner()
    counting = measure.CountingDenoiser(inner, autocast_dtype=torch.bfloat16)
    x = torch.randn(3, 1, 4, 4)
    eps = counting(x, torch.tensor(5))
    assert eps.dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(eps, inner(x, None), atol=0.1)
    assert counting.calls == 1 and counting.rows == 3


def test_the_cpu_peak_memory_is_vmhwm_in_mebibytes(monkeypatch):
    class FakePath:
        def __init__(self, name):
            self.name = str(name)

        def read_text(self):
            if self.name == "/proc/self/status":
                return "Name:\tpython\nVmPeak:\t 999999 kB\nVmHWM:\t    3072 kB\nVmRSS:\t 1000 kB\n"
            raise OSError("not here")

    monkeypatch.setattr(measure, "Path", FakePath)
    assert measure.PeakMemory(torch.device("cpu")).megabytes() == 3.0


def _fake_git(untracked: str, changed: str = ""):
    def run(args, **kwargs):
        if args[:2] == ["git", "rev-parse"]:
            return SimpleNamespace(stdout="0123abcd\n")
        if args[:2] == ["git", "status"]:
            hidden = "--untracked-files=no" in args
            return SimpleNamespace(stdout=changed + ("" if hidden else untracked))
        raise AssertionError(args)
    return run


def test_only_untracked_files_do_not_mark_the_commit_dirty(monkeypatch):
    monkeypatch.setattr(bench_config.subprocess, "run", _fake_git("?? results/scratch.txt\n"))
    assert bench_config.git_commit() == "0123abcd"
    monkeypatch.setattr(bench_config.subprocess, "run", _fake_git("?? results/scratch.txt\n", " M bench/cli.py\n"))
    assert bench_config.git_commit() == "0123abcd+dirty"


FLOORS_OFF_THE_FIT = {
    "sizes": {"100": {"fid": 12.0, "method": "subset"}, "400": {"fid": 6.0, "method": "subset"},
              "1000": {"fid": 4.7, "method": "extrapolated a + b/n"}},
    "fit": {"intercept": 4.0, "slope": 700.0, "sizes": [100, 400]},  # 11.0 at n = 100, 5.75 at n = 400
}


@pytest.mark.parametrize("n,measured", [(100, 12.0), (400, 6.0)])
def test_the_floor_at_the_smallest_and_largest_measured_size_is_the_measurement_not_the_fit(n, measured):
    assert features.interpolate_floor(FLOORS_OFF_THE_FIT, n) == pytest.approx(measured)
    assert features.interpolate_floor(FLOORS_OFF_THE_FIT, 50) == pytest.approx(4.0 + 700.0 / 50)
