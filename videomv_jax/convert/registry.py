"""Which models can be converted, from which source formats, and how.

The model kinds themselves (:class:`~videomv_jax.models.registry.ModelKind`: config class,
model class, presets; :func:`get_kind`, :func:`resolve_config`) live on the model side in
:mod:`videomv_jax.models.registry` and are re-exported here. This module adds to each kind the
PyTorch source formats it can be converted from: a :class:`SourceFormat` names the converter's
``rules_<format>(config) -> (rules, ignore_patterns)`` function and how to find the model's keys
inside a bigger checkpoint (a key prefix, extra keys of other towers to ignore). Everything is
referenced by ``"module:attribute"`` strings and imported on first use, so importing this module
(and ``--help`` of the converter CLI) needs neither the model code nor torch.

:func:`iter_converted` runs a conversion tensor by tensor, consuming the source dict as it goes
and yielding one converted tensor at a time (see its docstring).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import jax
import numpy as np

from videomv_jax.convert.base import (
    ConversionError,
    Path,
    Rule,
    abstract_params,
    convert_state_dict,
)
from videomv_jax.models.registry import (  # noqa: F401 - re-exported (the documented path)
    KINDS,
    ModelKind,
    get_kind,
    import_ref,
    kind_ref,
    register_kind,
    resolve_config,
)


@dataclasses.dataclass(frozen=True)
class SourceFormat:
    """One source checkpoint layout of a model kind.

    ``rules``: ``"module:function"`` of ``function(config, **kwargs) -> (list[Rule], list[ignore
    pattern])``.
    ``prefix``: the model's keys live under this prefix in the source (e.g. ``first_stage_model.``
    in a full LDM checkpoint, ``lgm_big.`` in a VideoMV checkpoint). When any source key has
    it, only those keys are considered, and the prefix is stripped unless the rules themselves
    name prefixed keys; a source without any prefixed key is used as is (a stand-alone dump).
    ``extra_ignore``: fnmatch patterns of keys of *other* parts of a combined checkpoint (e.g.
    ``lgm_big.*`` in a VideoMV checkpoint) dropped on top of the rules' own ignore patterns.
    ``rules_kwargs``: extra keyword arguments of the rules function: a dict, or
    ``"module:function"`` of ``function(source) -> dict`` that reads them off the source keys.
    ``preprocess``: ``"module:function"`` of ``function(source) -> problems`` that rewrites the
    source dict in place before conversion (e.g. fusing q/k/v) and returns {synthetic key:
    description} used to explain a missing synthetic key in the error message.
    """

    rules: str
    prefix: str | None = None
    extra_ignore: tuple[str, ...] = ()
    description: str = ""
    rules_kwargs: Mapping[str, Any] | str | None = None
    preprocess: str | None = None


def register_formats(kind: str | ModelKind, formats: Mapping[str, SourceFormat]) -> ModelKind:
    """Add source formats to a registered model kind (in place: ``get_kind`` keeps returning
    the same object); returns the kind."""
    k = get_kind(kind)
    clash = sorted(set(formats) & set(k.formats))
    if clash and any(k.formats[f] != formats[f] for f in clash):
        raise ValueError(f"model kind {k.name!r} already has source formats {clash}")
    if not isinstance(k.formats, dict):
        raise TypeError(f"model kind {k.name!r} holds its formats in a "
                        f"{type(k.formats).__name__}, not a dict; register it with a dict")
    k.formats.update(formats)
    return k


register_formats("unet-t2v", {
    "vgen": SourceFormat("videomv_jax.convert.unet:rules_vgen", prefix="module.",
                         extra_ignore=("lgm_big.*",),
                         description="VideoMV / VGen .pth (UNetSD_T2VBase names; the "
                                     "lgm_big.* keys of a VideoMV checkpoint are skipped)"),
    "diffusers": SourceFormat("videomv_jax.convert.unet:rules_diffusers",
                              description="diffusers UNet3DConditionModel state dict (it "
                                          "has no camera MLP: convert with a config whose "
                                          "use_camera is false)"),
})
register_formats("unet-i2v", {
    "vgen": SourceFormat("videomv_jax.convert.unet:rules_vgen", prefix="module.",
                         extra_ignore=("lgm_big.*",),
                         description="VideoMV / VGen .pth (UNetSD_I2VGen names)"),
})
register_formats("vae", {
    "ldm": SourceFormat("videomv_jax.convert.vae:rules_ldm", prefix="first_stage_model.",
                        extra_ignore=("loss.*",),
                        description="LDM KL-f8 autoencoder (keys first_stage_model.* in a "
                                    "full LDM checkpoint, or without prefix)"),
    "diffusers": SourceFormat("videomv_jax.convert.vae:rules_diffusers",
                              description="diffusers AutoencoderKL state dict"),
})
register_formats("clip-text", {
    "open_clip": SourceFormat("videomv_jax.convert.clip:rules_open_clip_text",
                              extra_ignore=("visual.*", "logit_scale"),
                              description="open_clip ViT-H-14 state dict (text tower; "
                                          "visual.* skipped)"),
    "hf": SourceFormat("videomv_jax.convert.clip:rules_hf_text",
                       extra_ignore=("vision_model.*", "visual_projection.*", "logit_scale"),
                       rules_kwargs="videomv_jax.convert.registry:hf_text_rules_kwargs",
                       preprocess="videomv_jax.convert.registry:fuse_hf_qkv_inplace",
                       description="transformers CLIPTextModel / CLIPModel state dict"),
})
register_formats("clip-vision", {
    "open_clip": SourceFormat("videomv_jax.convert.clip:rules_open_clip_vision",
                              prefix="visual.",
                              description="open_clip ViT-H-14 state dict (visual.* keys)"),
    "hf": SourceFormat("videomv_jax.convert.clip:rules_hf_vision",
                       extra_ignore=("text_model.*", "text_projection.*", "logit_scale"),
                       preprocess="videomv_jax.convert.registry:fuse_hf_qkv_inplace",
                       description="transformers CLIPVisionModelWithProjection / CLIPModel "
                                   "state dict"),
})
_LGM = SourceFormat("videomv_jax.convert.lgm:rules_lgm", prefix="lgm_big.",
                    description="LGM model.safetensors, or the lgm_big.* keys of a VideoMV .pth")
register_formats("lgm", {"lgm": _LGM, "vgen": _LGM})


# ---- source adapters for transformers CLIP checkpoints -------------------------------------------

_QKV_KEY = re.compile(r"^(?P<stem>.*)\.(?P<which>[qkv])_proj\.(?P<param>weight|bias)$")


def hf_text_rules_kwargs(source: Mapping[str, Any]) -> dict[str, Any]:
    """``prefix`` of the transformers text keys (``text_model.`` in ``CLIPModel``)."""
    from videomv_jax.convert.clip import hf_text_prefix

    return {"prefix": hf_text_prefix(source)}


def fuse_hf_qkv_inplace(source: MutableMapping[str, Any]) -> dict[str, str]:
    """:func:`videomv_jax.convert.clip.fuse_hf_qkv` applied one q/k/v triple at a time, in
    place, so that only one fused tensor is extra at any moment. Returns its problems dict."""
    from videomv_jax.convert.clip import fuse_hf_qkv

    groups: dict[tuple[str, str], list[str]] = {}
    for key in source:
        m = _QKV_KEY.match(key)
        if m is not None:
            groups.setdefault((m["stem"], m["param"]), []).append(key)
    problems: dict[str, str] = {}
    for keys in groups.values():
        part = {k: source.pop(k) for k in keys}
        fused, probs = fuse_hf_qkv(part)
        del part
        source.update(fused)
        problems.update(probs)
    return problems


# ---- source selection and streaming conversion ---------------------------------------------------


def _source_keys(source: Mapping[str, Any], sf: SourceFormat,
                 rules: Iterable[Rule]) -> dict[str, str]:
    """{key the rules use: key in ``source``} after the format's prefix handling."""
    p = sf.prefix
    if not p or not any(k.startswith(p) for k in source):
        return {k: k for k in source}
    rules_prefixed = any(r.source.startswith(p) for r in rules)
    return {(k if rules_prefixed else k[len(p):]): k for k in source if k.startswith(p)}


