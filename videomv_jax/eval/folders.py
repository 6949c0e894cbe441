"""Read generated views and reference renders from folders, with their cameras.

Every loader returns a :class:`ViewSet`: float32 views ``[V, H, W, 3]`` in ``[0, 1]`` composited
on ``background`` (default WHITE, the evaluation convention; RGB images are taken as they are),
OpenGL camera-to-world matrices ``[V, 4, 4]`` in VideoMV's z-up world (or ``None`` when the
folder has no cameras), the vertical field of view in degrees and, for our generated samples,
extra *variants* (the plain-DDIM views from the same noise).

Layouts (detected by :func:`detect_layout`):

``sample``
    One sample folder written by ``sample.py``: ``views/000.png …``, optionally
    ``views_plain/`` (``--also-plain``), and ``run.json`` (cameras: ``cameras.c2w_opengl_zup``,
    the cameras used, or in older records ``cameras_c2w_zup`` when
    explicit, else the orbit ``config.elevation`` / ``config.distance`` over ``num_frames``
    views; ``config.sampler.fovy``). Variants: ``"aware"`` (``views/``, when the config has
    3D-aware steps, else ``"plain"``) and ``"plain"`` (``views_plain/``). Render-only runs
    (``elevation_deg`` / ``distance`` / ``fovy_deg`` at the top level) are read too (variant
    ``"views"``).
``gobjaverse``
    A G-Objaverse object: ``campos_512_v4/000NN/000NN.png`` (RGBA) + ``000NN.json`` with keys
    ``x``, ``y``, ``z``, ``origin``: the columns of an **OpenCV** camera-to-world matrix in the
    z-up world (converted to OpenGL by negating y and z), ``y_fov`` in radians when present
    (else 39.6°). Views ``NN < max_views`` (24: the orbit VideoMV trains on). The folder given
    may be the object folder or ``campos_512_v4`` itself.
``transforms``
    NeRF / Blender ``transforms.json``: ``camera_angle_x`` (radians, horizontal) and
    ``frames[i].file_path`` / ``transform_matrix`` (OpenGL camera-to-world, z-up world).
``cameras``
    GSO-style: PNG files plus ``cameras.json``, one of
    ``{"frames": [{"file": "000.png", "c2w": 4x4}, ...], "convention": "opengl"|"opencv",
    "world_up": "z"|"y", "fovy_deg": 39.6}``, a list of 4x4 OpenGL z-up camera-to-world
    matrices (the PNGs in sorted order), or an orbit ``{"elevation": deg, "distance": d,
    "fovy_deg": .., "azimuth_start_deg": ..}`` (as :func:`~videomv_jax.render.camera.
    orbit_cameras`).
``images``
    PNG files only (sorted by name); no cameras (reference metrics only).

When ``resolution`` is given, views are composited first and then resized to
``resolution``² with PIL bicubic (as VideoMV resizes its 512² renders to 256²).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from videomv_jax.render.camera import (
    DEFAULT_FOVY_DEG,
    ZUP_TO_YUP,
    orbit_cameras,
)

__all__ = [
    "FolderError",
    "LAYOUTS",
    "ViewSet",
    "camera_angle_error",
    "composite",
    "detect_layout",
    "find_view_sets",
    "load_views",
    "read_image",
    "write_cameras_json",
]

LAYOUTS = ("sample", "gobjaverse", "transforms", "cameras", "images")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
GOBJAVERSE_DIR = "campos_512_v4"
_OPENGL_FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


class FolderError(ValueError):
    """A folder that cannot be read (message names the file and the expected layout)."""


@dataclasses.dataclass
class ViewSet:
    """Views of one object/sample. ``variants`` maps a variant name to views ``[V, H, W, 3]``
    (``views`` is ``variants[primary]``); ``c2w`` OpenGL z-up ``[V, 4, 4]`` or ``None``."""

    name: str
    path: str
    layout: str
    variants: dict[str, np.ndarray]
    primary: str
    c2w: np.ndarray | None
    fovy: float
    background: list[float]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def views(self) -> np.ndarray:
        return self.variants[self.primary]

    @property
    def num_views(self) -> int:
        return int(self.views.shape[0])


# ---- images -------------------------------------------------------------------------------------


def composite(image: np.ndarray, background: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Float RGB(A) ``[..., H, W, 3|4]`` (straight alpha) → RGB on ``background``."""
    image = np.asarray(image, np.float32)
    if image.shape[-1] == 3:
        return image
    if image.shape[-1] != 4:
        raise ValueError(f"expected RGB or RGBA images, got {image.shape[-1]} channels")
    a = image[..., 3:]
    bg = np.asarray(background, np.float32)
    return np.clip(image[..., :3] * a + bg * (1.0 - a), 0.0, 1.0)


