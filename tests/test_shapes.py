"""Tests for the procedural shapes scenes and the analytic NumPy ray caster."""

from __future__ import annotations

import numpy as np
import pytest

from videomv_jax.data.shapes import (
    AMBIENT,
    PALETTE,
    SIZE_RANGE,
    TORUS_TOLERANCE,
    Primitive,
    Scene,
    contains,
    random_scene,
    render_scene,
    resolve_world,
    sample_scene_surface,
    sample_surface,
    surface_area,
)

FOVY = 39.6


def _single(kind: str, he, color: str = "red", minor: float = 0.0) -> Scene:
    p = Primitive(kind, color, (0.0, 0.0, 0.0), tuple(he), minor)
    return Scene((p,), f"a {color} {p.noun}")


def test_determinism_and_bounds():
    for seed in range(40):
        a, b = random_scene(seed), random_scene(seed)
        assert a == b
        for p in a.primitives:
            lo, hi = p.bounds()
            assert np.all(lo >= -0.5) and np.all(hi <= 0.5), (seed, p)
    ra, da = render_scene(random_scene(3), num_views=4, resolution=32)
    rb, db = render_scene(random_scene(3), num_views=4, resolution=32)
    np.testing.assert_array_equal(ra, rb)
    np.testing.assert_array_equal(da, db)
    assert random_scene(1) != random_scene(2)


def test_caption_matches_primitives():
    for seed in range(40):
        s = random_scene(seed)
        for p in s.primitives:
            assert p.color in s.caption and p.noun in s.caption, (seed, s.caption)
        assert len(s.caption.split(" on ")) == (len(s.primitives) if s.layout == "on" else 1)
        if s.layout == "next to":
            assert "next to" in s.caption or "side by side" in s.caption


def test_sphere_depth_and_silhouette():
    r, dist, res = 0.3, 2.0, 64
    rgba, depth = render_scene(_single("sphere", (r, r, r)), num_views=3, resolution=res)
    assert rgba.shape == (3, res, res, 4) and depth.shape == (3, res, res)
    assert rgba.dtype == np.float32 and depth.dtype == np.float32
    # pixel centres near the image centre: exact analytic depth along the optical axis
    f = res / (2 * np.tan(np.deg2rad(FOVY) / 2))
    for i, j in [(31, 31), (32, 33), (28, 36)]:
        dcam = np.array([(j - res / 2 + 0.5) / f, -(i - res / 2 + 0.5) / f, -1.0])
        u = dcam / np.linalg.norm(dcam)
        # ray from (0, 0, dist) along u in a frame centred on the sphere
        b = dist * u[2]
        t = -b - np.sqrt(b * b - (dist * dist - r * r))
        np.testing.assert_allclose(depth[:, i, j], t * -u[2], atol=2e-6)  # float32 rays
    # silhouette: pixels whose centre ray hits, vs the analytic cone half-angle asin(r / d)
    ys, xs = np.meshgrid(np.arange(res), np.arange(res), indexing="ij")
    ang = np.arctan(np.hypot(xs - res / 2 + 0.5, ys - res / 2 + 0.5) / f)
    expected = ang < np.arcsin(r / dist)
    for v in range(3):
        assert np.array_equal(rgba[v, ..., 3] > 0.5, expected)
        assert np.all(depth[v][~expected] == 0)
    # projected radius in pixels matches f * tan(asin(r / d)) within a pixel
    area = expected.sum()
    assert abs(np.sqrt(area / np.pi) - f * np.tan(np.arcsin(r / dist))) < 1.0


def test_box_face_head_on_and_shading():
    he = (0.2, 0.25, 0.15)
    rgba, depth = render_scene(
        _single("box", he, "blue"), num_views=4, resolution=33, elevation_deg=1e-6
    )
    # view 0 at azimuth 0 looks along -x at the +x face: depth = dist - hx over the face
    c = 16
    np.testing.assert_allclose(depth[0, c - 2 : c + 3, c - 2 : c + 3], 2.0 - he[0], atol=2e-6)
    # view 1 (azimuth 90) sees the +y face
    np.testing.assert_allclose(depth[1, c, c], 2.0 - he[1], atol=2e-6)
    hit = rgba[..., 3] > 0.5
    col = np.asarray(PALETTE["blue"], np.float32)
    factor = rgba[..., :3][hit] / col
    np.testing.assert_allclose(factor, factor[:, :1].repeat(3, 1), rtol=1e-5)
    assert factor.min() >= AMBIENT - 1e-6 and factor.max() <= 1 + 1e-6
    assert np.all(rgba[~hit] == 0)


