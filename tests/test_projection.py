"""Projection stage of the rasterizer (EWA splatting, culling, tile rectangles).

* ``gsplat`` preset against gsplat's own PyTorch reference (``gsplat.cuda._torch_impl``):
  rotations, 3D covariances, means2d, depths, conics, radii, culling, tile intersections.
* ``inria`` preset against a NumPy float64 transcription of Inria's ``diff-gaussian-rasterization``
  ``preprocessCUDA`` (glm column-major matrices emulated literally, LGM-style view/projection
  matrices, ``ndc2Pix``, ``getRect`` with C integer truncation).
* Culling of Gaussians behind the camera, beyond the far plane and off screen, in both presets.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videomv_jax.render import camera as cam
from videomv_jax.render.rasterize import (
    PRESETS,
    bin_gaussians,
    covariance_3d,
    get_settings,
    project_gaussians,
    quaternion_to_rotation,
    tile_rects,
)

try:
    import torch
    from gsplat.cuda import _torch_impl as gs_ref
except ImportError:  # pragma: no cover - gsplat / torch are optional test dependencies
    torch = None
    gs_ref = None

needs_gsplat = pytest.mark.skipif(gs_ref is None, reason="gsplat (PyTorch reference) missing")

TILE = 16


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _np(tree):
    return jax.tree.map(np.asarray, tree)


@functools.cache
def _orbit_cameras(width: int, height: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Three cameras of a VideoMV orbit (elevation 15°, distance 2), OpenCV w2c and K."""
    c2w = cam.orbit_cameras(3, 15.0, 2.0, azimuth_start_deg=10.0)
    viewmats, ks = cam.raster_cameras(c2w, width, height)
    return tuple((np.asarray(v, np.float64), np.asarray(k, np.float64))
                 for v, k in zip(viewmats, ks, strict=True))


def _off_centre_camera() -> tuple[np.ndarray, np.ndarray]:
    """A look-at camera with fx != fy and a principal point away from the image centre."""
    c2w = cam.look_at(np.array([1.5, -1.1, 0.8]), target=(0.1, 0.05, -0.1))
    viewmat, _ = cam.raster_cameras(c2w, 64, 48)
    k = np.array([[61.5, 0.0, 25.3], [0.0, 74.25, 30.7], [0.0, 0.0, 1.0]])
    return np.asarray(viewmat, np.float64), k


def _camera_to_world(points_cam: np.ndarray, viewmat: np.ndarray) -> np.ndarray:
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]
    return (points_cam - trans) @ rot  # R^T (p - t) for a rigid world-to-camera [R | t]


def _pixel_to_camera(u, v, z, k: np.ndarray) -> np.ndarray:
    u, v, z = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (u, v, z)))
    x = (u - k[0, 2]) * z / k[0, 0]
    y = (v - k[1, 2]) * z / k[1, 1]
    return np.stack([x, y, z], axis=-1)


