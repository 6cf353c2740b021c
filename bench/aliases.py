"""The names ComfyUI and AUTOMATIC1111's web UI give sampler configurations, as configurations of this project.

`--samplers dpmpp_2m_sde+karras` (ComfyUI's KSampler: sampler_name + scheduler) or `--samplers "DPM++ 2M Karras"`
(A1111's sampler with its schedule type, or the sampler alone for 'Automatic') runs the configuration below, and the
results row keeps the name typed. Where the tools differ from what runs here, the difference is written down:

  * timesteps are always trained ones (rounded as every plan here), where ComfyUI and A1111 may evaluate a discrete
    model at fractional timesteps ('normal', A1111's 'Uniform');
  * ComfyUI's dpm_2, dpm_2_ancestral, uni_pc and uni_pc_bh2 (and A1111's DPM2, DPM2 a, DPM++ 3M SDE) compute N + 1
    sigmas and drop the next-to-last; here they run on the N-step plan itself;
  * ComfyUI's ddim_uniform and A1111's DDIM schedule start one timestep higher (1 + i T/N, SD's steps_offset) and
    can give one step more than asked; they map to the 'leading' plan, i T/N;
  * ComfyUI's 'beta' drops repeated timesteps (fewer steps than asked); the 'beta' plan keeps N distinct ones;
  * A1111's UniPC integrates to t = 0 on N + 1 time-uniform points without a final denoising step, and its
    Restart shortens the main grid so the total stays at the asked steps (no restart below 20 steps);
  * ComfyUI's and A1111's dpm_adaptive / 'DPM adaptive' (k-diffusion's sample_dpm_adaptive) drive Lu et al.'s
    DPM-Solver-23 with a PID step-size controller (accept_safety 0.81) and one step size for the whole batch;
    dpm-adaptive here uses the paper's controller (theta 0.9) per image, so an image's cost is its own;
  * ComfyUI's 'ddim' is k-diffusion's Euler and 'ddpm' its ancestral step with the posterior variance: the same
    updates as DDIM with eta = 0 and eta = 1 here (tests/test_solvers.py, tests/test_samplers.py).
"""

from __future__ import annotations

import re

from bench.errors import UserError
from bench.registry import closest

COMFY_COMBINATION = re.compile(r"[a-z0-9_]+\+[a-z0-9_]+")  # ComfyUI's names; A1111's have capitals and spaces

# ComfyUI's KSampler sampler names (comfy/samplers.py, KSAMPLER_NAMES + ddim, uni_pc, uni_pc_bh2) -> configuration.
COMFY_SAMPLERS: dict[str, str] = {
    "euler": "euler",
    "euler_ancestral": "euler-ancestral",
    "heun": "heun",
    "dpm_2": "dpm-solver-2",  # k-diffusion's sample_dpm_2 is DPM-Solver-2 with r = 1/2 in EDM's variables
    "dpm_2_ancestral": "dpm-2-ancestral",
    "lms": "lms",
    "dpmpp_2s_ancestral": "dpmpp-2s-ancestral",
    "dpmpp_sde": "dpmpp-sde",
    "dpmpp_sde_gpu": "dpmpp-sde",  # the same sampler with its Brownian tree on the GPU: the same law
    "dpmpp_2m": "dpm-solver++:order=2",
    "dpmpp_2m_sde": "dpm-solver++-sde:order=2",  # k-diffusion's default solver_type='midpoint', eta = 1
    "dpmpp_2m_sde_gpu": "dpm-solver++-sde:order=2",
    "dpmpp_3m_sde": "dpmpp-3m-sde",
    "dpmpp_3m_sde_gpu": "dpmpp-3m-sde",
    "ddpm": "ddim:eta=1",
    "ddim": "ddim",
    "uni_pc": "unipc:variant=bh1",  # ComfyUI's uni_pc: order 3, B(h) = h
    "uni_pc_bh2": "unipc:variant=bh2",
    "deis": "deis",  # DEIS-tAB3, ComfyUI's max_order 3
    "ipndm": "ipndm",
    "ipndm_v": "ipndm:variable_step=true",
    "restart": "restart",  # not in ComfyUI's core (the ComfyUI_restart_sampling node); Xu et al.'s sampler
    "dpm_adaptive": "dpm-adaptive",  # picks its own steps: every scheduler maps to the same configuration
}
# Samplers that ignore the scheduler (and the step count): ComfyUI's dpm_adaptive integrates between the model's
# sigma_max and sigma_min whatever the scheduler, as dpm-adaptive here does between the path's first and last time.
IGNORES_SCHEDULER = {"dpm_adaptive", "DPM adaptive"}
# ComfyUI's samplers with no counterpart here (named so the error says so rather than "unknown").
COMFY_UNSUPPORTED = ("dpm_fast", "lcm", "euler_cfg_pp", "euler_ancestral_cfg_pp", "heunpp2",
                     "dpmpp_2s_ancestral_cfg_pp", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
                     "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
                     "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde",
                     "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "exp_heun_2_x0", "exp_heun_2_x0_sde",
                     "linear_quadratic")
# ComfyUI's schedulers (SCHEDULER_HANDLERS) -> timestep plan (bench.plans).
COMFY_SCHEDULERS: dict[str, str] = {
    "normal": "linspace", "karras": "karras", "exponential": "exponential", "sgm_uniform": "sgm_uniform",
    "simple": "simple", "ddim_uniform": "leading", "beta": "beta", "kl_optimal": "kl_optimal",
}