@pytest.mark.parametrize("kind", ["cylinder", "cone"])
def test_cylinder_cone_side_depth(kind):
    r, hh = 0.25, 0.3
    rgba, depth = render_scene(
        _single(kind, (r, r, hh)), num_views=2, resolution=32, elevation_deg=1e-6
    )
    # central ray along -x through the origin: cylinder side at x = r, cone side at r / 2
    # (mid-height radius); pixel centres are offset by half a pixel, so use a tolerance
    f = 32 / (2 * np.tan(np.deg2rad(FOVY) / 2))
    expected = 2.0 - (r if kind == "cylinder" else r / 2)
    slope = 0.0 if kind == "cylinder" else r / (2 * hh)
    tol = 2.0 * 0.5 / f * (1 + slope) + 1e-5  # half-pixel offset at distance ~2
    assert abs(depth[0, 16, 16] - expected) < tol


def test_colours_of_random_scene_in_shading_range():
    s = random_scene(5)
    rgba, _ = render_scene(s, num_views=6, resolution=32)
    hit = rgba[..., 3] > 0.5
    assert hit.any()
    cols = np.stack([np.asarray(PALETTE[p.color], np.float32) for p in s.primitives])
    px = rgba[..., :3][hit]
    ok = np.zeros(len(px), bool)
    for c in cols:
        fac = px / np.maximum(c, 1e-6)
        same = np.ptp(fac, axis=1) < 1e-4
        ok |= same & (fac[:, 0] >= AMBIENT - 1e-5) & (fac[:, 0] <= 1 + 1e-5)
    assert ok.all()


def test_torus_depth():
    major, minor = 0.3, 0.1
    scene = _single("torus", (major + minor, major + minor, minor), "green", minor)
    rgba, depth = render_scene(scene, num_views=4, resolution=32, elevation_deg=30.0)
    # a few pixels vs the quartic solved by np.roots (the reference)
    f = 32 / (2 * np.tan(np.deg2rad(FOVY) / 2))
    from videomv_jax.render.camera import orbit_cameras

    c2w = np.asarray(orbit_cameras(4, 30.0, 2.0), np.float64)
    checked = 0
    for v, i, j in [(0, 16, 16), (0, 12, 9), (1, 18, 22), (2, 14, 20), (3, 20, 11)]:
        dcam = np.array([(j - 16 + 0.5) / f, -(i - 16 + 0.5) / f, -1.0])
        u = c2w[v, :3, :3] @ dcam
        u /= np.linalg.norm(u)
        o = c2w[v, :3, 3]
        # (|p|^2 + R^2 - a^2)^2 - 4 R^2 (x^2 + y^2) = 0 with p = o + t u
        k = o @ o + major**2 - minor**2
        ou = o @ u
        coeffs = [
            1.0,
            4 * ou,
            2 * k + 4 * ou**2 - 4 * major**2 * (u[0] ** 2 + u[1] ** 2),
            4 * k * ou - 8 * major**2 * (o[0] * u[0] + o[1] * u[1]),
            k * k - 4 * major**2 * (o[0] ** 2 + o[1] ** 2),
        ]
        roots = np.roots(coeffs)
        real = np.sort(roots.real[(np.abs(roots.imag) < 1e-9) & (roots.real > 0)])
        hit = rgba[v, i, j, 3] > 0.5
        assert hit == (real.size > 0)
        if hit:
            checked += 1
            # |sdf| <= TORUS_TOLERANCE; float32 rays/outputs add ~1e-6
            assert abs(depth[v, i, j] - real[0] * -(u @ c2w[v, :3, 2])) < TORUS_TOLERANCE + 5e-6
    assert checked >= 3


def test_bad_primitive():
    with pytest.raises(ValueError):
        Primitive("pyramid", "red", (0, 0, 0), (0.1, 0.1, 0.1))
    with pytest.raises(ValueError):
        Primitive("sphere", "teal", (0, 0, 0), (0.1, 0.1, 0.1))


def test_max_objects_and_fit_radius():
    # the defaults are the historical generator: same scene for the same seed
    for seed in range(5):
        assert random_scene(seed) == random_scene(seed, 3, None)
    counts = set()
    for seed in range(40):
        scene = random_scene(seed, max_objects=2, fit_radius=0.5)
        counts.add(len(scene.primitives))
        lo = np.min([p.bounds()[0] for p in scene.primitives], axis=0)
        hi = np.max([p.bounds()[1] for p in scene.primitives], axis=0)
        # bounding box centred on the origin, its circumscribed sphere of radius 0.5
        np.testing.assert_allclose((lo + hi) / 2, 0.0, atol=1e-12)
        assert np.linalg.norm(hi - lo) / 2 == pytest.approx(0.5, rel=1e-12)
        assert "small" not in scene.caption and "large" not in scene.caption
        assert np.all(lo >= -0.5) and np.all(hi <= 0.5)
    assert counts == {1, 2}
    with pytest.raises(ValueError, match="max_objects"):
        random_scene(0, max_objects=4)
    with pytest.raises(ValueError, match="fit_radius"):
        random_scene(0, fit_radius=0.9)


