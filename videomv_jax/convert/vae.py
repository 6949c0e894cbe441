"""Converters for the KL-f8 VAE: diffusers ``AutoencoderKL`` and LDM (``first_stage_model.``) names.

Both tables are generated from a :class:`~videomv_jax.models.vae.VAEConfig`, so the tiny test
config and the released model share them. Target paths follow
:class:`~videomv_jax.models.vae.AutoencoderKL`, which mirrors diffusers' module names.

LDM vs diffusers naming:

==================================================  ==============================================
LDM (``ldm.modules.diffusionmodules.model``)        diffusers / ours
==================================================  ==============================================
``encoder.down.{i}.block.{j}``                      ``encoder.down_blocks.{i}.resnets.{j}``
``encoder.down.{i}.downsample.conv``                ``encoder.down_blocks.{i}.downsamplers.0.conv``
``{enc,dec}.mid.block_1`` / ``block_2``             ``mid_block.resnets.0`` / ``.1``
``{enc,dec}.mid.attn_1.{norm,q,k,v,proj_out}``      ``mid_block.attentions.0.{group_norm,to_q,to_k,
                                                    to_v,to_out.0}`` (LDM: 1×1 Conv2d weights)
``*.nin_shortcut``                                  ``*.conv_shortcut``
``{enc,dec}.norm_out``                              ``conv_norm_out``
``decoder.up.{L-1-i}.block.{j}`` / ``.upsample``    ``decoder.up_blocks.{i}.resnets.{j}`` /
                                                    ``.upsamplers.0`` (LDM's ``up`` is reversed)
==================================================  ==============================================
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
    conv1x1_as_linear,
    conv_rules,
    convert_state_dict,
    dense_rules,
    linear,
    load_source_checkpoint,
    norm_rules,
    strip_prefix,
)
from videomv_jax.models import model_from_params
from videomv_jax.models.vae import AutoencoderKL, VAEConfig

LDM_PREFIX = "first_stage_model."

# Keys a full LDM autoencoder checkpoint may carry that the inference model does not use:
# the GAN / LPIPS training loss (``loss.discriminator.*``, ``loss.perceptual_loss.*``,
# ``loss.logvar``) and the EMA shadow copy LDM's ``LitEma`` stores (``model_ema.decay``,
# ``model_ema.num_updates``, ``model_ema.<flattened names>``).
LDM_IGNORE = ("loss.*", "model_ema.*")


# ---- rule helpers --------------------------------------------------------------------------------


_conv = conv_rules
_norm = norm_rules


_dense = dense_rules


def _resnet(src: str, tgt: Path, shortcut: bool, shortcut_name: str) -> list[Rule]:
    rules = (_norm(f"{src}.norm1", (*tgt, "norm1")) + _conv(f"{src}.conv1", (*tgt, "conv1"))
             + _norm(f"{src}.norm2", (*tgt, "norm2")) + _conv(f"{src}.conv2", (*tgt, "conv2")))
    if shortcut:
        rules += _conv(f"{src}.{shortcut_name}", (*tgt, "conv_shortcut"))
    return rules


def _attention(src: str, tgt: Path, names: tuple[str, str, str, str, str],
               transform) -> list[Rule]:
    norm, q, k, v, out = names
    return (_norm(f"{src}.{norm}", (*tgt, "group_norm"))
            + _dense(f"{src}.{q}", (*tgt, "to_q"), transform)
            + _dense(f"{src}.{k}", (*tgt, "to_k"), transform)
            + _dense(f"{src}.{v}", (*tgt, "to_v"), transform)
            + _dense(f"{src}.{out}", (*tgt, "to_out", 0), transform))


def _rules(config: VAEConfig, ldm: bool) -> list[Rule]:
    """One table for both namings; ``ldm`` picks the source key spelling."""
    widths = config.widths
    levels = len(widths)
    short = "nin_shortcut" if ldm else "conv_shortcut"
    if ldm:
        attn_names, attn_tf = ("norm", "q", "k", "v", "proj_out"), conv1x1_as_linear
    else:
        attn_names, attn_tf = ("group_norm", "to_q", "to_k", "to_v", "to_out.0"), linear

    def mid(part: str) -> list[Rule]:
        src = f"{part}.mid" if ldm else f"{part}.mid_block"
        tgt = (part, "mid_block")
        r0 = f"{src}.block_1" if ldm else f"{src}.resnets.0"
        r1 = f"{src}.block_2" if ldm else f"{src}.resnets.1"
        at = f"{src}.attn_1" if ldm else f"{src}.attentions.0"
        return (_resnet(r0, (*tgt, "resnets", 0), False, short)
                + _attention(at, (*tgt, "attentions", 0), attn_names, attn_tf)
                + _resnet(r1, (*tgt, "resnets", 1), False, short))

    norm_out = "norm_out" if ldm else "conv_norm_out"
    rules: list[Rule] = []

    # encoder
    rules += _conv("encoder.conv_in", ("encoder", "conv_in"))
    prev = widths[0]
    for i, width in enumerate(widths):
        blk = f"encoder.down.{i}" if ldm else f"encoder.down_blocks.{i}"
        for j in range(config.num_res_blocks):
            cin = prev if j == 0 else width
            src = f"{blk}.block.{j}" if ldm else f"{blk}.resnets.{j}"
            rules += _resnet(src, ("encoder", "down_blocks", i, "resnets", j), cin != width,
                             short)
        if i < levels - 1:
            src = f"{blk}.downsample.conv" if ldm else f"{blk}.downsamplers.0.conv"
            rules += _conv(src, ("encoder", "down_blocks", i, "downsamplers", 0, "conv"))
        prev = width
    rules += mid("encoder")
    rules += _norm(f"encoder.{norm_out}", ("encoder", "conv_norm_out"))
    rules += _conv("encoder.conv_out", ("encoder", "conv_out"))

    # decoder (up_blocks[0] = deepest level = LDM up.{levels-1})
    rules += _conv("decoder.conv_in", ("decoder", "conv_in"))
    rules += mid("decoder")
    rev = widths[::-1]
    prev = rev[0]
    for i, width in enumerate(rev):
        blk = f"decoder.up.{levels - 1 - i}" if ldm else f"decoder.up_blocks.{i}"
        for j in range(config.num_res_blocks + 1):
            cin = prev if j == 0 else width
            src = f"{blk}.block.{j}" if ldm else f"{blk}.resnets.{j}"
            rules += _resnet(src, ("decoder", "up_blocks", i, "resnets", j), cin != width,
                             short)
        if i < levels - 1:
            src = f"{blk}.upsample.conv" if ldm else f"{blk}.upsamplers.0.conv"
            rules += _conv(src, ("decoder", "up_blocks", i, "upsamplers", 0, "conv"))
        prev = width
    rules += _norm(f"decoder.{norm_out}", ("decoder", "conv_norm_out"))
    rules += _conv("decoder.conv_out", ("decoder", "conv_out"))

    rules += _conv("quant_conv", ("quant_conv",))
    rules += _conv("post_quant_conv", ("post_quant_conv",))
    return rules


# ---- public tables -------------------------------------------------------------------------------


def rules_diffusers(config: VAEConfig) -> tuple[list[Rule], list[str]]:
    """Rules for a diffusers ``AutoencoderKL`` state dict (``encoder.down_blocks.0...``).

    Attention projections are ``Linear`` (current diffusers naming ``to_q/to_k/to_v/to_out.0``;
    re-save very old checkpoints with diffusers first). diffusers has a single
    ``latent_channels``, so ``z_channels`` must equal ``embed_dim``."""
    if config.z_channels != config.embed_dim:
        raise ValueError(f"diffusers AutoencoderKL has one latent_channels; this config has "
                         f"z_channels={config.z_channels} != embed_dim={config.embed_dim}")
    return _rules(config, ldm=False), []


def rules_ldm(config: VAEConfig) -> tuple[list[Rule], list[str]]:
    """Rules for an LDM autoencoder state dict with the ``first_stage_model.`` prefix removed
    (see :func:`load_ldm_state_dict`). Attention q/k/v/proj_out are 1×1 Conv2d weights
    [C, C, 1, 1] (a [C, C] copy also fits) mapped to Dense kernels."""
    return _rules(config, ldm=True), list(LDM_IGNORE)


def load_ldm_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an LDM checkpoint (``.ckpt``/``.pth``/``.safetensors``; ``{'state_dict': ...}``
    unwrapped) and return the autoencoder's keys without the ``first_stage_model.`` prefix.

    A whole latent-diffusion checkpoint (VideoMV's ``VQGAN_autoencoder.pth``) keeps only its
    ``first_stage_model.*`` keys; a standalone autoencoder checkpoint (no such key) is returned
    as is (its ``loss.*`` keys are ignored by :func:`rules_ldm`)."""
    state = load_source_checkpoint(path)
    if any(k.startswith(LDM_PREFIX) for k in state):
        return strip_prefix(state, LDM_PREFIX)
    return dict(state)


