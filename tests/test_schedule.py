import math

import pytest
import torch

from bench.schedule import NoiseSchedule, ScheduleConfig


def test_default_schedule_is_linear_1e4_to_002_over_1000_steps():
    s = NoiseSchedule.linear()
    assert s.num_timesteps == 1000 and s.betas.dtype == torch.float64
    assert abs(float(s.betas[0]) - 1e-4) < 1e-12 and abs(float(s.betas[-1]) - 0.02) < 1e-12


def test_alpha_bar_before_the_first_timestep_is_one_not_the_last_element():
    s = NoiseSchedule.linear()
    assert float(s.alpha_bar_prev()[0]) == 1.0
    assert s.alpha_bar_at(-1) == 1.0
    assert float(s.posterior_variance()[0]) == 0.0


def test_respacing_keeps_alpha_bar_on_the_kept_timesteps():
    s = NoiseSchedule.linear()
    kept = [0, 10, 500, 999]
    r = s.respace(kept)
    assert torch.allclose(r.alpha_bar, s.alpha_bar[kept], rtol=1e-12)


def test_respacing_onto_every_timestep_is_the_identity():
    s = NoiseSchedule.linear()
    assert torch.allclose(s.respace(range(1000)).betas, s.betas, rtol=1e-10)


def test_cosine_and_scaled_linear_schedules_are_valid():
    for kind in ("cosine", "scaled-linear"):
        s = NoiseSchedule.from_config(ScheduleConfig(kind, 1000, 0.00085, 0.012))
        assert bool((torch.diff(s.alpha_bar) < 0).all()) and 0 < float(s.alpha_bar[-1]) < 0.1


def test_transitions_end_on_clean_data():
    s = NoiseSchedule.linear()
    steps = s.transitions([999, 500, 0])
    assert [t for t, _, _ in steps] == [999, 500, 0]
    assert steps[0][2] == float(s.alpha_bar[500]) and steps[-1][2] == 1.0


def test_alpha_bar_at_is_exact_on_integers_and_interpolates_log_alpha_bar_between():
    s = NoiseSchedule.linear()
    assert s.alpha_bar_at(17) == float(s.alpha_bar[17]) and s.alpha_bar_at(-0.5) == 1.0
    expected = math.exp(0.25 * math.log(float(s.alpha_bar[17])) + 0.75 * math.log(float(s.alpha_bar[18])))
    assert abs(s.alpha_bar_at(17.75) - expected) < 1e-15


def test_tensor_alpha_bar_matches_the_scalar_one():
    s = NoiseSchedule.linear()
    times = [-1.0, 0.0, 0.3, 17.75, 500.0, 998.5, 999.0]
    values = s.alpha_bar_of(torch.tensor(times, dtype=torch.float64))
    assert values.tolist() == pytest.approx([s.alpha_bar_at(t) for t in times], rel=1e-15)
    assert s.alpha_bar_of(torch.tensor([-1, 0, 999])).tolist() == [1.0, s.alpha_bar_at(0), s.alpha_bar_at(999)]


def test_sigma_and_lambda_are_the_edm_and_dpm_solver_parametrisations():
    s = NoiseSchedule.linear()
    a = s.alpha_bar_at(321.5)
    assert s.sigma_at(321.5) == pytest.approx(math.sqrt((1 - a) / a), rel=1e-14)
    assert s.lambda_at(321.5) == pytest.approx(-math.log(s.sigma_at(321.5)), rel=1e-12)
    assert s.sigma_at(-1) == 0.0 and s.lambda_at(-1) == math.inf


def test_time_from_sigma_and_lambda_invert_the_interpolation_to_round_off():
    s = NoiseSchedule.linear()
    for t in [0.0, 0.37, 1.0, 12.5, 250.25, 998.999, 999.0]:
        assert abs(s.t_from_sigma(s.sigma_at(t)) - t) < 1e-9
        assert abs(s.t_from_lambda(s.lambda_at(t)) - t) < 1e-9
    assert s.t_from_sigma(0.0) == -1.0 and s.t_from_lambda(math.inf) == -1.0


def test_noise_levels_outside_the_schedule_are_refused():
    s = NoiseSchedule.linear()
    with pytest.raises(ValueError):
        s.t_from_sigma(2 * s.sigma_at(999))
    with pytest.raises(ValueError):
        s.alpha_bar_at(999.5)


def test_transitions_keep_real_times_real():
    s = NoiseSchedule.linear()
    steps = s.transitions([999.0, 10.5, 0])
    assert [t for t, _, _ in steps] == [999, 10.5, 0] and isinstance(steps[0][0], int)
    assert steps[0][2] == s.alpha_bar_at(10.5)


@pytest.mark.parametrize("kind", ["linear", "cosine", "scaled-linear"])
def test_alpha_bar_prev_and_posterior_variance_at_every_timestep(kind):
    schedule = NoiseSchedule.from_config(ScheduleConfig(kind, 50))
    a, beta = schedule.alpha_bar.tolist(), schedule.betas.tolist()
    prev = [1.0] + a[:-1]
    assert schedule.alpha_bar_prev().tolist() == pytest.approx(prev, rel=1e-12)
    expected = [beta[t] * (1 - prev[t]) / (1 - a[t]) for t in range(50)]
    assert schedule.posterior_variance().tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)