def test_next_to_left_right_is_caption_order_from_the_first_view():
    """``next_to="left_right"`` changes only the "next to" scenes, puts them along y, and the
    first-named object is the left one in view 0 (and the right one in view 12, behind)."""
    checked = 0
    for seed in range(60):
        plain = random_scene(seed, max_objects=2, fit_radius=0.5)
        lr = random_scene(seed, max_objects=2, fit_radius=0.5, next_to="left_right")
        if plain.layout != "next to":
            assert plain == lr
            continue
        assert lr.caption == plain.caption
        assert all(abs(p.center[0]) < 1e-12 for p in lr.primitives)
        if checked < 2:
            cols = []
            for p in lr.primitives:
                rgba, _ = render_scene(Scene((p,), ""), num_views=24, resolution=32)
                alpha = rgba[..., 3]
                w = np.arange(32)[None, None, :]
                cols.append((alpha * w).sum((1, 2)) / alpha.sum((1, 2)))  # mean column per view
            first, second = cols
            assert first[0] < 16 < second[0] and first[12] > 16 > second[12], (seed, cols)
        checked += 1
    assert checked >= 5
    with pytest.raises(ValueError, match="next_to"):
        random_scene(0, next_to="front_back")



def test_max_size_ratio_bounds_pairs_and_leaves_single_objects_alone():
    """``max_size_ratio`` shrinks every log size ratio of a scene by log(r) / log(3.2) (so the
    ratio stays within r; 1 = equal sizes) and changes nothing else: single objects, captions
    (no size words in the fitted world), kinds, colours and layouts are those of the unbounded
    scene."""
    full = SIZE_RANGE[1] / SIZE_RANGE[0]
    checked = 0
    for seed in range(120):
        free = random_scene(seed, 2, 0.5, "left_right")
        bound = random_scene(seed, 2, 0.5, "left_right", max_size_ratio=1.25)
        equal = random_scene(seed, 2, 0.5, "left_right", max_size_ratio=1.0)
        if len(free.primitives) == 1:
            assert free == bound == equal
            continue
        assert free.caption == bound.caption == equal.caption
        assert free.layout == bound.layout == equal.layout
        if not all(p.noun in ("sphere", "cube") for p in free.primitives):
            continue
        # spheres and cubes have half extents (s, s, s): the ratio of their first half
        # extents is the size ratio (every rescale, to fit or to the radius, is common)
        def log_ratio(scene):
            a, b = (p.half_extents[0] for p in scene.primitives)
            return np.log(b / a)

        np.testing.assert_allclose(log_ratio(bound), log_ratio(free) * np.log(1.25) / np.log(full),
                                   rtol=1e-9, atol=1e-12)
        assert abs(log_ratio(bound)) <= np.log(1.25) + 1e-12
        assert abs(log_ratio(equal)) < 1e-12
        checked += 1
    assert checked >= 3
    with pytest.raises(ValueError, match="max_size_ratio"):
        random_scene(0, max_size_ratio=0.5)
    with pytest.raises(ValueError, match="max_size_ratio"):
        random_scene(0, max_size_ratio=4.0)


def test_resolve_world_precedence_and_checks():
    """random_scene's defaults < base (a manifest's world_config) < overrides that are not None;
    a bad value raises random_scene's own error; an unknown setting is a TypeError."""
    assert resolve_world() == {"max_objects": 3, "fit_radius": None, "next_to": "random",
                               "max_size_ratio": None}
    base = {"max_objects": 2, "fit_radius": 0.5, "next_to": "left_right", "max_size_ratio": 1.25}
    assert resolve_world(base, max_objects=None, fit_radius=None) == base
    assert resolve_world(base, max_objects=1, next_to="random") == {
        **base, "max_objects": 1, "next_to": "random"}
    with pytest.raises(ValueError, match="max_size_ratio"):
        resolve_world(base, max_size_ratio=0.5)
    with pytest.raises(ValueError, match="max_size_ratio"):
        resolve_world({**base, "max_size_ratio": 4.0})
    with pytest.raises(TypeError, match="max_object"):
        resolve_world(base, max_object=1)


