"""The VideoMV sampler: scanned loop vs Python loop, plain vs 3D-aware, camera conventions
(the bug class of VideoMV issue #6), rasteriser overflow reporting, config checks.

Tiny random models (``UNet3DConfig.text_tiny``, ``VAEConfig.tiny`` (×2), ``LGMConfig.tiny``
(16² input)), F = 24 frames so the released aware views (0, 6, 12, 18) are used, 8×8 latents →
16² decoded views = LGM's input size, renders at 32² (nearest ×2 down to 16²), 5 DDIM steps with
one 3D-aware step at loop index 2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from videomv_jax.convert.base import abstract_params, apply_params
from videomv_jax.diffusion import ddim
from videomv_jax.diffusion.sampler import (
    SamplerConfig,
    downsample_images,
    image_conditions,
    lgm_inputs,
    make_sampler,
    reconstruct_latents,
    render_views,
    sample_python_loop,
    sampler_geometry,
    text_conditions,
)
from videomv_jax.models import abstract_model
from videomv_jax.models.lgm import LGM, LGMConfig
from videomv_jax.models.unet3d import UNet3D, UNet3DConfig, unet_from_params
from videomv_jax.models.vae import AutoencoderKL, VAEConfig
from videomv_jax.render.camera import DEFAULT_FOVY_DEG, orbit_cameras
from videomv_jax.render.gaussians import Gaussians

F = 24
LATENT = 8
STEPS = 5
AWARE = 2
BASE = dict(num_steps=STEPS, render_size=32, capacity_per_scene=1 << 15, keep_trajectory=True)


def _random_params(model: nnx.Module, seed: int) -> dict:
    """Random weights for every parameter (none left at zero init: the UNet head, camera MLP
    and temporal convs are zero-initialised in a fresh model, which would make tests trivial)."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, spec in abstract_params(model).items():
        if path[-1] == "kernel":
            value = rng.standard_normal(spec.shape) / np.sqrt(np.prod(spec.shape[:-1]))
        elif path[-1] == "scale":
            value = 1.0 + 0.1 * rng.standard_normal(spec.shape)
        else:
            value = 0.05 * rng.standard_normal(spec.shape)
        out[path] = value.astype(spec.dtype)
    return out


def _random_model(cls, config, seed: int) -> nnx.Module:
    """Built abstractly and filled with NumPy weights: no eager init (seconds on this CPU)."""
    if cls is UNet3D:
        return unet_from_params(config, _random_params(abstract_model(cls, config), seed))
    model = abstract_model(cls, config)
    return apply_params(model, _random_params(model, seed))


@pytest.fixture(scope="module")
def models():
    unet = _random_model(UNet3D, UNet3DConfig.text_tiny(), 0)
    vae = _random_model(AutoencoderKL, VAEConfig.tiny(), 1)
    lgm = _random_model(LGM, LGMConfig.tiny(), 2)
    return unet, vae, lgm


@pytest.fixture(scope="module")
def inputs():
    keys = jax.random.split(jax.random.key(0), 4)
    noise = jax.random.normal(keys[0], (1, F, LATENT, LATENT, 4))
    cond, uncond = text_conditions(jax.random.normal(keys[1], (1, 8, 32)),
                                   jax.random.normal(keys[2], (1, 8, 32)))
    return noise, cond, uncond, orbit_cameras(F), keys[3]


@pytest.fixture(scope="module")
def plain_run(models, inputs):
    sampler = make_sampler(*models, SamplerConfig(aware_steps=(), progress=True, **BASE))
    return sampler, sampler(*inputs)


@pytest.fixture(scope="module")
def aware_run(models, inputs):
    sampler = make_sampler(*models, SamplerConfig(aware_steps=(AWARE,), **BASE))
    return sampler, sampler(*inputs)


def _assert_close(a, b, rel=1e-5):
    """≤ rel·max(1, |x|max): float32 reassociation between two compilations of the same math;
    random tiny models push latents to |x| ≈ 50, so the bound is relative to their size."""
    a, b = np.asarray(a), np.asarray(b)
    scale = max(1.0, float(np.max(np.abs(b))))
    err = float(np.max(np.abs(a - b)))
    assert err <= rel * scale, (err, scale)
    return err


# ---- (1) scan == Python loop --------------------------------------------------------------------


