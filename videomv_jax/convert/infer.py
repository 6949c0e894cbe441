"""Model configs read off a source checkpoint's tensor shapes.

:func:`infer_config` tries, in order, a config derived from the shapes (where a reader exists
for the kind and format: VGen UNets, LDM VAE, LGM, open_clip and transformers CLIP towers)
and each preset of the kind, and returns the first whose conversion table fits the checkpoint
exactly (:func:`~videomv_jax.convert.registry.check_source`: no tensor is read). What the
shapes cannot tell (attention head width, GroupNorm groups, epsilons, dropout, LGM's input
size and camera) comes from the released models: the preset with the same base width, else
the released full-size values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from videomv_jax.convert.base import ConversionError
from videomv_jax.convert.registry import ModelKind, _shape, check_source, get_kind

Shapes = Mapping[str, tuple[int, ...]]


class ConfigInferenceError(ValueError):
    """No config of the kind fits the checkpoint (one short message)."""


def _strip(source: Mapping[str, Any], prefix: str | None) -> dict[str, tuple[int, ...]]:
    shapes = {k: _shape(v) for k, v in source.items()}
    if prefix and any(k.startswith(prefix) for k in shapes):
        return {k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}
    return shapes


def _preset_like(kind: ModelKind, field: str, value: Any) -> Any:
    """The kind's preset config whose ``field`` equals ``value`` (else the default preset)."""
    for name in kind.presets:
        cfg = kind.make_config(name)
        if getattr(cfg, field) == value:
            return cfg
    return kind.make_config(None)


def _heads(width: int, like: Any, released_head_width: int) -> int:
    if like.width == width:
        return like.heads
    if width % released_head_width == 0:
        return width // released_head_width
    return like.heads if width % like.heads == 0 else 1


