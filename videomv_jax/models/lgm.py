"""LGM (Large Multi-View Gaussian Model) reconstructor in Flax NNX, channels last.

VideoMV's feed-forward 3D module is LGM "big" (``core/unet.py`` + ``core/models.py`` of
3DTopia/LGM): an asymmetric conv UNet maps 4 views × 9 channels (ImageNet-normalised RGB +
Plücker rays) to one pixel-aligned Gaussian per output pixel per view (14 raw channels,
activated by :func:`videomv_jax.render.gaussians.lgm_activations`).

Structure (names mirror the PyTorch modules, so :mod:`videomv_jax.convert.lgm` is mechanical):

* ``unet.conv_in`` 3×3, ``in_channels`` → ``down_channels[0]``.
* ``unet.down_blocks[i]``: ``layers_per_block`` ResnetBlocks (``nets``), each followed by an
  MVAttention (``attns``) where ``down_attention[i]``; then a stride-2 3×3 ``downsample``
  (padding 1, as PyTorch) except at the last level. Every resnet / attention output and every
  downsample output is pushed on the skip stack (``conv_in`` output first).
* ``unet.mid_block``: ``nets[0]`` → [``attns[0]`` → ``nets[1]``].
* ``unet.up_blocks[i]``: ``layers_per_block + 1`` ResnetBlocks, each on ``concat([x, skip])``
  (skips popped from the end of the stack), each followed by an MVAttention where
  ``up_attention[i]``; then nearest ×2 + 3×3 ``upsample`` except at the last level. The up
  path may be shorter than the down path (LGM "big": 5 up vs 6 down levels, 256² → 128²).
* Head: ``unet.norm_out`` (GN) → SiLU → ``unet.conv_out`` 3×3 → 14, then ``conv`` 1×1 14 → 14.

ResnetBlock: GN → SiLU → conv3 → GN → SiLU → conv3, plus a 1×1 ``shortcut`` when the widths
differ; output ``(h + shortcut(x)) · √0.5``; every GroupNorm has ε = 1e-5; no time input.
MVAttention: GN → the 4 views' tokens of one object as one sequence ``[B, 4·H·W, C]`` →
multi-head self-attention (fused ``qkv`` Linear C → 3C without bias, output split as
``q | k | v`` and each heads-major; ``proj`` with bias) → ``(out + x) · √0.5``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from videomv_jax.nn.attention import IMPLEMENTATIONS, dot_product_attention
from videomv_jax.nn.layers import Conv, GroupNorm, Linear
from videomv_jax.render.camera import DEFAULT_FOVY_DEG, plucker_rays
from videomv_jax.render.gaussians import (
    LGM_CHANNELS,
    POSITION_OPTIONS,
    POSITIONS_ABSOLUTE,
    POSITIONS_RAY,
    QUAT_NORM_ACROSS_GAUSSIANS,
    QUAT_NORM_OPTIONS,
    QUAT_NORM_PER_GAUSSIAN,
    Gaussians,
    lgm_activations,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LGM",
    "LGMConfig",
    "MVAttention",
    "QUAT_NORM_ACROSS_GAUSSIANS",
    "QUAT_NORM_OPTIONS",
    "QUAT_NORM_PER_GAUSSIAN",
    "ResnetBlock",
    "SKIP_SCALE",
    "prepare_inputs",
]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

SKIP_SCALE = math.sqrt(0.5)
"""Residual scale of every LGM ResnetBlock and MVAttention (``skip_scale = np.sqrt(0.5)``)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RAY_CHANNELS = 6  # Plücker [o × d, d]


