"""What plugins register: samplers (with declared parameters), presets, models and metrics."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.errors import UserError
from bench.plans import make_plan, sections_plan

PLAN_FILE_PREFIX = "file:"  # plan=file:PLAN.json: a plan written by `bench tune-plan`
PLAN_PARAMS = ("plan", "sections", "rho")  # parameters that choose timesteps rather than reach the sampler
# The `steps` of an adaptive sampler's row: it runs once per configuration, whatever --steps says, between the
# path's first and last time, and its `nfe` is the mean of the calls it counted per image (`nfe_max`: the most).
ADAPTIVE_STEPS = 0
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Param:
    """A declared sampler parameter: default, type, one line of help and the values it allows.

    `low`/`high` bound numbers (inclusive); floats must be finite unless `finite=False`. The
    check happens here, once, so every sampler (built-in or plugin) gets it for free.
    """

    default: Any
    help: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    finite: bool = True

    def allowed(self) -> str:
        """The allowed values in words, e.g. 'in [0, inf)' or 'one of small, large'; '' when anything goes."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        if self.low is None and self.high is None:
            return "finite" if type(self.default) is float and self.finite else ""
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"in [{low}, {high}]".replace("inf]", "inf)").replace("[-inf", "(-inf")

    def convert(self, name: str, value: Any) -> Any:
        """Coerce a command-line string (or a Python value) to this parameter's type and check its range."""
        kind = type(self.default)
        try:
            if kind is bool:
                if isinstance(value, str):
                    if value.lower() not in _TRUE | _FALSE:
                        raise ValueError
                    value = value.lower() in _TRUE
                value = bool(value)
            elif kind is float:
                value = float(value)
            elif kind is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                value = int(value)
            else:
                value = str(value)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"parameter {name}={value!r} is not a valid {kind.__name__}") from None
        if name == "plan" and isinstance(value, str) and value.startswith(PLAN_FILE_PREFIX):
            return value  # a tuned plan file (bench.tune), checked when the plan is made
        if self.choices is not None and value not in self.choices:
            raise UserError(f"parameter {name}={value!r} must be one of {', '.join(map(str, self.choices))}")
        if kind in (int, float):
            if kind is float and self.finite and not math.isfinite(value):
                raise UserError(f"parameter {name}={value!r} must be a finite number")
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                raise UserError(f"parameter {name}={value!r} must be {self.allowed()}")
        return value


# Options every sampler accepts, applied by the sampling seam (bench/sampling.py) around the denoiser, so no
# sampler implements them: clipping of the predicted x_0 to the data range [-1, 1] (diffusers' clip_sample)
# or Imagen's dynamic thresholding (Saharia et al. 2022), with the eps the sampler sees made consistent.
COMMON_PARAMS = {
    "clip_x0": Param("none", "clip the predicted x_0: none, static (to [-1, 1], diffusers' clip_sample) or dynamic "
                     "(Imagen's dynamic thresholding)", ("none", "static", "dynamic")),
    "clip_percentile": Param(0.995, "dynamic thresholding: s = this percentile of |x_0| per image (at least 1); "
                             "x_0 is clipped to [-s, s] and divided by s", low=0.5, high=1.0),
}