def _shape(value: Any) -> tuple[int, ...]:
    """Shape without reading a lazy tensor (``np.shape`` would materialise it)."""
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else np.shape(value)


@dataclasses.dataclass
class _Plan:
    rules: list[Rule]
    keymap: dict[str, str]
    target: Mapping[Path, Any]
    name: str


def _plan(k: ModelKind, fmt: str, source: MutableMapping[str, Any], config: Any,
          target: Mapping[Path, Any] | None) -> _Plan:
    """Preprocess ``source`` in place, build the rules and check the layout (no allocation)."""
    sf = k.format(fmt)
    problems = import_ref(sf.preprocess)(source) if sf.preprocess else {}
    rules, ignore = k.rules(fmt, config, source)
    if target is None:
        target = abstract_params(k.abstract(config))
    keymap = _source_keys(source, sf, rules)
    name = f"{k.name} ({fmt} checkpoint)"

    zero = np.zeros((), np.float32)
    placeholders = {rk: np.broadcast_to(zero, _shape(source[sk])) for rk, sk in keymap.items()}
    check_target = {p: jax.ShapeDtypeStruct(tuple(v.shape), np.float32)
                    for p, v in target.items()}
    try:
        convert_state_dict(placeholders, rules, check_target, ignore, name)
    except ConversionError as err:
        if not problems:
            raise
        missing = []
        for entry in err.missing:
            key = next((q for q in problems if entry.endswith(f"(expects checkpoint key {q})")),
                       None)
            missing.append(entry if key is None else
                           entry.replace(f"expects checkpoint key {key}", problems[key]))
        raise ConversionError(name, missing, err.unexpected, err.mismatched,
                              err.duplicated) from None
    return _Plan(rules, keymap, target, name)


