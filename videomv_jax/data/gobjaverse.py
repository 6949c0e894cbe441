"""Reader for the G-Objaverse render layout used to train VideoMV (docs/design.md §3.2, §7.1).

Layout::

    <root>/<dir>/<id>/campos_512_v4/000NN/000NN.png   RGBA render (512x512 in the release)
    <root>/<dir>/<id>/campos_512_v4/000NN/000NN.json  camera: keys x, y, z, origin

Only views ``NN = 0..23`` (the 24-view orbit, 15 degrees of azimuth apart) are read. Objects are
named ``"dir/id"``; captions come from a JSON dict keyed by that name (Cap3D's
``text_captions_cap3d.json``). The caption is returned as stored: the ``", 3d asset"`` suffix is
appended by the input pipeline (:class:`videomv_jax.data.pipeline.InputConfig`).

Cameras: ``[x | y | z | origin]`` is an OpenCV camera-to-world matrix in Blender's z-up world;
VideoMV conditions the UNet on the OpenGL matrix ``[x | -y | -z | origin]``
(:func:`camera_from_json`). The UNet embedding is its row-major flatten (design §3.1) and LGM uses
the poses normalised by :func:`videomv_jax.render.camera.normalize_poses` (design §6.4).

Views are returned **premultiplied** (RGB multiplied by alpha, uint8): compositing on any
background is then ``rgb + bg * (1 - alpha)``, and because resizing is linear, resizing the
premultiplied image and compositing afterwards equals VideoMV's composite-then-resize for every
background, including the random per-step one of the reconstructor: up to uint8 rounding
(1/255) away from the silhouette; on silhouette pixels the bicubic overshoot of alpha (about 7%
of a hard edge) is clipped to [0, 1] when stored, a difference of up to ``0.07 * background``.
Resizing uses PIL's bicubic filter (design §3.4). Any square source size is accepted.

A broken object raises a subclass of :class:`BadExampleError` naming the offending path.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from videomv_jax.render.camera import NUM_VIEWS, camera_embedding, normalize_poses

__all__ = [
    "CAMERA_KEYS",
    "RENDER_SUBDIR",
    "BadCameraError",
    "BadExampleError",
    "MissingCaptionError",
    "MissingViewError",
    "UnreadableImageError",
    "camera_from_json",
    "list_objects",
    "load_captions",
    "load_object",
    "premultiply",
    "read_view",
    "resize_views",
    "view_paths",
]

RENDER_SUBDIR = "campos_512_v4"
"""Folder inside each object that holds the renders."""

CAMERA_KEYS: tuple[str, ...] = ("x", "y", "z", "origin")
"""Camera JSON keys read (columns of the OpenCV camera-to-world matrix)."""


class BadExampleError(Exception):
    """An object that cannot be turned into a training example; ``path`` names the culprit."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class MissingViewError(BadExampleError):
    """A view PNG or its camera JSON (or the whole render folder) does not exist."""


class UnreadableImageError(BadExampleError):
    """A view PNG cannot be decoded, is not square, or differs in size from the other views."""


class BadCameraError(BadExampleError):
    """A camera JSON is unreadable, lacks one of :data:`CAMERA_KEYS`, or holds bad values."""


class MissingCaptionError(BadExampleError):
    """The captions file has no (non-empty) caption for the object."""


# --------------------------------------------------------------------------------------------
# listing and captions
# --------------------------------------------------------------------------------------------


def list_objects(
    root: str | os.PathLike, object_list: str | os.PathLike | Sequence[str] | None = None
) -> list[str]:
    """Object names ``"dir/id"``: from ``object_list`` (a JSON file holding a list of names, or a
    list), or else every ``<root>/<dir>/<id>`` that has a ``campos_512_v4`` folder (sorted).

    A listed object need not exist: loading it raises :class:`MissingViewError` so the builder
    reports it instead of silently shrinking the data set.
    """
    if object_list is not None:
        if isinstance(object_list, (str, os.PathLike)):
            with open(object_list) as f:
                names = json.load(f)
            if isinstance(names, Mapping):
                names = list(names)
        else:
            names = list(object_list)
        if not all(isinstance(n, str) for n in names):
            raise ValueError(f"object list {object_list!r} must hold 'dir/id' strings")
        return [n.strip("/") for n in names]
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"G-Objaverse root {root} is not a directory")
    found = [
        f"{p.parent.parent.name}/{p.parent.name}"
        for p in root.glob(f"*/*/{RENDER_SUBDIR}")
        if p.is_dir()
    ]
    return sorted(found)


