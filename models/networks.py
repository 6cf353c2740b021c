"""The networks shipped with the benchmark, each with a frozen config, built by `build_network`.

* `seed-unet`: the small U-Net of seed 000 (integer time index into an nn.Embedding).
* `context-unet`: the class-conditional U-Net of seed 002 (time as a float t/T; the class
  embedding multiplies a feature map, the time embedding adds to it).
* `ddpm-unet`: a compact DDPM-style U-Net (GroupNorm + SiLU residual blocks, sinusoidal time
  embedding, one self-attention block at the lowest resolution), optionally class-conditional.

Every network is called as `network(x, t, cond=None)`. Conditional networks reserve the label
`num_classes` as the null label; `cond=None` means the null label for the whole batch.
Odd image sizes are handled by resizing each upsampled map to its skip connection's size.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UserError


def _match_size(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Zero-pad or crop x (after an upsampling) to like's spatial size; a no-op for even sizes."""
    dh, dw = like.shape[-2] - x.shape[-2], like.shape[-1] - x.shape[-1]
    if dh == 0 and dw == 0:
        return x
    return F.pad(x, (0, dw, 0, dh))


def _null_labels(cond: torch.Tensor | None, batch: int, num_classes: int, device: torch.device) -> torch.Tensor:
    """Class labels as int64, with None meaning the null label `num_classes` for every row."""
    if cond is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    cond = torch.as_tensor(cond, device=device).long()
    return cond.expand(batch) if cond.dim() == 0 else cond


# --------------------------------------------------------------------------- seed-unet (seed 000)


@dataclass(frozen=True)
class SeedUNetConfig:
    """Seed 000's U-Net: two poolings, so the image side should be divisible by 4 (odd sizes are padded)."""

    in_channels: int = 1
    channels: tuple[int, int, int] = (16, 32, 64)
    embed_dim: int = 16
    num_timesteps: int = 1000
    image_size: int = 8