def _random_scene(seed: int, n: int, viewmat: np.ndarray, k: np.ndarray, width: int, height: int):
    """Means, scales, raw (non-unit) quaternions, drawn in camera space so that every culling
    case occurs: 10 % behind the camera, 5 % at log-uniform depths in (0.001, 0.3) around both
    near planes, pixel positions over twice the image, 20 % within a few pixels of the
    left/right borders; scales log-uniform in [1e-4, 3] per axis (tiny, huge, anisotropic)."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.3, 6.0, n)
    z[: n // 10] = rng.uniform(-3.0, -1e-3, n // 10)
    z[n // 10 : n // 10 + n // 20] = 10.0 ** rng.uniform(-3.0, -0.5, n // 20)
    u = rng.uniform(-0.5 * width, 1.5 * width, n)
    v = rng.uniform(-0.5 * height, 1.5 * height, n)
    m = n // 5
    u[-m:] = np.where(rng.random(m) < 0.5, 0.0, width) + rng.normal(0.0, 3.0, m)
    means = _camera_to_world(_pixel_to_camera(u, v, z, k), viewmat)
    scales = 10.0 ** rng.uniform(-4.0, 0.5, (n, 3))
    quats = rng.normal(size=(n, 4))
    quats *= rng.uniform(0.2, 3.0, (n, 1)) / np.linalg.norm(quats, axis=-1, keepdims=True)
    return means, scales, quats


@functools.partial(jax.jit, static_argnames=("width", "height", "settings"))
def _project_jit(means, scales, quats, viewmat, k, width, height, settings):
    covars = covariance_3d(scales, quats, normalize=settings.normalize_quaternions)
    proj = project_gaussians(means, covars, viewmat, k, width, height, settings)
    return proj, tile_rects(proj.means2d, proj.radii, width, height, settings), covars


def _project(means, scales, quats, viewmat, k, width, height, settings, dtype):
    """Our covariance + projection + tile rectangles, evaluated in ``dtype``, as NumPy."""
    args = (jnp.asarray(a, dtype) for a in (means, scales, quats, viewmat, k))
    proj, rects, covars = _project_jit(*args, width, height, settings)
    assert proj.means2d.dtype == dtype and proj.radii.dtype == jnp.int32
    return _np(proj), np.asarray(rects), np.asarray(covars)


def _conic_max_eigen(conics: np.ndarray) -> np.ndarray:
    """Largest eigenvalue of the 2x2 matrices [[a, b], [b, c]] given as (a, b, c)."""
    a, b, c = conics[:, 0], conics[:, 1], conics[:, 2]
    return 0.5 * (a + c) + np.sqrt(0.25 * (a - c) ** 2 + b * b)


class _Rounding(NamedTuple):
    """Per-Gaussian scales of the rounding error of a projection (from float64 inputs).

    ``size`` = |p| + |t|: world -> camera rounds x, y, z with an absolute error ~eps·size.
    ``amp`` = max(1, size/|z|): every screen quantity divides by z, so close to the near plane
    the relative error is amplified by this factor.
    ``cov2d`` = ‖J‖²·‖Σ_cam‖ + eps2d: the absolute error of Σ2d is ~eps·amp·cov2d (it is not
    relative to Σ2d: a needle seen end-on has a small Σ2d computed from large terms).
    """

    size: np.ndarray
    amp: np.ndarray
    cov2d: np.ndarray


def _rounding(means, covars, viewmat, k, width, height) -> _Rounding:
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]
    means_c = means @ rot.T + trans
    covars_c = rot @ covars @ rot.T
    size = np.linalg.norm(means, axis=-1) + np.linalg.norm(trans)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    z = means_c[:, 2]
    with np.errstate(all="ignore"):
        rx = np.clip(means_c[:, 0] / z, -(cx + 0.15 * width) / fx, (1.15 * width - cx) / fx)
        ry = np.clip(means_c[:, 1] / z, -(cy + 0.15 * height) / fy, (1.15 * height - cy) / fy)
        jac2 = (fx**2 * (1.0 + rx**2) + fy**2 * (1.0 + ry**2)) / z**2
        amp = np.maximum(1.0, size / np.abs(z))
    return _Rounding(size, amp, jac2 * np.linalg.norm(covars_c, axis=(-1, -2)) + 0.3)


# Multiplier of eps in every rounding bound below. Over 15 random seeds of these scenes the
# worst error seen was 0.1 of each bound (float32 and float64), while a formula change (eps2d
# 0.3 -> 0.301, margin, sigmas, pixel centre, near plane) overshoots them by orders of magnitude.
ROUND = 16.0


def _assert_within(ours, ref, tol):
    """|ours - ref| <= tol elementwise (tol broadcast), reporting the worst offender."""
    ratio = np.abs(ours - ref) / tol
    worst = np.unravel_index(np.argmax(ratio), ratio.shape)
    assert np.all(ratio <= 1.0), (worst, ours[worst], ref[worst], ratio[worst])


def _assert_conics_close(ours, ref, eps: float, rnd: _Rounding, mask):
    """|Δ conic| <= ROUND·eps·amp·λmax(conic)²·cov2d, first-order error of a 2x2 inverse
    (δ(A⁻¹) = −A⁻¹ δA A⁻¹) given the error of Σ2d; this includes the loss of cond(Σ2d) digits."""
    ours, ref = ours[mask], ref[mask]
    err = np.abs(ours - ref).max(axis=-1)
    bound = ROUND * eps * rnd.amp[mask] * _conic_max_eigen(ref) ** 2 * rnd.cov2d[mask]
    worst = np.argmax(err / bound)
    assert np.all(err <= bound), (worst, ours[worst], ref[worst], bound[worst])


def _assert_means2d_close(ours, ref, k, eps, rnd: _Rounding, mask, extra=0.0):
    """|Δ means2d| <= ROUND·eps·amp·(|offset from the principal point| + f) + extra."""
    offset = np.abs(ref[mask] - k[:2, 2])
    tol = ROUND * eps * rnd.amp[mask, None] * (offset + k[[0, 1], [0, 1]]) + extra
    _assert_within(ours[mask], ref[mask], tol)


def _radius_ties(radii_real, sigmas, eps, rnd: _Rounding) -> np.ndarray:
    """Where rounding could move ceil(radii_real) (radii_real = k·σ, σ² from Σ2d)."""
    with np.errstate(all="ignore"):
        var = (radii_real / sigmas) ** 2
        shape = (-1,) + (1,) * (np.ndim(radii_real) - 1)
        rel = ROUND * eps * rnd.amp.reshape(shape) * rnd.cov2d.reshape(shape) / var
        return np.abs(radii_real - np.round(radii_real)) <= rel * radii_real


def _assert_radii_equal(ours, ref, ties):
    """Integer radii equal, except ±1 where a rounding tie is possible."""
    diff = ours != ref
    assert np.all(np.abs(ours.astype(np.int64) - ref)[diff] <= 1), (ours[diff], ref[diff])
    assert np.all(ties[diff]), (ours[diff], ref[diff])


def _tile_pairs(rects: np.ndarray, tiles_x: int) -> set[tuple[int, int]]:
    pairs = set()
    for g, (x0, x1, y0, y1) in enumerate(rects):
        pairs.update((ty * tiles_x + tx, g) for ty in range(y0, y1) for tx in range(x0, x1))
    return pairs


# --------------------------------------------------------------------------------------------
# 1. gsplat preset vs gsplat's PyTorch reference
# --------------------------------------------------------------------------------------------

GSPLAT_CAMERAS = [
    pytest.param(*_orbit_cameras(64, 48)[0], 64, 48, id="orbit0-64x48"),
    pytest.param(*_orbit_cameras(64, 48)[1], 64, 48, id="orbit1-64x48"),
    pytest.param(*_orbit_cameras(72, 40)[2], 72, 40, id="orbit2-72x40"),
    pytest.param(*_off_centre_camera(), 64, 48, id="offcentre-fx!=fy-64x48"),
]


def _gsplat_reference(means, scales, quats, viewmat, k, width, height):
    """gsplat's PyTorch reference in float64: covariances, projection and the exact
    pre-ceil radii 3.33·sqrt(Σ2d_ii + eps2d)."""
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))
    rotmats = gs_ref._quat_to_rotmat(t(quats))
    covars, _ = gs_ref._quat_scale_to_covar_preci(t(quats), t(scales), compute_preci=False)
    radii, means2d, depths, conics, _ = gs_ref._fully_fused_projection(
        t(means), covars, t(viewmat)[None], t(k)[None], width, height, eps2d=0.3,
        near_plane=0.01, far_plane=1e10,
    )
    means_c, covars_c = gs_ref._world_to_cam(t(means), covars, t(viewmat)[None])
    _, cov2d = gs_ref._persp_proj(means_c, covars_c, t(k)[None], width, height)
    diag = torch.diagonal(cov2d[0], dim1=-2, dim2=-1) + 0.3
    return {
        "rotmats": rotmats.numpy(),
        "covars": covars.numpy(),
        "radii": radii[0].numpy(),
        "means2d": means2d[0].numpy(),
        "depths": depths[0].numpy(),
        "conics": conics[0].numpy(),
        "radii_real": (3.33 * torch.sqrt(diag)).numpy(),
    }


def test_gsplat_preset_is_gsplat():
    s = PRESETS["gsplat"]
    assert (s.near_plane, s.far_plane, s.eps2d, s.radius_sigmas) == (0.01, 1e10, 0.3, 3.33)
    assert (s.radius_mode, s.tile_rect, s.pixel_center) == ("per_axis", "gsplat", 0.5)
    assert s.normalize_quaternions and s.jacobian_margin == 0.3 and s.tile_size == TILE


@needs_gsplat
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("viewmat", "k", "width", "height"), GSPLAT_CAMERAS)
def test_gsplat_projection(viewmat, k, width, height, dtype):
    """Our gsplat preset (float64, and float32: our default) vs gsplat's float64 reference."""
    settings = get_settings("gsplat")
    eps = float(np.finfo(dtype).eps)
    means, scales, quats = _random_scene(1 if dtype == "float64" else 2, 500, viewmat, k,
                                         width, height)
    ref = _gsplat_reference(means, scales, quats, viewmat, k, width, height)
    with jax.enable_x64(dtype == "float64"):
        rot = np.asarray(quaternion_to_rotation(jnp.asarray(quats, dtype), normalize=True))
        proj, _, covars = _project(means, scales, quats, viewmat, k, width, height, settings,
                                   jnp.dtype(dtype))
    # Rotation entries are O(1); covariances compared relative to their largest entry.
    np.testing.assert_allclose(rot, ref["rotmats"], rtol=0, atol=ROUND * eps)
    cov_scale = np.abs(ref["covars"]).max(axis=(-1, -2), keepdims=True)
    np.testing.assert_allclose(covars / cov_scale, ref["covars"] / cov_scale, rtol=0,
                               atol=ROUND * eps)

    rnd = _rounding(means, ref["covars"], viewmat, k, width, height)
    keep_ref = np.all(ref["radii"] > 0, axis=-1)
    keep = np.all(proj.radii > 0, axis=-1)
    assert 0.3 * len(keep) < keep_ref.sum() < 0.9 * len(keep)  # both sides are exercised

    # Culling: identical, except for Gaussians within rounding of a decision boundary (the
    # near plane, a ceil tie of a radius, an edge of the inside test).
    ties = _radius_ties(ref["radii_real"], 3.33, eps, rnd)
    offset = np.abs(ref["means2d"] - k[:2, 2])
    slack = ROUND * eps * rnd.amp[:, None] * (offset + k[[0, 1], [0, 1]]) + ties
    r, m = np.ceil(ref["radii_real"]), ref["means2d"]
    with np.errstate(invalid="ignore"):
        edges = np.abs(np.stack([m + r, np.array([width, height]) - (m - r)], axis=-1))
        borderline = (np.abs(ref["depths"] - settings.near_plane) <= ROUND * eps * rnd.size) | (
            (ref["depths"] > settings.near_plane) & np.any(edges <= slack[..., None], (-1, -2))
        )
    if dtype == "float64":  # no decision within rounding of a boundary: exact comparison
        assert not borderline.any()
        np.testing.assert_array_equal(proj.radii, ref["radii"])
    np.testing.assert_array_equal(keep[~borderline], keep_ref[~borderline])
    np.testing.assert_array_equal(proj.radii[~keep], 0)

    both = keep & keep_ref
    _assert_radii_equal(proj.radii[both], ref["radii"][both], ties[both])
    _assert_within(proj.depths[both], ref["depths"][both], ROUND * eps * rnd.size[both])
    _assert_means2d_close(proj.means2d, ref["means2d"], k, eps, rnd, both)
    _assert_conics_close(proj.conics, ref["conics"], eps, rnd, both)