@dataclass
class AdaptiveSample:
    """What an adaptive sampler returns: the samples and the network calls each image was part of.

    The harness checks that these add up to the calls it counted itself (bench.jobs) and reports their
    mean and maximum.
    """

    x0: Any
    nfe: Any  # (B,) int64 tensor


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler.

    `fn(denoiser, x_T, timesteps, noise, *, callback=None, cond=None, **params)` returns x_0.
    `plan` names the timestep plan ('full', 'uniform', 'quadratic', ..., or 'sections', which
    reads the `sections` parameter); a `plan` parameter, when declared, overrides it.
    `nfe_per_step` is the number of network calls per timestep the sampler visits; samplers whose
    cost is not steps x constant (Heun: 2N-1, warm-ups, AFS) give `nfe(timesteps, params) -> int`
    instead, so the expected NFE and progress bars stay exact. The harness's count is the truth.
    `check(timesteps, params)`, when given, raises a one-line UserError for a plan or option
    combination the sampler cannot run (e.g. too few steps); `timesteps()` calls it, so the
    harness hears about it while planning jobs, before anything is written.
    `adaptive=True`: the sampler picks its own steps (error control), so its cost depends on the image. It
    runs once per configuration (row steps = ADAPTIVE_STEPS), gets the path's first and last time as its
    `timesteps`, and returns `AdaptiveSample(x0, nfe)` (samplers.adaptive) with the calls each image took;
    the harness checks their sum against its own count and reports their mean (`nfe`) and max (`nfe_max`).
    """

    name: str
    fn: Callable
    description: str
    params: Mapping[str, Param] = field(default_factory=dict)
    plan: str = "uniform"
    nfe_per_step: int = 1
    plugin: str = ""
    nfe: Callable[[list, Mapping[str, Any]], int] | None = None
    check: Callable[[list, Mapping[str, Any]], None] | None = None
    paths: tuple[str, ...] | None = None  # the noise path kinds it runs on (bench.paths); None: every kind
    adaptive: bool = False  # chooses its own steps (an error-controlled step size): see ADAPTIVE_STEPS

    def resolve_params(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults updated by `overrides`, each checked against its declaration.

        The options every sampler accepts (COMMON_PARAMS: x_0 clipping, applied by the sampling seam)
        appear in the result only when given.
        """
        resolved = {name: p.default for name, p in self.params.items()}
        for name, value in (overrides or {}).items():
            declared = self.params.get(name) or COMMON_PARAMS.get(name)
            if declared is None:
                known = ", ".join([*self.params, *COMMON_PARAMS])
                raise UserError(f"sampler {self.name!r} has no parameter {name!r} (its parameters: {known})")
            resolved[name] = declared.convert(name, value)
        return resolved

    def plan_name(self, params: Mapping[str, Any]) -> str:
        return str(params.get("plan", self.plan))

    def fixed_steps(self, num_timesteps: int, params: Mapping[str, Any]) -> int | None:
        """The step count when the plan fixes it (full schedule, sections), else None."""
        plan = self.plan_name(params)
        if self.adaptive:
            return ADAPTIVE_STEPS
        if plan == "full":
            return num_timesteps
        if plan == "sections":
            return len(sections_plan(num_timesteps, params["sections"]))
        return None

    def timesteps(self, schedule_or_T, steps: int | None, params: Mapping[str, Any]) -> list[int]:
        """The timestep plan for this sampler, parameters and step count.

        Pass the model's NoiseSchedule; plans that only need T (uniform, quadratic, ...) also
        accept T itself, and plans placed by noise level (logsnr, karras) say so if given only T.
        """
        num_timesteps = getattr(schedule_or_T, "num_timesteps", schedule_or_T)
        plan = self.plan_name(params)
        kind = getattr(schedule_or_T, "kind", None)
        if self.paths is not None and kind is not None and kind not in self.paths:
            raise UserError(f"sampler {self.name!r} runs on {', '.join(self.paths)} paths, not on this model's "
                            f"{kind} path")
        if self.adaptive:  # the interval it integrates over: the path's first and last time
            if isinstance(schedule_or_T, int):
                return [schedule_or_T - 1, 0]
            return [schedule_or_T.t_max, schedule_or_T.t_min]
        if plan == "sections":
            if getattr(schedule_or_T, "continuous", False):
                raise UserError(f"the sections plan cuts T integer timesteps and cannot run on this model's "
                                f"{schedule_or_T.kind} path (continuous time)")
            timesteps = sections_plan(num_timesteps, params["sections"])
            if steps is not None and steps != len(timesteps):
                raise UserError(f"{self.name}: sections {params['sections']!r} give {len(timesteps)} steps, "
                                f"not {steps}")
        elif plan.startswith(PLAN_FILE_PREFIX):
            from bench.tune import plan_from_file
            timesteps = plan_from_file(plan[len(PLAN_FILE_PREFIX):], self.name, schedule_or_T, steps)
        else:
            timesteps = make_plan(plan, schedule_or_T, steps, rho=params.get("rho"))
        if self.check is not None:
            self.check(timesteps, params)
        return timesteps

    def sampler_kwargs(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters passed to `fn`: all but the plan ones and the common ones, which the harness consumes."""
        return {k: v for k, v in params.items() if k not in PLAN_PARAMS and k not in COMMON_PARAMS}

    def expected_nfe(self, timesteps: list, params: Mapping[str, Any] | None = None) -> int | None:
        """Network calls per image this sampler makes on `timesteps` with `params`; None for an adaptive sampler,
        whose calls depend on the image (the harness counts them per image)."""
        if self.adaptive:
            return None
        if self.nfe is not None:
            return int(self.nfe(list(timesteps), dict(params or {})))
        return self.nfe_per_step * len(timesteps)


@dataclass(frozen=True)
class Preset:
    """A named sampler configuration, e.g. 'ddim-eta1' = ddim with eta=1."""

    name: str
    sampler: str
    params: Mapping[str, Any]
    description: str
    plugin: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: `load(device)` returns a Denoiser.

    A model *source* instead opens what the user names on the command line (a weight file, a
    folder): `opens(arg) -> bool` says whether it can, and `load(device, arg)` loads it.
    """

    name: str
    description: str
    load: Callable
    plugin: str = ""
    opens: Callable[[str], bool] | None = None
    path: str | None = None          # the noise path kind (bench.paths), shown by `bench list`; None: not known
    prediction_type: str | None = None
    shift: float | None = None


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: `create(denoiser, context)` returns an object with
    `update(samples)` (called batch by batch) and `compute() -> dict[str, float]`,
    or None when the metric does not apply to that model."""

    name: str
    description: str
    create: Callable
    plugin: str = ""


KINDS = {"sampler": SamplerSpec, "preset": Preset, "model": ModelSpec, "metric": MetricSpec}


def closest(name: str, options) -> str:
    """' Did you mean X?' when something is close, else ''."""
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else ""


@dataclass
class Registry:
    """Everything every plugin registered, plus the errors of plugins that failed."""

    samplers: dict[str, SamplerSpec] = field(default_factory=dict)
    presets: dict[str, Preset] = field(default_factory=dict)
    models: dict[str, ModelSpec] = field(default_factory=dict)
    metrics: dict[str, MetricSpec] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)

    def table(self, kind: str) -> dict:
        return {"sampler": self.samplers, "preset": self.presets, "model": self.models,
                "metric": self.metrics}[kind]

    def sampler(self, name: str) -> SamplerSpec:
        """Look a sampler up, with an error that lists the names and the closest match."""
        if name not in self.samplers:
            names = sorted(self.samplers) + sorted(self.presets)
            raise UserError(f"unknown sampler {name!r}.{closest(name, names)} Available: {', '.join(names)}")
        return self.samplers[name]

    def model(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise UserError(f"unknown model {name!r}.{closest(name, self.model_names())} "
                            f"Available: {', '.join(self.model_names())}")
        return self.models[name]

    def model_names(self) -> list[str]:
        """Registered model names (not the sources that open paths)."""
        return sorted(name for name, spec in self.models.items() if spec.opens is None)

    def load_model(self, arg: str, device):
        """`--model`: a registered name, or a path a registered model source opens (weights file, folder)."""
        if arg in self.models and self.models[arg].opens is None:
            return self.models[arg].load(device)
        for spec in self.models.values():
            if spec.opens is not None and spec.opens(arg):
                return spec.load(device, arg)
        from pathlib import Path
        if Path(arg).suffix or "/" in arg or "\\" in arg:
            raise UserError(f"--model {arg}: no such file or folder")
        sources = "; ".join(f"{s.name}: {s.description}" for s in self.models.values() if s.opens is not None)
        raise UserError(f"unknown model {arg!r}.{closest(arg, self.model_names())} Give a registered name "
                        f"({', '.join(self.model_names()) or 'none'})" + (f" or a path ({sources})" if sources else ""))
