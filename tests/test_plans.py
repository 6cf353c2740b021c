import pytest

from bench.errors import UserError
from bench.plans import PLANS, make_plan, parse_sections, sections_plan, trailing_plan, uniform_plan

T = 1000
STEP_PLANS = [name for name in PLANS if name != "full"]


@pytest.mark.parametrize("name", STEP_PLANS)
def test_every_step_count_gives_exactly_that_many_distinct_decreasing_timesteps(name):
    for n in range(1, T + 1):
        plan = make_plan(name, T, n)
        assert len(plan) == n, (name, n)
        assert all(a > b for a, b in zip(plan, plan[1:])), (name, n)
        assert 0 <= plan[-1] and plan[0] <= T - 1


def test_full_plan_is_every_timestep_descending():
    assert make_plan("full", T, None) == list(range(T - 1, -1, -1))


def test_uniform_plan_spans_first_and_last_timestep():
    plan = uniform_plan(T, 30)
    assert plan[0] == T - 1 and plan[-1] == 0 and len(plan) == 30


def test_trailing_plan_starts_at_the_last_timestep_and_leading_does_not():
    assert trailing_plan(T, 10)[0] == T - 1
    assert make_plan("leading", T, 10) == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]


def test_sections_plan_puts_the_requested_count_in_each_section():
    plan = sections_plan(T, "10,15,20")
    assert len(plan) == 45 and len(set(plan)) == 45
    assert sum(t < 334 for t in plan) == 10
    assert sum(334 <= t < 667 for t in plan) == 15
    assert sum(t >= 667 for t in plan) == 20


@pytest.mark.parametrize("bad", [0, -3, T + 1, 2.5, "10", True])
def test_bad_step_counts_are_rejected(bad):
    with pytest.raises(UserError):
        make_plan("uniform", T, bad)


@pytest.mark.parametrize("bad", ["", "a,b", "10,0", "5,-1"])
def test_bad_sections_are_rejected(bad):
    with pytest.raises(UserError):
        parse_sections(bad)


def test_a_section_cannot_ask_for_more_steps_than_it_has():
    with pytest.raises(UserError, match="section 1"):
        sections_plan(10, "1,9")