def read_image(path: str, background: Sequence[float] = (1.0, 1.0, 1.0),
               resolution: int | None = None) -> np.ndarray:
    """One image file → float32 RGB ``[H, W, 3]`` in [0, 1] on ``background`` (resized)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, np.float32) / 65535.0
                arr = np.repeat(arr[..., None], 3, -1)
            else:
                has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
                im = im.convert("RGBA" if has_alpha else "RGB")
                arr = np.asarray(im, np.float32) / 255.0
    except (OSError, ValueError) as err:
        raise FolderError(f"could not read image {path!r}: {err}") from err
    rgb = composite(arr, background)
    if resolution is not None and rgb.shape[:2] != (resolution, resolution):
        u8 = Image.fromarray(np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8), "RGB")
        rgb = np.asarray(u8.resize((resolution, resolution), Image.Resampling.BICUBIC),
                         np.float32) / 255.0
    return rgb


def _read_stack(paths: Sequence[str], background, resolution) -> np.ndarray:
    imgs = [read_image(p, background, resolution) for p in paths]
    shapes = {im.shape for im in imgs}
    if len(shapes) != 1:
        raise FolderError(f"images in {os.path.dirname(paths[0])!r} have different sizes "
                          f"{sorted(shapes)}; pass a resolution to resize them")
    return np.stack(imgs)


def _image_files(directory: str) -> list[str]:
    names = sorted(n for n in os.listdir(directory)
                   if n.lower().endswith(IMAGE_EXTS) and not n.startswith("."))
    return [os.path.join(directory, n) for n in names]


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FolderError(f"could not read JSON {path!r}: {err}") from err


def _mat4(value: Any, where: str) -> np.ndarray:
    m = np.asarray(value, np.float64)
    if m.shape == (3, 4):
        m = np.concatenate([m, [[0.0, 0.0, 0.0, 1.0]]])
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise FolderError(f"{where}: expected a 4x4 (or 3x4) camera-to-world matrix, got "
                          f"shape {m.shape}")
    return m


# ---- layout detection ---------------------------------------------------------------------------


def detect_layout(path: str) -> str | None:
    """The layout of folder ``path`` (one of :data:`LAYOUTS`) or ``None`` if it holds none."""
    if not os.path.isdir(path):
        return None
    if os.path.isfile(os.path.join(path, "run.json")) and \
            os.path.isdir(os.path.join(path, "views")):
        return "sample"
    if os.path.isdir(os.path.join(path, GOBJAVERSE_DIR)) or _gobj_view_dirs(path):
        return "gobjaverse"
    if os.path.isfile(os.path.join(path, "transforms.json")):
        return "transforms"
    if os.path.isfile(os.path.join(path, "cameras.json")):
        return "cameras"
    if _image_files(path):
        return "images"
    return None


def find_view_sets(root: str) -> list[str]:
    """``[root]`` if ``root`` is a view folder, else its sub-folders that are (sorted)."""
    if not os.path.isdir(root):
        raise FolderError(f"folder {root!r} does not exist")
    if detect_layout(root) is not None:
        return [root]
    subs = [os.path.join(root, n) for n in sorted(os.listdir(root))
            if not n.startswith(".") and detect_layout(os.path.join(root, n)) is not None]
    if not subs:
        raise FolderError(
            f"{root!r} holds no view folders: expected sample.py outputs (views/ + run.json), "
            f"G-Objaverse objects ({GOBJAVERSE_DIR}/000NN/000NN.png + .json), NeRF-style "
            f"transforms.json, PNGs + cameras.json, or PNGs - or sub-folders of those")
    return subs


def load_views(path: str, background: Sequence[float] = (1.0, 1.0, 1.0),
               resolution: int | None = None, max_views: int = 24) -> ViewSet:
    """Read the view folder ``path`` (layout auto-detected, see the module docstring)."""
    layout = detect_layout(path)
    bg = [float(c) for c in np.broadcast_to(np.asarray(background, np.float64), (3,))]
    name = os.path.basename(os.path.normpath(path))
    if layout == "sample":
        return _load_sample(path, name, bg, resolution)
    if layout == "gobjaverse":
        return _load_gobjaverse(path, name, bg, resolution, max_views)
    if layout == "transforms":
        return _load_transforms(path, name, bg, resolution)
    if layout == "cameras":
        return _load_cameras(path, name, bg, resolution)
    if layout == "images":
        views = _read_stack(_image_files(path), bg, resolution)
        return ViewSet(name, path, layout, {"views": views}, "views", None, DEFAULT_FOVY_DEG, bg)
    raise FolderError(f"{path!r} is not a view folder (see videomv_jax.eval.folders for the "
                      f"accepted layouts)")


# ---- loaders ------------------------------------------------------------------------------------


def _load_sample(path: str, name: str, bg: list[float], resolution: int | None) -> ViewSet:
    rec = _read_json(os.path.join(path, "run.json"))
    cfg = rec.get("config") or {}
    views = _read_stack(_image_files(os.path.join(path, "views")), bg, resolution)
    num = views.shape[0]
    if "config" in rec:
        fovy = float((cfg.get("sampler") or {}).get("fovy", DEFAULT_FOVY_DEG))
        elev, dist = cfg.get("elevation"), cfg.get("distance")
        aware = bool((cfg.get("sampler") or {}).get("aware_steps"))
    else:  # render-only run
        fovy = float(rec.get("fovy_deg", DEFAULT_FOVY_DEG))
        elev, dist = rec.get("elevation_deg"), rec.get("distance")
        aware = False
    cams = rec.get("cameras_c2w_zup")  # older sample.py records
    if isinstance(rec.get("cameras"), dict):  # the cameras actually used
        cams = rec["cameras"].get("c2w_opengl_zup", cams)
    if isinstance(cams, list):
        c2w = np.stack([_mat4(m, f"{path}/run.json cameras") for m in cams])
    elif elev is not None and dist is not None:
        c2w = np.asarray(orbit_cameras(num, float(elev), float(dist)), np.float64)
    else:
        c2w = None
    if c2w is not None and c2w.shape[0] != num:
        raise FolderError(f"{path!r}: {num} views but {c2w.shape[0]} cameras in run.json")
    primary = "aware" if aware else ("plain" if "config" in rec else "views")
    variants = {primary: views}
    plain_dir = os.path.join(path, "views_plain")
    if os.path.isdir(plain_dir):
        if primary != "aware":
            raise FolderError(f"{path!r} has views_plain/ but its config has no 3D-aware steps")
        variants["plain"] = _read_stack(_image_files(plain_dir), bg, resolution)
        if variants["plain"].shape != views.shape:
            raise FolderError(f"{path!r}: views_plain/ and views/ differ in shape")
    meta = {k: rec[k] for k in ("prompt", "image", "seed", "mode", "weights") if k in rec}
    return ViewSet(name, path, "sample", variants, primary,
                   None if c2w is None else c2w.astype(np.float32), fovy, bg, meta)


_GOBJ_RE = re.compile(r"^(\d{5})$")


def _gobj_view_dirs(path: str) -> list[str]:
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return sorted(n for n in names if _GOBJ_RE.match(n)
                  and os.path.isfile(os.path.join(path, n, f"{n}.json")))


def _load_gobjaverse(path: str, name: str, bg: list[float], resolution: int | None,
                     max_views: int) -> ViewSet:
    if os.path.isdir(os.path.join(path, GOBJAVERSE_DIR)):
        root = os.path.join(path, GOBJAVERSE_DIR)
    else:  # the campos folder itself: name the object after its parent
        root = path
        name = os.path.basename(os.path.dirname(os.path.normpath(path))) or name
    dirs = [d for d in _gobj_view_dirs(root) if int(d) < max_views]
    if not dirs:
        raise FolderError(f"{root!r} has no 000NN/000NN.json view folders")
    c2ws, files, fovs = [], [], []
    for d in dirs:
        js = os.path.join(root, d, f"{d}.json")
        rec = _read_json(js)
        try:
            cols = [np.asarray(rec[k], np.float64).reshape(3) for k in ("x", "y", "z", "origin")]
        except (KeyError, ValueError) as err:
            raise FolderError(f"{js!r} needs 3-vectors x, y, z, origin (OpenCV c2w): {err}"
                              ) from err
        c2w_cv = np.eye(4)
        c2w_cv[:3, :] = np.stack(cols, axis=1)
        c2ws.append(c2w_cv @ _OPENGL_FLIP)
        files.append(os.path.join(root, d, f"{d}.png"))
        if "y_fov" in rec:
            fy = float(rec["y_fov"])
            fovs.append(math.degrees(fy) if fy < math.pi else fy)
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FolderError(f"G-Objaverse views without an image: {missing[:3]}")
    fovy = float(np.median(fovs)) if fovs else DEFAULT_FOVY_DEG
    views = _read_stack(files, bg, resolution)
    return ViewSet(name, path, "gobjaverse", {"views": views}, "views",
                   np.stack(c2ws).astype(np.float32), fovy, bg, {"view_dirs": dirs})


def _load_transforms(path: str, name: str, bg: list[float], resolution: int | None) -> ViewSet:
    js = os.path.join(path, "transforms.json")
    rec = _read_json(js)
    frames = rec.get("frames")
    if not isinstance(frames, list) or not frames:
        raise FolderError(f"{js!r} needs a non-empty 'frames' list")
    files, c2ws = [], []
    for i, fr in enumerate(frames):
        fp = os.path.normpath(os.path.join(path, fr.get("file_path", "")))
        if not os.path.splitext(fp)[1]:
            fp += ".png"
        if not os.path.isfile(fp):
            raise FolderError(f"{js!r} frame {i}: image {fp!r} does not exist")
        files.append(fp)
        c2ws.append(_mat4(fr.get("transform_matrix"), f"{js} frame {i}"))
    views = _read_stack(files, bg, resolution)
    h, w = views.shape[1:3]
    if "camera_angle_y" in rec:
        fovy = math.degrees(float(rec["camera_angle_y"]))
    elif "camera_angle_x" in rec:
        fovy = math.degrees(2 * math.atan(math.tan(float(rec["camera_angle_x"]) / 2) * h / w))
    else:
        fovy = DEFAULT_FOVY_DEG
    return ViewSet(name, path, "transforms", {"views": views}, "views",
                   np.stack(c2ws).astype(np.float32), fovy, bg)


def _load_cameras(path: str, name: str, bg: list[float], resolution: int | None) -> ViewSet:
    js = os.path.join(path, "cameras.json")
    rec = _read_json(js)
    fovy = DEFAULT_FOVY_DEG
    if isinstance(rec, dict) and "frames" in rec:
        conv = rec.get("convention", "opengl")
        up = rec.get("world_up", "z")
        if conv not in ("opengl", "opencv") or up not in ("z", "y"):
            raise FolderError(f"{js!r}: convention must be 'opengl'/'opencv' and world_up "
                              f"'z'/'y', got {conv!r}, {up!r}")
        fovy = float(rec.get("fovy_deg", fovy))
        files, c2ws = [], []
        for i, fr in enumerate(rec["frames"]):
            fp = os.path.join(path, str(fr.get("file", "")))
            if not os.path.isfile(fp):
                raise FolderError(f"{js!r} frame {i}: image {fp!r} does not exist")
            m = _mat4(fr.get("c2w"), f"{js} frame {i}")
            if conv == "opencv":
                m = m @ _OPENGL_FLIP
            if up == "y":
                m = ZUP_TO_YUP.T @ m
            files.append(fp)
            c2ws.append(m)
        views = _read_stack(files, bg, resolution)
        c2w = np.stack(c2ws)
    else:
        files = _image_files(path)
        if not files:
            raise FolderError(f"{path!r} has cameras.json but no images")
        views = _read_stack(files, bg, resolution)
        if isinstance(rec, dict):
            try:
                fovy = float(rec.get("fovy_deg", fovy))
                c2w = np.asarray(orbit_cameras(len(files), float(rec["elevation"]),
                                               float(rec["distance"]),
                                               float(rec.get("azimuth_start_deg", 0.0))),
                                 np.float64)
            except (KeyError, TypeError, ValueError) as err:
                raise FolderError(f"{js!r}: an orbit needs numbers 'elevation' and 'distance' "
                                  f"({err})") from err
        elif isinstance(rec, list):
            c2w = np.stack([_mat4(m, f"{js} entry {i}") for i, m in enumerate(rec)])
        else:
            raise FolderError(f"{js!r}: expected an object or a list of matrices")
    if c2w.shape[0] != views.shape[0]:
        raise FolderError(f"{js!r}: {c2w.shape[0]} cameras for {views.shape[0]} images")
    return ViewSet(name, path, "cameras", {"views": views}, "views", c2w.astype(np.float32),
                   fovy, bg)


def write_cameras_json(path: str, files: Sequence[str], c2w: np.ndarray,
                       fovy: float = DEFAULT_FOVY_DEG) -> None:
    """Write a ``cameras.json`` (frames layout, OpenGL z-up) for images ``files`` in ``path``."""
    frames = [{"file": f, "c2w": np.asarray(m, np.float64).tolist()}
              for f, m in zip(files, c2w, strict=True)]
    with open(os.path.join(path, "cameras.json"), "w", encoding="utf-8") as f:
        json.dump({"convention": "opengl", "world_up": "z", "fovy_deg": float(fovy),
                   "frames": frames}, f, indent=1)


def camera_angle_error(c2w_a: np.ndarray | None, c2w_b: np.ndarray | None) -> float | None:
    """Largest angle (degrees) between matching camera viewing directions of two view sets
    (``None`` when either has no cameras); a check that generated and reference views were
    taken from the same orbit, independent of the orbit radius."""
    if c2w_a is None or c2w_b is None:
        return None
    a = np.asarray(c2w_a, np.float64)[:, :3, 2]
    b = np.asarray(c2w_b, np.float64)[:, :3, 2]
    if a.shape != b.shape:
        raise FolderError(f"camera counts differ: {a.shape[0]} vs {b.shape[0]}")
    cos = np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).max())