def load_captions(path: str | os.PathLike | None) -> dict[str, str]:
    """Captions JSON keyed by ``"dir/id"`` → caption. A list value keeps its first string.

    ``None`` gives an empty dict (every object then lacks a caption).
    """
    if path is None:
        return {}
    with open(path) as f:
        raw = json.load(f)
    if not isinstance(raw, Mapping):
        raise ValueError(f"captions file {path} must hold a JSON object keyed by 'dir/id'")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, (list, tuple)):
            value = next((v for v in value if isinstance(v, str)), None)
        if isinstance(value, str):
            out[str(key).strip("/")] = value
    return out


# --------------------------------------------------------------------------------------------
# one view
# --------------------------------------------------------------------------------------------


def view_paths(root: str | os.PathLike, object_id: str, view: int) -> tuple[Path, Path]:
    """``(png, json)`` paths of view ``view`` of ``object_id``."""
    name = f"{view:05d}"
    folder = Path(root) / object_id / RENDER_SUBDIR / name
    return folder / f"{name}.png", folder / f"{name}.json"


def premultiply(rgba: np.ndarray) -> np.ndarray:
    """Straight-alpha uint8 RGBA ``[..., 4]`` → premultiplied uint8 (``round(rgb * a / 255)``)."""
    rgba = np.asarray(rgba)
    if rgba.dtype != np.uint8 or rgba.shape[-1] != 4:
        raise ValueError(f"premultiply expects uint8 [..., 4], got {rgba.dtype} {rgba.shape}")
    wide = rgba.astype(np.uint32)
    rgb = (wide[..., :3] * wide[..., 3:] + 127) // 255  # exact round-half-up of x / 255
    return np.concatenate([rgb, wide[..., 3:]], -1).astype(np.uint8)


