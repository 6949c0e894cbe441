"""Mesh export (videomv_jax.export.mesh) against ground truth that no model produced.

* Analytic: one Gaussian's opacity field has the closed-form iso-surface
  ``(x−μ)ᵀΣ⁻¹(x−μ) = 2 ln(o / level)`` (an ellipsoid), and its colour everywhere is its own.
* Fitted: Gaussians fitted by eval's 3DGS fit (:func:`fit_gaussians`) to ray-cast views of
  analytic ``shapes`` scenes — a sphere resting in a box, and a cylinder, a cone and a torus side
  by side — are exported; each mesh is compared with the analytic surface
  (:func:`shapes.sample_scene_surface`: Chamfer distance, normal consistency) and its renders
  with ground-truth views at held-out cameras (PSNR).
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial import cKDTree

from videomv_jax.data import shapes
from videomv_jax.eval.consistency import FitConfig, fit_gaussians
from videomv_jax.export import mesh as M
from videomv_jax.render import camera
from videomv_jax.render.gaussians import Gaussians, save_ply
from videomv_jax.render.rasterize import rasterize

RES = 48  # ground-truth image side
DIST = 2.0  # camera distance (VideoMV's text orbit)
PIXEL = 2 * DIST * np.tan(np.radians(camera.DEFAULT_FOVY_DEG) / 2) / RES  # ≈ 0.03 world units
SPHERE = shapes.Primitive("sphere", "red", (0.0, 0.0, 0.12), (0.2, 0.2, 0.2))
BOX = shapes.Primitive("box", "blue", (0.0, 0.0, -0.16), (0.24, 0.2, 0.12))
SCENE = shapes.Scene((SPHERE, BOX), "a red sphere on a blue box", "on")
MESH_CFG = M.MeshConfig(resolution=64, target_faces=4000, texture_size=256, bake_views=16,
                        bake_resolution=RES)


def _gaussians(means, scales, quats, opacities, colors) -> Gaussians:
    return Gaussians(*(jnp.asarray(np.asarray(a, np.float32))
                       for a in (means, scales, quats, opacities, colors)))


def _views(num_views: int, elevation: float, scene: shapes.Scene = SCENE
           ) -> tuple[np.ndarray, np.ndarray]:
    rgba, _ = shapes.render_scene(scene, num_views, RES, elevation, DIST)
    views = rgba[..., :3] + (1.0 - rgba[..., 3:])  # on white
    return views, np.asarray(camera.orbit_cameras(num_views, elevation, DIST))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(-10.0 * np.log10(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Gaussians fitted to 16 views (8 at +30°, 8 at −30° elevation: every side is seen), their
    mesh export, and 6 held-out ground-truth views at 5° elevation (azimuths 0, 60, ...)."""
    va, ca = _views(8, 30.0)
    vb, cb = _views(8, -30.0)
    cfg = FitConfig(num_gaussians=1024, steps=150)
    g, _ = fit_gaussians(np.concatenate([va, vb]), np.concatenate([ca, cb]), config=cfg,
                         background=(1.0, 1.0, 1.0))
    out = tmp_path_factory.mktemp("mesh")
    record = M.export_mesh(g, str(out), "scene", MESH_CFG)
    held_views, held_c2w = _views(6, 5.0)
    viewmats, ks = (np.asarray(a) for a in camera.raster_cameras(held_c2w, RES, RES))
    return {"gaussians": g, "record": record, "mesh": record["mesh"], "out": out,
            "held_views": held_views, "viewmats": viewmats, "ks": ks}


# ---- analytic -----------------------------------------------------------------------------


def _rotation_z(deg: float) -> tuple[np.ndarray, np.ndarray]:
    t = np.radians(deg)
    quat = np.array([np.cos(t / 2), 0.0, 0.0, np.sin(t / 2)])
    rot = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    return quat, rot