def check_source(
    kind: str | ModelKind,
    fmt: str,
    source: Mapping[str, Any],
    config: Any,
    *,
    target: Mapping[Path, Any] | None = None,
) -> int:
    """Check that ``source`` (arrays or any objects with ``.shape``, e.g. zero-strided
    placeholders of a full-size layout) fits ``kind``/``fmt``/``config`` without converting or
    allocating anything; raises :class:`ConversionError` listing every problem. Returns the
    number of parameter tensors that would be filled."""
    k = get_kind(kind)
    return len(_plan(k, fmt, dict(source), config, target).rules)


def iter_converted(
    kind: str | ModelKind,
    fmt: str,
    source: MutableMapping[str, Any],
    config: Any,
    *,
    target: Mapping[Path, Any] | None = None,
    consume: bool = True,
    progress: bool = False,
    dtype: Any = None,
) -> Iterator[tuple[Path, np.ndarray]]:
    """Convert a source state dict for ``kind`` in format ``fmt``, one tensor at a time.

    The layout check of :func:`check_source` (zero-strided float32 placeholders of the source
    shapes against float32 target shapes, through
    :func:`~videomv_jax.convert.base.convert_state_dict`) runs first, when this is called:
    every missing / unexpected / mis-shaped / duplicated key is reported at once as a
    :class:`~videomv_jax.convert.base.ConversionError` before anything is read. The returned
    iterator then yields ``(parameter path, array)`` pairs, each a fresh C-contiguous numpy
    array of the parameter dtype, converted only when asked for: hand it to
    :func:`~videomv_jax.model_store.save_converted`, which writes each array before asking for
    the next, and no more than one converted tensor is held at a time.

    With ``consume`` (default) the source dict is worked on in place: a format's preprocessing
    (e.g. q/k/v fusion) rewrites it, keys that are not used at all (other prefixes, ignored
    keys) are deleted first, and each entry is deleted as soon as its last rule used it (the
    caller must hold no other references to the source arrays for them to be freed).
    ``consume=False`` leaves the caller's dict untouched. ``source`` values may be
    :class:`~videomv_jax.convert.base.LazyTensor` (from
    :func:`~videomv_jax.convert.base.open_source_checkpoint`): each is read only when its rule
    runs, and released after its last use. ``dtype`` (e.g. ``"float16"``) overrides the
    parameter dtype of the floating-point outputs (keep a half-precision release in half
    precision: save with ``storage_dtype`` of the same name). ``target`` ({path: shape/dtype})
    defaults to the abstract model of ``config``.
    """
    k = get_kind(kind)
    if not consume:
        source = dict(source)
    plan = _plan(k, fmt, source, config, target)
    out_dtype = None if dtype is None else np.dtype(jax.numpy.dtype(dtype))
    uses = Counter(r.source for r in plan.rules)
    if consume:
        needed = {plan.keymap[r] for r in uses}
        for sk in [sk for sk in source if sk not in needed]:
            del source[sk]
    return _converted(k, plan, source, uses, out_dtype, consume, progress)


