"""LDM KL-f8 autoencoder (the VideoMV / Stable Diffusion VAE) in Flax NNX, channels last.

Architecture (LDM ``AutoencoderKL`` / diffusers ``AutoencoderKL``): a ResNet encoder with one
self-attention block in the middle, a 1×1 ``quant_conv`` producing the moments of a diagonal
Gaussian posterior, a 1×1 ``post_quant_conv`` and a mirrored decoder. Numerics that matter for
parity with the PyTorch weights:

* every GroupNorm uses ε = 1e-6 (:attr:`VAEConfig.norm_eps`);
* the stride-2 downsampling convs pad only bottom/right by one pixel (LDM's asymmetric
  ``(0, 1, 0, 1)`` pad) and then run a VALID convolution;
* upsampling is nearest ×2 (pixel repetition, as PyTorch ``F.interpolate(mode="nearest")``)
  followed by a 3×3 conv;
* the posterior log-variance is clamped to [-30, 20] before ``std = exp(logvar / 2)``.

Module names mirror diffusers' ``AutoencoderKL`` (``encoder.down_blocks[i].resnets[j]``,
``downsamplers[0].conv``, ``mid_block.attentions[0].to_q`` …, ``decoder.up_blocks[i]`` with
``up_blocks[0]`` the deepest level) so the converters in :mod:`videomv_jax.convert.vae` are
mechanical. Videos use :meth:`AutoencoderKL.encode_frames` / :meth:`AutoencoderKL.decode_frames`,
which fold frames into the batch (index ``b * F + f``) and run a bounded number of frames at a
time with :func:`jax.lax.map`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from videomv_jax.nn.attention import IMPLEMENTATIONS, dot_product_attention
from videomv_jax.nn.layers import Conv, GroupNorm, Linear

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# ---- config ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Hyper-parameters of the KL autoencoder (defaults = LDM KL-f8 / SD VAE, 83,653,863 params).

    ``ch * ch_mult[i]`` is the width of level ``i``; every level but the last halves the
    resolution, so the spatial factor is ``2 ** (len(ch_mult) - 1)`` (8 for the default).
    ``z_channels`` is the width the encoder's ``conv_out`` produces (×2: mean and log-variance)
    and the decoder's ``conv_in`` takes; ``embed_dim`` is the latent width between ``quant_conv``
    and ``post_quant_conv`` (LDM keeps both; they are equal, 4, in every released VAE).
    ``frame_chunk`` is the number of frames :meth:`AutoencoderKL.encode_frames` /
    :meth:`AutoencoderKL.decode_frames` process at once (0 = all at once).
    """

    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    norm_groups: int = 32
    norm_eps: float = 1e-6
    scale_factor: float = 0.18215
    logvar_min: float = -30.0
    logvar_max: float = 20.0
    frame_chunk: int = 4
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention: str = "xla"
    remat: bool = False

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        positive = {"in_channels": self.in_channels, "out_channels": self.out_channels,
                    "ch": self.ch, "num_res_blocks": self.num_res_blocks,
                    "z_channels": self.z_channels, "embed_dim": self.embed_dim,
                    "norm_groups": self.norm_groups}
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VAEConfig.{name} must be a positive integer, got {value!r}")
        if not self.ch_mult or any(not isinstance(m, int) or m < 1 for m in self.ch_mult):
            raise ValueError(f"VAEConfig.ch_mult must be a non-empty tuple of positive integers, "
                             f"got {self.ch_mult!r}")
        for width in self.widths:
            if width % self.norm_groups:
                raise ValueError(f"VAEConfig.norm_groups={self.norm_groups} must divide every "
                                 f"level width {self.widths}")
        if not self.norm_eps > 0:
            raise ValueError(f"VAEConfig.norm_eps must be > 0, got {self.norm_eps}")
        if not self.scale_factor > 0:
            raise ValueError(f"VAEConfig.scale_factor must be > 0, got {self.scale_factor}")
        if not self.logvar_min < self.logvar_max:
            raise ValueError(f"VAEConfig needs logvar_min < logvar_max, got {self.logvar_min}, "
                             f"{self.logvar_max}")
        if not isinstance(self.frame_chunk, int) or self.frame_chunk < 0:
            raise ValueError(f"VAEConfig.frame_chunk must be an integer >= 0 (0 = no chunking), "
                             f"got {self.frame_chunk!r}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"VAEConfig.{name} must be one of {tuple(_DTYPES)}, got "
                                 f"{getattr(self, name)!r}")
        if self.attention not in IMPLEMENTATIONS:
            raise ValueError(f"VAEConfig.attention must be one of {IMPLEMENTATIONS}, got "
                             f"{self.attention!r}")

    @classmethod
    def full(cls, **overrides: Any) -> VAEConfig:
        """The released LDM KL-f8 VAE (VideoMV's ``VQGAN_autoencoder.pth``, SD 2.x VAE)."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> VAEConfig:
        """A two-level (×2) test-size VAE with the same structure."""
        kwargs = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, norm_groups=8)
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel width of each resolution level."""
        return tuple(self.ch * m for m in self.ch_mult)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def params_dtype(self):
        return _DTYPES[self.param_dtype]

    def replace(self, **changes: Any) -> VAEConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["ch_mult"] = list(self.ch_mult)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VAEConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VAEConfig fields {unknown}; known: {sorted(known)}")
        return cls(**dict(data))


