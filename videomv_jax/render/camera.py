"""Camera conventions: VideoMV orbits, pose conversions, intrinsics and Plücker rays.

VideoMV, its UNet camera embedding, the LGM reconstructor and our rasterizer each use a
different camera convention. This module keeps every conversion in one place and names each
convention explicitly in function names and docstrings.

Conventions
===========

=====================  ====================================================================
name                   meaning
=====================  ====================================================================
world (z-up)           Blender world used by VideoMV's orbit: +z is up. Azimuth ``a`` is
                       measured counter-clockwise from +x as seen from +z, elevation ``e``
                       above the xy-plane: position ``d * (cos e cos a, cos e sin a, sin e)``.
world (y-up)           LGM training world, from z-up by ``(x, y, z) -> (x, z, -y)``
                       (:data:`ZUP_TO_YUP`), then re-centred by :func:`normalize_poses`.
OpenGL camera          x right, y up, z backward; the camera looks along its ``-z`` axis.
OpenCV camera          x right, y down, z forward; the camera looks along its ``+z`` axis.
                       Rasterizer convention.
c2w                    camera-to-world 4x4 ``[[R, t], [0, 0, 0, 1]]``; columns of ``R`` are
                       the camera axes in world coordinates, ``t`` is the camera position.
w2c / viewmat          world-to-camera 4x4, the rigid inverse ``[[R^T, -R^T t], [0, 1]]``.
OpenGL <-> OpenCV      negate the y and z columns of ``R`` in a c2w, i.e. right-multiply by
                       ``diag(1, -1, -1, 1)``; the map is its own inverse.
K (intrinsics)         3x3 OpenCV pixel intrinsics ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``
                       with ``fy = H / (2 tan(fovy / 2))``, ``fx = fy`` (square pixels),
                       ``cx = W / 2``, ``cy = H / 2``. Pixel ``u`` grows to the right, ``v``
                       downward, and pixel ``(col j, row i)`` has its centre at
                       ``(j + 0.5, i + 0.5)``.
fovy                   vertical field of view in degrees (default 39.6, as in LGM), in
                       ``(0, 180)``.
camera embedding       16 floats per view: the row-major flatten of the full 4x4 OpenGL c2w
                       (including the last row ``[0, 0, 0, 1]``); the VideoMV UNet input.
Plücker ray            6 channels ``concat([cross(o, d), d])`` with ``o`` the camera position
                       and ``d`` the unit world direction through a pixel centre, exactly as
                       LGM's ``get_rays`` (OpenGL camera).
=====================  ====================================================================

Array layout: every function is batched over leading axes ``...``; ``c2w`` arguments have
shape ``[..., 4, 4]``. Floating inputs keep their dtype, integer inputs become float32.
Functions are ``jax.jit``-friendly: sizes (``num_views``, ``height``, ``width``) are static
Python ints, other numbers may be traced. Argument checks raise ``ValueError`` and run only on
concrete (non-traced) values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DEFAULT_FOVY_DEG",
    "IMAGE_TO_MV",
    "NUM_VIEWS",
    "OPENGL_TO_OPENCV",
    "TEXT_TO_MV",
    "ZUP_TO_YUP",
    "OrbitPreset",
    "c2w_to_w2c",
    "camera_embedding",
    "camera_rays",
    "focal_to_fov",
    "fov_to_focal",
    "intrinsics_from_fovy",
    "look_at",
    "normalize_poses",
    "lgm_frame_to_world",
    "opencv_to_opengl",
    "opengl_to_opencv",
    "orbit_cameras",
    "plucker_rays",
    "raster_cameras",
    "w2c_to_c2w",
]

DEFAULT_FOVY_DEG: float = 39.6
"""Vertical field of view (degrees) used by VideoMV / LGM renders."""

NUM_VIEWS: int = 24
"""Number of frames in the VideoMV orbit (one every 15 degrees of azimuth)."""

OPENGL_TO_OPENCV: np.ndarray = np.diag([1.0, -1.0, -1.0, 1.0])
"""Right-multiply an OpenGL c2w by this to get an OpenCV c2w (and vice versa)."""

ZUP_TO_YUP: np.ndarray = np.array(
    [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, -1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
"""World rotation ``(x, y, z) -> (x, z, -y)``: Blender z-up world to LGM y-up world."""


@dataclass(frozen=True)
class OrbitPreset:
    """Parameters of a VideoMV inference orbit (z-up world, OpenGL c2w)."""

    elevation_deg: float
    distance: float
    num_views: int = NUM_VIEWS
    azimuth_start_deg: float = 0.0
    azimuth_span_deg: float = 360.0

    def cameras(self, dtype: Any = jnp.float32) -> jax.Array:
        """OpenGL c2w matrices ``[num_views, 4, 4]`` of this orbit (see :func:`orbit_cameras`)."""
        return orbit_cameras(
            self.num_views,
            self.elevation_deg,
            self.distance,
            azimuth_start_deg=self.azimuth_start_deg,
            azimuth_span_deg=self.azimuth_span_deg,
            dtype=dtype,
        )


TEXT_TO_MV = OrbitPreset(elevation_deg=15.0, distance=2.0)
"""Text -> multi-view default orbit: elevation 15 degrees, distance 2.0."""

IMAGE_TO_MV = OrbitPreset(elevation_deg=5.0, distance=1.7)
"""Image -> multi-view default orbit: elevation 5 degrees, distance 1.7."""


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _concrete(value: Any) -> np.ndarray | None:
    """``value`` as a numpy array, or ``None`` if it is traced (checks are skipped under jit)."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value, dtype=np.float64)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def _check_open_range(name: str, value: Any, lo: float, hi: float, fix: str) -> None:
    arr = _concrete(value)
    if arr is None:
        return
    if not np.all(np.isfinite(arr)) or np.any(arr <= lo) or np.any(arr >= hi):
        raise ValueError(f"{name} must lie strictly inside ({lo}, {hi}), got {arr.tolist()}; {fix}")


