"""Tests for videomv_jax.render.camera: orbits, conversions, intrinsics, rays, normalisation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videomv_jax.render import camera as cam

PRESETS = [cam.TEXT_TO_MV, cam.IMAGE_TO_MV]
ATOL = 1e-5


def _np(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _random_rigid(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random proper rigid transforms [n, 4, 4] (float64)."""
    q, _ = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q = q * np.sign(np.linalg.det(q))[:, None, None]
    m = np.tile(np.eye(4), (n, 1, 1))
    m[:, :3, :3] = q
    m[:, :3, 3] = rng.normal(size=(n, 3))
    return m


# --------------------------------------------------------------------------------------------
# orbit
# --------------------------------------------------------------------------------------------


def test_presets_match_spec():
    assert (cam.TEXT_TO_MV.elevation_deg, cam.TEXT_TO_MV.distance) == (15.0, 2.0)
    assert (cam.IMAGE_TO_MV.elevation_deg, cam.IMAGE_TO_MV.distance) == (5.0, 1.7)
    for preset in PRESETS:
        assert preset.num_views == 24
        assert (preset.azimuth_start_deg, preset.azimuth_span_deg) == (0.0, 360.0)
    assert cam.DEFAULT_FOVY_DEG == 39.6


@pytest.mark.parametrize("preset", PRESETS, ids=["text", "image"])
def test_orbit_positions(preset):
    c2w = _np(preset.cameras())
    assert c2w.shape == (24, 4, 4)
    pos = c2w[:, :3, 3]
    d, e = preset.distance, math.radians(preset.elevation_deg)
    np.testing.assert_allclose(pos[0], [d * math.cos(e), 0.0, d * math.sin(e)], atol=ATOL)
    np.testing.assert_allclose(np.linalg.norm(pos, axis=-1), d, rtol=1e-6)
    elev = np.degrees(np.arcsin(pos[:, 2] / np.linalg.norm(pos, axis=-1)))
    np.testing.assert_allclose(elev, preset.elevation_deg, atol=1e-4)
    azim = np.degrees(np.arctan2(pos[:, 1], pos[:, 0])) % 360.0
    expected = 15.0 * np.arange(24)
    diff = (azim - expected + 180.0) % 360.0 - 180.0
    np.testing.assert_allclose(diff, 0.0, atol=1e-4)
    # view 6 is a quarter turn counter-clockwise (seen from +z): on the +y axis side
    np.testing.assert_allclose(pos[6], [0.0, d * math.cos(e), d * math.sin(e)], atol=ATOL)
    np.testing.assert_allclose(c2w[:, 3], np.tile([0.0, 0.0, 0.0, 1.0], (24, 1)), atol=0)


@pytest.mark.parametrize("preset", PRESETS, ids=["text", "image"])
def test_orbit_look_at_geometry(preset):
    c2w = _np(preset.cameras())
    rot, pos = c2w[:, :3, :3], c2w[:, :3, 3]
    eye3 = np.tile(np.eye(3), (24, 1, 1))
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), eye3, atol=ATOL)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=ATOL)
    forward = -rot[:, :, 2]  # OpenGL camera looks along -z
    np.testing.assert_allclose(np.cross(pos, forward), 0.0, atol=ATOL)
    assert np.all(np.einsum("ni,ni->n", pos, forward) < 0)
    up = rot[:, :, 1]
    assert np.all(up[:, 2] > 0)
    np.testing.assert_allclose(up[:, 2], math.cos(math.radians(preset.elevation_deg)), atol=ATOL)
    np.testing.assert_allclose(rot[:, 2, 0], 0.0, atol=ATOL)  # right vector is horizontal
    # frame 0 (on +x looking toward -x, z up) has +y as its right vector
    np.testing.assert_allclose(rot[0, :, 0], [0.0, 1.0, 0.0], atol=ATOL)


