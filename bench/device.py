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


def compile_network(denoiser) -> bool:
    """Wrap the model's network in torch.compile (static shapes); False when there is no network to compile.

    Compilation happens lazily at the first call of each batch shape, so `warm_up_network` must
    run every shape the timed loop will use before the clock starts.
    """
    if not isinstance(getattr(denoiser, "network", None), torch.nn.Module):
        return False
    denoiser.network = torch.compile(denoiser.network, dynamic=False)
    return True


def warm_up_network(denoiser, batch_rows, autocast: torch.dtype | None) -> float:
    """Call the network once per batch size in `batch_rows` (compiling it if compiled); returns the seconds taken."""
    import time

    device = denoiser.device
    began = time.perf_counter()
    for rows in sorted(set(batch_rows)):
        x = torch.zeros(rows, *denoiser.image_shape, device=device)
        t = denoiser.schedule.t_max  # as samplers pass it (an int on vp-discrete): the same guards as the timed loop
        cond = torch.zeros(rows, dtype=torch.long, device=device) if denoiser.num_classes else None
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            denoiser(x, t, cond)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - began
