"""Triangle meshes (``.glb``, ``.obj`` + ``.mtl`` + PNG texture) from 3D Gaussians.

Pipeline (each step a function of its own):

1. :func:`opacity_field` — the Gaussians' opacity on a regular grid, in JAX: every Gaussian
   adds ``log(1 − min(oᵢ·Gᵢ(x), 0.999))`` to the log-transmittance of the grid points inside
   its ``sigma_extent``-sigma ellipsoid, so ``α(x) = 1 − Πᵢ (1 − oᵢ Gᵢ(x))`` (the same
   ``o·exp(−½ dᵀΣ⁻¹d)`` a splat has in the rasterizer, taken in 3D). Gaussians are grouped by
   the size of their window of grid points (about 1.5× steps) and scatter-added in chunks of a
   fixed size per window (one jitted function per window size), so the cost follows Σ window³
   rather than grid × Gaussians. The same pass accumulates the opacity-weighted colour, for
   vertex colours.
2. :func:`extract_mesh` — marching cubes (scikit-image) at ``level`` (default 0.25) after the
   cavities of the thresholded field are filled (Gaussians spread over a surface give a thin
   shell; without the fill it would mesh as two nested surfaces), then cleanup: components
   with fewer than ``min_component_fraction`` of the largest one's faces are dropped (floaters),
   the rest is Taubin-smoothed and decimated to ``target_faces`` (fast-simplification,
   quadric error). Vertex colours: the opacity-weighted mean colour of the Gaussians,
   trilinear on the grid.
3. :func:`texture_mesh` — a UV atlas (xatlas) and a texture baked by rendering the Gaussians
   with our rasterizer from ``bake_views`` cameras spread evenly over the sphere around the
   asset, and back-projecting: every texel takes the cos²-weighted mean colour of the views
   where its surface point is visible (depth test against the mesh itself, rendered with
   :func:`rasterize_mesh`) and the Gaussians are opaque; texels no view sees keep the vertex
   colour; the texture is dilated past the charts' edges against seams.
4. :func:`save_glb` (trimesh) and :func:`save_obj` (``.obj`` + ``.mtl`` + ``.png``).

Frame: the mesh is in the frame of the Gaussians given (coordinates are copied, never
rotated), so it lines up with the ``.ply`` it came from; bake cameras are placed around the
asset's bounding sphere in every direction, with no assumed up axis. glTF viewers take +y as
up, so a z-up asset opens lying on its back there.

Command line: ``python -m videomv_jax.export.mesh asset.ply --out DIR`` (see ``--help``).
Needs the ``mesh`` extra: ``pip install 'videomv-jax[mesh]'`` (scikit-image, trimesh, xatlas,
fast-simplification).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from videomv_jax.render import camera
from videomv_jax.render.gaussians import Gaussians
from videomv_jax.render.rasterize import (
    count_intersections,
    covariance_3d,
    get_settings,
    rasterize,
)

__all__ = [
    "MeshConfig",
    "MeshExportError",
    "Mesh",
    "OpacityField",
    "opacity_field",
    "extract_mesh",
    "unwrap_uv",
    "bake_cameras",
    "bake_texture",
    "texture_mesh",
    "rasterize_mesh",
    "render_mesh",
    "save_glb",
    "save_obj",
    "export_mesh",
    "add_mesh_arguments",
    "config_from_args",
    "write_mesh_outputs",
    "main",
]

MESH_EXTRA_HINT = "install the mesh extra: pip install 'videomv-jax[mesh]'"
_ALPHA_MAX = 0.999  # per-Gaussian opacity clamp in the log-transmittance (keeps log finite)
_CHUNK_POINTS = 1 << 20  # grid points evaluated per jitted chunk (memory ~ 60 MB)
# window sizes (grid points per axis) Gaussians are grouped by: steps of about 1.5x keep the
# wasted volume small while the number of compiled groups stays small
_WINDOWS = np.array([2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768,
                     1024, 1536, 2048, 4096, 8192])


class MeshExportError(ValueError):
    """An asset that cannot be meshed (empty, fully transparent, no surface); the message says
    what is wrong and what to change."""


def _require(module: str, package: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as err:
        raise ImportError(f"mesh export needs {package} ({err}); {MESH_EXTRA_HINT}") from None


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Settings of :func:`export_mesh` (defaults: a CPU run of seconds for an LGM asset)."""

    resolution: int = 128
    """Grid points along the longest side of the asset's bounding box."""
    level: float = 0.25
    """Iso level of the opacity field α ∈ [0, 1) where the surface is put. Measured on
    Gaussians fitted to ``shapes`` views (``tests/test_mesh_export.py``'s scene): 0.5 leaves
    holes where fitted Gaussians are semi-transparent (normal consistency 0.51), 0.2–0.3 give
    the best surfaces (0.88–0.93, Chamfer ≈ 0.011); 0.25 is between."""
    min_opacity: float = 0.005
    """Gaussians below this opacity are ignored (LGM's own ``.ply`` cut)."""
    sigma_extent: float = 3.0
    """Each Gaussian is evaluated inside its ``sigma_extent``-sigma ellipsoid."""
    fill_interior: bool = True
    """Fill the cavities of ``α > level`` before marching cubes (one surface per shell)."""
    min_component_fraction: float = 0.05
    """Keep connected components with at least this fraction of the largest one's faces."""
    smooth_iterations: int = 10
    """Taubin smoothing passes (volume-preserving λ|μ Laplacian) against marching-cubes
    terracing and the lumps of a fitted field; 0 = off."""
    target_faces: int | None = 20_000
    """Decimate to this many faces (None: keep the marching-cubes mesh)."""
    texture_size: int = 1024
    """Texture side in texels; 0 = no texture (vertex colours only)."""
    bake_views: int = 32
    """Cameras spread over the sphere around the asset for the texture bake."""
    bake_resolution: int = 256
    """Image side of the bake renders."""
    bake_fovy: float = camera.DEFAULT_FOVY_DEG
    settings: str = "inria"
    """Rasterizer preset (also decides whether quaternions are normalised, as in rendering)."""

    def __post_init__(self):
        def bad(name: str, what: str):
            raise ValueError(f"MeshConfig.{name} must be {what}, got {getattr(self, name)!r}")

        for name, low in (("resolution", 8), ("bake_views", 1), ("bake_resolution", 16)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                bad(name, f"an int >= {low}")
        if not 0.0 < self.level < 1.0:
            bad("level", "in (0, 1)")
        if not 0.0 <= self.min_opacity < 1.0:
            bad("min_opacity", "in [0, 1)")
        if not self.sigma_extent > 0:
            bad("sigma_extent", "> 0")
        if isinstance(self.smooth_iterations, bool) or not isinstance(
                self.smooth_iterations, int) or self.smooth_iterations < 0:
            bad("smooth_iterations", "an int >= 0")
        if not 0.0 <= self.min_component_fraction <= 1.0:
            bad("min_component_fraction", "in [0, 1]")
        if self.target_faces is not None and (not isinstance(self.target_faces, int)
                                              or self.target_faces < 4):
            bad("target_faces", "None or an int >= 4")
        if not isinstance(self.texture_size, int) or not (self.texture_size == 0
                                                          or self.texture_size >= 16):
            bad("texture_size", "0 (no texture) or an int >= 16")
        get_settings(self.settings)


@dataclasses.dataclass
class Mesh:
    """A triangle mesh in the Gaussians' frame. ``uvs`` (OBJ convention: v up, one per vertex)
    and ``texture`` (``[S, S, 3]`` float in [0, 1], row 0 at v = 1) are set by
    :func:`texture_mesh`; ``vertex_colors`` (float RGB in [0, 1]) always."""

    vertices: np.ndarray  # [V, 3] float32
    faces: np.ndarray  # [F, 3] int32, counter-clockwise seen from outside
    vertex_colors: np.ndarray  # [V, 3] float32
    uvs: np.ndarray | None = None  # [V, 2] float32
    texture: np.ndarray | None = None  # [S, S, 3] float32

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def vertex_normals(self) -> np.ndarray:
        """Area-weighted unit vertex normals ``[V, 3]`` (outward for outward-wound faces)."""
        v, f = self.vertices.astype(np.float64), self.faces
        fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
        n = np.zeros_like(v)
        for k in range(3):
            np.add.at(n, f[:, k], fn)
        return (n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-20)).astype(
            np.float32)