@pytest.mark.parametrize("which", ["plain", "aware"])
def test_scanned_loop_equals_python_loop(which, models, inputs, plain_run, aware_run):
    sampler, (x, aux) = plain_run if which == "plain" else aware_run
    xp, auxp = sample_python_loop(*models, sampler.config, *inputs)
    _assert_close(x, xp)
    _assert_close(aux["trajectory"], auxp["trajectory"])
    assert bool(aux["overflow"]) == bool(auxp["overflow"]) is False
    assert int(aux["intersections"]) == int(auxp["intersections"])
    if which == "aware":
        assert 0 < int(aux["intersections"]) <= 2 * sampler.config.capacity_per_scene
        for a, b in zip(jax.tree.leaves(aux["gaussians"]), jax.tree.leaves(auxp["gaussians"]),
                        strict=True):
            _assert_close(a, b)
        # the same step function with no aware step at all (mask as data: no recompilation)
        mask = np.zeros(STEPS, bool)
        x2, aux2 = sampler(*inputs, aware_mask=mask)
        xp2, auxp2 = sample_python_loop(*models, sampler.config, *inputs, aware_mask=mask)
        _assert_close(x2, xp2)
        _assert_close(aux2["trajectory"], auxp2["trajectory"])
    else:
        assert "gaussians" not in aux


@pytest.fixture(scope="module")
def unet_pair(models, inputs):
    """Jitted (out_u, out_c) at (x, t): the two guidance passes written out by hand."""
    unet = models[0]
    _, cond, uncond, cams, _ = inputs
    cam = cams.reshape(1, F, 16)

    @jax.jit
    def pair(x, t):
        tb = jnp.full((1,), t)
        return unet(x, tb, uncond["context"], cam), unet(x, tb, cond["context"], cam)

    return pair


def test_plain_step_is_released_ddim_cfg(inputs, plain_run, unet_pair):
    """The first plain step by hand: UNet twice, out_u + s(out_c − out_u), x̂0, DDIM update."""
    sampler, (_, aux) = plain_run
    noise = inputs[0]
    sch = sampler.schedule
    # 5 steps: stride 200, t = 801 … 1 (released grid 1 + arange(0, 1000, 200), reversed)
    assert sch.timesteps[0] == 801 and sampler.config.guidance_scale == 9.0
    out_u, out_c = unet_pair(noise, sch.timesteps[0])
    out = out_u + 9.0 * (out_c - out_u)
    x0 = ddim.predict_x0(noise, out, sch.alpha[0], "eps")
    want = ddim.ddim_update(noise, x0, sch.alpha[0], sch.alpha_prev[0])
    _assert_close(aux["trajectory"][0], want)


def test_progress_bar_is_advanced_from_the_compiled_loop(plain_run, inputs, capsys):
    sampler, _ = plain_run
    jax.block_until_ready(sampler(*inputs))
    err = capsys.readouterr().err
    assert f"{STEPS}/{STEPS}" in err, err


def test_step_callback_reports_each_segment_and_matches_the_single_scan(plain_run, inputs):
    """The web demo's progress: ``step_callback(done, total)`` after every ``steps_per_call``
    steps (1, and 2 with a shorter last segment), in order, on the calling thread. The
    segmented loop (one executable, traced bounds) gives the single scan's numbers bit for bit,
    trajectory included."""
    from videomv_jax.diffusion.sampler import _check_inputs

    sampler, _ = plain_run
    noise, cond, uncond, cams, key = inputs
    mask = _check_inputs(noise, cond, uncond, cams, sampler.config, None)
    x_scan, aux_scan = sampler.jitted(sampler.states(), noise, dict(cond), dict(uncond),
                                      jnp.asarray(cams, jnp.float32), key, jnp.asarray(mask))
    for per_call, want in ((1, [1, 2, 3, 4, 5]), (2, [2, 4, 5])):
        seen = []
        sampler.step_callback = lambda done, total, seen=seen: seen.append((done, total))
        sampler.steps_per_call = per_call
        try:
            x, aux = sampler(*inputs)
        finally:
            sampler.step_callback = None
            sampler.steps_per_call = 1
        assert seen == [(k, STEPS) for k in want]
        np.testing.assert_array_equal(np.asarray(x), np.asarray(x_scan))
        np.testing.assert_array_equal(np.asarray(aux["trajectory"]),
                                      np.asarray(aux_scan["trajectory"]))
    assert sampler._jitted_segment._cache_size() == 1  # one executable for every segment
    jax.block_until_ready(sampler(*inputs))
    assert len(seen) == 3  # detached: no more calls
    sampler.steps_per_call = 0
    with pytest.raises(ValueError, match="steps_per_call"):
        sampler(*inputs)
    sampler.steps_per_call = 1


# ---- (2) plain vs 3D-aware ----------------------------------------------------------------------