# analytic surfaces: one of each kind, off the origin
SURFACE_PRIMS = {
    "sphere": (Primitive("sphere", "red", (0.1, -0.2, 0.05), (0.2, 0.2, 0.2)),
               4 / 3 * np.pi * 0.2**3),
    "box": (Primitive("box", "blue", (-0.1, 0.0, 0.2), (0.1, 0.2, 0.3)), 8 * 0.1 * 0.2 * 0.3),
    "cylinder": (Primitive("cylinder", "green", (0.0, 0.1, -0.1), (0.15, 0.15, 0.25)),
                 np.pi * 0.15**2 * 0.5),
    "cone": (Primitive("cone", "yellow", (0.2, 0.0, 0.0), (0.2, 0.2, 0.1)),
             np.pi * 0.2**2 * 0.2 / 3),
    "torus": (Primitive("torus", "purple", (0.0, 0.0, -0.2), (0.3, 0.3, 0.08), 0.08),
              2 * np.pi**2 * 0.22 * 0.08**2),
}


@pytest.mark.parametrize("kind", sorted(SURFACE_PRIMS))
def test_surface_samples_are_on_the_surface_uniform_and_outward(kind):
    p, volume = SURFACE_PRIMS[kind]
    pts, nrm = sample_surface(p, 200_000, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-12)
    # on the surface, normals outward: a step of 1e-9 along −n is inside, along +n outside
    assert contains(p, pts - 1e-9 * nrm).all() and not contains(p, pts + 1e-9 * nrm).any()
    # divergence theorem, volume = ∮ (x − c)·n dA / 3 = area · E[(x − c)·n] / 3 under uniform
    # samples: a wrong area, a non-uniform draw (e.g. cone or torus rings) or wrong normals
    # miss the exact volume by far more than the Monte Carlo error (≈ 0.3 % at 2·10⁵ samples)
    estimate = surface_area(p) * np.mean(np.sum((pts - p.center) * nrm, 1)) / 3.0
    assert estimate == pytest.approx(volume, rel=0.01)
    # closed surface: ∮ n dA = 0
    assert np.abs(nrm.mean(0)).max() < 0.01


def test_ray_caster_hits_lie_on_the_analytic_surfaces():
    from videomv_jax.render.camera import camera_rays, orbit_cameras

    prims = tuple(p for p, _ in SURFACE_PRIMS.values())
    for p in prims:
        scene = Scene((p,), "x")
        _, depth = render_scene(scene, num_views=3, resolution=24, elevation_deg=20.0)
        c2w = np.asarray(orbit_cameras(3, 20.0, 2.0), np.float64)
        o, d = (np.asarray(a, np.float64) for a in camera_rays(c2w, 24, 24, FOVY))
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        t = depth / np.sum(d * -c2w[:, None, None, :3, 2], -1)
        hit = (o + t[..., None] * d)[depth > 0]
        dirs = d[depth > 0]
        assert len(hit) > 20
        # float32 depth: the hit is within ~1e-6 of the surface; 1e-4 either side of it along
        # the ray is outside before and inside after
        assert contains(p, hit + 1e-4 * dirs).all(), p.kind
        assert not contains(p, hit - 1e-4 * dirs).any(), p.kind


def test_scene_surface_is_the_outer_surface_of_the_union():
    sphere = Primitive("sphere", "red", (0.0, 0.0, 0.1), (0.2, 0.2, 0.2))
    box = Primitive("box", "blue", (0.0, 0.0, -0.1), (0.2, 0.2, 0.15))
    scene = Scene((sphere, box), "a red sphere on a blue box", "on")
    pts, nrm = sample_scene_surface(scene, 100_000, np.random.default_rng(1))
    out = pts + 1e-9 * nrm  # just off the surface: outside both (dropped points are inside)
    assert not (contains(sphere, out) | contains(box, out)).any()
    # the sphere's part inside the box (below z = 0.05, a cap of height 0.15) is dropped:
    # kept share of the sphere's draws = 1 − cap area / sphere area = 1 − 0.15 / 0.4
    on_sphere = np.abs(np.linalg.norm(pts - sphere.center, axis=1) - 0.2) < 1e-9
    drawn = 100_000 * surface_area(sphere) / (surface_area(sphere) + surface_area(box))
    assert on_sphere.sum() / drawn == pytest.approx(1 - 0.15 / 0.4, abs=0.01)
    assert len(pts) == len(nrm) < 100_000
    with pytest.raises(ValueError, match="n must be an int"):
        sample_surface(sphere, -1, np.random.default_rng(0))
