import pytest

from bench.errors import UserError
from bench.plans import (
    PLANS,
    SCHEDULE_PLANS,
    distinct_timesteps,
    karras_times,
    logsnr_times,
    make_plan,
    parse_sections,
    sections_plan,
    trailing_plan,
    uniform_plan,
)
from bench.registry import Param, SamplerSpec
from bench.schedule import NoiseSchedule, ScheduleConfig

T = 1000
# ComfyUI's sgm_uniform, simple and beta never visit t = 0 (their last model time is about T/N): that is what
# makes them different schedulers, so they are kept as ComfyUI defines them.
NOT_ENDING_AT_ZERO = ("sgm_uniform", "simple", "beta")
STEP_PLANS = [name for name in PLANS if name not in ("full", "flow-sigmas")]  # flow-sigmas: flow paths only
SCHEDULE = NoiseSchedule.linear(T)


@pytest.mark.parametrize("name", STEP_PLANS)
def test_every_step_count_gives_exactly_that_many_distinct_decreasing_timesteps(name):
    for n in range(1, T + 1):
        plan = make_plan(name, SCHEDULE, n)
        assert len(plan) == n, (name, n)
        assert all(isinstance(t, int) for t in plan), (name, n)
        assert all(a > b for a, b in zip(plan, plan[1:])), (name, n)
        assert 0 <= plan[-1] and plan[0] <= T - 1
        if name not in ("leading", "trailing", *NOT_ENDING_AT_ZERO) and n > 1:
            assert plan[0] == T - 1 and plan[-1] == 0, (name, n)


@pytest.mark.parametrize("kind", ["cosine", "scaled-linear"])
@pytest.mark.parametrize("name", SCHEDULE_PLANS)
def test_noise_level_plans_stay_distinct_on_other_schedules_and_a_short_T(name, kind):
    schedule = NoiseSchedule.from_config(ScheduleConfig(kind, 50, 0.00085, 0.012))
    assert make_plan(name, schedule, 1) == [49]
    for n in range(2, 51):
        plan = make_plan(name, schedule, n)
        assert len(set(plan)) == n and plan == sorted(plan, reverse=True) and plan[0] == 49 and plan[-1] == 0


def test_logsnr_plan_is_evenly_spaced_in_lambda_before_rounding():
    times = logsnr_times(SCHEDULE, 12)
    lams = [SCHEDULE.lambda_at(t) for t in times]
    gaps = [b - a for a, b in zip(lams, lams[1:])]
    assert max(gaps) - min(gaps) < 1e-9 and times[0] == T - 1 and times[-1] == 0


def test_karras_plan_follows_eq_5_in_sigma_before_rounding():
    times = karras_times(SCHEDULE, 8, rho=7.0)
    lo, hi = SCHEDULE.sigma_at(0) ** (1 / 7), SCHEDULE.sigma_at(T - 1) ** (1 / 7)
    for i, t in enumerate(times):
        assert SCHEDULE.sigma_at(t) == pytest.approx((hi + i / 7 * (lo - hi)) ** 7, rel=1e-9)


def test_rounding_only_moves_steps_that_collide():
    assert distinct_timesteps([999.0, 500.4, 10.6, 0.0], 1000) == [999, 500, 11, 0]
    assert distinct_timesteps([999.0, 1.2, 0.9, 0.3, 0.0], 1000) == [999, 3, 2, 1, 0]


def test_rho_changes_the_karras_plan_and_never_reaches_the_sampler():
    spec = SamplerSpec("s", lambda *a, **k: None, "", {"plan": Param("karras", "plan"), "rho": Param(7.0, "rho")},
                       plan="karras")
    assert spec.timesteps(SCHEDULE, 10, {"plan": "karras", "rho": 7.0}) != \
        spec.timesteps(SCHEDULE, 10, {"plan": "karras", "rho": 3.0})
    assert "rho" not in spec.sampler_kwargs(spec.resolve_params({"rho": 3}))


@pytest.mark.parametrize("name", SCHEDULE_PLANS)
def test_noise_level_plans_given_only_T_say_they_need_the_schedule(name):
    with pytest.raises(UserError, match="noise schedule"):
        make_plan(name, T, 10)


def test_time_uniform_and_discrete_are_the_uniform_plan():
    for n in (1, 7, 50, 999):
        assert make_plan("time-uniform", T, n) == make_plan("discrete", T, n) == uniform_plan(T, n)


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
