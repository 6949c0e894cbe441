"""Converters for the OpenCLIP ViT-H-14 towers (:mod:`videomv_jax.models.clip`).

Two source namings, four rule tables generated from the configs:

* open_clip (VideoMV's ``open_clip_pytorch_model.bin``; one state dict holds both towers, see
  ``tests/data/checkpoints/open_clip_vit_h_14.json``): :func:`rules_open_clip_text`,
  :func:`rules_open_clip_vision`. ``attn.in_proj_weight`` [3W, W] is already fused q|k|v;
  ``text_projection`` [W, out] and ``visual.proj`` [W, out] are used as ``x @ P`` and copied
  untransposed; ``logit_scale`` belongs to neither tower and is ignored.
* transformers (``CLIPTextModel`` / ``CLIPTextModelWithProjection`` /
  ``CLIPVisionModelWithProjection`` / ``CLIPModel``, see ``hf_clip_text_vit_h_14.json`` and
  ``hf_clip_vision_vit_h_14.json``):
  :func:`rules_hf_text`, :func:`rules_hf_vision`. transformers keeps separate q/k/v
  projections; :func:`fuse_hf_qkv` concatenates each triple into one synthetic key
  ``….self_attn.[q|k|v]_proj.{weight,bias}`` that the rules read, and
  :func:`convert_hf_state_dict` runs fuse + :func:`~videomv_jax.convert.base.convert_state_dict`
  and reports a missing q, k or v under its real name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np
from flax import nnx

from videomv_jax.convert.base import (
    ConversionError,
    Rule,
    abstract_params,
    apply_params,
    conv2d,
    convert_state_dict,
    dense_rules,
    identity,
    linear,
    norm_rules,
)
from videomv_jax.models.clip import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModel,
)

__all__ = [
    "rules_open_clip_text", "rules_open_clip_vision", "rules_hf_text", "rules_hf_vision",
    "fuse_hf_qkv", "convert_hf_state_dict", "hf_text_prefix", "load_clip_weights",
    "FUSED_QKV",
]

# Synthetic key infix written by fuse_hf_qkv and read by the HF rules.
FUSED_QKV = "[q|k|v]_proj"
_QKV = re.compile(r"^(?P<stem>.*)\.(?P<which>[qkv])_proj\.(?P<param>weight|bias)$")

_TEXT_TOP = ("token_embedding.*", "positional_embedding", "transformer.*", "ln_final.*",
             "text_projection", "logit_scale", "attn_mask")


_ln = norm_rules
_dense = dense_rules


def _blocks(layers: int, src_block: str, names: Mapping[str, str]) -> list[Rule]:
    """Rules for ``transformer.resblocks[i]`` from source block keys ``src_block.format(i)``;
    ``names`` maps our sub-module names to the source's."""
    rules = []
    for i in range(layers):
        src, tgt = src_block.format(i), ("transformer", "resblocks", i)
        rules += _ln(f"{src}.{names['ln_1']}", (*tgt, "ln_1"))
        rules += [Rule(f"{src}.{names['in_proj_weight']}", (*tgt, "attn", "in_proj", "kernel"),
                       linear),
                  Rule(f"{src}.{names['in_proj_bias']}", (*tgt, "attn", "in_proj", "bias"))]
        rules += _dense(f"{src}.{names['out_proj']}", (*tgt, "attn", "out_proj"))
        rules += _ln(f"{src}.{names['ln_2']}", (*tgt, "ln_2"))
        rules += _dense(f"{src}.{names['c_fc']}", (*tgt, "mlp", "c_fc"))
        rules += _dense(f"{src}.{names['c_proj']}", (*tgt, "mlp", "c_proj"))
    return rules


_OPEN_CLIP_BLOCK = dict(ln_1="ln_1", in_proj_weight="attn.in_proj_weight",
                        in_proj_bias="attn.in_proj_bias", out_proj="attn.out_proj", ln_2="ln_2",
                        c_fc="mlp.c_fc", c_proj="mlp.c_proj")
_HF_BLOCK = dict(ln_1="layer_norm1", in_proj_weight=f"self_attn.{FUSED_QKV}.weight",
                 in_proj_bias=f"self_attn.{FUSED_QKV}.bias", out_proj="self_attn.out_proj",
                 ln_2="layer_norm2", c_fc="mlp.fc1", c_proj="mlp.fc2")


# ---- open_clip ----------------------------------------------------------------------------------


