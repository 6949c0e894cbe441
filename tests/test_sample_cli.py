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
    video = out / record["outputs"]["video"]
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


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "a red cube", "--steps", "7"], "divide num_timesteps"),
    (["--ply", "/nonexistent/file.ply"], "does not exist"),
    (["--views", "0"], "must be positive"),
])
def test_bad_input_is_a_clear_error(sample, tmp_path, capsys, argv, message):
    assert sample.main([*argv, "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
