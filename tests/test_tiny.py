"""The packaged default model videomv-tiny: pinned hashes, loading through the converted-checkpoint
code, a fixed-seed sample against a stored reference, and ``sample.py`` / ``eval.py`` on the
default path (no ``--checkpoint-dir``).

The reference (``tests/data/videomv_tiny_reference.npz``) was written by
``python tests/test_tiny.py --write-reference`` with this repository's code; see
:func:`test_fixed_seed_sample_matches_reference` for its settings and tolerance.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import warnings

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from videomv_jax import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, "tests", "data", "videomv_tiny_reference.npz")

#: the manifest of the shipped weights (it lists the SHA-256 of every file); pinned twice on
#: purpose: here and in videomv_jax/tiny.py
PINNED_MANIFEST_SHA256 = "ac22ae12a13e6a5a0fb87d14ed3163596c7c088e290c6929af6b43fbe7dfcfbf"

#: reference sample: text→MV at the trained 64², 4 DDIM steps with a 3D-aware step at loop
#: index 2, seed 7; views 0, 4, ..., 20 are stored
REFERENCE_PROMPT = "a red cube on a blue sphere"
REFERENCE_SETTINGS = {"sampler.num_steps": 4, "sampler.aware_steps": (2,),
                      "sampler.progress": False}
REFERENCE_VIEWS = slice(0, 24, 4)
REFERENCE_SEED = 7

KINDS = {"unet": "unet-t2v", "unet_i2v": "unet-i2v", "vae": "vae", "clip_text": "clip-text",
         "clip_vision": "clip-vision", "lgm": "lgm"}


def _sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_manifest_hash_is_pinned_and_files_verify():
    root = tiny.weights_dir()
    assert _sha256(root / tiny.MANIFEST) == PINNED_MANIFEST_SHA256 == tiny.MANIFEST_SHA256
    manifest = tiny.verify()  # every file's SHA-256 against the manifest
    assert set(manifest["modes"]) == {"t2mv", "i2mv"}
    # both modes sample with the one text tower (the image UNet was trained against it), and
    # every packaged directory is a model of the manifest's record
    for mode in ("t2mv", "i2mv"):
        assert "subdirs.clip_text" not in manifest["modes"][mode]
    assert set(manifest["models"]) == set(KINDS)
    assert {p.name for p in root.iterdir() if p.is_dir()} == set(KINDS) | {"examples"}
    assert {"red", "cube", "sphere", "on", "blue"} <= set(manifest["vocabulary"])
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size <= 25 * 2**20, f"packaged weights are {size / 2**20:.1f} MiB (limit 25 MiB)"


def test_weights_load_with_the_converted_checkpoint_code():
    from videomv_jax.model_store import load_converted, read_converted_config

    root = tiny.weights_dir()
    for name, kind in KINDS.items():
        meta = read_converted_config(root / name)
        assert meta["storage_dtype"] == "float16"
        assert meta["source"]["trained_by"] == "videomv_jax train.py"
        model, _ = load_converted(root / name, kind=kind)
        params = nnx.state(model, nnx.Param)
        leaves = [np.asarray(v) for v in __import__("jax").tree.leaves(params)]
        assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in leaves)
        assert sum(a.size for a in leaves) == meta["num_params"]
        # float16-stored weights come back as exactly float16 values
        assert all(np.array_equal(a, a.astype(np.float16).astype(np.float32)) for a in leaves)
        # no parameter array of a trained model is all-zero (a broken save writes zeros). The
        # exceptions are facts of the shipped weights: the image UNet's CLIP vision tower is
        # frozen at its random initialisation (its biases are zeros by init), and the text
        # tower's 4th block was added by tools/grow_text_encoder.py with zero output
        # projections and biases, which stayed zero: that block is an exact identity.
        zero = sorted("/".join(map(str, path)) for path, v in nnx.to_flat_state(params)
                      if not np.any(np.asarray(v.get_value())))
        if name == "clip_vision":
            assert zero and all(z.endswith("bias") for z in zero), zero
        elif name == "clip_text":
            block3 = "transformer/resblocks/3/"
            assert zero == [block3 + z for z in (
                "attn/in_proj/bias", "attn/out_proj/bias", "attn/out_proj/kernel",
                "ln_1/bias", "ln_2/bias", "mlp/c_fc/bias", "mlp/c_proj/bias",
                "mlp/c_proj/kernel")], zero
        else:
            assert zero == [], (name, zero)


def test_verify_names_changed_missing_and_extra_files(tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(tiny.weights_dir(), copy)
    tiny.verify(copy)  # an intact copy passes
    files = sorted(p for p in copy.rglob("*") if p.is_file() and p.name != tiny.MANIFEST)
    changed, removed = files[0], files[-1]
    data = bytearray(changed.read_bytes())
    data[len(data) // 2] ^= 1
    changed.write_bytes(bytes(data))
    removed.unlink()
    (copy / "stray.bin").write_bytes(b"x")
    with pytest.raises(tiny.TinyWeightsError) as err:
        tiny.verify(copy)
    msg = str(err.value)
    for path, title in ((changed, "changed"), (removed, "missing")):
        assert path.relative_to(copy).as_posix() in msg and title in msg
    assert "stray.bin" in msg and "unexpected" in msg
    with pytest.raises(tiny.TinyWeightsError, match="SHA-256"):
        tiny.verify(copy, expected_sha256="0" * 64)


def test_unknown_words():
    assert tiny.unknown_words("a red cube on a blue sphere") == []
    assert tiny.unknown_words("A red DRAGON next to a castle!") == ["castle", "dragon"]


def _reference_sample() -> np.ndarray:
    from ml_collections.config_flags import config_path

    from configs import t2mv
    from videomv_jax.pipeline import MultiViewPipeline

    cfg = t2mv.get_config()
    tiny.apply_sampling_defaults(cfg, "t2mv")
    for key, value in REFERENCE_SETTINGS.items():
        config_path.set_value(key, cfg, value)
    pipe = MultiViewPipeline.from_checkpoints(cfg.checkpoint_dir, cfg)
    assert pipe.random_weights == []
    return pipe.text_to_mv([REFERENCE_PROMPT], seed=REFERENCE_SEED)[0].views


def test_fixed_seed_sample_matches_reference():
    """Tolerance: max |Δ| ≤ 2e-3 and mean |Δ| ≤ 1e-4 on views in [0, 1]. The reference comes
    from the same code in float32 on a CPU; other CPUs / XLA versions may reorder float32
    sums (~1e-7 relative per op), which 4 DDIM steps, a VAE decode, an LGM reconstruction and a
    rasterisation amplify to ~1e-4 at worst in our runs; a real regression (a changed schedule,
    weight or convention) moves whole images by > 1e-2."""
    views = _reference_sample()[REFERENCE_VIEWS]
    ref = np.load(REFERENCE)["views"]
    assert views.shape == ref.shape == (6, 64, 64, 3)
    diff = np.abs(views - ref)
    assert diff.max() <= 2e-3 and diff.mean() <= 1e-4, (diff.max(), diff.mean())
    # and the sample is not a flat image: the object differs from the grey background
    assert views.std() > 0.05


def test_default_negative_prompt_truncation_is_silent_user_prompts_warn():
    """videomv-tiny's text tower has 32 tokens, fewer than VideoMV's negative prompt; training
    truncated it the same way (caption dropout), so only a user's over-long prompt warns."""
    from configs import t2mv
    from videomv_jax.models.clip import PromptTruncatedWarning
    from videomv_jax.pipeline import MultiViewPipeline

    cfg = t2mv.get_config()
    tiny.apply_sampling_defaults(cfg, "t2mv")
    pipe = MultiViewPipeline.from_checkpoints(cfg.checkpoint_dir, cfg)
    long_prompt = " ".join(["a red cube on a blue sphere"] * 6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctx = pipe.encode_text([long_prompt, cfg.negative_prompt])
    messages = [str(w.message) for w in caught if issubclass(w.category, PromptTruncatedWarning)]
    assert len(messages) == 1 and "red cube" in messages[0], messages
    assert ctx.shape[0] == 2
    # the two rows are encoded as in one batch: row 1 equals the negative prompt on its own
    np.testing.assert_allclose(ctx[1], pipe.encode_text([cfg.negative_prompt])[0], rtol=1e-6,
                               atol=1e-6)


def test_sample_cli_default_model_text(tmp_path, capsys, load_script):
    sample = load_script("sample")
    out = tmp_path / "t2mv"
    code = sample.main(["--prompt", "a red dragon", "--out", str(out), "--steps", "4",
                        "--set", "sampler.progress=False"])
    assert code == 0
    err = capsys.readouterr().err
    assert "videomv-tiny" in err and "['dragon']" in err and "shapes" in err
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    assert sorted(os.listdir(d / "views")) == [f"{i:03d}.png" for i in range(24)]
    for name in ("grid.png", "gaussians.ply", "run.json"):
        assert (d / name).is_file()
    for video in ("views", "turntable"):
        assert (d / f"{video}.mp4").is_file() or (d / f"{video}.gif").is_file()
    record = json.loads((d / "run.json").read_text())
    assert record["weights"].startswith("videomv-tiny")
    assert any("dragon" in n for n in record["notes"])
    assert record["config"]["resolution"] == 64 and record["config"]["sampler"]["num_steps"] == 4
    # the .ply is in the views' world: rendered around the orbit the views were sampled at
    # (what sample.py --ply does), it shows the generated object where the views show it;
    # in LGM's y-up frame (the old .ply) the same render is far off
    from videomv_jax.render.camera import lgm_frame_to_world
    from videomv_jax.render.gaussians import load_ply, transform_gaussians
    from videomv_jax.render.turntable import render_orbit

    orbit = record["cameras"]["orbit"]
    assert orbit == {"elevation_deg": 15.0, "distance": 1.645}  # videomv-tiny's orbit
    views = np.stack([np.asarray(Image.open(d / "views" / f"{i:03d}.png")) / 255.0
                      for i in range(24)])
    asset = load_ply(d / "gaussians.ply")
    back = np.linalg.inv(lgm_frame_to_world(record["cameras"]["c2w_opengl_zup"]))
    psnr = {}
    for name, g in (("world", asset), ("lgm_frame", transform_gaussians(asset, back))):
        out = render_orbit(g, 24, orbit["elevation_deg"], orbit["distance"], 64,
                           background=(0.5, 0.5, 0.5))
        psnr[name] = -10 * np.log10(np.mean((np.clip(np.asarray(out.colors), 0, 1) - views) ** 2))
    assert psnr["world"] > 18.0 and psnr["world"] > psnr["lgm_frame"] + 4.0, psnr


def test_sample_cli_default_model_image(tmp_path, load_script):
    sample = load_script("sample")
    example = sorted((tiny.weights_dir() / "examples").glob("*.png"))[0]
    out = tmp_path / "i2mv"
    code = sample.main(["--image", str(example), "--out", str(out), "--steps", "4",
                        "--set", "sampler.progress=False"])
    assert code == 0
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    record = json.loads((d / "run.json").read_text())
    assert record["mode"] == "i2mv" and record["weights"].startswith("videomv-tiny")
    assert len(os.listdir(d / "views")) == 24


def test_eval_shapes_default_model(tmp_path, capsys, load_script):
    """``eval.py shapes`` end to end on the default model: 2 held-out scenes, few steps, a short
    Gaussian fit; both variants scored, report + per-sample JSON written. A world setting out of
    range is refused before the models load."""
    ev = load_script("eval")
    bad = ["shapes", "--num-samples", "1", "--max-size-ratio", "0.5",
           "--out", str(tmp_path / "bad")]
    assert ev.main(bad) == 2
    assert "max_size_ratio must be in [1, 3.2]" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "report"
    code = ev.main(["shapes", "--num-samples", "2", "--steps", "4", "--out", str(out),
                    "--fit-steps", "20", "--fit-gaussians", "512", "--set",
                    "sampler.progress=False"])
    assert code == 0
    samples = sorted((out / "samples").glob("*.json"))
    assert len(samples) == 2
    rec = json.loads(samples[0].read_text())
    assert set(rec["variants"]) == {"aware", "plain"}
    for var in rec["variants"].values():
        assert np.isfinite(var["metrics"]["ref_psnr"]) and np.isfinite(var["metrics"]["fit_psnr"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["default_model"] is True
    assert summary["settings"]["world"] == {"max_objects": 2, "fit_radius": 0.5,
                                            "next_to": "left_right", "max_size_ratio": 1.25}
    report = (out / "report.md").read_text()
    assert "aware" in report and "plain" in report
    # each sample is grouped by its scene's object count, and the report has a table per group
    from videomv_jax.data.shapes import random_scene

    for path in samples:
        r = json.loads(path.read_text())
        n = len(random_scene(r["seed"], 2, 0.5, "left_right", 1.25).primitives)
        assert r["group"] == ("1 object" if n == 1 else f"{n} objects")
        assert f"### {r['group']} (" in report
    assert sum(g["num_samples"] for g in summary["groups"].values()) == 2
    assert (out / "metrics.png").is_file() and (out / "paired.png").is_file()


if __name__ == "__main__" and "--write-reference" in sys.argv:
    sys.path.insert(0, ROOT)
    views = _reference_sample()[REFERENCE_VIEWS]
    os.makedirs(os.path.dirname(REFERENCE), exist_ok=True)
    np.savez_compressed(REFERENCE, views=views.astype(np.float32))
    print(f"wrote {REFERENCE}: {views.shape}")