def test_orbit_custom_span_and_jit():
    c2w = _np(cam.orbit_cameras(4, 30.0, 1.5, azimuth_start_deg=90.0, azimuth_span_deg=180.0))
    azim = np.degrees(np.arctan2(c2w[:, 1, 3], c2w[:, 0, 3])) % 360.0
    np.testing.assert_allclose(azim, [90.0, 135.0, 180.0, 225.0], atol=1e-4)
    jitted = jax.jit(cam.orbit_cameras, static_argnums=0)(4, 30.0, 1.5, 90.0, 180.0)
    np.testing.assert_allclose(_np(jitted), c2w, atol=ATOL)
    assert cam.orbit_cameras(3).dtype == jnp.float32


def test_look_at_matches_orbit():
    orbit = cam.TEXT_TO_MV.cameras()
    np.testing.assert_allclose(_np(cam.look_at(orbit[:, :3, 3])), _np(orbit), atol=ATOL)


# --------------------------------------------------------------------------------------------
# conversions
# --------------------------------------------------------------------------------------------


def test_opengl_opencv_round_trip_and_values():
    c2w = _random_rigid(np.random.default_rng(0), 5).astype(np.float32)
    cv = _np(cam.opengl_to_opencv(c2w))
    np.testing.assert_allclose(cv[:, :, 0], c2w[:, :, 0], atol=0)
    np.testing.assert_allclose(cv[:, :, 1:3], -c2w[:, :, 1:3], atol=0)
    np.testing.assert_allclose(cv[:, :, 3], c2w[:, :, 3], atol=0)
    np.testing.assert_allclose(_np(cam.opencv_to_opengl(cv)), c2w, atol=0)
    np.testing.assert_allclose(_np(cam.opengl_to_opencv(cam.opengl_to_opencv(c2w))), c2w, atol=0)
    np.testing.assert_allclose(cv, c2w @ cam.OPENGL_TO_OPENCV, atol=1e-7)


def test_c2w_w2c_round_trip_batched():
    c2w = _random_rigid(np.random.default_rng(1), 6).reshape(2, 3, 4, 4).astype(np.float32)
    w2c = cam.c2w_to_w2c(c2w)
    assert w2c.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(_np(w2c), np.linalg.inv(_np(c2w)), atol=1e-5)
    np.testing.assert_allclose(_np(w2c @ c2w), np.broadcast_to(np.eye(4), (2, 3, 4, 4)), atol=1e-5)
    np.testing.assert_allclose(_np(cam.w2c_to_c2w(w2c)), c2w, atol=1e-5)


def test_dtype_follows_input():
    c2w = jnp.asarray(_random_rigid(np.random.default_rng(2), 2), dtype=jnp.bfloat16)
    assert cam.opengl_to_opencv(c2w).dtype == jnp.bfloat16
    assert cam.c2w_to_w2c(c2w).dtype == jnp.bfloat16
    assert cam.camera_embedding(jnp.eye(4, dtype=jnp.int32)).dtype == jnp.float32


def test_camera_embedding_is_row_major_flatten():
    c2w = cam.IMAGE_TO_MV.cameras()
    emb = _np(cam.camera_embedding(c2w))
    assert emb.shape == (24, 16)
    c = _np(c2w)
    np.testing.assert_array_equal(emb, c.reshape(24, 16))
    np.testing.assert_array_equal(emb[:, 3], c[:, 0, 3])  # x position is the 4th float
    np.testing.assert_array_equal(emb[:, 4], c[:, 1, 0])
    np.testing.assert_array_equal(emb[:, 12:], np.tile([0.0, 0.0, 0.0, 1.0], (24, 1)))


# --------------------------------------------------------------------------------------------
# intrinsics and projection
# --------------------------------------------------------------------------------------------


def test_intrinsics_known_values():
    k = _np(cam.intrinsics_from_fovy(256, 256))
    f = 128.0 / math.tan(math.radians(19.8))
    assert abs(f - 355.5337) < 1e-3
    np.testing.assert_allclose(k, [[f, 0, 128.0], [0, f, 128.0], [0, 0, 1]], rtol=1e-6)
    k2 = _np(cam.intrinsics_from_fovy(320, 240, fovy_deg=90.0))
    np.testing.assert_allclose(k2, [[120.0, 0, 160.0], [0, 120.0, 120.0], [0, 0, 1]], rtol=1e-6)


