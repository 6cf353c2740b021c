"""Mutation run 7, part b (plumbing, reporting and loading): tests for the mutants the fast suite let through.

Each test pins one documented property; docs/mutation-run-7-b.md lists the mutants (W01..W13).
"""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench.folder import LOCK_NAME
from bench.jobs import Harness
from bench.results import prepare_out_dir
from bench.schedule import NoiseSchedule, ScheduleConfig
from tests.helpers import dead_pid


@pytest.mark.parametrize("bad", [float("inf"), -float("inf"), float("nan")])
def test_samples_holding_inf_or_nan_are_refused_by_the_sample_check(bad):
    harness = SimpleNamespace(denoiser=SimpleNamespace(image_shape=(1, 2, 2)))
    samples = torch.zeros(3, 1, 2, 2)
    Harness._check(harness, samples, 3)  # finite samples of the right shape pass
    samples[1, 0, 1, 0] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        Harness._check(harness, samples, 3)


def test_a_folder_holding_only_a_stale_lock_counts_as_empty(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(f'{{"pid": {dead_pid()}, "host": "{socket.gethostname()}", "command": "x"}}')
    assert prepare_out_dir(str(out), tmp_path, "m", resume=False, force=False) == out
    (out / "notes.txt").write_text("mine")  # anything else makes it a folder the tool did not write
    with pytest.raises(Exception, match="not empty"):
        prepare_out_dir(str(out), tmp_path, "m", resume=False, force=False)


def test_an_adaptive_sampler_given_t_integrates_over_the_same_interval_as_on_the_schedule(registry):
    spec = registry.samplers["dpm-adaptive"]
    params = spec.resolve_params()
    schedule = NoiseSchedule.from_config(ScheduleConfig("linear", 50))
    assert spec.timesteps(schedule, None, params) == [49, 0]
    assert spec.timesteps(50, None, params) == spec.timesteps(schedule, None, params)


def _clash_plugin(path: Path, description: str) -> Path:
    path.write_text("from bench import SamplerSpec, hookimpl\n"
                    "@hookimpl\n"
                    "def register_samplers(register):\n"
                    f"    register(SamplerSpec('clash-sampler', lambda *a, **k: None, {description!r}))\n")
    return path


def test_plugin_files_from_the_environment_load_before_those_given_with_plugin(tmp_path, monkeypatch):
    from bench import plugins

    env_file = _clash_plugin(tmp_path / "from_env.py", "from the environment")
    cli_file = _clash_plugin(tmp_path / "from_cli.py", "from --plugin")
    monkeypatch.setenv(plugins.PLUGINS_ENV, str(env_file))
    assert plugins.plugin_files([str(cli_file)]) == [str(env_file), str(cli_file)]
    registry = plugins.load_registry([str(cli_file)])
    assert registry.samplers["clash-sampler"].description == "from the environment"
    assert any("from_cli.py" in e and "clash-sampler" in e for e in registry.errors)


class _ShardOnly:
    def shard_state(self):
        return {"n": 1}


class _MergeOnly:
    def merge_shards(self, states):
        pass


class _Both(_ShardOnly, _MergeOnly):
    pass


@pytest.mark.parametrize("accumulator", [_ShardOnly(), _MergeOnly(), object()], ids=["no-merge", "no-shard", "none"])
def test_a_metric_is_merged_across_processes_only_when_it_has_both_shard_state_and_merge_shards(accumulator):
    from bench.distributed import shard_state
    from bench.errors import UserError

    assert shard_state("both", _Both()) == {"n": 1}
    with pytest.raises(UserError, match="cannot be merged across processes"):
        shard_state("half", accumulator)


@pytest.mark.parametrize("field,value", [("time_input", "fraction-2"), ("prediction_type", "velocity")])
def test_a_card_with_an_unknown_time_input_or_prediction_type_is_refused_when_read(tmp_path, field, value):
    import json

    from bench.errors import UserError
    from models.builtin import WEIGHTS_DIR
    from models.weights import read_card

    card = json.loads((WEIGHTS_DIR / "digits.json").read_text())
    (tmp_path / "m.json").write_text(json.dumps(card))
    assert read_card(tmp_path / "m.safetensors")[field] == card[field]  # the shipped card itself reads
    (tmp_path / "m.json").write_text(json.dumps({**card, field: value}))
    with pytest.raises(UserError, match=field):
        read_card(tmp_path / "m.safetensors")