def test_single_gaussian_gives_its_analytic_ellipsoid_and_colour():
    mean, scales = np.array([0.1, -0.2, 0.3]), np.array([0.15, 0.05, 0.08])
    opacity, level = 0.9, 0.25
    quat, rot = _rotation_z(30.0)
    g = _gaussians(mean[None], scales[None], quat[None], [opacity], [[0.2, 0.4, 0.6]])
    cfg = M.MeshConfig(resolution=64, level=level, smooth_iterations=0, target_faces=None,
                       texture_size=0)
    mesh = M.extract_mesh(g, cfg)
    local = (mesh.vertices - mean) @ rot / scales  # ellipsoid frame, unit sigmas
    radius = np.linalg.norm(local, axis=1)
    expected = np.sqrt(2.0 * np.log(opacity / level))  # o·exp(−r²/2) = level
    # marching cubes interpolates linearly between grid points 0.0074 apart; α is smooth on
    # that scale, so the surface is exact to well under 1 % (a wrong axis or angle: > 10 %)
    np.testing.assert_allclose(radius, expected, rtol=0.01)
    np.testing.assert_allclose(mesh.vertex_colors, np.broadcast_to([0.2, 0.4, 0.6],
                                                                   mesh.vertex_colors.shape),
                               atol=1e-5)
    # faces wound outward: vertex normals point away from the centre
    assert np.mean(np.sum(mesh.vertex_normals() * (mesh.vertices - mean), 1) > 0) > 0.999


def test_shell_is_filled_and_floaters_dropped():
    """Gaussians spread over a sphere (radius 0.3) make a thin shell: filled, it meshes as one
    outer surface; a tiny far-away Gaussian is a floater the component cleanup drops."""
    rng = np.random.default_rng(0)
    d = rng.normal(size=(3000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    means = np.concatenate([0.3 * d, [[0.8, 0.0, 0.0]]])
    scales = np.concatenate([np.full((3000, 3), 0.02), np.full((1, 3), 0.012)])
    n = len(means)
    g = _gaussians(means, scales, np.tile([1.0, 0, 0, 0], (n, 1)), np.full(n, 0.9),
                   np.full((n, 3), 0.5))
    base = dict(resolution=48, target_faces=None, texture_size=0)
    mesh = M.extract_mesh(g, M.MeshConfig(**base))
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert r.min() > 0.3 and r.max() < 0.36  # outer surface only, no inner one, no floater
    volume = M._signed_volume(mesh.vertices, mesh.faces)
    assert volume == pytest.approx(4 / 3 * np.pi * np.mean(r) ** 3, rel=0.03)
    kept = M.extract_mesh(g, M.MeshConfig(**base, fill_interior=False,
                                          min_component_fraction=0.0))
    r_kept = np.linalg.norm(kept.vertices, axis=1)
    assert r_kept.min() < 0.3 and r_kept.max() > 0.75  # inner shell and the floater are there


def test_empty_or_transparent_asset_is_a_clear_error_and_writes_nothing(tmp_path):
    empty = _gaussians(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 4)), np.zeros(0),
                       np.zeros((0, 3)))
    with pytest.raises(M.MeshExportError, match="no Gaussians"):
        M.export_mesh(empty, str(tmp_path / "a"))
    clear = _gaussians(np.zeros((4, 3)), np.full((4, 3), 0.1), np.tile([1.0, 0, 0, 0], (4, 1)),
                       np.zeros(4), np.full((4, 3), 0.5))
    with pytest.raises(M.MeshExportError, match="fully transparent"):
        M.export_mesh(clear, str(tmp_path / "b"))
    faint = clear.replace(opacities=jnp.full(4, 0.1))  # α = 1 − 0.9⁴ = 0.34 at most
    with pytest.raises(M.MeshExportError, match="below the iso level"):
        M.export_mesh(faint, str(tmp_path / "c"), config=M.MeshConfig(resolution=16,
                                                                       level=0.5))
    assert not any((tmp_path / d).exists() for d in "abc")
    save_ply(tmp_path / "clear.ply", clear)
    assert M.main([str(tmp_path / "clear.ply"), "--out", str(tmp_path / "d")]) == 2
    assert not (tmp_path / "d").exists()


# ---- fitted shapes scene --------------------------------------------------------------------


