"""Device and precision: where the network runs and under which autocast dtype."""

from __future__ import annotations

import torch

from bench.config import PRECISIONS
from bench.errors import UserError


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got {requested!r}")
    return torch.device(requested)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs CUDA; on CPU use fp32 or bf16")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


