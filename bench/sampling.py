"""The one sampling seam: per-image noise and labels, the guidance wrapper, and the sampler call.

The harness, the tests and the training command's sample grids all sample through `sample`, so
image i gets the same x_T, the same step noise and the same class label whoever asks, whatever
the batch it lands in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from bench.denoiser import x0_from_eps
from bench.errors import UserError
from bench.noise import NoiseSource, StepNoise
from bench.registry import AdaptiveSample


def image_labels(image_indices: torch.Tensor, classes: Sequence[int] | None) -> torch.Tensor | None:
    """Image i's class label: classes[i mod len(classes)] (balanced), or None for unconditional models."""
    if not classes:
        return None
    table = torch.as_tensor(list(classes), dtype=torch.long)
    return table[torch.as_tensor(image_indices, dtype=torch.long) % len(table)]


class GuidedDenoiser:
    """Classifier-free guidance (Ho & Salimans 2022): eps = (1 + w) eps(x, c) - w eps(x, null).

    The conditional and unconditional rows go through one network call of 2B rows, so a guided
    step costs one call (NFE) but two forward rows per image. The null label is `num_classes`,
    the label the model was trained with under label dropout. diffusers' guidance_scale is 1 + w.
    """

    def __init__(self, denoiser, scale: float):
        self.inner = denoiser
        self.scale = float(scale)
        self.null_label = denoiser.num_classes

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x_t: torch.Tensor, t, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is None:
            raise UserError("guided sampling needs class labels (cond)")
        batch = x_t.shape[0]
        cond = torch.as_tensor(cond, device=x_t.device).long().expand(batch)
        both_t = torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.dim() == 1 else t  # a scalar t stays as given
        both = self.inner(torch.cat([x_t, x_t]), both_t, torch.cat([cond, torch.full_like(cond, self.null_label)]))
        eps_cond, eps_uncond = both[:batch], both[batch:]
        return torch.lerp(eps_uncond, eps_cond, 1.0 + self.scale)  # uncond + (1 + w)(cond - uncond)


class ClippedDenoiser:
    """Clip the predicted x_0 and return the eps consistent with it: x_0 = (x - sqrt(1-a) eps) / sqrt(a),
    clipped, then eps = (x - sqrt(a) x_0) / sqrt(1 - a), so every eps-based sampler uses the clipped x_0.

    'static' clips to the data range [-1, 1] (diffusers' clip_sample); 'dynamic' is Imagen's dynamic
    thresholding (Saharia et al. 2022, Sec. 2.3): s = max(1, the `percentile` quantile of |x_0| per image),
    x_0 -> clip(x_0, -s, s) / s. It wraps guidance, so the guided x_0 is the one clipped, as in Imagen.
    """

    def __init__(self, denoiser, mode: str, percentile: float = 0.995):
        self.inner = denoiser
        self.mode = mode
        self.percentile = float(percentile)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x_t: torch.Tensor, t, cond: torch.Tensor | None = None) -> torch.Tensor:
        eps = self.inner(x_t, t, cond)
        shape = (-1, *[1] * (x_t.dim() - 1))
        seen = self.model_time(t, x_t.shape[0], x_t.device)  # the time the network was evaluated at
        a = self.schedule.alpha_bar_of(seen).to(x_t.dtype).view(shape)
        x0 = x0_from_eps(x_t, eps, a)
        if self.mode == "static":
            x0 = x0.clamp(-1, 1)
        else:
            s = torch.quantile(x0.abs().flatten(1).float(), self.percentile, dim=1).clamp(min=1).to(x0.dtype)
            s = s.view(shape)
            x0 = torch.maximum(torch.minimum(x0, s), -s) / s
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


def batch_noise(seed: int | NoiseSource, image_indices, image_shape: tuple[int, ...],
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> StepNoise:
    """The per-image noise of these images (x_T and every step's fresh noise)."""
    source = seed if isinstance(seed, NoiseSource) else NoiseSource(seed)
    return StepNoise(source, torch.as_tensor(image_indices, dtype=torch.int64), image_shape, device, dtype)


def is_guided(guidance: float | None, num_classes: int) -> bool:
    """Whether a run is classifier-free guided: w is set and nonzero and the model is conditional. A guided
    call is one NFE of two forward rows per image (GuidedDenoiser); the harness's NFE check relies on this."""
    return bool(guidance) and bool(num_classes)


def sample(spec, params: dict[str, Any], denoiser, timesteps: Sequence, image_indices, *,
           seed: int | NoiseSource = 0, classes: Sequence[int] | None = None, guidance: float | None = None,
           callback: Callable | None = None, dtype: torch.dtype = torch.float32,
           noise: StepNoise | None = None, stats: dict | None = None) -> torch.Tensor:
    """Run one registered sampler on the given images and return x_0.

    An adaptive sampler's calls per image (bench.registry.AdaptiveSample) go to `stats["image_nfe"]` when
    `stats` is given.

    `denoiser` may be a counting wrapper (bench.measure.CountingDenoiser); guidance wraps it, so
    the counter sees one call of 2B rows per guided step. `classes` are the labels to cycle
    through (default: every class of a conditional model); `guidance` is w (None or 0: no guidance).
    """
    device = getattr(denoiser, "device", torch.device("cpu"))
    image_indices = torch.as_tensor(image_indices, dtype=torch.int64)
    noise = noise or batch_noise(seed, image_indices, denoiser.image_shape, device, dtype)
    num_classes = getattr(denoiser, "num_classes", 0)
    if classes is None and num_classes:
        classes = range(num_classes)
    labels = image_labels(image_indices, classes if num_classes else None)
    cond = labels.to(device) if labels is not None else None
    model = GuidedDenoiser(denoiser, guidance) if is_guided(guidance, num_classes) else denoiser
    if params.get("clip_x0", "none") != "none":
        model = ClippedDenoiser(model, params["clip_x0"], params.get("clip_percentile", 0.995))
    out = spec.fn(model, noise.initial(), list(timesteps), noise, callback=callback, cond=cond,
                  **spec.sampler_kwargs(params))
    if isinstance(out, AdaptiveSample):
        if stats is not None:
            stats["image_nfe"] = out.nfe
        return out.x0
    return out
