"""The tiled rasterizer against the exact per-pixel reference: values, gradients, capacity."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from videomv_jax.render import camera
from videomv_jax.render import rasterize as R
from videomv_jax.render.gaussians import Gaussians
from videomv_jax.render.reference import render_reference

WIDTH, HEIGHT = 45, 38  # not multiples of the 16 px tile: partial tiles at the border
BACKGROUND = (0.2, 0.5, 0.9)


def hard_scene(seed: int, n: int = 160, dtype=np.float32) -> Gaussians:
    """Overlapping Gaussians with every awkward case: behind the camera, at the image border,
    tiny (sub-pixel) and huge (many tiles), near-opaque and faint, non-unit quaternions."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-0.8, 0.8, (n, 3))
    means[:10] *= 4.0  # far out: some behind some cameras, some outside the frustum
    log_s = rng.uniform(-5.0, -2.3, (n, 3))
    log_s[10:20] = rng.uniform(-9.0, -7.0, (10, 3))  # tiny
    log_s[20:25] = rng.uniform(-0.3, 0.3, (5, 3))  # huge
    quats = rng.normal(size=(n, 4))
    quats *= rng.uniform(0.7, 1.2, (n, 1)) / np.linalg.norm(quats, axis=1, keepdims=True)
    opac = rng.uniform(0.02, 0.7, n)
    opac[20:25] = rng.uniform(0.02, 0.08, 5)  # the huge ones are faint
    opac[25:60] = rng.uniform(0.95, 1.0, 35)  # near-opaque cluster: pixels saturate, stop early
    means[25:60] = rng.uniform(-0.15, 0.15, (35, 3))
    log_s[25:60] = rng.uniform(-2.5, -2.0, (35, 3))
    colors = rng.uniform(0, 1, (n, 3))
    arrays = [means, np.exp(log_s), quats, opac, colors]
    return Gaussians(*(jnp.asarray(a, dtype) for a in arrays))


def orbit(num_views: int, dtype=jnp.float32, distance: float = 3.5):
    c2w = camera.orbit_cameras(num_views, elevation_deg=20.0, distance=distance)
    vm, ks = camera.raster_cameras(c2w, WIDTH, HEIGHT)
    return vm.astype(dtype), ks.astype(dtype)


def render_both(g, vm, ks, preset, **kwargs):
    fast = R.rasterize(g, vm, ks, WIDTH, HEIGHT, background=jnp.asarray(BACKGROUND, g.means.dtype),
                       settings=preset, **kwargs)
    ref = render_reference(g, vm, ks, WIDTH, HEIGHT, jnp.asarray(BACKGROUND, g.means.dtype),
                           preset)
    return fast, ref


@pytest.mark.parametrize("preset", ["inria", "gsplat"])
@pytest.mark.parametrize("seed", [0, 1])
def test_forward_matches_reference(preset, seed):
    g = hard_scene(seed)
    vm, ks = orbit(4)
    # one camera inside the cloud: many Gaussians behind it and huge ones on screen
    vm = vm.at[0, 2, 3].add(-3.2)
    fast, (color, alpha, depth) = render_both(g, vm, ks, preset)
    assert not bool(fast.info.overflow)
    assert int(fast.info.intersections) == R.count_intersections(g, vm, ks, WIDTH, HEIGHT, preset)
    # float32: both accumulate the same terms; only the product association differs (~1e-7).
    np.testing.assert_allclose(fast.colors, color, atol=1e-5, rtol=0)
    np.testing.assert_allclose(fast.alphas, alpha, atol=1e-5, rtol=0)
    np.testing.assert_allclose(fast.depths, depth, atol=1e-5 * float(jnp.max(depth)), rtol=0)
    # the scene is non-trivial: visible coverage, saturated pixels and background both present
    assert float(jnp.max(alpha)) > 0.999 and float(jnp.min(alpha)) < 0.6
    assert float(jnp.mean(alpha > 0.9998)) > 0.01  # early termination is exercised


