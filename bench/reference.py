"""Reference solutions: where the probability-flow ODE takes each image's x_T, for the `ref-error` metric.

Solver papers judge deterministic samplers by the distance of their result to the true ODE solution from
the same starting noise; with common random numbers that distance is per image, cheap and low-variance.
The reference for image i starts from the same x_T the harness gives every sampler (bench.noise), so it
does not depend on batch size or process count.

How it is computed (`REFERENCE_SOLVER`): DPM-Solver++(3M) on a 1000-time log-SNR plan (on a T = 1000
discrete-time model that is every trained timestep, the finest grid such a model defines), the
highest-order multistep solver here whose order we measured on every path (bench.orders); on the exact
single-Gaussian oracle the closed-form ODE map itself. Its convergence is shown on the first
`CONVERGENCE_IMAGES` images: the same solver at half the plan times must agree to `CONVERGENCE_TOLERANCE`
RMS per pixel; for a third-order method the reference's own error is then about a seventh of that
difference. The measured difference is recorded in config.json.

Cached in `<results root>/.references/` by a fingerprint of the model (network weights, path, prediction),
the seed, the number of images and the solver: `--resume` and later runs on the same model and seed reuse
it, a changed model is a cache miss. Its cost (seconds; `network_calls`, this rank's image-calls of the solves
and the convergence check; `network_calls_per_image` of the solve alone) is recorded in config.json under
`reference`, never inside any row's wall_s.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

REFERENCE_SOLVER = ("dpm-solver++", {"order": 3, "plan": "logsnr"}, 1000)
CONVERGENCE_STEPS = 500
CONVERGENCE_IMAGES = 64
CONVERGENCE_TOLERANCE = 1e-2  # RMS per pixel in [-1, 1] images (measured on digits: 5e-3, so the reference is
                              # good to ~7e-4, below the 2e-2 of the best 20-step solver there)
CACHE_DIR = ".references"


def model_fingerprint(denoiser) -> str:
    """A hash of what determines the ODE: the network's weights (or the oracle's mixture), path and prediction."""
    digest = hashlib.sha256()
    info = denoiser.info
    digest.update(json.dumps({"path": info.path, "shift": info.shift, "prediction": info.prediction_type,
                              "shape": list(info.image_shape), "schedule": repr(denoiser.schedule)},
                             sort_keys=True).encode())
    network = getattr(denoiser, "network", None)
    tensors = []
    if isinstance(network, torch.nn.Module):
        tensors = [v for _, v in sorted(network.state_dict().items())]
    elif hasattr(denoiser, "mixture"):
        tensors = [denoiser.mixture.means, denoiser.mixture.variances, denoiser.mixture.weights]
    for tensor in tensors:
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def exact_map_available(denoiser) -> bool:
    """Whether the model is the single-Gaussian oracle, whose ODE map is closed form."""
    mixture = getattr(denoiser, "mixture", None)
    return mixture is not None and mixture.means.shape[0] == 1 and not denoiser.num_classes


class References:
    """Reference solutions of one rank's batches, keyed by the batch's first image index."""

    def __init__(self, rows: dict[int, torch.Tensor], info: dict):
        self.rows = rows
        self.info = info

    def for_images(self, start: int, count: int) -> torch.Tensor:
        return self.rows[start][:count]


def _solve(registry, denoiser, indices: torch.Tensor, steps: int, seed: int, classes, guidance) -> torch.Tensor:
    from bench.sampling import batch_noise, sample

    name, params, _ = REFERENCE_SOLVER
    spec = registry.samplers[name]
    resolved = spec.resolve_params(params)
    timesteps = spec.timesteps(denoiser.schedule, steps, resolved)
    noise = batch_noise(seed, indices, denoiser.image_shape, denoiser.device)
    return sample(spec, resolved, denoiser, timesteps, indices, noise=noise, classes=classes, guidance=guidance)


def _exact(denoiser, indices: torch.Tensor, seed: int) -> torch.Tensor:
    from bench.sampling import batch_noise

    x_T = batch_noise(seed, indices, denoiser.image_shape, denoiser.device, torch.float64).initial()
    schedule = denoiser.schedule
    return denoiser.mixture.exact_ode_map(x_T, schedule.alpha_bar_at(schedule.t_max), 1.0).float()


def _classes_key(classes) -> str:
    """The --classes of a conditional run in the cache key (the labels decide the ODE solution), short."""
    if classes is None:
        return ""
    text = ".".join(str(int(k)) for k in classes)
    return f"-c{text}" if len(text) <= 24 else f"-c{hashlib.sha1(text.encode()).hexdigest()[:12]}"


def compute_references(registry, denoiser, batches: list[tuple[int, int]], seed: int, num_samples: int,
                       classes=None, guidance=None, cache_root: Path | None = None) -> References:
    """The reference solution of every image in `batches` (this rank's), from the cache when it has them."""
    exact = exact_map_available(denoiser)
    name, params, steps = REFERENCE_SOLVER
    steps = min(steps, denoiser.num_timesteps)
    solver = "exact ODE map (single Gaussian)" if exact else f"{name} {params} at {steps} plan times"
    key = (f"{model_fingerprint(denoiser)}-s{seed}-n{num_samples}-w{guidance}{_classes_key(classes)}-"
           f"{'exact' if exact else steps}")
    cache = None if cache_root is None else Path(cache_root) / CACHE_DIR / f"{key}.npy"
    began = time.perf_counter()
    rows: dict[int, torch.Tensor] = {}
    if cache is not None and cache.is_file():
        try:
            saved = np.load(cache, allow_pickle=False)
            if saved.shape[0] == num_samples and np.isfinite(saved).all():
                flat = torch.from_numpy(saved)
                rows = {start: flat[start:stop].view(stop - start, *denoiser.image_shape) for start, stop in batches}
        except (ValueError, OSError):
            rows = {}
    hit = bool(rows)
    calls = 0
    if not hit:
        with torch.no_grad():
            for start, stop in batches:
                indices = torch.arange(start, stop)
                x = _exact(denoiser, indices, seed) if exact else _solve(registry, denoiser, indices, steps, seed,
                                                                         classes, guidance)
                rows[start] = x.detach().to("cpu", torch.float32)
                calls += 0 if exact else steps * (stop - start)
    seconds = time.perf_counter() - began
    info = {"solver": solver, "cache": str(cache) if cache else None, "cache_hit": hit, "seconds": round(seconds, 3),
            "network_calls_per_image": 0 if exact or hit else steps, "fingerprint": key}
    if not hit and not exact and batches:
        start, stop = batches[0]
        count = min(CONVERGENCE_IMAGES, stop - start)
        with torch.no_grad():
            finer = _solve(registry, denoiser, torch.arange(start, start + count), CONVERGENCE_STEPS, seed, classes,
                           guidance).to("cpu", torch.float32)
        difference = float((finer - rows[start][:count]).pow(2).mean().sqrt())
        calls += CONVERGENCE_STEPS * count
        info.update(convergence={"steps": CONVERGENCE_STEPS, "images": count, "rms_difference": difference,
                                 "tolerance": CONVERGENCE_TOLERANCE, "converged": difference <= CONVERGENCE_TOLERANCE},
                    seconds=round(time.perf_counter() - began, 3))
    info["network_calls"] = calls  # this rank's image-calls: the solves and the convergence check
    if cache is not None and not hit and sum(stop - start for start, stop in batches) == num_samples:
        cache.parent.mkdir(parents=True, exist_ok=True)
        flat = torch.cat([rows[start].reshape(stop - start, -1) for start, stop in sorted(batches)]).numpy()
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, flat)
        tmp.replace(cache)
    return References(rows, info)
