"""OpenCLIP ViT-H-14 text and vision towers (Flax NNX), tokenizer and image preprocessing.

VideoMV conditions its UNet on OpenCLIP ViT-H-14 (docs/design.md §2.5):

* text: ``open_clip.tokenize`` (77 ids) → token + positional embedding → the first **23 of 24**
  residual blocks under a causal mask → ``ln_final`` → all 77 tokens [B, 77, 1024]
  (``output_layer="penultimate"``; ``"last"`` runs every block, as ``encode_text`` does);
* image (I2V): the full visual tower with ``proj`` → [B, 1024].

Attribute names mirror open_clip (``token_embedding``, ``positional_embedding``,
``transformer.resblocks[i].{ln_1, attn.in_proj, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``,
``ln_final``, ``text_projection``; the vision model is open_clip's ``visual`` module:
``conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre``, ``transformer``,
``ln_post``, ``proj``) so that :mod:`videomv_jax.convert.clip` is a mechanical table. The
attention input projection is fused q|k|v in that order, like ``nn.MultiheadAttention``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from videomv_jax.models.clip_tokenizer import (  # noqa: F401  (re-exported)
    EOT_TOKEN,
    SOT_TOKEN,
    CLIPTokenizer,
    PromptTruncatedWarning,
    load_tokenizer,
    openclip_tokenizer,
    tokenize,
)
from videomv_jax.nn.attention import IMPLEMENTATIONS, dot_product_attention
from videomv_jax.nn.layers import Conv, Embed, LayerNorm, Linear, gelu

__all__ = [
    "CLIPTextConfig", "CLIPVisionConfig", "CLIPTextModel", "CLIPVisionModel",
    "ResidualAttentionBlock", "Transformer", "load_tokenizer", "tokenize",
    "PromptTruncatedWarning", "CLIPTokenizer", "openclip_tokenizer", "preprocess",
    "resize_weights", "CLIP_MEAN", "CLIP_STD",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
OUTPUT_LAYERS = ("penultimate", "last")


# ---- configs ----------------------------------------------------------------------------------


def _check_common(cfg: Any) -> None:
    for name in ("width", "layers", "heads", "mlp_dim"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{type(cfg).__name__}.{name} must be a positive int, got {value!r}")
    if cfg.width % cfg.heads:
        raise ValueError(f"{type(cfg).__name__}: width {cfg.width} is not divisible by "
                         f"heads {cfg.heads}")
    if not cfg.layer_norm_eps > 0:
        raise ValueError(f"layer_norm_eps must be > 0, got {cfg.layer_norm_eps!r}")
    for name in ("dtype", "param_dtype"):
        if getattr(cfg, name) not in DTYPES:
            raise ValueError(f"{name} must be one of {tuple(DTYPES)}, got {getattr(cfg, name)!r}")
    if cfg.attention not in IMPLEMENTATIONS:
        raise ValueError(f"attention must be one of {IMPLEMENTATIONS}, got {cfg.attention!r}")


class _ConfigMixin:
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Inverse of :meth:`to_dict`; unknown keys are an error (typos must not pass)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(names)}")
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig(_ConfigMixin):
    """OpenCLIP text tower. ``projection_dim=None`` holds no ``text_projection`` (transformers'
    ``CLIPTextModel``); ``output_layer`` picks the tokens :meth:`CLIPTextModel.__call__` returns:
    ``"penultimate"`` (VideoMV: blocks 0..layers-2, then ``ln_final``) or ``"last"``. The model
    always holds all ``layers`` blocks (the checkpoint has them; "penultimate" skips the last)."""

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    projection_dim: int | None = 1024
    layer_norm_eps: float = 1e-5
    output_layer: str = "penultimate"
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention: str = "xla"
    remat: bool = False

    def __post_init__(self):
        _check_common(self)
        for name in ("vocab_size", "context_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"CLIPTextConfig.{name} must be a positive int, got {value!r}")
        if self.projection_dim is not None and (not isinstance(self.projection_dim, int)
                                                or self.projection_dim <= 0):
            raise ValueError(f"projection_dim must be None or a positive int, got "
                             f"{self.projection_dim!r}")
        if self.output_layer not in OUTPUT_LAYERS:
            raise ValueError(f"output_layer must be one of {OUTPUT_LAYERS}, got "
                             f"{self.output_layer!r}")
        if self.output_layer == "penultimate" and self.layers < 2:
            raise ValueError("output_layer='penultimate' needs at least 2 layers")

    @classmethod
    def full(cls, **overrides) -> CLIPTextConfig:
        """OpenCLIP ViT-H-14 text tower (354,032,640 parameters with ``text_projection``)."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides) -> CLIPTextConfig:
        """A few-thousand-parameter tower for tests."""
        base = dict(vocab_size=64, context_length=77, width=32, layers=3, heads=4, mlp_dim=64,
                    projection_dim=16)
        return cls(**{**base, **overrides})


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig(_ConfigMixin):
    """OpenCLIP ViT vision tower: patchify conv (no bias) + class token + ``ln_pre`` →
    pre-LN blocks → ``ln_post`` on the class token → ``@ proj``."""

    image_size: int = 224
    patch_size: int = 14
    width: int = 1280
    layers: int = 32
    heads: int = 16
    mlp_dim: int = 5120
    output_dim: int = 1024
    layer_norm_eps: float = 1e-5
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention: str = "xla"
    remat: bool = False

    def __post_init__(self):
        _check_common(self)
        for name in ("image_size", "patch_size", "output_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"CLIPVisionConfig.{name} must be a positive int, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size "
                             f"{self.patch_size}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def full(cls, **overrides) -> CLIPVisionConfig:
        """OpenCLIP ViT-H-14 visual tower (632,076,800 parameters)."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides) -> CLIPVisionConfig:
        """A 2-layer, 32-wide tower on 28×28 images (2×2 patches of 14) for tests."""
        base = dict(image_size=28, patch_size=14, width=32, layers=2, heads=4, mlp_dim=64,
                    output_dim=16)
        return cls(**{**base, **overrides})


# ---- transformer ------------------------------------------------------------------------------


def _param(rngs: nnx.Rngs, shape, std: float, axes, param_dtype) -> nnx.Param:
    value = std * jax.random.normal(rngs.params(), shape, param_dtype)
    return nnx.Param(value, logical_axes=tuple(axes))


class MultiheadAttention(nnx.Module):
    """``nn.MultiheadAttention`` (batch first): fused q|k|v ``in_proj`` then ``out_proj``."""

    def __init__(self, width: int, heads: int, *, attention: str, rngs: nnx.Rngs, dtype=None,
                 param_dtype=jnp.float32):
        self.heads, self.attention = heads, attention
        self.in_proj = Linear(width, 3 * width, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.out_proj = Linear(width, width, rngs=rngs, axes=("mlp", "embed"), dtype=dtype,
                               param_dtype=param_dtype)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        b, length, width = x.shape
        qkv = self.in_proj(x).reshape(b, length, 3, self.heads, width // self.heads)
        out = dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask=mask,
                                    implementation=self.attention)
        return self.out_proj(out.reshape(b, length, width))


class MLP(nnx.Module):
    """``c_fc`` → exact GELU → ``c_proj``."""

    def __init__(self, width: int, mlp_dim: int, *, rngs: nnx.Rngs, dtype=None,
                 param_dtype=jnp.float32):
        self.c_fc = Linear(width, mlp_dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.c_proj = Linear(mlp_dim, width, rngs=rngs, axes=("mlp", "embed"), dtype=dtype,
                             param_dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.c_proj(gelu(self.c_fc(x)))


class ResidualAttentionBlock(nnx.Module):
    """Pre-LN block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int, mlp_dim: int, eps: float, *, attention: str,
                 rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.ln_1 = LayerNorm(width, eps, **kw)
        self.attn = MultiheadAttention(width, heads, attention=attention, **kw)
        self.ln_2 = LayerNorm(width, eps, **kw)
        self.mlp = MLP(width, mlp_dim, **kw)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


def _run_block(block: ResidualAttentionBlock, x: jax.Array, mask: jax.Array | None):
    return block(x, mask)


class Transformer(nnx.Module):
    """``resblocks``: an ``nnx.List`` of blocks; ``__call__`` can stop after ``num_layers``."""

    def __init__(self, width: int, layers: int, heads: int, mlp_dim: int, eps: float, *,
                 attention: str, remat: bool, rngs: nnx.Rngs, dtype=None,
                 param_dtype=jnp.float32):
        self.remat = remat
        self.resblocks = nnx.List([
            ResidualAttentionBlock(width, heads, mlp_dim, eps, attention=attention, rngs=rngs,
                                   dtype=dtype, param_dtype=param_dtype) for _ in range(layers)])

    def __call__(self, x: jax.Array, mask: jax.Array | None = None,
                 num_layers: int | None = None) -> jax.Array:
        run = nnx.remat(_run_block) if self.remat else _run_block
        blocks = self.resblocks if num_layers is None else self.resblocks[:num_layers]
        for block in blocks:
            x = run(block, x, mask)
        return x


def _check_token_ids(token_ids: Any, vocab_size: int) -> None:
    """Out-of-range ids would read past the embedding (NaN/garbage features): refuse them.
    Only concrete ids can be checked (not tracers inside ``jax.jit``); the pipeline and
    :func:`tokenize` with ``vocab_size`` check the tokenizer against the model up front."""
    if isinstance(token_ids, jax.core.Tracer):
        return
    ids = np.asarray(token_ids)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}) (the text encoder's "
                         f"vocab_size), got ids from {int(ids.min())} to {int(ids.max())}: the "
                         f"tokenizer does not match this model (OpenCLIP's ends at 49407)")


