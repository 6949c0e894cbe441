"""The web demo (``python -m videomv_jax.app``).

* request checks and folder clean-up, without models or a browser (fast);
* the page driven in a real headless Chromium (Debian's ``chromium`` through Playwright's
  Python client): the app runs as a subprocess on 127.0.0.1 with videomv-tiny at 4 DDIM steps
  (3D-aware steps 1/2/3, the model's fractions), a prompt is typed and run, and the page must
  show 24 views, two videos with a source, per-step progress, a 3D viewer canvas and a mesh
  viewer canvas with non-background pixels and a ``mesh.glb`` download, while a second user's
  request waits in the queue and then completes too; a bad input must show its error message.
  Screenshots go to ``test-artifacts/app/`` (ignored by git). Skipped, with the reason, when
  Chromium or the ``playwright`` package is missing (``.ci/run`` installs both).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from videomv_jax.app import (
    AppInputError,
    DemoModel,
    DemoRequest,
    clean_old_requests,
    prepare_request,
)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "app"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
STEPS = 4  # divides 1000 (the released DDIM grid); aware steps 10/15/20 of 25 → 1/2/3
START_TIMEOUT_S = 900  # start-up compiles both the sampler and the renderer (2-core CI)
RUN_TIMEOUT_S = 600


# ---- without a browser --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def configs_only():
    return DemoModel(load=False)


def test_requests_are_checked_as_the_cli_does(configs_only, tmp_path):
    m = configs_only
    cases = [
        (DemoRequest(), "give a prompt (text→MV) or an image (image→MV)"),
        (DemoRequest(prompt="   "), "give a prompt (text→MV) or an image (image→MV)"),
        (DemoRequest(prompt="a red cube", image="x.png"), "not both"),
        (DemoRequest(prompt="a red cube", steps=7), "needs num_steps to divide"),
        (DemoRequest(prompt="a red cube", steps=2.5), "steps must be a whole number"),
        (DemoRequest(prompt="a red cube", seed=-1), "seed must be a whole number in [0,"),
        (DemoRequest(prompt="a red cube", guidance=float("nan")), "guidance must be a number"),
        (DemoRequest(prompt="a red cube", elevation=95), "elevation must be a number in"),
        (DemoRequest(image=str(tmp_path / "missing.png")), "does not exist"),
    ]
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((32, 32), 90, np.uint8), "L").save(grey)
    cases.append((DemoRequest(image=str(grey)), "has mode 'L'"))
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8), "RGB").save(blank)
    cases.append((DemoRequest(image=str(blank)), "is blank (all white)"))
    for request, text in cases:
        with pytest.raises(AppInputError) as err:
            prepare_request(m, request)
        assert text in str(err.value), (request, str(err.value))
    # the upload's temporary path is not shown to the user
    with pytest.raises(AppInputError, match="^the uploaded image has mode 'L'"):
        prepare_request(m, DemoRequest(image=str(grey)))


def test_settings_reach_the_config_and_notes_name_what_the_model_ignores(configs_only):
    m = configs_only
    mode, cfg, notes, rgb = prepare_request(m, DemoRequest(
        prompt="a red cube on a wooden table", seed=5, steps=50, guidance=4.5, elevation=30,
        negative_prompt="blurry"))
    assert (mode, cfg.seed, cfg.sampler.num_steps, cfg.sampler.guidance_scale) == \
        ("t2mv", 5, 50, 4.5)
    # the model's 3D-aware steps 10/15/20 of 25 keep their fractions, as sample.py --steps
    assert tuple(cfg.sampler.aware_steps) == (20, 30, 40)
    assert (cfg.elevation, cfg.negative_prompt, rgb) == (30.0, "blurry", None)
    assert any("elevation 15°" in n for n in notes)
    assert any("'table', 'wooden'" in n for n in notes)
    _, cfg, notes, _ = prepare_request(m, DemoRequest(prompt="a red cube", aware=False))
    assert tuple(cfg.sampler.aware_steps) == () and notes == []
    assert m.configs["t2mv"].seed == 11  # the served defaults are never changed
    mode, cfg, _, rgb = prepare_request(m, DemoRequest(image=m.examples()[1][0]))
    assert mode == "i2mv" and rgb.shape == (cfg.resolution, cfg.resolution, 3)


def test_checkpoint_dirs_serve_the_mode_of_their_unet(tmp_path):
    from videomv_jax import tiny

    # the packaged weights folder is laid out as a converted text→MV checkpoint (unet/ = t2v)
    m = DemoModel([str(tiny.weights_dir())], load=False)
    assert m.modes == ["t2mv"] and not m.is_tiny
    assert m.configs["t2mv"].checkpoint_dir == str(tiny.weights_dir())
    assert m.configs["t2mv"].sampler.num_steps == 50  # the released settings, not the tiny's
    with pytest.raises(AppInputError, match="no converted UNet"):
        DemoModel([str(tmp_path)], load=False)
    with pytest.raises(AppInputError, match="does not exist"):
        DemoModel([str(tmp_path / "nope")], load=False)
    with pytest.raises(AppInputError, match="unknown modes"):
        DemoModel(modes=["t2mv", "video"], load=False)


def test_old_request_folders_are_cleaned(tmp_path):
    now = time.time()
    ages = {"req_a": 10, "req_b": 20, "req_c": 30, "req_old": 4000}
    for name, age in ages.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "f.txt").write_text("x")
        os.utime(tmp_path / name, (now - age, now - age))
    (tmp_path / "gradio").mkdir()  # not a request folder: kept
    gone = clean_old_requests(str(tmp_path), keep=2, max_age_s=3600, now=now)
    assert sorted(Path(p).name for p in gone) == ["req_c", "req_old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gradio", "req_a", "req_b"]


def test_viewer_copy_is_the_asset_turned_upright_for_3dgs_viewers():
    from videomv_jax.app import VIEWER_SCALE, viewer_gaussians
    from videomv_jax.render.gaussians import Gaussians
    from videomv_jax.render.rasterize import covariance_3d

    rng = np.random.default_rng(0)
    n = 16
    g = Gaussians(means=rng.normal(size=(n, 3)).astype(np.float32),
                  scales=rng.uniform(0.01, 0.2, (n, 3)).astype(np.float32),
                  rotations=rng.normal(size=(n, 4)).astype(np.float32),
                  opacities=rng.uniform(size=(n, 1)).astype(np.float32),
                  colors=rng.uniform(size=(n, 3)).astype(np.float32))
    v = viewer_gaussians(g)
    # +90° about x: the z-up world into the y-down frame of 3DGS viewers (world up = −y)
    flip = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]).T
    np.testing.assert_allclose(v.means, VIEWER_SCALE * g.means @ flip, rtol=1e-6)
    want = VIEWER_SCALE**2 * flip.T @ np.asarray(covariance_3d(g.scales, g.rotations)) @ flip
    np.testing.assert_allclose(np.asarray(covariance_3d(v.scales, v.rotations)), want,
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(v.colors, g.colors)


def test_demo_mesh_is_written_with_an_upright_viewer_copy_and_a_bad_asset_is_a_note(
        tmp_path, monkeypatch):
    import trimesh

    from videomv_jax import app
    from videomv_jax.app import write_demo_mesh
    from videomv_jax.render.gaussians import Gaussians

    # the page's settings, without the texture bake (its renders take a minute to compile on
    # a 2-core CPU; the bake is tested in test_mesh_export)
    monkeypatch.setitem(app.DEMO_MESH_SETTINGS, "texture_size", 0)
    monkeypatch.setitem(app.DEMO_MESH_SETTINGS, "resolution", 48)

    # one Gaussian, tall along the world's z (up): its iso-surface is an ellipsoid
    g = Gaussians(means=np.array([[0.1, -0.2, 0.3]], np.float32),
                  scales=np.array([[0.05, 0.08, 0.2]], np.float32),
                  rotations=np.array([[1.0, 0.0, 0.0, 0.0]], np.float32),
                  opacities=np.array([0.9], np.float32),
                  colors=np.array([[0.8, 0.2, 0.1]], np.float32))
    notes = []
    out = write_demo_mesh(g, str(tmp_path), notes)
    assert notes == [] and out["faces"] > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mesh.glb", "mesh.obj",
                                                          "viewer_mesh.glb"]
    mesh = trimesh.load(tmp_path / "mesh.glb", force="mesh", process=False)
    upright = trimesh.load(out["viewer"], force="mesh", process=False)
    x, y, z = mesh.vertices.T  # the asset's (the .ply's) z-up frame
    np.testing.assert_allclose(upright.vertices, np.stack([x, z, -y], -1), atol=1e-6)
    assert np.argmax(np.ptp(mesh.vertices, 0)) == 2 and np.argmax(np.ptp(upright.vertices, 0)) == 1
    assert upright.volume > 0  # a rotation: faces still wound outward
    clear = g.replace(opacities=np.zeros(1, np.float32))
    assert write_demo_mesh(clear, str(tmp_path / "clear"), notes) is None
    assert len(notes) == 1 and notes[0].startswith("no mesh:") and "fully transparent" in notes[0]
    assert not (tmp_path / "clear").exists()


# ---- in a browser -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                        "(pip install -e '.[test]')")
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[app]')")
    work = tmp_path_factory.mktemp("app")
    port = _free_port()
    log_path = work / "app.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "-m", "videomv_jax.app", "--host", "127.0.0.1", "--port", str(port),
           "--modes", "t2mv,i2mv", "--steps", str(STEPS), "--output-root", str(work / "out")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    t0 = time.perf_counter()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}:\n{log_path.read_text()}")
            if time.perf_counter() - t0 > START_TIMEOUT_S:
                pytest.fail(f"the app did not start in {START_TIMEOUT_S} s:\n"
                            f"{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1.0)
        print(f"app started in {time.perf_counter() - t0:.1f} s")
        yield url, work / "out", log_path
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=20)
        log.close()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log_path, ARTIFACTS / "app.log")


@pytest.fixture(scope="module")
def browser(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


def _new_page(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(60_000)
    page.goto(url, wait_until="load")
    page.locator("#generate").wait_for()
    return page


def _foreground_fraction(png: bytes) -> float:
    """Share of pixels that differ (by > 24 of 255 in some channel) from the image's most
    common colour, taken as the viewer's background."""
    import io

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).astype(int)
    colours, counts = np.unique(rgb, axis=0, return_counts=True)
    background = colours[np.argmax(counts)]
    return float(np.mean(np.abs(rgb - background).max(-1) > 24))


