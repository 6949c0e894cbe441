"""sample.py end to end: render-only mode writes every output; bad input gives clear errors."""

from __future__ import annotations

import importlib.util
import json
import os

import imageio.v3 as iio
import numpy as np
import pytest

from videomv_jax.render.demo import sphere_on_box
from videomv_jax.render.gaussians import load_ply, save_ply

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sample():
    spec = importlib.util.spec_from_file_location("sample_cli", os.path.join(ROOT, "sample.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_writes_views_grid_video_ply_and_json(sample, tmp_path, capsys):
    out = tmp_path / "demo"
    assert sample.main(["--out", str(out), "--views", "4", "--resolution", "48"]) == 0
    assert "No weights are involved" in capsys.readouterr().out  # says plainly what it is
    views = sorted(os.listdir(out / "views"))
    assert views == [f"{i:03d}.png" for i in range(4)]
    first = iio.imread(out / "views" / "000.png")
    assert first.shape == (48, 48, 3)
    # the red sphere and blue box are both visible on the white background
    assert (first[..., 0] > 150).any() and (first[..., 2] > 150).any() and (first == 255).any()
    assert iio.imread(out / "grid.png").shape == (48, 4 * 48, 3)
    record = json.loads((out / "run.json").read_text())
    video = out / record["outputs"]["asset_turntable"]
    assert video.exists() and video.stat().st_size > 0
    assert record["views"] == 4 and record["intersections"] > 0
    assert record["capacity"] >= record["intersections"]
    assert load_ply(out / "asset.ply").num_gaussians == record["num_gaussians"]


def test_ply_input_round_trips(sample, tmp_path):
    ply = tmp_path / "small.ply"
    save_ply(ply, sphere_on_box(512))
    out = tmp_path / "from_ply"
    assert sample.main(["--ply", str(ply), "--out", str(out), "--views", "2",
                        "--resolution", "32"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["num_gaussians"] == 512 and record["asset"].endswith("small.ply")
    assert np.asarray(iio.imread(out / "views" / "001.png")).std() > 0


def _write(path, text):
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return str(path)


def test_bad_input_fails_before_any_model_loads(sample, tmp_path, capsys, monkeypatch):
    """Every bad argument is one clear line on stderr, exit code 2, nothing written, and is
    found before a model is loaded (loading is made to fail loudly here)."""
    from videomv_jax.pipeline import MultiViewPipeline

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(MultiViewPipeline, "from_checkpoints", no_loading)
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    nan_poses = np.tile(np.eye(4), (24, 1, 1))
    nan_poses[:, 2, 3] = 2.0
    nan_poses[3, 0, 0] = np.nan
    zero_poses = np.zeros((24, 4, 4))
    zero_poses[:, 3, 3] = 1.0
    empty_ply = tmp_path / "empty.ply"
    save_ply(empty_ply, sphere_on_box(16), min_opacity=2.0)  # filters every Gaussian out
    out = str(tmp_path / "out")
    gen = ["--prompt", "a red cube"]
    cases = [
        ([*gen, "--out", str(a_file)], "exists and is not a folder"),
        ([*gen, "--out", str(a_file / "sub")], "is a file, not a folder"),
        ([*gen, "--seed", "99999999999999999999"], "--seed must be an integer in [0, "),
        ([*gen, "--seed", "-1"], "--seed must be an integer"),
        ([*gen, "--steps", "7"], "divide num_timesteps"),
        ([*gen, "--steps", "0"], "--steps must be >= 1"),
        ([*gen, "--set", "nope=1"], "unknown config key 'nope'; valid keys:"),
        ([*gen, "--set", "sampler.num_steps"], "--set needs KEY=VALUE"),
        ([*gen, "--guidance", "nan"], "--guidance must be a finite number"),
        ([*gen, "--elevation", "95"], "--elevation must be in (-90, 90)"),
        ([*gen, "--distance", "0"], "--distance must be a finite positive number"),
        ([*gen, "--poses", _write(tmp_path / "nan.json", nan_poses.tolist()).replace(
            "NaN", "NaN")], "views [3] hold NaN or infinite values"),
        ([*gen, "--poses", _write(tmp_path / "zero.json", zero_poses.tolist())],
         "are not rotations"),
        ([*gen, "--poses", _write(tmp_path / "orbit.json", {"distance": -1})],
         "distance a finite positive number"),
        ([*gen, "--image", "x.png"], "not both"),
        (["--image", str(tmp_path / "missing.png")], "does not exist"),
        (["--background", "1,2"], "--background must be R,G,B"),
        (["--views", "0"], "--views must be positive"),
        (["--fovy", "180"], "--fovy must be in (0, 180)"),
        (["--ply", "/nonexistent/file.ply"], "does not exist"),
        (["--ply", str(empty_ply)], "holds no Gaussians"),
        (["--ply", str(a_file)], "not a PLY file"),
        (["--set", "seed=3"], "apply to generation"),
    ]
    for argv, message in cases:
        argv = argv if "--out" in argv else [*argv, "--out", out]
        assert sample.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err and err[-1].startswith("error: ") and message in err[-1], (argv, err)
        assert len([ln for ln in err if ln.startswith("error")]) == 1
        assert not os.path.exists(out), argv  # nothing written
    with pytest.raises(SystemExit) as exc:  # argparse's own errors: exit code 2 too
        sample.main(["--preset", "inria"])
    assert exc.value.code == 2


def test_pose_note_says_when_the_model_never_saw_the_cameras(sample):
    from videomv_jax.render.camera import orbit_cameras

    trained = (15.0, 1.645)  # videomv-tiny's orbit
    assert sample.pose_note(np.asarray(orbit_cameras(24, 15.0, 1.645)), trained, True) is None
    note = sample.pose_note(np.asarray(orbit_cameras(24, 40.0, 1.645)), trained, True)
    assert "elevation 40.0..40.0 deg" in note and "never saw such poses" in note
    assert "elevation 15 deg, distance 1.645" in note


def test_unwritable_output_folder_fails_before_any_model_loads(tmp_path, capsys, monkeypatch,
                                                               load_script):
    """An output folder that cannot be written: one ``error:`` line naming it, exit code 2,
    before any model loads, nothing written, in sample.py (--out), train.py (--workdir,
    --export) and eval.py (--out). Tests run as root, for whom ``chmod`` blocks nothing and
    ``os.access`` says yes everywhere; so the check tries to create a file, and is tested on
    ``/proc`` (root cannot create files there) and with that probe failing."""
    from videomv_jax import cli
    from videomv_jax.pipeline import MultiViewPipeline
    from videomv_jax.train import run

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the output folder was checked")

    monkeypatch.setattr(MultiViewPipeline, "from_checkpoints", no_loading)
    monkeypatch.setattr(run, "train", no_loading)
    sample, train, ev = load_script("sample"), load_script("train"), load_script("eval")
    (tmp_path / "r").mkdir()

    def runs(out):
        tiny = ["--config", "t2mv", "--preset", "tiny"]
        return [(sample, ["--prompt", "a red cube", "--out", out], "--out"),
                (sample, ["--views", "2", "--out", out], "--out"),
                (train, [*tiny, "--workdir", out], "--workdir"),
                (train, [*tiny, "--workdir", str(tmp_path / "w"), "--export", out], "--export"),
                (ev, ["compare", str(tmp_path / "r"), str(tmp_path / "r"), "--out", out],
                 "--out")]

    def check(out, message):
        for module, argv, option in runs(out):
            assert module.main(argv) == 2, argv
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith(f"error: {option} {out!r}"), (argv, err)
            assert message in err[0] and "give a folder you can write to" in err[0], err
            assert not os.path.exists(out) or os.listdir(out) == [], argv
            assert not (tmp_path / "w").exists()

    if os.path.isdir("/proc") and os.path.isfile("/proc/self/status"):  # Linux: a real case
        check("/proc/videomv_out", "'/proc' is not writable (creating a file there failed")

    existing = tmp_path / "readonly"
    mkstemp = cli.tempfile.mkstemp

    def refuse(*a, dir=None, **k):  # e.g. a read-only mount or an ACL, for `existing` only
        if os.path.abspath(dir).startswith(str(existing)):
            raise PermissionError(13, "Permission denied")
        return mkstemp(*a, dir=dir, **k)

    monkeypatch.setattr(cli.tempfile, "mkstemp", refuse)
    existing.mkdir()
    check(str(existing), "is not writable (creating a file there failed: Permission denied)")
    check(str(existing / "new" / "sub"), f"{str(existing)!r} is not writable")


def test_no_fork_warning_on_stderr(tmp_path):
    """Writing an MP4 starts ffmpeg (a fork under JAX's at-fork hook); no entry point prints
    JAX's ``RuntimeWarning: os.fork() was called`` for it (filtered in
    ``videomv_jax.data.images.write_video``, where the fork happens)."""
    import subprocess
    import sys

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), "--views", "2",
                           "--resolution", "16", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (out / "turntable.mp4").is_file()  # ffmpeg really ran (no GIF fallback)
    assert "os.fork" not in proc.stderr and "RuntimeWarning" not in proc.stderr, proc.stderr


def test_orbit_pose_file_is_the_orbit_recorded(sample, tmp_path):
    """``--poses`` with ``{"elevation": 40}``: the cameras are that orbit at the model's
    distance, run.json's config states it (not the default 15°), and the note says the model
    never saw it; explicit matrices are used as given."""
    from videomv_jax.pipeline import load_poses
    from videomv_jax.render.camera import orbit_cameras

    poses = _write(tmp_path / "orbit.json", {"elevation": 40})
    args = sample.parse_args(["--prompt", "a red cube", "--poses", poses])
    cfg, manifest, trained = sample.build_config(args, "t2mv")
    assert trained == (15.0, 1.645)  # videomv-tiny's orbit
    cams, orbit = sample.sampling_cameras(cfg, load_poses(poses, cfg.num_frames))
    assert orbit == {"elevation_deg": 40.0, "distance": 1.645}
    assert (cfg.elevation, cfg.distance) == (40.0, 1.645)
    np.testing.assert_allclose(cams, orbit_cameras(24, 40.0, 1.645), atol=1e-6)
    assert "never saw such poses" in sample.pose_note(cams, trained, True)
    cfg, _, _ = sample.build_config(sample.parse_args(["--prompt", "a red cube"]), "t2mv")
    cams, orbit = sample.sampling_cameras(cfg, None)
    assert orbit == {"elevation_deg": 15.0, "distance": 1.645}
    assert sample.pose_note(cams, trained, True) is None
    given = np.asarray(orbit_cameras(24, 30.0, 1.2), np.float32)
    cams, orbit = sample.sampling_cameras(cfg, given)
    assert orbit is None and np.array_equal(cams, given) and cfg.elevation == 15.0


def _parsers(module, argv):
    """Every (sub)parser the script's ``parse_args`` builds, by name."""
    import argparse

    class Built(Exception):
        pass

    def grab(self, args=None, namespace=None):
        raise Built(self)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = grab
    try:
        module.parse_args(argv)
    except Built as built:
        parser = built.args[0]
    finally:
        argparse.ArgumentParser.parse_args = original
    found, todo = {}, [("", parser)]
    while todo:
        name, p = todo.pop()
        found[name] = p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo += [(k, sub) for k, sub in a.choices.items()]
    return found


def test_every_option_has_help_and_the_shared_names_agree(sample, load_script):
    """sample.py, train.py and eval.py: every option has help, and shows its default; the
    rasterizer preset is --raster-preset (sample.py) and the config preset --preset
    (train.py), never the other way; every --background is R,G,B in [0, 1]; train.py's help
    names --data, as the README does."""
    import argparse

    from videomv_jax.cli import HelpFormatter, parse_rgb

    scripts = {"sample": (sample, []), "train": (load_script("train"), []),
               "eval": (load_script("eval"), [])}
    options = {}
    for name, (module, argv) in scripts.items():
        for sub, parser in _parsers(module, argv).items():
            fmt = HelpFormatter(parser.prog)
            for a in parser._actions:
                if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                    continue
                where = (name, sub, a.option_strings or a.dest)
                assert a.help and a.help != argparse.SUPPRESS and a.help.strip(), where
                shown = fmt._get_help_string(a)
                if a.option_strings and a.default not in (None, False, [], "") \
                        and not isinstance(a.default, bool):
                    assert "default" in shown, where
                for opt in a.option_strings:
                    options.setdefault(opt, []).append((name, sub, a))
    scripts_with = {opt: {n for n, _, _ in uses} for opt, uses in options.items()}
    assert scripts_with["--raster-preset"] == {"sample"}
    assert scripts_with["--preset"] == {"train"}
    (_, _, preset), = options["--preset"]
    assert tuple(preset.choices) == ("full", "tiny")
    assert scripts_with["--background"] == {"sample", "eval"}
    for name, sub, a in options["--background"]:
        assert a.metavar == "R,G,B", (name, sub)
        if a.default is not None:
            assert parse_rgb(a.default) == [1.0, 1.0, 1.0], (name, sub)
    (_, _, data), = options["--data"]
    assert "tools/make_shapes.py" in data.help and "data.path" in data.help
