"""Load a diffusers `UNet2DModel` folder (with its scheduler config) as a Denoiser.

Accepted layouts: a folder written by `UNet2DModel.save_pretrained` with `scheduler_config.json`
beside it, or a pipeline folder (`DDPMPipeline.save_pretrained`) with `unet/` and `scheduler/`.
Only safetensors weights are read. diffusers is an optional extra.

The scheduler config says which noise path the UNet was trained on (bench.paths):
  * FlowMatchEuler/FlowMatchHeun schedulers, or any scheduler with `use_flow_sigmas` or
    `prediction_type: flow_prediction`: the flow path with the config's `shift` (`flow_shift`), the
    UNet predicts the velocity and is called at sigma * num_train_timesteps, as diffusers calls it;
  * EDM schedulers (EDMEuler, EDMDPMSolverMultistep): the VE path with sigma_min/sigma_max/sigma_data,
    the UNet inside EDM's preconditioning (c_in x, c_noise = ln(sigma) / 4; prediction_type epsilon);
  * anything else: the DDPM betas (vp-discrete), as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.denoiser import Denoiser, DenoiserInfo
from bench.errors import UserError
from bench.schedule import NoiseSchedule, ScheduleConfig

INSTALL_HINT = "pip install 'sampler-bench[diffusers]'"
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled-linear", "squaredcos_cap_v2": "cosine"}
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


class DiffusersUNet(nn.Module):
    """`unet(x, t, class_labels=cond).sample` as a plain network(x, t, cond) call."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(x, t, class_labels=cond).sample


def find_unet_dir(folder: Path) -> Path:
    """The folder holding the UNet's config.json: `folder/unet` for a pipeline, else `folder`."""
    for candidate in (folder / "unet", folder):
        if (candidate / "config.json").is_file():
            return candidate
    raise UserError(f"{str(folder)!r} is not a diffusers UNet2DModel folder: no config.json in it or in unet/")


def read_scheduler_config(folder: Path, unet_dir: Path) -> dict[str, Any]:
    """scheduler_config.json from `scheduler/`, the folder itself, or the UNet folder."""
    for candidate in (folder / "scheduler", folder, unet_dir):
        path = candidate / "scheduler_config.json"
        if path.is_file():
            try:
                config = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise UserError(f"scheduler config {str(path)!r} is not valid JSON: {exc}") from None
            if not isinstance(config, dict):
                raise UserError(f"scheduler config {str(path)!r} is not a JSON object")
            return {**config, "_path": str(path)}
    raise UserError(f"no scheduler_config.json in {str(folder)!r} or its scheduler/ subfolder; it gives the betas")


def schedule_from_config(config: dict[str, Any], source: Path) -> NoiseSchedule:
    """Our NoiseSchedule from a diffusers scheduler config (trained_betas win over beta_schedule)."""
    source = Path(config.get("_path", source))
    checks = {"num_train_timesteps": lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 100_000,
              "beta_start": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1,
              "beta_end": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1,
              "trained_betas": lambda v: v is None or (isinstance(v, list) and len(v) > 0 and all(
                  isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b < 1 for b in v)),
              "beta_schedule": lambda v: isinstance(v, str), "prediction_type": lambda v: isinstance(v, str)}
    for key, ok in checks.items():
        if key in config and not ok(config[key]):
            raise UserError(f"scheduler config {str(source)!r}: {key} = {config[key]!r} is not valid")
    if config.get("trained_betas") is not None:
        return NoiseSchedule(torch.tensor(config["trained_betas"], dtype=torch.float64))
    kind = config.get("beta_schedule", "linear")
    if kind not in BETA_SCHEDULES:
        raise UserError(f"{str(source)!r}: beta_schedule {kind!r} is not supported; expected one of "
                        f"{', '.join(BETA_SCHEDULES)}")
    schedule_config = ScheduleConfig(BETA_SCHEDULES[kind], int(config.get("num_train_timesteps", 1000)),
                                     float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02)))
    return NoiseSchedule.from_config(schedule_config)