def _check_positive(name: str, value: Any, fix: str) -> None:
    arr = _concrete(value)
    if arr is None:
        return
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be finite and > 0, got {arr.tolist()}; {fix}")


def _check_fovy(fovy_deg: Any) -> None:
    _check_open_range(
        "fovy_deg",
        fovy_deg,
        0.0,
        180.0,
        "pass the vertical field of view in degrees (e.g. 39.6), not radians or a focal length",
    )


def _check_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"{name} must be a positive Python int (a static image size), got {value!r}; "
            "pass the pixel count as an int and mark it static under jax.jit"
        )
    return int(value)


def _as_float(x: Any) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


def _check_mat4(name: str, m: Any) -> jax.Array:
    m = _as_float(m)
    if m.ndim < 2 or m.shape[-2:] != (4, 4):
        raise ValueError(
            f"{name} must have shape [..., 4, 4] (homogeneous 4x4 pose matrices), got "
            f"{tuple(m.shape)}; pad a 3x4 pose with the row [0, 0, 0, 1]"
        )
    return m


# --------------------------------------------------------------------------------------------
# poses
# --------------------------------------------------------------------------------------------


def _normalize(v: jax.Array) -> jax.Array:
    return v / jnp.linalg.norm(v, axis=-1, keepdims=True)


def _assemble(rot: jax.Array, trans: jax.Array) -> jax.Array:
    """Build ``[..., 4, 4]`` from rotation ``[..., 3, 3]`` and translation ``[..., 3]``."""
    top = jnp.concatenate([rot, trans[..., :, None]], axis=-1)
    bottom = jnp.broadcast_to(
        jnp.asarray([0.0, 0.0, 0.0, 1.0], dtype=rot.dtype), (*top.shape[:-2], 1, 4)
    )
    return jnp.concatenate([top, bottom], axis=-2)


def look_at(eye: Any, target: Any = (0.0, 0.0, 0.0), up: Any = (0.0, 0.0, 1.0)) -> jax.Array:
    """OpenGL c2w ``[..., 4, 4]`` of cameras at ``eye`` looking at ``target``.

    Columns are (right, up, back = -forward, eye); ``up`` is the world up direction (default
    +z, the Blender world) and must not be parallel to the viewing direction.
    """
    eye = _as_float(eye)
    if eye.shape[-1:] != (3,):
        raise ValueError(f"eye must have shape [..., 3], got {tuple(eye.shape)}")
    target = jnp.asarray(target, dtype=eye.dtype)
    up = jnp.asarray(up, dtype=eye.dtype)
    forward = _normalize(jnp.broadcast_to(target, eye.shape) - eye)
    right = _normalize(jnp.cross(forward, jnp.broadcast_to(up, forward.shape)))
    cam_up = jnp.cross(right, forward)
    rot = jnp.stack([right, cam_up, -forward], axis=-1)
    return _assemble(rot, eye)


