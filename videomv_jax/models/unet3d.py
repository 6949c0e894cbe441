"""VideoMV's video UNet (text and image variants) in Flax NNX, channels last.

One module family covers both released denoisers:

* ``UNet3DConfig.text_full()``: ModelScope-T2V / VGen ``UNetSD_T2VBase`` plus VideoMV's camera
  MLP (1,412,895,300 parameters; without the camera MLP it is exactly diffusers'
  ``UNet3DConditionModel`` default, 1,411,233,860);
* ``UNet3DConfig.image_full()``: I2VGen-XL / VGen ``UNetSD_I2VGen`` plus the camera MLP
  (1,422,130,664 parameters); the same block stack as diffusers' ``I2VGenXLUNet``.

Layout (docs/design.md §2.3; VGen names, mirrored by the NNX attribute paths so the converter is
mechanical): ``input_blocks[0] = [conv_in, TemporalTransformer(8 heads)]``; then per level
``num_res_blocks`` blocks ``[ResBlock, SpatialTransformer, TemporalTransformer]`` (the two
transformers only at levels with ``attn_levels[i]``) and a ``Downsample`` between levels;
``middle_block = [ResBlock, SpatialTransformer, TemporalTransformer, ResBlock]``;
``output_blocks`` mirror the encoder with ``num_res_blocks + 1`` blocks per level, each input
concatenated with the popped skip, and an ``Upsample`` closing every level but the last; head
``GroupNorm → SiLU → conv``. Every ResBlock ends in a 4-stage temporal convolution
(VGen's misspelt ``temopral_conv``).

Numerics that matter for parity with the PyTorch weights (design §10.1):

* frames are folded into the batch as ``b * F + f`` for every 2-D op; the temporal conv and
  temporal transformer GroupNorms normalise the 5-D tensor (statistics pool over frames);
* GroupNorm ε is 1e-5 in ResBlocks, the head and the temporal convs, 1e-6 in the spatial and
  temporal transformers; LayerNorm ε 1e-5;
* GELU is exact (erf); GEGLU's projection is split value-first: ``value · gelu(gate)``;
* q/k/v have no bias, the output projection has one, the softmax scale is ``1/√head_dim``;
* the timestep (and fps) sinusoid is cos-first over ``base_channels`` features, integer
  timesteps unscaled;
* the temporal transformers have no positional encoding at all.

The image variant (design §2.4) adds: the *local image concat* branch (three 3×3 convs on the
input-image latent followed by a frame-position mask, then a tiny transformer over frames at
each pixel), whose result VideoMV adds **twice** (``concat_added_twice``; diffusers adds it
once); 64 local-image context tokens (conv → exact adaptive average pool to 32×32 → two
stride-2 convs); 4 global tokens from the CLIP image embedding; an fps embedding that is always
added to the time embedding.

Sharding: the UNet input and output and the hidden state entering and leaving every input /
middle / output block carry ``with_logical_constraint`` hints with the logical axes
:data:`VIDEO_AXES` = ``("batch", "frames", None, None, "embed")`` of the **unfolded** video
``[B, F, H, W, C]`` (the folded ``[B·F, H, W, C]`` state is viewed as 5-D for the hint, a free
reshape). Hinting the unfolded batch keeps every video's frames on one device, so the temporal
convs / transformers need no communication, and an FSDP / data mesh keeps activations split
over the batch (default rules: ``batch`` → ``("data", "fsdp")``; ``embed`` → ``fsdp`` only
where the batch does not already use it). Outside a mesh the hints are no-ops.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from videomv_jax.models import abstract_model, model_from_params
from videomv_jax.nn.attention import IMPLEMENTATIONS, dot_product_attention
from videomv_jax.nn.embeddings import sinusoidal_embedding
from videomv_jax.nn.layers import Conv, GroupNorm, LayerNorm, Linear, gelu
from videomv_jax.parallel import with_logical_constraint

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
VARIANTS = ("text", "image")
#: kernel of the short-sequence attentions (temporal self-attention over frames, cross-attention
#: over text/image tokens, the local temporal encoder): always the exact einsum kernel.
_SHORT_ATTENTION = "xla"


# ---- config ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class UNet3DConfig:
    """Hyper-parameters of the VideoMV video UNet (defaults = the text model, ``text_full``).

    ``base_channels * channel_mult[i]`` is the width of level ``i``; the encoder has
    ``num_res_blocks`` ResBlocks per level, the decoder one more. ``attn_levels[i]`` puts a
    spatial + temporal transformer after each ResBlock of level ``i`` (the middle block always
    has both). Heads are ``width // head_dim``, except the first temporal transformer (after
    ``conv_in``), which has ``first_temporal_heads × head_dim`` inner features. The time
    embedding is ``4 * base_channels`` wide.

    ``variant="image"`` adds the I2VGen-XL image conditioning (``conv_in`` then sees
    ``2 * in_channels``); ``use_camera`` adds VideoMV's camera MLP ``camera_dim → 4·base →
    4·base`` (last layer zero-initialised). ``attention`` is the kernel of the *spatial
    self-attention* only (long sequences; ``"auto"`` picks cuDNN flash on GPU in bf16); every
    other attention runs the exact ``"xla"`` kernel. ``remat`` rematerialises each UNet block.
    """

    variant: str = "text"
    in_channels: int = 4
    out_channels: int = 4
    base_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_levels: tuple[bool, ...] = (True, True, True, False)
    head_dim: int = 64
    first_temporal_heads: int = 8
    context_dim: int = 1024
    norm_groups: int = 32
    resnet_eps: float = 1e-5
    transformer_norm_eps: float = 1e-6
    layer_norm_eps: float = 1e-5
    resblock_dropout: float = 0.1
    temporal_conv_dropout: float = 0.1
    use_camera: bool = True
    camera_dim: int = 16
    # image variant (ignored by the text variant)
    image_embed_dim: int = 1024
    num_image_tokens: int = 4
    local_pool_size: int = 32
    concat_added_twice: bool = True
    local_encoder_heads: int = 2
    local_encoder_dropout: float = 0.05
    default_fps: float = 8.0
    # numerics / memory
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention: str = "xla"
    remat: bool = False

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attn_levels", tuple(self.attn_levels))
        if self.variant not in VARIANTS:
            raise ValueError(f"UNet3DConfig.variant must be one of {VARIANTS}, got "
                             f"{self.variant!r}")
        positive = ("in_channels", "out_channels", "base_channels", "num_res_blocks",
                    "head_dim", "first_temporal_heads", "context_dim", "norm_groups",
                    "camera_dim", "image_embed_dim", "num_image_tokens", "local_pool_size",
                    "local_encoder_heads")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"UNet3DConfig.{name} must be a positive integer, got "
                                 f"{value!r}")
        if not self.channel_mult or any(not isinstance(m, int) or isinstance(m, bool) or m < 1
                                        for m in self.channel_mult):
            raise ValueError(f"UNet3DConfig.channel_mult must be a non-empty tuple of positive "
                             f"integers, got {self.channel_mult!r}")
        if len(self.attn_levels) != len(self.channel_mult):
            raise ValueError(f"UNet3DConfig.attn_levels needs one flag per level "
                             f"({len(self.channel_mult)}), got {self.attn_levels!r}")
        if any(not isinstance(a, bool) for a in self.attn_levels):
            raise ValueError(f"UNet3DConfig.attn_levels must hold booleans, got "
                             f"{self.attn_levels!r}")
        for width in self.all_widths:
            if width % self.norm_groups:
                raise ValueError(f"UNet3DConfig.norm_groups={self.norm_groups} must divide every "
                                 f"GroupNorm width (level widths and decoder skip "
                                 f"concatenations {sorted(set(self.all_widths))})")
        attn_widths = [self.widths[i] for i, a in enumerate(self.attn_levels) if a]
        for width in attn_widths + [self.widths[-1]]:
            if width % self.head_dim:
                raise ValueError(f"UNet3DConfig.head_dim={self.head_dim} must divide the width "
                                 f"{width} of every level with attention")
        for name in ("resnet_eps", "transformer_norm_eps", "layer_norm_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"UNet3DConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("resblock_dropout", "temporal_conv_dropout", "local_encoder_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"UNet3DConfig.{name} must be in [0, 1), got "
                                 f"{getattr(self, name)}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"UNet3DConfig.{name} must be one of {tuple(_DTYPES)}, got "
                                 f"{getattr(self, name)!r}")
        if self.attention not in IMPLEMENTATIONS:
            raise ValueError(f"UNet3DConfig.attention must be one of {IMPLEMENTATIONS}, got "
                             f"{self.attention!r}")
        for name in ("use_camera", "concat_added_twice", "remat"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"UNet3DConfig.{name} must be a bool, got "
                                 f"{getattr(self, name)!r}")

    # ---- presets -------------------------------------------------------------------------------

    @classmethod
    def text_full(cls, **overrides: Any) -> UNet3DConfig:
        """VideoMV text-to-MV UNet (``UNetSD_T2VBase`` + camera MLP), 1,412,895,300 params."""
        return cls(**overrides)

    @classmethod
    def image_full(cls, **overrides: Any) -> UNet3DConfig:
        """VideoMV image-to-MV UNet (``UNetSD_I2VGen`` + camera MLP), 1,422,130,664 params."""
        kwargs: dict[str, Any] = dict(variant="image")
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def text_tiny(cls, **overrides: Any) -> UNet3DConfig:
        """Test size, same structure: widths (32, 64, 64), attention at the first two levels,
        one ResBlock per encoder level (two per decoder level), head dim 8 (4 / 8 heads),
        8 GroupNorm groups, context 32, time embedding 128."""
        kwargs: dict[str, Any] = dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                                      attn_levels=(True, True, False), head_dim=8,
                                      context_dim=32, norm_groups=8, camera_dim=16)
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def image_tiny(cls, **overrides: Any) -> UNet3DConfig:
        """``text_tiny`` with the image path (CLIP embedding width = context width, 32, as in
        diffusers' ``I2VGenXLUNet``)."""
        kwargs: dict[str, Any] = dict(variant="image", image_embed_dim=32)
        kwargs.update(overrides)
        return cls.text_tiny(**kwargs)

    # ---- (de)serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attn_levels"] = list(self.attn_levels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UNet3DConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown UNet3DConfig fields {unknown}")
        return cls(**dict(d))

    # ---- derived -------------------------------------------------------------------------------

    @property
    def is_image(self) -> bool:
        return self.variant == "image"

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def embed_dim(self) -> int:
        """Width of the time / fps / camera embeddings."""
        return 4 * self.base_channels

    @property
    def conv_in_channels(self) -> int:
        return 2 * self.in_channels if self.is_image else self.in_channels

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def all_widths(self) -> list[int]:
        """Every width a GroupNorm sees (level widths and decoder ResBlock inputs)."""
        inputs, _, outputs = unet_layout(self)
        widths = [s.in_ch for blk in inputs + outputs for s in blk if s.kind == "res"]
        return widths + list(self.widths)

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def parameter_dtype(self):
        return _DTYPES[self.param_dtype]


# ---- layout (shared by the model and the converters) -------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One layer of a UNet block: ``kind`` in conv_in / res / spatial / temporal / down / up.

    ``level`` and ``index`` locate it in diffusers' ``down_blocks[level]`` /
    ``up_blocks[level]`` (``up_blocks[0]`` the deepest) at layer ``index``; the middle block
    uses ``level = -1``.
    """

    kind: str
    in_ch: int
    out_ch: int
    heads: int = 0
    level: int = 0
    index: int = 0


def unet_layout(cfg: UNet3DConfig) -> tuple[list[list[LayerSpec]], list[LayerSpec],
                                             list[list[LayerSpec]]]:
    """(input_blocks, middle_block, output_blocks) as lists of :class:`LayerSpec`, in VGen's
    order. A ``down`` block is a one-element list (VGen stores the bare ``Downsample``)."""
    hd = cfg.head_dim
    widths = [cfg.base_channels * m for m in cfg.channel_mult]
    last = len(widths) - 1
    c0 = widths[0]
    inputs: list[list[LayerSpec]] = [[
        LayerSpec("conv_in", cfg.conv_in_channels, c0),
        LayerSpec("temporal", c0, c0, heads=cfg.first_temporal_heads)]]
    skips = [c0]
    ch = c0
    for i, out in enumerate(widths):
        for j in range(cfg.num_res_blocks):
            blk = [LayerSpec("res", ch, out, level=i, index=j)]
            if cfg.attn_levels[i]:
                blk += [LayerSpec("spatial", out, out, out // hd, i, j),
                        LayerSpec("temporal", out, out, out // hd, i, j)]
            inputs.append(blk)
            skips.append(out)
            ch = out
        if i != last:
            inputs.append([LayerSpec("down", out, out, level=i)])
            skips.append(out)
    middle = [LayerSpec("res", ch, ch, level=-1, index=0),
              LayerSpec("spatial", ch, ch, ch // hd, -1, 0),
              LayerSpec("temporal", ch, ch, ch // hd, -1, 0),
              LayerSpec("res", ch, ch, level=-1, index=1)]
    outputs: list[list[LayerSpec]] = []
    for i, out in enumerate(reversed(widths)):
        level = last - i
        for j in range(cfg.num_res_blocks + 1):
            blk = [LayerSpec("res", ch + skips.pop(), out, level=i, index=j)]
            if cfg.attn_levels[level]:
                blk += [LayerSpec("spatial", out, out, out // hd, i, j),
                        LayerSpec("temporal", out, out, out // hd, i, j)]
            if level != 0 and j == cfg.num_res_blocks:
                blk.append(LayerSpec("up", out, out, level=i))
            outputs.append(blk)
            ch = out
    return inputs, middle, outputs


# ---- helpers -----------------------------------------------------------------------------------


def adaptive_avg_pool2d(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
    """PyTorch ``AdaptiveAvgPool2d`` on channels-last [N, H, W, C]: output cell ``i`` averages
    rows ``floor(i·H/oh) .. ceil((i+1)·H/oh) - 1`` (likewise columns). Exact for any sizes
    (downsampling, upsampling by replication, uneven windows); identity when sizes agree."""
    n, h, w, c = x.shape
    oh, ow = output_size
    if (h, w) == (oh, ow):
        return x

    def matrix(size_in: int, size_out: int) -> np.ndarray:
        m = np.zeros((size_out, size_in), np.float32)
        for i in range(size_out):
            start = (i * size_in) // size_out
            end = -((-(i + 1) * size_in) // size_out)
            m[i, start:end] = 1.0 / (end - start)
        return m

    mh = jnp.asarray(matrix(h, oh), x.dtype)
    mw = jnp.asarray(matrix(w, ow), x.dtype)
    return jnp.einsum("ih,nhwc,jw->nijc", mh, x, mw, precision=jax.lax.Precision.HIGHEST)


def frame_position_latents(image_latent: jax.Array, num_frames: int) -> jax.Array:
    """[B, h, w, C] image latent → [B, F, h, w, C]: frame 0 is the latent, frame k ≥ 1 the
    constant ``k / (F - 1)`` (I2VGen-XL's position mask, built inside VGen's UNet)."""
    b, h, w, c = image_latent.shape
    first = image_latent[:, None]
    if num_frames == 1:
        return first
    pos = jnp.arange(1, num_frames, dtype=jnp.float32) / (num_frames - 1)
    rest = jnp.broadcast_to(pos[None, :, None, None, None].astype(image_latent.dtype),
                            (b, num_frames - 1, h, w, c))
    return jnp.concatenate([first, rest], axis=1)


#: Logical axes of a second (output) projection: input features on ``mlp``, output on ``embed``,
#: so that under tensor parallelism the first projection splits its outputs (column-parallel)
#: and this one its inputs (row-parallel): one reduction per attention / feed-forward block.
_ROW = ("mlp", "embed")


def _kw(cfg: UNet3DConfig) -> dict[str, Any]:
    return dict(dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype)


# ---- building blocks ---------------------------------------------------------------------------


class EmbedMLP(nnx.Module):
    """``Linear → SiLU → Linear`` (VGen ``time_embed`` / ``camera_embedding`` /
    ``fps_embedding`` / ``context_embedding``, indices 0 and 2)."""

    def __init__(self, cin: int, hidden: int, cout: int, cfg: UNet3DConfig, *, rngs: nnx.Rngs,
                 zero_last: bool = False):
        self.linear_1 = Linear(cin, hidden, rngs=rngs, **_kw(cfg))
        self.linear_2 = Linear(hidden, cout, rngs=rngs, zero_init=zero_last, **_kw(cfg))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(x)))


class TemporalConvBlock(nnx.Module):
    """VGen ``TemporalConvBlock_v2`` / diffusers ``TemporalConvLayer``: four stages of
    5-D GroupNorm (ε 1e-5) → SiLU → (dropout, stages 2–4) → conv (3, 1, 1) zero-padded in time,
    last conv zero-initialised, identity residual. Input folded [B·F, H, W, C]."""

    def __init__(self, ch: int, cfg: UNet3DConfig, *, rngs: nnx.Rngs):
        kw = _kw(cfg)
        pad = ((1, 1), (0, 0), (0, 0))
        for n in range(1, 5):
            setattr(self, f"norm{n}", GroupNorm(ch, cfg.norm_groups, cfg.resnet_eps, rngs=rngs,
                                                **kw))
            setattr(self, f"conv{n}", Conv(ch, ch, (3, 1, 1), padding=pad, zero_init=n == 4,
                                           rngs=rngs, **kw))
        self.dropout = nnx.Dropout(cfg.temporal_conv_dropout, rngs=rngs)

    def __call__(self, x: jax.Array, num_frames: int, deterministic: bool) -> jax.Array:
        bf, h, w, c = x.shape
        x5 = x.reshape(bf // num_frames, num_frames, h, w, c)
        y = self.conv1(jax.nn.silu(self.norm1(x5)))
        for n in (2, 3, 4):
            y = jax.nn.silu(getattr(self, f"norm{n}")(y))
            y = getattr(self, f"conv{n}")(self.dropout(y, deterministic=deterministic))
        return (x5 + y).reshape(bf, h, w, c)


class ResBlock(nnx.Module):
    """VGen ``ResBlock`` (diffusers ``ResnetBlock2D`` + ``TemporalConvLayer``):
    GN → SiLU → conv3×3, + Linear(SiLU(emb)), GN → SiLU → dropout → conv3×3 (zero-init),
    + skip (identity or 1×1 conv), then the temporal conv stack."""

    def __init__(self, cin: int, cout: int, cfg: UNet3DConfig, *, rngs: nnx.Rngs):
        kw = _kw(cfg)
        self.in_norm = GroupNorm(cin, cfg.norm_groups, cfg.resnet_eps, rngs=rngs, **kw)
        self.in_conv = Conv(cin, cout, (3, 3), rngs=rngs, **kw)
        self.emb_proj = Linear(cfg.embed_dim, cout, rngs=rngs, **kw)
        self.out_norm = GroupNorm(cout, cfg.norm_groups, cfg.resnet_eps, rngs=rngs, **kw)
        self.dropout = nnx.Dropout(cfg.resblock_dropout, rngs=rngs)
        self.out_conv = Conv(cout, cout, (3, 3), zero_init=True, rngs=rngs, **kw)
        self.skip_connection = Conv(cin, cout, (1, 1), rngs=rngs, **kw) if cin != cout else None
        self.temporal_conv = TemporalConvBlock(cout, cfg, rngs=rngs)

    def __call__(self, x: jax.Array, emb: jax.Array, num_frames: int,
                 deterministic: bool) -> jax.Array:
        h = self.in_conv(jax.nn.silu(self.in_norm(x)))
        h = h + self.emb_proj(jax.nn.silu(emb))[:, None, None, :]
        h = jax.nn.silu(self.out_norm(h))
        h = self.out_conv(self.dropout(h, deterministic=deterministic))
        skip = x if self.skip_connection is None else self.skip_connection(x)
        return self.temporal_conv(skip + h, num_frames, deterministic)


class Attention(nnx.Module):
    """Multi-head attention: q/k/v without bias, ``to_out`` with bias, scale ``1/√head_dim``.

    A ``context`` with fewer rows than the queries (one per video, queries folded ``b·F + f``)
    is shared by each group of consecutive query rows: the keys/values are projected once per
    video instead of once per frame (same result as repeating the context per frame)."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, head_dim: int,
                 implementation: str, cfg: UNet3DConfig, *, rngs: nnx.Rngs):
        kw = _kw(cfg)
        inner = heads * head_dim
        self.heads, self.head_dim, self.implementation = heads, head_dim, implementation
        self.to_q = Linear(query_dim, inner, use_bias=False, rngs=rngs, **kw)
        self.to_k = Linear(context_dim, inner, use_bias=False, rngs=rngs, **kw)
        self.to_v = Linear(context_dim, inner, use_bias=False, rngs=rngs, **kw)
        # row-parallel (Megatron): input features split like to_q/k/v's outputs
        self.to_out = Linear(inner, query_dim, axes=_ROW, rngs=rngs, **kw)

    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        ctx = x if context is None else context
        n, lq, _ = x.shape
        q, k, v = self.to_q(x), self.to_k(ctx), self.to_v(ctx)
        nb = ctx.shape[0]
        if n % nb:
            raise ValueError(f"attention: {n} query rows cannot share a context of batch {nb}")
        q = q.reshape(nb, (n // nb) * lq, self.heads, self.head_dim)
        k = k.reshape(nb, -1, self.heads, self.head_dim)
        v = v.reshape(nb, -1, self.heads, self.head_dim)
        out = dot_product_attention(q, k, v, implementation=self.implementation)
        return self.to_out(out.reshape(n, lq, self.heads * self.head_dim))


class BasicTransformerBlock(nnx.Module):
    """LN → attn1 (self) → LN → attn2 (cross on ``context``, or self when ``context_dim`` is
    None) → LN → GEGLU feed-forward (Linear dim → 8·dim, value·gelu(gate), Linear 4·dim → dim);
    each sub-layer residual. ``ff_proj`` / ``ff_out`` are VGen's ``ff.net.0.proj`` /
    ``ff.net.2``."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None,
                 self_attention: str, cfg: UNet3DConfig, *, rngs: nnx.Rngs):
        kw = _kw(cfg)
        eps = cfg.layer_norm_eps
        self.norm1 = LayerNorm(dim, eps, rngs=rngs, **kw)
        self.attn1 = Attention(dim, dim, heads, head_dim, self_attention, cfg, rngs=rngs)
        self.norm2 = LayerNorm(dim, eps, rngs=rngs, **kw)
        self.attn2 = Attention(dim, context_dim or dim, heads, head_dim, _SHORT_ATTENTION, cfg,
                               rngs=rngs)
        self.norm3 = LayerNorm(dim, eps, rngs=rngs, **kw)
        self.ff_proj = Linear(dim, 8 * dim, rngs=rngs, **kw)
        self.ff_out = Linear(4 * dim, dim, axes=_ROW, rngs=rngs, **kw)

    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        value, gate = jnp.split(self.ff_proj(self.norm3(x)), 2, axis=-1)
        return x + self.ff_out(value * gelu(gate))


class SpatialTransformer(nnx.Module):
    """GroupNorm (ε 1e-6) → Linear proj_in → BasicTransformerBlock (self + cross-attention) →
    Linear proj_out (zero-init) → residual, on folded frames [B·F, H, W, C]."""

    def __init__(self, ch: int, heads: int, cfg: UNet3DConfig, *, rngs: nnx.Rngs):
        kw = _kw(cfg)
        inner = heads * cfg.head_dim
        self.norm = GroupNorm(ch, cfg.norm_groups, cfg.transformer_norm_eps, rngs=rngs, **kw)
        self.proj_in = Linear(ch, inner, rngs=rngs, **kw)
        self.transformer_blocks = nnx.List([BasicTransformerBlock(
            inner, heads, cfg.head_dim, cfg.context_dim, cfg.attention, cfg, rngs=rngs)])
        self.proj_out = Linear(inner, ch, zero_init=True, rngs=rngs, **kw)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        bf, h, w, c = x.shape
        y = self.proj_in(self.norm(x).reshape(bf, h * w, c))
        for block in self.transformer_blocks:
            y = block(y, context)
        return x + self.proj_out(y).reshape(bf, h, w, c)


class TemporalTransformer(nnx.Module):
    """5-D GroupNorm (ε 1e-6) → per-pixel sequences over frames → proj_in (VGen Conv1d k=1) →
    BasicTransformerBlock with *both* attentions self-attention over frames, no positional
    encoding → proj_out (zero-init) → residual. Input folded [B·F, H, W, C]."""

    def __init__(self, ch: int, heads: int, cfg: UNet3DConfig, *, rngs: nnx.Rngs):
        kw = _kw(cfg)
        inner = heads * cfg.head_dim
        self.norm = GroupNorm(ch, cfg.norm_groups, cfg.transformer_norm_eps, rngs=rngs, **kw)
        self.proj_in = Linear(ch, inner, rngs=rngs, **kw)
        self.transformer_blocks = nnx.List([BasicTransformerBlock(
            inner, heads, cfg.head_dim, None, _SHORT_ATTENTION, cfg, rngs=rngs)])
        self.proj_out = Linear(inner, ch, zero_init=True, rngs=rngs, **kw)

    def __call__(self, x: jax.Array, num_frames: int) -> jax.Array:
        bf, h, w, c = x.shape
        b = bf // num_frames
        y = self.norm(x.reshape(b, num_frames, h, w, c))
        y = y.transpose(0, 2, 3, 1, 4).reshape(b * h * w, num_frames, c)
        y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y)
        y = self.proj_out(y).reshape(b, h, w, num_frames, c).transpose(0, 3, 1, 2, 4)
        return x + y.reshape(bf, h, w, c)


class Downsample(nnx.Module):
    """3×3 conv, stride 2, padding 1 (VGen attribute ``op``)."""

    def __init__(self, ch: int, cfg: UNet3DConfig, *, rngs: nnx.Rngs):
        self.op = Conv(ch, ch, (3, 3), strides=2, padding=((1, 1), (1, 1)), rngs=rngs,
                       **_kw(cfg))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.op(x)


class Upsample(nnx.Module):
    """Nearest ×2 (pixel repetition, as PyTorch ``F.interpolate``) then a 3×3 conv."""

    def __init__(self, ch: int, cfg: UNet3DConfig, *, rngs: nnx.Rngs):
        self.conv = Conv(ch, ch, (3, 3), rngs=rngs, **_kw(cfg))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(x)


# ---- image-variant modules ---------------------------------------------------------------------


class LocalImageConcat(nnx.Module):
    """VGen ``local_image_concat`` (diffusers ``image_latents_proj_in``): conv3×3 C→4C → SiLU →
    conv3×3 4C→4C → SiLU → conv3×3 4C→C, per frame."""

    def __init__(self, c: int, cfg: UNet3DConfig, *, rngs: nnx.Rngs):
        kw = _kw(cfg)
        self.conv1 = Conv(c, 4 * c, (3, 3), rngs=rngs, **kw)
        self.conv2 = Conv(4 * c, 4 * c, (3, 3), rngs=rngs, **kw)
        self.conv3 = Conv(4 * c, c, (3, 3), rngs=rngs, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.silu(self.conv1(x))
        x = jax.nn.silu(self.conv2(x))
        return self.conv3(x)


class LocalTemporalEncoder(nnx.Module):
    """VGen ``local_temporal_encoder`` (``TransformerV2``, depth 1; diffusers
    ``I2VGenXLTransformerTemporalEncoder``) over frames at each pixel, [N, F, C]:
    ``x + dropout(to_out(attn(LN(x))))`` with ``heads`` heads of dim C (q/k/v no bias), then
    ``x + ff_out(dropout(gelu(ff_in(x))))`` (inner 4C) with **no** LayerNorm before the
    feed-forward. VGen's fused ``to_qkv`` is stored split as ``to_q``/``to_k``/``to_v``."""

    def __init__(self, c: int, cfg: UNet3DConfig, *, rngs: nnx.Rngs):
        kw = _kw(cfg)
        self.heads = cfg.local_encoder_heads
        inner = self.heads * c
        self.norm = LayerNorm(c, cfg.layer_norm_eps, rngs=rngs, **kw)
        self.to_q = Linear(c, inner, use_bias=False, rngs=rngs, **kw)
        self.to_k = Linear(c, inner, use_bias=False, rngs=rngs, **kw)
        self.to_v = Linear(c, inner, use_bias=False, rngs=rngs, **kw)
        self.to_out = Linear(inner, c, axes=_ROW, rngs=rngs, **kw)
        self.ff_in = Linear(c, 4 * c, rngs=rngs, **kw)
        self.ff_out = Linear(4 * c, c, axes=_ROW, rngs=rngs, **kw)
        self.dropout = nnx.Dropout(cfg.local_encoder_dropout, rngs=rngs)

    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        n, f, c = x.shape
        h = self.norm(x)
        q, k, v = (p(h).reshape(n, f, self.heads, c) for p in (self.to_q, self.to_k, self.to_v))
        a = dot_product_attention(q, k, v, implementation=_SHORT_ATTENTION)
        a = self.to_out(a.reshape(n, f, self.heads * c))
        x = x + self.dropout(a, deterministic=deterministic)
        h = self.dropout(gelu(self.ff_in(x)), deterministic=deterministic)
        return x + self.ff_out(h)


class LocalImageEmbedding(nnx.Module):
    """VGen ``local_image_embedding`` (diffusers ``image_latents_context_embedding``):
    conv3×3 C→8C → SiLU → exact adaptive average pool to ``local_pool_size``² → conv3×3
    8C→16C stride 2 → SiLU → conv3×3 16C→context stride 2; tokens row-major (h, w)."""

    def __init__(self, c: int, cfg: UNet3DConfig, *, rngs: nnx.Rngs):
        kw = _kw(cfg)
        pad = ((1, 1), (1, 1))
        self.pool_size = cfg.local_pool_size
        self.conv1 = Conv(c, 8 * c, (3, 3), rngs=rngs, **kw)
        self.conv2 = Conv(8 * c, 16 * c, (3, 3), strides=2, padding=pad, rngs=rngs, **kw)
        self.conv3 = Conv(16 * c, cfg.context_dim, (3, 3), strides=2, padding=pad, rngs=rngs,
                          **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.silu(self.conv1(x))
        x = adaptive_avg_pool2d(x, (self.pool_size, self.pool_size))
        x = self.conv3(jax.nn.silu(self.conv2(x)))
        n, h, w, c = x.shape
        return x.reshape(n, h * w, c)


# ---- the UNet ----------------------------------------------------------------------------------


def _run_layers(layers, h: jax.Array, emb: jax.Array, context: jax.Array, num_frames: int,
                deterministic: bool) -> jax.Array:
    """Run one UNet block (a list of layers) on folded frames, dispatching on layer type."""
    for layer in layers:
        if isinstance(layer, ResBlock):
            h = layer(h, emb, num_frames, deterministic)
        elif isinstance(layer, SpatialTransformer):
            h = layer(h, context)
        elif isinstance(layer, TemporalTransformer):
            h = layer(h, num_frames)
        else:  # conv_in, Upsample
            h = layer(h)
    return h


_run_layers_remat = nnx.remat(_run_layers, static_argnums=(4, 5))

#: Logical axes of the UNet's activations, as the unfolded video ``[B, F, H, W, C]``.
VIDEO_AXES: tuple[str | None, ...] = ("batch", "frames", None, None, "embed")


def _constrain_video(h: jax.Array, batch: int) -> jax.Array:
    """Sharding hint (:data:`VIDEO_AXES`) for a folded ``[B·F, H, W, C]`` hidden state, applied
    to its ``[B, F, H, W, C]`` view so that the batch, not the folded frame axis, is split.
    A no-op outside a mesh."""
    bf = h.shape[0]
    v = with_logical_constraint(h.reshape(batch, bf // batch, *h.shape[1:]), VIDEO_AXES)
    return v.reshape(h.shape)


class UNet3D(nnx.Module):
    """The VideoMV video UNet (text or image variant, see :class:`UNet3DConfig`).

    Attribute paths mirror VGen's state dict: ``input_blocks[k][m]`` (``input_blocks[k]`` is a
    bare :class:`Downsample` between levels), ``middle_block[m]``, ``output_blocks[k][m]``,
    ``time_embed``, ``camera_embedding``, ``out_norm`` / ``out_conv``; image variant
    ``fps_embedding``, ``context_embedding``, ``local_image_concat``,
    ``local_temporal_encoder``, ``local_image_embedding``.
    """

    def __init__(self, config: UNet3DConfig, *, rngs: nnx.Rngs):
        cfg = self.config = config
        kw = _kw(cfg)
        e = cfg.embed_dim
        self.time_embed = EmbedMLP(cfg.base_channels, e, e, cfg, rngs=rngs)
        self.camera_embedding = (EmbedMLP(cfg.camera_dim, e, e, cfg, rngs=rngs, zero_last=True)
                                 if cfg.use_camera else None)
        if cfg.is_image:
            c = cfg.in_channels
            self.fps_embedding = EmbedMLP(cfg.base_channels, e, e, cfg, rngs=rngs,
                                          zero_last=True)
            self.context_embedding = EmbedMLP(cfg.image_embed_dim, e,
                                              cfg.context_dim * cfg.num_image_tokens, cfg,
                                              rngs=rngs)
            self.local_image_concat = LocalImageConcat(c, cfg, rngs=rngs)
            self.local_temporal_encoder = LocalTemporalEncoder(c, cfg, rngs=rngs)
            self.local_image_embedding = LocalImageEmbedding(c, cfg, rngs=rngs)
        else:
            self.fps_embedding = self.context_embedding = None
            self.local_image_concat = self.local_temporal_encoder = None
            self.local_image_embedding = None

        def build(spec: LayerSpec) -> nnx.Module:
            if spec.kind == "conv_in":
                return Conv(spec.in_ch, spec.out_ch, (3, 3), rngs=rngs, **kw)
            if spec.kind == "res":
                return ResBlock(spec.in_ch, spec.out_ch, cfg, rngs=rngs)
            if spec.kind == "spatial":
                return SpatialTransformer(spec.out_ch, spec.heads, cfg, rngs=rngs)
            if spec.kind == "temporal":
                return TemporalTransformer(spec.out_ch, spec.heads, cfg, rngs=rngs)
            if spec.kind == "down":
                return Downsample(spec.out_ch, cfg, rngs=rngs)
            if spec.kind == "up":
                return Upsample(spec.out_ch, cfg, rngs=rngs)
            raise AssertionError(spec.kind)

        inputs, middle, outputs = unet_layout(cfg)
        self.input_blocks = nnx.List([
            build(blk[0]) if blk[0].kind == "down" else nnx.List([build(s) for s in blk])
            for blk in inputs])
        self.middle_block = nnx.List([build(s) for s in middle])
        self.output_blocks = nnx.List([nnx.List([build(s) for s in blk]) for blk in outputs])
        c0 = cfg.widths[0]
        self.out_norm = GroupNorm(c0, cfg.norm_groups, cfg.resnet_eps, rngs=rngs, **kw)
        self.out_conv = Conv(c0, cfg.out_channels, (3, 3), zero_init=True, rngs=rngs, **kw)

    # ---- image conditioning (public so that tests and callers can inspect each part) ---------

    def image_concat_features(self, image_latent: jax.Array, num_frames: int, *,
                              deterministic: bool = True) -> jax.Array:
        """[B, h, w, C] image latent → the [B, F, h, w, C] features concatenated to ``x``:
        position-mask frames → ``local_image_concat`` per frame → ``local_temporal_encoder``
        over frames per pixel, ×2 when ``concat_added_twice`` (VideoMV / VGen)."""
        self._require_image("image_concat_features")
        b, h, w, c = image_latent.shape
        frames = frame_position_latents(image_latent.astype(self.config.compute_dtype),
                                        num_frames)
        y = self.local_image_concat(frames.reshape(b * num_frames, h, w, c))
        y = y.reshape(b, num_frames, h, w, c).transpose(0, 2, 3, 1, 4)
        y = self.local_temporal_encoder(y.reshape(b * h * w, num_frames, c), deterministic)
        y = y.reshape(b, h, w, num_frames, c).transpose(0, 3, 1, 2, 4)
        return 2 * y if self.config.concat_added_twice else y

    def image_context_tokens(self, image_latent: jax.Array,
                             image_embedding: jax.Array) -> jax.Array:
        """[B, local + global, context]: ``local_image_embedding`` tokens of the image latent
        (64 at full size) then ``num_image_tokens`` tokens from the CLIP image embedding."""
        self._require_image("image_context_tokens")
        cfg = self.config
        local = self.local_image_embedding(image_latent.astype(cfg.compute_dtype))
        emb = image_embedding.reshape(image_embedding.shape[0], -1)
        glob = self.context_embedding(emb.astype(cfg.compute_dtype))
        glob = glob.reshape(emb.shape[0], cfg.num_image_tokens, cfg.context_dim)
        return jnp.concatenate([local, glob], axis=1)

    def _require_image(self, what: str):
        if not self.config.is_image:
            raise ValueError(f"{what} needs an image-variant UNet (UNet3DConfig variant='image')")

    # ---- forward -------------------------------------------------------------------------------

    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        context: jax.Array,
        camera: jax.Array | None = None,
        *,
        image_latent: jax.Array | None = None,
        image_embedding: jax.Array | None = None,
        fps: jax.Array | float | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """Predict the model output (ε or v) for a noisy latent video.

        Args:
          x: [B, F, H, W, in_channels] noisy latents (4 channels in both variants; the image
            variant concatenates its image features internally). H, W divisible by
            ``config.downsample_factor``.
          t: [B] (or scalar) integer timesteps in [0, 1000), embedded unscaled.
          context: [B, L, context_dim] text tokens (OpenCLIP penultimate, L = 77), shared by
            all frames.
          camera: [B, F, camera_dim] flattened camera-to-world matrices, or None (no camera
            term, as VGen when ``camera_data`` is None). Needs ``config.use_camera``.
          image_latent: image variant only, required: [B, H, W, in_channels] VAE latent of the
            conditioning image (×0.18215); frames 1.. of the concat branch are the position mask.
          image_embedding: image variant only, required: [B, image_embed_dim] (or
            [B, 1, image_embed_dim]) CLIP image embedding (zeros for the unconditional branch).
          fps: image variant only: [B] or scalar frame rate, default ``config.default_fps``.
          deterministic: False enables dropout (needs a ``dropout`` or ``default`` RNG stream).

        Returns:
          [B, F, H, W, out_channels] in float32.
        """
        cfg = self.config
        dt = cfg.compute_dtype
        if x.ndim != 5 or x.shape[-1] != cfg.in_channels:
            raise ValueError(f"x must be [B, F, H, W, {cfg.in_channels}], got {x.shape}")
        b, f, hh, ww, _ = x.shape
        k = cfg.downsample_factor
        if hh % k or ww % k:
            raise ValueError(f"latent height/width {hh}x{ww} must be divisible by {k}")
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.context_dim:
            raise ValueError(f"context must be [B={b}, L, {cfg.context_dim}], got "
                             f"{context.shape}")
        if camera is not None:
            if not cfg.use_camera:
                raise ValueError("camera given but the UNet has no camera MLP "
                                 "(UNet3DConfig.use_camera=False)")
            if camera.shape != (b, f, cfg.camera_dim):
                raise ValueError(f"camera must be [B, F, {cfg.camera_dim}] = "
                                 f"{(b, f, cfg.camera_dim)}, got {camera.shape}")
        if not cfg.is_image and (image_latent is not None or image_embedding is not None
                                 or fps is not None):
            raise ValueError("image_latent / image_embedding / fps are inputs of the image "
                             "variant; this UNet is the text variant")
        if cfg.is_image:
            if image_latent is None or image_embedding is None:
                raise ValueError("the image-variant UNet needs image_latent [B, H, W, C] and "
                                 "image_embedding [B, D] (zeros for the unconditional branch)")
            if image_latent.shape != (b, hh, ww, cfg.in_channels):
                raise ValueError(f"image_latent must be [B, H, W, C] = "
                                 f"{(b, hh, ww, cfg.in_channels)}, got {image_latent.shape}")
            if (image_embedding.shape[0] != b
                    or math.prod(image_embedding.shape[1:]) != cfg.image_embed_dim):
                raise ValueError(f"image_embedding must be [B={b}, {cfg.image_embed_dim}], got "
                                 f"{image_embedding.shape}")
        t = jnp.broadcast_to(jnp.asarray(t), (b,))
        emb = self.time_embed(sinusoidal_embedding(t, cfg.base_channels).astype(dt))
        ctx = context.astype(dt)
        h = x.astype(dt)

        if cfg.is_image:
            fps = cfg.default_fps if fps is None else fps
            fps = jnp.broadcast_to(jnp.asarray(fps, jnp.float32), (b,))
            emb = emb + self.fps_embedding(sinusoidal_embedding(fps, cfg.base_channels)
                                           .astype(dt))
            concat = self.image_concat_features(image_latent, f, deterministic=deterministic)
            h = jnp.concatenate([h, concat.astype(dt)], axis=-1)
            ctx = jnp.concatenate([ctx, self.image_context_tokens(image_latent,
                                                                  image_embedding)], axis=1)

        emb = jnp.repeat(emb, f, axis=0)  # [B·F, E], row b·F + f
        if camera is not None:
            emb = emb + self.camera_embedding(camera.reshape(b * f, cfg.camera_dim).astype(dt))

        run = _run_layers_remat if cfg.remat else _run_layers
        # sharding hints (no-ops without a mesh): UNet input, every block's input and output
        h = with_logical_constraint(h, VIDEO_AXES).reshape(b * f, hh, ww, h.shape[-1])
        skips = []
        for blk in self.input_blocks:
            h = blk(h) if isinstance(blk, Downsample) else run(blk, h, emb, ctx, f,
                                                                deterministic)
            h = _constrain_video(h, b)
            skips.append(h)
        h = _constrain_video(run(self.middle_block, h, emb, ctx, f, deterministic), b)
        for blk in self.output_blocks:
            h = _constrain_video(jnp.concatenate([h, skips.pop()], axis=-1), b)
            h = _constrain_video(run(blk, h, emb, ctx, f, deterministic), b)
        h = self.out_conv(jax.nn.silu(self.out_norm(h)))
        h = h.reshape(b, f, hh, ww, cfg.out_channels).astype(jnp.float32)
        return with_logical_constraint(h, VIDEO_AXES)


def abstract_unet(config: UNet3DConfig) -> UNet3D:
    """The UNet with ``jax.ShapeDtypeStruct`` parameters (``nnx.eval_shape``, no memory).

    Same result as ``nnx.eval_shape(lambda: UNet3D(config, rngs=nnx.Rngs(0)))`` but ~10×
    faster: the RNG stream's counter is kept as a NumPy scalar during the trace. (With a traced
    counter, every one of the ~1,500 ``rngs()`` calls makes Flax compare ``.sharding`` of two
    tracers, which in JAX builds an error message by scanning the whole jaxpr traced so far —
    quadratic, ~20 s for the full UNet.)"""

    return abstract_model(UNet3D, config)


def unet_from_params(config: UNet3DConfig, params: Mapping[tuple, Any], *,
                     seed: int = 0, init_camera: bool = False) -> UNet3D:
    """A concrete UNet whose parameters are ``params`` ({path: array}, e.g. the output of a
    converter), built without a random initialisation (no second copy of the weights, no
    init time). Dropout RNG streams are seeded from ``seed``. Every parameter must be given,
    except that ``init_camera=True`` initialises an absent camera MLP as a fresh model would
    (random first layer, zero last layer: the camera term is exactly zero), e.g. for weights
    converted from diffusers, which has no camera MLP."""
    if init_camera and config.use_camera and not any(
            p[0] == "camera_embedding" for p in params):
        e = config.embed_dim
        mlp = EmbedMLP(config.camera_dim, e, e, config, rngs=nnx.Rngs(seed), zero_last=True)
        params = dict(params)
        for path, var in nnx.to_flat_state(nnx.state(mlp, nnx.Param)):
            params[("camera_embedding",) + tuple(path)] = var.get_value()
    return model_from_params(UNet3D, config, params, seed=seed)


def param_count(config: UNet3DConfig) -> int:
    """Exact number of parameters of the UNet for ``config`` (abstract, no memory)."""
    state = nnx.state(abstract_unet(config), nnx.Param)
    return sum(math.prod(v.get_value().shape) for _, v in nnx.to_flat_state(state))