def test_aware_sampling_departs_from_plain_exactly_at_the_first_aware_step(
        inputs, plain_run, aware_run):
    (_, (xp, auxp)), (sampler, (xa, auxa)) = plain_run, aware_run
    tp, ta = np.asarray(auxp["trajectory"]), np.asarray(auxa["trajectory"])
    for i in range(AWARE):  # steps before the aware one: the same numbers
        _assert_close(ta[i], tp[i])
    for i in range(AWARE, STEPS):  # from the aware step on: x0 was replaced by re-encoded renders
        assert np.max(np.abs(ta[i] - tp[i])) > 1e-2 * np.max(np.abs(tp[i])), i
    assert np.all(np.isfinite(xa)) and not np.allclose(xa, xp)
    g = auxa["gaussians"]
    assert g.means.shape == (2, 1, LGMConfig.tiny().num_gaussians, 3)
    assert float(jnp.max(jnp.abs(g.means))) > 0  # the last aware step's Gaussians came back
    # no aware step in the mask: the aware sampler's compiled cond takes the plain branch
    x0, aux0 = sampler(*inputs, aware_mask=np.zeros(STEPS, bool))
    _assert_close(x0, xp)
    _assert_close(aux0["trajectory"], tp)
    assert not np.any(np.asarray(aux0["gaussians"].means))


def test_aware_step_by_hand(models, inputs, aware_run, unet_pair):
    """Step AWARE by hand from the scanned state: x̂0 per branch → reconstruct → guidance on
    the re-encoded latents → DDIM; the key schedule is the sampler's (fold_in(key, i), 0)."""
    _, vae, lgm = models
    sampler, (_, aux) = aware_run
    cfg, sch = sampler.config, sampler.schedule
    cams, key = inputs[3], inputs[4]
    x = aux["trajectory"][AWARE - 1]
    a, ap = sch.alpha[AWARE], sch.alpha_prev[AWARE]
    out_u, out_c = unet_pair(x, sch.timesteps[AWARE])
    x0_u = ddim.predict_x0(x, out_u, a, "eps")
    x0_c = ddim.predict_x0(x, out_c, a, "eps")
    geom = sampler_geometry(cams, cfg)
    k_enc = jax.random.fold_in(jax.random.fold_in(key, AWARE), 0)
    z, g, info = jax.jit(lambda x0: reconstruct_latents(vae, lgm, x0, geom, cfg, k_enc))(
        jnp.concatenate([x0_u, x0_c]))
    assert not bool(info.overflow)
    want = ddim.ddim_update(x, z[:1] + 9.0 * (z[1:] - z[:1]), a, ap)
    _assert_close(aux["trajectory"][AWARE], want, rel=1e-4)  # separately compiled VAE/LGM chain
    for a_, b_ in zip(jax.tree.leaves(g), jax.tree.leaves(aux["gaussians"]), strict=True):
        _assert_close(a_, np.asarray(b_).reshape(a_.shape), rel=1e-4)


# ---- (3) camera conventions (VideoMV issue #6) --------------------------------------------------

POINTS_ZUP = np.array([[0.0, 0.0, 0.0], [0.3, -0.2, 0.1], [-0.25, 0.35, -0.15],
                       [0.12, 0.28, 0.3], [-0.3, -0.3, 0.2]])
RENDER = 64


def _point_gaussians(points: np.ndarray) -> Gaussians:
    p = len(points)
    return Gaussians(means=jnp.asarray(points, jnp.float32)[:, None],
                     scales=jnp.full((p, 1, 3), 0.02), rotations=jnp.tile(
                         jnp.asarray([1.0, 0, 0, 0]), (p, 1, 1)),
                     opacities=jnp.ones((p, 1)), colors=jnp.ones((p, 1, 3)))


def _pinhole_opengl(c2w: np.ndarray, points: np.ndarray, size: int, fovy: float):
    """Independent projection: OpenGL camera (x right, y up, looking along −z), pixel (col j,
    row i) covering [j, j+1) × [i, i+1). Returns u, v (continuous) and the depth."""
    rot, eye = c2w[:3, :3], c2w[:3, 3]
    pc = (points - eye) @ rot  # = R^T (p − eye)
    depth = -pc[:, 2]
    f = 0.5 * size / np.tan(np.deg2rad(fovy) / 2)
    return 0.5 * size + f * pc[:, 0] / depth, 0.5 * size - f * pc[:, 1] / depth, depth, f


