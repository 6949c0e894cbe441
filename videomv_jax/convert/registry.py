"""Which models can be converted, from which source formats, and how.

A :class:`ModelKind` names a config class (with preset classmethods), a model class and the
source formats it can be converted from; a :class:`SourceFormat` names the converter's
``rules_<format>(config) -> (rules, ignore_patterns)`` function and how to find the model's keys
inside a bigger checkpoint (a key prefix, extra keys of other towers to ignore). Everything is
referenced by ``"module:attribute"`` strings and imported on first use, so importing this module
(and ``--help`` of the converter CLI) needs neither the model code nor torch.

:func:`convert_source` runs a conversion tensor by tensor, consuming the source dict as it goes,
so peak host memory stays near one copy of the weights (see its docstring).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from videomv_jax.convert.base import (
    ConversionError,
    Path,
    Rule,
    abstract_params,
    convert_state_dict,
)


def import_ref(ref: str) -> Any:
    """Import ``"package.module:attr"`` (attr may be dotted)."""
    if ":" not in ref:
        raise ValueError(f"expected 'module:attribute', got {ref!r}")
    mod_name, attr = ref.split(":", 1)
    obj: Any = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


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


@dataclasses.dataclass(frozen=True, eq=False)
class ModelKind:
    """A convertible model: config class, model class, presets and source formats."""

    name: str
    config: str
    model: str
    formats: Mapping[str, SourceFormat]
    #: CLI preset name → candidate classmethod names on the config class (first found wins).
    presets: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    default_preset: str = "full"
    description: str = ""

    def config_cls(self) -> type:
        return import_ref(self.config)

    def model_cls(self) -> type:
        return import_ref(self.model)

    def format(self, name: str) -> SourceFormat:
        if name not in self.formats:
            raise ValueError(f"model kind {self.name!r} cannot be converted from format "
                             f"{name!r}; known formats: {sorted(self.formats)}")
        return self.formats[name]

    def make_config(self, preset: str | None = None) -> Any:
        """Config from a preset name: a key of ``presets`` or any classmethod of the config."""
        preset = preset or self.default_preset
        cls = self.config_cls()
        for meth in tuple(self.presets.get(preset, ())) + (preset,):
            factory = getattr(cls, meth, None)
            if callable(factory) and not meth.startswith("_"):
                return factory()
        raise ValueError(f"unknown config preset {preset!r} for {self.name!r}; presets: "
                         f"{sorted(self.presets)} (or any classmethod of {cls.__name__})")

    def config_from_dict(self, d: Mapping[str, Any]) -> Any:
        cls = self.config_cls()
        try:
            return cls.from_dict(dict(d))
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"the config does not describe a {self.name!r} model "
                             f"({cls.__name__}): {err}") from err

    def build(self, config: Any, rngs: nnx.Rngs | None = None) -> nnx.Module:
        """A concrete model with random weights."""
        return self.model_cls()(config, rngs=rngs if rngs is not None else nnx.Rngs(0))

    def abstract(self, config: Any) -> nnx.Module:
        """The model with ShapeDtypeStructs instead of arrays (``nnx.eval_shape``, no memory)."""
        from videomv_jax.models import abstract_model

        return abstract_model(self.model_cls(), config)

    def rules(self, fmt: str, config: Any, source: Mapping[str, Any] | None = None
              ) -> tuple[list[Rule], list[str]]:
        """(rules, ignore patterns) of source format ``fmt`` for ``config``; ``source`` (its
        keys) is needed by formats whose rules depend on the source (``rules_kwargs``)."""
        sf = self.format(fmt)
        kwargs = sf.rules_kwargs
        if isinstance(kwargs, str):
            kwargs = import_ref(kwargs)(source if source is not None else {})
        rules, ignore = import_ref(sf.rules)(config, **dict(kwargs or {}))
        return list(rules), list(ignore) + list(sf.extra_ignore)


_CLIP_TEXT_FULL = ("full", "vit_h_14", "open_clip_vit_h_14", "default")
_CLIP_VISION_FULL = ("full", "vit_h_14", "open_clip_vit_h_14", "default")

KINDS: dict[str, ModelKind] = {}


def register_kind(kind: ModelKind, *, replace: bool = False) -> ModelKind:
    """Add a model kind to :data:`KINDS` (e.g. a plug-in model)."""
    if kind.name in KINDS and not replace:
        raise ValueError(f"model kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


register_kind(ModelKind(
    name="unet-t2v",
    config="videomv_jax.models.unet3d:UNet3DConfig",
    model="videomv_jax.models.unet3d:UNet3D",
    presets={"full": ("text_full",), "tiny": ("text_tiny",)},
    formats={
        "vgen": SourceFormat("videomv_jax.convert.unet:rules_vgen", prefix="module.",
                             extra_ignore=("lgm_big.*",),
                             description="VideoMV / VGen .pth (UNetSD_T2VBase names; the "
                                         "lgm_big.* keys of a VideoMV checkpoint are skipped)"),
        "diffusers": SourceFormat("videomv_jax.convert.unet:rules_diffusers",
                                  description="diffusers UNet3DConditionModel state dict (it "
                                              "has no camera MLP: convert with a config whose "
                                              "use_camera is false)"),
    },
    description="VideoMV text-to-multi-view video UNet (ModelScope-T2V based)",
))
register_kind(ModelKind(
    name="unet-i2v",
    config="videomv_jax.models.unet3d:UNet3DConfig",
    model="videomv_jax.models.unet3d:UNet3D",
    presets={"full": ("image_full",), "tiny": ("image_tiny",)},
    formats={
        "vgen": SourceFormat("videomv_jax.convert.unet:rules_vgen", prefix="module.",
                             extra_ignore=("lgm_big.*",),
                             description="VideoMV / VGen .pth (UNetSD_I2VGen names)"),
    },
    description="VideoMV image-to-multi-view video UNet (I2VGen-XL based)",
))
register_kind(ModelKind(
    name="vae",
    config="videomv_jax.models.vae:VAEConfig",
    model="videomv_jax.models.vae:AutoencoderKL",
    presets={"full": ("full",), "tiny": ("tiny",)},
    formats={
        "ldm": SourceFormat("videomv_jax.convert.vae:rules_ldm", prefix="first_stage_model.",
                            extra_ignore=("loss.*",),
                            description="LDM KL-f8 autoencoder (keys first_stage_model.* in a "
                                        "full LDM checkpoint, or without prefix)"),
        "diffusers": SourceFormat("videomv_jax.convert.vae:rules_diffusers",
                                  description="diffusers AutoencoderKL state dict"),
    },
    description="KL-f8 latent autoencoder",
))
register_kind(ModelKind(
    name="clip-text",
    config="videomv_jax.models.clip:CLIPTextConfig",
    model="videomv_jax.models.clip:CLIPTextModel",
    presets={"full": _CLIP_TEXT_FULL, "tiny": ("tiny",)},
    formats={
        "open_clip": SourceFormat("videomv_jax.convert.clip:rules_open_clip_text",
                                  extra_ignore=("visual.*", "logit_scale"),
                                  description="open_clip ViT-H-14 state dict (text tower; "
                                              "visual.* skipped)"),
        "hf": SourceFormat("videomv_jax.convert.clip:rules_hf_text",
                           extra_ignore=("vision_model.*", "visual_projection.*", "logit_scale"),
                           rules_kwargs="videomv_jax.convert.registry:hf_text_rules_kwargs",
                           preprocess="videomv_jax.convert.registry:fuse_hf_qkv_inplace",
                           description="transformers CLIPTextModel / CLIPModel state dict"),
    },
    description="OpenCLIP ViT-H-14 text encoder",
))
register_kind(ModelKind(
    name="clip-vision",
    config="videomv_jax.models.clip:CLIPVisionConfig",
    model="videomv_jax.models.clip:CLIPVisionModel",
    presets={"full": _CLIP_VISION_FULL, "tiny": ("tiny",)},
    formats={
        "open_clip": SourceFormat("videomv_jax.convert.clip:rules_open_clip_vision",
                                  prefix="visual.",
                                  description="open_clip ViT-H-14 state dict (visual.* keys)"),
        "hf": SourceFormat("videomv_jax.convert.clip:rules_hf_vision",
                           extra_ignore=("text_model.*", "text_projection.*", "logit_scale"),
                           preprocess="videomv_jax.convert.registry:fuse_hf_qkv_inplace",
                           description="transformers CLIPVisionModelWithProjection / CLIPModel "
                                       "state dict"),
    },
    description="OpenCLIP ViT-H-14 image encoder",
))
_LGM = SourceFormat("videomv_jax.convert.lgm:rules_lgm", prefix="lgm_big.",
                    description="LGM model.safetensors, or the lgm_big.* keys of a VideoMV .pth")
register_kind(ModelKind(
    name="lgm",
    config="videomv_jax.models.lgm:LGMConfig",
    model="videomv_jax.models.lgm:LGM",
    presets={"full": ("big",), "big": ("big",), "small": ("small",), "tiny": ("tiny",)},
    formats={"lgm": _LGM, "vgen": _LGM},
    description="LGM 'big' Gaussian reconstructor (VideoMV's lgm_big)",
))


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


def get_kind(name: str | ModelKind) -> ModelKind:
    """A registered kind by name, or a ``"module:attr"`` reference to a :class:`ModelKind`."""
    if isinstance(name, ModelKind):
        return name
    if name in KINDS:
        return KINDS[name]
    if ":" in name:
        try:
            obj = import_ref(name)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import model kind {name!r}: {err}") from err
        if not isinstance(obj, ModelKind):
            raise ValueError(f"{name!r} is a {type(obj).__name__}, not a ModelKind")
        return obj
    raise ValueError(f"unknown model kind {name!r}; known kinds: {sorted(KINDS)}")


def kind_ref(kind: str | ModelKind) -> str:
    """The string that :func:`get_kind` resolves back to ``kind`` (stored in config.json)."""
    if isinstance(kind, str):
        return kind
    if KINDS.get(kind.name) is kind:
        return kind.name
    raise ValueError(f"model kind {kind.name!r} is not registered; pass it by name or by a "
                     f"'module:attr' reference so that it can be found again when loading")


def resolve_config(kind: str | ModelKind, spec: str | Mapping[str, Any] | None = None) -> Any:
    """Config from a preset name, a JSON file, inline JSON (``{...}``) or a dict. A converted
    directory's ``config.json`` (``{"model": ..., "config": {...}}``) is accepted too."""
    k = get_kind(kind)
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return k.make_config(None)
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"--config is not valid JSON: {err}") from err
        elif os.path.isfile(text) or text.endswith(".json"):
            try:
                with open(text) as f:
                    data = json.load(f)
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"cannot read config JSON {text!r}: {err}") from err
        else:
            return k.make_config(text)
    else:
        data = spec
    if isinstance(data, Mapping) and "config" in data and "model" in data:
        stored = data["model"]
        same = stored == k.name
        if not same:
            try:
                same = get_kind(stored) is k
            except ValueError:
                same = False
        if not same:
            raise ValueError(f"the config file describes a {data['model']!r} model, not "
                             f"{k.name!r}")
        data = data["config"]
    if not isinstance(data, Mapping):
        raise ValueError(f"a config JSON must be an object, got {type(data).__name__}")
    return k.config_from_dict(data)


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