def _canvas_foreground(page, elem: str, shot_name: str) -> float:
    """The foreground fraction of the canvas in ``elem`` once it draws (screenshot saved)."""
    canvas = page.locator(f"{elem} canvas").first
    canvas.scroll_into_view_if_needed()
    fraction = 0.0
    for _ in range(30):  # the viewers load their file (the splat viewer sorts it) before drawing
        page.wait_for_timeout(500)
        shot = canvas.screenshot()
        fraction = _foreground_fraction(shot)
        if fraction > 0.005:
            break
    (ARTIFACTS / shot_name).write_bytes(shot)
    return fraction


def _mask(frame: np.ndarray) -> np.ndarray:
    """Object pixels: those far from the frame's border colour."""
    f = frame.astype(int)
    border = np.median(np.concatenate([f[0], f[-1], f[:, 0], f[:, -1]]), axis=0)
    return np.abs(f - border).max(-1) > 40


def _assert_turntable_matches_views(folder: Path) -> None:
    """The asset turntable renders the .ply at the views' cameras: its silhouettes overlap
    the generated views' (IoU > 0.6; an upside-down or wrongly framed asset overlaps much
    less than the same silhouette flipped)."""
    import imageio.v3 as iio

    turntable = iio.imread(folder / "asset_turntable.mp4")
    assert turntable.shape[0] == 24
    ious, flipped = [], []
    for k in (0, 6, 12, 18):
        view = np.asarray(Image.open(folder / "views" / f"{k:03d}.png").convert("RGB"))
        small = np.asarray(Image.fromarray(turntable[k]).resize(view.shape[:2][::-1]))
        a, b = _mask(view), _mask(small)
        ious.append((a & b).sum() / max(1, (a | b).sum()))
        flipped.append((a & b[::-1]).sum() / max(1, (a | b[::-1]).sum()))
    assert min(ious) > 0.6 and np.mean(ious) > np.mean(flipped) + 0.1, (ious, flipped)


