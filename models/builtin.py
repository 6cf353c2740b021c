"""The shipped models: every `models/weights/NAME.safetensors` whose `NAME.json` is a model card is model NAME.

Registration reads only the JSON cards; weights are read when a model is loaded. Other files in
the folder (the FID feature extractors and their statistics) have cards without a schedule and
prediction type, and are not models. `digits` is the default model on CPU (fast enough for the
default benchmark on two cores).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from bench import ModelSpec, hookimpl
from models.weights import REQUIRED_CARD_FIELDS, WEIGHT_SUFFIXES

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = "digits"


def _loader(path: Path) -> Callable:
    """load(device) for one weight file, importing the network code only when called."""
    def load(device="cpu"):
        from models.weights import load_denoiser

        return load_denoiser(path, device)
    return load


def read_json(path: Path) -> dict | None:
    """A JSON object from `path`, or None when it is unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_model_card(card: dict | None) -> bool:
    """Whether a JSON object describes a denoiser (not, say, a feature extractor)."""
    return card is not None and all(name in card for name in REQUIRED_CARD_FIELDS)


def describe(card_file: Path) -> str:
    """One line from a model card: its description, dataset and training length."""
    card = read_json(card_file) or {}
    description = card.get("description") or f"{card.get('architecture', '?')} on {card.get('dataset', '?')}"
    steps = card.get("steps_trained")
    return f"{description} [{steps} steps]" if steps else description


def shipped_weights(weights_dir: Path = WEIGHTS_DIR) -> list[Path]:
    """Weight files that have a model card next to them, the default model first."""
    paths = [p for p in sorted(weights_dir.glob("*.safetensors")) if is_model_card(read_json(p.with_suffix(".json")))]
    return sorted(paths, key=lambda p: p.stem != DEFAULT_MODEL)


def opens_path(arg: str) -> bool:
    """Whether `--model ARG` names an existing weight file or a (diffusers) folder."""
    path = Path(arg)
    return path.is_dir() or (path.is_file() and path.suffix in WEIGHT_SUFFIXES)


def load_path(device, arg: str):
    """Load a weight file with its card, or a diffusers folder."""
    from models.weights import load_model_path

    return load_model_path(Path(arg), device)


@hookimpl
def register_models(register):
    for path in shipped_weights():
        card = read_json(path.with_suffix(".json")) or {}
        noise_path = card.get("path") if isinstance(card.get("path"), dict) else {}
        kind = noise_path.get("kind", "vp-discrete")
        register(ModelSpec(path.stem, describe(path.with_suffix(".json")), _loader(path), path=kind,
                           prediction_type=card.get("prediction_type"),
                           shift=noise_path.get("shift", 1.0) if kind == "flow" else None))
    register(ModelSpec("<path>", f"a weight file ({', '.join(WEIGHT_SUFFIXES)}) with its .json card, or a diffusers "
                       "save_pretrained folder", load_path, opens=opens_path))
