"""Properties a second hand mutation run found unchecked: each bug planted against them survived the rest of the
suite (docs/mutation-run-2026-12.md lists the mutants). One property per test; every test is fast."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch

from bench.config import RunConfig
from bench.denoiser import Denoiser, DenoiserInfo, x0_from_eps
from bench.errors import UserError
from bench.folder import feature_file
from bench.report import build_report, pareto_front, read_results_csv
from bench.sampling import batch_noise, sample
from bench.schedule import NoiseSchedule
from bench.selection import validate_classes, validate_steps
from bench.timing import MachineState
from tests.helpers import run_sampler

# ------------------------------------------------------------ schedule: the forward process used by training


def test_add_noise_is_the_forward_process_that_x0_from_eps_inverts():
    """x_t = sqrt(a) x_0 + sqrt(1 - a) eps: the training inputs are the noise levels the samplers assume."""
    schedule = NoiseSchedule.linear(1000)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 1, 4, 4, dtype=torch.float64, generator=generator)
    eps = torch.randn(6, 1, 4, 4, dtype=torch.float64, generator=generator)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    x_t = schedule.add_noise(x0, t, eps)
    a = schedule.alpha_bar[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * eps, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x0_from_eps(x_t, eps, a), x0, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------ results.csv: zero is not negative


def test_a_zero_in_a_column_that_cannot_be_negative_keeps_the_row_ok(tmp_path):
    """The FID interval is floored at 0, so the tool itself writes fid_ci_low = 0; such a row stays ok."""
    pd.DataFrame([{"sampler": "ddim", "steps": 5, "status": "ok", "nfe": 5, "wall_s": 1.0, "fid": 0.5,
                   "fid_ci_low": 0.0, "fid_ci_high": 1.0, "kid_std": 0.0, "mean_err": 0.0}]
                 ).to_csv(tmp_path / "results.csv", index=False)
    row = read_results_csv(tmp_path / "results.csv").iloc[0]
    assert row["status"] == "ok"


# ------------------------------------------------------------ report: the Pareto frontier


def test_a_row_that_only_ties_a_cheaper_rows_quality_is_not_on_the_pareto_front():
    """A slower row with the same quality is dominated (the cheaper one is as good and faster)."""
    rows = pd.DataFrame([
        {"sampler": "cheap", "wall_s": 1.0, "oracle_fd": 0.2},
        {"sampler": "dear-tie", "wall_s": 2.0, "oracle_fd": 0.2},
        {"sampler": "dearer-better", "wall_s": 3.0, "oracle_fd": 0.1},
    ])
    assert list(pareto_front(rows, "wall_s", "oracle_fd")["sampler"]) == ["cheap", "dearer-better"]


# ------------------------------------------------------------ report.md: a pipe in a name


def test_a_pipe_in_a_sampler_name_is_escaped_in_the_markdown_results_table(tmp_path):
    """A '|' in a cell would split it and shift every later column of that row."""
    out = tmp_path / "run"
    out.mkdir()
    pd.DataFrame([{"sampler": "a|b", "steps": 4, "nfe": 4, "wall_s": 1.0, "status": "ok"}]
                 ).to_csv(out / "results.csv", index=False)
    build_report(out)
    lines = (out / "report.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| sampler |"))

    def cells(line: str) -> list[str]:
        return re.split(r"(?<!\\)\|", line)

    row = lines[header + 2]
    assert row.startswith("| a\\|b |")
    assert len(cells(row)) == len(cells(lines[header]))


# ------------------------------------------------------------ untrusted folders: a linked features/


def test_a_features_folder_that_is_a_symbolic_link_is_refused_when_a_features_file_is_read(tmp_path):
    """features/ linked to another folder would let a shared results folder read files outside itself."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "rows.npy").write_bytes(b"")
    run = tmp_path / "run"
    run.mkdir()
    (run / "features").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UserError, match="symbolic link"):
        feature_file(run, "features/rows.npy")


# ------------------------------------------------------------ timing: the busy threshold


def test_exactly_half_a_core_of_other_load_on_a_full_machine_is_busy():
    """'at least half a core' of someone else's load, with more runnable threads than cores."""
    assert MachineState(load=2.5, cores=2, threads=2).busy
    assert not MachineState(load=2.25, cores=2, threads=2).busy


# ------------------------------------------------------------ selection and config


