"""LPIPS with a VGG16 trunk (Zhang et al. 2018, ``lpips`` v0.1, ``net='vgg'``) in Flax NNX.

Used as the perceptual term of the LGM render loss (docs/design.md §6.5 step 6) and as the primary
LPIPS metric of the evaluation (design §8.2). Computation, for two NHWC images in [-1, 1]:

1. ScalingLayer: ``(x - shift) / scale`` with shift [-.030, -.088, -.188] and
   scale [.458, .448, .450] (the ImageNet statistics re-expressed for [-1, 1] inputs);
2. the VGG16 ``features`` trunk (3×3 convs + ReLU, 2×2 max pools) tapped at relu1_2, relu2_2,
   relu3_3, relu4_3 and relu5_3;
3. per tap and pixel, unit-normalise over channels ``f / (sqrt(Σ f²) + 1e-10)``;
4. squared difference, a bias-free 1×1 linear head (non-negative learned weights, ``lin{k}``),
   mean over H·W, sum over the five taps → one distance per batch element.

Weights are not trainable here in any meaningful sense: they come from torchvision's ImageNet
VGG16 (``vgg16-397923af.pth``; ``features.*`` keys) and the ``lpips`` package's linear heads
(``lpips/weights/v0.1/vgg.pth``), converted by :mod:`videomv_jax.convert.lpips` through
:func:`videomv_jax.convert.lpips.load_lpips`. Keep this module out of the optimiser's parameter set.

Without weight files there is no LPIPS: :func:`lpips_unavailable_reason` returns the message
callers print (``"LPIPS unavailable: supply --lpips-vgg16 and --lpips-weights"`` plus the
reason) and callers skip the term / metric.

:func:`resize_for_lpips` is the bilinear resize used before LPIPS in LGM training: it matches
PyTorch ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)`` —
``jax.image.resize`` antialiases when downsampling and so does not.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from videomv_jax.nn.layers import Conv, Linear

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

#: The five VGG16 taps LPIPS compares, in order.
TAP_NAMES = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")

#: What callers print when no LPIPS weights were supplied.
UNAVAILABLE_MESSAGE = "LPIPS unavailable: supply --lpips-vgg16 and --lpips-weights"


# ---- config ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LPIPSConfig:
    """Hyper-parameters of LPIPS-VGG (defaults = the real VGG16 trunk, 14,716,160 params).

    ``stage_widths[s]`` lists the output width of each 3×3 conv of stage ``s``; a 2×2 max pool
    precedes every stage but the first and each stage's last ReLU is an LPIPS tap. The conv
    index of every layer in torchvision's ``features`` Sequential follows from it (see
    :func:`videomv_jax.convert.lpips.torchvision_conv_indices`). ``shift`` / ``scale`` are the
    ScalingLayer constants, ``eps`` the feature-normalisation epsilon. ``dtype`` is the compute
    dtype of the convs (normalisation, heads and the reduction always run in float32).
    """

    in_channels: int = 3
    stage_widths: tuple[tuple[int, ...], ...] = (
        (64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
    shift: tuple[float, ...] = (-0.030, -0.088, -0.188)
    scale: tuple[float, ...] = (0.458, 0.448, 0.450)
    eps: float = 1e-10
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False

    def __post_init__(self):
        object.__setattr__(self, "stage_widths",
                           tuple(tuple(stage) for stage in self.stage_widths))
        object.__setattr__(self, "shift", tuple(float(v) for v in self.shift))
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        if (not isinstance(self.in_channels, int) or isinstance(self.in_channels, bool)
                or self.in_channels < 1):
            raise ValueError(f"LPIPSConfig.in_channels must be a positive integer, got "
                             f"{self.in_channels!r}")
        if not self.stage_widths or any(
                not stage or any(not isinstance(w, int) or isinstance(w, bool) or w < 1
                                 for w in stage) for stage in self.stage_widths):
            raise ValueError(f"LPIPSConfig.stage_widths must be a non-empty tuple of non-empty "
                             f"tuples of positive integers, got {self.stage_widths!r}")
        for name in ("shift", "scale"):
            if len(getattr(self, name)) != self.in_channels:
                raise ValueError(f"LPIPSConfig.{name} needs one value per input channel "
                                 f"({self.in_channels}), got {getattr(self, name)!r}")
        if any(s <= 0 for s in self.scale):
            raise ValueError(f"LPIPSConfig.scale must be positive, got {self.scale!r}")
        if not self.eps > 0:
            raise ValueError(f"LPIPSConfig.eps must be > 0, got {self.eps!r}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"LPIPSConfig.{name} must be one of {tuple(_DTYPES)}, got "
                                 f"{getattr(self, name)!r}")

    @classmethod
    def vgg(cls, **overrides: Any) -> LPIPSConfig:
        """LPIPS v0.1 on the torchvision VGG16 trunk up to relu5_3 (the released weights)."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> LPIPSConfig:
        """Test size: the VGG16 layout (2, 2, 3, 3, 3 convs, same Sequential indices) with
        narrow widths."""
        kwargs: dict[str, Any] = dict(
            stage_widths=((8, 8), (12, 12), (16, 16, 16), (16, 16, 16), (24, 24, 24)))
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def tap_channels(self) -> tuple[int, ...]:
        """Channel width of each tap (the last conv of each stage)."""
        return tuple(stage[-1] for stage in self.stage_widths)

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def params_dtype(self):
        return _DTYPES[self.param_dtype]

    def replace(self, **changes: Any) -> LPIPSConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["stage_widths"] = [list(stage) for stage in self.stage_widths]
        out["shift"], out["scale"] = list(self.shift), list(self.scale)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LPIPSConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LPIPSConfig fields {unknown}; known: {sorted(known)}")
        return cls(**dict(data))