def prediction_type(config: dict[str, Any], source: Path) -> str:
    """eps / x0 / v from diffusers' epsilon / sample / v_prediction."""
    kind = config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise UserError(f"{str(source)!r}: prediction_type {kind!r} is not supported; expected one of "
                        f"{', '.join(PREDICTION_TYPES)}")
    return PREDICTION_TYPES[kind]


def load_unet(unet_dir: Path) -> nn.Module:
    """UNet2DModel.from_pretrained on safetensors weights only."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise UserError(f"loading a diffusers folder needs the diffusers package: {INSTALL_HINT}") from None
    if not any(unet_dir.glob("*.safetensors")):
        raise UserError(f"{str(unet_dir)!r} has no .safetensors weights; only safetensors are loaded (no pickles)")
    try:
        return UNet2DModel.from_pretrained(str(unet_dir), use_safetensors=True).eval()
    except Exception as exc:  # diffusers raises many types for bad folders
        raise UserError(f"cannot load the diffusers UNet in {str(unet_dir)!r}: {type(exc).__name__}: {exc}") from None


FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
EDM_SCHEDULERS = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")


def path_from_config(config: dict[str, Any], source: Path):
    """(schedule or path, prediction type) that a diffusers scheduler config describes (module docstring)."""
    from bench.paths import PathConfig, make_path

    source = Path(config.get("_path", source))
    name = config.get("_class_name", "")
    steps = config.get("num_train_timesteps", 1000)

    def number(key: str, default: float) -> float:
        value = config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"scheduler config {str(source)!r}: {key} = {value!r} is not a number")
        return float(value)

    try:
        if name in FLOW_SCHEDULERS or config.get("use_flow_sigmas") or config.get("prediction_type") == \
                "flow_prediction":
            shift = number("shift", 1.0) if name in FLOW_SCHEDULERS else number("flow_shift", 1.0)
            if config.get("use_dynamic_shifting"):
                raise UserError(f"scheduler config {str(source)!r}: use_dynamic_shifting (Flux's resolution-dependent "
                                "shift) is not supported yet; pass --shift S for a fixed shift")
            return make_path(PathConfig("flow", shift=shift, num_timesteps=int(steps))), "flow"
        if name in EDM_SCHEDULERS:
            if config.get("prediction_type", "epsilon") != "epsilon":
                raise UserError(f"scheduler config {str(source)!r}: EDM prediction_type "
                                f"{config.get('prediction_type')!r} is not supported; expected epsilon (EDM's c_out)")
            path = make_path(PathConfig("ve", sigma_min=number("sigma_min", 0.002), sigma_max=number("sigma_max", 80.0),
                                        sigma_data=number("sigma_data", 0.5)))
            return path, "edm"
    except UserError as exc:
        message = str(exc)
        raise UserError(message if str(source) in message else f"scheduler config {str(source)!r}: {message}") \
            from None
    return schedule_from_config(config, source), prediction_type(config, source)


def load_diffusers(folder: str | Path, device: torch.device | str = "cpu", dataset: str | None = None) -> Denoiser:
    """A Denoiser from a diffusers UNet2DModel folder; the UNet gets the time its scheduler gives it."""
    folder = Path(folder)
    unet_dir = find_unet_dir(folder)
    scheduler_config = read_scheduler_config(folder, unet_dir)
    schedule, prediction = path_from_config(scheduler_config, folder)
    unet = load_unet(unet_dir)
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    info = DenoiserInfo(name=folder.name, image_shape=(int(unet.config.in_channels), int(height), int(width)),
                        num_classes=int(unet.config.num_class_embeds or 0),
                        prediction_type=prediction, dataset=dataset)
    return Denoiser(schedule, info, DiffusersUNet(unet), time_input_kind="index", device=device).to(device)
