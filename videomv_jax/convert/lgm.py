"""Converter for the LGM reconstructor: LGM safetensors names and VideoMV's ``lgm_big.`` keys.

LGM's own checkpoints (``model.safetensors``, ``model_fp16_fixrot.safetensors``) hold the
module names of ``core/models.py`` without a prefix; a VideoMV ``.pth`` (``{'state_dict': ...}``)
holds the same names under ``lgm_big.`` next to the video UNet's keys. The table is generated
from a :class:`~videomv_jax.models.lgm.LGMConfig` (tiny and big share it); target paths follow
:class:`~videomv_jax.models.lgm.LGM`, whose attribute names are the PyTorch module names:

======================================================  =========================================
PyTorch key                                             ours (``nnx.Param`` path)
======================================================  =========================================
``unet.conv_in.{weight,bias}``  Conv2d [O, I, 3, 3]     ``unet/conv_in/{kernel,bias}`` [3, 3, I, O]
``unet.down_blocks.i.nets.j.{norm1,conv1,norm2,``       ``unet/down_blocks/i/nets/j/...``
``conv2,shortcut}`` (GN weight → ``scale``)             (``shortcut``: 1×1 conv, when widths differ)
``unet.down_blocks.i.attns.j.norm``                     ``.../attns/j/norm``
``unet.down_blocks.i.attns.j.attn.qkv.weight`` [3C, C]  ``.../attns/j/attn/qkv/kernel`` [C, 3C]
``unet.down_blocks.i.attns.j.attn.proj`` [C, C] + bias  ``.../attns/j/attn/proj/{kernel,bias}``
``unet.down_blocks.i.downsample``                       ``unet/down_blocks/i/downsample``
``unet.mid_block.{nets.0,attns.0,nets.1}``              ``unet/mid_block/...``
``unet.up_blocks.i.{nets.j,attns.j,upsample}``          ``unet/up_blocks/i/...``
``unet.norm_out``, ``unet.conv_out``, ``conv`` (1×1)    same names
======================================================  =========================================

Deliberately ignored: ``lpips_loss.*`` (the VGG LPIPS training loss LGM may carry) and, with a
prefix, every key that does not start with it (the video UNet of a VideoMV checkpoint).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from flax import nnx

from videomv_jax.convert.base import (
    Path,
    Rule,
    abstract_params,
    conv_rules,
    convert_state_dict,
    identity,
    linear,
    load_source_checkpoint,
    norm_rules,
)
from videomv_jax.models import model_from_params
from videomv_jax.models.lgm import LGM, LGMConfig

VIDEOMV_PREFIX = "lgm_big."
"""Prefix of the LGM keys inside a VideoMV checkpoint."""

LPIPS_IGNORE = ("lpips_loss.*",)
"""Source-key patterns (after the prefix) of LGM's LPIPS loss network, never converted."""


# ---- rule helpers --------------------------------------------------------------------------------


_conv = conv_rules
_norm = norm_rules


def _resnet(src: str, tgt: Path, shortcut: bool) -> list[Rule]:
    rules = (_norm(f"{src}.norm1", (*tgt, "norm1")) + _conv(f"{src}.conv1", (*tgt, "conv1"))
             + _norm(f"{src}.norm2", (*tgt, "norm2")) + _conv(f"{src}.conv2", (*tgt, "conv2")))
    if shortcut:
        rules += _conv(f"{src}.shortcut", (*tgt, "shortcut"))
    return rules


def _mv_attention(src: str, tgt: Path) -> list[Rule]:
    return (_norm(f"{src}.norm", (*tgt, "norm"))
            # fused qkv [3C, C] -> [C, 3C]: output columns stay q | k | v, each heads-major,
            # which is the split LGM.Attention and ours both apply.
            + [Rule(f"{src}.attn.qkv.weight", (*tgt, "attn", "qkv", "kernel"), linear),
               Rule(f"{src}.attn.proj.weight", (*tgt, "attn", "proj", "kernel"), linear),
               Rule(f"{src}.attn.proj.bias", (*tgt, "attn", "proj", "bias"), identity)])