def _unet_vgen(sh: Shapes, kind: ModelKind) -> Any:
    w = sh["input_blocks.0.0.weight"]
    base = int(w[0])
    like = _preset_like(kind, "base_channels", base)
    levels: list[list[int]] = [[]]
    i = 1
    while True:
        if f"input_blocks.{i}.op.weight" in sh:
            levels.append([])
        elif f"input_blocks.{i}.0.out_layers.3.weight" in sh:
            levels[-1].append(i)
        else:
            break
        i += 1
    if not levels[0]:
        raise KeyError("input_blocks.1.0")
    mult = [int(sh[f"input_blocks.{lv[0]}.0.out_layers.3.weight"][0]) // base for lv in levels]
    attn = [f"input_blocks.{lv[0]}.1.transformer_blocks.0.attn2.to_k.weight" in sh
            for lv in levels]
    context = next(int(sh[f"input_blocks.{lv[0]}.1.transformer_blocks.0.attn2.to_k.weight"][1])
                   for lv, a in zip(levels, attn, strict=True) if a)
    concat = (int(sh["local_image_concat.4.weight"][0]) if "local_image_concat.4.weight" in sh
              else 0)
    head_dim = like.head_dim
    if any((base * m) % head_dim for m in mult):
        head_dim = 64 if all((base * m) % 64 == 0 for m in mult) else base
    first = int(sh["input_blocks.0.1.proj_in.weight"][0]) // head_dim
    fields: dict[str, Any] = dict(
        in_channels=int(w[1]) - (concat if like.variant == "image" else 0),
        out_channels=int(sh["out.2.weight"][0]), base_channels=base, channel_mult=tuple(mult),
        num_res_blocks=len(levels[0]), attn_levels=tuple(attn), head_dim=head_dim,
        first_temporal_heads=first, context_dim=context,
        use_camera="camera_embedding.0.weight" in sh)
    if "camera_embedding.0.weight" in sh:
        fields["camera_dim"] = int(sh["camera_embedding.0.weight"][1])
    if "context_embedding.0.weight" in sh:
        fields["image_embed_dim"] = int(sh["context_embedding.0.weight"][1])
        fields["num_image_tokens"] = int(sh["context_embedding.2.weight"][0]) // context
    if like.norm_groups and base % like.norm_groups:
        fields["norm_groups"] = 32 if base % 32 == 0 else 8 if base % 8 == 0 else 1
    return dataclasses.replace(like, **fields)


def _vae_ldm(sh: Shapes, kind: ModelKind) -> Any:
    ch = int(sh["encoder.conv_in.weight"][0])
    like = _preset_like(kind, "ch", ch)
    n_levels = 0
    while f"encoder.down.{n_levels}.block.0.conv1.weight" in sh:
        n_levels += 1
    mult = [int(sh[f"encoder.down.{i}.block.0.conv1.weight"][0]) // ch for i in range(n_levels)]
    nrb = sum(1 for k in sh
              if k.startswith("encoder.down.0.block.") and k.endswith(".conv1.weight"))
    fields = dict(in_channels=int(sh["encoder.conv_in.weight"][1]),
                  out_channels=int(sh["decoder.conv_out.weight"][0]), ch=ch,
                  ch_mult=tuple(mult), num_res_blocks=nrb,
                  z_channels=int(sh["decoder.conv_in.weight"][1]),
                  embed_dim=int(sh["post_quant_conv.weight"][0]))
    if ch % like.norm_groups:
        fields["norm_groups"] = 32 if ch % 32 == 0 else 8 if ch % 8 == 0 else 1
    return dataclasses.replace(like, **fields)


def _count(sh: Shapes, pattern: str) -> int:
    """How many consecutive layers ``pattern.format(n=0, 1, ...)`` names."""
    n = 0
    while pattern.format(n=n) in sh:
        n += 1
    return n


def _clip_text_open_clip(sh: Shapes, kind: ModelKind) -> Any:
    vocab, width = (int(d) for d in sh["token_embedding.weight"])
    like = _preset_like(kind, "width", width)
    return dataclasses.replace(
        like, vocab_size=vocab, width=width, context_length=int(sh["positional_embedding"][0]),
        layers=_count(sh, "transformer.resblocks.{n}.ln_1.weight"), heads=_heads(width, like, 64),
        mlp_dim=int(sh["transformer.resblocks.0.mlp.c_fc.weight"][0]),
        projection_dim=int(sh["text_projection"][1]) if "text_projection" in sh else None)


def _clip_vision_open_clip(sh: Shapes, kind: ModelKind) -> Any:
    width, _, patch, _ = (int(d) for d in sh["conv1.weight"])
    like = _preset_like(kind, "width", width)
    grid = round((int(sh["positional_embedding"][0]) - 1) ** 0.5)
    return dataclasses.replace(
        like, width=width, patch_size=patch, image_size=grid * patch,
        layers=_count(sh, "transformer.resblocks.{n}.ln_1.weight"), heads=_heads(width, like, 80),
        mlp_dim=int(sh["transformer.resblocks.0.mlp.c_fc.weight"][0]),
        output_dim=int(sh["proj"][1]))


def _clip_text_hf(sh: Shapes, kind: ModelKind) -> Any:
    p = "text_model." if "text_model.embeddings.token_embedding.weight" in sh else ""
    vocab, width = (int(d) for d in sh[f"{p}embeddings.token_embedding.weight"])
    like = _preset_like(kind, "width", width)
    return dataclasses.replace(
        like, vocab_size=vocab, width=width,
        context_length=int(sh[f"{p}embeddings.position_embedding.weight"][0]),
        layers=_count(sh, p + "encoder.layers.{n}.layer_norm1.weight"),
        heads=_heads(width, like, 64),
        mlp_dim=int(sh[f"{p}encoder.layers.0.mlp.fc1.weight"][0]),
        projection_dim=(int(sh["text_projection.weight"][0]) if "text_projection.weight" in sh
                        else None))


def _clip_vision_hf(sh: Shapes, kind: ModelKind) -> Any:
    p = "vision_model."
    width, _, patch, _ = (int(d) for d in sh[f"{p}embeddings.patch_embedding.weight"])
    like = _preset_like(kind, "width", width)
    grid = round((int(sh[f"{p}embeddings.position_embedding.weight"][0]) - 1) ** 0.5)
    return dataclasses.replace(
        like, width=width, patch_size=patch, image_size=grid * patch,
        layers=_count(sh, p + "encoder.layers.{n}.layer_norm1.weight"),
        heads=_heads(width, like, 80),
        mlp_dim=int(sh[f"{p}encoder.layers.0.mlp.fc1.weight"][0]),
        output_dim=int(sh["visual_projection.weight"][0]))


def _lgm(sh: Shapes, kind: ModelKind) -> Any:
    def blocks(part: str) -> list[int]:
        return list(range(_count(sh, "unet." + part + ".{n}.nets.0.conv1.weight")))

    down, up = blocks("down_blocks"), blocks("up_blocks")
    down_ch = tuple(int(sh[f"unet.down_blocks.{i}.nets.0.conv1.weight"][0]) for i in down)
    like = _preset_like(kind, "down_channels", down_ch)
    n_down = sum(f"unet.down_blocks.{i}.downsample.weight" in sh for i in down)
    n_up = sum(f"unet.up_blocks.{i}.upsample.weight" in sh for i in up)
    up_ch = tuple(int(sh[f"unet.up_blocks.{i}.nets.0.conv1.weight"][0]) for i in up)
    fields: dict[str, Any] = dict(
        in_channels=int(sh["unet.conv_in.weight"][1]),
        out_channels=int(sh["unet.conv_out.weight"][0]), down_channels=down_ch,
        down_attention=tuple(f"unet.down_blocks.{i}.attns.0.norm.weight" in sh for i in down),
        mid_attention="unet.mid_block.attns.0.norm.weight" in sh, up_channels=up_ch,
        up_attention=tuple(f"unet.up_blocks.{i}.attns.0.norm.weight" in sh for i in up),
        layers_per_block=_count(sh, "unet.down_blocks.0.nets.{n}.conv1.weight"),
        splat_size=like.input_size * 2 ** n_up // 2 ** n_down)
    if any(c % like.norm_groups for c in down_ch + up_ch):
        fields["norm_groups"] = 1
    return dataclasses.replace(like, **fields)


#: (kind, format) → reader of a config from the (prefix-stripped) shapes
READERS: dict[tuple[str, str], Callable[[Shapes, ModelKind], Any]] = {
    ("unet-t2v", "vgen"): _unet_vgen,
    ("unet-i2v", "vgen"): _unet_vgen,
    ("vae", "ldm"): _vae_ldm,
    ("clip-text", "open_clip"): _clip_text_open_clip,
    ("clip-vision", "open_clip"): _clip_vision_open_clip,
    ("clip-text", "hf"): _clip_text_hf,
    ("lgm", "lgm"): _lgm,
    ("lgm", "vgen"): _lgm,
    ("clip-vision", "hf"): _clip_vision_hf,
}


def infer_config(kind: str | ModelKind, fmt: str, source: Mapping[str, Any]) -> tuple[Any, str]:
    """``(config, how)``: the first config that fits ``source`` exactly, from its shapes or a
    preset (``how`` says which). Reads no tensor. When none fits: the closest config's full
    :class:`~videomv_jax.convert.base.ConversionError` if it nearly fits (a few keys missing
    or mis-shaped, e.g. a damaged checkpoint), else one short :class:`ConfigInferenceError`."""
    k = get_kind(kind)
    sf = k.format(fmt)
    candidates: list[tuple[str, Any]] = []
    reader = READERS.get((k.name, fmt))
    read_error = None
    if reader is not None:
        try:
            candidates.append(("read from the checkpoint's shapes",
                               reader(_strip(source, sf.prefix), k)))
        except (KeyError, ValueError, TypeError, ZeroDivisionError, StopIteration) as err:
            read_error = f"{type(err).__name__}: {err}"
    for name in k.presets:
        candidates.append((f"preset {name!r}", k.make_config(name)))
    tried, best = [], None
    for how, cfg in candidates:
        if any(cfg == c for _, c in tried):
            continue
        tried.append((how, cfg))
        try:
            check_source(k, fmt, source, cfg)
            return cfg, how
        except ConversionError as err:
            score = len(err.missing) + len(err.unexpected) + len(err.mismatched)
            if best is None or score < best[0]:
                best = (score, how, err)
        except (ValueError, TypeError) as err:  # a derived config the model refuses
            if best is None:
                best = (10 ** 9, how, err)
    if best is None:
        raise ConfigInferenceError(f"no config to try for {k.name!r}")
    _, how, err = best
    n_keys = len(_strip(source, sf.prefix))
    if (isinstance(err, ConversionError)
            and len(err.missing) + len(err.mismatched) <= max(3, n_keys // 10)):
        raise err  # nearly fits: the full list of what is wrong says how to fix it
    if isinstance(err, ConversionError):
        first = (err.missing or err.unexpected
                 or [f"{m[0]}: checkpoint {m[2]}, model {m[3]}" for m in err.mismatched])[0]
        detail = (f"{len(err.missing)} model parameters unfilled, {len(err.unexpected)} "
                  f"checkpoint keys unused, {len(err.mismatched)} shapes differ; first: {first}")
    else:
        detail = str(err)
    reason = f" (shape reader: {read_error})" if read_error else ""
    raise ConfigInferenceError(
        f"cannot place this checkpoint as {k.name!r} (--format {fmt}){reason}: the closest "
        f"config ({how}) leaves {detail}. Check KIND and --format, or give the sizes with "
        f"--config")
