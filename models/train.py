"""`python -m bench train`: train a shipped network from a named preset and write weights + model card.

The recipe is seed 002's, done properly: AdamW, linear warm-up then cosine decay, an EMA of the
weights (the EMA weights are what is saved), bf16 autocast on CUDA only, label dropout for
classifier-free guidance, periodic checkpoints with every RNG state, and --resume. The loss is
the MSE between eps and the network's prediction, with t uniform in 0..T-1.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.denoiser import time_input
from bench.errors import UserError
from bench.schedule import NoiseSchedule, ScheduleConfig
from models.networks import build_network, network_config, time_input_kind

WEIGHTS_DIR = Path(__file__).parent / "weights"
LOSS_READ_EVERY = 50  # steps between reads of the loss: reading it makes the host wait for the device
CHECKPOINT_DIR = Path("checkpoints")


@dataclass(frozen=True)
class TrainPreset:
    """Everything that defines a training run, apart from the command-line overrides."""

    name: str
    description: str
    dataset: str
    architecture: str
    network: dict[str, Any]
    conditional: bool = False
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    steps: int = 20_000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 500
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    label_dropout: float = 0.1
    grad_clip: float = 1.0
    checkpoint_every: int = 2_000
    notes: str = ""
    prediction_type: str = "eps"  # what the network is trained to output: eps, or v (Salimans & Ho 2022)
    timestep_sampling: str = "uniform"  # how training t is drawn: uniform in 0..T-1, or "logit-normal" (SD3, below)
    path: str = "vp-discrete"           # the noise path (bench.paths); "flow": rectified flow, target u = eps - x_0


_CPU_NOTE = "trained on CPU, reduced configuration (no GPU was available); a GPU run of more steps will do better"

PRESETS: dict[str, TrainPreset] = {p.name: p for p in (
    TrainPreset("digits", "Unconditional seed-unet (8/16/32 channels) on sklearn 8x8 digits; fast enough for the "
                "default CPU benchmark", "digits", "seed-unet",
                {"in_channels": 1, "channels": (8, 16, 32), "embed_dim": 32, "image_size": 8},
                steps=15_000, batch_size=128, lr=2e-3, warmup_steps=500, checkpoint_every=2_500),
    TrainPreset("digits-cond", "Class-conditional ddpm-unet (16/32 channels, attention at 4x4) on sklearn 8x8 "
                "digits, label dropout 0.15 (null label 10) for classifier-free guidance; the CPU-sized model for "
                "conditional and guided runs", "digits", "ddpm-unet",
                {"in_channels": 1, "base_channels": 16, "channel_mults": (1, 2), "num_res_blocks": 1,
                 "image_size": 8, "num_classes": 10},
                conditional=True, steps=4_000, batch_size=128, lr=2e-3, warmup_steps=300, ema_decay=0.999,
                label_dropout=0.15, checkpoint_every=1_000),
    TrainPreset("fashion-mnist", "Unconditional ddpm-unet (16/32/32 channels, attention at 7x7) on Fashion-MNIST "
                "28x28, v-prediction (the recipe of the README's CPU pilots)",
                "fashion-mnist", "ddpm-unet",
                {"in_channels": 1, "base_channels": 16, "channel_mults": (1, 2, 2), "num_res_blocks": 1,
                 "image_size": 28, "num_classes": 0},
                steps=40_000, batch_size=32, lr=2e-3, warmup_steps=200, ema_decay=0.999, checkpoint_every=2_000,
                notes=_CPU_NOTE, prediction_type="v"),
    TrainPreset("fashion-mnist-cond", "Class-conditional ddpm-unet (16/32/32 channels, attention at 7x7) on "
                "Fashion-MNIST 28x28, v-prediction, label dropout 0.1 (null label 10) for classifier-free guidance",
                "fashion-mnist", "ddpm-unet",
                {"in_channels": 1, "base_channels": 16, "channel_mults": (1, 2, 2), "num_res_blocks": 1,
                 "image_size": 28, "num_classes": 10},
                conditional=True, steps=30_000, batch_size=32, lr=2e-3, warmup_steps=200, ema_decay=0.999,
                checkpoint_every=2_000, notes=_CPU_NOTE, prediction_type="v"),
    TrainPreset("fashion-mnist-context", "Class-conditional context-unet (seed 002, 16 features) on Fashion-MNIST "
                "28x28, label dropout 0.1 (null label 10); not shipped: 3,000 CPU steps gave weak samples",
                "fashion-mnist", "context-unet",
                {"in_channels": 1, "n_feat": 16, "num_classes": 10, "image_size": 28},
                conditional=True, steps=3_000, batch_size=32, lr=2e-3, warmup_steps=200, ema_decay=0.995,
                checkpoint_every=250, notes=_CPU_NOTE),
    TrainPreset("digits-flow", "Unconditional ddpm-unet (16/32 channels, attention at 4x4) on sklearn 8x8 digits "
                "trained with the rectified-flow objective (x_t = (1 - t) x_0 + t eps, target u = eps - x_0, t uniform "
                "in (0, 1)): the shipped flow-matching model", "digits", "ddpm-unet",
                {"in_channels": 1, "base_channels": 16, "channel_mults": (1, 2), "num_res_blocks": 1,
                 "image_size": 8, "num_classes": 0},
                steps=4_000, batch_size=128, lr=2e-3, warmup_steps=300, ema_decay=0.999, checkpoint_every=500,
                prediction_type="flow", path="flow"),
    TrainPreset("smoke-flow", "A few steps of a tiny ddpm-unet on digits with the flow objective (used by the tests)",
                "digits", "ddpm-unet", {"in_channels": 1, "base_channels": 8, "channel_mults": (1,),
                                        "num_res_blocks": 1, "image_size": 8, "num_classes": 0},
                steps=6, batch_size=16, warmup_steps=2, checkpoint_every=3, prediction_type="flow", path="flow"),
    TrainPreset("smoke", "A few steps of a tiny seed-unet on digits (used by the tests)", "digits", "seed-unet",
                {"in_channels": 1, "channels": (4, 8, 8), "embed_dim": 8, "image_size": 8,
                 "num_timesteps": 50},
                schedule=ScheduleConfig("linear", 50), steps=6, batch_size=16, warmup_steps=2, checkpoint_every=3),
)}


# --------------------------------------------------------------------------- small pieces

# Preset fields `train --set KEY=VALUE` may override (the pilot runs of a recipe search); `net.KEY`
# overrides a field of the network config. Everything else is fixed by the preset.
SETTABLE = {"warmup_steps": int, "weight_decay": float, "ema_decay": float, "label_dropout": float,
            "grad_clip": float, "checkpoint_every": int, "prediction_type": str, "timestep_sampling": str}
NET_SETTABLE = {"base_channels": int, "num_res_blocks": int, "dropout": float, "channel_mults": "ints",
                "attention_heads": int}
PREDICTION_TYPES = ("eps", "x0", "v", "flow")
TIMESTEP_SAMPLINGS = ("uniform", "logit-normal")


def apply_overrides(preset: TrainPreset, items: list[str]) -> TrainPreset:
    """The preset with `KEY=VALUE` overrides applied (a UserError names a bad key or value)."""
    fields: dict[str, Any] = {}
    network = dict(preset.network)
    seen: set[str] = set()
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not raw:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set ema_decay=0.9995")
        target, name = (network, key[4:]) if key.startswith("net.") else (fields, key)
        kinds = NET_SETTABLE if target is network else SETTABLE
        if name not in kinds:
            raise UserError(f"--set {key}: not a settable key; expected one of "
                            f"{', '.join([*SETTABLE, *('net.' + k for k in NET_SETTABLE)])}")
        if key in seen:
            raise UserError(f"--set {key} given twice")
        seen.add(key)
        kind = kinds[name]
        try:
            value = tuple(int(v) for v in raw.split(",")) if kind == "ints" else kind(raw)
        except ValueError:
            expected = "comma-separated integers" if kind == "ints" else kind.__name__
            raise UserError(f"--set {key}={raw!r}: expected {expected}") from None
        if isinstance(value, float) and not math.isfinite(value) or isinstance(value, (int, float)) and value < 0:
            raise UserError(f"--set {key}={raw!r}: expected a finite number >= 0")
        target[name] = value
    if fields.get("prediction_type", preset.prediction_type) not in PREDICTION_TYPES:
        raise UserError(f"--set prediction_type: expected one of {', '.join(PREDICTION_TYPES)}")
    if fields.get("timestep_sampling", preset.timestep_sampling) not in TIMESTEP_SAMPLINGS:
        raise UserError(f"--set timestep_sampling: expected one of {', '.join(TIMESTEP_SAMPLINGS)}")
    if not 0 <= fields.get("ema_decay", preset.ema_decay) < 1:
        raise UserError("--set ema_decay: expected a number in [0, 1)")
    network_config(preset.architecture, network)  # unknown or inconsistent network fields fail here
    return dataclasses.replace(preset, network=network, **fields)



def default_out(preset: TrainPreset) -> Path:
    """Where a preset's weights go unless --out says otherwise: models/weights/PRESET.safetensors."""
    return WEIGHTS_DIR / f"{preset.name}.safetensors"