def _centroids(colors: np.ndarray, background: float):
    w = np.abs(colors - background).sum(-1)  # [..., H, W]
    jj, ii = np.meshgrid(np.arange(w.shape[-1]) + 0.5, np.arange(w.shape[-2]) + 0.5)
    total = w.sum((-1, -2))
    safe = np.where(total > 0, total, 1.0)  # an absent blob: centroid 0, mass 0
    return (w * jj).sum((-1, -2)) / safe, (w * ii).sum((-1, -2)) / safe, total


def test_gaussians_render_where_the_unet_cameras_look_and_on_lgm_rays():
    cfg = SamplerConfig(render_size=RENDER, capacity_per_scene=1 << 14)
    cams = np.asarray(orbit_cameras(F))
    geom = sampler_geometry(cams, cfg)
    unet_c2w = np.asarray(geom.camera).reshape(F, 4, 4)
    np.testing.assert_array_equal(unet_c2w, cams)  # the UNet sees the z-up OpenGL c2w as given
    # the world map the sampler applies to cameras (normalize_poses): one rigid transform
    poses = np.asarray(geom.poses, np.float64)
    world = poses[0] @ np.linalg.inv(cams[0].astype(np.float64))
    np.testing.assert_allclose(world @ cams, poses, atol=2e-6)
    np.testing.assert_allclose(world[:3, :3] @ world[:3, :3].T, np.eye(3), atol=1e-6)
    pts_lgm = POINTS_ZUP @ world[:3, :3].T + world[:3, 3]

    colors = np.asarray(render_views(_point_gaussians(pts_lgm), geom, cfg).colors)  # [P,F,H,W,3]
    cu, cv, mass = _centroids(colors, cfg.background)
    assert np.all(mass > 1.0)  # every point is visible in every view
    worst = 0.0
    for k in range(F):
        u, v, depth, _ = _pinhole_opengl(unet_c2w[k], POINTS_ZUP, RENDER, DEFAULT_FOVY_DEG)
        assert np.all(depth > 0)
        worst = max(worst, np.max(np.abs(cu[:, k] - u)), np.max(np.abs(cv[:, k] - v)))
    # sub-pixel: a symmetric ~1 px blob sampled at pixel centres (measured worst ≈ 0.02 px)
    assert worst < 0.1, worst

    # LGM's input rays for the aware views pass through the same points at the same pixels
    rays = np.asarray(lgm_inputs(jnp.zeros((1, 4, RENDER, RENDER, 3)), geom, cfg))[0, ..., 3:]
    for vi, k in enumerate(cfg.aware_views):
        u, v, depth, f = _pinhole_opengl(unet_c2w[k], POINTS_ZUP, RENDER, DEFAULT_FOVY_DEG)
        m, d = rays[vi, ..., :3], rays[vi, ..., 3:]
        for p, q in enumerate(pts_lgm):
            dist = np.linalg.norm(np.cross(q, d) - m, axis=-1)  # |(q − o) × d|, d unit
            j, i = int(np.floor(u[p])), int(np.floor(v[p]))
            assert dist[i, j] <= 0.75 * depth[p] / f, (k, p)  # within the pixel's footprint
            near_edge = min(abs(u[p] - round(u[p])), abs(v[p] - round(v[p]))) < 0.02
            if not near_edge:
                assert np.unravel_index(np.argmin(dist), dist.shape) == (i, j), (k, p)

    # negative control: the released inference flip (y/z columns negated before normalising)
    # breaks the agreement, so this test can see the issue-#6 bug class
    flipped = sampler_geometry(cams * np.array([1.0, -1.0, -1.0, 1.0]), cfg)
    bad = np.asarray(render_views(_point_gaussians(pts_lgm), flipped, cfg).colors)
    bu, bv, bmass = _centroids(bad, cfg.background)
    u = np.stack([_pinhole_opengl(unet_c2w[k], POINTS_ZUP, RENDER, DEFAULT_FOVY_DEG)[0]
                  for k in range(F)], axis=1)
    off = (bmass <= 1.0) | (np.abs(bu - u) > 2.0)
    assert off[:, 1:].mean() > 0.9