def test_forward_float64_is_exact():
    with jax.enable_x64(True):
        g = hard_scene(3, dtype=np.float64)
        vm, ks = orbit(2, jnp.float64)
        fast, (color, alpha, depth) = render_both(g, vm, ks, "inria")
        assert fast.colors.dtype == jnp.float64
        np.testing.assert_allclose(fast.colors, color, atol=1e-12, rtol=0)
        np.testing.assert_allclose(fast.depths, depth, atol=1e-11, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunk_size_does_not_change_the_image(chunk_size):
    g = hard_scene(4)
    vm, ks = orbit(2)
    base = R.rasterize(g, vm, ks, WIDTH, HEIGHT)
    other = R.rasterize(g, vm, ks, WIDTH, HEIGHT,
                        settings=R.get_settings("inria", chunk_size=chunk_size))
    np.testing.assert_allclose(other.colors, base.colors, atol=2e-6, rtol=0)


def _loss_fns(vm, ks, preset, dtype, key=0):
    views = vm.shape[0]
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(key), 3)
    g_color = jax.random.normal(k1, (views, HEIGHT, WIDTH, 3), dtype)
    g_depth = jax.random.normal(k2, (views, HEIGHT, WIDTH), dtype)
    g_alpha = jax.random.normal(k3, (views, HEIGHT, WIDTH), dtype)

    def total(color, alpha, depth):
        return jnp.sum(color * g_color) + jnp.sum(depth * g_depth) + jnp.sum(alpha * g_alpha)

    def fast(g, bg):
        out = R.rasterize(g, vm, ks, WIDTH, HEIGHT, background=bg, settings=preset,
                          capacity=1 << 15)
        return total(out.colors, out.alphas, out.depths)

    def ref(g, bg):
        return total(*render_reference(g, vm, ks, WIDTH, HEIGHT, bg, preset))

    return fast, ref


@pytest.mark.parametrize("preset", ["inria", "gsplat"])
def test_gradients_match_reference_float64(preset):
    with jax.enable_x64(True):
        g = hard_scene(5, n=120, dtype=np.float64)
        vm, ks = orbit(2, jnp.float64)
        bg = jnp.asarray(BACKGROUND, jnp.float64)
        fast, ref = _loss_fns(vm, ks, preset, jnp.float64)
        gf = jax.grad(fast, argnums=(0, 1))(g, bg)
        gr = jax.grad(ref, argnums=(0, 1))(g, bg)
        names = ["means", "scales", "rotations", "opacities", "colors", "background"]
        for name, a, b in zip(names, jax.tree_util.tree_leaves(gf), jax.tree_util.tree_leaves(gr),
                              strict=True):
            assert bool(jnp.all(jnp.isfinite(a))), name
            assert float(jnp.max(jnp.abs(b))) > 0, name  # the loss depends on every field
            # float64: the replayed backward and autodiff of the scan agree to rounding.
            np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9 * float(jnp.max(jnp.abs(b))),
                                       err_msg=name)


