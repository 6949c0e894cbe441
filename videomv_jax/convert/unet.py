"""Conversion tables for the VideoMV video UNet (:mod:`videomv_jax.models.unet3d`).

Two source layouts, both generated from the same :func:`~videomv_jax.models.unet3d.unet_layout`
so tiny and full-size configs share one table:

* :func:`rules_vgen`: VideoMV / VGen ``.pth`` state dicts (``UNetSD_T2VBase`` /
  ``UNetSD_I2VGen`` names, docs/design.md §9; every key of
  ``tests/data/checkpoints/videomv_{t2v,i2v}.json``).
  Notable source quirks: the ResBlock's temporal conv is misspelt ``temopral_conv`` (Conv3d
  weights [C, C, 3, 1, 1]); the temporal transformers' ``proj_in`` / ``proj_out`` are Conv1d
  k=1 ([O, I, 1]) and the spatial ones Linear; the I2V local temporal encoder has one fused
  ``to_qkv`` [3·inner, C] (q | k | v rows), split here into three rules on the same key. The
  ``lgm_big.*`` keys of a VideoMV checkpoint belong to the LGM reconstructor (not this model) and
  are ignored by pattern.
* :func:`rules_diffusers`: diffusers ``UNet3DConditionModel`` (text variant) /
  ``I2VGenXLUNet`` (image variant) state dicts. diffusers has no camera MLP: with
  ``use_camera=True`` the camera parameters stay unfilled, so either convert into a
  ``use_camera=False`` config, or drop them from the target with :data:`CAMERA_PARAMS` /
  :func:`target_without` (they then keep the model's initialisation, whose zero last layer makes
  the camera term exactly zero, as at the start of VideoMV's fine-tuning). :func:`convert_unet`
  wraps both.

Transforms: Linear [out, in] → [in, out]; Conv2d → [kh, kw, I, O]; Conv3d (3, 1, 1) →
[3, 1, 1, I, O]; every ``proj_in`` / ``proj_out`` through ``conv1x1_as_linear`` (it accepts a
Linear [O, I], a Conv1d [O, I, 1] and a 1×1 Conv2d [O, I, 1, 1] alike: diffusers uses 1×1
convs in the down/up blocks but Linear in the middle block).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from videomv_jax.convert.base import (
    Path,
    Rule,
    conv1x1_as_linear,
    conv3d,
    conv_rules,
    convert_state_dict,
    dense_rules,
    norm_rules,
    path_str,
)
from videomv_jax.models.unet3d import LayerSpec, UNet3DConfig, unet_layout

#: fnmatch patterns (on "/"-joined target paths) of the camera MLP, which diffusers lacks.
CAMERA_PARAMS = ("camera_embedding/*",)
#: source keys of a VideoMV checkpoint that belong to the LGM reconstructor, not the UNet.
VGEN_IGNORE = ("lgm_big.*",)


# ---- small rule builders -----------------------------------------------------------------------


def _lin(src: str, tgt: Path, bias: bool = True) -> list[Rule]:
    return dense_rules(src, tgt, bias=bias)


def _proj(src: str, tgt: Path) -> list[Rule]:
    """Linear, Conv1d k=1 or 1×1 Conv2d → Dense."""
    return dense_rules(src, tgt, conv1x1_as_linear)


_conv = conv_rules
_norm = norm_rules


def _mlp(src: str, tgt: Path, first: str = "0", second: str = "2") -> list[Rule]:
    return _lin(f"{src}.{first}", tgt + ("linear_1",)) + _lin(f"{src}.{second}",
                                                              tgt + ("linear_2",))


def _temporal_conv(src: str, tgt: Path) -> list[Rule]:
    """VGen ``temopral_conv`` / diffusers ``temp_convs.j``: conv1.{0,2}, conv{2,3,4}.{0,3}."""
    rules: list[Rule] = []
    for n in range(1, 5):
        rules += _norm(f"{src}.conv{n}.0", tgt + (f"norm{n}",))
        rules += _conv(f"{src}.conv{n}.{2 if n == 1 else 3}", tgt + (f"conv{n}",), conv3d)
    return rules


def _transformer(src: str, tgt: Path) -> list[Rule]:
    """Spatial or temporal transformer (same names in VGen and diffusers)."""
    rules = _norm(f"{src}.norm", tgt + ("norm",)) + _proj(f"{src}.proj_in", tgt + ("proj_in",))
    b, t = f"{src}.transformer_blocks.0", tgt + ("transformer_blocks", 0)
    for attn in ("attn1", "attn2"):
        for p in ("to_q", "to_k", "to_v"):
            rules += _lin(f"{b}.{attn}.{p}", t + (attn, p), bias=False)
        rules += _lin(f"{b}.{attn}.to_out.0", t + (attn, "to_out"))
    rules += _lin(f"{b}.ff.net.0.proj", t + ("ff_proj",)) + _lin(f"{b}.ff.net.2", t + ("ff_out",))
    for n in (1, 2, 3):
        rules += _norm(f"{b}.norm{n}", t + (f"norm{n}",))
    return rules + _proj(f"{src}.proj_out", tgt + ("proj_out",))


def _qkv_slice(i: int, inner: int):
    def take(w: np.ndarray) -> np.ndarray:
        return w[i * inner:(i + 1) * inner].T

    take.__name__ = f"fused_qkv_{'qkv'[i]}"
    return take


# ---- VGen / VideoMV ----------------------------------------------------------------------------


def _vgen_res(src: str, tgt: Path, spec: LayerSpec) -> list[Rule]:
    rules = (_norm(f"{src}.in_layers.0", tgt + ("in_norm",))
             + _conv(f"{src}.in_layers.2", tgt + ("in_conv",))
             + _lin(f"{src}.emb_layers.1", tgt + ("emb_proj",))
             + _norm(f"{src}.out_layers.0", tgt + ("out_norm",))
             + _conv(f"{src}.out_layers.3", tgt + ("out_conv",)))
    if spec.in_ch != spec.out_ch:
        rules += _conv(f"{src}.skip_connection", tgt + ("skip_connection",))
    return rules + _temporal_conv(f"{src}.temopral_conv", tgt + ("temporal_conv",))


def _vgen_layer(src: str, tgt: Path, spec: LayerSpec) -> list[Rule]:
    if spec.kind == "conv_in":
        return _conv(src, tgt)
    if spec.kind == "res":
        return _vgen_res(src, tgt, spec)
    if spec.kind in ("spatial", "temporal"):
        return _transformer(src, tgt)
    if spec.kind == "up":
        return _conv(f"{src}.conv", tgt + ("conv",))
    raise AssertionError(spec.kind)


def rules_vgen(cfg: UNet3DConfig) -> tuple[list[Rule], list[str]]:
    """(rules, ignore patterns) for a VideoMV / VGen UNet state dict (``UNetSD_T2VBase`` for
    the text variant, ``UNetSD_I2VGen`` for the image variant). ``lgm_big.*`` is ignored."""
    rules = _mlp("time_embed", ("time_embed",))
    if cfg.use_camera:
        rules += _mlp("camera_embedding", ("camera_embedding",))
    if cfg.is_image:
        c = cfg.in_channels
        inner = cfg.local_encoder_heads * c
        rules += _mlp("fps_embedding", ("fps_embedding",))
        rules += _mlp("context_embedding", ("context_embedding",))
        for n, idx in enumerate((0, 2, 4), start=1):
            rules += _conv(f"local_image_concat.{idx}", ("local_image_concat", f"conv{n}"))
        enc, tgt = "local_temporal_encoder.layers.0", ("local_temporal_encoder",)
        rules += _norm(f"{enc}.0.norm", tgt + ("norm",))
        for i, p in enumerate(("to_q", "to_k", "to_v")):
            rules.append(Rule(f"{enc}.0.fn.to_qkv.weight", tgt + (p, "kernel"),
                              _qkv_slice(i, inner)))
        rules += _lin(f"{enc}.0.fn.to_out.0", tgt + ("to_out",))
        rules += _lin(f"{enc}.1.net.0.0", tgt + ("ff_in",)) + _lin(f"{enc}.1.net.2",
                                                                    tgt + ("ff_out",))
        for n, idx in enumerate((0, 3, 5), start=1):
            rules += _conv(f"local_image_embedding.{idx}", ("local_image_embedding", f"conv{n}"))

    inputs, middle, outputs = unet_layout(cfg)
    for k, blk in enumerate(inputs):
        if blk[0].kind == "down":
            rules += _conv(f"input_blocks.{k}.op", ("input_blocks", k, "op"))
            continue
        for m, spec in enumerate(blk):
            rules += _vgen_layer(f"input_blocks.{k}.{m}", ("input_blocks", k, m), spec)
    for m, spec in enumerate(middle):
        rules += _vgen_layer(f"middle_block.{m}", ("middle_block", m), spec)
    for k, blk in enumerate(outputs):
        for m, spec in enumerate(blk):
            rules += _vgen_layer(f"output_blocks.{k}.{m}", ("output_blocks", k, m), spec)
    rules += _norm("out.0", ("out_norm",)) + _conv("out.2", ("out_conv",))
    return rules, list(VGEN_IGNORE)


# ---- diffusers ---------------------------------------------------------------------------------


def _diffusers_res(blk: str, j: int, tgt: Path, spec: LayerSpec) -> list[Rule]:
    src = f"{blk}.resnets.{j}"
    rules = (_norm(f"{src}.norm1", tgt + ("in_norm",))
             + _conv(f"{src}.conv1", tgt + ("in_conv",))
             + _lin(f"{src}.time_emb_proj", tgt + ("emb_proj",))
             + _norm(f"{src}.norm2", tgt + ("out_norm",))
             + _conv(f"{src}.conv2", tgt + ("out_conv",)))
    if spec.in_ch != spec.out_ch:
        rules += _conv(f"{src}.conv_shortcut", tgt + ("skip_connection",))
    return rules + _temporal_conv(f"{blk}.temp_convs.{j}", tgt + ("temporal_conv",))


def _diffusers_layer(blk: str, tgt: Path, spec: LayerSpec) -> list[Rule]:
    j = spec.index
    if spec.kind == "res":
        return _diffusers_res(blk, j, tgt, spec)
    if spec.kind == "spatial":
        return _transformer(f"{blk}.attentions.{j}", tgt)
    if spec.kind == "temporal":
        return _transformer(f"{blk}.temp_attentions.{j}", tgt)
    if spec.kind == "down":
        return _conv(f"{blk}.downsamplers.0.conv", tgt + ("op",))
    if spec.kind == "up":
        return _conv(f"{blk}.upsamplers.0.conv", tgt + ("conv",))
    raise AssertionError(spec.kind)


def rules_diffusers(cfg: UNet3DConfig) -> tuple[list[Rule], list[str]]:
    """(rules, ignore patterns) for a diffusers ``UNet3DConditionModel`` (text variant) or
    ``I2VGenXLUNet`` (image variant) state dict. No rule fills the camera MLP (see the module
    docstring); the diffusers I2V temporal encoder's separate q/k/v map one to one."""
    rules = _lin("time_embedding.linear_1", ("time_embed", "linear_1"))
    rules += _lin("time_embedding.linear_2", ("time_embed", "linear_2"))
    if cfg.is_image:
        rules += _mlp("fps_embedding", ("fps_embedding",))
        rules += _mlp("context_embedding", ("context_embedding",))
        for n, idx in enumerate((0, 2, 4), start=1):
            rules += _conv(f"image_latents_proj_in.{idx}", ("local_image_concat", f"conv{n}"))
        enc, tgt = "image_latents_temporal_encoder", ("local_temporal_encoder",)
        rules += _norm(f"{enc}.norm1", tgt + ("norm",))
        for p in ("to_q", "to_k", "to_v"):
            rules += _lin(f"{enc}.attn1.{p}", tgt + (p,), bias=False)
        rules += _lin(f"{enc}.attn1.to_out.0", tgt + ("to_out",))
        rules += _lin(f"{enc}.ff.net.0.proj", tgt + ("ff_in",)) + _lin(f"{enc}.ff.net.2",
                                                                        tgt + ("ff_out",))
        for n, idx in enumerate((0, 3, 5), start=1):
            rules += _conv(f"image_latents_context_embedding.{idx}",
                           ("local_image_embedding", f"conv{n}"))

    inputs, middle, outputs = unet_layout(cfg)
    rules += _conv("conv_in", ("input_blocks", 0, 0))
    rules += _transformer("transformer_in", ("input_blocks", 0, 1))
    for k, blk in enumerate(inputs[1:], start=1):
        if blk[0].kind == "down":
            rules += _diffusers_layer(f"down_blocks.{blk[0].level}", ("input_blocks", k),
                                      blk[0])
            continue
        for m, spec in enumerate(blk):
            rules += _diffusers_layer(f"down_blocks.{spec.level}", ("input_blocks", k, m), spec)
    for m, spec in enumerate(middle):
        rules += _diffusers_layer("mid_block", ("middle_block", m), spec)
    for k, blk in enumerate(outputs):
        for m, spec in enumerate(blk):
            rules += _diffusers_layer(f"up_blocks.{spec.level}", ("output_blocks", k, m), spec)
    rules += _norm("conv_norm_out", ("out_norm",)) + _conv("conv_out", ("out_conv",))
    return rules, []