def detect_format(state: Mapping[str, object]) -> str:
    """``"ldm"`` or ``"diffusers"`` from the key names of a (prefix-stripped) state dict."""
    if any(k.startswith("encoder.down.") or k.startswith("encoder.mid.") for k in state):
        return "ldm"
    if any(k.startswith("encoder.down_blocks.") or k.startswith("encoder.mid_block.")
           for k in state):
        return "diffusers"
    raise ValueError("state dict is neither an LDM nor a diffusers AutoencoderKL (no "
                     "'encoder.down.*' or 'encoder.down_blocks.*' keys; strip any prefix first)")


def convert(state: Mapping[str, np.ndarray], config: VAEConfig,
            source: str = "auto") -> dict[Path, np.ndarray]:
    """Convert a state dict (``source`` = ``"ldm"``, ``"diffusers"`` or ``"auto"``) to
    {parameter path: array} for :class:`AutoencoderKL`; raises ``ConversionError``."""
    source = detect_format(state) if source == "auto" else source
    if source == "ldm":
        rules, ignore = rules_ldm(config)
    elif source == "diffusers":
        rules, ignore = rules_diffusers(config)
    else:
        raise ValueError(f"source must be 'ldm', 'diffusers' or 'auto', got {source!r}")
    target = abstract_params(nnx.eval_shape(lambda: AutoencoderKL(config, rngs=nnx.Rngs(0))))
    return convert_state_dict(state, rules, target, ignore,
                              model_name=f"AutoencoderKL ({source} checkpoint)")


def load_autoencoder(path: str | os.PathLike, config: VAEConfig | None = None,
                     source: str = "auto") -> AutoencoderKL:
    """Build :class:`AutoencoderKL` (default: the full KL-f8 config) from an LDM or diffusers
    checkpoint file."""
    config = VAEConfig.full() if config is None else config
    state = load_ldm_state_dict(path)
    params = convert(state, config, source)
    return model_from_params(AutoencoderKL, config, params)
