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