@pytest.mark.slow
def test_prompt_to_views_videos_and_3d_viewer_in_a_browser(app_url, browser):
    url, out_root, _ = app_url
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = _new_page(browser, url)
    other = _new_page(browser, url)  # a second user at the same time: waits in the queue
    page.locator("#prompt textarea").fill("a red cube on a blue sphere")
    other.locator("#prompt textarea").fill("a green torus")
    page.screenshot(path=str(ARTIFACTS / "0_prompt.png"))
    t0 = time.perf_counter()
    page.locator("#generate").click()
    other.locator("#generate").click()
    progress_seen = []
    deadline = t0 + RUN_TIMEOUT_S
    while page.locator("#views img").count() < 24:
        if time.perf_counter() > deadline:
            page.screenshot(path=str(ARTIFACTS / "timeout.png"), full_page=True)
            pytest.fail(f"no 24 views after {RUN_TIMEOUT_S} s")
        text = page.locator("body").inner_text()
        if "DDIM step" in text:
            progress_seen.append(text[text.index("DDIM step"):][:16])
        page.wait_for_timeout(100)
    run_s = time.perf_counter() - t0
    assert page.locator("#views img").count() == 24
    # per-step progress: the page showed several distinct "DDIM step k/4" while sampling
    steps_seen = {s.split("/")[0] for s in progress_seen if f"/{STEPS}" in s}
    assert len(steps_seen) >= 2, progress_seen
    for elem in ("#views_video video", "#turntable video"):
        src = page.locator(elem).first.get_attribute("src")
        assert src and ("/file=" in src or "/gradio_api/file" in src), (elem, src)
    fraction = _canvas_foreground(page, "#viewer", "2_viewer.png")
    mesh_fraction = _canvas_foreground(page, "#mesh_viewer", "2_mesh_viewer.png")
    page.screenshot(path=str(ARTIFACTS / "1_result.png"), full_page=True)
    assert fraction > 0.005, f"the 3D viewer shows only background ({fraction:.4%} other pixels)"
    assert mesh_fraction > 0.005, f"the mesh viewer shows only background ({mesh_fraction:.4%})"
    links = [page.locator("#downloads a").nth(i).get_attribute("href") or ""
             for i in range(page.locator("#downloads a").count())]
    for name in ("gaussians.ply", "mesh.glb", "run.json", ".zip"):
        assert any(href.endswith(name) for href in links), links
    other.locator("#views img").nth(23).wait_for(timeout=RUN_TIMEOUT_S * 1000)
    assert other.locator("#views img").count() == 24
    assert "Done" in other.locator("#info").inner_text()
    other.screenshot(path=str(ARTIFACTS / "1_result_second_user.png"), full_page=True)
    folders = sorted(p for p in out_root.iterdir() if p.name.startswith("req_"))
    assert len(folders) == 2, folders  # one folder per request
    for folder in folders:
        record = json.loads((folder / "run.json").read_text())
        assert record["prompt"] in ("a red cube on a blue sphere", "a green torus")
        assert len(list((folder / "views").glob("*.png"))) == 24
        _assert_turntable_matches_views(folder)
        mesh_files = ["mesh.glb", "mesh.obj", "mesh.mtl", "mesh.png"]
        assert record["outputs"]["mesh"] == mesh_files and record["mesh"]["faces"] > 100
        import zipfile

        (archive,) = folder.glob("*.zip")
        assert set(mesh_files) <= set(zipfile.ZipFile(archive).namelist())
    other.close()
    print(f"run in the browser: {run_s:.1f} s, progress seen {sorted(set(progress_seen))}, "
          f"viewer foreground {fraction:.2%}, mesh viewer {mesh_fraction:.2%}")
    page.close()


