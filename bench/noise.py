"""Per-image, counter-based randomness shared by every sampler.

Image i's initial noise and its noise at step k depend only on (seed, i, k): not on the
batch size, the batch an image lands in, the device, or how many processes share the work.
So every sampler sees the same x_T for the same seed (common random numbers), and image 17
is the same image whatever the batch size.

The generator is SplitMix64 run as a counter-based hash (each 64-bit output gives two
24-bit uniforms), then Box-Muller. It is vectorised over images and steps, so unlike a
stack of per-image `torch.Generator`s it never loops over images in Python, and
`StepNoise` draws a block of steps per call to keep per-step overhead small.
Integer products wrap modulo 2**64, as torch's int64 arithmetic does on CPU and CUDA;
`tests/test_noise.py` pins reference values so a platform where that fails is caught.
"""

from __future__ import annotations

import math

import torch

INITIAL_NOISE_STEP = -1  # the stream used for x_T; sampler steps use 0, 1, 2, ...
STEP_BLOCK = 16          # steps drawn per call by StepNoise


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_STEP = _signed(0xD1B54A32D192ED03)


def _shift_right(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64 values."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser: a bijection on 64-bit integers with full avalanche."""
    return _mix64_(z.clone(), torch.empty_like(z))


def _mix64_(z: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser in place on `z`, using `scratch` for the shifted copy."""
    for shift, multiplier in ((30, _MIX1), (27, _MIX2), (31, None)):
        torch.bitwise_right_shift(z, shift, out=scratch)
        z.bitwise_xor_(scratch.bitwise_and_((1 << (64 - shift)) - 1))
        if multiplier is not None:
            z.mul_(multiplier)
    return z


class NoiseSource:
    """Standard normal noise indexed by (seed, image index, step)."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def normal_steps(self, image_indices: torch.Tensor, shape: tuple[int, ...], steps: list[int],
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """N(0, I) noise of shape (len(steps), len(image_indices), *shape).

        Entry [s, r] depends only on (seed, image_indices[r], steps[s]).
        """
        device = torch.device(device)
        per_image = math.prod(shape)
        n_pairs = (per_image + 1) // 2
        images = torch.as_tensor(image_indices, dtype=torch.int64).to(device).view(1, -1, 1)
        step_ids = torch.as_tensor(steps, dtype=torch.int64, device=device).view(-1, 1, 1)
        image_keys = _mix64(images * _GOLDEN + _mix64(torch.tensor(self.seed, dtype=torch.int64, device=device)))
        keys = _mix64(image_keys + (step_ids + 2) * _STEP)                               # (S, B, 1)
        counters = torch.arange(1, n_pairs + 1, dtype=torch.int64, device=device) * _GOLDEN
        bits = keys + counters                                                            # (S, B, P)
        scratch = torch.empty_like(bits)
        _mix64_(bits, scratch)
        # Written in place into one buffer: at 8x8 the allocations cost as much as the arithmetic.
        out = torch.empty(*bits.shape[:-1], 2 * n_pairs, device=device)
        u1, u2 = out[..., :n_pairs], out[..., n_pairs:]
        torch.bitwise_right_shift(bits, 40, out=scratch)
        u1.copy_(scratch.bitwise_and_((1 << 24) - 1))
        u2.copy_(bits.bitwise_and_(0xFFFFFF))
        out.add_(0.5).mul_(1.0 / (1 << 24))  # 24-bit uniforms in (0, 1): the log below is finite
        radius = u1.log_().mul_(-2.0).sqrt_()
        angle = u2.mul_(2.0 * math.pi)
        cos = torch.cos(angle)
        angle.sin_().mul_(radius)  # second half: r sin(theta)
        radius.mul_(cos)           # first half: r cos(theta)
        return out[..., :per_image].reshape(len(steps), images.shape[1], *shape).to(dtype)

    def normal(self, image_indices: torch.Tensor, shape: tuple[int, ...], step: int,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """N(0, I) noise of shape (len(image_indices), *shape) for one step."""
        return self.normal_steps(image_indices, shape, [step], device, dtype)[0]

    def initial(self, image_indices: torch.Tensor, shape: tuple[int, ...],
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x_T for these images: the same for every sampler given the same seed."""
        return self.normal(image_indices, shape, INITIAL_NOISE_STEP, device, dtype)


class StepNoise:
    """What a sampler receives: `noise(step)` gives this batch's fresh noise for loop index `step`."""

    def __init__(self, source: NoiseSource, image_indices: torch.Tensor, shape: tuple[int, ...],
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.source = source
        self.image_indices = torch.as_tensor(image_indices, dtype=torch.int64)
        self.shape = tuple(shape)
        self.device = device
        self.dtype = dtype
        self._block_start = None
        self._block: torch.Tensor | None = None
        self.draws = 0  # fresh-noise draws the sampler made: > 0 means it is stochastic (bench.jobs, ref-error)

    def __call__(self, step: int) -> torch.Tensor:
        """Noise for loop index `step` (0 for the first step) of this batch."""
        self.draws += 1
        if self._block is None or not self._block_start <= step < self._block_start + STEP_BLOCK:
            self._block_start = step
            steps = list(range(step, step + STEP_BLOCK))
            self._block = self.source.normal_steps(self.image_indices, self.shape, steps, self.device, self.dtype)
        return self._block[step - self._block_start]

    def initial(self) -> torch.Tensor:
        """x_T for this batch."""
        return self.source.initial(self.image_indices, self.shape, self.device, self.dtype)