# ---- posterior -----------------------------------------------------------------------------------


@struct.dataclass
class DiagonalGaussian:
    """Diagonal Gaussian posterior q(z|x) (a pytree), channels last; float32 statistics."""

    mean: jax.Array
    logvar: jax.Array

    @classmethod
    def from_moments(cls, moments: jax.Array, logvar_min: float = -30.0,
                     logvar_max: float = 20.0) -> DiagonalGaussian:
        """Split ``quant_conv`` output [..., 2C] into mean (first half) and clamped log-var."""
        moments = moments.astype(jnp.float32)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return cls(mean=mean, logvar=jnp.clip(logvar, logvar_min, logvar_max))

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    @property
    def var(self) -> jax.Array:
        return jnp.exp(self.logvar)

    def sample(self, key: jax.Array) -> jax.Array:
        """``mean + std · ε`` with ``ε = jax.random.normal(key, mean.shape)``."""
        return self.sample_with_noise(jax.random.normal(key, self.mean.shape, self.mean.dtype))

    def sample_with_noise(self, noise: jax.Array) -> jax.Array:
        """Reparameterised sample with caller-supplied standard normal noise."""
        return self.mean + self.std * noise

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self) -> jax.Array:
        """KL(q ‖ N(0, I)) summed over the last three axes (h, w, C), as LDM's ``kl()``."""
        return 0.5 * jnp.sum(self.mean**2 + self.var - 1.0 - self.logvar, axis=(-3, -2, -1))


# ---- building blocks -----------------------------------------------------------------------------


def _remat_call(module: nnx.Module, x: jax.Array, remat: bool) -> jax.Array:
    """``module(x)``, rematerialised in the backward pass when ``remat``.

    Uses split/merge + :func:`jax.checkpoint` (the VAE has no mutable state), which is pure and
    therefore also works under plain ``jax.grad`` / ``jax.jit`` with the model closed over."""
    if not remat:
        return module(x)
    graphdef, state = nnx.split(module)
    return jax.checkpoint(lambda s, h: nnx.merge(graphdef, s)(h))(state, x)


def _conv3(cin: int, cout: int, cfg: VAEConfig, rngs: nnx.Rngs, strides: int = 1,
           padding: Any = ((1, 1), (1, 1))) -> nnx.Conv:
    return Conv(cin, cout, (3, 3), strides=strides, padding=padding, rngs=rngs,
                dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)


def _conv1(cin: int, cout: int, cfg: VAEConfig, rngs: nnx.Rngs) -> nnx.Conv:
    return Conv(cin, cout, (1, 1), padding="VALID", rngs=rngs, dtype=cfg.compute_dtype,
                param_dtype=cfg.params_dtype)