@needs_gsplat
def test_gsplat_tile_intersections():
    """Our gsplat-preset tile rectangles and depth-ordered tile lists vs gsplat's
    ``_isect_tiles`` (pure Python loops: small scene)."""
    viewmat, k = _orbit_cameras(64, 48)[0]
    width, height = 64, 48
    tiles_x, tiles_y = width // TILE, height // TILE
    settings = get_settings("gsplat")
    means, scales, quats = _random_scene(3, 60, viewmat, k, width, height)
    ref = _gsplat_reference(means, scales, quats, viewmat, k, width, height)
    t = torch.from_numpy
    tiles_per_gauss, isect_ids, flatten_ids = gs_ref._isect_tiles(
        t(ref["means2d"])[None], t(ref["radii"])[None], t(ref["depths"])[None], TILE, tiles_x,
        tiles_y, sort=True,
    )
    tiles_per_gauss = tiles_per_gauss[0].numpy()
    flatten_ids = flatten_ids.numpy()
    tile_ids = (isect_ids >> 32).numpy() & ((1 << (tiles_x * tiles_y).bit_length()) - 1)
    assert 20 < len(flatten_ids) and np.count_nonzero(tiles_per_gauss) > 10

    with jax.enable_x64(True):
        proj, rects, _ = _project(means, scales, quats, viewmat, k, width, height, settings,
                                  jnp.float64)
        counts = (rects[:, 1] - rects[:, 0]) * (rects[:, 3] - rects[:, 2])
        binning = jax.jit(bin_gaussians, static_argnums=(2, 3, 4))
        bins = _np(binning(jnp.asarray(rects)[None], jnp.asarray(proj.depths)[None], tiles_x,
                           tiles_y, len(flatten_ids) + 7))

    np.testing.assert_array_equal(counts, tiles_per_gauss)
    np.testing.assert_array_equal(counts, np.bincount(flatten_ids, minlength=len(means)))
    pairs_ref = set(zip(tile_ids.tolist(), flatten_ids.tolist(), strict=True))
    assert len(pairs_ref) == len(flatten_ids)
    assert _tile_pairs(rects, tiles_x) == pairs_ref

    # gsplat sorts by (tile, depth); our bins are tile-major and depth-ordered in every tile.
    assert int(bins.intersections) == len(flatten_ids) and not bool(bins.overflow)
    np.testing.assert_array_equal(bins.gaussian_ids[: len(flatten_ids)], flatten_ids)
    np.testing.assert_array_equal(
        bins.tile_counts[0], np.bincount(tile_ids, minlength=tiles_x * tiles_y)
    )