class ConvBlock(nn.Module):
    """conv -> add projected time embedding -> relu -> conv -> relu (seed 000)."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.proj = nn.Linear(embed_dim, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = F.relu(x + self.proj(embedding)[:, :, None, None])
        return F.relu(self.conv2(x))


class SeedUNet(nn.Module):
    """Seed 000's small U-Net, generalised in channels and image size; time is an integer index."""

    def __init__(self, config: SeedUNetConfig):
        super().__init__()
        self.config = config
        c1, c2, c3 = config.channels
        self.embed = nn.Embedding(config.num_timesteps, config.embed_dim)
        self.enc1 = ConvBlock(config.in_channels, c1, config.embed_dim)
        self.enc2 = ConvBlock(c1, c2, config.embed_dim)
        self.bottleneck = ConvBlock(c2, c3, config.embed_dim)
        self.upconv2 = nn.ConvTranspose2d(c3, c2, kernel_size=2, stride=2)
        self.dec2 = ConvBlock(2 * c2, c2, config.embed_dim)
        self.upconv1 = nn.ConvTranspose2d(c2, c1, kernel_size=2, stride=2)
        self.dec1 = ConvBlock(2 * c1, c1, config.embed_dim)
        self.final = nn.Conv2d(c1, config.in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is not None:
            raise UserError("seed-unet is unconditional; it takes no class labels")
        emb = self.embed(t.long())
        enc1 = self.enc1(x, emb)
        enc2 = self.enc2(F.max_pool2d(enc1, 2), emb)
        bottleneck = self.bottleneck(F.max_pool2d(enc2, 2), emb)
        dec2 = self.dec2(torch.cat([enc2, _match_size(self.upconv2(bottleneck), enc2)], 1), emb)
        dec1 = self.dec1(torch.cat([enc1, _match_size(self.upconv1(dec2), enc1)], 1), emb)
        return self.final(dec1)


# --------------------------------------------------------------------------- context-unet (seed 002)


@dataclass(frozen=True)
class ContextUNetConfig:
    """Seed 002's ContextUnet; `num_classes` real labels plus the null label."""

    in_channels: int = 1
    n_feat: int = 64
    num_classes: int = 10
    image_size: int = 28
    groups: int = 8


class ResidualConvBlock(nn.Module):
    """Two conv -> norm -> GELU layers, with an optional residual (seed 002).

    GroupNorm replaces seed 002's BatchNorm: BatchNorm's running statistics mix all noise
    levels and make a sampled image depend on the batch statistics seen in training.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, 1, 1),
                                   nn.GroupNorm(groups, out_channels), nn.GELU())
        self.conv2 = nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, 1, 1),
                                   nn.GroupNorm(groups, out_channels), nn.GELU())
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return (self.shortcut(x) + out) / math.sqrt(2) if self.residual else out


class UnetDown(nn.Module):
    """Two residual conv blocks, then 2x max pooling (ceil mode, so odd sizes keep every pixel)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.blocks = nn.Sequential(ResidualConvBlock(in_channels, out_channels, groups),
                                    ResidualConvBlock(out_channels, out_channels, groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self.blocks(x), 2, ceil_mode=True)


class UnetUp(nn.Module):
    """Concatenate the skip, 2x transposed conv, then two residual conv blocks."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, 2)
        self.blocks = nn.Sequential(ResidualConvBlock(out_channels, out_channels, groups),
                                    ResidualConvBlock(out_channels, out_channels, groups))

    def forward(self, x: torch.Tensor, skip: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        up = self.up(torch.cat([x, skip], 1))
        return self.blocks(up[..., :target.shape[-2], :target.shape[-1]])


class EmbedFC(nn.Module):
    """Linear -> GELU -> Linear, reshaped to (B, C, 1, 1)."""

    def __init__(self, input_dim: int, embed_dim: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(input_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)[:, :, None, None]


class ContextUNet(nn.Module):
    """Seed 002's class-conditional U-Net: time t/T as a float, one-hot labels with a null label."""

    def __init__(self, config: ContextUNetConfig):
        super().__init__()
        self.config = config
        n, g = config.n_feat, config.groups
        num_labels = config.num_classes + 1
        self.init_conv = ResidualConvBlock(config.in_channels, n, g, residual=True)
        self.down1 = UnetDown(n, n, g)
        self.down2 = UnetDown(n, 2 * n, g)
        low = math.ceil(math.ceil(config.image_size / 2) / 2)
        self.to_vec = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.GELU())
        self.time_embed1, self.time_embed2 = EmbedFC(1, 2 * n), EmbedFC(1, n)
        self.context_embed1, self.context_embed2 = EmbedFC(num_labels, 2 * n), EmbedFC(num_labels, n)
        self.up0 = nn.Sequential(nn.ConvTranspose2d(2 * n, 2 * n, low, low), nn.GroupNorm(g, 2 * n), nn.ReLU())
        self.up1 = UnetUp(4 * n, n, g)
        self.up2 = UnetUp(2 * n, n, g)
        self.out = nn.Sequential(nn.Conv2d(2 * n, n, 3, 1, 1), nn.GroupNorm(g, n), nn.ReLU(),
                                 nn.Conv2d(n, config.in_channels, 3, 1, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        labels = _null_labels(cond, x.shape[0], self.config.num_classes, x.device)
        one_hot = F.one_hot(labels, self.config.num_classes + 1).to(x.dtype)
        t = t.to(x.dtype).view(-1, 1).expand(x.shape[0], 1)
        x0 = self.init_conv(x)
        down1 = self.down1(x0)
        down2 = self.down2(down1)
        up1 = self.up0(self.to_vec(down2))
        up2 = self.up1(self.context_embed1(one_hot) * up1 + self.time_embed1(t), down2, down1)
        up3 = self.up2(self.context_embed2(one_hot) * up2 + self.time_embed2(t), down1, x0)
        return self.out(torch.cat([up3, x0], 1))


# --------------------------------------------------------------------------- ddpm-unet


@dataclass(frozen=True)
class DDPMUNetConfig:
    """A compact DDPM U-Net (Ho et al. 2020): one resolution level per multiplier."""

    in_channels: int = 1
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    num_classes: int = 0
    image_size: int = 28
    groups: int = 8
    dropout: float = 0.0
    attention_heads: int = 1


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of (possibly fractional) timesteps, (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, add the time embedding, GroupNorm -> SiLU -> dropout -> conv, residual."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embed = nn.Linear(embed_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.embed(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual."""

    def __init__(self, channels: int, groups: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class DDPMUNet(nn.Module):
    """DDPM-style U-Net; time is the integer index (sinusoidal embedding), labels optional."""

    def __init__(self, config: DDPMUNetConfig):
        super().__init__()
        self.config = config
        base, g, drop = config.base_channels, config.groups, config.dropout
        embed_dim = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.label_embed = nn.Embedding(config.num_classes + 1, embed_dim) if config.num_classes else None
        self.conv_in = nn.Conv2d(config.in_channels, base, 3, padding=1)
        channels = [base * m for m in config.channel_mults]
        self.down_blocks, self.downsamples = nn.ModuleList(), nn.ModuleList()
        skip_channels, ch = [base], base
        for level, out_ch in enumerate(channels):
            blocks = nn.ModuleList()
            for _ in range(config.num_res_blocks):
                blocks.append(ResBlock(ch, out_ch, embed_dim, g, drop))
                ch = out_ch
                skip_channels.append(ch)
            self.down_blocks.append(blocks)
            last = level == len(channels) - 1
            self.downsamples.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))
            if not last:
                skip_channels.append(ch)
        self.mid1 = ResBlock(ch, ch, embed_dim, g, drop)
        self.mid_attention = AttentionBlock(ch, g, config.attention_heads)
        self.mid2 = ResBlock(ch, ch, embed_dim, g, drop)
        self.up_blocks, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for level, out_ch in reversed(list(enumerate(channels))):
            blocks = nn.ModuleList()
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResBlock(ch + skip_channels.pop(), out_ch, embed_dim, g, drop))
                ch = out_ch
            self.up_blocks.append(blocks)
            self.upsamples.append(nn.Identity() if level == 0 else nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out = nn.GroupNorm(g, ch)
        self.conv_out = nn.Conv2d(ch, config.in_channels, 3, padding=1)

    def _embedding(self, t: torch.Tensor, cond: torch.Tensor | None, batch: int) -> torch.Tensor:
        t = t.expand(batch) if t.dim() == 0 else t
        emb = self.time_mlp(sinusoidal_embedding(t, self.config.base_channels))
        if self.label_embed is not None:
            emb = emb + self.label_embed(_null_labels(cond, batch, self.config.num_classes, emb.device))
        elif cond is not None:
            raise UserError("this ddpm-unet is unconditional (num_classes=0); it takes no class labels")
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        emb = self._embedding(t, cond, x.shape[0])
        h = self.conv_in(x)
        skips = [h]
        for blocks, downsample in zip(self.down_blocks, self.downsamples, strict=True):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            if not isinstance(downsample, nn.Identity):
                h = downsample(h)
                skips.append(h)
        h = self.mid2(self.mid_attention(self.mid1(h, emb)), emb)
        for blocks, upsample in zip(self.up_blocks, self.upsamples, strict=True):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], 1), emb)
            if not isinstance(upsample, nn.Identity):
                h = upsample(F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


# --------------------------------------------------------------------------- factory

ARCHITECTURES = {
    "seed-unet": (SeedUNetConfig, SeedUNet, "index"),
    "context-unet": (ContextUNetConfig, ContextUNet, "fraction"),
    "ddpm-unet": (DDPMUNetConfig, DDPMUNet, "index"),
}


def _config_from_dict(config_class: type, config: dict):
    """A config dataclass from a (JSON) dict: lists become tuples, unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = set(config) - names
    if unknown:
        raise UserError(f"unknown {config_class.__name__} fields {sorted(unknown)}; expected some of {sorted(names)}")
    return config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


def network_config(arch: str, config: dict):
    """The frozen config dataclass for `arch` built from a dict."""
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    return _config_from_dict(ARCHITECTURES[arch][0], config)


def time_input_kind(arch: str) -> str:
    """How `arch` takes its time argument: 'index' (integer t) or 'fraction' (t / T)."""
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch][2]


def build_network(arch: str, config: dict) -> nn.Module:
    """Build architecture `arch` ('seed-unet', 'context-unet', 'ddpm-unet') from a config dict."""
    config_object = network_config(arch, config)
    return ARCHITECTURES[arch][1](config_object)
