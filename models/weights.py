"""Weight files and their model cards: save, load safely, and resolve a `--model` argument.

A model is two files with the same stem: `NAME.safetensors` (the weights, no code) and
`NAME.json` (the model card: architecture, network config, dataset, schedule, prediction
type, time input, and how the weights were made). Legacy PyTorch files (.pt/.pth) are read
only with `torch.load(weights_only=True)`, which refuses any pickle that would run code.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.denoiser import PREDICTION_TYPES, TIME_INPUTS, Denoiser, DenoiserInfo
from bench.errors import UserError
from bench.schedule import NoiseSchedule, ScheduleConfig

CARD_VERSION = 1
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
PICKLE_SUFFIXES = (".pt", ".pth")
REQUIRED_CARD_FIELDS = ("architecture", "network_config", "dataset", "image_shape", "num_classes", "schedule",
                        "prediction_type", "time_input")
# What else a card may hold: provenance written by `bench train`, quality measured afterwards, the noise path.
OPTIONAL_CARD_FIELDS = ("card_version", "name", "description", "preset", "steps_trained", "final_loss",
                        "wall_time_s", "device", "torch_version", "command", "training", "notes", "sample_fid",
                        "cond_acc", "quality", "path", "shift", "pilots")


def card_path(weights_path: str | Path) -> Path:
    """The model card next to a weight file: same stem, `.json`."""
    return Path(weights_path).with_suffix(".json")


def make_card(*, name: str, architecture: str, network_config: Any, dataset: str, image_shape: tuple[int, ...],
              num_classes: int, schedule: ScheduleConfig, prediction_type: str = "eps", time_input: str = "index",
              **provenance: Any) -> dict[str, Any]:
    """A model card dict; `provenance` holds steps_trained, final_loss, wall_time_s, device, command, ..."""
    config = asdict(network_config) if not isinstance(network_config, dict) else dict(network_config)
    card = {"card_version": CARD_VERSION, "name": name, "architecture": architecture, "network_config": config,
            "dataset": dataset, "image_shape": list(image_shape), "num_classes": int(num_classes),
            "schedule": asdict(schedule), "prediction_type": prediction_type, "time_input": time_input}
    card.update({"sample_fid": None, "notes": ""})
    card.update(provenance)
    return card


def save_weights(network: nn.Module | dict[str, torch.Tensor], path: str | Path, card: dict[str, Any]) -> Path:
    """Write `path` (.safetensors) and its JSON card; returns the weights path."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserError(f"weights are saved as .safetensors, got {str(path)!r}")
    state = network.state_dict() if isinstance(network, nn.Module) else network
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_path = card.get("path") if isinstance(card.get("path"), dict) else {}
    path_kind = str(noise_path.get("kind", "vp-discrete"))
    save_file(state, str(path), metadata={"architecture": str(card.get("architecture", "")), "path": path_kind})
    path.chmod(0o644)  # safetensors writes 0600; shipped files must be readable by everyone
    card_path(path).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return path


def read_card(weights_path: str | Path) -> dict[str, Any]:
    """The model card of a weight file, checked for the fields `load_denoiser` needs."""
    path = card_path(weights_path)
    if not path.is_file():
        raise UserError(f"model card {str(path)!r} for weights {str(weights_path)!r} is missing; "
                        "every weight file needs a JSON card with the same stem")
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"model card {str(path)!r} is not valid JSON: {exc}") from None
    missing = [f for f in REQUIRED_CARD_FIELDS if not isinstance(card, dict) or f not in card]
    if missing:
        raise UserError(f"model card {str(path)!r} lacks the fields {', '.join(missing)}")
    if card["prediction_type"] not in PREDICTION_TYPES or card["time_input"] not in TIME_INPUTS:
        raise UserError(f"model card {str(path)!r}: prediction_type must be one of {PREDICTION_TYPES} and "
                        f"time_input one of {TIME_INPUTS}")
    unknown = sorted(set(card) - set(REQUIRED_CARD_FIELDS) - set(OPTIONAL_CARD_FIELDS))
    if unknown:
        raise UserError(f"model card {str(path)!r}: unknown key {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)"
                        if len(unknown) > 1 else "") + f"; a card holds {', '.join(REQUIRED_CARD_FIELDS)} and "
                        f"optionally {', '.join(OPTIONAL_CARD_FIELDS)}")
    _check_card_values(card, path)
    return card


