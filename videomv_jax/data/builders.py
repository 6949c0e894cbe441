"""TFDS builders for the multi-view data sets, written as ``array_record`` for random access.

Two builders (registered in TFDS as ``videomv_gobjaverse`` and ``videomv_shapes``):

* :class:`GObjaverse` reads the G-Objaverse render layout (:mod:`videomv_jax.data.gobjaverse`):
  ``root`` (or the TFDS manual dir), a captions JSON and an optional object list.
* :class:`Shapes` renders the procedural scenes of :mod:`videomv_jax.data.shapes`: object ``i``
  is ``random_scene(seed_offset + i)`` rendered at the **training** orbit of G-Objaverse
  (docs/design.md §3.2): 24 views, 15 degrees of azimuth apart starting at azimuth 0, distance
  :data:`SHAPES_DISTANCE` = 1.645 from the origin, elevation 15 degrees (the text→MV inference
  elevation, since the per-object G-Objaverse elevation is not documented), fovy 39.6 degrees.
  ``elevation_range`` draws a per-object elevation instead, deterministically from the seed.

Features of every example (both builders; ``V = 24``, ``R`` = ``resolution``):

==============  ==============================  ===============================================
key             dtype / shape                   meaning
==============  ==============================  ===============================================
views           uint8 ``[V, R, R, 4]``          RGBA, RGB **premultiplied** by alpha
views_hr        uint8 ``[V, HR, HR, 4]``        same at ``hr_resolution`` (only when set)
c2w             float32 ``[V, 4, 4]``           OpenGL camera-to-world, z-up world
camera          float32 ``[V, 16]``             row-major flatten of ``c2w`` (UNet input)
lgm_cameras     float32 ``[V, 4, 4]``           ``normalize_poses(c2w)`` (LGM, y-up)
caption         text                            caption without the ", 3d asset" suffix
object_id       text                            ``"dir/id"`` (G-Objaverse), ``"shapes/<seed>"``
depth           float32 ``[V, R, R]``           shapes only: OpenCV camera z, 0 on background
==============  ==============================  ===============================================

Bad examples (:class:`videomv_jax.data.gobjaverse.BadExampleError`) are skipped, logged one by
one with their path, summarised with their count at the end of the build, and stored in the
data set's metadata (``info.metadata["bad_examples"]``, ``["num_bad"]``); with ``strict=True``
the first one fails the build. Nothing is dropped silently.

Use :func:`build_dataset` to build and :func:`load_source` to open a random-access source
(``ArrayRecordDataSource``: ``len(src)``, ``src[i]``) that a host indexes with only its own
example indices.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tqdm.auto import tqdm

from videomv_jax.data import gobjaverse as gv
from videomv_jax.data import shapes as shapes_lib
from videomv_jax.render.camera import (
    DEFAULT_FOVY_DEG,
    NUM_VIEWS,
    camera_embedding,
    normalize_poses,
    orbit_cameras,
)

__all__ = [
    "SHAPES_DISTANCE",
    "SHAPES_ELEVATION_DEG",
    "BuildResult",
    "GObjaverse",
    "GObjaverseConfig",
    "Shapes",
    "ShapesConfig",
    "build_dataset",
    "load_source",
    "make_builder",
    "read_bad_examples",
    "shapes_elevation",
    "shapes_example",
]

log = logging.getLogger(__name__)

SHAPES_DISTANCE: float = 1.645
"""Camera distance of the G-Objaverse training orbit (design §3.2), used by :class:`Shapes`."""

SHAPES_ELEVATION_DEG: float = 15.0
"""Default elevation of the :class:`Shapes` orbit (degrees)."""

_VERSION = tfds.core.Version("1.0.0")


def _check_res(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(eq=False)
class GObjaverseConfig(tfds.core.BuilderConfig):
    """Config of :class:`GObjaverse`.

    ``root``: the folder holding ``<dir>/<id>/campos_512_v4`` (empty: the TFDS manual dir);
    ``captions``: captions JSON keyed by ``"dir/id"``; ``object_list``: JSON list of object
    names (None: scan ``root``); ``resolution``: stored view size (256 for the UNet);
    ``hr_resolution``: also store ``views_hr`` at this size (512 for the reconstructor);
    ``require_caption``: a missing caption is a bad example (False: empty caption, e.g. for
    image→MV, whose caption is always ""); ``strict``: fail on the first bad example;
    ``progress``: show a tqdm bar over the objects.
    """

    root: str = ""
    captions: str | None = None
    object_list: str | None = None
    resolution: int = 256
    hr_resolution: int | None = None
    require_caption: bool = True
    strict: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        _check_res("resolution", self.resolution)
        _check_res("hr_resolution", self.hr_resolution, allow_none=True)


@dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """Config of :class:`Shapes`: objects ``seed_offset .. seed_offset + num_objects - 1``.

    ``elevation_range``: ``None`` for the fixed :data:`SHAPES_ELEVATION_DEG`, or ``(lo, hi)``
    degrees drawn per object from its seed. ``hr_resolution`` also renders ``views_hr``.
    ``max_objects``, ``fit_radius``, ``next_to`` and ``max_size_ratio`` go to
    :func:`~videomv_jax.data.shapes.random_scene`.
    """

    num_objects: int = 8
    seed_offset: int = 0
    max_objects: int = 3
    fit_radius: float | None = None
    next_to: str = "random"
    max_size_ratio: float | None = None
    resolution: int = 64
    hr_resolution: int | None = None
    distance: float = SHAPES_DISTANCE
    elevation_deg: float = SHAPES_ELEVATION_DEG
    elevation_range: tuple[float, float] | None = None
    fovy_deg: float = DEFAULT_FOVY_DEG
    strict: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        _check_res("num_objects", self.num_objects)
        _check_res("resolution", self.resolution)
        _check_res("hr_resolution", self.hr_resolution, allow_none=True)
        if isinstance(self.seed_offset, bool) or not isinstance(self.seed_offset, int) or (
            self.seed_offset < 0
        ):
            raise ValueError(f"seed_offset must be a non-negative int, got {self.seed_offset!r}")
        if not self.distance > 0:
            raise ValueError(f"distance must be > 0, got {self.distance!r}")
        if self.max_objects not in (1, 2, 3):
            raise ValueError(f"max_objects must be 1, 2 or 3, got {self.max_objects!r}")
        if self.fit_radius is not None and not 0 < self.fit_radius <= 0.5:
            raise ValueError(f"fit_radius must be in (0, 0.5], got {self.fit_radius!r}")
        if self.next_to not in shapes_lib.NEXT_TO:
            raise ValueError(f"next_to must be one of {shapes_lib.NEXT_TO}, got "
                             f"{self.next_to!r}")
        top = shapes_lib.SIZE_RANGE[1] / shapes_lib.SIZE_RANGE[0]
        if self.max_size_ratio is not None and not 1.0 <= self.max_size_ratio <= top:
            raise ValueError(f"max_size_ratio must be in [1, {top:g}] or None, got "
                             f"{self.max_size_ratio!r}")
        if self.elevation_range is not None:
            lo, hi = self.elevation_range
            if not -90 < lo <= hi < 90:
                raise ValueError(f"elevation_range must satisfy -90 < lo <= hi < 90, got "
                                 f"{self.elevation_range!r}")


def _common_features(resolution: int, hr_resolution: int | None) -> dict[str, Any]:
    zlib = tfds.features.Encoding.ZLIB
    feats: dict[str, Any] = {
        "views": tfds.features.Tensor(
            shape=(NUM_VIEWS, resolution, resolution, 4), dtype=np.uint8, encoding=zlib
        ),
        "c2w": tfds.features.Tensor(shape=(NUM_VIEWS, 4, 4), dtype=np.float32),
        "camera": tfds.features.Tensor(shape=(NUM_VIEWS, 16), dtype=np.float32),
        "lgm_cameras": tfds.features.Tensor(shape=(NUM_VIEWS, 4, 4), dtype=np.float32),
        "caption": tfds.features.Text(),
        "object_id": tfds.features.Text(),
    }
    if hr_resolution is not None:
        feats["views_hr"] = tfds.features.Tensor(
            shape=(NUM_VIEWS, hr_resolution, hr_resolution, 4), dtype=np.uint8, encoding=zlib
        )
    return feats


class _ReportingBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared bad-example bookkeeping: skip + log + summarise, or raise under ``strict``."""

    VERSION = _VERSION

    def _bad(self, bad: list[dict[str, str]], err: gv.BadExampleError) -> None:
        if self.builder_config.strict:
            raise err
        bad.append({"path": err.path, "reason": err.reason, "error": type(err).__name__})
        log.warning("%s: skipping bad example %s (%s)", self.name, err.path, err.reason)

    def _finish(self, bad: list[dict[str, str]], good: int) -> None:
        self.info.metadata["bad_examples"] = bad
        self.info.metadata["num_bad"] = len(bad)
        self.info.metadata["num_good"] = good
        if bad:
            lines = "\n".join(f"  {b['path']}: {b['reason']}" for b in bad)
            log.warning("%s: skipped %d bad example(s) of %d:\n%s", self.name, len(bad),
                        len(bad) + good, lines)
        if good == 0:
            raise RuntimeError(f"{self.name}: no usable example ({len(bad)} bad); "
                               "see the warnings above")