def rules_open_clip_text(cfg: CLIPTextConfig) -> tuple[list[Rule], list[str]]:
    """open_clip ``CLIP`` state dict → :class:`CLIPTextModel` (``visual.*``, ``logit_scale``
    ignored; ``text_projection`` ignored too when ``cfg.projection_dim`` is None)."""
    rules = [Rule("token_embedding.weight", ("token_embedding", "embedding")),
             Rule("positional_embedding", ("positional_embedding",))]
    rules += _blocks(cfg.layers, "transformer.resblocks.{}", _OPEN_CLIP_BLOCK)
    rules += _ln("ln_final", ("ln_final",))
    ignore = ["visual.*", "logit_scale", "attn_mask"]
    if cfg.projection_dim is not None:
        rules.append(Rule("text_projection", ("text_projection",), identity))
    else:
        ignore.append("text_projection")
    return rules, ignore


def rules_open_clip_vision(cfg: CLIPVisionConfig) -> tuple[list[Rule], list[str]]:
    """open_clip ``CLIP`` state dict (``visual.*``) → :class:`CLIPVisionModel` (text keys and
    ``logit_scale`` ignored)."""
    p = "visual."
    rules = [Rule(f"{p}conv1.weight", ("conv1", "kernel"), conv2d),
             Rule(f"{p}class_embedding", ("class_embedding",)),
             Rule(f"{p}positional_embedding", ("positional_embedding",)),
             Rule(f"{p}proj", ("proj",), identity)]
    rules += _ln(f"{p}ln_pre", ("ln_pre",))
    rules += _blocks(cfg.layers, p + "transformer.resblocks.{}", _OPEN_CLIP_BLOCK)
    rules += _ln(f"{p}ln_post", ("ln_post",))
    return rules, list(_TEXT_TOP)


# ---- transformers -------------------------------------------------------------------------------


def rules_hf_text(cfg: CLIPTextConfig, prefix: str = "",
                  projection_key: str = "text_projection.weight"
                  ) -> tuple[list[Rule], list[str]]:
    """transformers text tower → :class:`CLIPTextModel`; apply to :func:`fuse_hf_qkv`'s output.

    ``prefix``: ``""`` for transformers-5 ``CLIPTextModel`` (the naming of
    ``tests/data/checkpoints/hf_clip_text_vit_h_14.json``), ``"text_model."`` for
    ``CLIPTextModelWithProjection`` / ``CLIPModel`` (see :func:`hf_text_prefix`). With
    ``cfg.projection_dim`` set, ``projection_key`` (a bias-free Linear [out, W]) fills
    ``text_projection``; otherwise it is ignored.
    """
    rules = [Rule(f"{prefix}embeddings.token_embedding.weight", ("token_embedding", "embedding")),
             Rule(f"{prefix}embeddings.position_embedding.weight", ("positional_embedding",))]
    rules += _blocks(cfg.layers, prefix + "encoder.layers.{}", _HF_BLOCK)
    rules += _ln(f"{prefix}final_layer_norm", ("ln_final",))
    ignore = ["*position_ids", "vision_model.*", "visual_projection.*", "logit_scale"]
    if cfg.projection_dim is not None:
        rules.append(Rule(projection_key, ("text_projection",), linear))
    else:
        ignore.append(projection_key)
    return rules, ignore


def rules_hf_vision(cfg: CLIPVisionConfig, prefix: str = "vision_model.",
                    projection_key: str = "visual_projection.weight"
                    ) -> tuple[list[Rule], list[str]]:
    """transformers ``CLIPVisionModelWithProjection`` (or ``CLIPModel``) →
    :class:`CLIPVisionModel`; apply to :func:`fuse_hf_qkv`'s output."""
    p = prefix
    rules = [Rule(f"{p}embeddings.patch_embedding.weight", ("conv1", "kernel"), conv2d),
             Rule(f"{p}embeddings.class_embedding", ("class_embedding",)),
             Rule(f"{p}embeddings.position_embedding.weight", ("positional_embedding",)),
             Rule(projection_key, ("proj",), linear)]
    rules += _ln(f"{p}pre_layrnorm", ("ln_pre",))  # sic: transformers' spelling
    rules += _blocks(cfg.layers, p + "encoder.layers.{}", _HF_BLOCK)
    rules += _ln(f"{p}post_layernorm", ("ln_post",))
    ignore = ["*position_ids", "text_model.*", "text_projection.*", "logit_scale"]
    return rules, ignore


def hf_text_prefix(state: Mapping[str, object]) -> str:
    """``"text_model."`` if the transformers text keys carry it (``CLIPModel``,
    ``CLIPTextModelWithProjection``), else ``""`` (transformers-5 ``CLIPTextModel``)."""
    return "text_model." if any(k.startswith("text_model.") for k in state) else ""


