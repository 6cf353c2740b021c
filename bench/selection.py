"""Which configurations run: sampler specs and their parameters, step counts, the job matrix, metrics."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

from bench.errors import UserError
from bench.registry import Registry, SamplerSpec, closest


@dataclass(frozen=True)
class SamplerChoice:
    """One sampler configuration: the label in reports, the spec and its resolved parameters."""

    label: str
    spec: SamplerSpec
    params: dict[str, Any]
    from_all: bool = False  # chosen by --samplers all: skipped (with a note) where the model's path cannot run it


@dataclass(frozen=True)
class Job:
    """One row of the results: a sampler configuration at one step count (and guidance scale)."""

    choice: SamplerChoice
    steps: int
    timesteps: tuple[int, ...] = field(repr=False)
    guidance: float | None = None  # classifier-free guidance w; None for unconditional models

    @property
    def key(self) -> tuple[str, int, float | None]:
        return job_key(self.choice.label, self.steps, self.guidance)

    @property
    def expected_nfe(self) -> int:
        """Network calls per image the sampler says it makes on this plan."""
        return self.choice.spec.expected_nfe(list(self.timesteps), self.choice.params)


def job_key(sampler: str, steps: int, guidance: float | None) -> tuple[str, int, float | None]:
    """The identity of a results row: (sampler label, steps, guidance w or None)."""
    return (str(sampler), int(steps), None if guidance is None else float(guidance))


def parse_params(text: str) -> dict[str, str]:
    """'eta=0.2,sections=10,15,20' -> {'eta': '0.2', 'sections': '10,15,20'}.

    A comma-separated piece without '=' continues the previous value, so list-valued
    parameters need no quoting.
    """
    params: dict[str, str] = {}
    last = None
    for piece in text.split(","):
        if "=" in piece:
            name, value = piece.split("=", 1)
            last = name.strip()
            if not last:
                raise UserError(f"bad sampler parameter {piece!r}: expected name=value")
            if last in params:
                raise UserError(f"sampler parameter {last!r} is given twice in {text!r}; give each parameter once")
            params[last] = value.strip()
        elif last is not None and piece.strip():
            params[last] += "," + piece.strip()
        elif piece.strip():
            raise UserError(f"bad sampler parameter {piece!r}: expected name=value")
    return params


def resolve_samplers(items: tuple[str, ...] | list[str], registry: Registry) -> list[SamplerChoice]:
    """Expand 'all', presets, ComfyUI/A1111 aliases (bench.aliases) and 'name:param=value' items into sampler
    configurations. An alias's row keeps the name typed, e.g. 'DPM++ 2M Karras' or 'dpmpp_2m_sde+karras'."""
    from bench.aliases import resolve_alias, suggestion

    choices: list[SamplerChoice] = []
    for item in items:
        listed, has_params, rest = item.partition(":")
        if has_params and "," in listed:
            *names, last = listed.split(",")
            plain = " ".join(n for n in names if n)
            raise UserError(f"--samplers {item!r} mixes a comma-separated list with parameters; give the "
                            f"sampler with parameters as its own argument: --samplers {plain} '{last}:{rest}'")
        for part in [item] if ":" in item else [p for p in item.split(",") if p]:
            name, _, param_text = part.partition(":")
            name = name.strip()
            if name == "all":
                choices += every_configuration(registry)
                continue
            overrides = parse_params(param_text)
            alias = resolve_alias(name, {*registry.samplers, *registry.presets})
            target, _, alias_text = (alias or name).partition(":")
            given = {**parse_params(alias_text), **overrides}  # what the user adds to an alias wins
            if target in registry.presets:
                preset = registry.presets[target]
                spec = registry.samplers[preset.sampler]
                params = spec.resolve_params({**preset.params, **given})
            elif target not in registry.samplers and suggestion(target, [*registry.samplers, *registry.presets]):
                raise UserError(f"unknown sampler {target!r}.{suggestion(target)} (a ComfyUI or A1111 name; "
                                "`python -m bench list` shows them all)")
            else:
                spec = registry.sampler(target)
                params = spec.resolve_params(given)
            label = name if not overrides else f"{name}:{','.join(f'{k}={v}' for k, v in overrides.items())}"
            choices.append(SamplerChoice(label, spec, params))
    unique: dict[str, SamplerChoice] = {}
    for choice in choices:
        unique.setdefault(choice.label, choice)
    if not unique:
        raise UserError("no samplers selected; try --samplers all")
    return list(unique.values())


