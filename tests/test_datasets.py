"""Multi-view data sets (G-Objaverse reader, TFDS builders) and the input pipeline."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from PIL import Image

from videomv_jax.data import builders
from videomv_jax.data import gobjaverse as gv
from videomv_jax.data.pipeline import (
    DEFAULT_NEGATIVE_PROMPT,
    GREY,
    InputConfig,
    InputPipeline,
    batch_sharding,
    composite,
    synthetic_batches,
)
from videomv_jax.data.shapes import Primitive, Scene, random_scene, render_scene
from videomv_jax.render.camera import DEFAULT_FOVY_DEG, normalize_poses, orbit_cameras

REPO = Path(__file__).resolve().parents[1]
V = 24
SIZE = 16  # fixture renders (real ones are 512)
GOOD = ("0/obj_a", "0/obj_b", "1/obj_c")


# --------------------------------------------------------------------------------------------
# G-Objaverse fixture
# --------------------------------------------------------------------------------------------


def _fixture_c2w(k: int) -> np.ndarray:
    """OpenGL c2w of object k: the G-Objaverse orbit (distance 1.645) at elevation 10 + 5k."""
    return np.asarray(orbit_cameras(V, 10.0 + 5.0 * k, 1.645), np.float64)


def _write_object(root: Path, name: str, k: int) -> np.ndarray:
    """Write 24 RGBA PNGs + camera JSONs; return the straight-alpha RGBA written."""
    rng = np.random.default_rng(k)
    rgba = rng.integers(0, 256, (V, SIZE, SIZE, 4), dtype=np.uint8)
    rgba[:, :4, :, 3] = 0  # fully transparent rows
    rgba[:, 4:8, :, 3] = 255  # opaque rows
    c2w = _fixture_c2w(k)
    for v in range(V):
        png, cam = gv.view_paths(root, name, v)
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgba[v]).save(png)  # RGBA
        cv = c2w[v].copy()
        cv[:3, 1:3] *= -1  # OpenGL -> OpenCV columns
        meta = {"x": cv[:3, 0].tolist(), "y": cv[:3, 1].tolist(), "z": cv[:3, 2].tolist(),
                "origin": cv[:3, 3].tolist(), "x_fov": 0.69, "y_fov": 0.69}
        cam.write_text(json.dumps(meta))
    return rgba


@pytest.fixture(scope="module")
def gobj(tmp_path_factory):
    """3 good objects and 3 broken ones (missing view, corrupted PNG, missing caption)."""
    root = tmp_path_factory.mktemp("gobjaverse")
    written = {name: _write_object(root, name, k) for k, name in enumerate(GOOD)}
    for k, name in enumerate(("1/bad_missing_view", "2/bad_png", "2/no_caption"), start=3):
        _write_object(root, name, k)
    os.remove(gv.view_paths(root, "1/bad_missing_view", 7)[0])
    gv.view_paths(root, "2/bad_png", 5)[0].write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    captions = {name: f"caption of {name}" for name in (*GOOD, "1/bad_missing_view",
                                                        "2/bad_png")}
    cap_path = root / "captions.json"
    cap_path.write_text(json.dumps(captions))
    return root, cap_path, written


def test_load_object_cameras_and_views(gobj):
    root, cap_path, written = gobj
    captions = gv.load_captions(cap_path)
    ex = gv.load_object(root, "0/obj_b", captions, resolution=SIZE)
    np.testing.assert_array_equal(ex["views"], gv.premultiply(written["0/obj_b"]))
    # the JSON holds the OpenCV c2w; the loader returns the OpenGL one [x | -y | -z | origin]
    np.testing.assert_allclose(ex["c2w_opengl"], _fixture_c2w(1), atol=1e-6)
    np.testing.assert_allclose(ex["camera"], ex["c2w_opengl"].reshape(V, 16))
    np.testing.assert_allclose(ex["lgm_cameras"], normalize_poses(ex["c2w_opengl"]), atol=1e-6)
    assert ex["caption"] == "caption of 0/obj_b" and ex["object_id"] == "0/obj_b"
    # view 0's LGM camera: identity rotation at (0, 0, |origin|)
    np.testing.assert_allclose(ex["lgm_cameras"][0][:3, :3], np.eye(3), atol=1e-5)
    np.testing.assert_allclose(ex["lgm_cameras"][0][2, 3], 1.645, atol=1e-5)
    assert gv.list_objects(root) == sorted([*GOOD, "1/bad_missing_view", "2/bad_png",
                                            "2/no_caption"])


def test_premultiply_and_resize():
    rgba = np.array([[[200, 100, 50, 128], [255, 255, 255, 0]]], np.uint8)
    pm = gv.premultiply(rgba)
    np.testing.assert_array_equal(pm, [[[100, 50, 25, 128], [0, 0, 0, 0]]])
    # bicubic is linear: resizing premultiplied views then compositing == composite then resize
    # (a smooth object: on pixel noise bicubic overshoot clipping dominates)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    img = np.stack([200 * xx + 20, 150 * yy + 50, 100 * xx * yy + 30,
                    255 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.12)], -1).astype(np.uint8)
    small = gv.resize_views(gv.premultiply(img), 32)
    ours = composite(small, GREY)[0]
    ref_full = np.rint(img[..., :3] * (img[..., 3:] / 255.0) + 128 * (1 - img[..., 3:] / 255.0))
    ref = Image.fromarray(ref_full.astype(np.uint8)).resize((32, 32), Image.Resampling.BICUBIC)
    err = np.abs(ours - (np.asarray(ref, np.float32) / 127.5 - 1)) * 127.5  # uint8 steps
    # away from the silhouette only uint8 rounding differs; on it, bicubic overshoot of alpha
    # (~7% of a hard step) is clipped to [0, 255], costing up to ~0.07 * bg on those pixels
    a = small[..., 3]
    edge = (a > 0) & (a < 255)
    edge = edge | np.roll(edge, 1, 0) | np.roll(edge, -1, 0) | np.roll(edge, 1, 1) | np.roll(
        edge, -1, 1)
    assert err[~edge].max() <= 1.01 and err.max() <= 12, (err[~edge].max(), err.max())
    const = np.full((2, 8, 8, 4), 77, np.uint8)
    np.testing.assert_array_equal(gv.resize_views(const, 5), np.full((2, 5, 5, 4), 77))


def test_bad_objects_raise_naming_path(gobj, tmp_path):
    root, cap_path, _ = gobj
    captions = gv.load_captions(cap_path)
    with pytest.raises(gv.MissingViewError, match="00007.png"):
        gv.load_object(root, "1/bad_missing_view", captions)
    with pytest.raises(gv.UnreadableImageError, match="00005.png"):
        gv.load_object(root, "2/bad_png", captions)
    with pytest.raises(gv.MissingCaptionError, match="no_caption"):
        gv.load_object(root, "2/no_caption", captions)
    assert gv.load_object(root, "2/no_caption", captions, resolution=8,
                          require_caption=False)["caption"] == ""
    cam = tmp_path / "cam.json"
    cam.write_text(json.dumps({"x": [1, 0, 0], "y": [0, 1, 0], "z": [0, 0, 1]}))
    with pytest.raises(gv.BadCameraError, match=r"cam\.json.*origin"):
        gv.camera_from_json(cam)


def test_gobjaverse_builder_round_trip_and_bad_report(gobj, tmp_path, caplog):
    root, cap_path, written = gobj
    with caplog.at_level(logging.WARNING, logger="videomv_jax.data.builders"):
        res = builders.build_dataset("gobjaverse", tmp_path, root=root, captions=cap_path,
                                     resolution=8, hr_resolution=SIZE)
    assert res.num_examples == 3 and res.num_bad == 3
    reported = {b["path"]: b["error"] for b in res.bad_examples}
    assert reported == {
        str(gv.view_paths(root, "1/bad_missing_view", 7)[0]): "MissingViewError",
        str(gv.view_paths(root, "2/bad_png", 5)[0]): "UnreadableImageError",
        str(root / "2/no_caption"): "MissingCaptionError",
    }
    assert builders.read_bad_examples(res.path) == list(res.bad_examples)
    assert "skipped 3 bad example(s) of 6" in caplog.text
    assert all(p in caplog.text for p in reported)

    src = builders.load_source(res.path)
    assert len(src) == 3
    seen = set()
    for i in range(len(src)):
        ex = src[i]
        name = ex["object_id"].decode()
        seen.add(name)
        k = GOOD.index(name)
        pm = gv.premultiply(written[name])
        np.testing.assert_array_equal(ex["views_hr"], pm)
        np.testing.assert_array_equal(ex["views"], gv.resize_views(pm, 8))
        np.testing.assert_allclose(ex["c2w"], _fixture_c2w(k), atol=1e-6)
        np.testing.assert_allclose(ex["camera"], ex["c2w"].reshape(V, 16))
        np.testing.assert_allclose(ex["lgm_cameras"], normalize_poses(ex["c2w"]), atol=1e-6)
        assert ex["caption"].decode() == f"caption of {name}"
    assert seen == set(GOOD)

    with pytest.raises(gv.BadExampleError):
        builders.build_dataset("gobjaverse", tmp_path, root=root, captions=cap_path,
                               resolution=8, strict=True, config_name="strict")
    assert not (tmp_path / "videomv_gobjaverse" / "strict" / "1.0.0").exists()


def test_make_shapes_cli_gobjaverse_strict(gobj, tmp_path, capsys):
    root, cap_path, _ = gobj
    spec = importlib.util.spec_from_file_location("make_shapes", REPO / "tools/make_shapes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main(["--gobjaverse-root", str(root), "--captions", str(cap_path), "--resolution",
                   "8", "--data-dir", str(tmp_path), "--strict"])
    assert rc == 2
    assert "bad_missing_view" in capsys.readouterr().err  # first bad object in sorted order
    objects = tmp_path / "objects.json"
    objects.write_text(json.dumps(["0/obj_a", "2/bad_png"]))
    rc = mod.main(["--gobjaverse-root", str(root), "--captions", str(cap_path), "--objects",
                   str(objects), "--resolution", "8", "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "built 1 examples" in out and "skipped 1 bad example(s)" in out
    assert "00005.png" in out


# --------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_ds(tmp_path_factory):
    return builders.build_dataset("shapes", tmp_path_factory.mktemp("shapes"), num_objects=2,
                                  resolution=32)


def test_shapes_builder_round_trip(shapes_ds):
    assert shapes_ds.num_examples == 2 and shapes_ds.num_bad == 0
    src = builders.load_source(shapes_ds.path)
    c2w = np.asarray(orbit_cameras(V, builders.SHAPES_ELEVATION_DEG, builders.SHAPES_DISTANCE))
    for i in range(2):
        ex = src[i]
        seed = int(ex["object_id"].decode().split("/")[1])
        scene = random_scene(seed)
        rgba, depth = render_scene(scene, V, 32, 15.0, 1.645, DEFAULT_FOVY_DEG)
        np.testing.assert_array_equal(ex["views"], np.rint(rgba * 255).astype(np.uint8))
        np.testing.assert_array_equal(ex["depth"], depth)
        np.testing.assert_allclose(ex["c2w"], c2w, atol=1e-6)
        assert ex["caption"].decode() == scene.caption


def test_shapes_next_to_setting_reaches_the_examples_and_the_folder_name():
    """``next_to`` goes from ShapesConfig to the scenes (the left-to-right world),
    names its own data folder and is validated."""
    cfg = builders.ShapesConfig(name="lr", resolution=16, max_objects=2, fit_radius=0.5,
                                next_to="left_right")
    seed = next(s for s in range(100)
                if random_scene(s, 2, 0.5).layout == "next to"
                and random_scene(s, 2, 0.5) != random_scene(s, 2, 0.5, "left_right"))
    ex = builders.shapes_example(cfg, seed)
    scene = random_scene(seed, 2, 0.5, "left_right")
    rgba, _ = render_scene(scene, V, 16, 15.0, 1.645, DEFAULT_FOVY_DEG)
    np.testing.assert_array_equal(ex["views"], np.rint(rgba * 255).astype(np.uint8))
    other = builders.shapes_example(dataclasses.replace(cfg, next_to="random"), seed)
    assert not np.array_equal(ex["views"], other["views"])
    name = builders._default_name("shapes", {"num_objects": 12000, "max_objects": 2,
                                             "fit_radius": 0.5, "next_to": "left_right"})
    assert name == "n12000_s0_r64_m2_fit0.5_left_right"
    assert not builders._default_name("shapes", {"next_to": "random"}).endswith("random")
    with pytest.raises(ValueError, match="next_to"):
        builders.ShapesConfig(name="bad", next_to="front_back")


def test_shapes_max_size_ratio_reaches_the_examples_and_the_folder_name():
    """``max_size_ratio`` goes from ShapesConfig to the scenes, names its own data folder
    and is validated."""
    cfg = builders.ShapesConfig(name="sr", resolution=16, max_objects=2, fit_radius=0.5,
                                next_to="left_right", max_size_ratio=1.25)
    seed = next(s for s in range(100) if random_scene(s, 2, 0.5, "left_right")
                != random_scene(s, 2, 0.5, "left_right", 1.25))
    ex = builders.shapes_example(cfg, seed)
    scene = random_scene(seed, 2, 0.5, "left_right", 1.25)
    rgba, _ = render_scene(scene, V, 16, 15.0, 1.645, DEFAULT_FOVY_DEG)
    np.testing.assert_array_equal(ex["views"], np.rint(rgba * 255).astype(np.uint8))
    assert ex["caption"] == scene.caption
    name = builders._default_name("shapes", {"num_objects": 12000, "max_objects": 2,
                                             "fit_radius": 0.5, "next_to": "left_right",
                                             "max_size_ratio": 1.25})
    assert name == "n12000_s0_r64_m2_fit0.5_left_right_sr1.25"
    for bad in (0.9, 3.5):
        with pytest.raises(ValueError, match="max_size_ratio"):
            builders.ShapesConfig(name="bad", max_size_ratio=bad)


def test_shapes_depth_is_analytic(tmp_path, monkeypatch):
    radius, dist, res = 0.3, builders.SHAPES_DISTANCE, 32
    sphere = Scene((Primitive("sphere", "red", (0.0, 0.0, 0.0), (radius,) * 3),), "a red sphere")
    monkeypatch.setattr(builders.shapes_lib, "random_scene", lambda seed, *args: sphere)
    res_ = builders.build_dataset("shapes", tmp_path, num_objects=1, resolution=res,
                                  elevation_range=(5.0, 30.0))
    ex = builders.load_source(res_.path)[0]
    # independent pinhole model: camera-space ray u = ((j - W/2 + .5)/f, -(i - H/2 + .5)/f, -1)
    # hits the sphere centred at (0, 0, -D) at s u with s = depth along the optical axis
    f = res / 2 / np.tan(np.deg2rad(DEFAULT_FOVY_DEG) / 2)
    hits = 0
    for i, j in [(15, 15), (16, 16), (15, 16), (10, 20), (21, 11), (22, 9), (4, 16)]:
        u = np.array([(j - res / 2 + 0.5) / f, -(i - res / 2 + 0.5) / f, -1.0])
        uu = u @ u
        disc = dist**2 - uu * (dist**2 - radius**2)
        if disc < 0:  # the ray misses the sphere: background
            assert np.all(ex["depth"][:, i, j] == 0) and np.all(ex["views"][:, i, j] == 0)
            continue
        hits += 1
        s = (dist - np.sqrt(disc)) / uu
        np.testing.assert_allclose(ex["depth"][:, i, j], s, rtol=1e-6)
        assert np.all(ex["views"][:, i, j, 3] == 255)
    assert hits == 5
    assert np.all(ex["depth"][:, 0, 0] == 0) and np.all(ex["views"][:, 0, 0] == 0)
    elev = np.rad2deg(np.arcsin(ex["c2w"][0, 2, 3] / dist))
    assert 5.0 <= elev <= 30.0  # per-object elevation drawn from the range


# --------------------------------------------------------------------------------------------
# input pipeline
# --------------------------------------------------------------------------------------------


def _memory_source(n: int, size: int = 4, frames: int = V) -> list[dict]:
    """Examples with rows 0-1 transparent (background), rows 2-3 opaque known colours."""
    out = []
    c2w = np.asarray(orbit_cameras(frames, 15.0, 1.645), np.float32)
    for k in range(n):
        views = np.zeros((frames, size, size, 4), np.uint8)
        views[:, 2:, :, :3] = (np.arange(frames)[:, None, None, None] * 3 + k) % 256
        views[:, 2:, :, 3] = 255
        out.append({"views": views, "c2w": c2w, "camera": c2w.reshape(frames, 16),
                    "lgm_cameras": np.asarray(normalize_poses(c2w)),
                    "caption": f"object {k}".encode(), "object_id": f"obj/{k}".encode()})
    return out


def _assert_batches_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], list):
            assert a[key] == b[key], key
        else:
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def test_backgrounds_composited():
    src = _memory_source(6)
    for mode, expect in (("t2mv", GREY), ("i2mv", 1.0)):
        b = InputPipeline(src, InputConfig(mode=mode, batch_size=3, prefetch=0)).host_batch(0)
        np.testing.assert_allclose(b["frames"][:, :, :2], 2 * expect - 1, atol=1e-6)
        np.testing.assert_allclose(b["background"], expect, atol=1e-7)
    pipe = InputPipeline(src, InputConfig(mode="recon", batch_size=3, prefetch=0))
    b0, b1 = pipe.host_batch(0), pipe.host_batch(1)
    for b in (b0, b1):
        bg = b["background"]
        want_bg = np.broadcast_to(2 * bg[:, None, None, None] - 1, b["frames"][:, :, :2].shape)
        np.testing.assert_allclose(b["frames"][:, :, :2], want_bg, atol=1e-6)
        assert np.all(b["alpha"][:, :, :2] == 0) and np.all(b["alpha"][:, :, 2:] == 1)
        # opaque pixels keep their colour
        idx = b["index"]
        want = np.stack([src[i]["views"][:, 2:, :, :3] for i in idx]) / 127.5 - 1
        np.testing.assert_allclose(b["frames"][:, :, 2:], want, atol=1e-6)
    bgs = np.concatenate([b0["background"], b1["background"]])
    assert len({tuple(x) for x in bgs.round(6)}) == 6  # random per example and per step
    assert b0["frames"].dtype == np.float32 and b0["frames"].shape == (3, V, 4, 4, 3)
    assert b0["alpha"].shape == (3, V, 4, 4, 1)


def test_caption_dropout_and_suffix():
    src = _memory_source(50, size=2)
    cfg = InputConfig(mode="t2mv", batch_size=10, prefetch=4, num_epochs=20, seed=3)
    caps = [c for batch in InputPipeline(src, cfg) for c in batch["caption"]]
    assert len(caps) == 1000
    dropped = sum(c == DEFAULT_NEGATIVE_PROMPT for c in caps)
    assert 0.07 <= dropped / len(caps) <= 0.13  # binomial(1000, 0.1): sd 0.0095, ~3 sd
    kept = [c for c in caps if c != DEFAULT_NEGATIVE_PROMPT]
    assert all(c.startswith("object ") and c.endswith(", 3d asset") for c in kept)
    neg = InputConfig(mode="t2mv", batch_size=10, caption_dropout=1.0, negative_prompt="bad")
    assert set(InputPipeline(src, neg).host_batch(0)["caption"]) == {"bad"}
    i2mv = InputPipeline(src, InputConfig(mode="i2mv", batch_size=10)).host_batch(0)
    assert set(i2mv["caption"]) == {""} and not i2mv["condition_dropped"].any()
    # i2mv condition dropout: the flag marks exactly the examples given the negative prompt
    i2mv_drop = InputConfig(mode="i2mv", batch_size=10, caption_dropout=0.5, seed=1)
    flags, caps = [], []
    for step in range(10):
        b = InputPipeline(src, i2mv_drop).host_batch(step)
        flags += b["condition_dropped"].tolist()
        caps += b["caption"]
    assert [c == DEFAULT_NEGATIVE_PROMPT for c in caps] == [f == 1.0 for f in flags]
    assert set(caps) == {"", DEFAULT_NEGATIVE_PROMPT} and 30 <= sum(flags) <= 70
    assert "condition_dropped" not in InputPipeline(src, cfg).host_batch(0)
    suffix = InputConfig(mode="recon", batch_size=10, caption_suffix="!")
    assert InputPipeline(src, suffix).host_batch(0)["caption"][0].endswith("!")


def test_i2mv_frame_shift():
    src = _memory_source(8)
    shifted = InputPipeline(src, InputConfig(mode="i2mv", batch_size=4, seed=1)).host_batch(2)
    plain = InputPipeline(src, InputConfig(mode="i2mv", batch_size=4, seed=1,
                                           frame_shift=False)).host_batch(2)
    assert len(set(shifted["shift"].tolist())) > 1 and np.all(plain["shift"] == 0)
    for r, s in enumerate(shifted["shift"]):
        np.testing.assert_array_equal(shifted["frames"][r], np.roll(plain["frames"][r], s, 0))
        np.testing.assert_array_equal(shifted["alpha"][r], np.roll(plain["alpha"][r], s, 0))
    np.testing.assert_array_equal(shifted["camera"], plain["camera"])  # cameras not shifted
    np.testing.assert_array_equal(shifted["cond_image"], plain["frames"][:, 0])
    with pytest.raises(ValueError, match="frame_shift"):
        InputConfig(mode="recon", frame_shift=True)


@pytest.mark.parametrize("mode", ["t2mv", "i2mv", "recon"])
def test_resume_equals_uninterrupted(mode):
    src = _memory_source(10)
    cfg = InputConfig(mode=mode, batch_size=4, seed=7, prefetch=3)  # 2 steps per epoch
    full = InputPipeline(src, cfg)
    ref = [next(full) for _ in range(7)]
    first = InputPipeline(src, cfg)
    got = [next(first) for _ in range(3)]
    state = first.state()
    first.close()
    assert state["step"] == 3
    resumed = InputPipeline(src, cfg)
    resumed.restore(state)
    got += [next(resumed) for _ in range(4)]
    for a, b in zip(ref, got, strict=True):
        _assert_batches_equal(a, b)
    _assert_batches_equal(InputPipeline(src, cfg, start_step=5).batch(5), ref[5])
    with pytest.raises(ValueError, match="seed"):
        InputPipeline(src, InputConfig(mode=mode, batch_size=4, seed=8)).restore(state)
    full.close()
    resumed.close()


def test_two_hosts_disjoint_and_cover_epoch():
    src = _memory_source(12, size=2)
    cfg = InputConfig(mode="recon", batch_size=4, seed=5, prefetch=0)
    single = InputPipeline(src, cfg)
    hosts = [InputPipeline(src, cfg, process_index=p, process_count=2) for p in range(2)]
    for epoch in range(2):
        seen: list[int] = []
        for step in range(epoch * 3, epoch * 3 + 3):
            h0, h1 = (h.host_batch(step) for h in hosts)
            assert len(h0["index"]) == 2 and not set(h0["index"]) & set(h1["index"])
            seen += [*h0["index"], *h1["index"]]
            # the two hosts' rows together are exactly the single-host global batch
            whole = single.host_batch(step)
            for key in whole:
                if isinstance(whole[key], list):
                    assert h0[key] + h1[key] == whole[key]
                else:
                    np.testing.assert_array_equal(np.concatenate([h0[key], h1[key]]),
                                                  whole[key])
        assert sorted(seen) == list(range(12))
    with pytest.raises(ValueError, match="divisible"):
        InputPipeline(src, InputConfig(batch_size=3), process_index=0, process_count=2)


def test_global_arrays_on_one_device_mesh(shapes_ds):
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    sharding = batch_sharding(mesh)
    src = builders.load_source(shapes_ds.path)
    cfg = InputConfig(mode="t2mv", batch_size=2, num_epochs=1)
    pipe = InputPipeline(src, cfg, sharding=sharding)
    batch = next(pipe)
    host = pipe.host_batch(0)
    assert isinstance(batch["frames"], jax.Array) and batch["frames"].shape == (2, V, 32, 32, 3)
    assert batch["frames"].dtype == np.float32
    assert batch["frames"].sharding.spec == PartitionSpec(("data", "fsdp"))
    assert batch["camera"].shape == (2, V, 16) and batch["c2w"].shape == (2, V, 4, 4)
    assert batch["background"].shape == (2, 3) and isinstance(batch["caption"], list)
    for key in host:
        if isinstance(host[key], list):
            assert batch[key] == host[key]
        else:
            np.testing.assert_array_equal(np.asarray(batch[key]), host[key])
    with pytest.raises(StopIteration):
        next(pipe)  # one epoch of 2 examples = one batch
    pipe.close()
    with pytest.raises(ValueError, match="not both"):
        InputPipeline(src, cfg, sharding=sharding, process_index=0)
    odd = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))
    assert InputPipeline(src, cfg, sharding=odd).batch(0)["alpha"].shape == (2, V, 32, 32, 1)


def test_synthetic_batches_structure():
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    src = _memory_source(4)
    for mode in ("t2mv", "i2mv", "recon"):
        cfg = InputConfig(mode=mode, batch_size=2, resolution=4,
                          hr_resolution=8 if mode == "recon" else None)
        real_src = src
        if mode == "recon":
            real_src = [dict(ex, views_hr=np.repeat(np.repeat(ex["views"], 2, 1), 2, 2))
                        for ex in src]
        real = InputPipeline(real_src, cfg, sharding=batch_sharding(mesh)).batch(0)
        batches = list(synthetic_batches(cfg, sharding=batch_sharding(mesh), num_steps=3))
        assert len(batches) == 3
        syn = batches[0]
        assert syn.keys() == real.keys(), mode
        for key in real:
            if isinstance(real[key], list):
                assert len(syn[key]) == len(real[key]) and isinstance(syn[key][0], str)
            else:
                assert syn[key].shape == real[key].shape and syn[key].dtype == real[key].dtype
                assert syn[key].sharding == real[key].sharding
        assert float(np.asarray(syn["frames"]).min()) >= -1.0


def test_multi_device_sharding_subprocess():
    """4 CPU devices, data=2 x fsdp=2: each device holds its rows of the host batch."""
    code = textwrap.dedent("""
        import numpy as np, jax
        from jax.sharding import Mesh
        from videomv_jax.data.pipeline import InputConfig, InputPipeline, batch_sharding
        from videomv_jax.render.camera import orbit_cameras
        c2w = np.asarray(orbit_cameras(24, 15.0, 1.645), np.float32)
        src = [{"views": np.full((24, 2, 2, 4), k, np.uint8), "c2w": c2w,
                "camera": c2w.reshape(24, 16), "lgm_cameras": c2w, "caption": b"c",
                "object_id": b"o"} for k in range(16)]
        mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 1), ("data", "fsdp", "tensor"))
        pipe = InputPipeline(src, InputConfig(batch_size=8), sharding=batch_sharding(mesh))
        g, h = next(pipe), pipe.host_batch(0)
        assert len(g["frames"].addressable_shards) == 4
        for s in g["frames"].addressable_shards:
            assert s.data.shape[0] == 2
            np.testing.assert_array_equal(np.asarray(s.data), h["frames"][s.index[0]])
        np.testing.assert_array_equal(np.asarray(g["index"]), h["index"])
        pipe.close()
        print("OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_input_config_validation_and_dict():
    cfg = InputConfig(mode="i2mv")
    assert (cfg.background, cfg.caption_dropout, cfg.use_caption, cfg.frame_shift) == (
        "white", 0.0, False, True)
    assert InputConfig.from_dict(cfg.to_dict()) == cfg
    t2mv = InputConfig()
    assert (t2mv.background, t2mv.caption_dropout, t2mv.frame_shift) == ("grey", 0.1, False)
    assert InputConfig(mode="recon").background == "random"
    for bad in ({"mode": "x"}, {"background": "pink"}, {"batch_size": 0},
                {"caption_dropout": 1.5}, {"resolution": 0}):
        with pytest.raises(ValueError):
            InputConfig(**bad)
    with pytest.raises(ValueError, match="fewer than one"):
        InputPipeline(_memory_source(2, size=2), InputConfig(batch_size=4))