def _norm(c: int, cfg: VAEConfig, rngs: nnx.Rngs) -> nnx.GroupNorm:
    return GroupNorm(c, cfg.norm_groups, cfg.norm_eps, rngs=rngs, dtype=cfg.compute_dtype,
                     param_dtype=cfg.params_dtype)


class ResnetBlock(nnx.Module):
    """GN → SiLU → conv3 → GN → SiLU → conv3, plus a (1×1 ``conv_shortcut``) residual."""

    def __init__(self, in_channels: int, out_channels: int, cfg: VAEConfig, *, rngs: nnx.Rngs):
        self.norm1 = _norm(in_channels, cfg, rngs)
        self.conv1 = _conv3(in_channels, out_channels, cfg, rngs)
        self.norm2 = _norm(out_channels, cfg, rngs)
        self.conv2 = _conv3(out_channels, out_channels, cfg, rngs)
        self.conv_shortcut = (_conv1(in_channels, out_channels, cfg, rngs)
                              if in_channels != out_channels else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class AttentionBlock(nnx.Module):
    """Single-head spatial self-attention over all H·W positions, with a residual."""

    def __init__(self, channels: int, cfg: VAEConfig, *, rngs: nnx.Rngs):
        def dense():
            return Linear(channels, channels, rngs=rngs, dtype=cfg.compute_dtype,
                          param_dtype=cfg.params_dtype)

        self.group_norm = _norm(channels, cfg, rngs)
        self.to_q, self.to_k, self.to_v = dense(), dense(), dense()
        self.to_out = nnx.List([dense()])
        self.implementation = cfg.attention

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        y = self.group_norm(x).reshape(b, h * w, 1, c)
        q, k, v = self.to_q(y), self.to_k(y), self.to_v(y)
        o = dot_product_attention(q, k, v, implementation=self.implementation)
        return x + self.to_out[0](o.reshape(b, h, w, c))


class Downsample(nnx.Module):
    """Pad bottom/right by one (LDM's asymmetric pad), then a VALID stride-2 3×3 conv."""

    def __init__(self, channels: int, cfg: VAEConfig, *, rngs: nnx.Rngs):
        self.conv = _conv3(channels, channels, cfg, rngs, strides=2, padding="VALID")

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))