def test_fov_focal_helpers():
    np.testing.assert_allclose(float(cam.fov_to_focal(90.0, 512)), 256.0, rtol=1e-6)
    np.testing.assert_allclose(float(cam.focal_to_fov(256.0, 512)), 90.0, rtol=1e-6)
    f = cam.fov_to_focal(39.6, 256)
    np.testing.assert_allclose(float(cam.focal_to_fov(f, 256)), 39.6, rtol=1e-5)


def test_projection_opencv_matches_opengl():
    width, height, fovy = 320, 256, 39.6
    c2w_gl = _np(cam.TEXT_TO_MV.cameras())[::5]  # 5 views
    viewmats, ks = cam.raster_cameras(c2w_gl, width, height, fovy)
    assert viewmats.shape == (5, 4, 4) and ks.shape == (5, 3, 3)
    viewmats, ks = _np(viewmats), _np(ks)
    rng = np.random.default_rng(3)
    points = np.concatenate([rng.uniform(-0.5, 0.5, size=(7, 3)), np.ones((7, 1))], axis=-1)

    cam_cv = np.einsum("vij,pj->vpi", viewmats, points)[..., :3]
    assert np.all(cam_cv[..., 2] > 0)  # points near the origin are in front (OpenCV +z)
    pix = np.einsum("vij,vpj->vpi", ks, cam_cv)
    uv_cv = pix[..., :2] / pix[..., 2:]

    w2c_gl = np.linalg.inv(c2w_gl)
    xc = np.einsum("vij,pj->vpi", w2c_gl, points)
    f = height / (2.0 * math.tan(math.radians(fovy) / 2.0))
    depth = -xc[..., 2]
    u_gl = width / 2.0 + f * xc[..., 0] / depth
    v_gl = height / 2.0 - f * xc[..., 1] / depth
    np.testing.assert_allclose(uv_cv, np.stack([u_gl, v_gl], axis=-1), atol=1e-3)
    # the orbit looks at the origin, so it projects to the principal point
    origin_cam = viewmats[:, :3, 3]
    origin_pix = np.einsum("vij,vj->vi", ks, origin_cam)
    np.testing.assert_allclose(
        origin_pix[:, :2] / origin_pix[:, 2:], np.tile([width / 2.0, height / 2.0], (5, 1)),
        atol=1e-3,
    )


# --------------------------------------------------------------------------------------------
# rays
# --------------------------------------------------------------------------------------------


def test_plucker_known_camera_values():
    # identity rotation at (1, 2, 3): looks along world -z, camera up = world +y
    c2w = np.eye(4)
    c2w[:3, 3] = [1.0, 2.0, 3.0]
    rays = _np(cam.plucker_rays(c2w, 5, 5, fovy_deg=60.0))
    assert rays.shape == (5, 5, 6)
    np.testing.assert_allclose(rays[2, 2, 3:], [0.0, 0.0, -1.0], atol=1e-6)  # centre pixel
    np.testing.assert_allclose(rays[2, 2, :3], [-2.0, 1.0, 0.0], atol=1e-6)  # (1,2,3) x (0,0,-1)
    # 4x4 image, fovy 90: focal 2; top-right pixel (row 0, col 3) points up and right
    rays4 = _np(cam.plucker_rays(c2w, 4, 4, fovy_deg=90.0))
    expected = np.array([0.75, 0.75, -1.0]) / math.sqrt(2.125)
    np.testing.assert_allclose(rays4[0, 3, 3:], expected, atol=1e-6)
    np.testing.assert_allclose(rays4[0, 3, :3], np.cross([1.0, 2.0, 3.0], expected), atol=1e-5)
    # bottom-left pixel (row 3, col 0) points down and left
    np.testing.assert_allclose(rays4[3, 0, 3:], expected * [-1, -1, 1], atol=1e-6)


