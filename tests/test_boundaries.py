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


def test_step_counts_run_from_1_to_t_inclusive():
    from bench.selection import validate_steps

    assert validate_steps([1, 1000], 1000) == (1, 1000)
    for bad in (0, 1001, -1):
        with pytest.raises(UserError, match="between 1 and T=1000"):
            validate_steps([bad], 1000)


def test_guidance_scales_start_at_0_inclusive_and_need_a_conditional_model():
    from bench.selection import validate_guidance

    assert validate_guidance(["0", "0.0", "2"], 10) == (0.0, 2.0)
    assert validate_guidance((), 10) == (0.0,) and validate_guidance((), 0) is None
    for bad in ("-1e-9", "inf", "nan"):
        with pytest.raises(UserError, match="finite and >= 0"):
            validate_guidance([bad], 10)
    with pytest.raises(UserError, match="is not a number"):
        validate_guidance(["strong"], 10)
    with pytest.raises(UserError, match="needs a class-conditional model"):
        validate_guidance(["1"], 0)


def test_class_labels_run_from_0_to_k_minus_1():
    from bench.selection import validate_classes

    assert validate_classes(["0", 9, 9], 10) == (0, 9) and validate_classes((), 3) == (0, 1, 2)
    assert validate_classes((), 0) is None
    for bad in (-1, 10):
        with pytest.raises(UserError, match=f"label {bad} is outside 0..9"):
            validate_classes([bad], 10)
    with pytest.raises(UserError, match="'two' is not an integer label"):
        validate_classes(["two"], 10)
    with pytest.raises(UserError, match="needs a class-conditional model"):
        validate_classes([1], 0)


def test_a_schedule_needs_at_least_one_step_and_betas_strictly_inside_0_and_1():
    import torch

    from bench.schedule import NoiseSchedule, make_betas

    assert make_betas("linear", 1).tolist() == [1e-4]
    with pytest.raises(UserError, match="num_timesteps must be >= 1, got 0"):
        make_betas("linear", 0)
    with pytest.raises(UserError, match="unknown beta schedule 'sigmoid'"):
        make_betas("sigmoid", 10)
    assert NoiseSchedule(torch.tensor([1e-12, 1 - 1e-12], dtype=torch.float64)).num_timesteps == 2
    for bad in ([], [0.0, 0.5], [0.5, 1.0], [0.5, float("nan")]):
        with pytest.raises(UserError, match="non-empty sequence of values in \\(0, 1\\)"):
            NoiseSchedule(torch.tensor(bad, dtype=torch.float64))


def test_respace_keeps_0_and_t_minus_1_and_refuses_repeats_and_anything_outside():
    from bench.schedule import NoiseSchedule

    schedule = NoiseSchedule.linear(10)
    respaced = schedule.respace([9, 0])
    assert respaced.alpha_bar.tolist() == pytest.approx([float(schedule.alpha_bar[0]), float(schedule.alpha_bar[9])])
    for bad in ([], [3, 3], [-1, 5], [0, 10]):
        with pytest.raises(UserError, match="distinct timesteps in 0..9"):
            schedule.respace(bad)