@pytest.mark.slow
def test_bad_input_shows_its_error_in_the_page(app_url, browser):
    url, out_root, _ = app_url
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    before = sorted(out_root.iterdir()) if out_root.is_dir() else []
    page = _new_page(browser, url)
    info = page.locator("#info")
    page.locator("#generate").click()  # nothing given
    info.get_by_text("Error: give a prompt (text→MV) or an image (image→MV)").wait_for()
    page.locator("#prompt textarea").fill("a red cube")
    page.get_by_text("Advanced settings").click()
    page.locator("#steps input").fill("7")
    page.locator("#generate").click()
    info.get_by_text("needs num_steps to divide num_timesteps (1000); got 7").wait_for()
    page.screenshot(path=str(ARTIFACTS / "3_bad_input.png"), full_page=True)
    # an uploaded image goes through the same checks: an all-white one is refused by name
    blank = ARTIFACTS / "blank_upload.png"
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8), "RGB").save(blank)
    page.locator("#prompt textarea").fill("")
    page.locator("#steps input").fill(str(STEPS))
    page.locator("#image input[type=file]").set_input_files(str(blank))
    page.locator("#image img").first.wait_for()  # uploaded (the preview is shown)
    page.locator("#generate").click()
    info.get_by_text("the uploaded image is blank (all white)").wait_for()
    assert "/tmp" not in info.inner_text()  # the upload's temporary path is not shown
    page.screenshot(path=str(ARTIFACTS / "4_bad_upload.png"), full_page=True)
    assert page.locator("#views img").count() == 0  # nothing ran
    after = sorted(out_root.iterdir()) if out_root.is_dir() else []
    assert after == before  # and nothing was written
    page.close()