def test_camera_rays_match_plucker():
    c2w = cam.TEXT_TO_MV.cameras()[:3]
    origins, dirs = cam.camera_rays(c2w, 8, 12)
    rays = cam.plucker_rays(c2w, 8, 12)
    assert origins.shape == dirs.shape == (3, 8, 12, 3) and rays.shape == (3, 8, 12, 6)
    np.testing.assert_allclose(_np(rays[..., 3:]), _np(dirs), atol=0)
    np.testing.assert_allclose(_np(origins), np.broadcast_to(_np(c2w)[:, None, None, :3, 3],
                                                              origins.shape), atol=0)
    np.testing.assert_allclose(np.linalg.norm(_np(dirs), axis=-1), 1.0, atol=1e-6)


def test_plucker_ray_passes_through_projected_point():
    width = height = 32
    fovy = 39.6
    c2w = _np(cam.IMAGE_TO_MV.cameras())[[0, 7, 13]]
    rays = _np(cam.plucker_rays(c2w, height, width, fovy))
    viewmats, ks = (_np(a) for a in cam.raster_cameras(c2w, width, height, fovy))
    for v, (row, col) in enumerate([(3, 29), (16, 5), (30, 30)]):
        o, d = c2w[v, :3, 3], rays[v, row, col, 3:]
        moment = rays[v, row, col, :3]
        for t in (0.5, 1.7, 3.0):
            x = o + t * d
            # the point projects into the centre of the pixel whose ray it was built from
            xc = viewmats[v] @ np.append(x, 1.0)
            uv = (ks[v] @ xc[:3])[:2] / xc[2]
            np.testing.assert_allclose(uv, [col + 0.5, row + 0.5], atol=2e-3)
            # and lies on the Plücker line: cross(X, d) equals the moment
            np.testing.assert_allclose(np.cross(x, d), moment, atol=1e-5)


def test_plucker_jit_matches_eager():
    c2w = cam.TEXT_TO_MV.cameras()[:2]
    eager = cam.plucker_rays(c2w, 6, 10, 45.0)
    jitted = jax.jit(cam.plucker_rays, static_argnums=(1, 2))(c2w, 6, 10, 45.0)
    np.testing.assert_allclose(_np(jitted), _np(eager), atol=1e-6)


# --------------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------------


def _reference_normalize(c2w: np.ndarray, radius: float | None) -> np.ndarray:
    flip = np.eye(4)
    flip[1] *= -1  # negate row 1 ...
    flip[[1, 2]] = flip[[2, 1]]  # ... then swap rows 1 and 2
    poses = flip @ c2w
    r = np.linalg.norm(poses[0, :3, 3]) if radius is None else radius
    tz = np.eye(4)
    tz[2, 3] = r
    return (tz @ np.linalg.inv(poses[0]))[None] @ poses


@pytest.mark.parametrize("preset", PRESETS, ids=["text", "image"])
def test_normalize_poses_orbit(preset):
    c2w = _np(preset.cameras())
    out = _np(cam.normalize_poses(c2w))
    r = preset.distance
    np.testing.assert_allclose(out, _reference_normalize(c2w, None), atol=1e-5)
    expected0 = np.eye(4)
    expected0[2, 3] = r
    np.testing.assert_allclose(out[0], expected0, atol=1e-5)
    pos = out[:, :3, 3]
    np.testing.assert_allclose(np.linalg.norm(pos, axis=-1), r, rtol=1e-5)
    forward = -out[:, :3, 2]
    np.testing.assert_allclose(np.cross(pos, forward), 0.0, atol=1e-5)
    assert np.all(np.einsum("ni,ni->n", pos, forward) < 0)
    rel_in = np.linalg.inv(c2w)[:, None] @ c2w[None]
    rel_out = np.linalg.inv(out)[:, None] @ out[None]
    np.testing.assert_allclose(rel_out, rel_in, atol=1e-4)
    # hand-derived: the orbit axis in camera-0 coordinates is (0, cos e, sin e); a quarter
    # turn (view 6) of (0, 0, r) about it lands at r * (cos e, cos e sin e, sin^2 e)
    e = math.radians(preset.elevation_deg)
    c, s = math.cos(e), math.sin(e)
    np.testing.assert_allclose(pos[6], r * np.array([c, c * s, s * s]), atol=1e-5)