class Upsample(nnx.Module):
    """Nearest ×2 (pixel repetition) then a 3×3 conv."""

    def __init__(self, channels: int, cfg: VAEConfig, *, rngs: nnx.Rngs):
        self.conv = _conv3(channels, channels, cfg, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class DownEncoderBlock(nnx.Module):
    """``num_res_blocks`` ResnetBlocks then (except at the last level) a Downsample."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, downsample: bool,
                 cfg: VAEConfig, *, rngs: nnx.Rngs):
        self.resnets = nnx.List([
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, cfg, rngs=rngs)
            for i in range(num_layers)])
        self.downsamplers = (nnx.List([Downsample(out_channels, cfg, rngs=rngs)])
                             if downsample else None)
        self.remat = cfg.remat

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = _remat_call(resnet, x, self.remat)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock(nnx.Module):
    """``num_res_blocks + 1`` ResnetBlocks then (except at the last level) an Upsample."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, upsample: bool,
                 cfg: VAEConfig, *, rngs: nnx.Rngs):
        self.resnets = nnx.List([
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, cfg, rngs=rngs)
            for i in range(num_layers)])
        self.upsamplers = nnx.List([Upsample(out_channels, cfg, rngs=rngs)]) if upsample else None
        self.remat = cfg.remat

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = _remat_call(resnet, x, self.remat)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nnx.Module):
    """ResnetBlock → AttentionBlock → ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, cfg: VAEConfig, *, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResnetBlock(channels, channels, cfg, rngs=rngs)
                                 for _ in range(2)])
        self.attentions = nnx.List([AttentionBlock(channels, cfg, rngs=rngs)])
        self.remat = cfg.remat

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _remat_call(self.resnets[0], x, self.remat)
        x = _remat_call(self.attentions[0], x, self.remat)
        return _remat_call(self.resnets[1], x, self.remat)


class Encoder(nnx.Module):
    """Images [N, H, W, in_channels] → features [N, H/f, W/f, 2·z_channels]."""

    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        widths = cfg.widths
        self.conv_in = _conv3(cfg.in_channels, widths[0], cfg, rngs)
        blocks, prev = [], widths[0]
        for i, width in enumerate(widths):
            blocks.append(DownEncoderBlock(prev, width, cfg.num_res_blocks,
                                           i < len(widths) - 1, cfg, rngs=rngs))
            prev = width
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(widths[-1], cfg, rngs=rngs)
        self.conv_norm_out = _norm(widths[-1], cfg, rngs)
        self.conv_out = _conv3(widths[-1], 2 * cfg.z_channels, cfg, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    """Latents [N, h, w, z_channels] → images [N, h·f, w·f, out_channels].

    ``up_blocks[0]`` is the deepest level (diffusers order; LDM's ``up.{L-1-i}``)."""

    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        rev = cfg.widths[::-1]
        self.conv_in = _conv3(cfg.z_channels, rev[0], cfg, rngs)
        self.mid_block = MidBlock(rev[0], cfg, rngs=rngs)
        blocks, prev = [], rev[0]
        for i, width in enumerate(rev):
            blocks.append(UpDecoderBlock(prev, width, cfg.num_res_blocks + 1,
                                         i < len(rev) - 1, cfg, rngs=rngs))
            prev = width
        self.up_blocks = nnx.List(blocks)
        self.conv_norm_out = _norm(rev[-1], cfg, rngs)
        self.conv_out = _conv3(rev[-1], cfg.out_channels, cfg, rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = self.conv_in(z)
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


# ---- the autoencoder -----------------------------------------------------------------------------


class AutoencoderKL(nnx.Module):
    """KL-regularised autoencoder: images in [-1, 1], [N, H, W, C] ↔ latents [N, H/8, W/8, 4].

    :meth:`encode` / :meth:`decode` work on *unscaled* latents (diffusers' convention);
    :meth:`encode_frames` / :meth:`decode_frames` take and return latents multiplied by
    ``scale_factor`` (0.18215), which is what the diffusion model sees.
    """

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = Encoder(config, rngs=rngs)
        self.decoder = Decoder(config, rngs=rngs)
        self.quant_conv = _conv1(2 * config.z_channels, 2 * config.embed_dim, config, rngs)
        self.post_quant_conv = _conv1(config.embed_dim, config.z_channels, config, rngs)

    # -- images -------------------------------------------------------------------------------

    def _check(self, x: jax.Array, channels: int, what: str, ndim: int = 4) -> None:
        if x.ndim != ndim or x.shape[-1] != channels:
            raise ValueError(f"{what} must be {ndim}-D channels-last with {channels} channels, got "
                             f"shape {x.shape}")

    def encode(self, images: jax.Array) -> DiagonalGaussian:
        """Images [N, H, W, 3] in [-1, 1] (H, W multiples of 8) → posterior over latents."""
        self._check(images, self.config.in_channels, "images")
        f = self.config.downsample_factor
        if images.shape[1] % f or images.shape[2] % f:
            raise ValueError(f"image height and width must be multiples of {f}, got "
                             f"{images.shape[1:3]}")
        moments = self.quant_conv(self.encoder(images.astype(self.config.compute_dtype)))
        return DiagonalGaussian.from_moments(moments, self.config.logvar_min,
                                             self.config.logvar_max)

    def decode(self, latents: jax.Array) -> jax.Array:
        """Unscaled latents [N, h, w, embed_dim] → images [N, 8h, 8w, 3] (float32, ≈[-1, 1])."""
        self._check(latents, self.config.embed_dim, "latents")
        z = self.post_quant_conv(latents.astype(self.config.compute_dtype))
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Reconstruction: decode the posterior sample (``key`` given) or mean (``key=None``)."""
        posterior = self.encode(images)
        return self.decode(posterior.mode() if key is None else posterior.sample(key))

    # -- videos -------------------------------------------------------------------------------

    def _chunked(self, fn: Callable[[AutoencoderKL, jax.Array], Any], x: jax.Array,
                 chunk: int | None) -> Any:
        """``fn(self, x)`` over the leading axis of ``x``, ``chunk`` rows at a time.

        Rows are independent (no op mixes batch elements), so zero-padding the last chunk and
        slicing it off afterwards is exact."""
        chunk = self.config.frame_chunk if chunk is None else int(chunk)
        if chunk < 0:
            raise ValueError(f"chunk must be >= 0 (0 = no chunking), got {chunk}")
        n = x.shape[0]
        if chunk == 0 or chunk >= n:
            return fn(self, x)
        num = -(-n // chunk)
        x = jnp.pad(x, ((0, num * chunk - n),) + ((0, 0),) * (x.ndim - 1))
        graphdef, state = nnx.split(self)

        def body(xc):
            return fn(nnx.merge(graphdef, state), xc)

        out = jax.lax.map(body, x.reshape(num, chunk, *x.shape[1:]))
        return jax.tree.map(lambda o: o.reshape(num * chunk, *o.shape[2:])[:n], out)

    def encode_frames(self, images: jax.Array, key: jax.Array | None = None, *,
                      chunk: int | None = None, sample: bool = True,
                      noise: jax.Array | None = None) -> jax.Array:
        """Videos [B, F, H, W, 3] in [-1, 1] → *scaled* latents [B, F, H/8, W/8, 4].

        The released VideoMV code **samples** the posterior (``encode_firsr_stage``: mean +
        std·ε, then × 0.18215) for training latents, the I2V conditioning latent and the
        3D-aware re-encoding; pass ``key`` to do the same. ``ε`` is
        ``jax.random.normal(key, [B, F, h, w, 4])``, drawn once for the whole video, so the
        result does not depend on ``chunk``. With ``key=None`` or ``sample=False`` the posterior
        mean is used (deterministic; a deviation from the released code). ``chunk`` frames are
        encoded at a time (default ``config.frame_chunk``; 0 = all at once). ``noise`` (standard
        normal, the latents' shape) replaces ``ε`` drawn from ``key``, e.g. drawn per sample from
        each sample's own key so a batch equals its samples encoded one at a time.
        """
        self._check(images, self.config.in_channels, "videos", ndim=5)
        b, f = images.shape[:2]

        def moments(model, x):
            post = model.encode(x)
            return post.mean, post.logvar

        mean, logvar = self._chunked(moments, images.reshape(b * f, *images.shape[2:]), chunk)
        post = DiagonalGaussian(mean=mean.reshape(b, f, *mean.shape[1:]),
                                logvar=logvar.reshape(b, f, *logvar.shape[1:]))
        if sample and noise is not None:
            if noise.shape != post.mean.shape:
                raise ValueError(f"noise must have the latents' shape {post.mean.shape}, got "
                                 f"{noise.shape}")
            z = post.sample_with_noise(noise.astype(post.mean.dtype))
        else:
            z = post.sample(key) if (sample and key is not None) else post.mode()
        return z * self.config.scale_factor

    def decode_frames(self, latents: jax.Array, *, chunk: int | None = None) -> jax.Array:
        """*Scaled* latents [B, F, h, w, 4] → videos [B, F, 8h, 8w, 3] (≈[-1, 1], float32).

        Divides by ``scale_factor`` first; ``chunk`` frames are decoded at a time (default
        ``config.frame_chunk``; 0 = all at once)."""
        self._check(latents, self.config.embed_dim, "latents", ndim=5)
        b, f = latents.shape[:2]
        z = latents.reshape(b * f, *latents.shape[2:]) / self.config.scale_factor
        out = self._chunked(lambda model, x: model.decode(x), z, chunk)
        return out.reshape(b, f, *out.shape[1:])


def count_params(model: nnx.Module) -> int:
    """Number of scalar parameters (works on an ``nnx.eval_shape`` abstract model)."""
    state = nnx.state(model, nnx.Param)
    return sum(math.prod(v.get_value().shape) for _, v in nnx.to_flat_state(state))
