"""Procedural ``shapes`` multi-view data: random coloured primitives and an analytic ray caster.

Scenes hold one to three primitives (sphere, box/cube, cylinder, cone, torus) with colours
from :data:`PALETTE`, inside ``[-0.5, 0.5]^3`` of VideoMV's z-up world, either stacked ("on",
the first named primitive on top) or side by side ("next to"). :func:`random_scene` is
deterministic in its integer seed and builds a caption from the attributes and layout.

:func:`render_scene` renders the VideoMV orbit with an exact NumPy ray caster (independent of
the Gaussian rasterizer, so it can serve as ground truth): rays come from
:func:`videomv_jax.render.camera.camera_rays` (OpenGL camera, pixel centres), intersections are
analytic (sphere and cone/cylinder quadratics, box slabs, flat caps) except for the torus, which
is sphere-traced on its exact signed distance and refined by Newton steps until
``|sdf| <= TORUS_TOLERANCE`` (1e-7 world units; the hit point is that close to the surface).
Shading is Lambert with ambient under a fixed world light.

Analytic surfaces, for geometry ground truth (e.g. a mesh's Chamfer distance and normal
consistency): :func:`surface_area`, :func:`contains` (strictly inside), :func:`sample_surface`
(points uniform by area on one primitive, with outward unit normals) and
:func:`sample_scene_surface` (the outer surface of a scene's union).

Outputs: ``rgba`` float32 ``[V, H, W, 4]`` (premultiplied: background is ``0`` with alpha
``0``; alpha is exactly 0 or 1, no anti-aliasing) and ``depth`` float32 ``[V, H, W]``: the
OpenCV camera ``z`` (distance along the optical axis) of the nearest hit, ``0`` for background.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from videomv_jax.render.camera import DEFAULT_FOVY_DEG, camera_rays, orbit_cameras

__all__ = [
    "AMBIENT",
    "HELD_OUT_SEED_OFFSET",
    "KINDS",
    "LIGHT_DIR",
    "NEXT_TO",
    "PALETTE",
    "SIZE_RANGE",
    "TORUS_TOLERANCE",
    "WORLD_KEYS",
    "Primitive",
    "Scene",
    "contains",
    "random_scene",
    "render_scene",
    "resolve_world",
    "sample_scene_surface",
    "sample_surface",
    "surface_area",
]

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.1, 0.1),
    "green": (0.1, 0.7, 0.2),
    "blue": (0.1, 0.25, 0.85),
    "yellow": (0.95, 0.85, 0.1),
    "orange": (0.95, 0.5, 0.05),
    "purple": (0.55, 0.15, 0.7),
    "white": (0.95, 0.95, 0.95),
    "black": (0.08, 0.08, 0.08),
    "pink": (0.95, 0.45, 0.7),
    "brown": (0.5, 0.3, 0.12),
}
"""Named colours (linear RGB in [0, 1]) used by :func:`random_scene`."""

KINDS: tuple[str, ...] = ("sphere", "box", "cylinder", "cone", "torus")
"""Primitive kinds. Boxes with equal sides are called "cube" in captions."""

AMBIENT: float = 0.3
"""Ambient term: lit colour = colour * (AMBIENT + (1 - AMBIENT) * max(0, n . l))."""

LIGHT_DIR: np.ndarray = np.array([0.4, 0.3, 1.0]) / np.linalg.norm([0.4, 0.3, 1.0])
"""Fixed world-space (z-up) unit direction towards the light."""

TORUS_TOLERANCE: float = 1e-7
"""Torus hits satisfy ``|sdf(hit)| <= TORUS_TOLERANCE`` (world units)."""

_EPS = 1e-9


@dataclass(frozen=True)
class Primitive:
    """One primitive, axis-aligned, z-up.

    ``half_extents`` is the half size of its bounding box: sphere ``(r, r, r)``; box the half
    side lengths; cylinder ``(r, r, h/2)``; cone ``(r, r, h/2)`` with the base disk (radius
    ``r``) at the bottom and the apex at the top; torus ``(R + a, R + a, a)`` lying flat (axis
    z) with major radius ``R`` and tube radius ``a = minor_radius``.
    """

    kind: str
    color: str
    center: tuple[float, float, float]
    half_extents: tuple[float, float, float]
    minor_radius: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.color not in PALETTE:
            raise ValueError(f"color must be one of {sorted(PALETTE)}, got {self.color!r}")
        if len(self.center) != 3 or len(self.half_extents) != 3:
            raise ValueError("center and half_extents must have 3 components")
        if min(self.half_extents) <= 0:
            raise ValueError(f"half_extents must be > 0, got {self.half_extents}")
        if self.kind == "torus" and not 0 < self.minor_radius < self.half_extents[0]:
            raise ValueError("a torus needs 0 < minor_radius < half_extents[0]")

    @property
    def rgb(self) -> np.ndarray:
        """Colour as float64 ``[3]``."""
        return np.asarray(PALETTE[self.color], np.float64)

    @property
    def noun(self) -> str:
        """Shape word used in captions ("cube" for boxes with equal sides)."""
        if self.kind == "box":
            he = self.half_extents
            return "cube" if max(he) - min(he) < 1e-9 else "box"
        return self.kind

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounding box ``(lo, hi)``."""
        c, he = np.asarray(self.center), np.asarray(self.half_extents)
        return c - he, c + he