def read_view(path: str | os.PathLike) -> np.ndarray:
    """One render as straight-alpha uint8 RGBA ``[S, S, 4]`` (RGB/L/LA sources get alpha 255)."""
    path = Path(path)
    if not path.is_file():
        raise MissingViewError(path, "view image does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("RGBA"))
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as e:
        raise UnreadableImageError(path, f"cannot decode image ({type(e).__name__}: {e})") from e
    if arr.ndim != 3 or arr.shape[0] != arr.shape[1]:
        raise UnreadableImageError(path, f"view must be square, got {arr.shape[1]}x{arr.shape[0]}")
    return arr


def camera_from_json(path: str | os.PathLike) -> np.ndarray:
    """OpenGL camera-to-world ``[4, 4]`` float64 ``[x | -y | -z | origin]`` from a camera JSON.

    The file's ``x``, ``y``, ``z``, ``origin`` are the columns of an OpenCV camera-to-world
    matrix (x right, y down, z forward) in the z-up world.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingViewError(path, "camera JSON does not exist")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise BadCameraError(path, f"cannot read camera JSON ({type(e).__name__}: {e})") from e
    if not isinstance(meta, Mapping):
        raise BadCameraError(path, "camera JSON is not an object")
    missing = [k for k in CAMERA_KEYS if k not in meta]
    if missing:
        raise BadCameraError(path, f"camera JSON lacks key(s) {missing}")
    cols = []
    for key in CAMERA_KEYS:
        try:
            col = np.asarray(meta[key], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise BadCameraError(path, f"camera key {key!r} is not numeric") from e
        if col.shape != (3,) or not np.all(np.isfinite(col)):
            raise BadCameraError(path, f"camera key {key!r} must be 3 finite numbers, got "
                                       f"{meta[key]!r}")
        cols.append(col)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = cols[0], -cols[1], -cols[2], cols[3]
    rot = c2w[:3, :3]
    if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-3):
        raise BadCameraError(path, "camera axes x, y, z are not orthonormal")
    return c2w


def resize_views(views: np.ndarray, size: int) -> np.ndarray:
    """Resize premultiplied uint8 RGBA views ``[..., S, S, 4]`` to ``size`` (PIL bicubic).

    Channels are resampled independently (PIL mode ``RGBa``), which is the correct filter for
    premultiplied data. Returns the input unchanged when it already has that size.
    """
    views = np.asarray(views)
    if views.dtype != np.uint8 or views.ndim < 3 or views.shape[-1] != 4:
        raise ValueError(f"resize_views expects uint8 [..., S, S, 4], got {views.dtype} "
                         f"{views.shape}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    h, w = views.shape[-3:-1]
    if (h, w) == (size, size):
        return views
    flat = views.reshape(-1, h, w, 4)
    out = np.empty((flat.shape[0], size, size, 4), np.uint8)
    for i, img in enumerate(flat):
        im = Image.frombytes("RGBa", (w, h), np.ascontiguousarray(img).tobytes())
        out[i] = np.asarray(im.resize((size, size), Image.Resampling.BICUBIC))
    return out.reshape(*views.shape[:-3], size, size, 4)


# --------------------------------------------------------------------------------------------
# one object
# --------------------------------------------------------------------------------------------


def load_object(
    root: str | os.PathLike,
    object_id: str,
    captions: Mapping[str, str] | None = None,
    resolution: int = 256,
    hr_resolution: int | None = None,
    require_caption: bool = True,
    views: Iterable[int] | None = None,
) -> dict[str, Any]:
    """Load one object as a training example.

    Returns a dict: ``views`` uint8 ``[24, resolution, resolution, 4]`` (premultiplied RGBA,
    bicubic from the source size), ``views_hr`` (same at ``hr_resolution``, only when asked;
    512 keeps the released renders as they are), ``c2w_opengl`` float32 ``[24, 4, 4]`` (OpenGL,
    z-up world), ``camera`` float32 ``[24, 16]`` (row-major flatten, the UNet input),
    ``lgm_cameras`` float32 ``[24, 4, 4]`` (normalised y-up poses for LGM), ``caption`` (str,
    without suffix; ``""`` when missing and ``require_caption`` is False), ``object_id`` and
    ``path`` (the object folder). ``views`` picks other view numbers (default 0..23).

    Raises a :class:`BadExampleError` subclass naming the path of the first problem found.
    """
    object_id = object_id.strip("/")
    folder = Path(root) / object_id
    if not (folder / RENDER_SUBDIR).is_dir():
        raise MissingViewError(folder / RENDER_SUBDIR, "object render folder does not exist")
    caption = (captions or {}).get(object_id)
    if caption is not None:
        caption = caption.strip()
    if not caption:
        if require_caption:
            raise MissingCaptionError(folder, f"no caption for object {object_id!r}")
        caption = ""
    images, cams = [], []
    size = None
    for v in range(NUM_VIEWS) if views is None else views:
        png, cam = view_paths(root, object_id, v)
        cams.append(camera_from_json(cam))
        img = read_view(png)
        if size is None:
            size = img.shape[0]
        elif img.shape[0] != size:
            raise UnreadableImageError(png, f"view is {img.shape[0]}px, view 0 is {size}px")
        images.append(img)
    pm = premultiply(np.stack(images))
    c2w = np.stack(cams).astype(np.float32)
    out: dict[str, Any] = {
        "views": resize_views(pm, resolution),
        "c2w_opengl": c2w,
        "camera": np.asarray(camera_embedding(c2w), np.float32),
        "lgm_cameras": np.asarray(normalize_poses(c2w), np.float32),
        "caption": caption,
        "object_id": object_id,
        "path": str(folder),
    }
    if hr_resolution is not None:
        out["views_hr"] = resize_views(pm, hr_resolution)
    if not np.all(np.isfinite(out["lgm_cameras"])) or math.isclose(
        float(np.linalg.norm(c2w[0, :3, 3])), 0.0
    ):
        raise BadCameraError(view_paths(root, object_id, 0)[1], "camera 0 sits at the origin")
    return out
