"""ComfyUI and A1111 names (bench.aliases): each one is a registered configuration that validates and plans, the
results row keeps the name typed, `bench list` shows them, and a wrong name is a one-line error with a suggestion."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from bench.aliases import ALIASES, COMFY_SAMPLERS, COMFY_SCHEDULERS, resolve_alias
from bench.cli import build_parser, main
from bench.errors import UserError
from bench.schedule import NoiseSchedule
from bench.selection import resolve_samplers
from tests.helpers import run_sampler

SCHEDULE = NoiseSchedule.linear(1000)


def test_every_alias_is_a_registered_configuration_that_validates_and_plans(registry):
    for alias, configuration in ALIASES.items():
        (choice,) = resolve_samplers([alias], registry)
        assert choice.label == alias
        name, _, params = configuration.partition(":")
        assert choice.spec.name == (registry.presets[name].sampler if name in registry.presets else name), alias
        plan = choice.spec.timesteps(SCHEDULE, 10, choice.params)  # the plan parameter is one the sampler takes
        if choice.spec.adaptive:  # dpm_adaptive ignores the scheduler and the steps: the whole interval
            assert plan == [999, 0] and "plan=" not in configuration, alias
        else:
            assert len(plan) == 10 and "plan=" in configuration, alias


def test_dpm_adaptive_names_map_to_the_adaptive_sampler_whatever_the_scheduler(registry):
    names = [a for a in ALIASES if a.startswith(("dpm_adaptive+", "DPM adaptive"))]
    assert len(names) == 8 + 1 + 9  # ComfyUI's 8 schedulers, A1111's bare name and its 9 schedule types
    assert {ALIASES[a] for a in names} == {"dpm-adaptive"}


def test_no_alias_shadows_a_registered_sampler_or_preset(registry):
    assert not set(ALIASES) & (set(registry.samplers) | set(registry.presets))


def test_every_comfyui_sampler_combines_with_every_comfyui_scheduler():
    assert {f"{a}+{b}" for a in COMFY_SAMPLERS for b in COMFY_SCHEDULERS} <= set(ALIASES)


@pytest.mark.parametrize("alias,sampler,params", [
    ("dpmpp_2m_sde+karras", "dpm-solver++-sde", {"order": 2, "plan": "karras"}),
    ("euler_ancestral+normal", "euler-ancestral", {"plan": "linspace", "eta": 1.0}),
    ("dpmpp_3m_sde+exponential", "dpmpp-3m-sde", {"plan": "exponential"}),
    ("uni_pc_bh2+sgm_uniform", "unipc", {"variant": "bh2", "order": 3, "plan": "sgm_uniform"}),
    ("ddpm+simple", "ddim", {"eta": 1.0, "plan": "simple"}),
    ("DPM++ 2M Karras", "dpm-solver++", {"order": 2, "plan": "karras"}),
    ("DPM++ 2M", "dpm-solver++", {"order": 2, "plan": "karras"}),  # A1111 1.9+: its 'Automatic' is Karras
    ("Euler a", "euler-ancestral", {"plan": "linspace"}),
    ("DPM++ SDE Karras", "dpmpp-sde", {"plan": "karras"}),
    ("DPM++ 2M SDE", "dpm-solver++-sde", {"order": 2, "plan": "exponential"}),
    ("DPM++ 3M SDE Exponential", "dpmpp-3m-sde", {"plan": "exponential"}),
    ("LMS", "lms", {"plan": "linspace", "order": 4}),
    ("UniPC", "unipc", {"variant": "bh1", "order": 3}),
    ("Restart", "restart", {"restart_min": 0.1, "restart_max": 2.0, "restart_steps": 9, "restart_times": 1}),
])
def test_pinned_aliases(registry, alias, sampler, params):
    (choice,) = resolve_samplers([alias], registry)
    assert choice.spec.name == sampler and choice.params.items() >= params.items()


def test_an_alias_samples_exactly_as_the_configuration_it_names(registry, oracle):
    (alias,) = resolve_samplers(["Euler a"], registry)
    (preset,) = resolve_samplers(["euler-a"], registry)
    a, _ = run_sampler(alias.spec, alias.params, oracle, 8, torch.arange(4))
    b, _ = run_sampler(preset.spec, preset.params, oracle, 8, torch.arange(4))
    assert torch.equal(a, b)


def test_parameters_after_an_alias_override_it_and_stay_in_the_label(registry):
    (choice,) = resolve_samplers(["dpmpp_sde+karras:eta=0.5,plan=beta"], registry)
    assert choice.label == "dpmpp_sde+karras:eta=0.5,plan=beta"
    assert choice.params["eta"] == 0.5 and choice.params["plan"] == "beta"


@pytest.mark.parametrize("name,match", [
    ("dpmpp_2m+karas", r"unknown ComfyUI scheduler 'karas'\. Did you mean 'karras'\?"),
    ("dpmpp_2n+karras", r"unknown ComfyUI sampler 'dpmpp_2n'\. Did you mean 'dpmpp_2m'\?"),
    ("lcm+karras", "ComfyUI's 'lcm' has no counterpart"),
    ("dpmpp_2m+linear_quadratic", "'linear_quadratic' has no counterpart"),
    ("dpmpp_2m", r"give it with a scheduler as SAMPLER\+SCHEDULER, e\.g\. dpmpp_2m\+karras"),
    ("DPM++ 2M Karas", r"Did you mean 'DPM\+\+ 2M Karras'\?"),
    ("Euler A", r"Did you mean 'Euler a'\?"),
])
def test_a_wrong_name_is_a_one_line_error_with_a_suggestion(registry, name, match):
    with pytest.raises(UserError, match=match) as info:
        resolve_samplers([name], registry)
    assert "\n" not in str(info.value)


def test_a_registered_name_is_never_taken_for_an_alias():
    assert resolve_alias("euler", {"euler"}) is None and resolve_alias("ddpm", {"ddpm"}) is None


def test_list_json_has_every_alias_with_its_configuration(capsys):
    assert main(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["aliases"] == ALIASES and listing["aliases"]["DPM++ 2M Karras"] == "dpm-solver++:order=2,plan=karras"


def test_list_shows_an_aliases_section(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("Aliases"):]
    assert "dpmpp_2m_sde+karras = dpm-solver++-sde:order=2,plan=karras" in section and "Euler a" in section


def test_names_with_spaces_pass_as_one_argument_and_label_the_rows(tmp_path):
    args = ["run", "--model", "gaussian-oracle", "--samplers", "DPM++ 2M Karras", "dpmpp_2m_sde+karras", "Euler a",
            "--steps", "4", "--num-samples", "8", "--metrics", "none", "--quiet", "--grid-images", "0",
            "--trajectory-images", "0", "--out", str(tmp_path / "run")]
    assert build_parser().parse_args(args).samplers == ["DPM++ 2M Karras", "dpmpp_2m_sde+karras", "Euler a"]
    assert main(args) == 0
    rows = pd.read_csv(tmp_path / "run" / "results.csv")
    assert list(rows["sampler"]) == ["DPM++ 2M Karras", "dpmpp_2m_sde+karras", "Euler a"]
    assert (rows["status"] == "ok").all() and list(rows["nfe"]) == [4, 4, 4]