def _converted(k: ModelKind, plan: _Plan, source: MutableMapping[str, Any], uses: Counter,
               out_dtype: np.dtype | None, consume: bool, progress: bool
               ) -> Iterator[tuple[Path, np.ndarray]]:
    it: Iterable[Rule] = plan.rules
    if progress:
        from tqdm import tqdm

        it = tqdm(plan.rules, desc=f"converting {k.name}", unit="tensor")
    for rule in it:
        sk = plan.keymap[rule.source]
        value = rule.transform(np.asarray(source[sk]))
        want = np.dtype(plan.target[rule.target].dtype)
        if out_dtype is not None and np.issubdtype(want, np.floating):
            want = out_dtype
        # a fresh C-contiguous array: never a view into the (memory-mapped) source
        value = np.array(value, dtype=want, order="C", copy=True)
        uses[rule.source] -= 1
        if uses[rule.source] == 0:
            release = getattr(source[sk], "release", None)
            if release is not None:
                release()
            if consume:
                del source[sk]
        yield rule.target, value
        del value


def convert_source(
    kind: str | ModelKind,
    fmt: str,
    source: MutableMapping[str, Any],
    config: Any,
    *,
    target: Mapping[Path, Any] | None = None,
    consume: bool = True,
    progress: bool = False,
    device: jax.Device | None = None,
    dtype: Any = None,
) -> dict[Path, Any]:
    """All of :func:`iter_converted` as a dict ``{parameter path: numpy array}``, or jax
    arrays on ``device`` when given (each tensor moved as soon as it is converted). The source
    shrinks while the result grows (see :func:`iter_converted` for ``consume``, ``dtype`` and
    ``target``); to write a converted directory without holding the whole model, pass
    :func:`iter_converted` to :func:`~videomv_jax.model_store.save_converted` instead."""
    out: dict[Path, Any] = {}
    for path, value in iter_converted(kind, fmt, source, config, target=target,
                                      consume=consume, progress=progress, dtype=dtype):
        out[path] = value if device is None else jax.device_put(value, device)
        del value
    return out


def describe_kinds() -> str:
    """Human-readable table of kinds, presets and formats (for ``--help``)."""
    lines = []
    for k in KINDS.values():
        lines.append(f"  {k.name}: {k.description}")
        lines.append(f"      presets: {', '.join(k.presets)} (default {k.default_preset})")
        for fname, sf in k.formats.items():
            lines.append(f"      --format {fname}: {sf.description}")
    return "\n".join(lines)
