"""Evaluation suite: metrics on hand-computed cases, intervals, consistency scores, folders,
report and ``eval.py`` end to end on tiny folders written here.

Scenes are 32² ``shapes`` renders on the 24-view orbit (white background). The Gaussian fit
uses 512 Gaussians and 50 steps (the sanity bar is loose on purpose: held-out PSNR must beat a
constant-colour prediction by 4 dB); both fit calls share one compiled loop.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from videomv_jax.data.shapes import random_scene, render_scene
from videomv_jax.eval import consistency, folders, metrics, report
from videomv_jax.render.camera import orbit_cameras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RES = 32
FIT = consistency.FitConfig(num_gaussians=512, steps=50)


@pytest.fixture(scope="module")
def eval_cli():
    spec = importlib.util.spec_from_file_location("eval_cli", os.path.join(ROOT, "eval.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def scene_views():
    """GT views [24, 32, 32, 3] on white, RGBA and the OpenGL z-up cameras of one scene."""
    rgba, _ = render_scene(random_scene(1_000_004), 24, RES)
    views = rgba[..., :3] + (1.0 - rgba[..., 3:])
    return views.astype(np.float32), rgba, np.asarray(orbit_cameras(24), np.float32)


@pytest.fixture(scope="module")
def tiny_lgm(tmp_path_factory):
    """A random tiny LGM and its converted checkpoint folder. Built abstractly and filled with
    random arrays (eager NNX construction takes ~15 s on this CPU, this well under 1 s)."""
    from flax import nnx

    from videomv_jax.convert.base import abstract_params, apply_params
    from videomv_jax.model_store import save_converted
    from videomv_jax.models.lgm import LGM, LGMConfig

    cfg = LGMConfig.tiny()
    model = nnx.eval_shape(lambda: LGM(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    params = {}
    for path, spec in abstract_params(model).items():
        scale = 1 / np.sqrt(np.prod(spec.shape[:-1])) if path[-1] == "kernel" else 0.05
        base = 1.0 if path[-1] == "scale" else 0.0
        params[path] = jnp.asarray(base + scale * rng.standard_normal(spec.shape), spec.dtype)
    apply_params(model, params)
    path = tmp_path_factory.mktemp("lgm") / "lgm"
    save_converted(path, "lgm", cfg, model, {"random": True, "note": "test weights"})
    return model, path


def _fake_lpips(calls):
    """A stand-in LPIPS: mean |x - y| per image; records the input range it was given."""
    def fn(x, y):
        calls.append((float(jnp.min(x)), float(jnp.max(x)), x.shape))
        return jnp.mean(jnp.abs(x - y), axis=(1, 2, 3))
    return fn


# ---- metrics ------------------------------------------------------------------------------------


def test_identical_images():
    x = np.random.default_rng(0).random((3, 16, 20, 3)).astype(np.float32)
    assert np.all(np.isinf(np.asarray(metrics.psnr(x, x))))
    np.testing.assert_array_equal(np.asarray(metrics.ssim(x, x)), 1.0)
    calls = []
    d = metrics.lpips(x, x, _fake_lpips(calls))
    np.testing.assert_array_equal(np.asarray(d), 0.0)
    assert d.shape == (3,)
    # the wrapper hands [-1, 1] images to the network
    assert calls[0][0] < -0.9 and calls[0][1] > 0.9 and calls[0][2] == (3, 16, 20, 3)
    m = metrics.image_metrics(x, x)
    assert m["lpips"] is None and m["psnr"].shape == (3,)


def test_psnr_known_gaussian_noise():
    sigma, shape = 0.05, (64, 64, 3)
    noise = np.random.default_rng(1).normal(0.0, sigma, shape)
    x = np.full(shape, 0.5)
    y = x + noise
    got = float(metrics.psnr(x.astype(np.float32), y.astype(np.float32)))
    # exact value from the realised noise (float32 rounding of x + noise only: < 1e-3 dB)
    exact = -10 * math.log10(np.mean(noise**2))
    assert abs(got - exact) < 1e-3
    # and the nominal -10 log10(sigma^2): mean(n^2)/sigma^2 has relative sd sqrt(2/N) = 1.3 %,
    # so 4 sd is 10 log10(1.052) = 0.22 dB
    assert abs(got - (-10 * math.log10(sigma**2))) < 0.22


def test_known_shifts():
    # brightness shift by delta: PSNR = -20 log10(delta) exactly
    x = np.full((1, 24, 24, 3), 0.25, np.float32)
    y = x + 0.5
    assert abs(float(metrics.psnr(x, y)[0]) - (-20 * math.log10(0.5))) < 1e-5
    # constant images a, b: variances vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    c1 = 0.01**2
    want = (2 * 0.25 * 0.75 + c1) / (0.25**2 + 0.75**2 + c1)
    # float32 filtering leaves ~1e-9 in the (zero) variances, relative to C2 = 9e-4: 1e-5
    assert abs(float(metrics.ssim(x, y)[0]) - want) < 1e-5
    # a step edge shifted by one column differs in exactly H pixels: MSE = 1 / W
    h, w = 16, 40
    edge = np.zeros((h, w, 3), np.float32)
    edge[:, w // 2:] = 1.0
    shifted = np.roll(edge, 1, axis=1)
    shifted[:, 0] = 0.0
    assert abs(float(metrics.psnr(edge, shifted)) - 10 * math.log10(w)) < 1e-5


def test_ssim_matches_skimage():
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(2)
    smooth = np.cumsum(rng.random((40, 33, 3)), axis=1)
    cases = [
        (rng.random((40, 33, 3)), None),  # noise
        (smooth / smooth.max(), 0.05),  # smooth ramp + noise (variance cancellation case)
        (np.linspace(0, 1, 48)[None, :, None] * np.ones((48, 1, 3)), "roll"),
    ]
    for x, kind in cases:
        if kind == "roll":
            y = np.roll(x, 2, axis=1)
        else:
            y = np.clip(x + (0.1 if kind is None else kind) * rng.standard_normal(x.shape), 0, 1)
        want = skm.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, data_range=1,
                                         channel_axis=-1)
        got = float(metrics.ssim(x.astype(np.float32), y.astype(np.float32)))
        assert abs(got - want) < 1e-5, (kind, got, want)  # float32 vs float64 filtering
    # batched: leading axes are kept and each image matches the unbatched value
    xb = rng.random((2, 3, 12, 14, 3)).astype(np.float32)
    yb = rng.random((2, 3, 12, 14, 3)).astype(np.float32)
    out = np.asarray(metrics.ssim(xb, yb))
    assert out.shape == (2, 3)
    assert abs(out[1, 2] - float(metrics.ssim(xb[1, 2], yb[1, 2]))) < 1e-6
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(xb[..., :8, :, :], yb[..., :8, :, :])


def test_metrics_jit():
    x = jnp.ones((2, 16, 16, 3)) * 0.3
    y = x.at[:, 0, 0, 0].set(0.9)
    np.testing.assert_allclose(jax.jit(metrics.psnr)(x, y), metrics.psnr(x, y), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(metrics.ssim)(x, y), metrics.ssim(x, y), rtol=1e-6)


def test_confidence_intervals():
    ci = metrics.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    t975_4 = 2.7764451051977987  # Student t quantile, 4 degrees of freedom
    assert ci["mean"] == 3.0 and ci["n"] == 5
    assert abs(ci["std"] - math.sqrt(2.5)) < 1e-12
    assert abs(ci["half_width"] - t975_4 * math.sqrt(2.5) / math.sqrt(5)) < 1e-9
    assert abs(ci["low"] - (3.0 - ci["half_width"])) < 1e-12
    assert metrics.mean_ci([2.0])["half_width"] is None  # one sample: no interval
    # paired: the CI of the differences and the paired t-test
    a = np.array([20.1, 21.5, 19.8, 22.0, 20.9, 21.2])
    b = np.array([19.5, 21.0, 19.9, 21.1, 20.0, 20.8])
    pc = metrics.paired_ci(a, b)
    d = a - b
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    from scipy import stats
    assert abs(pc["mean"] - d.mean()) < 1e-12
    assert abs(pc["p_value"] - 2 * stats.t.sf(abs(t), len(d) - 1)) < 1e-12
    assert abs(pc["half_width"] - metrics.mean_ci(d)["half_width"]) < 1e-12
    bs = metrics.bootstrap_ci(d, num_resamples=2000, seed=0)
    assert bs == metrics.bootstrap_ci(d, num_resamples=2000, seed=0)
    assert bs["low"] < d.mean() < bs["high"]
    # PSNR of identical images (inf) is capped before averaging, and counted
    s = metrics.summarize([30.0, float("inf")], "ref_psnr")
    assert s["n_capped"] == 1 and s["mean"] == (30.0 + metrics.PSNR_CAP_DB) / 2
    with pytest.raises(ValueError, match="NaN"):
        metrics.mean_ci([1.0, float("nan")])


def test_small_samples_clip_intervals_warn_and_plot_readably(tmp_path):
    """n = 2 SSIMs near 1: the t interval (t_{0.975,1} = 12.7) would pass 1; it is clipped to
    SSIM's range and the report says the sample is small. n = 1: the axes keep a readable
    span instead of zooming into ±1e-6 around the value."""
    s = metrics.summarize([0.95, 0.75], "ref_ssim")
    t975_1 = 12.706204736174698
    assert abs(s["half_width"] - t975_1 * np.std([0.95, 0.75], ddof=1) / math.sqrt(2)) < 1e-9
    assert s["clipped"] and s["high"] == 1.0 and s["low"] == 0.85 - s["half_width"]
    assert s["small_n"] and s["low"] > -1.0
    d = metrics.paired_ci([0.9, 0.1], [0.1, 0.9], metric="ref_ssim")  # diff within [-2, 2]
    assert d["clipped"] and d["low"] == -2.0 and d["high"] == 2.0
    lo, hi = report._axis_limits(24.0, 24.0, nonnegative=True)  # one sample: no interval
    assert hi - lo >= 0.05 * 24.0 and lo < 24.0 < hi
    records = [{"sample": f"s{i}", "variants": {"aware": {"metrics": {"ref_ssim": v}}}}
               for i, v in enumerate((0.95, 0.75))]
    report.write_report(str(tmp_path), records, "t", plot_backend="pil")
    md = (tmp_path / "report.md").read_text()
    assert "Few samples (n = 2 < 5)" in md and "0.8500 [" in md and ", 1.0000] (n=2)" in md


# ---- consistency --------------------------------------------------------------------------------


def test_fit_holdout_sanity_on_ground_truth(scene_views):
    views, _, c2w = scene_views
    r = consistency.fit_holdout_score(views, c2w, config=FIT, background=(1.0, 1.0, 1.0),
                                      return_renders=True)
    odd = views[1::2]
    const = np.broadcast_to(views[0::2].mean(axis=(0, 1, 2)), odd.shape)
    baseline = float(np.mean(np.asarray(metrics.psnr(const, odd))))
    assert r["train_views"] == list(range(0, 24, 2))
    assert r["holdout"]["views"] == list(range(1, 24, 2))
    assert len(r["holdout"]["psnr_per_view"]) == 12 and r["holdout"]["lpips"] is None
    assert r["holdout"]["psnr"] > baseline + 4.0, (r["holdout"]["psnr"], baseline)
    assert r["holdout"]["ssim"] > 0.6
    # held-out views swapped for views 90 degrees of azimuth away cannot be explained by the
    # same 3D object: the same fit (deterministic: an identical second run) scores far lower
    wrong = views.copy()
    wrong[1::2] = np.roll(views, 6, axis=0)[1::2]
    bad = consistency.fit_holdout_score(wrong, c2w, config=FIT, background=(1.0, 1.0, 1.0),
                                        return_renders=True)
    np.testing.assert_array_equal(bad["renders"], r["renders"])
    assert bad["holdout"]["psnr"] < r["holdout"]["psnr"] - 5.0


def test_lgm_holdout_runs_and_is_deterministic(scene_views, tiny_lgm):
    views, _, c2w = scene_views
    lgm = tiny_lgm[0]
    r = consistency.lgm_holdout_score(lgm, views, c2w, return_renders=True)
    assert r["input_views"] == [0, 6, 12, 18]
    assert r["holdout"]["views"] == [i for i in range(24) if i % 6]
    assert len(r["holdout"]["psnr_per_view"]) == 20 and r["renders"].shape == views.shape
    assert np.all(np.isfinite(r["renders"])) and np.isfinite(r["holdout"]["psnr"])
    assert r["background"] == [1.0, 1.0, 1.0]  # auto: the white border of the views
    again = consistency.lgm_holdout_score(lgm, views, c2w)
    assert again["holdout"]["psnr_per_view"] == r["holdout"]["psnr_per_view"]
    with pytest.raises(ValueError, match="LGM takes 4 input views"):
        consistency.lgm_holdout_score(lgm, views, c2w, input_idx=(0, 1))


def test_background_estimate():
    v = np.full((2, 12, 12, 3), 0.5, np.float32)
    v[:, 4:8, 4:8] = [1.0, 0.0, 0.0]
    np.testing.assert_allclose(consistency.estimate_background(v), [0.5, 0.5, 0.5])
    with pytest.raises(ValueError):
        consistency.resolve_background("grey", v)


# ---- folders ------------------------------------------------------------------------------------


def _write_gobjaverse(root, rgba, c2w_opengl):
    """G-Objaverse layout: campos_512_v4/000NN/000NN.png (RGBA) + .json (OpenCV x, y, z, origin)."""
    for i, (img, m) in enumerate(zip(rgba, c2w_opengl, strict=True)):
        d = root / "campos_512_v4" / f"{i:05d}"
        d.mkdir(parents=True)
        Image.fromarray(np.rint(img * 255).astype(np.uint8), "RGBA").save(d / f"{i:05d}.png")
        cv = np.asarray(m, np.float64) @ np.diag([1.0, -1.0, -1.0, 1.0])
        rec = {"x": cv[:3, 0].tolist(), "y": cv[:3, 1].tolist(), "z": cv[:3, 2].tolist(),
               "origin": cv[:3, 3].tolist(), "y_fov": math.radians(39.6)}
        (d / f"{i:05d}.json").write_text(json.dumps(rec))


def _write_sample(d, views, plain=None, elevation=15.0, distance=2.0):
    """sample.py layout: views/NNN.png (+ views_plain/) and run.json with the orbit config."""
    (d / "views").mkdir(parents=True)
    for k, v in enumerate(views):
        Image.fromarray(np.rint(np.clip(v, 0, 1) * 255).astype(np.uint8)).save(
            d / "views" / f"{k:03d}.png")
    if plain is not None:
        (d / "views_plain").mkdir()
        for k, v in enumerate(plain):
            Image.fromarray(np.rint(np.clip(v, 0, 1) * 255).astype(np.uint8)).save(
                d / "views_plain" / f"{k:03d}.png")
    rec = {"mode": "t2mv", "prompt": "a test", "seed": 1,
           "config": {"elevation": elevation, "distance": distance, "num_frames": len(views),
                      "sampler": {"fovy": 39.6, "aware_steps": [1]}},
           "cameras_c2w_zup": "orbit"}
    (d / "run.json").write_text(json.dumps(rec))


def test_folder_layouts(tmp_path, scene_views):
    views, rgba, c2w = scene_views
    _write_gobjaverse(tmp_path / "obj", rgba, c2w)
    vs = folders.load_views(str(tmp_path / "obj"))
    assert vs.layout == "gobjaverse" and vs.name == "obj" and abs(vs.fovy - 39.6) < 1e-9
    np.testing.assert_allclose(vs.c2w, c2w, atol=1e-6)  # OpenCV json -> OpenGL c2w
    np.testing.assert_allclose(vs.views, views, atol=0.5 / 255 + 1e-6)  # on white
    assert folders.load_views(str(tmp_path / "obj" / "campos_512_v4")).name == "obj"
    grey = folders.load_views(str(tmp_path / "obj"), background=(0.5, 0.5, 0.5))
    assert abs(float(grey.views[0, 0, 0, 0]) - 0.5) < 1e-6  # RGBA composited on the colour
    # PNGs + cameras.json (frames layout) and an orbit cameras.json
    gso = tmp_path / "gso"
    gso.mkdir()
    names = []
    for k, v in enumerate(views[:4]):
        names.append(f"{k:02d}.png")
        Image.fromarray(np.rint(v * 255).astype(np.uint8)).save(gso / names[-1])
    folders.write_cameras_json(str(gso), names, c2w[:4])
    vs = folders.load_views(str(gso))
    assert vs.layout == "cameras" and vs.num_views == 4
    np.testing.assert_allclose(vs.c2w, c2w[:4], atol=1e-6)
    (gso / "cameras.json").write_text(json.dumps({"elevation": 15.0, "distance": 2.0}))
    np.testing.assert_allclose(folders.load_views(str(gso)).c2w,
                               np.asarray(orbit_cameras(4)), atol=1e-6)
    # resizing, and a non-view folder
    assert folders.load_views(str(gso), resolution=16).views.shape == (4, 16, 16, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(folders.FolderError, match="holds no view folders"):
        folders.find_view_sets(str(tmp_path / "empty"))
    assert folders.camera_angle_error(c2w, c2w) < 1e-3


# ---- report -------------------------------------------------------------------------------------


def test_report_pil_backend_and_unavailable_lpips(tmp_path):
    rng = np.random.default_rng(3)
    records = []
    for i in range(4):
        base = 20 + rng.normal()
        records.append({"sample": f"s{i}", "variants": {
            "aware": {"metrics": {"ref_psnr": base + 1.0, "ref_lpips": None},
                      "per_view": {"ref_psnr": list(base + 1 + rng.normal(size=5))}},
            "plain": {"metrics": {"ref_psnr": base, "ref_lpips": None},
                      "per_view": {"ref_psnr": list(base + rng.normal(size=5))}}}})
    out = report.write_report(str(tmp_path), records, "t", plot_backend="pil")
    md = (tmp_path / "report.md").read_text()
    assert "| LPIPS-VGG vs GT ↓ | n/a | n/a | n/a |" in md
    assert "+1.00 ± 0.00 (p=n/a)" in md  # constant paired difference: zero-width interval
    for name in ("metrics.png", "paired.png", "per_view.png"):
        assert Image.open(tmp_path / name).size[0] > 100
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["aggregate"]["variants"]["aware"]["ref_lpips"] is None
    assert summary["plot_backend"] == "pil" and len(out["samples"]) == 4


def test_report_groups_match_hand_computed_subsets(tmp_path):
    """Records naming a group get one table per group whose means are those of the subset."""
    vals = {"1 object": [27.0, 29.0], "2 objects": [18.0, 20.0, 22.0]}
    records = [{"sample": f"{g[0]}{i}", "group": g,
                "variants": {"aware": {"metrics": {"ref_psnr": v + 0.5}},
                             "plain": {"metrics": {"ref_psnr": v}}}}
               for g, vs in vals.items() for i, v in enumerate(vs)]
    records.append({"sample": "ungrouped", "variants": {
        "aware": {"metrics": {"ref_psnr": 5.5}}, "plain": {"metrics": {"ref_psnr": 5.0}}}})
    report.write_report(str(tmp_path), records, "t", plot_backend="pil")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["groups"]) == ["1 object", "2 objects"]  # order of first appearance
    for g, vs in vals.items():
        agg = summary["groups"][g]
        assert agg["num_samples"] == len(vs)
        assert agg["variants"]["plain"]["ref_psnr"]["mean"] == pytest.approx(np.mean(vs))
        assert agg["variants"]["aware"]["ref_psnr"]["mean"] == pytest.approx(np.mean(vs) + 0.5)
        assert agg["paired"]["ref_psnr"]["mean"] == pytest.approx(0.5)
    # the totals still include the ungrouped record
    total = np.mean([v for vs in vals.values() for v in vs] + [5.0])
    assert summary["aggregate"]["variants"]["plain"]["ref_psnr"]["mean"] == pytest.approx(total)
    md = (tmp_path / "report.md").read_text()
    assert "### 1 object (2 sample(s))" in md and "### 2 objects (3 sample(s))" in md
    assert "| PSNR vs GT (dB) ↑ | 28.50 ± " in md.split("### 1 object")[1].split("###")[0]


def test_compare_reports_matches_hand_computed_paired_statistics(tmp_path, eval_cli, capsys):
    """``eval.py compare``: two reports of the same samples (written in different orders) are
    matched by seed and prompt; the paired difference B − A, its Student-t interval, p-value
    and the "B better" count equal a hand computation (scipy); LPIPS-like metrics count lower
    as better; groups get their own rows; mismatched samples are named."""
    from scipy import stats

    old = {0: 20.0, 1: 21.0, 2: 19.5, 3: 27.0}
    gain = {0: 1.0, 1: 2.5, 2: -0.5, 3: 0.25}
    groups = {0: "2 objects", 1: "2 objects", 2: "2 objects", 3: "1 object"}

    def rec(seed, psnr, lpips):
        return {"sample": f"{seed:03d}_p{seed}", "seed": seed, "prompt": f"p{seed}",
                "group": groups.get(seed, "2 objects"),
                "variants": {"aware": {"metrics": {"ref_psnr": psnr, "ref_lpips": lpips}}}}

    a = [rec(k, v, 0.30) for k, v in old.items()]
    b = [rec(k, old[k] + gain[k], 0.30 - 0.01 * k) for k in reversed(old)]
    report.write_report(str(tmp_path / "a"), a, "a", plot_backend="pil")
    report.write_report(str(tmp_path / "b"), b, "b", plot_backend="pil")
    assert eval_cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                          str(tmp_path / "cmp"), "--name-a", "old", "--name-b", "new"]) == 0
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    d = np.array([gain[k] for k in old])
    row = cmp["variants"]["aware"]["ref_psnr"]
    sem = d.std(ddof=1) / math.sqrt(d.size)
    assert row["diff"]["mean"] == pytest.approx(d.mean())
    assert row["diff"]["half_width"] == pytest.approx(stats.t.ppf(0.975, d.size - 1) * sem)
    assert row["diff"]["p_value"] == pytest.approx(stats.ttest_rel(d + 1, np.ones(4)).pvalue)
    assert row["a"]["mean"] == pytest.approx(np.mean(list(old.values())))
    assert row["b_better"] == 3 and row["n"] == 4
    lp = cmp["variants"]["aware"]["ref_lpips"]
    assert lp["diff"]["mean"] == pytest.approx(-0.01 * np.mean(list(old)))
    assert lp["b_better"] == 3  # seeds 1-3 lower; seed 0 equal
    pair = cmp["groups"]["2 objects"]["variants"]["aware"]["ref_psnr"]
    assert pair["n"] == 3 and pair["diff"]["mean"] == pytest.approx(np.mean(d[:3]))
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| aware | PSNR vs GT (dB) ↑ | 21.88 ± " in md and "| 3 of 4 |" in md
    assert "## 1 object (1 sample(s))" in md

    report.write_report(str(tmp_path / "c"), a[:3] + [rec(9, 20.0, 0.3)], "c",
                        plot_backend="pil")
    with pytest.raises(ValueError, match=r"only in the first: \['003_p3'\]; only in the "
                                         r"second: \['009_p9'\]"):
        report.write_comparison(str(tmp_path / "x"), str(tmp_path / "a"), str(tmp_path / "c"))
    capsys.readouterr()
    assert eval_cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "nope"), "--out",
                          str(tmp_path / "y")]) == 2
    assert "not an evaluation report" in capsys.readouterr().err


# ---- eval.py end to end -------------------------------------------------------------------------


def test_eval_folders_end_to_end(eval_cli, tmp_path, scene_views, capsys):
    views, rgba, c2w = scene_views
    _write_gobjaverse(tmp_path / "ref" / "obj", rgba, c2w)
    rng = np.random.default_rng(4)
    aware = np.clip(views + rng.normal(0, 0.02, views.shape), 0, 1)
    plain = np.clip(views + rng.normal(0, 0.08, views.shape), 0, 1)
    _write_sample(tmp_path / "gen" / "000_obj", aware, plain)
    out = tmp_path / "report"
    argv = ["folders", "--generated", str(tmp_path / "gen"), "--reference",
            str(tmp_path / "ref"), "--out", str(out)]
    assert eval_cli.main(argv) == 0, capsys.readouterr().err
    md = (out / "report.md").read_text()
    assert "PSNR vs GT (dB) ↑" in md and "aware − plain" in md and "n/a" in md
    assert (out / "metrics.png").is_file() and (out / "per_view.png").is_file()
    rec = json.loads((out / "samples" / "000_obj.json").read_text())
    assert rec["camera_max_angle_deg"] < 0.01
    # the stored mean equals the PSNR recomputed by hand from the PNGs on disk
    gen = np.stack([np.asarray(Image.open(tmp_path / "gen" / "000_obj" / "views" /
                                          f"{k:03d}.png"), np.float64) / 255 for k in range(24)])
    ref = folders.load_views(str(tmp_path / "ref" / "obj")).views.astype(np.float64)
    hand = np.mean([-10 * math.log10(np.mean((g - r) ** 2)) for g, r in zip(gen, ref,
                                                                              strict=True)])
    assert abs(rec["variants"]["aware"]["metrics"]["ref_psnr"] - hand) < 1e-3
    assert rec["variants"]["aware"]["metrics"]["ref_lpips"] is None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["aggregate"]["paired"]["ref_psnr"]["mean"] > 5.0  # less noise scores higher
    # mismatched view counts are a clear error
    _write_sample(tmp_path / "gen2" / "x", views[:5])
    assert eval_cli.main(["folders", "--generated", str(tmp_path / "gen2"), "--reference",
                          str(tmp_path / "ref"), "--out", str(tmp_path / "r2")]) == 2
    assert "must match" in capsys.readouterr().err


def test_eval_consistency_end_to_end(eval_cli, tmp_path, scene_views, tiny_lgm, capsys):
    views, _, c2w = scene_views
    gen = tmp_path / "gen" / "obj"
    gen.mkdir(parents=True)
    names = [f"{k:03d}.png" for k in range(24)]
    for n, v in zip(names, views, strict=True):
        Image.fromarray(np.rint(v * 255).astype(np.uint8)).save(gen / n)
    folders.write_cameras_json(str(gen), names, c2w)
    out = tmp_path / "report"
    argv = ["consistency", "--generated", str(tmp_path / "gen"), "--out", str(out),
            "--lgm-checkpoint", str(tiny_lgm[1]), "--fit-steps", str(FIT.steps),
            "--fit-gaussians", str(FIT.num_gaussians), "--consistency-background", "1,1,1"]
    assert eval_cli.main(argv) == 0, capsys.readouterr().err
    md = (out / "report.md").read_text()
    for label in ("3DGS-fit hold-out PSNR", "LGM hold-out PSNR", "3DGS-fit hold-out LPIPS"):
        assert label in md
    assert (out / "metrics.png").is_file()
    rec = json.loads((out / "samples" / "obj.json").read_text())
    m = rec["variants"]["views"]["metrics"]
    assert m["fit_psnr"] > 15.0 and m["fit_lpips"] is None and m["lgm_lpips"] is None
    assert np.isfinite(m["lgm_psnr"])
    assert rec["details"]["views"]["fit_holdout"]["config"]["num_gaussians"] == 512
    # folders without cameras cannot be scored for consistency
    bare = tmp_path / "bare" / "x"
    bare.mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(bare / "a.png")
    assert eval_cli.main(["consistency", "--generated", str(bare), "--out",
                          str(tmp_path / "r3")]) == 2
    assert "no cameras" in capsys.readouterr().err


def test_shapes_views_tool_writes_the_ground_truth_eval_reads(tmp_path, capsys):
    """tools/shapes_views.py: the folders it writes load (layout ``cameras``) as the same
    views and cameras that eval.py's shapes benchmark renders, on any background (within half
    a uint8 step: the PNGs are 8-bit)."""
    spec = importlib.util.spec_from_file_location(
        "shapes_views", os.path.join(ROOT, "tools", "shapes_views.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "gt"
    assert tool.main(["--out", str(out), "--num-samples", "2", "--num-views", "6",
                      "--resolution", "16", "--seed-offset", "7", "--elevation", "20",
                      "--distance", "2.0", "--max-objects", "2", "--fit-radius", "0.5",
                      "--next-to", "left_right", "--max-size-ratio", "1.25"]) == 0
    sets = folders.find_view_sets(str(out))
    assert [os.path.basename(s) for s in sets] == ["000_seed7", "001_seed8"]
    for k, path in enumerate(sets):
        vs = folders.load_views(path, background=(0.25, 0.5, 0.75))
        assert vs.layout == "cameras"
        scene = random_scene(7 + k, 2, 0.5, "left_right", 1.25)
        rgba, _ = render_scene(scene, 6, 16, 20.0, 2.0)
        want = rgba[..., :3] + (1.0 - rgba[..., 3:]) * np.asarray([0.25, 0.5, 0.75])
        np.testing.assert_allclose(vs.views, want, atol=0.5 / 255 + 1e-6)
        np.testing.assert_allclose(vs.c2w, np.asarray(orbit_cameras(6, 20.0, 2.0)), atol=1e-6)
        meta = json.loads((out / os.path.basename(path) / "cameras.json").read_text())
        assert meta["caption"] == scene.caption and meta["seed"] == 7 + k
    with pytest.raises(SystemExit):  # a world random_scene refuses, before anything is written
        tool.main(["--out", str(tmp_path / "bad"), "--num-samples", "1",
                   "--max-size-ratio", "0.5"])
    assert "shapes world" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_eval_bad_input_fails_before_anything_is_read(eval_cli, tmp_path, capsys, monkeypatch):
    """Every bad argument of eval.py: one ``error:`` line naming it, exit code 2, found before
    any view is read or model loaded (both made to fail loudly here), nothing written."""
    from videomv_jax.pipeline import MultiViewPipeline

    def no_work(*a, **k):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(MultiViewPipeline, "from_checkpoints", no_work)
    monkeypatch.setattr(eval_cli, "find_view_sets", no_work)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out = str(tmp_path / "out")
    gen = str(tmp_path)
    fo = ["folders", "--generated", gen, "--reference", gen]
    co = ["consistency", "--generated", gen]
    sh = ["shapes", "--num-samples", "2"]
    cases = [
        ([*fo, "--out", str(a_file)], "exists and is not a folder"),
        ([*fo, "--background", "1,2"], "--background must be"),
        ([*fo, "--background", "auto"], "--background must be R,G,B"),
        ([*co, "--background", "auto"], "--background must be R,G,B"),
        ([*fo, "--exclude-views", "a,b"], "--exclude-views must be a comma list of ints"),
        ([*fo, "--confidence", "1.5"], "--confidence must be in (0, 1)"),
        ([*fo, "--max-views", "0"], "--max-views must be"),
        ([*co, "--consistency-background", "red"], "--consistency-background must be"),
        ([*co, "--fit-steps", "0"], "--fit-steps must be"),
        ([*co, "--fit-gaussians", "-5"], "--fit-gaussians must be"),
        ([*co, "--fit-views-per-step", "-1"], "--fit-views-per-step must be"),
        ([*co, "--lgm-views", "0,x"], "--lgm-views must be a comma list of ints"),
        ([*co, "--lpips-vgg16", str(a_file)], "needs both --lpips-vgg16 and --lpips-weights"),
        ([*sh, "--seed-offset", "99999999999999999999"], "--seed-offset must be an integer"),
        ([*sh, "--seed-offset", "-3"], "--seed-offset must be an integer"),
        (["shapes", "--num-samples", "0"], "--num-samples must be an integer >= 1"),
        ([*sh, "--steps", "0"], "--steps must be"),
        ([*sh, "--steps", "7"], "divide num_timesteps"),
        ([*sh, "--set", "nope=1"], "unknown config key 'nope'"),
        ([*sh, "--checkpoint-dir", str(tmp_path / "missing")], "missing"),
    ]
    for argv, message in cases:
        argv = argv if "--out" in argv else [*argv, "--out", out]
        assert eval_cli.main(argv) == 2, argv
        err = [ln for ln in capsys.readouterr().err.strip().splitlines()
               if not ln.startswith("warning:")]
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (argv, err)
        assert not os.path.exists(out), argv  # nothing written