def test_gradients_match_reference_float32():
    g = hard_scene(6, n=120)
    vm, ks = orbit(2)
    bg = jnp.asarray(BACKGROUND, jnp.float32)
    fast, ref = _loss_fns(vm, ks, "inria", jnp.float32)
    gf = jax.tree_util.tree_leaves(jax.grad(fast, argnums=(0, 1))(g, bg))
    gr = jax.tree_util.tree_leaves(jax.grad(ref, argnums=(0, 1))(g, bg))
    for a, b in zip(gf, gr, strict=True):
        # float32: sums over ~1.7k pixels in a different order; 1e-4 of the largest entry.
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_gradients_match_finite_differences():
    """Central differences of the tiled renderer itself, float64, on a smooth scene (no
    Gaussian near a culling, clamping or tile boundary for the probed parameters)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(7)
        n = 12
        g = Gaussians(
            jnp.asarray(rng.uniform(-0.3, 0.3, (n, 3))),
            jnp.asarray(rng.uniform(0.05, 0.12, (n, 3))),
            jnp.asarray(rng.normal(size=(n, 4))),
            jnp.asarray(rng.uniform(0.2, 0.6, n)),
            jnp.asarray(rng.uniform(0, 1, (n, 3))),
        )
        vm, ks = orbit(1, jnp.float64, distance=2.0)
        bg = jnp.asarray(BACKGROUND, jnp.float64)
        fast, _ = _loss_fns(vm, ks, "gsplat", jnp.float64)
        grads = jax.grad(fast)(g, bg)
        eps = 1e-6
        checked = 0
        for field in ["means", "scales", "rotations", "opacities", "colors"]:
            value = getattr(g, field)
            for index in [(0,) + (0,) * (value.ndim - 1), (n - 1,) + (value.ndim - 1) * (1,)]:
                plus = g.replace(**{field: value.at[index].add(eps)})
                minus = g.replace(**{field: value.at[index].add(-eps)})
                numeric = (fast(plus, bg) - fast(minus, bg)) / (2 * eps)
                analytic = getattr(grads, field)[index]
                np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-6,
                                           err_msg=f"{field}{index}")
                checked += 1
        assert checked == 10


def test_batched_scenes_and_views_equal_single_renders():
    scenes = [hard_scene(8, n=90), hard_scene(9, n=90)]
    batch = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *scenes)
    vm, ks = orbit(3)
    bg = jnp.asarray([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])[:, None, :]  # per scene
    out = R.rasterize(batch, vm, ks, WIDTH, HEIGHT, background=bg)
    assert out.colors.shape == (2, 3, HEIGHT, WIDTH, 3)
    for i, scene in enumerate(scenes):
        single = R.rasterize(scene, vm, ks, WIDTH, HEIGHT, background=bg[i, 0])
        np.testing.assert_allclose(out.colors[i], single.colors, atol=1e-6, rtol=0)
        np.testing.assert_allclose(out.alphas[i], single.alphas, atol=1e-6, rtol=0)

    # vmap over scenes of the jitted renderer equals the batched call
    @jax.jit
    def one(g, b):
        return R.rasterize(g, vm, ks, WIDTH, HEIGHT, background=b, capacity=1 << 15).colors

    mapped = jax.vmap(one)(batch, bg)
    np.testing.assert_allclose(mapped, out.colors, atol=1e-6, rtol=0)


def test_overflow_is_an_error_not_blank_pixels():
    g = hard_scene(10)
    vm, ks = orbit(2)
    needed = R.count_intersections(g, vm, ks, WIDTH, HEIGHT)
    small = needed // 2

    with pytest.raises(R.CapacityOverflowError, match=f"needs {needed:,}"):
        R.rasterize(g, vm, ks, WIDTH, HEIGHT, capacity=small)

    @jax.jit
    def render(g):
        return R.rasterize(g, vm, ks, WIDTH, HEIGHT, capacity=small)

    out = render(g)
    assert bool(out.info.overflow) and int(out.info.intersections) == needed
    assert float(out.info.occupancy) > 1.0
    assert bool(jnp.all(jnp.isnan(out.colors)))  # poisoned: can never pass for a render
    with pytest.raises(R.CapacityOverflowError):
        out.info.raise_if_overflow()

    def checked(g):
        out = R.rasterize(g, vm, ks, WIDTH, HEIGHT, capacity=small)
        R.check_no_overflow(out.info)
        return out.colors

    err, _ = jax.jit(checkify.checkify(checked))(g)
    with pytest.raises(checkify.JaxRuntimeError, match="capacity overflow"):
        err.throw()

    # exactly enough capacity is fine, and reports full occupancy
    ok = render_exact = R.rasterize(g, vm, ks, WIDTH, HEIGHT, capacity=needed)
    assert not bool(ok.info.overflow) and float(render_exact.info.occupancy) == 1.0
    assert bool(jnp.all(jnp.isfinite(ok.colors)))


def test_capacity_none_under_jit_is_a_clear_error():
    g = hard_scene(11, n=60)
    vm, ks = orbit(1)
    with pytest.raises(ValueError, match="pass a static capacity"):
        jax.jit(lambda g: R.rasterize(g, vm, ks, WIDTH, HEIGHT).colors)(g)


def test_bad_inputs_are_named():
    g = hard_scene(12, n=60)
    vm, ks = orbit(2)
    with pytest.raises(ValueError, match="viewmats must have shape"):
        R.rasterize(g, vm[:, :3], ks, WIDTH, HEIGHT)
    with pytest.raises(ValueError, match="Ks must have shape"):
        R.rasterize(g, vm, ks[:1], WIDTH, HEIGHT)
    with pytest.raises(ValueError, match="Gaussians.scales"):
        R.rasterize(g.replace(scales=g.scales[:5]), vm, ks, WIDTH, HEIGHT)
    with pytest.raises(ValueError, match="unknown rasterizer preset"):
        R.rasterize(g, vm, ks, WIDTH, HEIGHT, settings="cuda")
    with pytest.raises(ValueError, match="background"):
        R.rasterize(g, vm, ks, WIDTH, HEIGHT, background=jnp.zeros(4))


def test_empty_view_is_background():
    g = hard_scene(13, n=60)
    vm, ks = orbit(1)
    away = vm.at[0, 2, 3].set(-50.0)  # every Gaussian behind the camera
    out = R.rasterize(g, away, ks, WIDTH, HEIGHT, background=jnp.asarray(BACKGROUND))
    assert int(out.info.intersections) == 0
    np.testing.assert_array_equal(out.colors, jnp.broadcast_to(jnp.asarray(BACKGROUND),
                                                               out.colors.shape))
    np.testing.assert_array_equal(out.alphas, 0.0)


@pytest.mark.parametrize("preset", ["inria", "gsplat"])
def test_gaussians_appear_where_the_opengl_cameras_say(preset):
    """End to end through camera.py: small Gaussians at known world points, rendered from the
    VideoMV orbit, land at the pixel an independent OpenGL pinhole projection predicts (the bug
    class of VideoMV's released issue #6: camera conventions crossed between UNet and renderer)."""
    points = np.array([[0.0, 0.0, 0.0], [0.3, -0.2, 0.25], [-0.25, 0.3, -0.1]])
    res, fovy = 64, 39.6
    c2w_gl = np.asarray(camera.orbit_cameras(24, elevation_deg=15.0, distance=2.0))
    vm, ks = camera.raster_cameras(jnp.asarray(c2w_gl), res, res, fovy)
    focal = 0.5 * res / np.tan(np.deg2rad(fovy) / 2)
    for point in points:
        g = Gaussians(jnp.asarray(point[None], jnp.float32), jnp.full((1, 3), 0.01),
                      jnp.asarray([[1.0, 0, 0, 0]]), jnp.ones((1,)), jnp.ones((1, 3)))
        out = R.rasterize(g, vm, ks, res, res, settings=preset)
        alpha = np.asarray(out.alphas)  # [24, H, W]
        cols, rows = np.meshgrid(np.arange(res) + 0.5, np.arange(res) + 0.5)
        cx = (alpha * cols).sum((1, 2)) / alpha.sum((1, 2))
        cy = (alpha * rows).sum((1, 2)) / alpha.sum((1, 2))
        # OpenGL: camera looks down -z, y up; image rows grow downward.
        p_cam = np.einsum("vij,j->vi", np.linalg.inv(c2w_gl), np.append(point, 1.0))[:, :3]
        u = res / 2 + focal * p_cam[:, 0] / -p_cam[:, 2]
        v = res / 2 - focal * p_cam[:, 1] / -p_cam[:, 2]
        # a symmetric splat's alpha centroid is its centre up to the 3σ box cut (< 0.05 px)
        np.testing.assert_allclose(cx, u, atol=0.05)
        np.testing.assert_allclose(cy, v, atol=0.05)


def test_degenerate_inputs_are_named_or_rendered_as_empty():
    """An empty scene renders the background (eager and under jit); NaN and all-zero cameras are
    errors, not a clean background; validate=True names non-finite Gaussians; NumPy ints work."""
    g = hard_scene(14, n=60)
    vm, ks = orbit(1)
    bg = jnp.asarray(BACKGROUND)
    empty = jax.tree.map(lambda a: a[:0], g)  # e.g. save_ply(min_opacity=...) kept nothing
    for out in (R.rasterize(empty, vm, ks, WIDTH, HEIGHT, background=bg),
                jax.jit(lambda e: R.rasterize(e, vm, ks, WIDTH, HEIGHT, background=bg,
                                              capacity=64))(empty)):
        np.testing.assert_array_equal(out.colors, jnp.broadcast_to(bg, out.colors.shape))
        assert out.colors.shape == (1, HEIGHT, WIDTH, 3) and int(out.info.intersections) == 0
    assert R.count_intersections(empty, vm, ks, WIDTH, HEIGHT) == 0
    with pytest.raises(ValueError, match="NaN or infinite"):
        R.rasterize(g, vm.at[0, 0, 0].set(jnp.nan), ks, WIDTH, HEIGHT)
    with pytest.raises(ValueError, match="degenerate"):
        R.rasterize(g, jnp.zeros_like(vm).at[..., 3, 3].set(1.0), ks, WIDTH, HEIGHT)
    with pytest.raises(ValueError, match="positive focal"):
        R.rasterize(g, vm, ks.at[0, 0, 0].set(0.0), WIDTH, HEIGHT)
    broken = g.replace(means=g.means.at[3, 1].set(jnp.inf).at[7, 0].set(jnp.nan))
    with pytest.raises(ValueError, match=r"non-finite Gaussians .*'means': 2"):
        R.rasterize(broken, vm, ks, WIDTH, HEIGHT, validate=True)
    plain = R.rasterize(g, vm, ks, WIDTH, HEIGHT, background=bg)
    numpy_ints = R.rasterize(g, vm, ks, np.int64(WIDTH), np.int32(HEIGHT), background=bg)
    np.testing.assert_array_equal(numpy_ints.colors, plain.colors)


def test_overflow_gradients_are_nan_not_zero():
    """Under capacity overflow the outputs are NaN, and so are the gradients (a training step
    sees a non-finite gradient and is skipped, rather than a silent zero update)."""
    g = hard_scene(15, n=60)
    vm, ks = orbit(1)
    small = R.count_intersections(g, vm, ks, WIDTH, HEIGHT) // 2

    def loss(means, capacity):
        out = R.rasterize(g.replace(means=means), vm, ks, WIDTH, HEIGHT, capacity=capacity)
        return jnp.mean(out.colors ** 2)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    overflowed, fine = np.asarray(grad(g.means, small)), np.asarray(grad(g.means, 4 * small))
    assert np.all(np.isfinite(fine))
    # the Gaussians that were composited get NaN gradients; no gradient is a finite non-zero
    # value (Gaussians culled, or dropped from the full buffer, get none either way)
    visible = np.any(fine != 0, axis=-1)
    assert visible.sum() > 10 and np.isnan(overflowed[visible]).all(-1).mean() > 0.5
    assert np.all(np.isnan(overflowed) | (overflowed == 0))