# ---- config ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LGMConfig:
    """Hyper-parameters of the LGM UNet (defaults = LGM "big" as used by VideoMV).

    ``splat_size`` must equal ``input_size · 2^(len(up_channels) - 1) / 2^(len(down_channels)
    - 1)`` (the head's resolution). ``up_channels[i]`` must equal ``down_channels[-1 - i]``:
    the up path re-uses the skip widths of the matching down level (as LGM's UNet assumes).
    ``quat_norm``: :data:`~videomv_jax.render.gaussians.QUAT_NORM_ACROSS_GAUSSIANS` (default)
    reproduces the released VideoMV / pre-fix LGM weights, ``QUAT_NORM_PER_GAUSSIAN`` the
    upstream fix (``*_fixrot`` weights). ``fovy``/``znear``/``zfar``/``output_size`` describe the
    cameras the model was trained with (Plücker inputs, renders); the network does not use them.
    ``positions``: :data:`~videomv_jax.render.gaussians.POSITIONS_ABSOLUTE` (default, LGM's
    clamped centres) or ``POSITIONS_RAY`` (a depth along each splat pixel's ray, read from the
    input's Plücker channels; for models trained from scratch, see that constant).
    """

    input_size: int = 256
    splat_size: int = 128
    output_size: int = 512
    in_channels: int = 9
    out_channels: int = LGM_CHANNELS
    down_channels: tuple[int, ...] = (64, 128, 256, 512, 1024, 1024)
    down_attention: tuple[bool, ...] = (False, False, False, True, True, True)
    mid_attention: bool = True
    up_channels: tuple[int, ...] = (1024, 1024, 512, 256, 128)
    up_attention: tuple[bool, ...] = (True, True, True, False, False)
    layers_per_block: int = 2
    attention_heads: int = 16
    norm_groups: int = 32
    norm_eps: float = 1e-5
    num_views: int = 4
    fovy: float = DEFAULT_FOVY_DEG
    znear: float = 0.5
    zfar: float = 2.5
    quat_norm: str = QUAT_NORM_ACROSS_GAUSSIANS
    positions: str = POSITIONS_ABSOLUTE
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention: str = "xla"
    remat: bool = False

    def __post_init__(self):
        for name in ("down_channels", "down_attention", "up_channels", "up_attention"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        positive = ("input_size", "splat_size", "output_size", "in_channels", "out_channels",
                    "layers_per_block", "attention_heads", "norm_groups", "num_views")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LGMConfig.{name} must be a positive integer, got {value!r}")
        for name in ("down_channels", "up_channels"):
            chans = getattr(self, name)
            if not chans or any(not isinstance(c, int) or isinstance(c, bool) or c < 1
                                for c in chans):
                raise ValueError(f"LGMConfig.{name} must be a non-empty tuple of positive "
                                 f"integers, got {chans!r}")
        for chans, attn in (("down_channels", "down_attention"), ("up_channels", "up_attention")):
            if len(getattr(self, attn)) != len(getattr(self, chans)):
                raise ValueError(f"LGMConfig.{attn} needs one flag per entry of {chans}: got "
                                 f"{getattr(self, attn)!r} for {getattr(self, chans)!r}")
            if any(not isinstance(a, bool) for a in getattr(self, attn)):
                raise ValueError(f"LGMConfig.{attn} must hold booleans, got "
                                 f"{getattr(self, attn)!r}")
        n_down, n_up = len(self.down_channels), len(self.up_channels)
        if n_up > n_down:
            raise ValueError(f"LGMConfig has {n_up} up levels but only {n_down} down levels; "
                             f"the up path cannot be longer than the down path")
        expected_up = self.down_channels[::-1][:n_up]
        if self.up_channels != expected_up:
            raise ValueError(f"LGMConfig.up_channels must repeat the down widths in reverse "
                             f"({expected_up}) so the skip connections fit, got "
                             f"{self.up_channels}")
        for c in self.down_channels:
            if c % self.norm_groups:
                raise ValueError(f"LGMConfig.norm_groups={self.norm_groups} must divide every "
                                 f"width, got down_channels={self.down_channels}")
        attended = [c for c, a in zip(self.down_channels, self.down_attention, strict=True) if a]
        attended += [c for c, a in zip(self.up_channels, self.up_attention, strict=True) if a]
        if self.mid_attention:
            attended.append(self.down_channels[-1])
        for c in attended:
            if c % self.attention_heads:
                raise ValueError(f"LGMConfig.attention_heads={self.attention_heads} must divide "
                                 f"the width {c} of every attention layer")
        factor = 2 ** (n_down - 1)
        if self.input_size % factor:
            raise ValueError(f"LGMConfig.input_size={self.input_size} must be a multiple of "
                             f"{factor} (2^(levels-1))")
        want = self.input_size // factor * 2 ** (n_up - 1)
        if self.splat_size != want:
            raise ValueError(f"LGMConfig.splat_size must be {want} for input_size "
                             f"{self.input_size} with {n_down} down / {n_up} up levels, got "
                             f"{self.splat_size}")
        if self.out_channels != LGM_CHANNELS:
            raise ValueError(f"LGMConfig.out_channels must be {LGM_CHANNELS} (the Gaussian "
                             f"channel table), got {self.out_channels}")
        if not self.norm_eps > 0:
            raise ValueError(f"LGMConfig.norm_eps must be > 0, got {self.norm_eps}")
        if not 0 < self.fovy < 180:
            raise ValueError(f"LGMConfig.fovy must be in (0, 180) degrees, got {self.fovy}")
        if not 0 < self.znear < self.zfar:
            raise ValueError(f"LGMConfig needs 0 < znear < zfar, got {self.znear}, {self.zfar}")
        if self.quat_norm not in QUAT_NORM_OPTIONS:
            raise ValueError(f"LGMConfig.quat_norm must be one of {QUAT_NORM_OPTIONS}, got "
                             f"{self.quat_norm!r}")
        if self.positions not in POSITION_OPTIONS:
            raise ValueError(f"LGMConfig.positions must be one of {POSITION_OPTIONS}, got "
                             f"{self.positions!r}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"LGMConfig.{name} must be one of {tuple(_DTYPES)}, got "
                                 f"{getattr(self, name)!r}")
        if self.attention not in IMPLEMENTATIONS:
            raise ValueError(f"LGMConfig.attention must be one of {IMPLEMENTATIONS}, got "
                             f"{self.attention!r}")
        if not isinstance(self.remat, bool):
            raise ValueError(f"LGMConfig.remat must be a bool, got {self.remat!r}")

    # -- presets ----------------------------------------------------------------------------------

    @classmethod
    def big(cls, **overrides: Any) -> LGMConfig:
        """LGM "big" as VideoMV uses it (``lgm_big``): 256² in, 128² splats, fovy 39.6,
        415,042,848 parameters."""
        return cls(**overrides)

    @classmethod
    def small(cls, **overrides: Any) -> LGMConfig:
        """Upstream LGM's default size (``config_defaults['small']`` = ``'lrm'``): the same down
        path, one up level fewer (up 1024, 1024, 512, 256), 64² splats, 256² renders, upstream
        fovy 49.1; 412,958,240 parameters (the missing 128-wide up level is small)."""
        kwargs: dict[str, Any] = dict(splat_size=64, output_size=256,
                                      up_channels=(1024, 1024, 512, 256),
                                      up_attention=(True, True, True, False), fovy=49.1)
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def tiny(cls, **overrides: Any) -> LGMConfig:
        """Test size with every structural feature of "big" (asymmetric up path, attention on
        the deep levels and in the mid block, shortcut and non-shortcut resnets): 16² in,
        widths (8, 16, 32), 4 GN groups, 2 heads, 8² splats."""
        kwargs: dict[str, Any] = dict(input_size=16, splat_size=8, output_size=32,
                                      down_channels=(8, 16, 32),
                                      down_attention=(False, True, True),
                                      up_channels=(32, 16), up_attention=(True, False),
                                      attention_heads=2, norm_groups=4)
        kwargs.update(overrides)
        return cls(**kwargs)

    # -- helpers ----------------------------------------------------------------------------------

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def params_dtype(self):
        return _DTYPES[self.param_dtype]

    @property
    def down_factor(self) -> int:
        """Input side / lowest-resolution side (2^(down levels - 1))."""
        return 2 ** (len(self.down_channels) - 1)

    @property
    def num_gaussians(self) -> int:
        """Gaussians per object at ``input_size``: ``num_views · splat_size²``."""
        return self.num_views * self.splat_size**2

    def skip_channels(self) -> list[int]:
        """Channels of the skip stack in push order (``conv_in``, then every resnet/attention
        output and downsample output of the down path)."""
        stack = [self.down_channels[0]]
        for i, c in enumerate(self.down_channels):
            stack += [c] * self.layers_per_block
            if i < len(self.down_channels) - 1:
                stack.append(c)
        return stack

    def up_block_in_channels(self) -> list[list[int]]:
        """Input width (x + skip) of every up-block resnet: ``[[cin_0, cin_1, ...], ...]``."""
        stack = self.skip_channels()
        out, prev = [], self.down_channels[-1]
        for cout in self.up_channels:
            widths = []
            for j in range(self.layers_per_block + 1):
                widths.append((prev if j == 0 else cout) + stack.pop())
            out.append(widths)
            prev = cout
        return out

    def replace(self, **changes: Any) -> LGMConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        for name in ("down_channels", "down_attention", "up_channels", "up_attention"):
            out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LGMConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LGMConfig fields {unknown}; known: {sorted(known)}")
        return cls(**dict(data))


# ---- building blocks ---------------------------------------------------------------------------


def _remat_call(module: nnx.Module, x: jax.Array, remat: bool) -> jax.Array:
    if remat:
        return nnx.remat(lambda m, h: m(h))(module, x)
    return module(x)


def _conv(cin: int, cout: int, cfg: LGMConfig, rngs: nnx.Rngs, kernel: int = 3,
          strides: int = 1) -> nnx.Conv:
    pad = kernel // 2  # PyTorch padding=1 for 3×3 (also for stride 2: not Flax's "SAME")
    return Conv(cin, cout, (kernel, kernel), strides=strides, padding=((pad, pad), (pad, pad)),
                rngs=rngs, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)


def _norm(c: int, cfg: LGMConfig, rngs: nnx.Rngs) -> nnx.GroupNorm:
    return GroupNorm(c, cfg.norm_groups, cfg.norm_eps, rngs=rngs, dtype=cfg.compute_dtype,
                     param_dtype=cfg.params_dtype)


class ResnetBlock(nnx.Module):
    """GN → SiLU → conv3 → GN → SiLU → conv3; ``(h + shortcut(x)) · √0.5`` on [N, H, W, C]."""

    def __init__(self, in_channels: int, out_channels: int, cfg: LGMConfig, *, rngs: nnx.Rngs):
        self.norm1 = _norm(in_channels, cfg, rngs)
        self.conv1 = _conv(in_channels, out_channels, cfg, rngs)
        self.norm2 = _norm(out_channels, cfg, rngs)
        self.conv2 = _conv(out_channels, out_channels, cfg, rngs)
        self.shortcut = (_conv(in_channels, out_channels, cfg, rngs, kernel=1)
                         if in_channels != out_channels else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        res = self.shortcut(x) if self.shortcut is not None else x
        return (h + res) * SKIP_SCALE


class Attention(nnx.Module):
    """Multi-head self-attention on [B, L, C] with a fused ``qkv`` (no bias) and ``proj``."""

    def __init__(self, dim: int, num_heads: int, cfg: LGMConfig, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.implementation = cfg.attention
        self.qkv = Linear(dim, 3 * dim, use_bias=False, rngs=rngs, dtype=cfg.compute_dtype,
                          param_dtype=cfg.params_dtype)
        self.proj = Linear(dim, dim, rngs=rngs, dtype=cfg.compute_dtype,
                           param_dtype=cfg.params_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, c = x.shape
        # PyTorch: qkv(x).reshape(B, N, 3, heads, C // heads) -> q | k | v, each heads-major.
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        o = dot_product_attention(q, k, v, implementation=self.implementation)
        return self.proj(o.reshape(b, n, c))


class MVAttention(nnx.Module):
    """GN, then self-attention over the tokens of all views of one object jointly.

    Input [B·V, H, W, C] (object-major fold, index ``b·V + v``); tokens are ordered
    view-major then row-major, ``[B, V·H·W, C]``; output ``(attn + x) · √0.5``.
    """

    def __init__(self, dim: int, cfg: LGMConfig, *, rngs: nnx.Rngs):
        self.num_views = cfg.num_views
        self.norm = _norm(dim, cfg, rngs)
        self.attn = Attention(dim, cfg.attention_heads, cfg, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        bv, h, w, c = x.shape
        if bv % self.num_views:
            raise ValueError(f"MVAttention expects a batch of B·{self.num_views} views, got {bv}")
        y = self.norm(x).reshape(bv // self.num_views, self.num_views * h * w, c)
        y = self.attn(y).reshape(bv, h, w, c)
        return (y + x) * SKIP_SCALE


class DownBlock(nnx.Module):
    """ResnetBlocks (each optionally followed by MVAttention), then a stride-2 conv."""

    def __init__(self, in_channels: int, out_channels: int, attention: bool, downsample: bool,
                 cfg: LGMConfig, *, rngs: nnx.Rngs):
        n = cfg.layers_per_block
        self.nets = nnx.List([ResnetBlock(in_channels if i == 0 else out_channels, out_channels,
                                          cfg, rngs=rngs) for i in range(n)])
        self.attns = (nnx.List([MVAttention(out_channels, cfg, rngs=rngs) for _ in range(n)])
                      if attention else None)
        self.downsample = (_conv(out_channels, out_channels, cfg, rngs, strides=2)
                           if downsample else None)
        self.remat = cfg.remat

    def __call__(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        skips = []
        for i, net in enumerate(self.nets):
            x = _remat_call(net, x, self.remat)
            if self.attns is not None:
                x = _remat_call(self.attns[i], x, self.remat)
            skips.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            skips.append(x)
        return x, skips


class MidBlock(nnx.Module):
    """``nets[0]`` → [``attns[0]``] → ``nets[1]`` at the lowest resolution."""

    def __init__(self, channels: int, attention: bool, cfg: LGMConfig, *, rngs: nnx.Rngs):
        self.nets = nnx.List([ResnetBlock(channels, channels, cfg, rngs=rngs) for _ in range(2)])
        self.attns = nnx.List([MVAttention(channels, cfg, rngs=rngs)]) if attention else None
        self.remat = cfg.remat

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _remat_call(self.nets[0], x, self.remat)
        if self.attns is not None:
            x = _remat_call(self.attns[0], x, self.remat)
        return _remat_call(self.nets[1], x, self.remat)


class UpBlock(nnx.Module):
    """ResnetBlocks on ``concat([x, skip])`` (each optionally followed by MVAttention), then
    nearest ×2 + conv3."""

    def __init__(self, in_widths: list[int], out_channels: int, attention: bool, upsample: bool,
                 cfg: LGMConfig, *, rngs: nnx.Rngs):
        self.nets = nnx.List([ResnetBlock(cin, out_channels, cfg, rngs=rngs)
                              for cin in in_widths])
        self.attns = (nnx.List([MVAttention(out_channels, cfg, rngs=rngs) for _ in in_widths])
                      if attention else None)
        self.upsample = _conv(out_channels, out_channels, cfg, rngs) if upsample else None
        self.remat = cfg.remat

    def __call__(self, x: jax.Array, skips: list[jax.Array]) -> jax.Array:
        skips = list(skips)
        for i, net in enumerate(self.nets):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = _remat_call(net, x, self.remat)
            if self.attns is not None:
                x = _remat_call(self.attns[i], x, self.remat)
        if self.upsample is not None:
            x = self.upsample(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
        return x


class UNet(nnx.Module):
    """LGM's asymmetric UNet: [B·V, H, W, in_channels] → [B·V, h, w, out_channels]."""

    def __init__(self, cfg: LGMConfig, *, rngs: nnx.Rngs):
        down = cfg.down_channels
        self.conv_in = _conv(cfg.in_channels, down[0], cfg, rngs)
        blocks, prev = [], down[0]
        for i, c in enumerate(down):
            blocks.append(DownBlock(prev, c, cfg.down_attention[i], i < len(down) - 1, cfg,
                                    rngs=rngs))
            prev = c
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(down[-1], cfg.mid_attention, cfg, rngs=rngs)
        in_widths = cfg.up_block_in_channels()
        self.up_blocks = nnx.List([
            UpBlock(in_widths[i], c, cfg.up_attention[i], i < len(cfg.up_channels) - 1, cfg,
                    rngs=rngs) for i, c in enumerate(cfg.up_channels)])
        self.norm_out = _norm(cfg.up_channels[-1], cfg, rngs)
        self.conv_out = _conv(cfg.up_channels[-1], cfg.out_channels, cfg, rngs)
        self.skips_per_up = cfg.layers_per_block + 1

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        stack = [x]
        for block in self.down_blocks:
            x, skips = block(x)
            stack += skips
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x, stack[-self.skips_per_up:])
            stack = stack[:-self.skips_per_up]
        return self.conv_out(jax.nn.silu(self.norm_out(x)))


# ---- the model ---------------------------------------------------------------------------------


class LGM(nnx.Module):
    """LGM Gaussian reconstructor: 4 posed views → ``num_views · h · w`` pixel-aligned Gaussians.

    ``__call__`` returns the raw 14-channel head output; :meth:`gaussians` applies the LGM
    activation table with ``config.quat_norm``. Inputs come from :func:`prepare_inputs`.
    """

    def __init__(self, config: LGMConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.unet = UNet(config, rngs=rngs)
        self.conv = _conv(config.out_channels, config.out_channels, config, rngs, kernel=1)

    def __call__(self, images: jax.Array) -> jax.Array:
        """Images [B, V, H, W, 9] → raw float32 [B, V·h·w, 14] (view-major, then row-major,
        as LGM's ``x.permute(0, 1, 3, 4, 2).reshape(B, -1, 14)``); ``h = H ·
        splat_size / input_size``."""
        cfg = self.config
        if images.ndim != 5 or images.shape[1] != cfg.num_views or \
                images.shape[-1] != cfg.in_channels:
            raise ValueError(f"LGM expects images [B, {cfg.num_views}, H, W, {cfg.in_channels}], "
                             f"got shape {tuple(images.shape)}")
        b, v, h, w, c = images.shape
        if h % cfg.down_factor or w % cfg.down_factor:
            raise ValueError(f"LGM image height and width must be multiples of "
                             f"{cfg.down_factor}, got {(h, w)}")
        x = images.reshape(b * v, h, w, c).astype(cfg.compute_dtype)
        x = self.conv(self.unet(x))
        return x.reshape(b, -1, cfg.out_channels).astype(jnp.float32)

    def gaussians(self, images: jax.Array) -> Gaussians:
        """Images [B, V, H, W, 9] → activated :class:`Gaussians` (batch axis B)."""
        rays = splat_rays(images, self.config) if self.config.positions == POSITIONS_RAY else None
        return lgm_activations(self(images), self.config.quat_norm, rays)


def splat_rays(images: jax.Array, config: LGMConfig) -> jax.Array:
    """The Plücker channels ``[o × d, d]`` of :func:`prepare_inputs` images ``[B, V, H, W, 9]``
    averaged over each splat pixel's input pixels → ``[B, V·h·w, 6]`` in the head's order.
    Averaging is exact for the ray through the averaged direction: ``o × d`` is linear in
    ``d`` for one camera centre ``o``."""
    b, v, h, w, _ = images.shape
    hs, ws = h * config.splat_size // config.input_size, w * config.splat_size // config.input_size
    if hs < 1 or ws < 1 or h % hs or w % ws:
        raise ValueError(f"splat_rays: input {(h, w)} does not pool to the splat grid "
                         f"(splat_size {config.splat_size} of input_size {config.input_size})")
    rays = images[..., 3:9].astype(jnp.float32).reshape(b, v, hs, h // hs, ws, w // ws, 6)
    return rays.mean(axis=(3, 5)).reshape(b, -1, 6)


def prepare_inputs(rgb: jax.Array, c2w_opengl: jax.Array,
                   fovy: float = DEFAULT_FOVY_DEG) -> jax.Array:
    """LGM input [B, V, H, W, 9]: ImageNet-normalised RGB (3) then Plücker rays ``[o × d, d]``
    (6) from OpenGL camera-to-world matrices ``[B, V, 4, 4]`` (LGM's y-up, normalised world).

    ``rgb`` [B, V, H, W, 3] is in [0, 1]; ``fovy`` in degrees (VideoMV 39.6, upstream 49.1).
    """
    rgb = jnp.asarray(rgb)
    c2w = jnp.asarray(c2w_opengl, jnp.float32)
    if rgb.ndim != 5 or rgb.shape[-1] != 3:
        raise ValueError(f"prepare_inputs expects rgb [B, V, H, W, 3], got {tuple(rgb.shape)}")
    if c2w.shape != (*rgb.shape[:2], 4, 4):
        raise ValueError(f"prepare_inputs expects c2w_opengl {(*rgb.shape[:2], 4, 4)} for rgb "
                         f"{tuple(rgb.shape)}, got {tuple(c2w.shape)}")
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    rgb = (rgb.astype(jnp.float32) - mean) / std
    rays = plucker_rays(c2w, rgb.shape[2], rgb.shape[3], fovy)
    return jnp.concatenate([rgb, rays.astype(jnp.float32)], axis=-1)