# ---------------------------------------------------------------------------------------------
# 1. opacity field
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class OpacityField:
    """α and opacity-weighted colour sums on the grid ``origin + h · (i, j, k)``."""

    alpha: np.ndarray  # [X, Y, Z] float32 in [0, 1)
    weight: np.ndarray  # [X, Y, Z] Σ oᵢGᵢ
    weighted_color: np.ndarray  # [X, Y, Z, 3] Σ oᵢGᵢcᵢ
    origin: np.ndarray  # [3] world position of grid point (0, 0, 0)
    spacing: float

    def colors_at(self, points: np.ndarray) -> np.ndarray:
        """Opacity-weighted mean Gaussian colour at world ``points [P, 3]`` (trilinear)."""
        from scipy.ndimage import map_coordinates

        coords = ((np.asarray(points, np.float64) - self.origin) / self.spacing).T
        w = map_coordinates(self.weight, coords, order=1, mode="nearest")
        wc = np.stack([map_coordinates(self.weighted_color[..., c], coords, order=1,
                                       mode="nearest") for c in range(3)], -1)
        return np.clip(wc / np.maximum(w, 1e-12)[:, None], 0.0, 1.0).astype(np.float32)


def _single_scene(gaussians: Gaussians, what: str) -> dict[str, np.ndarray]:
    gaussians.validate()
    if gaussians.batch_shape:
        raise MeshExportError(f"{what}: needs one scene, got batch shape {gaussians.batch_shape} "
                              "(index the batch first)")
    if gaussians.colors.shape[-1] != 3:
        raise MeshExportError(f"{what}: needs RGB colours, got {gaussians.colors.shape[-1]} "
                              "channels")
    arrays = {k: np.asarray(getattr(gaussians, k), np.float32)
              for k in ("means", "scales", "rotations", "opacities", "colors")}
    n = arrays["means"].shape[0]
    if n == 0:
        raise MeshExportError(f"{what}: the asset has no Gaussians (an empty .ply?); nothing to "
                              "mesh")
    finite = np.all([np.isfinite(a.reshape(n, -1)).all(1) for a in arrays.values()], axis=0)
    if not finite.all():
        raise MeshExportError(f"{what}: {int((~finite).sum())} of {n} Gaussians have NaN/inf "
                              "attributes; fix the asset (e.g. drop those rows) before meshing")
    return arrays


def _kept(arrays: dict[str, np.ndarray], min_opacity: float, what: str) -> dict[str, np.ndarray]:
    keep = arrays["opacities"] >= max(min_opacity, 1e-12)
    if not keep.any():
        raise MeshExportError(
            f"{what}: all {keep.size} Gaussians have opacity below {min_opacity:g} (max "
            f"{float(arrays['opacities'].max()):.3g}): the asset is fully transparent, so it has "
            "no surface to mesh")
    return {k: v[keep] for k, v in arrays.items()}