def every_configuration(registry: Registry) -> list[SamplerChoice]:
    """`--samplers all`: every sampler at its defaults, then every preset; a sampler whose defaults equal a
    preset (dpm-solver++ = dpmpp-2m) runs once, under the preset's better-known name."""
    presets = [SamplerChoice(p.name, spec, spec.resolve_params(p.params), from_all=True)
               for p in registry.presets.values() for spec in [registry.samplers[p.sampler]]]
    covered = {(c.spec.name, repr(sorted(c.params.items()))) for c in presets}
    samplers = [SamplerChoice(s.name, s, s.resolve_params(), from_all=True) for s in registry.samplers.values()]
    return [c for c in samplers if (c.spec.name, repr(sorted(c.params.items()))) not in covered] + presets


def validate_steps(steps, num_timesteps: int) -> tuple[int, ...]:
    """Every requested step count is an integer in 1..T, checked before any work starts."""
    out = []
    for s in steps:
        if isinstance(s, str):
            try:
                s = int(s)
            except ValueError:
                raise UserError(f"steps must be integers, got {s!r}") from None
        if isinstance(s, bool) or not isinstance(s, int):
            raise UserError(f"steps must be integers, got {s!r}")
        if not 1 <= s <= num_timesteps:
            raise UserError(f"steps must be between 1 and T={num_timesteps}, got {s}")
        out.append(s)
    if not out:
        raise UserError("no step counts given")
    return tuple(dict.fromkeys(out))


def plan_jobs(choices: list[SamplerChoice], steps: tuple[int, ...], schedule,
              guidance: tuple[float, ...] | None = None) -> list[Job]:
    """The matrix: each configuration at each step count (and guidance scale); fixed-plan samplers once.

    `schedule` is the model's NoiseSchedule (plans on sigma or log-SNR grids need alpha_bar).
    """
    jobs = []
    skipped = []
    for choice in choices:
        fixed = choice.spec.fixed_steps(schedule.num_timesteps, choice.params)
        try:
            plans = [(s, tuple(choice.spec.timesteps(schedule, s, choice.params)))
                     for s in ([fixed] if fixed is not None else steps)]
        except UserError as exc:
            if choice.from_all:
                skipped.append(f"{choice.label} ({exc})")
                continue  # `all`: a configuration the model's path cannot run (integer plans, flow-time steppers)
            raise UserError(f"{choice.label}: {exc}") from None
        for s, timesteps in plans:
            for w in guidance if guidance is not None else (None,):
                jobs.append(Job(choice, s, timesteps, w))
    if skipped:
        print(f"note: --samplers all skips {len(skipped)} configuration(s) that cannot run on this model's "
              f"{getattr(schedule, 'kind', 'vp-discrete')} path: " + ", ".join(s.split(" (")[0] for s in skipped),
              file=sys.stderr)
    if not jobs:
        raise UserError("no configuration can run on this model: " + "; ".join(skipped))
    return jobs


def validate_guidance(scales, num_classes: int) -> tuple[float, ...] | None:
    """Guidance scales w >= 0 (Ho & Salimans: eps = (1 + w) eps(x, c) - w eps(x, null)); None when unconditional.

    A conditional model with no --guidance is sampled at w = 0 (purely conditional).
    """
    if not num_classes:
        if scales:
            raise UserError("--guidance needs a class-conditional model; this model has no classes")
        return None
    out = []
    for w in scales or ("0",):
        try:
            value = float(w)
        except (TypeError, ValueError):
            raise UserError(f"--guidance: {w!r} is not a number (expected e.g. --guidance 0,1,2)") from None
        if not math.isfinite(value) or value < 0:
            raise UserError(f"--guidance: scales must be finite and >= 0 (w of Ho & Salimans), got {w!r}")
        out.append(value)
    return tuple(dict.fromkeys(out))


def validate_classes(classes, num_classes: int) -> tuple[int, ...] | None:
    """The class labels to sample (default all of 0..K-1); an error for unconditional models or bad labels."""
    if not classes:
        return tuple(range(num_classes)) if num_classes else None
    if not num_classes:
        raise UserError("--classes needs a class-conditional model; this model has no classes")
    out = []
    for c in classes:
        try:
            label = int(c)
        except (TypeError, ValueError):
            raise UserError(f"--classes: {c!r} is not an integer label") from None
        if not 0 <= label < num_classes:
            raise UserError(f"--classes: label {label} is outside 0..{num_classes - 1}")
        out.append(label)
    return tuple(dict.fromkeys(out))


def select_metrics(names: tuple[str, ...], registry: Registry) -> list:
    if "all" in names:
        return list(registry.metrics.values())
    out = []
    for name in names:
        if name == "none":
            continue
        if name not in registry.metrics:
            raise UserError(f"unknown metric {name!r}.{closest(name, registry.metrics)} "
                            f"Available: {', '.join(registry.metrics) or 'none'}")
        out.append(registry.metrics[name])
    return out