def _escape(text: str) -> str:
    """Escape fnmatch's special characters so ``text`` matches literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def not_prefixed_patterns(prefix: str) -> list[str]:
    """fnmatch patterns that together match exactly the keys *not* starting with ``prefix``
    (fnmatch has no negation: a key misses the prefix iff it first differs at some position
    ``i`` or is a strict prefix of it)."""
    pats = []
    for i, ch in enumerate(prefix):
        pats.append(f"{_escape(prefix[:i])}[!{ch}]*")  # "[!]]" is valid: "]" first is literal
        pats.append(_escape(prefix[:i]))
    return pats


# ---- public table --------------------------------------------------------------------------------


def rules_lgm(config: LGMConfig, prefix: str = "") -> tuple[list[Rule], list[str]]:
    """Rules and ignore patterns for an LGM state dict whose keys carry ``prefix``.

    ``prefix=""``: LGM's own safetensors; ``prefix="lgm_big."`` (:data:`VIDEOMV_PREFIX`): a whole
    VideoMV checkpoint, whose other keys (the video UNet) are ignored. ``{prefix}lpips_loss.*``
    is always ignored."""
    p = prefix
    down = config.down_channels
    rules: list[Rule] = _conv(f"{p}unet.conv_in", ("unet", "conv_in"))
    prev = down[0]
    for i, c in enumerate(down):
        src, tgt = f"{p}unet.down_blocks.{i}", ("unet", "down_blocks", i)
        for j in range(config.layers_per_block):
            cin = prev if j == 0 else c
            rules += _resnet(f"{src}.nets.{j}", (*tgt, "nets", j), cin != c)
            if config.down_attention[i]:
                rules += _mv_attention(f"{src}.attns.{j}", (*tgt, "attns", j))
        if i < len(down) - 1:
            rules += _conv(f"{src}.downsample", (*tgt, "downsample"))
        prev = c
    src, tgt = f"{p}unet.mid_block", ("unet", "mid_block")
    rules += _resnet(f"{src}.nets.0", (*tgt, "nets", 0), False)
    if config.mid_attention:
        rules += _mv_attention(f"{src}.attns.0", (*tgt, "attns", 0))
    rules += _resnet(f"{src}.nets.1", (*tgt, "nets", 1), False)
    for i, (c, widths) in enumerate(zip(config.up_channels, config.up_block_in_channels(),
                                        strict=True)):
        src, tgt = f"{p}unet.up_blocks.{i}", ("unet", "up_blocks", i)
        for j, cin in enumerate(widths):
            rules += _resnet(f"{src}.nets.{j}", (*tgt, "nets", j), cin != c)
            if config.up_attention[i]:
                rules += _mv_attention(f"{src}.attns.{j}", (*tgt, "attns", j))
        if i < len(config.up_channels) - 1:
            rules += _conv(f"{src}.upsample", (*tgt, "upsample"))
    rules += _norm(f"{p}unet.norm_out", ("unet", "norm_out"))
    rules += _conv(f"{p}unet.conv_out", ("unet", "conv_out"))
    rules += _conv(f"{p}conv", ("conv",))
    ignore = [f"{_escape(p)}{pat}" for pat in LPIPS_IGNORE]
    if p:
        ignore += not_prefixed_patterns(p)
    return rules, ignore


def detect_prefix(state: Mapping[str, object]) -> str:
    """``"lgm_big."`` for a VideoMV checkpoint, ``""`` for LGM's own naming."""
    if any(k.startswith(VIDEOMV_PREFIX) for k in state):
        return VIDEOMV_PREFIX
    if any(k.startswith("unet.") for k in state):
        return ""
    raise ValueError("state dict holds no LGM keys (neither 'unet.*' as in LGM's safetensors nor "
                     f"'{VIDEOMV_PREFIX}unet.*' as in a VideoMV checkpoint)")


def convert(state: Mapping[str, np.ndarray], config: LGMConfig,
            prefix: str | None = None) -> dict[Path, np.ndarray]:
    """Convert a state dict (``prefix`` None = detect) to {parameter path: array} for
    :class:`~videomv_jax.models.lgm.LGM`; raises ``ConversionError`` listing every problem."""
    prefix = detect_prefix(state) if prefix is None else prefix
    rules, ignore = rules_lgm(config, prefix)
    target = abstract_params(nnx.eval_shape(lambda: LGM(config, rngs=nnx.Rngs(0))))
    what = "VideoMV lgm_big" if prefix else "LGM"
    return convert_state_dict(state, rules, target, ignore, model_name=f"LGM ({what} checkpoint)")


def lgm_from_params(config: LGMConfig, params: Mapping[Path, np.ndarray]) -> LGM:
    """A concrete :class:`~videomv_jax.models.lgm.LGM` holding ``params`` (every parameter, e.g.
    from :func:`convert`), built without running the random initialisers (which would cost
    415M random draws for "big", and an XLA compile per distinct kernel shape on CPU); see
    :func:`videomv_jax.models.model_from_params`."""
    return model_from_params(LGM, config, params)


def load_lgm(path: str | os.PathLike, config: LGMConfig | None = None,
             prefix: str | None = None) -> LGM:
    """Build :class:`~videomv_jax.models.lgm.LGM` (default: the "big" config) from an LGM
    ``.safetensors`` or a VideoMV ``.pth`` checkpoint (``prefix`` None = detect)."""
    config = LGMConfig.big() if config is None else config
    return lgm_from_params(config, convert(load_source_checkpoint(path), config, prefix))