@functools.partial(jax.jit, static_argnames=("window", "dims"), donate_argnums=(0,))
def _splat_chunk(acc, starts, means, icovs, opacities, colors, origin, spacing, cutoff2, *,
                 window: int, dims: tuple[int, int, int]):
    """Add one chunk of Gaussians (``[C, ...]``) with ``window³`` grid points each to ``acc``
    ``[X·Y·Z, 5]`` (log-transmittance, Σ oG, Σ oG·rgb). Chunk shapes depend on the window
    only, so each window size compiles once per grid size."""
    ar = jnp.arange(window)
    ox, oy, oz = (o.reshape(-1) for o in jnp.meshgrid(ar, ar, ar, indexing="ij"))
    total = dims[0] * dims[1] * dims[2]
    base = origin + starts * spacing - means  # [C, 3]: offset of the window's first point
    dx = base[:, 0:1] + ox * spacing  # [C, W³]
    dy = base[:, 1:2] + oy * spacing
    dz = base[:, 2:3] + oz * spacing
    a = icovs
    m = (a[:, 0, 0, None] * dx * dx + a[:, 1, 1, None] * dy * dy + a[:, 2, 2, None] * dz * dz
         + 2.0 * (a[:, 0, 1, None] * dx * dy + a[:, 0, 2, None] * dx * dz
                  + a[:, 1, 2, None] * dy * dz))
    ix, iy, iz = starts[:, 0:1] + ox, starts[:, 1:2] + oy, starts[:, 2:3] + oz
    inside = ((m <= cutoff2) & (ix < dims[0]) & (iy < dims[1]) & (iz < dims[2])
              & (ix >= 0) & (iy >= 0) & (iz >= 0))
    g = jnp.where(inside, opacities[:, None] * jnp.exp(-0.5 * m), 0.0)
    flat = jnp.where(inside, (ix * dims[1] + iy) * dims[2] + iz, total)  # outside: dropped
    vals = jnp.concatenate([jnp.log1p(-jnp.minimum(g, _ALPHA_MAX))[..., None], g[..., None],
                            g[..., None] * colors[:, None, :]], -1)
    return acc.at[flat.reshape(-1)].add(vals.reshape(-1, 5), mode="drop")