class GObjaverse(_ReportingBuilder):
    """G-Objaverse renders (24-view orbit) with cameras and captions (see module docstring)."""

    name = "videomv_gobjaverse"
    BUILDER_CONFIG_CLASS = GObjaverseConfig
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place the G-Objaverse renders as <manual_dir>/<dir>/<id>/campos_512_v4/000NN/000NN.png "
        "(+ .json), or pass GObjaverseConfig(root=...)."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description="G-Objaverse 24-view orbit renders (VideoMV training data).",
            features=tfds.features.FeaturesDict(
                _common_features(cfg.resolution, cfg.hr_resolution)
            ),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        cfg = self.builder_config
        root = cfg.root or os.fspath(dl_manager.manual_dir)
        return {"train": self._generate_examples(root)}

    def _generate_examples(self, root: str):  # type: ignore[override]
        cfg = self.builder_config
        names = gv.list_objects(root, cfg.object_list)
        captions = gv.load_captions(cfg.captions)
        bad: list[dict[str, str]] = []
        good = 0
        for name in tqdm(names, desc=f"{self.name}", disable=not cfg.progress, unit="obj"):
            try:
                ex = gv.load_object(
                    root, name, captions, cfg.resolution, cfg.hr_resolution,
                    require_caption=cfg.require_caption,
                )
            except gv.BadExampleError as err:
                self._bad(bad, err)
                continue
            good += 1
            out = {
                "views": ex["views"],
                "c2w": ex["c2w_opengl"],
                "camera": ex["camera"],
                "lgm_cameras": ex["lgm_cameras"],
                "caption": ex["caption"],
                "object_id": ex["object_id"],
            }
            if cfg.hr_resolution is not None:
                out["views_hr"] = ex["views_hr"]
            yield name, out
        self._finish(bad, good)


