"""Input boundaries, table-driven: every bound accepts its edge values and refuses one step past them.

Rounds 7-9 of the hand mutation runs (docs/mutation-run-9.md) found that most surviving bugs were validation
boundaries that no test had given input at (`<` for `<=`, a dropped check). These tables pin the edges.
"""

from __future__ import annotations

import pytest

from bench.config import COUNT_BOUNDS, RunConfig
from bench.errors import UserError


@pytest.mark.parametrize("name", sorted(COUNT_BOUNDS))
def test_every_run_count_accepts_its_edges_and_refuses_one_past_them_and_non_integers(name):
    low, high = COUNT_BOUNDS[name]
    for value in (low, high):
        assert getattr(RunConfig(**{name: value}), name) == value
    for value in (low - 1, high + 1, True, float(low), str(low)):
        with pytest.raises(UserError, match=f"--{name.replace('_', '-')} must be") as info:
            RunConfig(**{name: value})
        assert repr(value) in str(info.value)


@pytest.mark.parametrize("name", ["num_samples", "batch_size", "threads"])
def test_the_counts_with_a_device_default_may_be_left_unset(name):
    assert getattr(RunConfig(**{name: None}), name) is None


def test_the_other_counts_may_not_be_left_unset():
    for name in sorted(set(COUNT_BOUNDS) - {"num_samples", "batch_size", "threads"}):
        with pytest.raises(UserError, match=f"--{name.replace('_', '-')} must be"):
            RunConfig(**{name: None})