def get_preset(name: str) -> TrainPreset:
    """The named preset, or a UserError listing them."""
    if name not in PRESETS:
        raise UserError(f"unknown training preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]


def resolve_device(device: str) -> torch.device:
    """'auto' means CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but CUDA is not available; use --device cpu")
    return torch.device(device)


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to base_lr over warmup_steps, then cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for ema_p, p in zip(ema.parameters(), model.parameters(), strict=True):
        ema_p.lerp_(p, 1 - decay)
    for ema_b, b in zip(ema.buffers(), model.buffers(), strict=True):
        ema_b.copy_(b)


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA decay, ramped up at the start so the EMA does not remember the random init."""
    return min(decay, (1 + step) / (10 + step))


def load_training_data(preset: TrainPreset, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The preset's training split in [-1, 1], checked against the network's image size."""
    from models.data import load_dataset

    images, labels = load_dataset(preset.dataset, "train", data_dir)
    size = preset.network.get("image_size")
    if size is not None and images.shape[-1] != size:
        raise UserError(f"preset {preset.name!r} expects {size}x{size} images, dataset {preset.dataset!r} "
                        f"has {images.shape[-2]}x{images.shape[-1]}")
    return images.float().contiguous(), labels.long()


@dataclass
class TrainState:
    """What a checkpoint holds besides the preset: networks, optimizer, counters, RNG states."""

    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0
    wall_time_s: float = 0.0
    recent_losses: list[float] = field(default_factory=list)


def save_checkpoint(state: TrainState, path: Path, preset_name: str, overrides: tuple[str, ...] = ()) -> None:
    """Write a resumable checkpoint atomically (tmp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"preset": preset_name, "overrides": list(overrides), "step": state.step,
               "wall_time_s": state.wall_time_s,
               "model": state.model.state_dict(), "ema": state.ema.state_dict(),
               "optimizer": state.optimizer.state_dict(), "generator": state.generator.get_state(),
               "torch_rng": torch.get_rng_state(), "recent_losses": torch.tensor(state.recent_losses),
               "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(state: TrainState, path: Path, preset_name: str, overrides: tuple[str, ...] = ()) -> None:
    """Restore `state` from a checkpoint written by save_checkpoint (tensors only, no code)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {str(path)!r} does not exist") from None
    except Exception as exc:
        raise UserError(f"cannot read checkpoint {str(path)!r}: {type(exc).__name__}: {exc}") from None
    if payload.get("preset") != preset_name:
        raise UserError(f"checkpoint {str(path)!r} is for preset {payload.get('preset')!r}, not {preset_name!r}")
    if list(payload.get("overrides", [])) != list(overrides):
        raise UserError(f"checkpoint {str(path)!r} was trained with --set {payload.get('overrides', [])}, not "
                        f"{list(overrides)}; resume with the same --set options")
    state.model.load_state_dict(payload["model"])
    state.ema.load_state_dict(payload["ema"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.generator.set_state(payload["generator"])
    torch.set_rng_state(payload["torch_rng"])
    if payload["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    state.step = int(payload["step"])
    state.wall_time_s = float(payload["wall_time_s"])
    state.recent_losses = [float(v) for v in payload["recent_losses"]]


# --------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class RunConfig:
    """A preset with the command-line overrides applied."""

    preset: TrainPreset
    steps: int
    batch_size: int
    lr: float
    seed: int
    device: torch.device
    out: Path
    checkpoint: Path
    data_dir: str | None
    compile: bool = False                # torch.compile the training forward pass
    time_limit_s: float | None = None    # checkpoint and stop cleanly before this much wall time
    overrides: tuple[str, ...] = ()      # the --set KEY=VALUE items applied to the preset


def training_target(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor,
                    prediction_type: str) -> torch.Tensor:
    """What the network learns to output: eps, x0, or v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022).

    The inverse of bench.denoiser.eps_from_prediction. Why v: the clean image implied by a v network,
    x0 = sqrt(a) x_t - sqrt(1 - a) v, carries its error at most 1:1, while an eps network's
    x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) multiplies it by sqrt((1 - a) / a), about 160 at t = T-1;
    short (CPU) training leaves eps networks too imprecise at high noise and their samples saturate.
    """
    a = alpha_bar_t.to(x0.dtype).view(-1, *[1] * (x0.dim() - 1))
    if prediction_type == "eps":
        return eps
    if prediction_type == "x0":
        return x0
    if prediction_type == "v":
        return a.sqrt() * eps - (1 - a).sqrt() * x0
    raise UserError(f"unknown prediction type {prediction_type!r}; expected one of eps, x0, v")


def sample_train_timesteps(kind: str, num_timesteps: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """Training timesteps: uniform in 0..T-1, or logit-normal (Esser et al. 2024, SD3: t/T = sigmoid(u),
    u ~ N(0, 1), which puts more of the batch at middle noise levels and fewer at the ends)."""
    if kind == "uniform":
        return torch.randint(num_timesteps, (batch,), generator=gen, device=gen.device)
    u = torch.randn(batch, generator=gen, device=gen.device)
    return (torch.sigmoid(u) * num_timesteps).long().clamp_(0, num_timesteps - 1)


def training_step(state: TrainState, run: RunConfig, schedule: NoiseSchedule, images: torch.Tensor,
                  labels: torch.Tensor, time_kind: str, forward: nn.Module | None = None) -> torch.Tensor:
    """One optimizer step on a random batch; returns the loss as a detached tensor (no host sync).

    Randomness comes from state.generator, which lives on the training device, as do `images` and
    `labels`: batch indices, timesteps, noise and label dropout are drawn there, with no host work.
    `forward` is the (possibly compiled) model to call; it defaults to state.model.
    """
    preset, gen = run.preset, state.generator
    device = gen.device
    flow = preset.path == "flow"
    index = torch.randint(images.shape[0], (run.batch_size,), generator=gen, device=device)
    t = _flow_times(preset.timestep_sampling, run.batch_size, gen) if flow else \
        sample_train_timesteps(preset.timestep_sampling, schedule.num_timesteps, run.batch_size, gen)
    eps = torch.randn((run.batch_size, *images.shape[1:]), generator=gen, device=device)
    cond = None
    if preset.conditional:
        drop = torch.rand(run.batch_size, generator=gen, device=device) < preset.label_dropout
        cond = torch.where(drop, torch.full_like(labels[index], preset.network["num_classes"]), labels[index])
        cond = cond.to(run.device)
    x0, t, eps = images[index].to(run.device), t.to(run.device), eps.to(run.device)
    if flow:  # rectified flow (Liu et al. 2023; Lipman et al. 2023; SD3): x_t = (1 - t) x_0 + t eps, u = eps - x_0
        from bench.paths import TIME_RESOLUTION

        tb = t.view(-1, *[1] * (x0.dim() - 1))
        x_t, time_arg, target = (1 - tb) * x0 + tb * eps, t * TIME_RESOLUTION, eps - x0
    else:
        x_t = schedule.add_noise(x0, t, eps)
        time_arg = time_input(t, schedule.num_timesteps, time_kind)
        target = training_target(x0, eps, schedule.alpha_bar.to(x0.device)[t], preset.prediction_type)
    for group in state.optimizer.param_groups:
        group["lr"] = lr_at(state.step, run.lr, preset.warmup_steps, run.steps)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=run.device.type == "cuda"):
        # `is None`, not `or`: torch's compiled module refuses to be asked for a truth value
        prediction = (state.model if forward is None else forward)(x_t, time_arg, cond)
    loss = F.mse_loss(prediction.float(), target)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(state.model.parameters(), preset.grad_clip)
    state.optimizer.step()
    update_ema(state.ema, state.model, ema_decay_at(state.step, preset.ema_decay))
    state.step += 1
    return loss.detach()


def _flow_times(kind: str, batch: int, gen: torch.Generator) -> torch.Tensor:
    """Flow-matching training times in (0, 1): uniform, or logit-normal (SD3: t = sigmoid(u), u ~ N(0, 1))."""
    if kind == "logit-normal":
        return torch.sigmoid(torch.randn(batch, generator=gen, device=gen.device))
    return torch.rand(batch, generator=gen, device=gen.device)


def make_state(run: RunConfig) -> TrainState:
    """Fresh model, EMA copy, AdamW and data generator for a run, seeded by run.seed."""
    torch.manual_seed(run.seed)
    model = build_network(run.preset.architecture, run.preset.network).to(run.device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.lr, weight_decay=run.preset.weight_decay)
    return TrainState(model, ema, optimizer, torch.Generator(device=run.device).manual_seed(run.seed))


def command_line(run: RunConfig) -> str:
    """The command that reproduces this run from scratch."""
    parts = ["python", "-m", "bench", "train", "--preset", run.preset.name, "--steps", str(run.steps),
             "--batch-size", str(run.batch_size), "--lr", str(run.lr), "--seed", str(run.seed)]
    for item in run.overrides:
        parts += ["--set", item]
    if run.out != default_out(run.preset):
        parts += ["--out", str(run.out)]
    return shlex.join(parts)


def write_weights(state: TrainState, run: RunConfig, schedule_config: ScheduleConfig, images: torch.Tensor) -> Path:
    """Save the EMA weights and the model card."""
    from models.weights import make_card, save_weights

    preset = run.preset
    final_loss = sum(state.recent_losses) / max(1, len(state.recent_losses))
    device_name = torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "cpu"
    card = make_card(
        name=run.out.stem, architecture=preset.architecture,
        network_config=network_config(preset.architecture, preset.network), dataset=preset.dataset,
        image_shape=tuple(images.shape[1:]), num_classes=preset.network.get("num_classes", 0) if preset.conditional
        else 0, schedule=schedule_config, prediction_type=preset.prediction_type,
        time_input=time_input_kind(preset.architecture),
        description=preset.description, preset=preset.name, steps_trained=state.step,
        final_loss=round(final_loss, 6), wall_time_s=round(state.wall_time_s, 1), device=device_name,
        torch_version=torch.__version__, command=command_line(run),
        **({"path": {"kind": preset.path, "shift": 1.0}} if preset.path != "vp-discrete" else {}),
        training={"batch_size": run.batch_size, "lr": run.lr, "warmup_steps": preset.warmup_steps,
                  "lr_decay": "cosine", "optimizer": "AdamW", "weight_decay": preset.weight_decay,
                  "ema_decay": preset.ema_decay, "label_dropout": preset.label_dropout if preset.conditional else 0.0,
                  "grad_clip": preset.grad_clip, "timestep_sampling": preset.timestep_sampling,
                  "overrides": list(run.overrides), "threads": torch.get_num_threads(), "seed": run.seed,
                  "bf16_autocast": run.device.type == "cuda",
                  "saved_weights": "EMA"},
        notes=preset.notes if run.device.type == "cpu" else "")
    return save_weights(state.ema, run.out, card)


def train(run: RunConfig, resume: Path | None = None) -> Path:
    """Train `run` (optionally resuming from a checkpoint) and return the weights path."""
    from tqdm import tqdm

    preset = run.preset
    schedule_config = preset.schedule
    schedule = NoiseSchedule.from_config(schedule_config)
    images, labels = load_training_data(preset, run.data_dir)
    images, labels = images.to(run.device), labels.to(run.device)  # loaded onto the device once
    time_kind = time_input_kind(preset.architecture)
    state = make_state(run)
    if resume is not None:
        load_checkpoint(state, resume, preset.name, run.overrides)
    state.model.train()
    forward = torch.compile(state.model) if run.compile else state.model
    bar = tqdm(total=run.steps, initial=state.step, desc=f"train {preset.name}", mininterval=5, dynamic_ncols=True)
    session_start = time.perf_counter()
    started = session_start - state.wall_time_s
    pending: list[torch.Tensor] = []  # losses still on the device; read in one sync every LOSS_READ_EVERY steps

    def read_losses() -> None:
        if pending:
            state.recent_losses = (state.recent_losses + torch.stack(pending).tolist())[-200:]
            pending.clear()
            bar.set_postfix(loss=f"{sum(state.recent_losses) / len(state.recent_losses):.4f}", refresh=False)

    def save() -> None:
        read_losses()
        state.wall_time_s = time.perf_counter() - started
        save_checkpoint(state, run.checkpoint, preset.name, run.overrides)
        write_weights(state, run, schedule_config, images)

    first_step = state.step
    while state.step < run.steps:
        pending.append(training_step(state, run, schedule, images, labels, time_kind, forward))
        bar.update(1)
        if len(pending) >= LOSS_READ_EVERY:
            read_losses()
        if state.step % preset.checkpoint_every == 0 or state.step == run.steps:
            save()
        elif run.time_limit_s is not None:
            elapsed = time.perf_counter() - session_start
            per_step = elapsed / (state.step - first_step)
            if elapsed + time_limit_reserve(run.time_limit_s, per_step) >= run.time_limit_s:
                save()
                bar.close()
                print(f"time limit: stopped at step {state.step} of {run.steps} after {elapsed / 60:.1f} min; "
                      f"checkpoint {run.checkpoint}; continue with the same command plus --resume {run.checkpoint}")
                return run.out
    bar.close()
    read_losses()
    state.wall_time_s = time.perf_counter() - started
    return write_weights(state, run, schedule_config, images)


def time_limit_reserve(limit_s: float, seconds_per_step: float) -> float:
    """Seconds kept free before --time-limit for the last steps and the checkpoint: 5% of the limit
    (at most a minute) plus two steps."""
    return min(60.0, 0.05 * limit_s) + 2 * seconds_per_step


# --------------------------------------------------------------------------- sample grids


@torch.no_grad()
def sample_grid(denoiser, path: str | Path, num_images: int = 64, seed: int = 0, nrow: int = 8) -> Path:
    """A PNG grid of `num_images` samples from 1000-step (full-schedule) ancestral DDPM.

    Conditional models get labels 0, 1, 2, ... in turn, so each grid column (nrow = num_classes) is a class.
    """
    from torchvision.utils import save_image

    from bench.plugins import load_registry
    from bench.sampling import sample

    ddpm = load_registry().sampler("ddpm")
    params = ddpm.resolve_params()
    timesteps = ddpm.timesteps(denoiser.schedule, None, params)
    samples = sample(ddpm, params, denoiser, timesteps, torch.arange(num_images), seed=seed)
    path = Path(path)
    save_image((samples.clamp(-1, 1) + 1) / 2, path, nrow=denoiser.num_classes or nrow, padding=1)
    return path


# --------------------------------------------------------------------------- CLI


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """Apply the command-line overrides to the named preset."""
    overrides = tuple(getattr(args, "set", None) or ())
    preset = apply_overrides(get_preset(args.preset), list(overrides))
    out = Path(args.out) if args.out else default_out(preset)
    checkpoint = Path(args.checkpoint) if args.checkpoint else CHECKPOINT_DIR / f"{out.stem}.ckpt.pt"
    for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise UserError(f"--lr must be a positive number, got {args.lr}")
    if not -(2**63) <= args.seed < 2**64:  # what torch.manual_seed accepts
        raise UserError(f"--seed must be between {-(2**63)} and {2**64 - 1}, got {args.seed}")
    if args.threads < 0:
        raise UserError(f"--threads must be >= 0 (0: torch's choice), got {args.threads}")
    if out.suffix != ".safetensors":
        raise UserError(f"--out {str(out)!r}: weights are written as .safetensors; name a file ending in .safetensors")
    if args.time_limit is not None and not (math.isfinite(args.time_limit) and args.time_limit > 0):
        raise UserError(f"--time-limit must be a positive number of minutes, got {args.time_limit}")
    return RunConfig(preset, args.steps or preset.steps, args.batch_size or preset.batch_size, args.lr or preset.lr,
                     args.seed, resolve_device(args.device), out, checkpoint, args.data_dir, bool(args.compile),
                     None if args.time_limit is None else 60.0 * args.time_limit, overrides)


def _checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint was saved at, or None when it cannot be read (train() then says why)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception:
        return None


def refuse_overwrite(run: RunConfig, resume: Path | None, force: bool) -> None:
    """Never replace weights, a card or a checkpoint this run did not write, unless --force.

    Resuming may replace the weights its own checkpoint wrote (same preset, same step).
    """
    if force:
        return
    from models.weights import card_path

    existing = [p for p in (run.out, card_path(run.out)) if p.exists()]
    if existing and resume is not None:
        from models.builtin import read_json

        card = read_json(card_path(run.out)) or {}
        if card.get("preset") == run.preset.name and card.get("steps_trained") == _checkpoint_step(resume):
            existing = []
    if existing:
        raise UserError(f"{' and '.join(map(str, existing))} already exist(s) (shipped weights or an earlier run); "
                        "pass --out NEW.safetensors to write elsewhere, or --force to replace them")
    if run.checkpoint.exists() and (resume is None or run.checkpoint.resolve() != resume.resolve()):
        raise UserError(f"checkpoint {str(run.checkpoint)!r} exists from an earlier run; continue it with --resume "
                        f"{run.checkpoint}, or pass --checkpoint NEW.ckpt.pt, or --force to replace it")


def run_train(args: argparse.Namespace) -> int:
    """Entry point of `bench train`."""
    run = run_config_from_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    refuse_overwrite(run, Path(args.resume) if args.resume else None, args.force)
    path = train(run, Path(args.resume) if args.resume else None)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Add `train` to the CLI's subcommands."""
    parser = subparsers.add_parser("train", help="train a built-in network from a preset and write weights + card",
                                   description="Train a network from a preset: "
                                   + "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()))
    parser.add_argument("--preset", required=True, help=f"one of {', '.join(PRESETS)}")
    parser.add_argument("--steps", type=int, default=None, help="total optimizer steps (default: the preset's)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default: the preset's)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the preset's)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--out", default=None, help="weights path (.safetensors; default models/weights/PRESET)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint path (default checkpoints/NAME.ckpt.pt)")
    parser.add_argument("--resume", default=None, help="continue from this checkpoint")
    parser.add_argument("--force", action="store_true", help="replace existing weights, card or checkpoint "
                        "(never done without it)")
    parser.add_argument("--seed", type=int, default=0, help="seed for init, batches, timesteps and noise")
    parser.add_argument("--data-dir", default=None, help="dataset folder (default: the dataset's usual place)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training forward pass")
    parser.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                        help="write a checkpoint and exit cleanly before this many minutes (continue with --resume), "
                        "as under a cluster's wall-clock limit per job")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a preset field for a pilot run (repeatable): " + ", ".join(SETTABLE)
                        + ", or a network field net." + ", net.".join(NET_SETTABLE))
    parser.set_defaults(func=run_train)
    return parser


if __name__ == "__main__":  # python -m models.train GRID.png WEIGHTS.safetensors [NUM_IMAGES]
    import sys

    from models.weights import load_denoiser

    count = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    print(sample_grid(load_denoiser(sys.argv[2]), sys.argv[1], count))