def _rgba_to_uint8(rgba: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(rgba, np.float64) * 255.0), 0, 255).astype(np.uint8)


def shapes_elevation(config: ShapesConfig, seed: int) -> float:
    """Orbit elevation (degrees) of the object with scene seed ``seed``."""
    if config.elevation_range is None:
        return float(config.elevation_deg)
    lo, hi = config.elevation_range
    return float(np.random.default_rng([seed, 0xE1E7]).uniform(lo, hi))


def shapes_example(config: ShapesConfig, seed: int) -> dict[str, Any]:
    """One :class:`Shapes` example (feature dict) for scene seed ``seed``."""
    scene = shapes_lib.random_scene(seed, config.max_objects, config.fit_radius, config.next_to,
                                    config.max_size_ratio)
    elev = shapes_elevation(config, seed)
    rgba, depth = shapes_lib.render_scene(
        scene, NUM_VIEWS, config.resolution, elev, config.distance, config.fovy_deg
    )
    c2w = np.asarray(orbit_cameras(NUM_VIEWS, elev, config.distance), np.float32)
    out = {
        "views": _rgba_to_uint8(rgba),  # alpha is exactly 0/1: straight == premultiplied
        "depth": depth.astype(np.float32),
        "c2w": c2w,
        "camera": np.asarray(camera_embedding(c2w), np.float32),
        "lgm_cameras": np.asarray(normalize_poses(c2w), np.float32),
        "caption": scene.caption,
        "object_id": f"shapes/{seed:08d}",
    }
    if config.hr_resolution is not None:
        hr, _ = shapes_lib.render_scene(
            scene, NUM_VIEWS, config.hr_resolution, elev, config.distance, config.fovy_deg
        )
        out["views_hr"] = _rgba_to_uint8(hr)
    return out