def _concat_rows(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate along axis 0; zero-strided placeholders of one value (the full-size dry run
    of the house conventions) stay zero-strided, so checking a layout allocates nothing."""
    if all(p.size and not any(p.strides) for p in parts) and len({p.flat[0] for p in parts}) == 1:
        shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
        return np.broadcast_to(parts[0].reshape(-1)[:1].reshape(()), shape)
    return np.concatenate(parts, axis=0)


def fuse_hf_qkv(state: Mapping[str, np.ndarray]
                ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Replace every complete ``{stem}.{q,k,v}_proj.{weight,bias}`` triple by one key
    ``{stem}.[q|k|v]_proj.{weight,bias}`` = concat(q, k, v) along the output axis (the order of
    ``nn.MultiheadAttention.in_proj_weight``).

    Returns (new state, problems): ``problems`` maps the synthetic key of each triple that lacks
    a part, or whose parts do not concatenate, to a description; such a triple is dropped (the
    missing synthetic key is what the conversion then reports, see
    :func:`convert_hf_state_dict`).
    """
    groups: dict[str, dict[str, str]] = {}
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        m = _QKV.match(key)
        if m is None:
            out[key] = value
            continue
        fused = f"{m['stem']}.{FUSED_QKV}.{m['param']}"
        groups.setdefault(fused, {})[m["which"]] = key
    problems: dict[str, str] = {}
    for fused, parts in groups.items():
        if set(parts) != {"q", "k", "v"}:
            stem = fused.replace(FUSED_QKV, "{}_proj")
            problems[fused] = "checkpoint lacks " + ", ".join(
                stem.format(w) for w in "qkv" if w not in parts)
            continue
        arrays = [np.asarray(state[parts[w]]) for w in "qkv"]
        if len({a.shape for a in arrays}) != 1 or arrays[0].ndim == 0:
            problems[fused] = "q/k/v shapes differ: " + ", ".join(
                f"{parts[w]} {a.shape}" for w, a in zip("qkv", arrays, strict=True))
            continue
        out[fused] = _concat_rows(arrays)
    return out, problems


def convert_hf_state_dict(
    source: Mapping[str, np.ndarray],
    rules: Iterable[Rule],
    target: Mapping,
    ignore: Iterable[str] = (),
    model_name: str = "the model",
) -> dict:
    """:func:`fuse_hf_qkv` then :func:`convert_state_dict`; a :class:`ConversionError` names a
    missing or mis-shaped ``q_proj``/``k_proj``/``v_proj`` key itself rather than the synthetic
    fused key."""
    fused, problems = fuse_hf_qkv(source)
    try:
        return convert_state_dict(fused, rules, target, ignore, model_name)
    except ConversionError as err:
        missing = []
        for entry in err.missing:
            key = next((k for k in problems if entry.endswith(f"(expects checkpoint key {k})")),
                       None)
            missing.append(entry if key is None else
                           entry.replace(f"expects checkpoint key {key}", problems[key]))
        raise ConversionError(model_name, missing, err.unexpected, err.mismatched,
                              err.duplicated) from None


# ---- convenience --------------------------------------------------------------------------------


def load_clip_weights(model: nnx.Module, state: Mapping[str, np.ndarray],
                      source: str = "open_clip") -> nnx.Module:
    """Convert ``state`` (``source`` = ``"open_clip"`` or ``"hf"``) into ``model`` (a
    :class:`CLIPTextModel` or :class:`CLIPVisionModel`) in place; returns it."""
    target = abstract_params(model)
    name = type(model).__name__
    if source not in ("open_clip", "hf"):
        raise ValueError(f"source must be 'open_clip' or 'hf', got {source!r}")
    if isinstance(model, CLIPTextModel):
        if source == "open_clip":
            rules, ignore = rules_open_clip_text(model.config)
        else:
            rules, ignore = rules_hf_text(model.config, prefix=hf_text_prefix(state))
    elif isinstance(model, CLIPVisionModel):
        rules, ignore = (rules_open_clip_vision if source == "open_clip"
                         else rules_hf_vision)(model.config)
    else:
        raise TypeError(f"expected a CLIPTextModel or CLIPVisionModel, got {name}")
    convert = convert_state_dict if source == "open_clip" else convert_hf_state_dict
    params = convert(state, rules, target, ignore, f"{name} ({source} naming)")
    return apply_params(model, params)