# ---- conveniences ------------------------------------------------------------------------------


def target_without(target: Mapping[Path, Any], patterns: Iterable[str]) -> dict[Path, Any]:
    """``target`` minus the parameters whose "/"-joined path matches an fnmatch pattern (e.g.
    :data:`CAMERA_PARAMS`): those are left at the model's initialisation."""
    patterns = tuple(patterns)
    return {p: v for p, v in target.items()
            if not any(fnmatch.fnmatchcase(path_str(p), pat) for pat in patterns)}


def convert_unet(
    source: Mapping[str, np.ndarray],
    cfg: UNet3DConfig,
    target: Mapping[Path, Any],
    source_format: str = "vgen",
    allow_missing: Iterable[str] = (),
) -> dict[Path, np.ndarray]:
    """Convert a UNet state dict (``source_format`` "vgen" or "diffusers") for ``target``
    (``abstract_params`` of the model). ``allow_missing``: fnmatch patterns of target paths
    that may stay unfilled (default for diffusers with a camera MLP: :data:`CAMERA_PARAMS`).
    Raises :class:`~videomv_jax.convert.base.ConversionError` listing every problem."""
    if source_format == "vgen":
        rules, ignore = rules_vgen(cfg)
    elif source_format == "diffusers":
        rules, ignore = rules_diffusers(cfg)
        allow_missing = tuple(allow_missing) or (CAMERA_PARAMS if cfg.use_camera else ())
    else:
        raise ValueError(f"unknown UNet source format {source_format!r}; use 'vgen' or "
                         f"'diffusers'")
    name = f"UNet3D ({cfg.variant}, {source_format} checkpoint)"
    return convert_state_dict(source, rules, target_without(target, allow_missing), ignore,
                              name)


__all__ = ["CAMERA_PARAMS", "VGEN_IGNORE", "convert_unet", "rules_diffusers", "rules_vgen",
           "target_without"]