# ---- text tower -------------------------------------------------------------------------------


class CLIPTextModel(nnx.Module):
    """OpenCLIP text tower. ``__call__(token_ids [B, L≤77]) -> [B, L, width]``."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs):
        self.config = cfg = config
        dtype, pdt = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
        self.token_embedding = Embed(cfg.vocab_size, cfg.width, rngs=rngs, dtype=dtype,
                                     param_dtype=pdt)
        self.positional_embedding = _param(rngs, (cfg.context_length, cfg.width), 0.01,
                                           (None, "embed"), pdt)
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_dim,
                                       cfg.layer_norm_eps, attention=cfg.attention,
                                       remat=cfg.remat, rngs=rngs, dtype=dtype, param_dtype=pdt)
        self.ln_final = LayerNorm(cfg.width, cfg.layer_norm_eps, rngs=rngs, dtype=dtype,
                                  param_dtype=pdt)
        if cfg.projection_dim is not None:
            self.text_projection = _param(rngs, (cfg.width, cfg.projection_dim),
                                          cfg.width ** -0.5, ("embed", "mlp"), pdt)
        else:
            self.text_projection = None

    def _encode(self, token_ids: jax.Array, output_layer: str) -> jax.Array:
        if output_layer not in OUTPUT_LAYERS:
            raise ValueError(f"output_layer must be one of {OUTPUT_LAYERS}, got {output_layer!r}")
        cfg = self.config
        length = token_ids.shape[-1]
        if token_ids.ndim != 2 or length > cfg.context_length:
            raise ValueError(f"token_ids must be [B, L<={cfg.context_length}], got shape "
                             f"{token_ids.shape}")
        _check_token_ids(token_ids, cfg.vocab_size)
        dtype = DTYPES[cfg.dtype]
        x = self.token_embedding(token_ids) + self.positional_embedding[:length].astype(dtype)
        causal = jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]
        num = cfg.layers - 1 if output_layer == "penultimate" else cfg.layers
        x = self.transformer(x, causal, num_layers=num)
        return self.ln_final(x)

    def __call__(self, token_ids: jax.Array, output_layer: str | None = None) -> jax.Array:
        """Per-token features after ``ln_final`` from ``output_layer`` (default: the config's;
        VideoMV uses ``"penultimate"``)."""
        return self._encode(token_ids, output_layer or self.config.output_layer)

    def pooled(self, token_ids: jax.Array, output_layer: str = "last") -> jax.Array:
        """open_clip ``encode_text`` (unnormalised): features at the EOT token (the position of
        the largest id, as open_clip's ``text.argmax(-1)``) ``@ text_projection`` → [B, proj].
        VideoMV computes but never uses this."""
        if self.text_projection is None:
            raise ValueError("this CLIPTextModel holds no text_projection "
                             "(config.projection_dim is None)")
        x = self._encode(token_ids, output_layer)
        eot = jnp.argmax(token_ids, axis=-1)
        x = jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]
        return x @ self.text_projection[...].astype(x.dtype)


# ---- vision tower -----------------------------------------------------------------------------


class CLIPVisionModel(nnx.Module):
    """OpenCLIP visual tower. ``__call__(images [B, S, S, 3] normalised) -> [B, output_dim]``;
    :meth:`preprocess` turns raw images into its input the way VideoMV does."""

    def __init__(self, config: CLIPVisionConfig, *, rngs: nnx.Rngs):
        self.config = cfg = config
        dtype, pdt = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=pdt)
        scale = cfg.width ** -0.5
        self.conv1 = Conv(3, cfg.width, (cfg.patch_size, cfg.patch_size),
                          strides=cfg.patch_size, padding="VALID", use_bias=False, **kw)
        self.class_embedding = _param(rngs, (cfg.width,), scale, ("embed",), pdt)
        self.positional_embedding = _param(rngs, (cfg.grid_size ** 2 + 1, cfg.width), scale,
                                           (None, "embed"), pdt)
        self.ln_pre = LayerNorm(cfg.width, cfg.layer_norm_eps, **kw)
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_dim,
                                       cfg.layer_norm_eps, attention=cfg.attention,
                                       remat=cfg.remat, **kw)
        self.ln_post = LayerNorm(cfg.width, cfg.layer_norm_eps, **kw)
        self.proj = _param(rngs, (cfg.width, cfg.output_dim), scale, ("embed", "mlp"), pdt)

    def __call__(self, images: jax.Array) -> jax.Array:
        cfg = self.config
        want = (cfg.image_size, cfg.image_size, 3)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(f"images must be [B, {want[0]}, {want[1]}, 3] (channels last, "
                             f"already normalised: see preprocess), got shape {images.shape}")
        dtype = DTYPES[cfg.dtype]
        x = self.conv1(images.astype(dtype))
        b = x.shape[0]
        x = x.reshape(b, -1, cfg.width)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(dtype), (b, 1, cfg.width))
        x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding[...].astype(dtype)
        x = self.transformer(self.ln_pre(x))
        x = self.ln_post(x[:, 0])
        return x @ self.proj[...].astype(dtype)

    @staticmethod
    def preprocess(images, **kwargs) -> np.ndarray:
        """See :func:`preprocess`."""
        return preprocess(images, **kwargs)


# ---- image preprocessing (host side, numpy) ---------------------------------------------------


def _box(x: np.ndarray) -> np.ndarray:
    return ((x > -0.5) & (x <= 0.5)).astype(np.float64)  # Pillow's half-open interval


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.maximum(1.0 - np.abs(x), 0.0)


_FILTERS = {"box": (_box, 0.5), "bilinear": (_triangle, 1.0)}


def resize_weights(in_size: int, out_size: int, kind: str = "bilinear",
                   antialias: bool = True) -> np.ndarray:
    """[out, in] resampling matrix of Pillow's separable resampler (``ImagingResample``).

    ``antialias=True`` widens the filter by the downscale factor (Pillow's ``resize``, and
    torch ``F.interpolate(..., antialias=True)``, which copies it). ``antialias=False`` with
    ``"bilinear"`` is exactly ``F.interpolate(mode='bilinear', align_corners=False)``: a
    2-tap interpolation at ``(i + 0.5)·scale − 0.5`` with edge clamping.
    """
    filt, support = _FILTERS[kind]
    scale = in_size / out_size
    filterscale = max(scale, 1.0) if antialias else 1.0
    support = support * filterscale
    weights = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = np.arange(lo, hi)
        w = filt((taps - center + 0.5) / filterscale)
        weights[i, lo:hi] = w / w.sum() if w.sum() != 0 else w
    return weights


_PRECISION_BITS = 22  # Pillow's 8-bit resampler: fixed-point coefficients, 32 - 8 - 2 bits


def _resample_axis(image: np.ndarray, weights: np.ndarray, axis: int, quantize: bool):
    if not quantize:
        return np.moveaxis(np.tensordot(weights, image, axes=([1], [axis])), 0, axis)
    # Pillow, bit for bit: coefficients rounded to 22 fractional bits, sum + 0.5 floored, clip
    fixed = np.floor(weights * (1 << _PRECISION_BITS) + 0.5).astype(np.int64)
    acc = np.tensordot(fixed, image.astype(np.int64), axes=([1], [axis]))
    acc = (acc + (1 << (_PRECISION_BITS - 1))) >> _PRECISION_BITS
    return np.moveaxis(np.clip(acc, 0, 255), 0, axis).astype(np.float64)


def _resize(image: np.ndarray, size_hw: tuple[int, int], kind: str, antialias: bool,
            quantize: bool) -> np.ndarray:
    """Separable resize of one [H, W, C] image, horizontal pass first like Pillow; with
    ``quantize`` (8-bit input) each pass rounds to 8 bits exactly as Pillow does."""
    h, w = image.shape[:2]
    out_h, out_w = size_hw
    if out_w != w:
        image = _resample_axis(image, resize_weights(w, out_w, kind, antialias), 1, quantize)
    if out_h != h:
        image = _resample_axis(image, resize_weights(h, out_h, kind, antialias), 0, quantize)
    return image


def _preprocess_one(image: np.ndarray, crop_size: int, size: int, antialias: bool,
                    background: float) -> np.ndarray:
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"an image must be [H, W, 3 or 4] (channels last), got {image.shape}")
    quantize = image.dtype == np.uint8
    img = image.astype(np.float64)
    if not quantize:
        if img.min() < 0.0 or img.max() > 1.0:
            raise ValueError("float images must lie in [0, 1] (uint8 images in [0, 255])")
        img = img * 255.0
    if img.shape[-1] == 4:  # paste on a solid background through the alpha channel
        alpha = img[..., 3:] / 255.0
        img = img[..., :3] * alpha + background * 255.0 * (1.0 - alpha)
        if quantize:
            img = np.rint(img)
    # VGen's CenterCropWide: Pillow BOX resize so the short side fits, then a centre crop.
    h, w = img.shape[:2]
    scale = min(w / crop_size, h / crop_size)
    new_w, new_h = round(w // scale), round(h // scale)
    img = _resize(img, (new_h, new_w), "box", True, quantize)
    x1, y1 = (new_w - crop_size) // 2, (new_h - crop_size) // 2
    img = img[y1:y1 + crop_size, x1:x1 + crop_size]
    img = _resize(img, (size, size), "bilinear", antialias, quantize)
    img = np.clip(img / 255.0, 0.0, 1.0)
    return ((img - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)).astype(np.float32)


def preprocess(images, *, crop_size: int = 256, size: int = 224, antialias: bool = True,
               background: float = 1.0) -> np.ndarray:
    """VideoMV's CLIP image preprocessing (I2V, design §2.5) → float32 [B, size, size, 3].

    ``images``: uint8 (0..255) or float (0..1) RGB or RGBA, [H, W, C] or [B, H, W, C] or a list
    of differently sized [H, W, C]. Steps, as VideoMV's inference (VGen ``utils/transforms``):

    1. RGBA is pasted on ``background`` (1.0 = white) through its alpha;
    2. ``CenterCropWide(crop_size)``: Pillow BOX resize to ``(w // s, h // s)`` with
       ``s = min(w, h) / crop_size``, then a centre crop to ``crop_size``²;
    3. resize to ``size``² with Pillow ``BILINEAR``. Pillow's bilinear *downscale is
       antialiased* (triangle filter widened by 256/224), which is what VideoMV ran, so
       ``antialias=True`` is the default; ``antialias=False`` gives torch's
       ``F.interpolate(mode='bilinear', align_corners=False)`` without antialiasing instead.
       (The two differ by up to a few percent of the pixel range on sharp edges.);
    4. /255, clamp to [0, 1], CLIP mean / std.

    uint8 inputs are rounded to 8 bits after every step with Pillow's fixed-point arithmetic
    (bit-identical to Pillow in the tests); float inputs stay in float.
    """
    if isinstance(images, (list, tuple)):
        batch = [np.asarray(im) for im in images]
    else:
        arr = np.asarray(images)
        batch = [arr] if arr.ndim == 3 else list(arr)
        if arr.ndim not in (3, 4):
            raise ValueError(f"images must be [H, W, C] or [B, H, W, C], got {arr.shape}")
    if not batch:
        raise ValueError("preprocess got no images")
    return np.stack([_preprocess_one(im, crop_size, size, antialias, background)
                     for im in batch])


# ---- tokenizer ----------------------------------------------------------------------------------
# (in videomv_jax.models.clip_tokenizer; re-exported here)
