"""Tests for the survivors of hand mutation run 9 (docs/mutation-run-9.md)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch


def test_the_conditional_oracle_refuses_a_negative_class_label():
    """Labels are 0..K (K is the null label): -1 is not a class, and must not quietly mean the last component."""
    from bench.errors import UserError
    from models.oracle import ConditionalOracleDenoiser, make_conditional_mixture

    den = ConditionalOracleDenoiser(make_conditional_mixture(8))
    x = torch.zeros(2, 1, 8, 8)
    t = torch.tensor([500, 500])
    with pytest.raises(UserError, match="class labels must be in 0..4"):
        den.predict_eps(x, t, torch.tensor([-1, 0]))
    assert den.predict_eps(x, t, torch.tensor([4, 0])).shape == x.shape  # the null label K is allowed


def test_respace_refuses_a_timestep_past_the_last_with_a_user_error():
    """Timesteps are 0..T-1; T itself is one past the end and is refused as bad input, not an IndexError."""
    from bench.errors import UserError
    from bench.schedule import NoiseSchedule

    schedule = NoiseSchedule.linear(100)
    with pytest.raises(UserError, match="distinct timesteps in 0..99"):
        schedule.respace([0, 50, 100])
    kept = schedule.respace([0, 50, 99])
    torch.testing.assert_close(kept.alpha_bar, schedule.alpha_bar[[0, 50, 99]])


def test_a_ve_path_needs_sigma_min_strictly_below_sigma_max():
    """sigma_min == sigma_max is an empty noise range: refused like sigma_min > sigma_max."""
    from bench.errors import UserError
    from bench.paths import PathConfig

    for low, high in ((1.0, 1.0), (2.0, 1.0)):
        with pytest.raises(UserError, match="must be below sigma_max"):
            PathConfig("ve", sigma_min=low, sigma_max=high)
    PathConfig("ve", sigma_min=1.0, sigma_max=1.0 + 1e-9)


def test_perf_refuses_an_out_file_in_a_missing_folder_before_measuring(tmp_path, monkeypatch):
    """`bench perf --out` is checked before minutes of measuring: a file in a folder that does not exist is a
    UserError, and nothing is measured."""
    from types import SimpleNamespace

    import bench.perf
    from bench.errors import UserError

    def measured(*_):
        raise AssertionError("measured before checking --out")

    monkeypatch.setattr(bench.perf, "_run_perf", measured)
    for out in (tmp_path / "missing" / "perf.json", tmp_path):
        with pytest.raises(UserError, match="expected a file in an existing folder"):
            bench.perf.run_perf(SimpleNamespace(out=str(out)))


def test_an_empty_rendezvous_variable_counts_as_not_set(monkeypatch):
    """MASTER_ADDR='' (an unset shell variable exported) is as missing as no MASTER_ADDR: the one-line error that
    names it, before any attempt to join a process group."""
    from bench import distributed
    from bench.errors import UserError

    def joined(*_, **__):
        raise AssertionError("tried to join the process group")

    monkeypatch.setattr(distributed.dist, "init_process_group", joined)
    env = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "", "MASTER_PORT": "29500"}
    with pytest.raises(UserError, match="MASTER_ADDR is not set"):
        distributed.init_processes(torch.device("cpu"), env)


def test_write_json_atomic_never_writes_through_a_dangling_tmp_link(tmp_path):
    """A `<name>.tmp` symlink left in a results folder is removed, not followed, even when its target does not
    exist yet (following it would create a file outside the folder)."""
    from bench.config import write_json_atomic

    folder, outside = tmp_path / "run", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (folder / "config.json.tmp").symlink_to(outside / "planted.json")
    write_json_atomic(folder / "config.json", {"a": 1})
    assert json.loads((folder / "config.json").read_text()) == {"a": 1}
    assert not (outside / "planted.json").exists() and not (folder / "config.json.tmp").is_symlink()


def test_a_report_refuses_a_null_top_level_sample_count(tmp_path):
    """Only the config.* counts may be null (null means the model's default); the resolved top-level num_samples
    and batch_size of config.json must be integers."""
    from bench.errors import UserError
    from bench.report import check_config_values

    path = tmp_path / "config.json"
    check_config_values({"config": {"num_samples": None, "batch_size": None}, "num_samples": 8, "batch_size": 4},
                        path)
    for key in ("num_samples", "batch_size"):
        config = {"config": {}, "num_samples": 8, "batch_size": 4, key: None}
        with pytest.raises(UserError, match=f"{key} must be an integer"):
            check_config_values(config, path)


def test_compare_keys_use_guidance_only_when_both_runs_have_the_column():
    """A guided run compared with one that has no guidance column is matched on sampler and steps."""
    from bench.report import compare_keys

    guided = pd.DataFrame({"sampler": ["ddim"], "steps": [10], "guidance": [2.0]})
    plain = pd.DataFrame({"sampler": ["ddim"], "steps": [10]})
    unguided = pd.DataFrame({"sampler": ["ddim"], "steps": [10], "guidance": [float("nan")]})
    assert compare_keys(guided, plain) == ["sampler", "steps"]
    assert compare_keys(plain, guided) == ["sampler", "steps"]
    assert compare_keys(guided, unguided) == ["sampler", "steps", "guidance"]
    assert compare_keys(unguided, unguided) == ["sampler", "steps"]


@pytest.mark.parametrize(("typo", "name"), [("ddmi", "ddim"), ("huen", "heun"), ("eulr", "euler")])
def test_a_one_letter_slip_in_a_short_name_gets_a_suggestion(typo, name):
    """difflib's similarity of a swapped or dropped letter in a four- or five-letter name is 0.75-0.89: such
    typos are the ones 'Did you mean' is for."""
    from bench.registry import closest

    assert closest(typo, ["ddim", "heun", "euler", "dpm-solver++"]) == f" Did you mean {name!r}?"
    assert closest("zzzzzz", ["ddim", "heun"]) == ""