def opacity_field(gaussians: Gaussians, resolution: int = MeshConfig.resolution,
                  min_opacity: float = MeshConfig.min_opacity,
                  sigma_extent: float = MeshConfig.sigma_extent,
                  settings: str = MeshConfig.settings) -> OpacityField:
    """The Gaussians' opacity field on a grid of ``resolution`` points along the longest side of
    their (``sigma_extent``-sigma) bounding box, padded by two points each side."""
    arrays = _kept(_single_scene(gaussians, "opacity_field"), min_opacity, "opacity_field")
    normalize = get_settings(settings).normalize_quaternions
    cov = np.asarray(covariance_3d(jnp.asarray(arrays["scales"]), jnp.asarray(
        arrays["rotations"]), normalize=normalize), np.float64)
    cov = cov + np.eye(3) * 1e-12 * np.trace(cov, axis1=1, axis2=2)[:, None, None]
    icov = np.linalg.inv(cov)
    ext = sigma_extent * np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2), 0.0))
    means = arrays["means"].astype(np.float64)
    lo, hi = (means - ext).min(0), (means + ext).max(0)
    spacing = float(max((hi - lo).max(), 1e-6)) / (resolution - 1)
    origin = lo - 2 * spacing
    dims = tuple(int(d) for d in np.ceil((hi - lo) / spacing).astype(int) + 5)
    start = np.floor((means - ext - origin) / spacing).astype(np.int64)
    stop = np.ceil((means + ext - origin) / spacing).astype(np.int64)
    size = (stop - start + 1).max(1)
    window = _WINDOWS[np.searchsorted(_WINDOWS, np.minimum(size, _WINDOWS[-1]))]
    # the accumulator is a (resolution + 5)³ cube whatever the asset's proportions (cropped
    # below): the jitted chunks then compile once per resolution, not once per asset shape
    alloc = tuple(max(d, resolution + 5) for d in dims)
    acc = jnp.zeros((int(np.prod(alloc)), 5), jnp.float32)
    consts = (jnp.asarray(origin, jnp.float32), jnp.float32(spacing),
              jnp.float32(sigma_extent ** 2))
    for w in np.unique(window):
        sel = np.nonzero(window == w)[0]
        chunk = max(1, _CHUNK_POINTS // int(w) ** 3)
        for c in range(0, len(sel), chunk):
            idx = sel[c:c + chunk]
            pad = chunk - len(idx)

            def take(a, fill, dtype=np.float32, idx=idx, pad=pad):
                a = a[idx]
                if pad:
                    a = np.concatenate([a, np.broadcast_to(fill, (pad, *a.shape[1:]))])
                return jnp.asarray(a.astype(dtype))

            acc = _splat_chunk(acc, take(start, 0, np.int32), take(means, 0.0),
                               take(icov, np.eye(3)), take(arrays["opacities"], 0.0),
                               take(arrays["colors"], 0.0), *consts, window=int(w), dims=alloc)
    acc = np.asarray(acc).reshape(*alloc, 5)[:dims[0], :dims[1], :dims[2]]
    return OpacityField(alpha=-np.expm1(acc[..., 0]), weight=acc[..., 1],
                        weighted_color=acc[..., 2:], origin=origin, spacing=spacing)


# ---------------------------------------------------------------------------------------------
# 2. marching cubes and cleanup
# ---------------------------------------------------------------------------------------------


def _largest_components(vertices: np.ndarray, faces: np.ndarray, fraction: float
                        ) -> tuple[np.ndarray, np.ndarray]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(vertices)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    face_labels = labels[faces[:, 0]]
    counts = np.bincount(face_labels)
    keep_labels = counts >= fraction * counts.max()
    faces = faces[keep_labels[face_labels]]
    used = np.unique(faces)
    remap = np.full(n, -1, np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces]


def _taubin_smooth(vertices: np.ndarray, faces: np.ndarray, iterations: int,
                   lam: float = 0.5, mu: float = -0.53) -> np.ndarray:
    """Taubin's λ|μ smoothing with the uniform (umbrella) Laplacian: shrink by λ, then inflate
    by μ, per iteration, so noise goes while the volume stays (Taubin 1995)."""
    from scipy.sparse import coo_matrix, diags

    n = len(vertices)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.concatenate([edges, edges[:, ::-1]])
    adj = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
    adj.data[:] = 1.0  # duplicate edges count once
    avg = diags(1.0 / np.maximum(np.asarray(adj.sum(1)).ravel(), 1.0)) @ adj
    v = vertices.astype(np.float64)
    for _ in range(iterations):
        v = v + lam * (avg @ v - v)
        v = v + mu * (avg @ v - v)
    return v


def _signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    v = vertices.astype(np.float64)[faces]
    return float(np.einsum("fi,fi->", v[:, 0], np.cross(v[:, 1], v[:, 2])) / 6.0)


def extract_mesh(gaussians: Gaussians, config: MeshConfig | None = None,
                 field: OpacityField | None = None) -> Mesh:
    """Marching cubes of the Gaussians' opacity field, cleaned up and decimated, with vertex
    colours (see the module docstring). Raises :class:`MeshExportError` for an empty or fully
    transparent asset, or one whose field never reaches ``config.level``."""
    cfg = config or MeshConfig()
    measure = _require("skimage.measure", "scikit-image")
    from scipy.ndimage import binary_fill_holes

    if field is None:
        field = opacity_field(gaussians, cfg.resolution, cfg.min_opacity, cfg.sigma_extent,
                              cfg.settings)
    alpha = field.alpha
    peak = float(alpha.max())
    if peak <= cfg.level:
        raise MeshExportError(
            f"extract_mesh: the Gaussians' opacity field peaks at {peak:.3f}, below the iso "
            f"level {cfg.level:g}, so there is no surface; lower --level (e.g. {peak / 2:.2g}) or "
            "check that the asset is not nearly transparent")
    if cfg.fill_interior:
        solid = alpha > cfg.level
        cavity = binary_fill_holes(solid) & ~solid
        alpha = np.where(cavity, np.float32(1.0), alpha)
    verts, faces, _, _ = measure.marching_cubes(alpha, level=cfg.level,
                                                spacing=(field.spacing,) * 3,
                                                allow_degenerate=False)
    verts = verts + field.origin
    faces = faces.astype(np.int64)
    if len(faces) == 0:
        raise MeshExportError("extract_mesh: marching cubes found no surface; lower --level")
    verts, faces = _largest_components(verts, faces, cfg.min_component_fraction)
    if cfg.smooth_iterations:
        verts = _taubin_smooth(verts, faces, cfg.smooth_iterations)
    if cfg.target_faces is not None and len(faces) > cfg.target_faces:
        fs = _require("fast_simplification", "fast-simplification")
        verts, faces = fs.simplify(verts.astype(np.float32), faces.astype(np.int32),
                                   target_count=cfg.target_faces)
        verts, faces = _largest_components(np.asarray(verts, np.float64),
                                           np.asarray(faces, np.int64), 0.0)
    if _signed_volume(verts, faces) < 0:  # wind counter-clockwise seen from outside
        faces = faces[:, ::-1]
    return Mesh(vertices=verts.astype(np.float32), faces=np.ascontiguousarray(faces, np.int32),
                vertex_colors=field.colors_at(verts))


# ---------------------------------------------------------------------------------------------
# triangle rasterizer (numpy): texture space and cameras
# ---------------------------------------------------------------------------------------------


def _rasterize_triangles(xy: np.ndarray, width: int, height: int, inv_z: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest triangle per pixel. ``xy [F, 3, 2]`` pixel coordinates (pixel ``(j, i)`` centred
    at ``(j + 0.5, i + 0.5)``), ``inv_z [F, 3]`` reciprocal camera depths (None: 2D, first
    triangle wins). Returns face id ``[H, W]`` (-1: empty), perspective-correct barycentrics
    ``[H, W, 3]`` and depth ``[H, W]`` (inf: empty). Both windings are drawn."""
    xy = np.asarray(xy, np.float64)
    lo = np.maximum(np.ceil(xy.min(1) - 0.5), 0).astype(np.int64)
    hi = np.minimum(np.floor(xy.max(1) - 0.5), [width - 1, height - 1]).astype(np.int64)
    size = (hi - lo + 1).max(1)
    e1, e2 = xy[:, 1] - xy[:, 0], xy[:, 2] - xy[:, 0]
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    ok = np.all(hi >= lo, 1) & (np.abs(area) > 1e-12)
    window = np.where(ok, 2 ** np.ceil(np.log2(np.maximum(size, 1))).astype(np.int64), 0)
    pix_l, face_l, bary_l = [], [], []
    for w in np.unique(window[window > 0]):
        ids = np.nonzero(window == w)[0]
        oy, ox = np.divmod(np.arange(w * w), w)
        for c in range(0, len(ids), max(1, (1 << 22) // int(w * w))):
            f = ids[c:c + max(1, (1 << 22) // int(w * w))]
            px = lo[f, 0, None] + ox[None]
            py = lo[f, 1, None] + oy[None]
            cx, cy = px + 0.5 - xy[f, 0, 0, None], py + 0.5 - xy[f, 0, 1, None]
            b1 = (cx * e2[f, 1, None] - cy * e2[f, 0, None]) / area[f, None]
            b2 = (e1[f, 0, None] * cy - e1[f, 1, None] * cx) / area[f, None]
            b0 = 1.0 - b1 - b2
            tol = -1e-7
            m = ((px <= hi[f, 0, None]) & (py <= hi[f, 1, None]) & (b0 >= tol) & (b1 >= tol)
                 & (b2 >= tol))
            r, k = np.nonzero(m)
            pix_l.append(py[r, k] * width + px[r, k])
            face_l.append(f[r])
            bary_l.append(np.stack([b0[r, k], b1[r, k], b2[r, k]], -1))
    face_id = np.full(height * width, -1, np.int64)
    bary = np.zeros((height * width, 3))
    depth = np.full(height * width, np.inf)
    if not pix_l:
        return face_id.reshape(height, width), bary.reshape(height, width, 3), depth.reshape(
            height, width)
    pix, face, b = np.concatenate(pix_l), np.concatenate(face_l), np.concatenate(bary_l)
    if inv_z is None:
        z = np.zeros(len(pix))
    else:
        iz = b * inv_z[face]
        s = iz.sum(1)
        b = iz / s[:, None]
        z = 1.0 / s
    order = np.lexsort((z, pix))
    pix, first = np.unique(pix[order], return_index=True)
    sel = order[first]
    face_id[pix], bary[pix], depth[pix] = face[sel], b[sel], z[sel]
    return face_id.reshape(height, width), bary.reshape(height, width, 3), depth.reshape(
        height, width)


def rasterize_mesh(vertices: np.ndarray, faces: np.ndarray, viewmat: np.ndarray, K: np.ndarray,
                   width: int, height: int, near: float = 1e-3
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-buffer a mesh into one OpenCV camera (world-to-camera ``viewmat [4, 4]``, intrinsics
    ``K [3, 3]``, the rasterizer's conventions). Faces with a vertex nearer than ``near`` are
    skipped. Returns face id ``[H, W]`` (-1: background), perspective-correct barycentrics
    ``[H, W, 3]`` and camera depth ``z [H, W]`` (inf: background)."""
    v = np.asarray(vertices, np.float64)
    vm, k = np.asarray(viewmat, np.float64), np.asarray(K, np.float64)
    cam = v @ vm[:3, :3].T + vm[:3, 3]
    z = cam[:, 2]
    xy = (cam[:, :2] / np.where(z > near, z, 1.0)[:, None]) * [k[0, 0], k[1, 1]] + [k[0, 2],
                                                                                    k[1, 2]]
    front = np.all(z[faces] > near, 1)
    fid = np.nonzero(front)[0]
    face_id, bary, depth = _rasterize_triangles(xy[faces[fid]], width, height,
                                                1.0 / z[faces[fid]])
    face_id = np.where(face_id >= 0, fid[np.maximum(face_id, 0)], -1)
    return face_id, bary, depth


def _sample_bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``image [H, W, C]`` at pixel coordinates (centres at +0.5), clamped at the borders."""
    h, w = image.shape[:2]
    x = np.clip(x - 0.5, 0, w - 1)
    y = np.clip(y - 0.5, 0, h - 1)
    x0, y0 = np.minimum(np.floor(x).astype(np.int64), w - 2), np.minimum(
        np.floor(y).astype(np.int64), h - 2)
    x0, y0 = np.maximum(x0, 0), np.maximum(y0, 0)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    return ((1 - fy) * ((1 - fx) * image[y0, x0] + fx * image[y0, x1])
            + fy * ((1 - fx) * image[y1, x0] + fx * image[y1, x1]))


def _surface_colors(mesh: Mesh, face_id: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Colours of surface points given by face and barycentrics (texture if any)."""
    f = mesh.faces[face_id]
    if mesh.texture is not None and mesh.uvs is not None:
        uv = np.einsum("pk,pkc->pc", bary, mesh.uvs[f].astype(np.float64))
        s = mesh.texture.shape[0]
        return _sample_bilinear(mesh.texture, uv[:, 0] * s, (1.0 - uv[:, 1]) * s)
    return np.einsum("pk,pkc->pc", bary, mesh.vertex_colors[f].astype(np.float64))


def render_mesh(mesh: Mesh, viewmats: np.ndarray, Ks: np.ndarray, width: int, height: int,
                background: Sequence[float] = (1.0, 1.0, 1.0)
                ) -> tuple[np.ndarray, np.ndarray]:
    """Unlit renders of a mesh (its texture, else its vertex colours) into OpenCV cameras
    ``viewmats [V, 4, 4]``, ``Ks [V, 3, 3]``: colours ``[V, H, W, 3]`` on ``background`` and
    coverage ``[V, H, W]`` (1 where a face is hit; no anti-aliasing)."""
    images, masks = [], []
    bg = np.asarray(background, np.float64)
    for vm, k in zip(np.asarray(viewmats), np.asarray(Ks), strict=True):
        face_id, bary, _ = rasterize_mesh(mesh.vertices, mesh.faces, vm, k, width, height)
        hit = face_id >= 0
        img = np.broadcast_to(bg, (height, width, 3)).copy()
        img[hit] = _surface_colors(mesh, face_id[hit], bary[hit])
        images.append(img)
        masks.append(hit)
    return np.clip(np.stack(images), 0, 1).astype(np.float32), np.stack(masks).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# 3. UV atlas and texture bake
# ---------------------------------------------------------------------------------------------


def unwrap_uv(mesh: Mesh, texture_size: int = MeshConfig.texture_size) -> Mesh:
    """A UV atlas by xatlas (charts packed for ``texture_size`` texels with 2-texel padding);
    vertices on chart seams are split, colours carried over. UVs follow OBJ (v up)."""
    xatlas = _require("xatlas", "xatlas")
    atlas = xatlas.Atlas()
    atlas.add_mesh(mesh.vertices.astype(np.float32), mesh.faces.astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.padding = 2
    pack.resolution = int(texture_size)
    pack.bilinear = True
    atlas.generate(pack_options=pack)
    vmapping, indices, uvs = atlas[0]
    vmapping = np.asarray(vmapping, np.int64)
    return Mesh(vertices=mesh.vertices[vmapping], faces=np.asarray(indices, np.int32),
                vertex_colors=mesh.vertex_colors[vmapping], uvs=np.asarray(uvs, np.float32))


def bake_cameras(center: np.ndarray, radius: float, num_views: int, resolution: int,
                 fovy_deg: float = camera.DEFAULT_FOVY_DEG) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV ``viewmats [V, 4, 4]`` and ``Ks [V, 3, 3]`` of ``num_views`` cameras on a
    Fibonacci sphere around ``center``, looking at it, far enough that a sphere of ``radius``
    fits the view. No up axis is assumed (frame-agnostic)."""
    i = np.arange(num_views) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / num_views)
    azim = np.pi * (1.0 + 5.0 ** 0.5) * i
    dirs = np.stack([np.sin(polar) * np.cos(azim), np.sin(polar) * np.sin(azim), np.cos(polar)],
                    -1)
    dist = 1.05 * radius / math.sin(math.radians(fovy_deg) / 2.0)
    up = np.where(np.abs(dirs[:, 2:3]) < 0.9, [0.0, 0.0, 1.0], [0.0, 1.0, 0.0])
    c2w = camera.look_at(jnp.asarray(center + dist * dirs, jnp.float32),
                         jnp.asarray(center, jnp.float32), jnp.asarray(up, jnp.float32))
    viewmats, ks = camera.raster_cameras(c2w, resolution, resolution, fovy_deg)
    return np.asarray(viewmats, np.float64), np.asarray(ks, np.float64)


def _render_views(gaussians: Gaussians, viewmats: np.ndarray, ks: np.ndarray, res: int,
                  settings: str, batch: int = 8):
    """Premultiplied RGBA renders ``[H, W, 4]`` of the Gaussians (black background), one view at
    a time, rendered ``batch`` views per call. Slices are taken in NumPy and the buffer capacity
    is rounded up to a power of two, so every call has the same shapes (one compilation, also
    shared by later assets of a similar size)."""
    g = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), gaussians)
    vm = np.asarray(viewmats, np.float32)
    kk = np.asarray(ks, np.float32)
    pad = -len(vm) % batch
    if pad:
        vm = np.concatenate([vm, np.repeat(vm[-1:], pad, 0)])
        kk = np.concatenate([kk, np.repeat(kk[-1:], pad, 0)])
    batches = [(jnp.asarray(vm[i:i + batch]), jnp.asarray(kk[i:i + batch]))
               for i in range(0, len(vm), batch)]
    need = max(count_intersections(g, v, k, res, res, settings) for v, k in batches)
    capacity = 1 << max(10, int(math.ceil(math.log2(need * 1.05 + 1))))
    bg = jnp.zeros(3, jnp.float32)
    for i, (v, k) in enumerate(batches):
        out = rasterize(g, v, k, res, res, background=bg, settings=settings, capacity=capacity)
        rgba = np.concatenate([np.asarray(out.colors, np.float64),
                               np.asarray(out.alphas, np.float64)[..., None]], -1)
        yield from rgba[:min(batch, len(viewmats) - i * batch)]


def _texel_surface(mesh: Mesh, size: int) -> tuple[np.ndarray, ...]:
    """Texels covered by the atlas: flat index, face, barycentrics, world position and unit
    normal of each."""
    uv_px = mesh.uvs[mesh.faces].astype(np.float64) * [size, -size] + [0.0, size]
    face_id, bary, _ = _rasterize_triangles(uv_px, size, size)
    texel = np.nonzero(face_id.reshape(-1) >= 0)[0]
    f = face_id.reshape(-1)[texel]
    b = bary.reshape(-1, 3)[texel]
    pos = np.einsum("pk,pkc->pc", b, mesh.vertices[mesh.faces[f]].astype(np.float64))
    v = mesh.vertices.astype(np.float64)
    tri = mesh.faces[f]
    fn = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])
    vn = mesh.vertex_normals().astype(np.float64)
    nrm = np.einsum("pk,pkc->pc", b, vn[tri])
    nrm = np.where(np.sum(nrm * fn, 1, keepdims=True) > 0, nrm, fn)  # smooth unless flipped
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-20)
    return texel, f, b, pos, nrm


def bake_texture(mesh: Mesh, gaussians: Gaussians, config: MeshConfig | None = None,
                 cameras: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Texture ``[S, S, 3]`` for a mesh with UVs (:func:`unwrap_uv`), back-projected from
    renders of the Gaussians (see the module docstring). ``cameras`` (OpenCV viewmats, Ks of
    ``config.bake_resolution``² images) replaces the default :func:`bake_cameras`."""
    cfg = config or MeshConfig()
    if mesh.uvs is None:
        raise ValueError("bake_texture needs a mesh with UVs; call unwrap_uv(mesh) first")
    from scipy.ndimage import distance_transform_edt

    size, res = cfg.texture_size, cfg.bake_resolution
    texel, tex_face, tex_bary, pos, nrm = _texel_surface(mesh, size)
    if cameras is None:
        center = 0.5 * (mesh.vertices.min(0) + mesh.vertices.max(0)).astype(np.float64)
        radius = float(np.linalg.norm(mesh.vertices - center, axis=1).max())
        cameras = bake_cameras(center, radius, cfg.bake_views, res, cfg.bake_fovy)
    viewmats, ks = np.asarray(cameras[0], np.float64), np.asarray(cameras[1], np.float64)
    acc = np.zeros((len(texel), 3))
    wsum = np.zeros(len(texel))
    scale = float(np.ptp(mesh.vertices, axis=0).max())
    for v, rgba in enumerate(_render_views(gaussians, viewmats, ks, res, cfg.settings)):
        vm, k = viewmats[v], ks[v]
        eye = -vm[:3, :3].T @ vm[:3, 3]
        view_dir = eye - pos
        dist = np.linalg.norm(view_dir, axis=1)
        cos = np.sum(nrm * view_dir, 1) / dist
        sub = np.nonzero(cos > 0.05)[0]  # facing the camera
        cam = pos[sub] @ vm[:3, :3].T + vm[:3, 3]
        z = cam[:, 2]
        x = cam[:, 0] / np.maximum(z, 1e-6) * k[0, 0] + k[0, 2]
        y = cam[:, 1] / np.maximum(z, 1e-6) * k[1, 1] + k[1, 2]
        ok = (z > 1e-3) & (x >= 0) & (x < res) & (y >= 0) & (y < res)
        sub, z, x, y = sub[ok], z[ok], x[ok], y[ok]
        _, _, depth = rasterize_mesh(mesh.vertices, mesh.faces, vm, k, res, res)
        tolerance = 0.01 * scale + 2.0 * z / k[0, 0]  # 1 % of the asset + two pixels' depth
        visible = z <= depth[y.astype(np.int64), x.astype(np.int64)] + tolerance
        sub, x, y = sub[visible], x[visible], y[visible]
        sample = _sample_bilinear(rgba, x, y)
        opaque = sample[:, 3] > 0.5  # the Gaussians cover this pixel
        sub, sample = sub[opaque], sample[opaque]
        w = cos[sub] ** 2
        acc[sub] += w[:, None] * sample[:, :3] / sample[:, 3:]
        wsum[sub] += w
    colors = np.clip(acc / np.maximum(wsum, 1e-12)[:, None], 0.0, 1.0)
    unseen = wsum <= 0
    if unseen.any():  # no view sees these texels: the Gaussians' colour field (vertex colours)
        tri = mesh.faces[tex_face[unseen]]
        colors[unseen] = np.einsum("pk,pkc->pc", tex_bary[unseen],
                                   mesh.vertex_colors[tri].astype(np.float64))
    tex = np.zeros((size * size, 3))
    tex[texel] = colors
    filled = np.zeros(size * size, bool)
    filled[texel] = True
    filled = filled.reshape(size, size)
    if not filled.all():  # dilate: every empty texel takes its nearest covered texel's colour
        _, (ri, ci) = distance_transform_edt(~filled, return_indices=True)
        tex = tex.reshape(size, size, 3)[ri, ci]
    return tex.reshape(size, size, 3).astype(np.float32)


def texture_mesh(mesh: Mesh, gaussians: Gaussians, config: MeshConfig | None = None) -> Mesh:
    """:func:`unwrap_uv` then :func:`bake_texture`: the UV-textured variant of ``mesh``."""
    cfg = config or MeshConfig()
    if cfg.texture_size == 0:
        raise ValueError("texture_mesh: MeshConfig.texture_size is 0 (no texture requested)")
    uv_mesh = unwrap_uv(mesh, cfg.texture_size)
    uv_mesh.texture = bake_texture(uv_mesh, gaussians, cfg)
    return uv_mesh


# ---------------------------------------------------------------------------------------------
# 4. files
# ---------------------------------------------------------------------------------------------


def _to_uint8(colors: np.ndarray) -> np.ndarray:
    return np.round(np.clip(colors, 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_mesh(mesh: Mesh, what: str) -> None:
    if mesh.num_faces == 0 or len(mesh.vertices) == 0:
        raise MeshExportError(f"{what}: the mesh has no faces; nothing written")


def save_glb(mesh: Mesh, path: str | os.PathLike) -> None:
    """Binary glTF by trimesh: textured (PBR base colour, metallic 0, roughness 1) when the mesh
    has a texture, else vertex colours (``COLOR_0``). Coordinates as given (no axis change)."""
    _check_mesh(mesh, "save_glb")
    trimesh = _require("trimesh", "trimesh")
    from PIL import Image

    if mesh.texture is not None:
        material = trimesh.visual.material.PBRMaterial(
            baseColorTexture=Image.fromarray(_to_uint8(mesh.texture)), metallicFactor=0.0,
            roughnessFactor=1.0)
        visual = trimesh.visual.TextureVisuals(uv=mesh.uvs, material=material)
    else:
        rgba = np.concatenate([_to_uint8(mesh.vertex_colors),
                               np.full((len(mesh.vertices), 1), 255, np.uint8)], 1)
        visual = trimesh.visual.ColorVisuals(vertex_colors=rgba)
    tm = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces,
                         vertex_normals=mesh.vertex_normals(), visual=visual, process=False)
    data = tm.export(file_type="glb")
    with open(path, "wb") as f:
        f.write(data)


def save_obj(mesh: Mesh, path: str | os.PathLike) -> list[str]:
    """Wavefront ``.obj`` with normals; textured meshes also get ``<stem>.mtl`` and
    ``<stem>.png`` beside it (``map_Kd``), untextured ones per-vertex ``v x y z r g b`` colours.
    Returns the paths written."""
    _check_mesh(mesh, "save_obj")
    from PIL import Image

    path = os.fspath(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    folder = os.path.dirname(path)
    lines = ["# videomv-jax mesh export (coordinates in the Gaussians' frame)"]
    written = [path]
    textured = mesh.texture is not None
    if textured:
        lines += [f"mtllib {stem}.mtl", "usemtl material0"]
        with open(os.path.join(folder, f"{stem}.mtl"), "w") as f:
            f.write("newmtl material0\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\n"
                    f"map_Kd {stem}.png\n")
        Image.fromarray(_to_uint8(mesh.texture)).save(os.path.join(folder, f"{stem}.png"))
        written += [os.path.join(folder, f"{stem}.mtl"), os.path.join(folder, f"{stem}.png")]
        vlines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in mesh.vertices]
        lines += vlines + [f"vt {u:.6f} {v:.6f}" for u, v in mesh.uvs]
        face_fmt = "f {0}/{0}/{0} {1}/{1}/{1} {2}/{2}/{2}"
    else:
        lines += [f"v {x:.6f} {y:.6f} {z:.6f} {r:.4f} {g:.4f} {b:.4f}"
                  for (x, y, z), (r, g, b) in zip(mesh.vertices, mesh.vertex_colors,
                                                  strict=True)]
        face_fmt = "f {0}//{0} {1}//{1} {2}//{2}"
    lines += [f"vn {x:.5f} {y:.5f} {z:.5f}" for x, y, z in mesh.vertex_normals()]
    lines += [face_fmt.format(a, b, c) for a, b, c in (mesh.faces + 1).tolist()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return written


def export_mesh(gaussians: Gaussians, out_dir: str | os.PathLike, name: str = "mesh",
                config: MeshConfig | None = None) -> dict[str, Any]:
    """Mesh the Gaussians and write ``<name>.glb`` and ``<name>.obj`` (textured, with
    ``.mtl`` and ``.png``, unless ``config.texture_size == 0``: then vertex-coloured) in
    ``out_dir``. Nothing is written when the asset cannot be meshed (:class:`MeshExportError`).
    Returns a record: files, face / vertex counts, grid size and seconds per stage."""
    cfg = config or MeshConfig()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    field = opacity_field(gaussians, cfg.resolution, cfg.min_opacity, cfg.sigma_extent,
                          cfg.settings)
    timings["opacity_field_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mesh = extract_mesh(gaussians, cfg, field)
    timings["marching_cubes_cleanup_s"] = time.perf_counter() - t0
    if cfg.texture_size:
        t0 = time.perf_counter()
        mesh = unwrap_uv(mesh, cfg.texture_size)
        timings["uv_atlas_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        mesh.texture = bake_texture(mesh, gaussians, cfg)
        timings["texture_bake_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    glb = os.path.join(out_dir, f"{name}.glb")
    save_glb(mesh, glb)
    files = [glb, *save_obj(mesh, os.path.join(out_dir, f"{name}.obj"))]
    timings["write_s"] = time.perf_counter() - t0
    return {"files": files, "faces": mesh.num_faces, "vertices": int(len(mesh.vertices)),
            "textured": mesh.texture is not None, "grid": list(field.alpha.shape),
            "grid_spacing": field.spacing, "timings": timings,
            "config": dataclasses.asdict(cfg), "mesh": mesh}


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def _arg_type(kind: type, check, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            noun = "an int" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
        return value

    return parse


def add_mesh_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """The mesh options (``--mesh-*``), shared by this CLI and ``sample.py --mesh``; values are
    checked when parsed."""
    d = MeshConfig()
    parser.add_argument("--mesh-resolution", default=d.resolution,
                        type=_arg_type(int, lambda v: v >= 8, "an int >= 8"),
                        help="grid points along the asset's longest side (default %(default)s)")
    parser.add_argument("--mesh-level", default=d.level,
                        type=_arg_type(float, lambda v: 0 < v < 1, "in (0, 1)"),
                        help="opacity iso level of the surface (default %(default)s)")
    parser.add_argument("--mesh-faces", default=d.target_faces,
                        type=_arg_type(int, lambda v: v == 0 or v >= 4, "0 or an int >= 4"),
                        help="decimate to this many faces; 0: no decimation (default "
                        "%(default)s)")
    parser.add_argument("--mesh-texture", default=d.texture_size,
                        type=_arg_type(int, lambda v: v == 0 or v >= 16, "0 or an int >= 16"),
                        help="texture size in texels; 0: vertex colours only (default "
                        "%(default)s)")
    parser.add_argument("--mesh-bake-views", default=d.bake_views,
                        type=_arg_type(int, lambda v: v >= 1, "an int >= 1"),
                        help="cameras around the asset for the texture bake (default "
                        "%(default)s)")
    parser.add_argument("--mesh-bake-resolution", default=d.bake_resolution,
                        type=_arg_type(int, lambda v: v >= 16, "an int >= 16"),
                        help="image side of the bake renders (default %(default)s)")


def config_from_args(args: argparse.Namespace) -> MeshConfig:
    """:class:`MeshConfig` from the options of :func:`add_mesh_arguments`."""
    return MeshConfig(resolution=args.mesh_resolution, level=args.mesh_level,
                      target_faces=args.mesh_faces or None, texture_size=args.mesh_texture,
                      bake_views=args.mesh_bake_views,
                      bake_resolution=args.mesh_bake_resolution)


def write_mesh_outputs(args: argparse.Namespace, gaussians: Gaussians, out_dir: str
                       ) -> dict[str, Any]:
    """``sample.py --mesh``: export ``mesh.glb`` / ``mesh.obj`` into ``out_dir`` and return the
    entries for its ``run.json`` outputs (``{}`` without ``--mesh``). An asset that cannot be
    meshed (or a missing ``mesh`` extra) gets a warning on stderr and a ``mesh_error`` entry;
    the other outputs stand."""
    if not getattr(args, "mesh", False):
        return {}
    try:
        record = export_mesh(gaussians, out_dir, "mesh", config_from_args(args))
    except (MeshExportError, ImportError) as err:
        print(f"warning: no mesh written: {err}", file=sys.stderr)
        return {"mesh_error": str(err)}
    return {"mesh": [os.path.basename(f) for f in record["files"]],
            "mesh_faces": record["faces"],
            "mesh_seconds": round(sum(record["timings"].values()), 3)}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m videomv_jax.export.mesh asset.ply --out DIR [--name mesh] [--mesh-* ...]``."""
    from videomv_jax.render.gaussians import PlyFormatError, load_ply

    p = argparse.ArgumentParser(prog="python -m videomv_jax.export.mesh",
                                description="Mesh a 3D Gaussian .ply: .glb and .obj/.mtl/.png "
                                "in the .ply's own frame.")
    p.add_argument("ply", help="3D Gaussian Splatting .ply (e.g. sample.py's gaussians.ply)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", default="mesh", help="file stem (default: mesh)")
    add_mesh_arguments(p)
    args = p.parse_args(argv)
    if not os.path.isfile(args.ply):
        print(f"error: {args.ply!r} does not exist", file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(args)
        gaussians = load_ply(args.ply, drop_higher_sh=True)
        record = export_mesh(gaussians, args.out, args.name, cfg)
    except (MeshExportError, PlyFormatError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    t = record["timings"]
    print(f"wrote {', '.join(os.path.basename(f) for f in record['files'])} to {args.out}: "
          f"{record['faces']:,} faces, {record['vertices']:,} vertices "
          f"({sum(t.values()):.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