# --------------------------------------------------------------------------------------------
# 2. inria preset vs a NumPy transcription of diff-gaussian-rasterization
# --------------------------------------------------------------------------------------------


def _glm_mat3(values) -> np.ndarray:
    """``glm::mat3(v0, ..., v8)`` as math matrices [N, 3, 3]: glm fills column by column."""
    cols = np.stack(np.broadcast_arrays(*values), axis=-1).reshape(-1, 3, 3)
    return np.swapaxes(cols, -1, -2)  # math[row, col] = glm[col][row]


def _transform_point_4x3(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    return np.stack([
        m[0] * x + m[4] * y + m[8] * z + m[12],
        m[1] * x + m[5] * y + m[9] * z + m[13],
        m[2] * x + m[6] * y + m[10] * z + m[14],
    ], axis=-1)


def _transform_point_4x4(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    w = m[3] * x + m[7] * y + m[11] * z + m[15]
    return np.concatenate([_transform_point_4x3(p, m), w[:, None]], axis=-1)


def _inria_cov3d(scales: np.ndarray, quats: np.ndarray) -> np.ndarray:
    """``computeCov3D``: M = S·R (glm), Σ = Mᵀ·M, quaternion (r, x, y, z) used as given."""
    r, x, y, z = quats[:, 0], quats[:, 1], quats[:, 2], quats[:, 3]
    rot = _glm_mat3([
        1 - 2 * (y * y + z * z), 2 * (x * y - r * z), 2 * (x * z + r * y),
        2 * (x * y + r * z), 1 - 2 * (x * x + z * z), 2 * (y * z - r * x),
        2 * (x * z - r * y), 2 * (y * z + r * x), 1 - 2 * (x * x + y * y),
    ])
    s = np.zeros((len(scales), 3, 3))
    s[:, [0, 1, 2], [0, 1, 2]] = scales
    m = s @ rot
    return np.swapaxes(m, -1, -2) @ m


def _inria_preprocess(means, scales, quats, w2c, width, height, tan_fovx, tan_fovy,
                      znear=0.5, zfar=2.5):
    """float64 transcription of ``preprocessCUDA`` fed the way LGM feeds it:
    ``viewmatrix = inverse(c2w_opencv).T`` and ``projmatrix = viewmatrix @ proj`` (row-vector
    matrices, passed as row-major memory), LGM's ``proj`` (P00 = 1/tan_fovx, P11 = 1/tan_fovy,
    P23 = 1)."""
    view = w2c.T
    proj = np.zeros((4, 4))
    proj[0, 0], proj[1, 1] = 1.0 / tan_fovx, 1.0 / tan_fovy
    proj[2, 2] = (zfar + znear) / (zfar - znear)
    proj[3, 2] = -(zfar * znear) / (zfar - znear)
    proj[2, 3] = 1.0
    vm, pm = view.reshape(-1), (view @ proj).reshape(-1)
    focal_x, focal_y = width / (2.0 * tan_fovx), height / (2.0 * tan_fovy)
    grid = np.array([(width + TILE - 1) // TILE, (height + TILE - 1) // TILE])

    with np.errstate(all="ignore"):  # culled Gaussians may divide by ~0; they are masked out
        # in_frustum
        p_hom = _transform_point_4x4(means, pm)
        p_w = 1.0 / (p_hom[:, 3] + 0.0000001)
        p_proj = p_hom[:, :3] * p_w[:, None]
        p_view = _transform_point_4x3(means, vm)
        in_frustum = p_view[:, 2] > 0.2

        cov3 = _inria_cov3d(scales, quats)
        c3 = [cov3[:, 0, 0], cov3[:, 1, 0], cov3[:, 2, 0], cov3[:, 1, 1], cov3[:, 2, 1],
              cov3[:, 2, 2]]  # glm Sigma[0][0], [0][1], [0][2], [1][1], [1][2], [2][2]

        # computeCov2D
        t = _transform_point_4x3(means, vm)
        limx, limy = 1.3 * tan_fovx, 1.3 * tan_fovy
        tz = t[:, 2]
        tx = np.minimum(limx, np.maximum(-limx, t[:, 0] / tz)) * tz
        ty = np.minimum(limy, np.maximum(-limy, t[:, 1] / tz)) * tz
        zero = np.zeros_like(tz)
        jac = _glm_mat3([focal_x / tz, zero, -(focal_x * tx) / (tz * tz),
                         zero, focal_y / tz, -(focal_y * ty) / (tz * tz), zero, zero, zero])
        w = _glm_mat3([vm[0], vm[4], vm[8], vm[1], vm[5], vm[9], vm[2], vm[6], vm[10]])
        tmat = w @ jac
        vrk = _glm_mat3([c3[0], c3[1], c3[2], c3[1], c3[3], c3[4], c3[2], c3[4], c3[5]])
        cov = np.swapaxes(tmat, -1, -2) @ np.swapaxes(vrk, -1, -2) @ tmat
        a, b, c = cov[:, 0, 0] + 0.3, cov[:, 1, 0], cov[:, 1, 1] + 0.3  # glm cov[0][1]

        det = a * c - b * b
        conic = np.stack([c / det, -b / det, a / det], axis=-1)
        mid = 0.5 * (a + c)
        lambda1 = mid + np.sqrt(np.maximum(0.1, mid * mid - det))
        lambda2 = mid - np.sqrt(np.maximum(0.1, mid * mid - det))
        radius_real = 3.0 * np.sqrt(np.maximum(lambda1, lambda2))
        radius = np.ceil(radius_real)
        point_image = ((p_proj[:, :2] + 1.0) * np.array([width, height]) - 1.0) * 0.5

        # getRect: (int) truncates toward zero, then max(0, .) and min(grid, .)
        lo = np.minimum(grid, np.maximum(0, np.trunc((point_image - radius[:, None]) / TILE)))
        hi = np.minimum(grid, np.maximum(0, np.trunc(
            (point_image + radius[:, None] + TILE - 1) / TILE)))
    keep = in_frustum & (det != 0.0) & (np.prod(hi - lo, axis=-1) != 0)
    rects = np.stack([lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]], axis=-1).astype(np.int64)
    return {
        "keep": keep,
        "radii": np.where(keep, radius, 0).astype(np.int64),
        "radii_real": radius_real,
        "rects": np.where(keep[:, None], rects, 0),
        "means2d": point_image,
        "depths": p_view[:, 2],
        "conics": conic,
        "covars": cov3,
        "tiles_x": int(grid[0]),
    }


def _inria_case(viewmat, k, width, height, seed, n=500):
    means, scales, quats = _random_scene(seed, n, viewmat, k, width, height)
    tan_fovx, tan_fovy = width / (2.0 * k[0, 0]), height / (2.0 * k[1, 1])
    ref = _inria_preprocess(means, scales, quats, viewmat, width, height, tan_fovx, tan_fovy)
    return (means, scales, quats), ref


_HALF_PIXEL = np.array([[0.0, 0.0, 0.5], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
"""Subtracted from K: the principal point in Inria's integer-pixel-centre frame."""

# Centred principal point, fx = fy (intrinsics_from_fovy): the only cameras Inria's
# rasterizer can express. Width and height are multiples of the tile size here; see
# test_inria_keeps_gaussians_in_partial_last_tile for the other case.
INRIA_CAMERAS = [
    pytest.param(*_orbit_cameras(64, 64)[0], 64, 64, id="orbit0-64x64"),
    pytest.param(*_orbit_cameras(64, 64)[1], 64, 64, id="orbit1-64x64"),
    pytest.param(*_orbit_cameras(80, 48)[2], 80, 48, id="orbit2-80x48"),
]


def test_inria_preset_is_inria():
    s = PRESETS["inria"]
    assert (s.near_plane, s.far_plane, s.eps2d, s.radius_sigmas) == (0.2, float("inf"), 0.3, 3.0)
    assert (s.radius_mode, s.tile_rect, s.pixel_center) == ("square_max_eigen", "inria", 0.0)
    assert not s.normalize_quaternions and s.jacobian_margin == 0.3 and s.tile_size == TILE


def _hamilton(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    pw, px, py, pz = np.moveaxis(p, -1, 0)
    qw, qx, qy, qz = np.moveaxis(q, -1, 0)
    return np.stack([
        pw * qw - px * qx - py * qy - pz * qz,
        pw * qx + px * qw + py * qz - pz * qy,
        pw * qy - px * qz + py * qw + pz * qx,
        pw * qz + px * qy - py * qx + pz * qw,
    ], axis=-1)


def test_rotation_and_covariance_conventions():
    """Unit quaternions: our matrix rotates like q·v·q* (Hamilton, w first) and equals the
    Rodrigues matrix of the same axis-angle; Inria's glm code gives Σ = R S Sᵀ Rᵀ with that
    standard R, also for non-unit quaternions (used as given)."""
    rng = np.random.default_rng(4)
    n = 64
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    angle = rng.uniform(-np.pi, np.pi, n)
    q_unit = np.concatenate([np.cos(angle / 2)[:, None], np.sin(angle / 2)[:, None] * axis], -1)
    with jax.enable_x64(True):
        rot = np.asarray(quaternion_to_rotation(jnp.asarray(q_unit), normalize=False))
        rot_n = np.asarray(quaternion_to_rotation(jnp.asarray(3.0 * q_unit), normalize=True))
    skew = np.zeros((n, 3, 3))
    skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    skew -= np.swapaxes(skew, -1, -2)
    rodrigues = (np.eye(3) + np.sin(angle)[:, None, None] * skew
                 + (1 - np.cos(angle))[:, None, None] * skew @ skew)
    np.testing.assert_allclose(rot, rodrigues, atol=1e-14)  # float64 round-off only
    np.testing.assert_allclose(rot_n, rodrigues, atol=1e-14)
    v = rng.normal(size=(n, 3))
    qv = np.concatenate([np.zeros((n, 1)), v], -1)
    conj = q_unit * np.array([1.0, -1.0, -1.0, -1.0])
    rotated = _hamilton(_hamilton(q_unit, qv), conj)[:, 1:]
    np.testing.assert_allclose(np.einsum("nij,nj->ni", rot, v), rotated, atol=1e-13)

    scales = 10.0 ** rng.uniform(-3, 0.5, (n, 3))
    q_raw = rng.normal(size=(n, 4)) * rng.uniform(0.2, 3.0, (n, 1))
    with jax.enable_x64(True):
        r_raw = np.asarray(quaternion_to_rotation(jnp.asarray(q_raw), normalize=False))
        cov_raw = np.asarray(covariance_3d(jnp.asarray(scales), jnp.asarray(q_raw), False))
    for q, r in ((q_unit, rodrigues), (q_raw, r_raw)):
        expected = r @ (scales[:, :, None] ** 2 * np.swapaxes(r, -1, -2))
        np.testing.assert_allclose(_inria_cov3d(scales, q), expected, rtol=1e-12, atol=1e-14)
    scale = np.abs(cov_raw).max(axis=(-1, -2), keepdims=True)
    np.testing.assert_allclose(cov_raw / scale, _inria_cov3d(scales, q_raw) / scale, atol=1e-14)
    # A non-unit quaternion is not normalised by the inria preset: Σ grows like |q|^4.
    assert not np.allclose(np.einsum("nij,nkj->nik", r_raw, r_raw), np.eye(3), atol=1e-3)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("viewmat", "k", "width", "height"), INRIA_CAMERAS)
def test_inria_projection(viewmat, k, width, height, dtype):
    """Our inria preset (float64, and float32: our default) vs the float64 transcription."""
    settings = get_settings("inria")
    eps = float(np.finfo(dtype).eps)
    (means, scales, quats), ref = _inria_case(viewmat, k, width, height,
                                              seed=5 if dtype == "float64" else 6)
    with jax.enable_x64(dtype == "float64"):
        proj, rects, covars = _project(means, scales, quats, viewmat, k, width, height,
                                       settings, jnp.dtype(dtype))
    scale = np.abs(ref["covars"]).max(axis=(-1, -2), keepdims=True)
    np.testing.assert_allclose(covars / scale, ref["covars"] / scale, rtol=0, atol=ROUND * eps)

    rnd = _rounding(means, ref["covars"], viewmat, k, width, height)
    ties = _radius_ties(ref["radii_real"], 3.0, eps, rnd)
    # Decisions within rounding of a boundary: the near plane, a ceil tie of the radius, a
    # getRect truncation ((p - r)/16 or (p + r + 15)/16 at an integer).
    offset = np.abs(ref["means2d"] - (k[:2, 2] - 0.5))
    slack = ROUND * eps * rnd.amp[:, None] * (offset + k[[0, 1], [0, 1]]) + ties[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        slack += 1e-7 * offset / np.abs(ref["depths"][:, None])  # Inria's (w + 1e-7) divide
        r = np.ceil(ref["radii_real"])[:, None]
        bounds = np.stack([ref["means2d"] - r, ref["means2d"] + r + TILE - 1], axis=-1) / TILE
        near_int = np.abs(bounds - np.round(bounds)) <= slack[..., None] / TILE
        borderline = (np.abs(ref["depths"] - 0.2) <= ROUND * eps * rnd.size) | (
            (ref["depths"] > 0.2) & np.any(near_int, axis=(-1, -2))
        )
    keep = np.all(proj.radii > 0, axis=-1)
    if dtype == "float64":  # no decision within rounding of a boundary: exact comparison
        assert not borderline.any()
        np.testing.assert_array_equal(proj.radii[ref["keep"], 0], ref["radii"][ref["keep"]])
        np.testing.assert_array_equal(rects[ref["keep"]], ref["rects"][ref["keep"]])

    both = keep & ref["keep"]
    assert both.sum() > 0.3 * len(both)
    # Every Gaussian Inria keeps, we keep (the converse fails only for Gaussians with an empty
    # Inria rect; see test_inria_radii_zero_when_rect_empty), with the same tile lists.
    np.testing.assert_array_equal((ref["keep"] & ~keep)[~borderline], False)
    ok = ~borderline
    assert _tile_pairs(rects[ok], ref["tiles_x"]) == _tile_pairs(ref["rects"][ok], ref["tiles_x"])

    np.testing.assert_array_equal(proj.radii[:, 0], proj.radii[:, 1])
    _assert_radii_equal(proj.radii[both, 0], ref["radii"][both], ties[both])
    np.testing.assert_array_equal(rects[both & ok], ref["rects"][both & ok])
    _assert_within(proj.depths[both], ref["depths"][both], ROUND * eps * rnd.size[both])
    # Inria's means2d are in the integer-pixel-centre frame (ours shifted by -0.5 too, so
    # compare directly); Inria divides by (w + 1e-7): a relative shift of 1e-7/z of the offset.
    extra = 1e-7 * offset[both] / ref["depths"][both, None]
    _assert_means2d_close(proj.means2d, ref["means2d"], k - _HALF_PIXEL, eps, rnd, both, extra)
    _assert_conics_close(proj.conics, ref["conics"], eps, rnd, both)


@functools.cache
def _inria_edge_cases():
    """Gaussians at the image border of a 72x56 image (not a multiple of 16: the last tile
    column/row is partial), isotropic, at z = 2. ``u, v`` in the OpenCV (+0.5) frame; Inria's
    point_image is 0.5 px smaller. A 1e-6 scale gives Σ2d ≈ 0.3·I, λmax = 0.3 + sqrt(0.1),
    radius ceil(3·0.785) = 3; σ = 10 px gives radius 31 on axis, ~36 at the right border
    (the x/z term of the Jacobian stretches it)."""
    width, height = 72, 56
    viewmat, k = _orbit_cameras(width, height)[1]
    cases = {  # name: (u, v, sigma_px)
        "centre (control)": (36.0, 28.0, 0.0),
        "left: p + r = 0.3": (-2.2, 28.0, 0.0),  # p = -2.7, r = 3
        "top: p + r = 0.3": (36.0, -2.2, 0.0),
        "right: p - r = 72.5": (76.0, 28.0, 0.0),  # p = 75.5, r = 3
        "right, sigma 10 px: p - r = 72.5": (104.0, 28.0, 10.0),  # u set below
    }
    u, v, sigma = (np.array(c) for c in zip(*cases.values(), strict=True))
    z = 2.0
    scales = np.repeat(np.maximum(sigma * z / k[0, 0], 1e-6)[:, None], 3, axis=1)
    quats = np.tile([1.0, 0.0, 0.0, 0.0], (len(cases), 1))
    for _ in range(4):  # off axis the radius grows (J's x/z term): place p - r = 72.5
        means = _camera_to_world(_pixel_to_camera(u, v, z, k), viewmat)
        ref = _inria_preprocess(means, scales, quats, viewmat, width, height,
                                width / (2 * k[0, 0]), height / (2 * k[1, 1]))
        u[4] = width + ref["radii"][4] + 1.0
    proj, rects, _ = _project(means, scales, quats, viewmat, k, width, height,
                              get_settings("inria"), jnp.float32)
    return list(cases), ref, proj, rects


def test_inria_edge_cases_reference():
    """What Inria does at the border (checks the reference and the setup of the two tests
    below, not our rasterizer)."""
    _, ref, proj, rects = _inria_edge_cases()
    np.testing.assert_array_equal(ref["radii"][:4], [3, 0, 0, 3])
    assert ref["radii"][4] > 30
    np.testing.assert_allclose(ref["means2d"][3:, 0] - ref["radii"][3:], 72.5, atol=1e-9)
    np.testing.assert_array_equal(ref["rects"][[0, 3]], [[2, 3, 1, 2], [4, 5, 1, 2]])
    np.testing.assert_array_equal(ref["rects"][4, :2], [4, 5])
    np.testing.assert_array_equal(proj.radii[0], [3, 3])
    np.testing.assert_array_equal(rects[0], ref["rects"][0])
    # Left/top: Inria culls (empty rect); ours has an empty rect too, so renders agree.
    np.testing.assert_array_equal(ref["keep"][1:3], False)
    assert _tile_pairs(rects[1:3], 5) == set()
    # Right, sigma 10 px: Inria composites it into tile column 4, and at the last pixel
    # column (x = 71, integer centres) its alpha = opacity · exp(-power) is >= 1/255 for
    # opacity >= 0.76, so Inria's image differs from one without it.
    dx = ref["means2d"][4, 0] - 71.0
    power = 0.5 * ref["conics"][4, 0] * dx * dx
    assert np.exp(-power) > 1.0 / 255.0 / 0.76


def test_inria_radii_zero_when_rect_empty():
    _, ref, proj, _ = _inria_edge_cases()
    np.testing.assert_array_equal(proj.radii[:3, 0], ref["radii"][:3])


def test_inria_keeps_gaussians_in_partial_last_tile():
    _, ref, proj, rects = _inria_edge_cases()
    np.testing.assert_array_equal(proj.radii[3:, 0], ref["radii"][3:])
    np.testing.assert_array_equal(rects[3:], ref["rects"][3:])


# --------------------------------------------------------------------------------------------
# 3. culling in both presets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["inria", "gsplat"])
def test_culling(preset):
    width, height = 64, 48
    viewmat, k = _orbit_cameras(width, height)[0]
    settings = get_settings(preset, far_plane=50.0)  # inria has none by default: see below
    # (u, v, z) in the OpenCV +0.5 pixel frame; world scale 0.01 -> ~1.5 px std at z = 2.
    cases = {
        "visible": (32.0, 24.0, 2.0),
        "behind the camera": (32.0, 24.0, -1.0),
        "beyond far": (32.0, 24.0, 60.0),
        "left of the image": (-12.0, 24.0, 2.0),
        "right of the image": (width + 12.0, 24.0, 2.0),
        "above the image": (32.0, -12.0, 2.0),
        "below the image": (32.0, height + 12.0, 2.0),
        "outside, corner": (-12.0, height + 12.0, 2.0),
        "between the near planes": (32.0, 24.0, 0.1),
        "visible, near the far plane": (32.0, 24.0, 45.0),
    }
    u, v, z = (np.array(c) for c in zip(*cases.values(), strict=True))
    means = _camera_to_world(_pixel_to_camera(u, v, z, k), viewmat)
    n = len(cases)
    scales = np.full((n, 3), 0.01)
    quats = np.tile([0.9, 0.1, -0.3, 0.2], (n, 1))
    proj, rects, _ = _project(means, scales, quats, viewmat, k, width, height, settings,
                              jnp.float32)
    visible = {"visible", "visible, near the far plane"}
    if preset == "gsplat":
        visible.add("between the near planes")  # 0.01 < z = 0.1 < 0.2
    for i, name in enumerate(cases):
        if name in visible:
            assert np.all(proj.radii[i] > 0), name
            assert rects[i, 1] > rects[i, 0] and rects[i, 3] > rects[i, 2], name
        else:
            np.testing.assert_array_equal(proj.radii[i], 0, err_msg=name)
            np.testing.assert_array_equal(rects[i], 0, err_msg=name)
        assert np.all(np.isfinite(proj.means2d[i])) and np.all(np.isfinite(proj.conics[i])), name
    # A 3-sigma box of ~5 px: 12 px outside the image is well clear of the border.
    assert proj.radii[0].max() < 10


def test_far_plane_defaults():
    """gsplat culls beyond 1e10; Inria has no far plane (a Gaussian at z = 1e12 stays)."""
    width, height = 64, 48
    viewmat, k = _orbit_cameras(width, height)[0]
    means = _camera_to_world(_pixel_to_camera([32.0, 32.0], [24.0, 24.0], [1e9, 1e12], k),
                             viewmat)
    scales = np.full((2, 3), 1e7)
    quats = np.tile([1.0, 0.0, 0.0, 0.0], (2, 1))
    keep = {}
    for preset in ("inria", "gsplat"):
        proj, _, _ = _project(means, scales, quats, viewmat, k, width, height,
                              get_settings(preset), jnp.float32)
        keep[preset] = np.all(proj.radii > 0, axis=-1)
        assert np.all(np.isfinite(proj.means2d))
    np.testing.assert_array_equal(keep["inria"], [True, True])
    np.testing.assert_array_equal(keep["gsplat"], [True, False])