# A1111's k-diffusion samplers (modules/sd_samplers_kdiffusion.py) -> (configuration, the plan its 'Automatic'
# schedule type picks: the sampler's 'scheduler' option, else the model's own sigmas, uniform in t).
A1111_SAMPLERS: dict[str, tuple[str, str]] = {
    "DPM++ 2M": ("dpm-solver++:order=2", "karras"),
    "DPM++ SDE": ("dpmpp-sde", "karras"),
    "DPM++ 2M SDE": ("dpm-solver++-sde:order=2", "exponential"),
    "DPM++ 2S a": ("dpmpp-2s-ancestral", "karras"),
    "DPM++ 3M SDE": ("dpmpp-3m-sde", "exponential"),
    "Euler a": ("euler-ancestral", "linspace"),
    "Euler": ("euler", "linspace"),
    "LMS": ("lms", "linspace"),
    "Heun": ("heun", "linspace"),
    "DPM2": ("dpm-solver-2", "karras"),
    "DPM2 a": ("dpm-2-ancestral", "karras"),
    "Restart": ("restart:restart_min=0.1,restart_max=2,restart_steps=9,restart_times=1", "karras"),
    "DPM adaptive": ("dpm-adaptive", ""),
}
# A1111's schedule types (modules/sd_schedulers.py) -> plan; "X Karras" is also the pre-1.9 combined name.
A1111_SCHEDULES: dict[str, str] = {
    "Uniform": "linspace", "Karras": "karras", "Exponential": "exponential", "SGM Uniform": "sgm_uniform",
    "KL Optimal": "kl_optimal", "Simple": "simple", "Normal": "linspace", "DDIM": "leading", "Beta": "beta",
}
# A1111's samplers on their own timesteps (modules/sd_samplers_timesteps.py, UniPC): no schedule type.
A1111_FIXED: dict[str, str] = {
    "DDIM": "ddim:plan=leading",
    "PLMS": "plms:warmup=improved-euler,plan=leading",
    "UniPC": "unipc:variant=bh1,plan=linspace",  # uni_pc_variant bh1, order 3, time-uniform skip type
}


def with_plan(configuration: str, plan: str, sampler: str = "") -> str:
    """'name:a=1' + plan -> 'name:a=1,plan=PLAN' (unchanged for a sampler that ignores the scheduler)."""
    if sampler in IGNORES_SCHEDULER:
        return configuration
    return f"{configuration}{',' if ':' in configuration else ':'}plan={plan}"


def _table() -> dict[str, str]:
    table = {f"{sampler}+{scheduler}": with_plan(config, plan, sampler)
             for sampler, config in COMFY_SAMPLERS.items() for scheduler, plan in COMFY_SCHEDULERS.items()}
    for label, (config, automatic) in A1111_SAMPLERS.items():
        table[label] = with_plan(config, automatic, label)
        table.update({f"{label} {schedule}": with_plan(config, plan, label)
                      for schedule, plan in A1111_SCHEDULES.items()})
    table.update(A1111_FIXED)
    return table


ALIASES: dict[str, str] = _table()


def resolve_alias(name: str, registered=()) -> str | None:
    """The configuration an alias names; None when `name` is no alias (the caller parses it as a sampler or preset).

    A name shaped like a ComfyUI combination (sampler+scheduler) or a bare ComfyUI sampler name that is not
    registered here is a one-line UserError with a suggestion.
    """
    if name in ALIASES:
        return ALIASES[name]
    if name in registered:
        return None
    if COMFY_COMBINATION.fullmatch(name):
        sampler, _, scheduler = name.partition("+")
        if sampler in COMFY_UNSUPPORTED or scheduler in COMFY_UNSUPPORTED:
            which = sampler if sampler in COMFY_UNSUPPORTED else scheduler
            raise UserError(f"{name!r}: ComfyUI's {which!r} has no counterpart in this benchmark; its samplers are "
                            f"{', '.join(COMFY_SAMPLERS)} and its schedulers {', '.join(COMFY_SCHEDULERS)}")
        if sampler not in COMFY_SAMPLERS:
            raise UserError(f"{name!r}: unknown ComfyUI sampler {sampler!r}.{closest(sampler, COMFY_SAMPLERS)} "
                            f"Give SAMPLER+SCHEDULER with a sampler among {', '.join(COMFY_SAMPLERS)}")
        raise UserError(f"{name!r}: unknown ComfyUI scheduler {scheduler!r}.{closest(scheduler, COMFY_SCHEDULERS)} "
                        f"Give SAMPLER+SCHEDULER with a scheduler among {', '.join(COMFY_SCHEDULERS)}")
    if name in COMFY_SAMPLERS or name in COMFY_UNSUPPORTED:
        hint = f" e.g. {name}+karras" if name in COMFY_SAMPLERS else ""
        raise UserError(f"{name!r} is a ComfyUI sampler name: give it with a scheduler as SAMPLER+SCHEDULER,{hint} "
                        f"(schedulers: {', '.join(COMFY_SCHEDULERS)})")
    return None


def suggestion(name: str, registered=()) -> str:
    """' Did you mean X?' when the closest of the aliases and the `registered` names is an alias, else ''."""
    hint = closest(name, [*registered, *ALIASES])
    return hint if hint and hint[len(" Did you mean '"):-2] in ALIASES else ""