def test_nearest_downsample_matches_torch():
    x = np.random.default_rng(0).random((2, 3, 32, 32, 3)).astype(np.float32)
    ours = np.asarray(downsample_images(jnp.asarray(x), 16, "nearest"))
    t = torch.from_numpy(x.reshape(6, 32, 32, 3)).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(t, size=(16, 16), mode="nearest")
    np.testing.assert_array_equal(ours.reshape(6, 16, 16, 3), ref.permute(0, 2, 3, 1).numpy())
    area = np.asarray(downsample_images(jnp.asarray(x), 16, "area"))
    np.testing.assert_allclose(area, x.reshape(2, 3, 16, 2, 16, 2, 3).mean((3, 5)), atol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        downsample_images(jnp.asarray(x), 12)


# ---- (4) overflow -------------------------------------------------------------------------------


def test_capacity_overflow_is_reported_not_blank(models, inputs):
    cfg = SamplerConfig(aware_steps=(AWARE,), **{**BASE, "capacity_per_scene": 64})
    x, aux = make_sampler(*models, cfg)(*inputs)
    assert bool(aux["overflow"])
    assert int(aux["intersections"]) > 2 * 64
    traj = np.asarray(aux["trajectory"])
    assert np.all(np.isfinite(traj[:AWARE]))  # before the aware step: untouched
    assert np.all(np.isnan(np.asarray(x)))  # poisoned, never a plausible (e.g. blank) result


# ---- image→MV conditions, config ----------------------------------------------------------------


def test_image_conditions_and_plain_image_sampling(models):
    _, vae, lgm = models
    unet = _random_model(UNet3D, UNet3DConfig.image_tiny(), 3)
    keys = jax.random.split(jax.random.key(1), 4)
    z_img = jax.random.normal(keys[0], (1, LATENT, LATENT, 4))
    emb = jax.random.normal(keys[1], (1, 32))
    cond, uncond = image_conditions(jax.random.normal(keys[2], (1, 8, 32)),
                                    jax.random.normal(keys[3], (1, 8, 32)), z_img, emb)
    # the unconditional branch has a zero image embedding (docs/design.md §4.4)
    assert not np.any(np.asarray(uncond["image_embedding"]))
    np.testing.assert_array_equal(uncond["image_latent"], cond["image_latent"])
    cfg = SamplerConfig.image(num_steps=2, aware_steps=())
    assert (cfg.prediction, cfg.guidance_scale, cfg.background) == ("v", 6.0, 0.7)
    noise = jax.random.normal(keys[0], (1, 8, LATENT, LATENT, 4))  # plain: any F
    x, _ = make_sampler(unet, None, None, cfg)(noise, cond, uncond, orbit_cameras(8),
                                               jax.random.key(0))
    assert x.shape == noise.shape and np.all(np.isfinite(np.asarray(x)))


def test_config_validation_and_round_trip(models, inputs):
    cfg = SamplerConfig.image(aware_steps=(1, 3), background=(0.1, 0.2, 0.3))
    assert SamplerConfig.from_dict(cfg.to_dict()) == cfg
    assert SamplerConfig().aware_steps == (20, 30, 40) and SamplerConfig().num_steps == 50
    assert list(np.flatnonzero(SamplerConfig().aware_mask())) == [20, 30, 40]
    for bad in [dict(aware_steps=(50,)), dict(aware_steps=(3, 3)), dict(downsample="bicubic"),
                dict(prediction="x0"), dict(background=1.5), dict(capacity_per_scene=0),
                dict(render_size=0), dict(eta=-1.0), dict(raster_settings="nope")]:
        with pytest.raises(ValueError):
            SamplerConfig(**bad)
    with pytest.raises(ValueError, match="unknown SamplerConfig"):
        SamplerConfig.from_dict({"steps": 3})
    unet, vae, lgm = models
    noise, cond, uncond, cams, key = inputs
    with pytest.raises(ValueError, match="need the VAE and LGM"):
        make_sampler(unet, None, None, SamplerConfig(num_steps=5, aware_steps=(2,)))
    plain = make_sampler(unet, None, None, SamplerConfig(num_steps=5, aware_steps=()))
    with pytest.raises(ValueError, match="built without 3D-aware steps"):
        plain(noise, cond, uncond, cams, key, aware_mask=np.ones(5, bool))
    with pytest.raises(ValueError, match="cameras_c2w_zup"):
        plain(noise, cond, uncond, cams[:8], key)
    with pytest.raises(ValueError, match="noise batch"):
        plain(noise, {"context": jnp.zeros((2, 8, 32))}, uncond, cams, key)
    aware = make_sampler(unet, vae, lgm, SamplerConfig(num_steps=5, aware_steps=(2,)))
    with pytest.raises(ValueError, match="aware_views"):
        aware(noise[:, :8], cond, uncond, cams[:8], key)


def test_progress_chunks_are_a_tenth_of_the_steps():
    """The CLI bar's default segment: at most 10 compiled calls per sample, at least 1 step."""
    from videomv_jax.diffusion.sampler import progress_chunk

    assert [progress_chunk(n) for n in (1, 2, 5, 10, 11, 23, 25, 50, 100)] == \
        [1, 1, 1, 1, 2, 3, 3, 5, 10]