@dataclass(frozen=True)
class Scene:
    """Primitives plus a caption; ``layout`` is "single", "on" or "next to"."""

    primitives: tuple[Primitive, ...]
    caption: str
    layout: str = "single"
    seed: int | None = field(default=None, compare=False)


# --------------------------------------------------------------------------------------------
# scene generation
# --------------------------------------------------------------------------------------------


def _sample_shape(rng: np.random.Generator, kind: str, s: float) -> tuple[np.ndarray, float]:
    """Half extents (and torus tube radius) of a ``kind`` with overall half size ``s``."""
    if kind == "sphere":
        return np.array([s, s, s]), 0.0
    if kind == "box":
        if rng.random() < 0.5:
            return np.array([s, s, s]), 0.0
        return s * rng.uniform(0.5, 1.0, size=3), 0.0
    if kind in ("cylinder", "cone"):
        r, hh = s * rng.uniform(0.6, 1.0), s * rng.uniform(0.6, 1.0)
        return np.array([r, r, hh]), 0.0
    tube = s * rng.uniform(0.25, 0.4)
    return np.array([s, s, tube]), tube


def _phrase(p: Primitive, size_word: str) -> str:
    words = [w for w in (size_word, p.color, p.noun) if w]
    return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)


NEXT_TO = ("random", "left_right")

HELD_OUT_SEED_OFFSET = 1_000_000
"""First seed of the held-out ``shapes`` evaluation scenes (training must use seeds below)."""

WORLD_KEYS = ("max_objects", "fit_radius", "next_to", "max_size_ratio")
"""The :func:`random_scene` arguments that define a world (a data set's, a manifest's
``world_config``)."""

SIZE_RANGE: tuple[float, float] = (0.1, 0.32)
"""Range of a primitive's overall half size in :func:`random_scene` (before any fit)."""


