"""Differentiable tiled 3D Gaussian rasterizer in pure JAX.

Pipeline (each stage is a function of its own, tested on its own):

1. :func:`project_gaussians` — EWA splatting: world → camera (OpenCV), 3D covariance from
   quaternion and scale, Jacobian of the perspective map (clamped to the enlarged frustum),
   2D covariance with the low-pass ``eps2d``, conic, depth, screen radius, culling.
2. :func:`bin_gaussians` — tile binning in static buffers: every (image, tile, Gaussian)
   intersection gets one slot of a buffer of ``capacity`` slots. Gaussians are first ordered by
   depth (stable), intersections are generated in that order and then *stably* sorted by tile id,
   so every tile's list is exactly depth ordered (no quantised depth key, no x64).
3. :func:`composite` — front-to-back alpha compositing. Each tile's list is cut into chunks of
   ``chunk_size`` Gaussians; the (tile, chunk) work items are evaluated ``items_per_step`` at a
   time whatever their tile, so the cost follows the number of intersections rather than the
   most loaded tile. Exact front-to-back order comes from two passes joined by a segmented
   scan of per-chunk transmittances. A custom VJP replays the same passes in the backward, so
   its memory is O(pixels · chunks + Gaussians) and never stores per-splat state.

Conventions: cameras are given as **OpenCV world-to-camera** 4×4 matrices (x right, y down,
z forward) and 3×3 pinhole intrinsics ``K``; see :mod:`videomv_jax.render.camera` for
conversions from the OpenGL camera-to-world matrices VideoMV uses. Gaussians follow
:class:`~videomv_jax.render.gaussians.Gaussians`.

Thresholds are named fields of :class:`RasterSettings`; two presets exist:

* ``"inria"`` — the original 3DGS CUDA rasterizer (``diff-gaussian-rasterization``) that LGM and
  VideoMV were trained with: near cull z ≤ 0.2, α ≤ 0.99, a square screen radius of
  ``ceil(3·sqrt(λmax))`` (λ with Inria's 0.1 floor), Jacobian clamp at 1.3·tan(fov/2), integer
  pixel centres (``means2d`` are 0.5 px smaller than in the OpenCV +0.5 frame, which is the same
  geometry), quaternions used as given (not normalised: the released LGM weights rely on it).
* ``"gsplat"`` — gsplat 1.x: near plane 0.01, α ≤ 0.999, per-axis radius ``ceil(3.33·σ)``,
  +0.5 pixel centres, normalised quaternions.

Capacity: the intersection buffer has a static size. With ``capacity=None`` (eager only) it is
sized from the scene (exact mode). Under ``jit`` pass ``capacity``; an overflow is then reported
in :class:`RasterInfo` (``overflow``), the outputs are filled with NaN (``poison_on_overflow``)
so they can never pass for a render, and eager calls raise :class:`CapacityOverflowError`.
Use :func:`check_no_overflow` inside :func:`jax.experimental.checkify.checkify` for an error
under ``jit``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import checkify

from videomv_jax.render.gaussians import Gaussians

__all__ = [
    "RasterSettings",
    "PRESETS",
    "get_settings",
    "Projection",
    "RasterInfo",
    "RenderOutput",
    "CapacityOverflowError",
    "quaternion_to_rotation",
    "covariance_3d",
    "project_gaussians",
    "tile_rects",
    "bin_gaussians",
    "composite",
    "rasterize",
    "count_intersections",
    "check_no_overflow",
]


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RasterSettings:
    """Every threshold of the rasterizer, by name (hashable: usable as a static jit argument)."""

    near_plane: float
    """Gaussians with camera depth z <= near_plane are culled."""
    far_plane: float
    """Gaussians with camera depth z >= far_plane are culled."""
    alpha_max: float
    """Per-splat opacity clamp α = min(alpha_max, o·exp(-σ))."""
    radius_mode: Literal["square_max_eigen", "per_axis"]
    """``square_max_eigen``: Inria's square box of half-size ceil(k·sqrt(λmax)) with λ computed
    using max(0.1, mid² − det); ``per_axis``: gsplat's box ceil(k·sqrt(Σxx)) × ceil(k·sqrt(Σyy))."""
    radius_sigmas: float
    """k of the screen radius (3 for Inria, 3.33 for gsplat)."""
    tile_rect: Literal["inria", "gsplat"]
    """Rounding of the tile rectangle: Inria floor((m−r)/ts) .. floor((m+r+ts−1)/ts);
    gsplat floor((m−r)/ts) .. ceil((m+r)/ts) (upper bounds exclusive)."""
    pixel_center: float
    """Pixel (i, j) is sampled at (i + pixel_center, j + pixel_center) in the ``means2d`` frame.
    0.0 = Inria's integer centres (means2d shifted by −0.5), 0.5 = OpenCV / gsplat."""
    normalize_quaternions: bool
    """Normalise quaternions before building rotations (gsplat) or use them as given (Inria)."""
    alpha_min: float = 1.0 / 255.0
    """Splats with α below this are skipped for that pixel."""
    transmittance_min: float = 1e-4
    """A pixel stops at the first splat that would bring its transmittance below this (that
    splat is not composited)."""
    eps2d: float = 0.3
    """Low-pass filter added to the diagonal of every 2D covariance (px²)."""
    jacobian_margin: float = 0.3
    """The Jacobian is evaluated at x/z clamped to the frustum enlarged by margin·tan(fov/2)."""
    tile_size: int = 16
    chunk_size: int = 32
    """Gaussians per work item (one tile's chunk): speed/memory trade-off only."""
    items_per_step: int = 256
    """Work items evaluated together by the ``flat`` schedule (speed/memory trade-off only)."""

    def replace(self, **changes) -> RasterSettings:
        return dataclasses.replace(self, **changes)

    def __post_init__(self):
        if self.radius_mode not in ("square_max_eigen", "per_axis"):
            raise ValueError(f"radius_mode must be 'square_max_eigen' or 'per_axis', "
                             f"got {self.radius_mode!r}")
        if self.tile_rect not in ("inria", "gsplat"):
            raise ValueError(f"tile_rect must be 'inria' or 'gsplat', got {self.tile_rect!r}")
        if not 0.0 < self.alpha_max <= 1.0:
            raise ValueError(f"alpha_max must be in (0, 1], got {self.alpha_max}")
        if not 0.0 <= self.near_plane < self.far_plane:
            raise ValueError(f"need 0 <= near_plane < far_plane, got {self.near_plane}, "
                             f"{self.far_plane}")
        if self.tile_size < 1 or self.chunk_size < 1:
            raise ValueError("tile_size and chunk_size must be positive integers")