def test_normalize_poses_camera_already_canonical():
    # a camera that is the identity at (0, 0, 2) once the world is y-up stays there;
    # step 1 maps (x, y, z) -> (x, z, -y)
    zup0 = np.linalg.inv(cam.ZUP_TO_YUP) @ np.array(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2.0], [0, 0, 0, 1]]
    )
    np.testing.assert_allclose(cam.ZUP_TO_YUP[:3, :3] @ [1.0, 2.0, 3.0], [1.0, 3.0, -2.0])
    out = _np(cam.normalize_poses(zup0[None]))
    expected = np.eye(4)
    expected[2, 3] = 2.0
    np.testing.assert_allclose(out[0], expected, atol=1e-6)


def test_normalize_poses_radius_and_batch():
    c2w_a = _np(cam.TEXT_TO_MV.cameras())
    c2w_b = _np(cam.IMAGE_TO_MV.cameras())
    batch = np.stack([c2w_a, c2w_b])  # [2, 24, 4, 4]
    out = _np(cam.normalize_poses(batch))
    np.testing.assert_allclose(out[0], _reference_normalize(c2w_a, None), atol=1e-5)
    np.testing.assert_allclose(out[1], _reference_normalize(c2w_b, None), atol=1e-5)
    # explicit radius: camera 0 at (0, 0, radius), orbit centre moves to (0, 0, radius - d)
    out_r = _np(cam.normalize_poses(c2w_a, radius=1.5))
    np.testing.assert_allclose(out_r, _reference_normalize(c2w_a, 1.5), atol=1e-5)
    np.testing.assert_allclose(out_r[0, :3, 3], [0.0, 0.0, 1.5], atol=1e-5)
    centre = np.array([0.0, 0.0, 1.5 - 2.0])
    np.testing.assert_allclose(np.linalg.norm(out_r[:, :3, 3] - centre, axis=-1), 2.0, rtol=1e-5)
    # per-batch radius under jit
    out_j = _np(jax.jit(cam.normalize_poses)(batch, jnp.asarray([2.0, 1.7])))
    np.testing.assert_allclose(out_j, out, atol=1e-5)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: cam.camera_embedding(np.zeros((3, 4))), r"\[\.\.\., 4, 4\]"),
        (lambda: cam.opengl_to_opencv(np.zeros((2, 3, 4))), r"\[0, 0, 0, 1\]"),
        (lambda: cam.c2w_to_w2c(np.zeros(4)), "c2w"),
        (lambda: cam.normalize_poses(np.eye(4)), r"c2w\[None\]"),
        (lambda: cam.normalize_poses(np.eye(4)[None], radius=-1.0), "radius"),
        (lambda: cam.orbit_cameras(0), "num_views"),
        (lambda: cam.orbit_cameras(2.5), "num_views"),
        (lambda: cam.orbit_cameras(24, 15.0, 0.0), "distance"),
        (lambda: cam.orbit_cameras(24, 90.0, 2.0), "elevation_deg"),
        (lambda: cam.intrinsics_from_fovy(256, 256, fovy_deg=0.0), "degrees"),
        (lambda: cam.intrinsics_from_fovy(256, 256, fovy_deg=200.0), "fovy_deg"),
        (lambda: cam.intrinsics_from_fovy(0, 256), "width"),
        (lambda: cam.plucker_rays(np.eye(4), 8.0, 8), "height"),
        (lambda: cam.plucker_rays(np.eye(4), 8, 8, fovy_deg=180.0), "fovy_deg"),
        (lambda: cam.raster_cameras(np.eye(4), 8, 8, fovy_deg=-5.0), "fovy_deg"),
        (lambda: cam.focal_to_fov(0.0, 256), "focal"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