def random_scene(seed: int, max_objects: int = 3, fit_radius: float | None = None,
                 next_to: str = "random", max_size_ratio: float | None = None) -> Scene:
    """Random scene of one to ``max_objects`` (1–3) primitives, deterministic in ``seed``.

    Layout "on" stacks the primitives centred on the z axis (caption lists top to bottom: "a
    red cube on a blue sphere"); "next to" puts them in a row on a common ground ("a red cube
    next to a blue sphere"; three: "a A, a B and a C side by side"), in caption order along x
    or y drawn at random (``next_to="random"``), or along y (``"left_right"``): from left to
    right as seen from the orbit's first view (azimuth 0, on the +x axis), so that the caption
    fixes the layout instead of leaving two orientations 90° apart. Both settings draw the same
    random numbers, so every other scene is identical between them. Overall half sizes are
    drawn independently from :data:`SIZE_RANGE`, so the two objects of a pair can differ by up
    to 3.2×; ``max_size_ratio`` (>= 1) narrows that: the log sizes of a multi-object scene are
    pulled towards their mean until the largest ratio is at most ``max_size_ratio`` (1: equal
    sizes), without drawing other random numbers, so single objects stay identical. Size words
    "small" / "large" are added for half sizes below 0.15 / above 0.25 (before any rescale
    to fit, which only shrinks multi-object scenes). Everything lies inside [-0.5, 0.5]^3.

    ``fit_radius`` (videomv-tiny's data) then recentres the scene's bounding box on the origin
    and scales it so that the box's circumscribed sphere has that radius: every scene fills
    the orbit's views alike, so the size words are dropped from the caption.
    """
    if max_objects not in (1, 2, 3):
        raise ValueError(f"max_objects must be 1, 2 or 3, got {max_objects!r}")
    if fit_radius is not None and not 0 < fit_radius <= 0.5:
        raise ValueError(f"fit_radius must be in (0, 0.5] (the scene stays inside the unit "
                         f"cube), got {fit_radius!r}")
    if next_to not in NEXT_TO:
        raise ValueError(f"next_to must be one of {NEXT_TO}, got {next_to!r}")
    if max_size_ratio is not None and not 1.0 <= max_size_ratio <= SIZE_RANGE[1] / SIZE_RANGE[0]:
        raise ValueError(f"max_size_ratio must be in [1, {SIZE_RANGE[1] / SIZE_RANGE[0]:g}] "
                         f"(1: equal sizes; None: independent sizes), got {max_size_ratio!r}")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, max_objects + 1))
    kinds = [str(k) for k in rng.choice(KINDS, size=n)]
    colors = [str(c) for c in rng.choice(sorted(PALETTE), size=n, replace=False)]
    sizes = rng.uniform(*SIZE_RANGE, size=n)
    if max_size_ratio is not None and n > 1:
        # every pairwise log ratio shrinks by the same factor, keeping the geometric mean
        logs = np.log(sizes)
        shrink = np.log(max_size_ratio) / np.log(SIZE_RANGE[1] / SIZE_RANGE[0])
        sizes = np.exp(logs.mean() + (logs - logs.mean()) * shrink)
    shapes = [_sample_shape(rng, k, float(s)) for k, s in zip(kinds, sizes, strict=True)]
    size_words = ["small" if s < 0.15 else "large" if s > 0.25 else "" for s in sizes]
    layout = "single" if n == 1 else ("on" if rng.random() < 0.5 else "next to")
    limit = 0.5 * 0.96  # keep a small margin inside the unit cube

    he = np.stack([sh[0] for sh in shapes])  # [n, 3]
    tubes = np.array([sh[1] for sh in shapes])
    centers = np.zeros((n, 3))
    if layout == "on":
        # cones only on top (index 0 = top): move them to the front
        order = sorted(range(n), key=lambda i: kinds[i] != "cone")
        kinds, colors, size_words = ([v[i] for i in order] for v in (kinds, colors, size_words))
        he, tubes = he[order], tubes[order]
        he_scale = min(1.0, limit / he[:, 2].sum())
        he, tubes = he * he_scale, tubes * he_scale
        z = -he[:, 2].sum()
        for i in reversed(range(n)):  # bottom first
            centers[i, 2] = z + he[i, 2]
            z += 2 * he[i, 2]
    elif layout == "next to":
        axis = int(rng.integers(0, 2))
        if next_to == "left_right":
            axis = 1  # +y is the first view's right-hand side
        gap = 0.04
        width = 2 * he[:, axis].sum() + gap * (n - 1)
        he_scale = min(1.0, (2 * limit - gap * (n - 1)) / (2 * he[:, axis].sum()))
        he, tubes = he * he_scale, tubes * he_scale
        width = 2 * he[:, axis].sum() + gap * (n - 1)
        pos = -width / 2
        ground = -he[:, 2].max()
        for i in range(n):
            centers[i, axis] = pos + he[i, axis]
            centers[i, 2] = ground + he[i, 2]
            pos += 2 * he[i, axis] + gap

    if fit_radius is not None:
        lo, hi = (centers - he).min(0), (centers + he).max(0)
        k = fit_radius / (0.5 * float(np.linalg.norm(hi - lo)))
        centers, he, tubes = (centers - 0.5 * (lo + hi)) * k, he * k, tubes * k
        size_words = [""] * n

    prims = tuple(
        Primitive(
            kind=kinds[i],
            color=colors[i],
            center=tuple(float(v) for v in centers[i]),
            half_extents=tuple(float(v) for v in he[i]),
            minor_radius=float(tubes[i]),
        )
        for i in range(n)
    )
    phrases = [_phrase(p, w) for p, w in zip(prims, size_words, strict=True)]
    if layout == "single":
        caption = phrases[0]
    elif layout == "on":
        caption = " on ".join(phrases)
    elif n == 2:
        caption = f"{phrases[0]} next to {phrases[1]}"
    else:
        caption = f"{phrases[0]}, {phrases[1]} and {phrases[2]} side by side"
    return Scene(primitives=prims, caption=caption, layout=layout, seed=seed)