class Shapes(_ReportingBuilder):
    """Procedural coloured primitives, ray-cast at the 24-view orbit (see module docstring)."""

    name = "videomv_shapes"
    BUILDER_CONFIG_CLASS = ShapesConfig

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        feats = _common_features(cfg.resolution, cfg.hr_resolution)
        feats["depth"] = tfds.features.Tensor(
            shape=(NUM_VIEWS, cfg.resolution, cfg.resolution), dtype=np.float32,
            encoding=tfds.features.Encoding.ZLIB,
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description="Procedural coloured primitives with captions, analytic ray caster.",
            features=tfds.features.FeaturesDict(feats),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        return {"train": self._generate_examples()}

    def _generate_examples(self):  # type: ignore[override]
        cfg = self.builder_config
        bad: list[dict[str, str]] = []
        good = 0
        seeds = range(cfg.seed_offset, cfg.seed_offset + cfg.num_objects)
        for seed in tqdm(seeds, desc=self.name, disable=not cfg.progress, unit="obj"):
            ex = shapes_example(cfg, seed)
            if not (np.all(np.isfinite(ex["depth"])) and ex["views"][..., 3].any()):
                self._bad(bad, gv.BadExampleError(f"shapes seed {seed}",
                                                  "render is empty or not finite"))
                continue
            good += 1
            yield ex["object_id"], ex
        self._finish(bad, good)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

_BUILDERS: dict[str, tuple[type[_ReportingBuilder], type[tfds.core.BuilderConfig]]] = {
    "gobjaverse": (GObjaverse, GObjaverseConfig),
    "shapes": (Shapes, ShapesConfig),
}


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build_dataset` made: the builder, the versioned data folder and the counts."""

    builder: tfds.core.DatasetBuilder
    path: Path
    num_examples: int
    bad_examples: tuple[dict[str, str], ...]

    @property
    def num_bad(self) -> int:
        """Number of skipped examples."""
        return len(self.bad_examples)


def _default_name(kind: str, cfg: dict[str, Any]) -> str:
    res = cfg.get("resolution", 256 if kind == "gobjaverse" else 64)
    hr = cfg.get("hr_resolution")
    tail = f"_hr{hr}" if hr else ""
    if kind == "shapes":
        if cfg.get("max_objects", 3) != 3:
            tail += f"_m{cfg['max_objects']}"
        if cfg.get("fit_radius") is not None:
            tail += f"_fit{cfg['fit_radius']:g}"
        if cfg.get("next_to", "random") != "random":
            tail += f"_{cfg['next_to']}"
        if cfg.get("max_size_ratio") is not None:
            tail += f"_sr{cfg['max_size_ratio']:g}"
        return f"n{cfg.get('num_objects', 8)}_s{cfg.get('seed_offset', 0)}_r{res}{tail}"
    return f"r{res}{tail}"


def make_builder(
    name: str, data_dir: str | os.PathLike, **config: Any
) -> tfds.core.GeneratorBasedBuilder:
    """Builder ``name`` ("gobjaverse" or "shapes") writing ``array_record`` under ``data_dir``.

    ``config`` are :class:`GObjaverseConfig` / :class:`ShapesConfig` fields; ``config_name``
    (default derived from the sizes, e.g. ``n8_s0_r64``) names the sub-folder.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown data set {name!r}; choose from {sorted(_BUILDERS)}")
    cls, cfg_cls = _BUILDERS[name]
    config_name = config.pop("config_name", None) or _default_name(name, config)
    known = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown {cfg_cls.__name__} field(s) {unknown}")
    if "root" in config and config["root"] is not None:
        config["root"] = os.fspath(config["root"])
    for key in ("captions", "object_list"):
        if config.get(key) is not None:
            config[key] = os.fspath(config[key])
    cfg = cfg_cls(name=config_name, version=_VERSION, **config)
    return cls(config=cfg, data_dir=os.fspath(data_dir), file_format="array_record")


def build_dataset(
    name: str,
    data_dir: str | os.PathLike,
    *,
    manual_dir: str | os.PathLike | None = None,
    **config: Any,
) -> BuildResult:
    """Build (or reuse, if already complete) data set ``name`` under ``data_dir``.

    Returns a :class:`BuildResult` whose ``path`` can be handed to :func:`load_source`. Bad
    examples are listed in ``bad_examples`` (also in the data set's metadata); with
    ``strict=True`` the first raises its :class:`~videomv_jax.data.gobjaverse.BadExampleError`
    and nothing is written.
    """
    builder = make_builder(name, data_dir, **config)
    dl_config = tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else os.fspath(manual_dir)
    )
    builder.download_and_prepare(download_config=dl_config)
    info = tfds.builder_from_directory(builder.data_dir).info
    return BuildResult(
        builder=builder,
        path=Path(builder.data_dir),
        num_examples=int(info.splits["train"].num_examples),
        bad_examples=tuple(info.metadata.get("bad_examples", [])),
    )


def read_bad_examples(path: str | os.PathLike) -> list[dict[str, str]]:
    """The bad-example report stored with a built data set (versioned folder ``path``)."""
    return list(tfds.builder_from_directory(os.fspath(path)).info.metadata.get("bad_examples", []))


def load_source(source: str | os.PathLike | tfds.core.DatasetBuilder | BuildResult,
                split: str = "train") -> Any:
    """Random-access source (``len``, ``__getitem__``, ``__getitems__``) of a built data set.

    ``source``: the versioned data folder (``BuildResult.path``), a :class:`BuildResult` or a
    prepared builder. Reading ``src[i]`` decodes only example ``i`` (array_record), so each
    host touches only the indices of its shard. Text features come back as ``bytes``.
    """
    if isinstance(source, BuildResult):
        source = source.builder
    if not isinstance(source, tfds.core.DatasetBuilder):
        source = tfds.builder_from_directory(os.fspath(source))
    return source.as_data_source(split=split)