def orbit_cameras(
    num_views: int = NUM_VIEWS,
    elevation_deg: Any = TEXT_TO_MV.elevation_deg,
    distance: Any = TEXT_TO_MV.distance,
    azimuth_start_deg: Any = 0.0,
    azimuth_span_deg: Any = 360.0,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """VideoMV orbit: OpenGL c2w ``[num_views, 4, 4]`` in the z-up world, looking at the origin.

    Frame ``k`` sits at azimuth ``azimuth_start + k * azimuth_span / num_views`` degrees
    (counter-clockwise from +x seen from +z) and constant elevation, at ``distance`` from the
    origin. Defaults reproduce the released ``get_camera(24, 15, 0, 360, 2.0)``.
    """
    if isinstance(num_views, bool) or not isinstance(num_views, (int, np.integer)) or num_views < 1:
        raise ValueError(
            f"num_views must be a positive Python int, got {num_views!r}; "
            f"VideoMV uses num_views={NUM_VIEWS}"
        )
    _check_open_range(
        "elevation_deg",
        elevation_deg,
        -90.0,
        90.0,
        "the look-at camera is undefined at the poles; use an elevation in degrees, e.g. 15",
    )
    _check_positive("distance", distance, "pass the camera distance from the origin, e.g. 2.0")
    step = jnp.asarray(azimuth_span_deg, dtype) / num_views
    azim = jnp.deg2rad(jnp.asarray(azimuth_start_deg, dtype) + step * jnp.arange(num_views))
    elev = jnp.deg2rad(jnp.asarray(elevation_deg, dtype))
    dist = jnp.asarray(distance, dtype)
    eye = dist * jnp.stack(
        [
            jnp.cos(elev) * jnp.cos(azim),
            jnp.cos(elev) * jnp.sin(azim),
            jnp.broadcast_to(jnp.sin(elev), azim.shape),
        ],
        axis=-1,
    )
    return look_at(eye.astype(dtype))


def opengl_to_opencv(c2w_opengl: Any) -> jax.Array:
    """OpenGL c2w -> OpenCV c2w: negate the camera y and z axes (columns 1 and 2)."""
    c2w = _check_mat4("c2w_opengl", c2w_opengl)
    return c2w * jnp.asarray([1.0, -1.0, -1.0, 1.0], dtype=c2w.dtype)


def opencv_to_opengl(c2w_opencv: Any) -> jax.Array:
    """OpenCV c2w -> OpenGL c2w (the same axis flip; it is its own inverse)."""
    c2w = _check_mat4("c2w_opencv", c2w_opencv)
    return c2w * jnp.asarray([1.0, -1.0, -1.0, 1.0], dtype=c2w.dtype)


def _rigid_inverse(m: jax.Array) -> jax.Array:
    rot_t = jnp.swapaxes(m[..., :3, :3], -1, -2)
    trans = -jnp.einsum("...ij,...j->...i", rot_t, m[..., :3, 3])
    return _assemble(rot_t, trans)


def c2w_to_w2c(c2w: Any) -> jax.Array:
    """Camera-to-world -> world-to-camera by the rigid inverse ``(R^T, -R^T t)``.

    Works for either camera convention (the convention is kept); assumes ``R`` is a rotation.
    """
    return _rigid_inverse(_check_mat4("c2w", c2w))


def w2c_to_c2w(w2c: Any) -> jax.Array:
    """World-to-camera -> camera-to-world by the rigid inverse (see :func:`c2w_to_w2c`)."""
    return _rigid_inverse(_check_mat4("w2c", w2c))


def camera_embedding(c2w_opengl: Any) -> jax.Array:
    """UNet camera embedding ``[..., 16]``: row-major flatten of the full 4x4 OpenGL c2w."""
    c2w = _check_mat4("c2w_opengl", c2w_opengl)
    return c2w.reshape(*c2w.shape[:-2], 16)


def normalize_poses(c2w_opengl_zup: Any, radius: Any = None) -> jax.Array:
    """LGM training pose normalisation: z-up OpenGL c2w ``[..., V, 4, 4]`` -> y-up OpenGL c2w.

    The world is first rotated to y-up by :data:`ZUP_TO_YUP`; then every pose is
    left-multiplied by ``T_z(r) @ inverse(C0)`` (``C0`` = view 0 along axis -3, ``T_z(r)`` a
    translation by ``(0, 0, r)``), so view 0 becomes the identity rotation at ``(0, 0, r)``
    while relative poses are kept. ``r`` defaults to the distance of view 0 from the origin
    (per batch element); ``radius`` (scalar or ``[...]``) overrides it. For cameras looking at
    the origin from distance ``r`` the orbit stays centred on the origin; with a different
    ``radius`` the orbit centre moves to ``(0, 0, radius - r)``.
    """
    c2w = _check_mat4("c2w_opengl_zup", c2w_opengl_zup)
    if c2w.ndim < 3:
        raise ValueError(
            f"c2w_opengl_zup must have shape [..., V, 4, 4] (a set of views), got "
            f"{tuple(c2w.shape)}; add a view axis, e.g. c2w[None]"
        )
    if radius is not None:
        _check_positive("radius", radius, "pass the orbit radius (e.g. LGM's cam_radius=1.5)")
    poses = jnp.asarray(ZUP_TO_YUP, dtype=c2w.dtype) @ c2w
    first = poses[..., 0, :, :]
    if radius is None:
        r = jnp.linalg.norm(first[..., :3, 3], axis=-1)
    else:
        r = jnp.broadcast_to(jnp.asarray(radius, dtype=c2w.dtype), first.shape[:-2])
    zeros = jnp.zeros_like(r)
    eye3 = jnp.broadcast_to(jnp.eye(3, dtype=c2w.dtype), (*r.shape, 3, 3))
    shift = _assemble(eye3, jnp.stack([zeros, zeros, r], axis=-1))
    transform = shift @ _rigid_inverse(first)
    return transform[..., None, :, :] @ poses


def lgm_frame_to_world(c2w_opengl_zup: Any, radius: Any = None) -> np.ndarray:
    """The rigid 4×4 matrix that takes points from LGM's normalised y-up frame
    (:func:`normalize_poses` of these cameras) back to the z-up world of the cameras
    ``[V, 4, 4]``: ``c2w[0] @ inverse(normalize_poses(c2w)[0])``. Gaussians that LGM predicts
    from these views, moved by it, sit in the views' world (upright, as the orbit sees them)."""
    c2w = np.asarray(_check_mat4("c2w_opengl_zup", c2w_opengl_zup), np.float64)
    if c2w.ndim != 3:
        raise ValueError(f"c2w_opengl_zup must have shape [V, 4, 4], got {c2w.shape}")
    first = np.asarray(normalize_poses(jnp.asarray(c2w[:1]), radius), np.float64)[0]
    inv = np.eye(4)
    inv[:3, :3] = first[:3, :3].T
    inv[:3, 3] = -first[:3, :3].T @ first[:3, 3]
    return c2w[0] @ inv


# --------------------------------------------------------------------------------------------
# intrinsics and rays
# --------------------------------------------------------------------------------------------


def fov_to_focal(fov_deg: Any, size: Any) -> jax.Array:
    """Focal length in pixels for a field of view (degrees) spanning ``size`` pixels."""
    _check_fovy(fov_deg)
    fov = _as_float(fov_deg)
    return jnp.asarray(size, fov.dtype) / (2.0 * jnp.tan(jnp.deg2rad(fov) / 2.0))


def focal_to_fov(focal: Any, size: Any) -> jax.Array:
    """Field of view in degrees spanned by ``size`` pixels at focal length ``focal`` (pixels)."""
    _check_positive("focal", focal, "pass the focal length in pixels")
    focal = _as_float(focal)
    return jnp.rad2deg(2.0 * jnp.arctan(jnp.asarray(size, focal.dtype) / (2.0 * focal)))


def intrinsics_from_fovy(
    width: int, height: int, fovy_deg: Any = DEFAULT_FOVY_DEG, dtype: Any = jnp.float32
) -> jax.Array:
    """OpenCV pixel intrinsics ``K`` (3x3) for a ``width`` x ``height`` image.

    ``fy = height / (2 tan(fovy / 2))``, ``fx = fy`` (square pixels), principal point at the
    image centre ``(width / 2, height / 2)``; pixel ``(j, i)`` has its centre at
    ``(j + 0.5, i + 0.5)``.
    """
    width = _check_size("width", width)
    height = _check_size("height", height)
    focal = fov_to_focal(jnp.asarray(fovy_deg, dtype), height).astype(dtype)
    zero = jnp.zeros((), dtype)
    one = jnp.ones((), dtype)
    cx = jnp.asarray(width / 2.0, dtype)
    cy = jnp.asarray(height / 2.0, dtype)
    return jnp.stack(
        [
            jnp.stack([focal, zero, cx]),
            jnp.stack([zero, focal, cy]),
            jnp.stack([zero, zero, one]),
        ]
    )


def raster_cameras(
    c2w_opengl: Any, width: int, height: int, fovy_deg: Any = DEFAULT_FOVY_DEG
) -> tuple[jax.Array, jax.Array]:
    """Rasterizer cameras: OpenCV world-to-camera ``[..., 4, 4]`` and intrinsics ``[..., 3, 3]``.

    The rasterizer uses the OpenCV camera (x right, y down, z forward) with pixel centres at
    ``+0.5``; ``K`` follows :func:`intrinsics_from_fovy` and is broadcast over the batch.
    """
    c2w = _check_mat4("c2w_opengl", c2w_opengl)
    _check_fovy(fovy_deg)
    viewmats = c2w_to_w2c(opengl_to_opencv(c2w))
    k = intrinsics_from_fovy(width, height, fovy_deg, dtype=c2w.dtype)
    return viewmats, jnp.broadcast_to(k, (*c2w.shape[:-2], 3, 3))


def camera_rays(
    c2w_opengl: Any, height: int, width: int, fovy_deg: Any = DEFAULT_FOVY_DEG
) -> tuple[jax.Array, jax.Array]:
    """Per-pixel ray origins and unit directions, each ``[..., height, width, 3]`` (world).

    Matches LGM ``get_rays`` (OpenGL camera): for column ``x`` and row ``y`` the camera-space
    direction is ``((x - w/2 + 0.5) / f, -(y - h/2 + 0.5) / f, -1)`` with
    ``f = (h / 2) / tan(fovy / 2)``, i.e. the ray through the pixel centre under the ``K`` of
    :func:`intrinsics_from_fovy`.
    """
    c2w = _check_mat4("c2w_opengl", c2w_opengl)
    height = _check_size("height", height)
    width = _check_size("width", width)
    focal = fov_to_focal(jnp.asarray(fovy_deg, c2w.dtype), height)
    cols = jnp.arange(width, dtype=c2w.dtype)
    rows = jnp.arange(height, dtype=c2w.dtype)
    x, y = jnp.meshgrid(cols, rows, indexing="xy")  # [H, W]
    dirs_cam = jnp.stack(
        [
            (x - width * 0.5 + 0.5) / focal,
            -(y - height * 0.5 + 0.5) / focal,
            -jnp.ones_like(x),
        ],
        axis=-1,
    )  # [H, W, 3]
    rot = c2w[..., None, None, :3, :3]
    dirs = _normalize(jnp.einsum("...ij,...j->...i", rot, dirs_cam))
    origins = jnp.broadcast_to(c2w[..., None, None, :3, 3], dirs.shape)
    return origins, dirs


def plucker_rays(
    c2w_opengl: Any, height: int, width: int, fovy_deg: Any = DEFAULT_FOVY_DEG
) -> jax.Array:
    """Plücker ray map ``[..., height, width, 6]`` = ``concat([cross(o, d), d])`` (LGM input)."""
    origins, dirs = camera_rays(c2w_opengl, height, width, fovy_deg)
    return jnp.concatenate([jnp.cross(origins, dirs), dirs], axis=-1)