# --------------------------------------------------------------------------------------------
# ray casting (all functions take ray origins relative to the primitive centre, [N, 3] float64)
# --------------------------------------------------------------------------------------------


def _quadratic_roots(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both roots of ``a t^2 + 2 b t + c = 0`` (nan where none), stable form; linear if a ~ 0."""
    disc = b * b - a * c
    ok = disc >= 0
    sq = np.sqrt(np.where(ok, disc, 0.0))
    q = -(b + np.copysign(sq, b))  # avoids cancellation
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = np.where(np.abs(a) > 1e-12, q / a, -c / (2 * b))
        t2 = np.where(q != 0, c / q, t1)
    nan = np.full_like(t1, np.nan)
    return np.where(ok, t1, nan), np.where(ok, t2, nan)


def _pick(t: np.ndarray, n: np.ndarray, t_new: np.ndarray, n_new: np.ndarray, valid: np.ndarray):
    """Keep the nearer of (t, n) and a candidate (t_new, n_new) where ``valid``."""
    better = valid & (t_new > _EPS) & (t_new < t)
    return np.where(better, t_new, t), np.where(better[:, None], n_new, n)


def _hit_sphere(o: np.ndarray, d: np.ndarray, p: Primitive):
    r = p.half_extents[0]
    b = np.sum(o * d, -1)
    c = np.sum(o * o, -1) - r * r
    t = np.full(len(o), np.inf)
    nrm = np.zeros_like(o)
    for root in _quadratic_roots(np.ones_like(b), b, c):
        x = o + root[:, None] * d
        t, nrm = _pick(t, nrm, root, x / r, np.isfinite(root))
    return t, nrm


def _hit_box(o: np.ndarray, d: np.ndarray, p: Primitive):
    he = np.asarray(p.half_extents)
    safe = np.where(np.abs(d) < 1e-300, 1e-300, d)
    t1, t2 = (-he - o) / safe, (he - o) / safe
    tlo, thi = np.minimum(t1, t2), np.maximum(t1, t2)
    tmin, tmax = tlo.max(-1), thi.min(-1)
    hit = (tmax >= tmin) & (tmax > _EPS)
    t_hit = np.where(tmin > _EPS, tmin, tmax)  # inside the box: exit face
    axis = np.where(tmin > _EPS, tlo.argmax(-1), thi.argmin(-1))
    nrm = np.zeros_like(o)
    idx = np.arange(len(o))
    nrm[idx, axis] = -np.sign(d[idx, axis])
    return np.where(hit, t_hit, np.inf), nrm


def _hit_cap(o, d, z0, radius, nz, t, nrm):
    with np.errstate(divide="ignore", invalid="ignore"):
        tc = (z0 - o[:, 2]) / d[:, 2]
    x = o + np.nan_to_num(tc)[:, None] * d
    valid = np.isfinite(tc) & (x[:, 0] ** 2 + x[:, 1] ** 2 <= radius * radius)
    cap_n = np.broadcast_to(np.array([0.0, 0.0, nz]), o.shape)
    return _pick(t, nrm, tc, cap_n, valid)


def _hit_cylinder(o: np.ndarray, d: np.ndarray, p: Primitive):
    r, hh = p.half_extents[0], p.half_extents[2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - r * r
    t = np.full(len(o), np.inf)
    nrm = np.zeros_like(o)
    for root in _quadratic_roots(a, b, c):
        x = o + np.nan_to_num(root)[:, None] * d
        side_n = x * np.array([1.0, 1.0, 0.0]) / r
        t, nrm = _pick(t, nrm, root, side_n, np.isfinite(root) & (np.abs(x[:, 2]) <= hh))
    t, nrm = _hit_cap(o, d, hh, r, 1.0, t, nrm)
    t, nrm = _hit_cap(o, d, -hh, r, -1.0, t, nrm)
    return t, nrm


def _hit_cone(o: np.ndarray, d: np.ndarray, p: Primitive):
    # x^2 + y^2 = k^2 (hh - z)^2 for z in [-hh, hh]; base radius r at z = -hh, apex at +hh
    r, hh = p.half_extents[0], p.half_extents[2]
    k2 = (r / (2 * hh)) ** 2
    w0 = hh - o[:, 2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2 - k2 * d[:, 2] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1] + k2 * w0 * d[:, 2]
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - k2 * w0 * w0
    t = np.full(len(o), np.inf)
    nrm = np.zeros_like(o)
    for root in _quadratic_roots(a, b, c):
        x = o + np.nan_to_num(root)[:, None] * d
        g = np.stack([x[:, 0], x[:, 1], k2 * (hh - x[:, 2])], -1)
        g = g / np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), 1e-300)
        t, nrm = _pick(t, nrm, root, g, np.isfinite(root) & (np.abs(x[:, 2]) <= hh))
    t, nrm = _hit_cap(o, d, -hh, r, -1.0, t, nrm)
    return t, nrm


def _torus_sdf(x: np.ndarray, major: float, minor: float) -> np.ndarray:
    q = np.sqrt(x[..., 0] ** 2 + x[..., 1] ** 2) - major
    return np.sqrt(q * q + x[..., 2] ** 2) - minor


def _torus_normal(x: np.ndarray, major: float) -> np.ndarray:
    rho = np.maximum(np.sqrt(x[:, 0] ** 2 + x[:, 1] ** 2), 1e-300)
    ring = np.stack([x[:, 0] / rho * major, x[:, 1] / rho * major, np.zeros(len(x))], -1)
    g = x - ring
    return g / np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), 1e-300)


def _hit_torus(o: np.ndarray, d: np.ndarray, p: Primitive, max_steps: int = 256):
    """Sphere tracing of the exact torus SDF inside its bounding box, then Newton refinement.

    The SDF is an exact distance, so marching never steps through the surface; marching
    stops at ``|sdf| < TORUS_TOLERANCE / 10`` or on leaving the box. Newton steps along the
    ray (``t -= sdf / (grad . d)``, only accepted when they reduce ``|sdf|``) polish hits;
    final hits satisfy ``|sdf| <= TORUS_TOLERANCE``.
    """
    minor = p.minor_radius
    major = p.half_extents[0] - minor
    he = np.asarray(p.half_extents)
    safe = np.where(np.abs(d) < 1e-300, 1e-300, d)
    t1, t2 = (-he - o) / safe, (he - o) / safe
    tmin = np.maximum(np.minimum(t1, t2).max(-1), 0.0)
    tmax = np.maximum(t1, t2).min(-1)
    t_out = np.full(len(o), np.inf)
    nrm_out = np.zeros_like(o)
    idx = np.nonzero(tmax >= tmin)[0]
    if idx.size == 0:
        return t_out, nrm_out
    oo, dd, t, tend = o[idx], d[idx], tmin[idx].copy(), tmax[idx]
    active = np.ones(len(idx), bool)
    for _ in range(max_steps):
        a = np.nonzero(active)[0]
        if a.size == 0:
            break
        sdf = _torus_sdf(oo[a] + t[a, None] * dd[a], major, minor)
        t[a] += np.maximum(sdf, 0.0)
        active[a] = (sdf > TORUS_TOLERANCE * 0.1) & (t[a] <= tend[a])
    for _ in range(4):  # Newton polish
        x = oo + t[:, None] * dd
        sdf = _torus_sdf(x, major, minor)
        slope = np.sum(_torus_normal(x, major) * dd, -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_new = t - sdf / slope
        better = np.isfinite(t_new) & (
            np.abs(_torus_sdf(oo + np.nan_to_num(t_new)[:, None] * dd, major, minor)) < np.abs(sdf)
        )
        t = np.where(better, t_new, t)
    x = oo + t[:, None] * dd
    hit = (np.abs(_torus_sdf(x, major, minor)) <= TORUS_TOLERANCE) & (t <= tend + 1e-6)
    t_out[idx] = np.where(hit, t, np.inf)
    nrm_out[idx] = _torus_normal(x, major)
    return t_out, nrm_out


_HITTERS = {
    "sphere": _hit_sphere,
    "box": _hit_box,
    "cylinder": _hit_cylinder,
    "cone": _hit_cone,
    "torus": _hit_torus,
}


def resolve_world(base: Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """A world's :data:`WORLD_KEYS` settings: :func:`random_scene`'s defaults, updated by
    ``base`` (e.g. a package manifest's ``world_config``), then by the ``overrides`` that are
    not ``None`` (command-line options). Checked by drawing scene 0, so a bad value raises the
    ``ValueError`` of :func:`random_scene` before any work is done."""
    unknown = sorted(set(overrides) - set(WORLD_KEYS))
    if unknown:
        raise TypeError(f"resolve_world: unknown world settings {unknown}; known: {WORLD_KEYS}")
    defaults = inspect.signature(random_scene).parameters
    world = {key: defaults[key].default for key in WORLD_KEYS}
    world.update(base or {})
    world.update({key: value for key, value in overrides.items() if value is not None})
    random_scene(0, *(world[key] for key in WORLD_KEYS))
    return world


def render_scene(
    scene: Scene,
    num_views: int = 24,
    resolution: int = 64,
    elevation_deg: float = 15.0,
    distance: float = 2.0,
    fovy_deg: float = DEFAULT_FOVY_DEG,
) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast ``scene`` on the VideoMV orbit (:func:`orbit_cameras`, azimuth 0 first).

    Returns ``rgba`` float32 ``[V, H, W, 4]`` (colour * shading, alpha 1 on hits, all zeros
    on background) and ``depth`` float32 ``[V, H, W]`` (OpenCV camera z of the nearest hit,
    i.e. the distance along the optical axis; 0 on background). ``H = W = resolution``.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    c2w = np.asarray(orbit_cameras(num_views, elevation_deg, distance), np.float64)
    origins, dirs = camera_rays(c2w, resolution, resolution, fovy_deg)
    o = np.asarray(origins, np.float64).reshape(-1, 3)
    d = np.asarray(dirs, np.float64).reshape(-1, 3)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)  # float32 rays -> float64 unit

    t = np.full(len(o), np.inf)
    nrm = np.zeros_like(o)
    rgb = np.zeros_like(o)
    for p in scene.primitives:
        tp, np_ = _HITTERS[p.kind](o - np.asarray(p.center), d, p)
        better = tp < t
        t = np.where(better, tp, t)
        nrm = np.where(better[:, None], np_, nrm)
        rgb = np.where(better[:, None], p.rgb, rgb)
    hit = np.isfinite(t)
    nrm = np.where((np.sum(nrm * d, -1) > 0)[:, None], -nrm, nrm)  # face the camera
    shade = AMBIENT + (1.0 - AMBIENT) * np.clip(nrm @ LIGHT_DIR, 0.0, None)
    color = np.where(hit[:, None], rgb * shade[:, None], 0.0)
    forward = np.repeat(-c2w[:, :3, 2], resolution * resolution, axis=0)
    depth = np.where(hit, np.nan_to_num(t, posinf=0.0) * np.sum(d * forward, -1), 0.0)
    shape = (num_views, resolution, resolution)
    rgba = np.concatenate([color, hit[:, None].astype(np.float64)], -1).reshape(*shape, 4)
    return rgba.astype(np.float32), depth.reshape(shape).astype(np.float32)


# --------------------------------------------------------------------------------------------
# analytic surfaces (ground truth for geometry)
# --------------------------------------------------------------------------------------------


def _torus_radii(p: Primitive) -> tuple[float, float]:
    return p.half_extents[0] - p.minor_radius, p.minor_radius


def _part_areas(p: Primitive) -> np.ndarray:
    """Areas of a primitive's smooth pieces, in the order :func:`sample_surface` draws them:
    sphere / torus: one; box: the ±x, ±y, ±z face pairs; cylinder: side, two caps; cone:
    side, base."""
    he = np.asarray(p.half_extents, np.float64)
    if p.kind == "sphere":
        return np.array([4.0 * np.pi * he[0] ** 2])
    if p.kind == "box":
        return 8.0 * np.array([he[1] * he[2], he[0] * he[2], he[0] * he[1]])
    r, hh = he[0], he[2]
    if p.kind == "cylinder":
        return np.array([4.0 * np.pi * r * hh, 2.0 * np.pi * r * r])
    if p.kind == "cone":
        return np.array([np.pi * r * np.hypot(r, 2.0 * hh), np.pi * r * r])
    major, minor = _torus_radii(p)
    return np.array([4.0 * np.pi ** 2 * major * minor])


def surface_area(p: Primitive) -> float:
    """Exact surface area of ``p`` (world units²)."""
    return float(_part_areas(p).sum())


def contains(p: Primitive, points: np.ndarray) -> np.ndarray:
    """Whether world ``points [P, 3]`` lie strictly inside ``p`` (bool ``[P]``; the surface
    itself is outside)."""
    x = np.asarray(points, np.float64) - np.asarray(p.center)
    he = np.asarray(p.half_extents, np.float64)
    if p.kind == "sphere":
        return np.sum(x * x, -1) < he[0] ** 2
    if p.kind == "box":
        return np.all(np.abs(x) < he, -1)
    if p.kind == "torus":
        return _torus_sdf(x, *_torus_radii(p)) < 0
    rho2 = x[:, 0] ** 2 + x[:, 1] ** 2
    in_height = np.abs(x[:, 2]) < he[2]
    if p.kind == "cylinder":
        return in_height & (rho2 < he[0] ** 2)
    k = he[0] / (2.0 * he[2])  # cone: radius k·(hh − z), base r at z = −hh
    return in_height & (rho2 < (k * (he[2] - x[:, 2])) ** 2)


def _disk(rng: np.random.Generator, n: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    rho, theta = radius * np.sqrt(rng.random(n)), rng.uniform(0.0, 2.0 * np.pi, n)
    return rho * np.cos(theta), rho * np.sin(theta)


def sample_surface(p: Primitive, n: int, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniform by area on the surface of ``p`` and their outward unit normals,
    both float64 ``[n, 3]`` in world coordinates. On the edges of boxes, cylinders and cones
    (measure zero) a point takes the normal of the piece it was drawn on."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    he = np.asarray(p.half_extents, np.float64)
    areas = _part_areas(p)
    part = rng.choice(len(areas), n, p=areas / areas.sum())
    pts, nrm = np.zeros((n, 3)), np.zeros((n, 3))
    if p.kind == "sphere":
        d = rng.normal(size=(n, 3))
        nrm = d / np.linalg.norm(d, axis=1, keepdims=True)
        pts = he[0] * nrm
    elif p.kind == "box":
        sign = rng.choice([-1.0, 1.0], n)
        pts = rng.uniform(-1.0, 1.0, (n, 3))
        pts[np.arange(n), part] = sign
        pts *= he
        nrm[np.arange(n), part] = sign
    elif p.kind in ("cylinder", "cone"):
        r, hh = he[0], he[2]
        cap = part == 1
        theta = rng.uniform(0.0, 2.0 * np.pi, n)
        if p.kind == "cylinder":
            rho = np.full(n, r)
            z = rng.uniform(-hh, hh, n)
            nrm[:] = np.stack([np.cos(theta), np.sin(theta), np.zeros(n)], -1)
            cap_z = np.where(rng.random(n) < 0.5, -hh, hh)
        else:  # lateral area grows linearly with the distance u from the apex: u = √U
            u = np.sqrt(rng.random(n))
            rho, z = r * u, hh - 2.0 * hh * u
            g = np.stack([np.cos(theta), np.sin(theta), np.full(n, r / (2.0 * hh))], -1)
            nrm[:] = g / np.linalg.norm(g, axis=1, keepdims=True)
            cap_z = np.full(n, -hh)
        pts = np.stack([rho * np.cos(theta), rho * np.sin(theta), z], -1)
        cx, cy = _disk(rng, n, r)
        pts[cap] = np.stack([cx, cy, cap_z], -1)[cap]
        nrm[cap] = np.stack([np.zeros(n), np.zeros(n), np.sign(cap_z)], -1)[cap]
    else:  # torus: the area element (R + a cos φ) a dθ dφ; φ drawn by rejection
        major, minor = _torus_radii(p)
        phi = np.empty(0)
        while len(phi) < n:
            cand = rng.uniform(0.0, 2.0 * np.pi, 2 * (n - len(phi)) + 8)
            keep = rng.random(len(cand)) * (major + minor) < major + minor * np.cos(cand)
            phi = np.concatenate([phi, cand[keep]])
        phi = phi[:n]
        theta = rng.uniform(0.0, 2.0 * np.pi, n)
        nrm = np.stack([np.cos(phi) * np.cos(theta), np.cos(phi) * np.sin(theta),
                        np.sin(phi)], -1)
        ring = np.stack([major * np.cos(theta), major * np.sin(theta), np.zeros(n)], -1)
        pts = ring + minor * nrm
    return pts + np.asarray(p.center, np.float64), nrm


def sample_scene_surface(scene: Scene, n: int, rng: np.random.Generator
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Points uniform by area on the outer surface of the union of ``scene``'s primitives,
    with outward unit normals: ``n`` draws spread over the primitives by their area, of which
    those strictly inside another primitive are dropped (so fewer than ``n`` come back when
    primitives overlap)."""
    areas = np.array([surface_area(p) for p in scene.primitives])
    counts = rng.multinomial(n, areas / areas.sum())
    pts, nrm = [], []
    for i, (p, count) in enumerate(zip(scene.primitives, counts, strict=True)):
        x, nx = sample_surface(p, int(count), rng)
        hidden = np.zeros(len(x), bool)
        for j, q in enumerate(scene.primitives):
            if j != i:
                hidden |= contains(q, x)
        pts.append(x[~hidden])
        nrm.append(nx[~hidden])
    return np.concatenate(pts), np.concatenate(nrm)
