"""Model kinds: which config class and model class a converted directory's ``"model"`` names.

A :class:`ModelKind` names a config class (with preset classmethods) and a model class by
``"module:attribute"`` strings, imported on first use (importing this module needs neither the
model code nor torch). :data:`KINDS` holds the built-in kinds; :func:`get_kind` also resolves a
``"module:attr"`` reference to a plug-in kind. The loading side
(:mod:`videomv_jax.model_store`, train, sample, eval) uses only this module; the converters
(:mod:`videomv_jax.convert.registry`) add each kind's PyTorch source formats to it.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Mapping
from typing import Any

from flax import nnx

Path = tuple[Any, ...]


def path_str(path: Path) -> str:
    """``a/0/kernel`` for the parameter path ``("a", 0, "kernel")``."""
    return "/".join(str(p) for p in path)


def abstract_params(model: nnx.Module) -> dict[Path, Any]:
    """Flat {path: ShapeDtypeStruct or array} of a model's ``nnx.Param`` variables."""
    state = nnx.state(model, nnx.Param)
    return {tuple(path): var.get_value() for path, var in nnx.to_flat_state(state)}


def import_ref(ref: str) -> Any:
    """Import ``"package.module:attr"`` (attr may be dotted)."""
    if ":" not in ref:
        raise ValueError(f"expected 'module:attribute', got {ref!r}")
    mod_name, attr = ref.split(":", 1)
    obj: Any = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj



@dataclasses.dataclass(frozen=True, eq=False)
class ModelKind:
    """A model kind: config class, model class, presets, and the source formats a converter
    can read it from (``formats``: name → :class:`videomv_jax.convert.registry.SourceFormat`,
    added by the conversion package; loading a converted model never looks at them)."""

    name: str
    config: str
    model: str
    formats: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: CLI preset name → candidate classmethod names on the config class (first found wins).
    presets: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    default_preset: str = "full"
    description: str = ""

    def config_cls(self) -> type:
        return import_ref(self.config)

    def model_cls(self) -> type:
        return import_ref(self.model)

    def format(self, name: str) -> Any:
        """The :class:`~videomv_jax.convert.registry.SourceFormat` named ``name``."""
        if name not in self.formats:
            hint = "" if self.formats else (" (source formats are registered by "
                                            "videomv_jax.convert.registry: import it first)")
            raise ValueError(f"model kind {self.name!r} cannot be converted from format "
                             f"{name!r}; known formats: {sorted(self.formats)}{hint}")
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
              ) -> tuple[list[Any], list[str]]:
        """(rules, ignore patterns) of source format ``fmt`` for ``config``; ``source`` (its
        keys) is needed by formats whose rules depend on the source (``rules_kwargs``)."""
        sf = self.format(fmt)
        kwargs = sf.rules_kwargs
        if isinstance(kwargs, str):
            kwargs = import_ref(kwargs)(source if source is not None else {})
        rules, ignore = import_ref(sf.rules)(config, **dict(kwargs or {}))
        return list(rules), list(ignore) + list(sf.extra_ignore)


_CLIP_FULL = ("full", "vit_h_14", "open_clip_vit_h_14", "default")

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
    description="VideoMV text-to-multi-view video UNet (ModelScope-T2V based)",
))
register_kind(ModelKind(
    name="unet-i2v",
    config="videomv_jax.models.unet3d:UNet3DConfig",
    model="videomv_jax.models.unet3d:UNet3D",
    presets={"full": ("image_full",), "tiny": ("image_tiny",)},
    description="VideoMV image-to-multi-view video UNet (I2VGen-XL based)",
))
register_kind(ModelKind(
    name="vae",
    config="videomv_jax.models.vae:VAEConfig",
    model="videomv_jax.models.vae:AutoencoderKL",
    presets={"full": ("full",), "tiny": ("tiny",)},
    description="KL-f8 latent autoencoder",
))
register_kind(ModelKind(
    name="clip-text",
    config="videomv_jax.models.clip:CLIPTextConfig",
    model="videomv_jax.models.clip:CLIPTextModel",
    presets={"full": _CLIP_FULL, "tiny": ("tiny",)},
    description="OpenCLIP ViT-H-14 text encoder",
))
register_kind(ModelKind(
    name="clip-vision",
    config="videomv_jax.models.clip:CLIPVisionConfig",
    model="videomv_jax.models.clip:CLIPVisionModel",
    presets={"full": _CLIP_FULL, "tiny": ("tiny",)},
    description="OpenCLIP ViT-H-14 image encoder",
))
register_kind(ModelKind(
    name="lgm",
    config="videomv_jax.models.lgm:LGMConfig",
    model="videomv_jax.models.lgm:LGM",
    presets={"full": ("big",), "big": ("big",), "small": ("small",), "tiny": ("tiny",)},
    description="LGM 'big' Gaussian reconstructor (VideoMV's lgm_big)",
))


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


def config_fields(kind: str | ModelKind, spec: str | Mapping[str, Any]
                  ) -> dict[str, Any] | None:
    """The config fields a JSON file, inline JSON (``{...}``) or dict gives (a converted
    directory's ``config.json``, ``{"model": ..., "config": {...}}``, is unwrapped after its
    kind is checked); ``None`` when ``spec`` is a preset name."""
    k = get_kind(kind)
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
            return None
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
    return dict(data)


def resolve_config(kind: str | ModelKind, spec: str | Mapping[str, Any] | None = None) -> Any:
    """Config from a preset name, a JSON file, inline JSON (``{...}``) or a dict (fields not
    given take the config class's defaults). A converted directory's ``config.json``
    (``{"model": ..., "config": {...}}``) is accepted too."""
    k = get_kind(kind)
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return k.make_config(None)
    fields = config_fields(k, spec)
    if fields is None:
        return k.make_config(spec.strip())
    return k.config_from_dict(fields)