def _is_count(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_card_values(card: dict[str, Any], path: Path) -> None:
    """Field types, and the card's image shape and classes against its own network config."""
    shape = card["image_shape"]
    if not isinstance(shape, list) or len(shape) != 3 or not all(_is_count(v, 1) for v in shape):
        raise UserError(f"model card {str(path)!r}: image_shape must be [channels, height, width] of positive "
                        f"integers, got {shape!r}")
    if not _is_count(card["num_classes"], 0):
        raise UserError(f"model card {str(path)!r}: num_classes must be a non-negative integer, "
                        f"got {card['num_classes']!r}")
    for name in ("network_config", "schedule"):
        if not isinstance(card[name], dict):
            raise UserError(f"model card {str(path)!r}: {name} must be a JSON object, got {card[name]!r}")
    config = card["network_config"]
    expected = {"in_channels": shape[0], "image_size": shape[1] if shape[1] == shape[2] else None}
    if "num_classes" in config or card["num_classes"]:  # labels reach only a network built for them
        expected["num_classes"] = card["num_classes"]
    for name, value in expected.items():
        if (name in config or name == "num_classes") and config.get(name, 0) != value:
            raise UserError(f"model card {str(path)!r}: image_shape {shape} and num_classes {card['num_classes']} "
                            f"disagree with the network config's {name}={config.get(name, '(absent)')!r}; "
                            "the card does not describe these weights")


def _load_pickle_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pt/.pth file, refusing any pickle that is not plain tensors and containers."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code-bearing pickles, others for corrupt files
        raise UserError(f"refusing to load {str(path)!r}: not a plain tensor file that torch.load(weights_only=True) "
                        f"accepts ({type(exc).__name__}); convert it to .safetensors") from None
    if isinstance(state, dict) and isinstance(state.get("ema"), dict):  # a training checkpoint: use the EMA
        state = state["ema"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{str(path)!r} does not hold a state dict of tensors")
    return state


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors in a weight file (.safetensors, or .pt/.pth via weights_only), as a UserError when unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"weight file {str(path)!r} does not exist")
    if path.suffix in PICKLE_SUFFIXES:
        return _load_pickle_state(path)
    if path.suffix != ".safetensors":
        raise UserError(f"{str(path)!r}: unsupported weight file type; expected one of {', '.join(WEIGHT_SUFFIXES)}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"weight file {str(path)!r} is corrupt or truncated: {exc}") from None


def build_from_card(card: dict[str, Any], state: dict[str, torch.Tensor], source: str | Path) -> nn.Module:
    """The card's network with `state` loaded into it; a mismatch is a UserError naming `source`."""
    from models.networks import build_network

    network = build_network(card["architecture"], card["network_config"])
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[:3])
        raise UserError(f"weights {str(source)!r} do not fit a {card['architecture']!r} network with the card's "
                        f"config (another architecture or config?): {detail}") from None
    return network.eval()


def load_denoiser(path: str | Path, device: torch.device | str = "cpu") -> Denoiser:
    """A Denoiser from a weight file and its card, on `device`. Never executes code from the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weight file {str(path)!r} does not exist")
    card = read_card(path)
    network = build_from_card(card, load_state(path), path)
    noise_path = card_path_config(card, card_path(path))
    check_weights_path_kind(path, noise_path.kind)
    known = {f.name for f in dataclasses.fields(ScheduleConfig)}
    unknown = sorted(set(card["schedule"]) - known)
    if unknown:
        raise UserError(f"model card {str(card_path(path))!r}: unknown schedule key {unknown[0]!r}; expected some of "
                        f"{', '.join(sorted(known))}")
    try:
        schedule = NoiseSchedule.from_config(ScheduleConfig(**card["schedule"]))
    except (TypeError, ValueError) as exc:
        raise UserError(f"model card {str(card_path(path))!r}: bad schedule {card['schedule']!r} ({exc})") from None
    if noise_path.kind != "vp-discrete":
        from bench.paths import make_path
        schedule = make_path(noise_path)
    elif card["prediction_type"] in ("flow", "edm"):
        raise UserError(f"model card {str(card_path(path))!r}: prediction_type {card['prediction_type']!r} needs a "
                        "continuous path, but the card has no 'path' (or a vp-discrete one); add "
                        '"path": {"kind": "flow"} (or "ve")')
    info = DenoiserInfo(name=str(card.get("name", path.stem)), image_shape=tuple(card["image_shape"]),
                        num_classes=int(card["num_classes"]), prediction_type=card["prediction_type"],
                        dataset=card["dataset"])
    return Denoiser(schedule, info, network, time_input_kind=card["time_input"], device=device).to(device)


def card_path_config(card: dict[str, Any], source: Path):
    """The card's noise path (bench.paths.PathConfig); cards without one are vp-discrete (every card before it)."""
    from bench.paths import PathConfig

    raw = card.get("path")
    if raw is None:
        return PathConfig("vp-discrete")
    if not isinstance(raw, dict):
        raise UserError(f"model card {str(source)!r}: path must be a JSON object like {{\"kind\": \"flow\", "
                        f"\"shift\": 3.0}}, got {raw!r}")
    known = {f.name for f in dataclasses.fields(PathConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"model card {str(source)!r}: unknown path key {unknown[0]!r}; expected some of "
                        f"{', '.join(sorted(known))}")
    try:
        return PathConfig(**raw)
    except UserError as exc:
        raise UserError(f"model card {str(source)!r}: {exc}") from None
    except TypeError as exc:
        raise UserError(f"model card {str(source)!r}: bad path {raw!r} ({exc})") from None


def check_weights_path_kind(weights: Path, kind: str) -> None:
    """A flow (or VE) network described by a VP card, or the reverse, is an error: the weights file records the
    path it was trained on (safetensors metadata written by `bench train`)."""
    if weights.suffix != ".safetensors":
        return
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get("path")
    except Exception:  # unreadable files are reported by load_state
        return
    if recorded and recorded != kind:
        raise UserError(f"weights {str(weights)!r} were trained on the {recorded} path but their card says {kind}; "
                        "the card does not describe these weights")


def load_model_path(path: Path, device: torch.device | str = "cpu") -> Denoiser:
    """A .safetensors/.pt weight file with its card, or a diffusers folder."""
    if path.is_dir():
        from models.diffusers_adapter import load_diffusers

        return load_diffusers(path, device)
    return load_denoiser(path, device)


def load_model_arg(arg: str, registry, device: torch.device | str = "cpu") -> Denoiser:
    """Resolve `--model`: a registered name, a .safetensors/.pt weight file with a card, or a diffusers folder."""
    if arg in registry.models:
        return registry.model(arg).load(device)
    path = Path(arg)
    if path.is_dir() or path.suffix in WEIGHT_SUFFIXES:
        return load_model_path(path, device)
    names = ", ".join(sorted(registry.models)) or "none"
    raise UserError(f"unknown model {arg!r}: not a registered model, a weight file ({', '.join(WEIGHT_SUFFIXES)}) "
                    f"or a diffusers folder. Registered models: {names}")