# ---- modules -----------------------------------------------------------------------------------


def _max_pool_2x2(x: jax.Array) -> jax.Array:
    """``nn.MaxPool2d(2, 2)`` (floor mode: an odd last row / column is dropped)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


class VGGStage(nnx.Module):
    """A run of 3×3 conv (padding 1) + ReLU layers."""

    def __init__(self, in_channels: int, widths: Sequence[int], cfg: LPIPSConfig, *,
                 rngs: nnx.Rngs):
        chans = (in_channels, *widths)
        self.convs = nnx.List([
            Conv(chans[i], chans[i + 1], (3, 3), padding=((1, 1), (1, 1)), rngs=rngs,
                 dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)
            for i in range(len(widths))])

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return x


def _remat_call(module: nnx.Module, x: jax.Array, remat: bool) -> jax.Array:
    """``module(x)``, rematerialised in the backward pass when ``remat`` (pure split/merge)."""
    if not remat:
        return module(x)
    graphdef, state = nnx.split(module)
    return jax.checkpoint(lambda s, h: nnx.merge(graphdef, s)(h))(state, x)


class VGG16Features(nnx.Module):
    """torchvision VGG16 ``features`` up to relu5_3, channels last; returns the five taps
    (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 for the default config)."""

    def __init__(self, cfg: LPIPSConfig, *, rngs: nnx.Rngs):
        ins = (cfg.in_channels, *cfg.tap_channels[:-1])
        self.stages = nnx.List([VGGStage(cin, widths, cfg, rngs=rngs)
                                for cin, widths in zip(ins, cfg.stage_widths, strict=True)])
        self.remat = cfg.remat

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        taps = []
        for s, stage in enumerate(self.stages):
            if s > 0:
                x = _max_pool_2x2(x)
            x = _remat_call(stage, x, self.remat)
            taps.append(x)
        return taps


def _normalize_channels(f: jax.Array, eps: float) -> jax.Array:
    """``f / (sqrt(Σ_c f²) + eps)`` (lpips ``normalize_tensor``) with a gradient that stays
    finite where a feature vector is exactly zero (dead ReLUs); same forward values."""
    ss = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
    positive = ss > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, ss, 1.0)), 0.0)
    return f / (norm + eps)


class LPIPS(nnx.Module):
    """LPIPS-VGG distance between two batches of NHWC images in [-1, 1] → [B] (float32).

    Submodules: ``net`` (:class:`VGG16Features`) and ``lins`` (one bias-free ``C → 1`` Dense per
    tap, the ``lpips`` package's ``lin{k}.model.1`` 1×1 convs).
    """

    def __init__(self, config: LPIPSConfig | None = None, *, rngs: nnx.Rngs):
        self.config = config = LPIPSConfig.vgg() if config is None else config
        self.net = VGG16Features(config, rngs=rngs)
        self.lins = nnx.List([
            Linear(c, 1, use_bias=False, rngs=rngs, dtype=jnp.float32,
                   param_dtype=config.params_dtype, axes=("embed", None))
            for c in config.tap_channels])

    def scale_inputs(self, x: jax.Array) -> jax.Array:
        """The lpips ScalingLayer: ``(x - shift) / scale`` per channel."""
        shift = jnp.asarray(self.config.shift, jnp.float32)
        scale = jnp.asarray(self.config.scale, jnp.float32)
        return (x.astype(jnp.float32) - shift) / scale

    def __call__(self, in0: jax.Array, in1: jax.Array, *, normalize: bool = False,
                 per_layer: bool = False) -> jax.Array | tuple[jax.Array, list[jax.Array]]:
        """Distances [B] between ``in0`` and ``in1`` ([B, H, W, C], same shape).

        ``normalize=True`` takes [0, 1] inputs (mapped by ``2x - 1``, as lpips' flag);
        ``per_layer=True`` also returns the five per-tap terms ([B] each)."""
        if in0.shape != in1.shape:
            raise ValueError(f"LPIPS inputs must have the same shape, got {in0.shape} and "
                             f"{in1.shape}")
        if in0.ndim != 4 or in0.shape[-1] != self.config.in_channels:
            raise ValueError(f"LPIPS expects [B, H, W, {self.config.in_channels}] images, got "
                             f"{in0.shape}")
        if normalize:
            in0, in1 = 2.0 * in0 - 1.0, 2.0 * in1 - 1.0
        b = in0.shape[0]
        x = self.scale_inputs(jnp.concatenate([in0, in1], axis=0))
        taps = self.net(x.astype(self.config.compute_dtype))
        terms = []
        for tap, lin in zip(taps, self.lins, strict=True):
            f = _normalize_channels(tap.astype(jnp.float32), self.config.eps)
            diff = jnp.square(f[:b] - f[b:])
            terms.append(jnp.mean(lin(diff)[..., 0], axis=(1, 2)))
        total = sum(terms[1:], terms[0])
        return (total, terms) if per_layer else total


# ---- resizing ----------------------------------------------------------------------------------


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and weight of i1 for PyTorch's ``align_corners=False`` linear
    interpolation, computed in float32 like ATen's CPU kernel."""
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32)
    src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, lam


def _resize_axis(x: jax.Array, axis: int, out_size: int) -> jax.Array:
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    i0, i1, lam = _linear_taps(in_size, out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    w1 = jnp.asarray(lam.reshape(shape), x.dtype)
    a = jnp.take(x, jnp.asarray(i0), axis=axis)
    b = jnp.take(x, jnp.asarray(i1), axis=axis)
    return a * (1 - w1) + b * w1


def resize_for_lpips(images: jax.Array, size: int | tuple[int, int] = 256) -> jax.Array:
    """Bilinear resize of NHWC (or HWC) images to ``size`` (int → square), equal to PyTorch
    ``F.interpolate(x, size, mode="bilinear", align_corners=False)`` without antialiasing —
    the downsample LGM applies before its LPIPS loss. Values are not rescaled."""
    if isinstance(size, int):
        size = (size, size)
    out_h, out_w = (int(s) for s in size)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"resize_for_lpips size must be positive, got {size!r}")
    if images.ndim not in (3, 4):
        raise ValueError(f"resize_for_lpips expects [B, H, W, C] or [H, W, C], got "
                         f"{images.shape}")
    h_axis = images.ndim - 3
    x = _resize_axis(images, h_axis, out_h)
    return _resize_axis(x, h_axis + 1, out_w)


# ---- weights -----------------------------------------------------------------------------------


def lpips_unavailable_reason(vgg16_path: str | os.PathLike | None,
                             lpips_path: str | os.PathLike | None) -> str | None:
    """``None`` if both weight files are given and exist, else the line callers print
    (``"LPIPS unavailable: supply --lpips-vgg16 and --lpips-weights"``, with what is wrong)
    before skipping the LPIPS loss / metric."""
    problems = []
    for flag, path in (("--lpips-vgg16", vgg16_path), ("--lpips-weights", lpips_path)):
        if path is None or os.fspath(path) == "":
            problems.append(f"{flag} not given")
        elif not os.path.isfile(path):
            problems.append(f"{flag} {os.fspath(path)!r} does not exist")
    if not problems:
        return None
    return (f"{UNAVAILABLE_MESSAGE} ({'; '.join(problems)}; torchvision's vgg16-397923af.pth "
            f"and lpips' weights/v0.1/vgg.pth)")


def lpips_from_params(params: Mapping[tuple[Any, ...], Any], config: LPIPSConfig) -> LPIPS:
    """An :class:`LPIPS` holding ``params`` ({parameter path: array}, every parameter, e.g. from
    :func:`videomv_jax.convert.lpips.convert`), built abstractly so that no random
    initialisation runs (eager init of the 15M-parameter trunk is slow on CPU)."""
    from videomv_jax.models import model_from_params

    return model_from_params(LPIPS, config, params, dtype=config.params_dtype)