PRESETS: dict[str, RasterSettings] = {
    "inria": RasterSettings(
        near_plane=0.2,
        far_plane=float("inf"),
        alpha_max=0.99,
        radius_mode="square_max_eigen",
        radius_sigmas=3.0,
        tile_rect="inria",
        pixel_center=0.0,
        normalize_quaternions=False,
    ),
    "gsplat": RasterSettings(
        near_plane=0.01,
        far_plane=1e10,
        alpha_max=0.999,
        radius_mode="per_axis",
        radius_sigmas=3.33,
        tile_rect="gsplat",
        pixel_center=0.5,
        normalize_quaternions=True,
    ),
}


def get_settings(settings: str | RasterSettings = "inria", **overrides) -> RasterSettings:
    """A preset by name (``"inria"`` or ``"gsplat"``) or a given settings object, with overrides."""
    if isinstance(settings, str):
        if settings not in PRESETS:
            raise ValueError(f"unknown rasterizer preset {settings!r}; choose one of "
                             f"{sorted(PRESETS)} or pass a RasterSettings")
        settings = PRESETS[settings]
    elif not isinstance(settings, RasterSettings):
        raise TypeError(f"settings must be a preset name or RasterSettings, got {type(settings)}")
    return settings.replace(**overrides) if overrides else settings


# --------------------------------------------------------------------------------------------
# Projection (EWA splatting)
# --------------------------------------------------------------------------------------------


class Projection(NamedTuple):
    """Per (camera, Gaussian) screen-space quantities."""

    means2d: jax.Array  # [..., N, 2] pixel coordinates in the settings' pixel frame
    conics: jax.Array  # [..., N, 3] (a, b, c) of the inverse 2D covariance [[a, b], [b, c]]
    depths: jax.Array  # [..., N] camera-space z
    radii: jax.Array  # [..., N, 2] int32 screen half-extent (x, y); 0 where culled
    covars2d: jax.Array  # [..., N, 2, 2] 2D covariance including eps2d


def quaternion_to_rotation(quats: jax.Array, normalize: bool = True) -> jax.Array:
    """Rotation matrices [..., 3, 3] from quaternions (w, x, y, z).

    With ``normalize=False`` the standard formula is applied to the quaternion as given, like
    Inria's rasterizer (so a non-unit quaternion gives a non-orthogonal matrix).
    """
    if normalize:
        quats = quats / jnp.linalg.norm(quats, axis=-1, keepdims=True)
    w, x, y, z = jnp.moveaxis(quats, -1, 0)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return jnp.stack(rows, axis=-1).reshape(*quats.shape[:-1], 3, 3)


def covariance_3d(scales: jax.Array, quats: jax.Array, normalize: bool = True) -> jax.Array:
    """World covariance Σ = R·diag(s)²·Rᵀ, [..., 3, 3]."""
    m = quaternion_to_rotation(quats, normalize) * scales[..., None, :]
    return m @ jnp.swapaxes(m, -1, -2)


def project_gaussians(
    means: jax.Array,
    covars: jax.Array,
    viewmat: jax.Array,
    K: jax.Array,
    width: int,
    height: int,
    settings: RasterSettings,
) -> Projection:
    """Project N Gaussians ([N, 3] means, [N, 3, 3] covariances) into one camera.

    ``viewmat`` is the OpenCV world-to-camera matrix [4, 4]; ``K`` the intrinsics [3, 3].
    Batch over cameras or scenes with :func:`jax.vmap`.
    """
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]
    means_c = means @ rot.T + trans
    covars_c = rot @ covars @ rot.T
    x, y, z = means_c[:, 0], means_c[:, 1], means_c[:, 2]
    valid = (z > settings.near_plane) & (z < settings.far_plane)
    z_safe = jnp.where(valid, z, 1.0)  # keeps culled Gaussians finite (and their gradients zero)

    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    margin_x = settings.jacobian_margin * 0.5 * width / fx
    margin_y = settings.jacobian_margin * 0.5 * height / fy
    tx = z_safe * jnp.clip(x / z_safe, -(cx / fx + margin_x), (width - cx) / fx + margin_x)
    ty = z_safe * jnp.clip(y / z_safe, -(cy / fy + margin_y), (height - cy) / fy + margin_y)
    zeros = jnp.zeros_like(z_safe)
    jac = jnp.stack(
        [fx / z_safe, zeros, -fx * tx / z_safe**2, zeros, fy / z_safe, -fy * ty / z_safe**2],
        axis=-1,
    ).reshape(-1, 2, 3)
    cov2d = jac @ covars_c @ jnp.swapaxes(jac, -1, -2)
    cov2d = cov2d + settings.eps2d * jnp.eye(2, dtype=cov2d.dtype)

    shift = settings.pixel_center - 0.5
    means2d = jnp.stack([fx * x / z_safe + cx + shift, fy * y / z_safe + cy + shift], axis=-1)

    a, b, c = cov2d[:, 0, 0], 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0]), cov2d[:, 1, 1]
    det = a * c - b * b
    valid = valid & (det > 0)
    det_safe = jnp.where(valid, det, 1.0)
    conics = jnp.stack([c / det_safe, -b / det_safe, a / det_safe], axis=-1)

    k = settings.radius_sigmas
    if settings.radius_mode == "square_max_eigen":
        mid = 0.5 * (a + c)
        lam = mid + jnp.sqrt(jnp.maximum(0.1, mid * mid - det))
        r = jnp.ceil(k * jnp.sqrt(lam))
        radii = jnp.stack([r, r], axis=-1)
    else:
        radii = jnp.ceil(k * jnp.sqrt(jnp.stack([a, c], axis=-1)))
    radii = lax.stop_gradient(radii)
    m2 = lax.stop_gradient(means2d)
    if settings.tile_rect == "inria":
        # Inria culls exactly the Gaussians whose clipped tile rectangle is empty.
        lo, hi = _rect_bounds(m2, radii, width, height, settings)
        inside = jnp.all(hi > lo, axis=-1)
    else:
        inside = (
            (m2[:, 0] + radii[:, 0] > 0) & (m2[:, 0] - radii[:, 0] < width)
            & (m2[:, 1] + radii[:, 1] > 0) & (m2[:, 1] - radii[:, 1] < height)
        )
    radii = jnp.where((valid & inside)[:, None], radii, 0.0).astype(jnp.int32)
    return Projection(means2d, conics, z, radii, cov2d)