def _mesh_surface(vertices, faces, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(vertices, np.float64)[faces]
    fn = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    area = np.linalg.norm(fn, axis=1)
    f = rng.choice(len(area), n, p=area / area.sum())
    s, t = np.sqrt(rng.random(n)), rng.random(n)
    bary = np.stack([1 - s, s * (1 - t), s * t], 1)
    return np.einsum("pk,pkc->pc", bary, v[f]), fn[f] / area[f, None]


def _geometry_scores(vertices, faces, scene: shapes.Scene = SCENE
                     ) -> tuple[float, float, float]:
    """Chamfer distance mesh → surface and surface → mesh (mean nearest-neighbour distance of
    20,000 area-uniform samples) and normal consistency (mean cosine between a mesh sample's
    normal and that of its nearest surface sample)."""
    rng = np.random.default_rng(0)
    gt_p, gt_n = shapes.sample_scene_surface(scene, 20000, rng)
    mp, mn = _mesh_surface(vertices, faces, 20000, rng)
    to_gt, nearest = cKDTree(gt_p).query(mp)
    to_mesh, _ = cKDTree(mp).query(gt_p)
    return float(to_gt.mean()), float(to_mesh.mean()), float(np.mean(np.sum(mn * gt_n[nearest],
                                                                              1)))


@pytest.mark.xdist_group("mesh_fitted")  # one fit of the module fixture
def test_fitted_scene_mesh_matches_the_analytic_surface(fitted):
    mesh = fitted["mesh"]
    acc, comp, normals = _geometry_scores(mesh.vertices, mesh.faces)
    # Measured (2-core CPU): Chamfer 0.010 (mesh→surface) / 0.012 (surface→mesh), normal
    # consistency 0.90. The fit sees the scene at 48² (one pixel ≈ 0.03 world units at the
    # object), so we ask for the surface within 2/3 of a pixel on average both ways and
    # normal consistency above 0.85.
    assert acc < 2 / 3 * PIXEL and comp < 2 / 3 * PIXEL, (acc, comp)
    assert normals > 0.85, normals
    # control: the sphere that best wraps the scene (radius 0.33) scores Chamfer 0.060 / 0.070
    # and normal consistency 0.82, failing every check
    import trimesh

    ball = trimesh.creation.icosphere(subdivisions=4, radius=0.33)
    ball_acc, ball_comp, ball_normals = _geometry_scores(ball.vertices + [0, 0, -0.03],
                                                         ball.faces)
    assert min(ball_acc, ball_comp) > 2 / 3 * PIXEL and ball_normals < 0.85


@pytest.mark.xdist_group("mesh_fitted")  # one fit of the module fixture
def test_fitted_scene_textured_mesh_renders_held_out_views(fitted):
    mesh, views = fitted["mesh"], fitted["held_views"]
    assert mesh.texture is not None and mesh.texture.shape == (256, 256, 3)
    textured, _ = M.render_mesh(mesh, fitted["viewmats"], fitted["ks"], RES, RES)
    plain = M.Mesh(mesh.vertices, mesh.faces, mesh.vertex_colors)
    coloured, _ = M.render_mesh(plain, fitted["viewmats"], fitted["ks"], RES, RES)
    g = fitted["gaussians"]
    splats = rasterize(Gaussians(*(jnp.asarray(getattr(g, k)) for k in (
        "means", "scales", "rotations", "opacities", "colors"))), jnp.asarray(fitted["viewmats"]),
        jnp.asarray(fitted["ks"]), RES, RES, background=jnp.ones(3))
    psnr_mesh, psnr_vc = _psnr(textured, views), _psnr(coloured, views)
    psnr_splats = _psnr(np.clip(np.asarray(splats.colors), 0, 1), views)
    psnr_blank = _psnr(np.ones_like(views), views)
    # Measured: textured 21.5 dB, vertex colours 21.4 dB, the fitted Gaussians themselves
    # 22.6 dB, a blank image 10.0 dB. A mesh loses the Gaussians' soft edges and is rendered
    # without anti-aliasing, so it may trail the Gaussians by a little; 2.5 dB is the allowance.
    # The silhouette alone (right shape, uniform grey) scores 16.4 dB: colours must count.
    assert psnr_mesh > psnr_splats - 2.5, (psnr_mesh, psnr_splats)
    assert psnr_vc > psnr_splats - 2.5, (psnr_vc, psnr_splats)
    assert psnr_mesh > psnr_blank + 8.0, (psnr_mesh, psnr_blank)
    grey = M.Mesh(mesh.vertices, mesh.faces, np.full_like(mesh.vertex_colors, 0.5))
    silhouette, _ = M.render_mesh(grey, fitted["viewmats"], fitted["ks"], RES, RES)
    assert _psnr(silhouette, views) < psnr_mesh - 3.0


# ---- fitted: a cylinder, a cone and a torus -------------------------------------------------

CYLINDER = shapes.Primitive("cylinder", "green", (-0.2, -0.2, -0.08), (0.12, 0.12, 0.17))
CONE = shapes.Primitive("cone", "orange", (-0.2, 0.2, -0.05), (0.14, 0.14, 0.2))
TORUS = shapes.Primitive("torus", "purple", (0.16, 0.0, -0.195), (0.225, 0.225, 0.055), 0.055)
ROUND_SCENE = shapes.Scene((CYLINDER, CONE, TORUS), "a green cylinder, an orange cone and a "
                           "purple torus side by side", "next to")
# ±35°: the torus's hole (diameter 0.23, depth 0.11) is seen through (from ±30° it is not, and
# the fit closes it)
ROUND_ELEVATION = 35.0


@pytest.mark.slow
def test_fitted_cylinder_cone_torus_mesh_matches_the_analytic_surfaces(tmp_path):
    """Every check on one fit, in one test: a module fixture shared by several tests is fitted
    again in each pytest-xdist worker that runs one of them."""
    va, ca = _views(8, ROUND_ELEVATION, ROUND_SCENE)
    vb, cb = _views(8, -ROUND_ELEVATION, ROUND_SCENE)
    g, _ = fit_gaussians(np.concatenate([va, vb]), np.concatenate([ca, cb]),
                         config=FitConfig(num_gaussians=1024, steps=150),
                         background=(1.0, 1.0, 1.0))
    mesh = M.export_mesh(g, str(tmp_path), "round", MESH_CFG)["mesh"]
    acc, comp, normals = _geometry_scores(mesh.vertices, mesh.faces, ROUND_SCENE)
    rng = np.random.default_rng(1)
    mp, _ = _mesh_surface(mesh.vertices, mesh.faces, 20000, rng)
    tree = cKDTree(mp)
    per_kind = {p.kind: float(tree.query(shapes.sample_surface(p, 5000, rng)[0])[0].mean())
                for p in ROUND_SCENE.primitives}
    major, minor = TORUS.half_extents[0] - TORUS.minor_radius, TORUS.minor_radius
    rho = np.hypot(mp[:, 0] - TORUS.center[0], mp[:, 1] - TORUS.center[1])
    in_hole = int(np.sum((rho < major - minor - 0.025)
                         & (np.abs(mp[:, 2] - TORUS.center[2]) < minor + 0.05)))
    held_views, held_c2w = _views(6, 5.0, ROUND_SCENE)
    viewmats, ks = (np.asarray(a) for a in camera.raster_cameras(held_c2w, RES, RES))
    textured, _ = M.render_mesh(mesh, viewmats, ks, RES, RES)
    grey = M.Mesh(mesh.vertices, mesh.faces, np.full_like(mesh.vertex_colors, 0.5))
    silhouette, _ = M.render_mesh(grey, viewmats, ks, RES, RES)
    splats = rasterize(g, jnp.asarray(viewmats), jnp.asarray(ks), RES, RES,
                       background=jnp.ones(3))
    psnr_mesh, psnr_grey = _psnr(textured, held_views), _psnr(silhouette, held_views)
    psnr_splats = _psnr(np.clip(np.asarray(splats.colors), 0, 1), held_views)
    psnr_blank = _psnr(np.ones_like(held_views), held_views)
    # Measured (2-core CPU; the fit is deterministic): Chamfer 0.0154 (mesh → surface) /
    # 0.0141 (surface → mesh), i.e. half a pixel of the 48² views the fit saw, normal
    # consistency 0.81 (sharp rims and the thin tube cost more than the sphere-on-box scene's
    # 0.90); surface → mesh per primitive: cylinder 0.011, cone 0.014, torus 0.017. Limits: 2/3
    # of a pixel for every Chamfer term, normal consistency 0.78.
    assert acc < 2 / 3 * PIXEL and comp < 2 / 3 * PIXEL, (acc, comp)
    assert normals > 0.78, normals
    for kind, dist in per_kind.items():  # each primitive is there, not only the union
        assert dist < 2 / 3 * PIXEL, (kind, dist)
    # the torus keeps its hole: no mesh sample within 0.09 of its axis (hole radius 0.115) at
    # its height (measured: 0 of 20,000; with a thicker torus, R 0.16 / a 0.06, fitted to ±30°
    # views that never see through its hole, the hole closed: 762 samples within 0.07)
    assert in_hole < 20, in_hole
    # Held-out views at 5° elevation, 30° below the nearest fitted ones. Measured: textured
    # mesh 19.0 dB, the fitted Gaussians 22.1 dB, the silhouette in uniform grey 16.9 dB, a
    # blank image 11.9 dB. The mesh loses the Gaussians' soft edges (no anti-aliasing; the thin
    # tube seen edge-on): 4 dB allowance; its colours must beat the grey silhouette by 1 dB.
    assert psnr_mesh > psnr_splats - 4.0, (psnr_mesh, psnr_splats)
    assert psnr_mesh > psnr_grey + 1.0, (psnr_mesh, psnr_grey)
    assert psnr_mesh > psnr_blank + 5.0, (psnr_mesh, psnr_blank)
    # control: the scene's convex hull (bridges the gaps, fills the hole) scores Chamfer
    # 0.042 / 0.030 and normal consistency 0.76, failing the checks above
    import trimesh

    hull = trimesh.convex.convex_hull(shapes.sample_scene_surface(ROUND_SCENE, 5000, rng)[0])
    hull_acc, hull_comp, hull_normals = _geometry_scores(hull.vertices, hull.faces, ROUND_SCENE)
    assert hull_acc > 2 / 3 * PIXEL and hull_comp > 2 / 3 * PIXEL and hull_normals < 0.78


@pytest.mark.xdist_group("mesh_fitted")  # one fit of the module fixture
def test_files_hold_the_mesh_in_the_gaussians_frame(fitted):
    import trimesh
    from PIL import Image

    mesh, out = fitted["mesh"], fitted["out"]
    assert sorted(os.listdir(out)) == ["scene.glb", "scene.mtl", "scene.obj", "scene.png"]
    glb = trimesh.load(out / "scene.glb", force="mesh", process=False)
    assert len(glb.faces) == mesh.num_faces
    np.testing.assert_allclose(glb.vertices, mesh.vertices, atol=1e-6)  # no axis change
    tex = np.asarray(glb.visual.material.baseColorTexture.convert("RGB"), np.float32) / 255
    np.testing.assert_allclose(tex, mesh.texture, atol=1 / 255 + 1e-6)
    np.testing.assert_allclose(glb.visual.uv, mesh.uvs, atol=1e-6)
    obj = trimesh.load(out / "scene.obj", force="mesh", process=False)
    np.testing.assert_allclose(obj.vertices, mesh.vertices, atol=2e-6)
    assert len(obj.faces) == mesh.num_faces
    assert "map_Kd scene.png" in (out / "scene.mtl").read_text()
    png = np.asarray(Image.open(out / "scene.png"), np.float32) / 255
    np.testing.assert_allclose(png, mesh.texture, atol=1 / 255 + 1e-6)


@pytest.mark.xdist_group("mesh_fitted")  # one fit of the module fixture
def test_cli_meshes_a_ply_with_vertex_colours(fitted, tmp_path, capsys):
    ply = tmp_path / "asset.ply"
    save_ply(ply, fitted["gaussians"])
    code = M.main([str(ply), "--out", str(tmp_path / "o"), "--mesh-resolution", "48",
                   "--mesh-texture", "0", "--mesh-faces", "800"])
    assert code == 0, capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "o")) == ["mesh.glb", "mesh.obj"]
    lines = (tmp_path / "o" / "mesh.obj").read_text().splitlines()
    v = np.array([[float(x) for x in ln.split()[1:]] for ln in lines if ln.startswith("v ")])
    faces = [ln for ln in lines if ln.startswith("f ")]
    assert v.shape[1] == 6 and 700 <= len(faces) <= 800  # x y z r g b; decimated to ≤ 800
    acc, comp, _ = _geometry_scores(v[:, :3], np.array(
        [[int(t.split("/")[0]) - 1 for t in ln.split()[1:]] for ln in lines
         if ln.startswith("f ")]))
    assert acc < PIXEL and comp < PIXEL  # same surface, coarser grid and mesh
    assert "wrote mesh.glb, mesh.obj" in capsys.readouterr().out


def test_sample_py_mesh_flag_writes_the_mesh_beside_the_ply(tmp_path):
    import importlib.util
    import json

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("sample_cli_mesh",
                                                  os.path.join(root, "sample.py"))
    sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample)
    out = tmp_path / "demo"
    assert sample.main(["--out", str(out), "--views", "1", "--resolution", "16", "--mesh",
                        "--mesh-resolution", "24", "--mesh-texture", "0"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["outputs"]["mesh"] == ["mesh.glb", "mesh.obj"]
    import trimesh

    glb = trimesh.load(out / "mesh.glb", force="mesh", process=False)
    assert len(glb.faces) == record["outputs"]["mesh_faces"] > 100
    # the demo's sphere (radius 0.22, top at z = 0.51) and box (bottom at z = −0.23), same frame
    assert glb.vertices[:, 2].max() == pytest.approx(0.51, abs=0.04)
    assert glb.vertices[:, 2].min() == pytest.approx(-0.23, abs=0.04)