def test_the_null_label_is_not_a_class_to_sample():
    """Label K is the unconditional (null) label of a K-class model, not one of its classes."""
    assert validate_classes(["3"], 4) == (3,)
    with pytest.raises(UserError, match="outside 0..3"):
        validate_classes(["4"], 4)


def test_repeated_step_counts_are_run_once_in_the_order_first_given():
    assert validate_steps([10, "5", 10, 5, 20], 1000) == (10, 5, 20)


@pytest.mark.parametrize("field", ["num_samples", "batch_size", "bootstrap", "seed", "threads"])
@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_is_not_a_count_in_a_run_config(field, value):
    with pytest.raises(UserError, match=f"--{field.replace('_', '-')} must be"):
        RunConfig(**{field: value})


# ------------------------------------------------------------ samplers


def test_dpm_solver_2_never_evaluates_its_midpoint_at_the_steps_own_time_on_a_discrete_model(registry):
    """On a schedule reaching alpha_bar ~ 1e-33, the log-SNR midpoint between adjacent timesteps rounds back onto
    the step's own time; the solver then takes the next time as its intermediate point (r = 1): 2N - 1 calls,
    the second of each step strictly below the first."""
    schedule = NoiseSchedule(torch.linspace(1e-4, 0.9, 100, dtype=torch.float64))
    times: list[int] = []

    def network(x, t):
        times.append(int(t[0]))
        return torch.zeros_like(x)

    model = Denoiser(schedule, DenoiserInfo("zero-eps", (1, 2, 2)), network)
    spec = registry.samplers["dpm-solver-2"]
    x, _ = run_sampler(spec, spec.resolve_params({"plan": "uniform"}), model, 100, range(2), dtype=torch.float64)
    assert len(times) == 2 * 100 - 1 and bool(torch.isfinite(x).all())
    assert times[0::2] == list(range(99, -1, -1))
    assert all(mid < cur for cur, mid in zip(times[0::2], times[1::2]))


class _RecordingDenoiser:
    """The oracle, keeping every eps it returns."""

    def __init__(self, inner):
        self.inner = inner
        self.eps: list[torch.Tensor] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x, t, cond=None):
        eps = self.inner(x, t, cond)
        self.eps.append(eps.clone())
        return eps


@pytest.mark.parametrize("order", [2, 3])
def test_unipc_x0_is_the_denoising_step_from_the_corrected_state_with_the_eps_of_that_call(registry, oracle, order):
    """As the sampler documents: at each time the corrector moves x, and x0 (reported, and returned at the last
    time) is x0_from_eps(corrected x, eps of the call made at the predicted point)."""
    spec = registry.samplers["unipc"]
    model = _RecordingDenoiser(oracle)
    states = []
    x, timesteps = run_sampler(spec, spec.resolve_params({"order": order}), model, 8, range(4), dtype=torch.float64,
                               callback=lambda s: states.append({k: v.clone() if torch.is_tensor(v) else v
                                                                 for k, v in s.items()}))
    assert len(states) == len(model.eps) == len(timesteps)
    for state, eps in zip(states, model.eps, strict=True):
        expected = x0_from_eps(state["x"], eps, oracle.schedule.alpha_bar_at(state["t"]))
        torch.testing.assert_close(state["x0"], expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x, states[-1]["x0"], rtol=0, atol=0)


class _MixedNoise:
    """x_T from one seed, the step noise from another."""

    def __init__(self, images, shape, start_seed: int, step_seed: int):
        self.start = batch_noise(start_seed, images, shape, dtype=torch.float64)
        self.steps = batch_noise(step_seed, images, shape, dtype=torch.float64)

    def initial(self):
        return self.start.initial()

    def __call__(self, step):
        return self.steps(step)


def test_edm_stochastic_with_s_noise_zero_does_not_depend_on_the_step_noise(registry, oracle):
    """S_noise scales the churn noise: at 0 the sampler still raises the level but adds nothing, so two step-noise
    streams give the same samples (at the default 1.003 they do not)."""
    spec = registry.samplers["edm-stochastic"]
    images = torch.arange(4)
    timesteps = spec.timesteps(oracle.schedule, 8, spec.resolve_params())

    def run(step_seed: int, **overrides):
        params = spec.resolve_params(overrides)
        noise = _MixedNoise(images, oracle.image_shape, 0, step_seed)
        return sample(spec, params, oracle, timesteps, images, noise=noise, dtype=torch.float64)

    assert not torch.allclose(run(1), run(2))
    torch.testing.assert_close(run(1, s_noise=0.0), run(2, s_noise=0.0), rtol=0, atol=0)