def _rect_bounds(means2d, radii, width, height, settings):
    """Clipped tile bounds (lo, hi) [..., 2] of screen boxes, upper bounds exclusive."""
    ts = settings.tile_size
    r = radii.astype(means2d.dtype)
    lo = jnp.floor((means2d - r) / ts)
    if settings.tile_rect == "inria":
        hi = jnp.floor((means2d + r + ts - 1) / ts)
    else:
        hi = jnp.ceil((means2d + r) / ts)
    limits = jnp.array([-(-width // ts), -(-height // ts)], dtype=means2d.dtype)
    return (jnp.clip(lo, 0, limits).astype(jnp.int32),
            jnp.clip(hi, 0, limits).astype(jnp.int32))


def tile_rects(
    means2d: jax.Array, radii: jax.Array, width: int, height: int, settings: RasterSettings
) -> jax.Array:
    """Tile rectangles [..., 4] = (x_min, x_max, y_min, y_max), upper bounds exclusive, clipped
    to the tile grid; empty (all zero) for culled Gaussians."""
    lo, hi = _rect_bounds(lax.stop_gradient(means2d), radii, width, height, settings)
    visible = jnp.all(radii > 0, axis=-1, keepdims=True)
    rect = jnp.stack([lo[..., 0], hi[..., 0], lo[..., 1], hi[..., 1]], axis=-1)
    return jnp.where(visible, rect, 0)


def _rect_counts(rects: jax.Array) -> jax.Array:
    return (rects[..., 1] - rects[..., 0]) * (rects[..., 3] - rects[..., 2])


# --------------------------------------------------------------------------------------------
# Binning
# --------------------------------------------------------------------------------------------


class Bins(NamedTuple):
    """Static-shape tile lists for I images of T tiles each."""

    gaussian_ids: jax.Array  # [capacity] flat Gaussian index (image * N + n), tile-major
    tile_starts: jax.Array  # [I, T] first slot of each tile's list
    tile_counts: jax.Array  # [I, T] length of each tile's list (as stored)
    intersections: jax.Array  # [] int32, intersections the scene needs
    overflow: jax.Array  # [] bool, intersections > capacity


def bin_gaussians(
    rects: jax.Array, depths: jax.Array, tiles_x: int, tiles_y: int, capacity: int
) -> Bins:
    """Build depth-ordered per-tile Gaussian lists for I images ([I, N, 4] rects, [I, N] depths).

    Intersections are enumerated Gaussian by Gaussian in (image, depth) order into ``capacity``
    slots, then stably sorted by (image, tile): each tile's list stays in depth order. Slots past
    ``capacity`` are lost, which is reported as ``overflow``.
    """
    num_images, n = depths.shape
    num_tiles = tiles_x * tiles_y
    counts = _rect_counts(rects)  # [I, N]
    depth_key = jnp.where(counts > 0, lax.stop_gradient(depths), jnp.inf)
    order = jnp.argsort(depth_key, axis=-1, stable=True)  # [I, N]
    flat_ids = (order + (jnp.arange(num_images, dtype=order.dtype) * n)[:, None]).reshape(-1)
    flat_counts = jnp.take_along_axis(counts, order, axis=-1).reshape(-1)
    flat_rects = rects.reshape(-1, 4)[flat_ids]

    ends = jnp.cumsum(flat_counts)
    starts = ends - flat_counts
    total = ends[-1]
    # Guard int32 wrap-around for absurd scenes: the per-image totals are exact int32.
    total_f = jnp.sum(jnp.sum(counts, axis=-1).astype(jnp.float32))
    overflow = (total > capacity) | (total_f > float(capacity))

    slots = jnp.arange(capacity, dtype=jnp.int32)
    marker_pos = jnp.where(flat_counts > 0, starts, capacity)
    marker = jnp.zeros(capacity, jnp.int32).at[marker_pos].max(
        jnp.arange(num_images * n, dtype=jnp.int32), mode="drop"
    )
    owner = lax.cummax(marker)  # position (in depth order) of the Gaussian owning each slot
    local = slots - starts[owner]
    rect = flat_rects[owner]
    width = jnp.maximum(rect[:, 1] - rect[:, 0], 1)
    tx = rect[:, 0] + local % width
    ty = rect[:, 2] + local // width
    gid = flat_ids[owner]
    image = gid // n
    key = image * num_tiles + ty * tiles_x + tx
    key = jnp.where(slots < total, key, num_images * num_tiles)
    key, gid = lax.sort((key, gid), num_keys=1, is_stable=True)

    tile_counts = jnp.zeros(num_images * num_tiles + 1, jnp.int32).at[key].add(1)[:-1]
    tile_starts = jnp.cumsum(tile_counts) - tile_counts
    shape = (num_images, num_tiles)
    return Bins(gid, tile_starts.reshape(shape), tile_counts.reshape(shape), total, overflow)


# --------------------------------------------------------------------------------------------
# Compositing with a memory-bounded custom VJP
# --------------------------------------------------------------------------------------------


class _Static(NamedTuple):
    tiles_x: int
    tiles_y: int
    width: int
    height: int
    settings: RasterSettings
    views: int  # images per scene: opacities/colours are shared by the views of a scene
    num_gaussians: int


def _chunk_alpha(attrs, gid, sid, valid, px, py, settings):
    """α [B, P, K] of B work items (K Gaussians of one tile each) and what its gradient needs."""
    means2d, conics, opacities = attrs
    m = means2d[gid]  # [B, K, 2]
    con = conics[gid]  # [B, K, 3]
    op = opacities[sid]  # [B, K]
    dx = m[:, None, :, 0] - px[:, :, None]
    dy = m[:, None, :, 1] - py[:, :, None]
    a, b, c = con[:, None, :, 0], con[:, None, :, 1], con[:, None, :, 2]
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    gauss = jnp.exp(-sigma)
    raw = op[:, None, :] * gauss
    alpha = jnp.minimum(settings.alpha_max, raw)
    use = valid[:, None, :] & (sigma >= 0) & (alpha >= settings.alpha_min)
    return alpha, use, (dx, dy, gauss, raw < settings.alpha_max)


def _chunk_weights(alpha, use, trans, settings):
    """Front-to-back weights [B, P, K] of a chunk given the transmittance in front of it [B, P].

    A splat contributes iff the running transmittance *after* it stays >= transmittance_min;
    the product is monotone, so this is exactly the per-pixel loop's early stop. Returns the
    weights, the contribution mask and the transmittance in front of each splat.
    """
    a = jnp.where(use, alpha, 0.0)
    incl = jnp.cumprod(1.0 - a, axis=-1)
    excl = jnp.concatenate([jnp.ones_like(incl[..., :1]), incl[..., :-1]], axis=-1)
    contrib = use & (trans[:, :, None] * incl >= settings.transmittance_min)
    t_before = trans[:, :, None] * excl
    return jnp.where(contrib, a * t_before, 0.0), contrib, t_before


def _tiles_to_image(x, static):
    """[T, P, ...] tile-major values → [H, W, ...] image (cropped)."""
    ts = static.settings.tile_size
    x = x.reshape(static.tiles_y, static.tiles_x, ts, ts, *x.shape[2:])
    x = jnp.swapaxes(x, 1, 2).reshape(static.tiles_y * ts, static.tiles_x * ts, *x.shape[4:])
    return x[: static.height, : static.width]


def _image_to_tiles(x, static):
    """[H, W, ...] image → [T, P, ...] tile-major values (zero padded)."""
    ts = static.settings.tile_size
    pad_h, pad_w = static.tiles_y * ts - static.height, static.tiles_x * ts - static.width
    x = jnp.pad(x, [(0, pad_h), (0, pad_w)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape(static.tiles_y, ts, static.tiles_x, ts, *x.shape[2:])
    return jnp.swapaxes(x, 1, 2).reshape(static.tiles_y * static.tiles_x, ts * ts, *x.shape[4:])


# --------------------------------------------------------------------------------------------
# Flat schedule: (tile, chunk) work items in fixed-size steps, no per-tile lockstep
# --------------------------------------------------------------------------------------------
#
# Every tile's depth-ordered list is cut into chunks of K Gaussians; each chunk is one work item.
# Items are processed ``items_per_step`` at a time, whatever tile they belong to, so the cost is
# proportional to the number of intersections instead of (tiles × the most loaded tile).
# Front-to-back order is kept exactly by two passes: pass 1 computes each item's transmittance
# product, a segmented exclusive product along the items of a tile gives the transmittance in
# front of every item, and pass 2 composites with it. A splat contributes iff the running
# product after it stays >= transmittance_min (the product is monotone, so this is exactly the
# "stop before the splat that saturates the pixel" rule of the per-pixel loop).


class _Items(NamedTuple):
    tile: jax.Array  # [W] global tile index of each work item (I·T where invalid)
    chunk: jax.Array  # [W] chunk index of the item within its tile
    first: jax.Array  # [W] bool, the item is its tile's first chunk
    count: jax.Array  # [] number of valid items


def _work_items(starts, counts, num_items, k):
    """Enumerate (tile, chunk) items for flat [I·T] tile lists into ``num_items`` static slots."""
    num_tiles = counts.shape[0]
    n_chunks = (counts + k - 1) // k
    offsets = jnp.cumsum(n_chunks) - n_chunks
    total = jnp.sum(n_chunks)
    slots = jnp.arange(num_items, dtype=jnp.int32)
    marker = jnp.zeros(num_items, jnp.int32).at[jnp.where(n_chunks > 0, offsets, num_items)].max(
        jnp.arange(num_tiles, dtype=jnp.int32), mode="drop")
    tile = lax.cummax(marker)
    chunk = slots - offsets[tile]
    valid = slots < total
    return _Items(jnp.where(valid, tile, num_tiles), chunk, chunk == 0, total)


def _segmented_exclusive_scan(values, first, combine, identity):
    """Exclusive scan of ``values`` [W, ...] along axis 0, restarting where ``first`` is set."""

    def op(a, b):
        va, fa = a
        vb, fb = b
        fb_ = fb.reshape(fb.shape + (1,) * (vb.ndim - fb.ndim))
        return jnp.where(fb_, vb, combine(va, vb)), fa | fb

    incl, _ = lax.associative_scan(op, (values, first))
    shifted = jnp.concatenate([jnp.full_like(incl[:1], identity), incl[:-1]], axis=0)
    first_ = first.reshape(first.shape + (1,) * (values.ndim - 1))
    return jnp.where(first_, identity, shifted)


def _item_batch(static, bins_gid, starts, counts, items, ids, dtype):
    """Gaussian ids, validity and pixel coordinates of the work items ``ids`` [B].

    ``ids`` past the valid items carry the index ``len(items.tile)`` and are masked out.
    """
    settings = static.settings
    k, ts = settings.chunk_size, settings.tile_size
    num_tiles_total = counts.shape[0]
    tile = items.tile.at[ids].get(mode="fill", fill_value=num_tiles_total)
    chunk = items.chunk.at[ids].get(mode="fill", fill_value=0)
    tile_c = jnp.minimum(tile, num_tiles_total - 1)
    offs = chunk[:, None] * k + jnp.arange(k, dtype=jnp.int32)[None, :]
    valid = (offs < counts[tile_c][:, None]) & (tile < num_tiles_total)[:, None]
    pos = jnp.clip(starts[tile_c][:, None] + offs, 0, bins_gid.shape[0] - 1)
    gid = bins_gid[pos]
    n = static.num_gaussians
    sid = (gid // (n * static.views)) * n + gid % n
    local_tile = tile_c % (static.tiles_x * static.tiles_y)
    ty, tx = jnp.divmod(local_tile, static.tiles_x)
    ly, lx = jnp.divmod(jnp.arange(ts * ts), ts)
    c = settings.pixel_center
    px = (tx[:, None] * ts + lx[None, :]).astype(dtype) + c
    py = (ty[:, None] * ts + ly[None, :]).astype(dtype) + c
    return tile, gid, sid, valid, px, py


def _batched_loop(ids, count, static, body, init):
    """Run ``body(batch_ids, carry)`` over ``ids[:count]`` in batches of items_per_step."""
    b = static.settings.items_per_step
    num_ids = ids.shape[0]

    def step_fn(step, carry):
        pos = step * b + jnp.arange(b, dtype=jnp.int32)
        batch = jnp.where(pos < count, ids.at[pos].get(mode="fill", fill_value=num_ids), num_ids)
        return body(batch, carry)

    return lax.fori_loop(0, (count + b - 1) // b, step_fn, init)


def _live_items(items, t_front, num_tiles_total, static):
    """Indices of the items with at least one pixel still unsaturated in front of them (the
    others composite nothing and get no gradient), packed first, and their number."""
    num_items = t_front.shape[0]
    live = (items.tile < num_tiles_total) & jnp.any(
        t_front >= static.settings.transmittance_min, axis=-1)
    rank = jnp.cumsum(live) - 1
    order = jnp.full(num_items, num_items, jnp.int32).at[jnp.where(live, rank, num_items)].set(
        jnp.arange(num_items, dtype=jnp.int32), mode="drop")
    return order, jnp.sum(live)


def _flat_forward(attrs, colors, depths, background, bins_gid, starts, counts, static):
    """Composite all tiles. Returns per-tile colour [I·T, P, C], depth, final transmittance and
    the transmittance in front of every work item (a residual for the backward pass)."""
    settings = static.settings
    k = settings.chunk_size
    dtype = colors.dtype
    num_tiles_total = counts.shape[0]
    num_px = settings.tile_size ** 2
    num_items = bins_gid.shape[0] // k + num_tiles_total + 1
    items = _work_items(starts, counts, num_items, k)
    all_ids = jnp.arange(num_items, dtype=jnp.int32)

    def pass1(ids, prods):
        _, gid, sid, valid, px, py = _item_batch(static, bins_gid, starts, counts, items, ids,
                                                 dtype)
        alpha, use, _ = _chunk_alpha(attrs, gid, sid, valid, px, py, settings)
        prod = jnp.prod(jnp.where(use, 1.0 - alpha, 1.0), axis=-1)
        return prods.at[ids].set(prod, mode="drop")

    prods = _batched_loop(all_ids, items.count, static, pass1,
                          jnp.ones((num_items, num_px), dtype))
    t_front = _segmented_exclusive_scan(prods, items.first, jnp.multiply, 1.0)
    live, num_live = _live_items(items, t_front, num_tiles_total, static)

    def pass2(ids, acc):
        acc_c, acc_d, acc_t = acc
        tile, gid, sid, valid, px, py = _item_batch(static, bins_gid, starts, counts, items,
                                                    ids, dtype)
        alpha, use, _ = _chunk_alpha(attrs, gid, sid, valid, px, py, settings)
        trans = t_front.at[ids].get(mode="fill", fill_value=0.0)
        w, contrib, _ = _chunk_weights(alpha, use, trans, settings)
        kept = jnp.prod(jnp.where(contrib, 1.0 - alpha, 1.0), axis=-1)
        acc_c = acc_c.at[tile].add(jnp.einsum("bpk,bkc->bpc", w, colors[sid]), mode="drop")
        acc_d = acc_d.at[tile].add(jnp.einsum("bpk,bk->bp", w, depths[gid]), mode="drop")
        acc_t = acc_t.at[tile].multiply(kept, mode="drop")
        return acc_c, acc_d, acc_t

    channels = colors.shape[-1]
    acc = (jnp.zeros((num_tiles_total, num_px, channels), dtype),
           jnp.zeros((num_tiles_total, num_px), dtype),
           jnp.ones((num_tiles_total, num_px), dtype))
    acc_c, acc_d, trans = _batched_loop(live, num_live, static, pass2, acc)
    tiles_per_image = static.tiles_x * static.tiles_y
    bg = jnp.repeat(background, tiles_per_image, axis=0)  # [I·T, C]
    color = acc_c + trans[..., None] * bg[:, None, :]
    return color, acc_d, trans, t_front


def _flat_backward(attrs, colors, depths, bins_gid, starts, counts, t_front, outputs,
                   cotangents, static):
    """Gradients w.r.t. per-Gaussian screen attributes, flat [I·N, G] (see _composite_bwd)."""
    settings = static.settings
    k = settings.chunk_size
    dtype = colors.dtype
    num_tiles_total = counts.shape[0]
    num_items = t_front.shape[0]
    num_px = settings.tile_size ** 2
    items = _work_items(starts, counts, num_items, k)
    live, num_live = _live_items(items, t_front, num_tiles_total, static)
    color_out, depth_out, trans_final = outputs
    g_color, g_depth, g_alpha = cotangents
    # L = Σ w_i f_i + T_final·f_bg with f_i = g_C·c_i + g_D·z_i and f_bg = g_C·bg − g_A.
    total = jnp.sum(g_color * color_out, -1) + g_depth * depth_out - g_alpha * trans_final

    def evaluate(ids):
        tile, gid, sid, valid, px, py = _item_batch(static, bins_gid, starts, counts, items,
                                                    ids, dtype)
        alpha, use, extra = _chunk_alpha(attrs, gid, sid, valid, px, py, settings)
        trans = t_front.at[ids].get(mode="fill", fill_value=0.0)
        w, contrib, t_before = _chunk_weights(alpha, use, trans, settings)
        tile_c = jnp.minimum(tile, num_tiles_total - 1)
        gc, gd = g_color[tile_c], g_depth[tile_c]  # [B, P, C], [B, P]
        f = jnp.einsum("bpc,bkc->bpk", gc, colors[sid]) + gd[:, :, None] * depths[gid][:, None]
        return tile_c, gid, sid, valid, alpha, extra, w, contrib, t_before, f, gc, gd

    def pass_a(ids, sums):
        *_, w, _, _, f, _, _ = evaluate(ids)
        return sums.at[ids].set(jnp.sum(w * f, axis=-1), mode="drop")

    sums = _batched_loop(live, num_live, static, pass_a, jnp.zeros((num_items, num_px), dtype))
    front_sums = _segmented_exclusive_scan(sums, items.first, jnp.add, 0.0)
    num_attr = 2 + 3 + 1 + colors.shape[-1] + 1

    def pass_b(ids, grads):
        tile_c, gid, sid, valid, alpha, extra, w, contrib, t_before, f, gc, gd = evaluate(ids)
        dx, dy, gauss, unclamped = extra
        wf = w * f
        front = front_sums.at[ids].get(mode="fill", fill_value=0.0)
        after = (total[tile_c] - front)[:, :, None] - jnp.cumsum(wf, axis=-1)
        g_a = jnp.where(contrib, t_before * f - after / (1.0 - alpha), 0.0)
        g_raw = jnp.where(unclamped, g_a, 0.0)
        g_sigma = -g_raw * attrs[2][sid][:, None, :] * gauss  # dα/dσ = −o·exp(−σ)
        con = attrs[1][gid]
        a, bb, c = con[:, None, :, 0], con[:, None, :, 1], con[:, None, :, 2]
        rows = jnp.concatenate([
            jnp.stack([
                jnp.sum(g_sigma * (a * dx + bb * dy), axis=1),
                jnp.sum(g_sigma * (c * dy + bb * dx), axis=1),
                jnp.sum(g_sigma * 0.5 * dx * dx, axis=1),
                jnp.sum(g_sigma * dx * dy, axis=1),
                jnp.sum(g_sigma * 0.5 * dy * dy, axis=1),
                jnp.sum(g_raw * gauss, axis=1),
            ], axis=-1),
            jnp.einsum("bpk,bpc->bkc", w, gc),
            jnp.einsum("bpk,bp->bk", w, gd)[..., None],
        ], axis=-1)
        index = jnp.where(valid, gid, grads.shape[0])
        return grads.at[index.reshape(-1)].add(rows.reshape(-1, num_attr), mode="drop")

    return _batched_loop(live, num_live, static, pass_b,
                         jnp.zeros((attrs[0].shape[0], num_attr), dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(9,))
def _composite_images(means2d, conics, opacities, colors, depths, background, gid, starts, counts,
                      static):
    out, _ = _composite_fwd(means2d, conics, opacities, colors, depths, background, gid, starts,
                            counts, static)
    return out


def _composite_fwd(means2d, conics, opacities, colors, depths, background, gid, starts, counts,
                   static):
    num_images, tiles = starts.shape
    color, depth, trans, t_front = _flat_forward(
        (means2d, conics, opacities), colors, depths, background, gid, starts.reshape(-1),
        counts.reshape(-1), static)
    color = color.reshape(num_images, tiles, *color.shape[1:])
    depth, trans = depth.reshape(num_images, tiles, -1), trans.reshape(num_images, tiles, -1)
    out = tuple(jax.vmap(lambda x: _tiles_to_image(x, static))(x)
                for x in (color, depth, 1.0 - trans))
    residuals = (means2d, conics, opacities, colors, depths, gid, starts, counts,
                 color, depth, trans, t_front)
    return out, residuals


def _composite_bwd(static, residuals, cotangents):
    (means2d, conics, opacities, colors, depths, gid, starts, counts,
     color, depth, trans, t_front) = residuals
    num_images = starts.shape[0]
    to_tiles = jax.vmap(lambda x: _image_to_tiles(x, static))
    g_color, g_depth, g_alpha = (to_tiles(c) for c in cotangents)
    flat_tiles = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    grads = _flat_backward(
        (means2d, conics, opacities), colors, depths, gid, starts.reshape(-1),
        counts.reshape(-1), t_front, (flat_tiles(color), flat_tiles(depth), flat_tiles(trans)),
        (flat_tiles(g_color), flat_tiles(g_depth), flat_tiles(g_alpha)), static)
    g_bg = jnp.einsum("itp,itpc->ic", trans, g_color)
    return _split_grads(grads, g_bg, colors.shape[-1], num_images, static, gid, starts, counts)


def _split_grads(grads, g_bg, ch, num_images, static, gid, starts, counts):
    """[I·N, G] per-image gradient rows → the cotangents of _composite_images' inputs."""
    num_gaussians = static.num_gaussians
    # Opacities and colours are shared by the views of a scene: sum their gradients over views.
    per_scene = grads.reshape(num_images // static.views, static.views, num_gaussians, -1)
    per_scene = jnp.sum(per_scene, axis=1).reshape(-1, grads.shape[-1])
    grads = grads.reshape(num_images * num_gaussians, -1)
    g_means2d, g_conics, g_depths = grads[:, 0:2], grads[:, 2:5], grads[:, 6 + ch]
    g_op, g_colors = per_scene[:, 5], per_scene[:, 6:6 + ch]
    zero_int = lambda x: np.zeros(x.shape, dtype=jax.dtypes.float0)  # noqa: E731
    return (g_means2d, g_conics, g_op, g_colors, g_depths, g_bg, zero_int(gid),
            zero_int(starts), zero_int(counts))


_composite_images.defvjp(_composite_fwd, _composite_bwd)


def composite(
    means2d: jax.Array,
    conics: jax.Array,
    opacities: jax.Array,
    colors: jax.Array,
    depths: jax.Array,
    background: jax.Array,
    bins: Bins,
    width: int,
    height: int,
    settings: RasterSettings,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Alpha-composite binned Gaussians of I images ([I, N, ...] inputs, background [I, C]).

    Opacities [B, N] and colours [B, N, C] are per scene; image i shows scene i // (I / B).
    Returns colour [I, H, W, C], accumulated depth Σ wᵢzᵢ [I, H, W] and alpha 1 − T [I, H, W].
    Differentiable w.r.t. means2d, conics, opacities, colors, depths and background.
    """
    num_images, n = depths.shape
    num_scenes = opacities.shape[0]
    if num_images % num_scenes:
        raise ValueError(f"{num_images} images is not a multiple of {num_scenes} scenes")
    ts = settings.tile_size
    static = _Static(-(-width // ts), -(-height // ts), width, height, settings,
                     num_images // num_scenes, n)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    return _composite_images(
        flat(means2d), flat(conics), flat(opacities), flat(colors), flat(depths),
        background, bins.gaussian_ids, bins.tile_starts, bins.tile_counts, static,
    )


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


class RasterInfo(NamedTuple):
    """Per-call diagnostics of the static intersection buffer."""

    intersections: jax.Array  # [] int32 (Gaussian, tile) intersections the scene needs
    capacity: int | jax.Array  # slots in the buffer (an array once returned from jit)
    overflow: jax.Array  # [] bool: intersections > capacity (outputs are then invalid)
    max_tile_load: jax.Array  # [] int32 largest number of Gaussians in one tile

    @property
    def occupancy(self) -> jax.Array:
        return self.intersections / self.capacity

    def raise_if_overflow(self) -> None:
        """Raise :class:`CapacityOverflowError` if the buffer overflowed (needs concrete values)."""
        if bool(self.overflow):
            raise CapacityOverflowError(int(self.intersections), self.capacity)


class RenderOutput(NamedTuple):
    colors: jax.Array  # [..., V, H, W, C] colour incl. background
    alphas: jax.Array  # [..., V, H, W] accumulated opacity 1 − T
    depths: jax.Array  # [..., V, H, W] accumulated depth Σ wᵢ zᵢ (divide by alpha: expected)
    info: RasterInfo


class CapacityOverflowError(RuntimeError):
    """The scene needs more (Gaussian, tile) intersections than the static buffer holds."""

    def __init__(self, needed: int, capacity: int):
        super().__init__(
            f"rasterizer capacity overflow: the scene needs {needed:,} (Gaussian, tile) "
            f"intersections but capacity={capacity:,}. Pass capacity >= {needed:,} (for example "
            f"capacity={_round_capacity(needed):,}), or call rasterize(..., capacity=None) "
            f"outside jit to size the buffer from the scene."
        )
        self.needed, self.capacity = needed, capacity


def check_no_overflow(info: RasterInfo) -> None:
    """Inside a :func:`jax.experimental.checkify.checkify`-ed function: error on overflow."""
    checkify.check(
        ~info.overflow,
        "rasterizer capacity overflow: {needed} intersections needed, capacity "
        + str(info.capacity) + "; raise `capacity`",
        needed=info.intersections,
    )


def _round_capacity(n: int) -> int:
    """Round a needed capacity up to limit recompilations (multiples of 2^k/8 above 8192)."""
    n = max(int(n), 1)
    if n <= 8192:
        return 8192
    step = 1 << max(n.bit_length() - 4, 0)
    return -(-n // step) * step


def _prepare(gaussians: Gaussians, viewmats, Ks, background):
    """Validate shapes and broadcast cameras/background to the Gaussians' batch axes."""
    gaussians.validate()
    batch = gaussians.batch_shape
    viewmats, Ks = jnp.asarray(viewmats), jnp.asarray(Ks)
    if viewmats.ndim < 3 or viewmats.shape[-2:] != (4, 4):
        raise ValueError(f"viewmats must have shape [..., V, 4, 4] (OpenCV world-to-camera), got "
                         f"{viewmats.shape}")
    if Ks.shape[-2:] != (3, 3) or Ks.shape[:-2] != viewmats.shape[:-2]:
        raise ValueError(f"Ks must have shape {viewmats.shape[:-2] + (3, 3)} to match viewmats, "
                         f"got {Ks.shape}")
    num_views = viewmats.shape[-3]
    try:
        viewmats = jnp.broadcast_to(viewmats, (*batch, num_views, 4, 4))
        Ks = jnp.broadcast_to(Ks, (*batch, num_views, 3, 3))
    except ValueError:
        raise ValueError(f"camera batch axes {viewmats.shape[:-3]} do not match the Gaussians' "
                         f"batch axes {batch}") from None
    channels = gaussians.colors.shape[-1]
    dtype = gaussians.means.dtype
    if background is None:
        background = jnp.zeros((channels,), dtype)
    background = jnp.asarray(background, dtype)
    try:
        background = jnp.broadcast_to(background, (*batch, num_views, channels))
    except ValueError:
        raise ValueError(f"background of shape {background.shape} does not broadcast to "
                         f"{(*batch, num_views, channels)}") from None
    return viewmats, Ks, background


def _check_cameras(viewmats: np.ndarray, Ks: np.ndarray) -> None:
    """Eager camera checks: finite matrices, an invertible rotation block, positive focals."""
    bad = ~np.all(np.isfinite(viewmats), axis=(-2, -1)) | ~np.all(np.isfinite(Ks), axis=(-2, -1))
    if bad.any():
        raise ValueError(f"rasterize: {int(bad.sum())} camera(s) hold NaN or infinite values "
                         f"(viewmats / Ks), e.g. camera index {np.argwhere(bad)[0].tolist()}")
    det = np.linalg.det(viewmats[..., :3, :3].astype(np.float64))
    if (np.abs(det) < 1e-6).any():
        raise ValueError(f"rasterize: {int((np.abs(det) < 1e-6).sum())} camera(s) have a "
                         f"degenerate (e.g. all-zero) rotation block; viewmats must be "
                         f"world-to-camera [[R, t], [0, 0, 0, 1]] with R a rotation")
    if (Ks[..., 0, 0] <= 0).any() or (Ks[..., 1, 1] <= 0).any():
        raise ValueError("rasterize: Ks must have positive focal lengths (Ks[..., 0, 0] and "
                         "Ks[..., 1, 1])")


def _check_gaussians(gaussians: Gaussians) -> None:
    """``validate=True``: every Gaussian field finite (counts per field in the message)."""
    bad = {}
    for name in ("means", "scales", "rotations", "opacities", "colors"):
        a = np.asarray(getattr(gaussians, name))
        n = int((~np.isfinite(a)).reshape(*a.shape[:len(gaussians.batch_shape) + 1], -1)
                .any(-1).sum()) if a.size else 0
        if n:
            bad[name] = n
    if bad:
        raise ValueError(f"rasterize(validate=True): non-finite Gaussians (count per field: "
                         f"{bad}); they would be culled silently")


def _project_all(gaussians, viewmats, Ks, width, height, settings):
    """Project every scene into every camera: fields [I, N, ...] with I = prod(batch) · V."""
    num_views = viewmats.shape[-3]
    n = gaussians.num_gaussians
    covars = covariance_3d(gaussians.scales, gaussians.rotations, settings.normalize_quaternions)
    means = gaussians.means.reshape(-1, n, 3)
    covars = covars.reshape(-1, n, 3, 3)
    vm = viewmats.reshape(-1, num_views, 4, 4)
    ks = Ks.reshape(-1, num_views, 3, 3)
    proj = functools.partial(project_gaussians, width=width, height=height, settings=settings)
    per_view = jax.vmap(proj, in_axes=(None, None, 0, 0))
    p = jax.vmap(per_view)(means, covars, vm, ks)
    return jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), p)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _count_jit(gaussians, viewmats, Ks, width, height, settings):
    p = _project_all(gaussians, viewmats, Ks, width, height, settings)
    return jnp.sum(_rect_counts(tile_rects(p.means2d, p.radii, width, height, settings)))


def count_intersections(
    gaussians: Gaussians,
    viewmats: jax.Array,
    Ks: jax.Array,
    width: int,
    height: int,
    settings: str | RasterSettings = "inria",
) -> int:
    """Number of (Gaussian, tile) intersections a render needs (a concrete int; not under jit)."""
    settings = get_settings(settings)
    viewmats, Ks, _ = _prepare(gaussians, viewmats, Ks, None)
    if gaussians.num_gaussians == 0:
        return 0
    return int(_count_jit(gaussians, viewmats, Ks, int(width), int(height), settings))


def _rasterize_impl(gaussians, viewmats, Ks, background, width, height, settings, capacity,
                    poison_on_overflow):
    batch = gaussians.batch_shape
    num_views = viewmats.shape[-3]
    n = gaussians.num_gaussians
    channels = gaussians.colors.shape[-1]
    p = _project_all(gaussians, viewmats, Ks, width, height, settings)
    num_images = p.depths.shape[0]
    rects = tile_rects(p.means2d, p.radii, width, height, settings)
    ts = settings.tile_size
    bins = bin_gaussians(rects, p.depths, -(-width // ts), -(-height // ts), capacity)

    opacities = gaussians.opacities.reshape(-1, n)
    colors = gaussians.colors.reshape(-1, n, channels)
    color, depth, alpha = composite(
        p.means2d, p.conics, opacities, colors, p.depths,
        background.reshape(num_images, channels), bins, width, height, settings,
    )
    if poison_on_overflow:  # added, not selected: gradients through the outputs are NaN too
        poison = jnp.where(bins.overflow, jnp.asarray(jnp.nan, color.dtype), 0.0)
        color, depth, alpha = color + poison, depth + poison, alpha + poison
    shape = (*batch, num_views, height, width)
    info = RasterInfo(bins.intersections, capacity, bins.overflow, jnp.max(bins.tile_counts))
    return RenderOutput(color.reshape(*shape, channels), alpha.reshape(shape),
                        depth.reshape(shape), info)


_rasterize_jit = jax.jit(_rasterize_impl, static_argnums=(4, 5, 6, 7, 8))


def rasterize(
    gaussians: Gaussians,
    viewmats: jax.Array,
    Ks: jax.Array,
    width: int,
    height: int,
    *,
    background: jax.Array | None = None,
    settings: str | RasterSettings = "inria",
    capacity: int | None = None,
    poison_on_overflow: bool = True,
    validate: bool = False,
) -> RenderOutput:
    """Render Gaussians [..., N] into cameras [..., V] (OpenCV world-to-camera + intrinsics).

    Args:
      gaussians: scenes with batch axes ``...`` (see :class:`Gaussians`).
      viewmats: [..., V, 4, 4] OpenCV world-to-camera matrices; broadcast over scene axes.
      Ks: [..., V, 3, 3] pinhole intrinsics (pixel centres at +0.5).
      width, height: image size in pixels (static).
      background: colour behind the Gaussians, broadcastable to [..., V, C] (default zeros).
      settings: ``"inria"`` (default, what LGM/VideoMV were trained with), ``"gsplat"`` or a
        :class:`RasterSettings`.
      capacity: size of the (Gaussian, tile) intersection buffer. ``None`` sizes it from the
        scene (eager calls only). Under ``jit`` it must be given; see :class:`RasterInfo`.
      poison_on_overflow: fill the outputs with NaN when the buffer overflows (their gradients
        are NaN as well, so an overflowed training step is seen as non-finite).
      validate: also check the Gaussians (eager calls): non-finite means, scales, rotations,
        opacities or colours raise ``ValueError`` with their count (by default such Gaussians
        are culled like any Gaussian behind the camera). Cameras are always checked in eager
        calls: non-finite matrices, a degenerate rotation block (e.g. all zeros) or a
        non-positive focal length raise ``ValueError`` instead of rendering the background.

    Returns:
      :class:`RenderOutput` with colours [..., V, H, W, C], alphas and depths [..., V, H, W] and
      the buffer diagnostics. Eager calls raise :class:`CapacityOverflowError` on overflow.
    """
    settings = get_settings(settings)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
               for v in (width, height)):
        raise ValueError(f"width and height must be positive ints, got {width!r}, {height!r}")
    width, height = int(width), int(height)
    viewmats, Ks, background = _prepare(gaussians, viewmats, Ks, background)
    traced = any(isinstance(x, jax.core.Tracer)
                 for x in jax.tree_util.tree_leaves((gaussians, viewmats, Ks, background)))
    if not traced:
        _check_cameras(np.asarray(viewmats), np.asarray(Ks))
        if validate:
            _check_gaussians(gaussians)
    elif validate:
        raise ValueError("rasterize(validate=True) checks concrete values; call it outside "
                         "jit/vmap/grad (or check the inputs before tracing)")
    if gaussians.num_gaussians == 0:  # an empty scene: the background, nothing to sort
        batch, num_views = gaussians.batch_shape, viewmats.shape[-3]
        shape = (*batch, num_views, height, width)
        zeros = jnp.zeros(shape, gaussians.means.dtype)
        colors = jnp.broadcast_to(background[..., None, None, :], (*shape, background.shape[-1]))
        cap = 1 if capacity is None else capacity
        info = RasterInfo(jnp.zeros((), jnp.int32), cap, jnp.zeros((), bool),
                          jnp.zeros((), jnp.int32))
        return RenderOutput(colors, zeros, zeros, info)
    if capacity is None:
        if traced:
            raise ValueError(
                "rasterize(capacity=None) sizes its buffer from the scene and cannot run under "
                "jit/vmap/grad tracing; pass a static capacity (count_intersections() on a "
                "typical scene tells how many intersections it needs)."
            )
        capacity = _round_capacity(
            int(_count_jit(gaussians, viewmats, Ks, width, height, settings)))
    if not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be a positive int, got {capacity!r}")
    impl = _rasterize_impl if traced else _rasterize_jit
    out = impl(gaussians, viewmats, Ks, background, width, height, settings, capacity,
               poison_on_overflow)
    if not traced:
        out.info.raise_if_overflow()
    return out

