"""Training: the ×0.5 gradient rule, loss falls on an overfit set (stage 1, stage 2, plain
LGM), kill-and-resume equals an uninterrupted run, SIGTERM saves, non-finite steps are
skipped, and (in a subprocess with 8 CPU devices) the sharded step equals the single-device
step. One compiled trainer per objective is shared by the tests of this module."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videomv_jax.data.vocab import build_caption_tokenizer
from videomv_jax.models.clip import CLIPTextConfig, CLIPTextModel, load_tokenizer
from videomv_jax.models.lgm import LGM, LGMConfig
from videomv_jax.models.unet3d import UNet3D, UNet3DConfig
from videomv_jax.models.vae import AutoencoderKL, VAEConfig
from videomv_jax.render.camera import camera_embedding, orbit_cameras
from videomv_jax.train.grad_scale import (
    grad_scale_tree,
    inherited_params,
    released_grad_scale_keys,
)
from videomv_jax.train.optim import OptimConfig
from videomv_jax.train.tasks import ReconTask, Stage1Task
from videomv_jax.train.trainer import NonFiniteError, TrainConfig, Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES = 4
CAPTIONS = ["a red cube", "a blue sphere"]

# A deliberately small UNet (two levels, attention on the first) so the train step compiles fast.
UNET_CFG = UNet3DConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                        attn_levels=(True, False), head_dim=8, first_temporal_heads=2,
                        context_dim=16, norm_groups=4, resblock_dropout=0.0,
                        temporal_conv_dropout=0.0)
TEXT_CFG = CLIPTextConfig.tiny(vocab_size=256, width=16, layers=2, heads=2, mlp_dim=32,
                               context_length=16, projection_dim=None)


def _build(cls, cfg, seed):
    return nnx.jit(lambda: cls(cfg, rngs=nnx.Rngs(seed)))()


def _randomize_zero_init(model, seed):
    """Zero-initialised output layers would make the first gradients trivially sparse."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    flat = state.flat_state()
    for _path, var in flat:
        v = np.asarray(var.get_value())
        if not v.any():
            var.set_value(jnp.asarray(0.02 * rng.standard_normal(v.shape), v.dtype))
    nnx.update(model, nnx.State.from_flat_path(flat))
    return model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    build_caption_tokenizer(CAPTIONS, d)
    return load_tokenizer(d)


def _stage1_batch(seed=0, nan=False):
    rng = np.random.default_rng(seed)
    c2w = np.asarray(orbit_cameras(FRAMES, 15.0, 1.645))
    lat = rng.standard_normal((2, FRAMES, 4, 4, 4)).astype(np.float32)
    lat[1] *= -0.5
    if nan:
        lat[0, 0, 0, 0, 0] = np.nan
    return {"latents": lat, "camera": np.broadcast_to(np.asarray(camera_embedding(c2w)),
                                                      (2, FRAMES, 16)).copy(),
            "caption": list(CAPTIONS)}


@pytest.fixture(scope="module")
def stage1(tokenizer, tmp_path_factory):
    unet = _randomize_zero_init(_build(UNet3D, UNET_CFG, 0), 0)
    text = _build(CLIPTextModel, TEXT_CFG, 1)
    task = Stage1Task.for_variant("text", tokenizer=tokenizer, latents_key="latents",
                                  context_length=16)
    params = nnx.split(unet, nnx.Param, ...)[1].to_pure_dict()
    scales = {"unet": grad_scale_tree(params, UNET_CFG)}
    cfg = TrainConfig(workdir=str(tmp_path_factory.mktemp("s1")), num_steps=40,
                      checkpoint_every=0, progress=False, tensorboard=False,
                      async_checkpointing=False, max_consecutive_nonfinite=2)
    trainer = Trainer(task, {"unet": unet, "text": text},
                      OptimConfig(learning_rate=3e-3, warmup_steps=0), cfg, grad_scales=scales)
    return trainer, trainer.state


def _reset(trainer, init_state, workdir, **changes):
    """Back to the initial state and a fresh workdir (what a new process would have)."""
    trainer.state = jax.tree.map(lambda x: x.copy(), init_state)
    trainer.config = dataclasses.replace(trainer.config, workdir=str(workdir), **changes)
    trainer._manager = None
    trainer._stop_requested = False


def _fixed(batch):
    def batches(start):
        while True:
            yield batch
    return batches


# ---- the ×0.5 rule ----------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [UNet3DConfig.text_full(), UNet3DConfig.image_full()],
                         ids=["text", "image"])
def test_grad_scale_hits_exactly_the_released_list_at_full_size(cfg):
    released = released_grad_scale_keys()
    assert len(released) == 682
    sources = set(inherited_params(cfg).values())
    assert sources == released
    # and no parameter of the model outside them: every inherited target is a real parameter
    from videomv_jax.convert.base import abstract_params
    from videomv_jax.models.unet3d import abstract_unet
    targets = set(abstract_params(abstract_unet(cfg)))
    assert set(inherited_params(cfg)) <= targets
    assert len(targets) > len(released)  # temporal / embedding parameters stay at 1.0


def test_grad_scale_is_applied_in_the_step(stage1):
    trainer, init = stage1
    _reset(trainer, init, trainer.config.workdir)
    batch = _stage1_batch()
    key = jax.random.key(3)
    raw = trainer.compute_gradients(batch, key, scaled=False)["unet"]
    scaled = trainer.compute_gradients(batch, key, scaled=True)["unet"]
    inherited = set(inherited_params(UNET_CFG))
    n_half = n_full = 0
    for path, g in jax.tree_util.tree_leaves_with_path(raw):
        p = tuple(k.key if hasattr(k, "key") else k.idx for k in path)
        s = scaled
        for k in p:
            s = s[k]
        g, s = np.asarray(g), np.asarray(s)
        if p in inherited:
            np.testing.assert_array_equal(s, 0.5 * g)
            n_half += 1
        else:
            np.testing.assert_array_equal(s, g)
            n_full += 1
        assert np.abs(g).max() > 0, p  # a vanishing gradient would make the check vacuous
    assert n_half == len(inherited) and n_full > 0


# ---- stage 1 ----------------------------------------------------------------------------------


def test_stage1_loss_falls_on_an_overfit_batch(stage1, tmp_path):
    trainer, init = stage1
    _reset(trainer, init, tmp_path, num_steps=40)
    batch = _stage1_batch()
    keys = [jax.random.key(i) for i in range(4)]
    before = np.mean([trainer.evaluate(batch, k)["loss"] for k in keys])
    summary = trainer.fit(_fixed(batch), resume=False)
    after = np.mean([trainer.evaluate(batch, k)["loss"] for k in keys])
    assert summary["end_step"] == 40 and summary["nonfinite_total"] == 0
    # fixed t / noise draws: the eps-MSE of the fitted model must drop well below its start
    assert after < 0.6 * before, (before, after)


def test_kill_and_resume_reproduces_an_uninterrupted_run(stage1, tmp_path):
    trainer, init = stage1
    batches_of = {k: _stage1_batch(seed=k) for k in range(8)}

    def batches(start):
        step = start
        while True:
            yield batches_of[step]
            step += 1

    _reset(trainer, init, tmp_path / "straight", num_steps=6)
    trainer.fit(batches, resume=False)
    straight = jax.device_get(trainer.state)

    # interrupted: SIGTERM arrives while step 3 is being fed, the run saves and stops
    _reset(trainer, init, tmp_path / "killed", num_steps=6, checkpoint_every=2)

    def killing(start):
        for i, b in enumerate(batches(start)):
            if start + i == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            yield b

    summary = trainer.fit(killing, resume=False)
    assert summary["preempted"] and summary["end_step"] == 4
    assert sorted(trainer.manager().all_steps()) == [2, 4]
    # a new process: fresh state, same workdir → resumes at 4 and runs to 6
    _reset(trainer, init, tmp_path / "killed", num_steps=6, checkpoint_every=2)
    summary = trainer.fit(batches, resume=True)
    assert summary["start_step"] == 4 and summary["end_step"] == 6
    resumed = jax.device_get(trainer.state)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_nonfinite_steps_are_skipped_then_stop_the_run(stage1, tmp_path):
    trainer, init = stage1
    _reset(trainer, init, tmp_path, num_steps=10)
    before = jax.device_get(trainer.state.params)
    trainer.train_step(_stage1_batch(nan=True))
    assert int(trainer.state.nonfinite_streak) == 1 and int(trainer.state.step) == 1
    after = jax.device_get(trainer.state.params)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
    _reset(trainer, init, tmp_path / "stop", num_steps=10)
    with pytest.raises(NonFiniteError, match="2 consecutive steps"):
        trainer.fit(_fixed(_stage1_batch(nan=True)), resume=False)


def test_resume_refuses_a_checkpoint_of_another_task(stage1, tmp_path):
    trainer, init = stage1
    _reset(trainer, init, tmp_path, num_steps=1)
    trainer.fit(_fixed(_stage1_batch()), resume=False)
    _reset(trainer, init, tmp_path, num_steps=2, ema_decay=0.99)
    with pytest.raises(ValueError, match="EMA"):
        trainer.restore()


def test_ema_warmup():
    """EMA with warm-up: decay min(0.99, (1 + k) / (10 + k)) at step k (0.1, then 2/11, ...);
    without warm-up the plain decay."""
    from videomv_jax.train.trainer import ema_update

    rng = np.random.default_rng(0)
    p = [{"w": rng.standard_normal(5).astype(np.float32)} for _ in range(3)]
    ema = ema_update(p[0], p[1], 0.99, 0)
    ema = ema_update(ema, p[2], 0.99, 1)
    want = (2 / 11) * (0.1 * p[0]["w"] + 0.9 * p[1]["w"]) + (9 / 11) * p[2]["w"]
    np.testing.assert_allclose(ema["w"], want, rtol=1e-6)
    late = ema_update(p[0], p[1], 0.99, 10_000)  # (1 + k)/(10 + k) > 0.99: the plain decay
    np.testing.assert_allclose(late["w"], 0.99 * p[0]["w"] + 0.01 * p[1]["w"], rtol=1e-6)
    plain = ema_update(p[0], p[1], 0.99, 0, warmup=False)
    np.testing.assert_allclose(plain["w"], 0.99 * p[0]["w"] + 0.01 * p[1]["w"], rtol=1e-6)


# ---- stage 2 / plain LGM --------------------------------------------------------------------


def _shapes_batch(size=16):
    from videomv_jax.data.shapes import random_scene, render_scene
    frames, alphas, c2ws = [], [], []
    c2w = np.asarray(orbit_cameras(24, 15.0, 1.645))
    bg = np.array([0.2, 0.6, 0.9], np.float32)
    for seed in (3, 5):
        rgba, _ = render_scene(random_scene(seed), 24, size, 15.0, 1.645, 39.6)
        rgb = rgba[..., :3] + bg * (1 - rgba[..., 3:])
        frames.append(rgb * 2 - 1)
        alphas.append(rgba[..., 3:])
        c2ws.append(c2w)
    return {"frames": np.stack(frames).astype(np.float32),
            "alpha": np.stack(alphas).astype(np.float32),
            "c2w": np.stack(c2ws).astype(np.float32),
            "camera": np.stack([np.asarray(camera_embedding(c2w))] * 2).astype(np.float32),
            "background": np.stack([bg, bg]), "caption": list(CAPTIONS)}


LGM_CFG = LGMConfig.tiny(input_size=16, splat_size=8, output_size=16)


def _recon_trainer(task, models, workdir, steps):
    cfg = TrainConfig(workdir=str(workdir), num_steps=steps, checkpoint_every=0,
                      progress=False, tensorboard=False, async_checkpointing=False)
    return Trainer(task, models, OptimConfig(learning_rate=3e-3, warmup_steps=0), cfg)


def test_plain_lgm_loss_falls(tmp_path):
    lgm = _build(LGM, LGM_CFG, 0)
    task = ReconTask(source="gt", render_size=16, capacity_per_scene=4 * 16 * 64)
    trainer = _recon_trainer(task, {"lgm": lgm}, tmp_path, 20)
    batch = _shapes_batch()
    key = jax.random.key(0)
    before = trainer.evaluate(batch, key)
    trainer.fit(_fixed(batch), resume=False)
    after = trainer.evaluate(batch, key)
    assert after["raster_overflow"] == 0.0
    assert after["loss"] < 0.7 * before["loss"], (before, after)


def test_stage2_lgm_on_unet_predictions_loss_falls(tokenizer, tmp_path):
    """Stage 2: the frozen UNet predicts x̂0 from noised VAE latents; LGM learns from 4 decoded
    views against the ground truth."""
    vae_cfg = VAEConfig.tiny(ch=8, ch_mult=(1, 2, 2), norm_groups=4)  # f4: 16² → 4² latents
    vae = _build(AutoencoderKL, vae_cfg, 4)
    unet = _build(UNet3D, UNET_CFG, 5)
    text = _build(CLIPTextModel, TEXT_CFG, 6)
    lgm = _build(LGM, LGM_CFG, 7)
    s1 = Stage1Task.for_variant("text", tokenizer=tokenizer, context_length=16)
    task = ReconTask(source="unet", stage1=s1, render_size=16, capacity_per_scene=4 * 16 * 64)
    assert set(task.frozen) == {"unet", "vae", "text"} and task.trainable == ("lgm",)
    trainer = _recon_trainer(task, {"lgm": lgm, "unet": unet, "vae": vae, "text": text},
                             tmp_path, 20)
    batch = _shapes_batch()
    key = jax.random.key(1)
    before = trainer.evaluate(batch, key)
    frozen_before = jax.device_get(trainer.frozen["unet"][0])
    trainer.fit(_fixed(batch), resume=False)
    after = trainer.evaluate(batch, key)
    assert after["loss"] < 0.8 * before["loss"], (before, after)
    for a, b in zip(jax.tree.leaves(frozen_before),
                    jax.tree.leaves(jax.device_get(trainer.frozen["unet"][0])), strict=True):
        np.testing.assert_array_equal(a, b)  # the UNet stays frozen


# ---- sharding ---------------------------------------------------------------------------------

SHARDED_SCRIPT = textwrap.dedent("""
    import os, sys, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    sys.path.insert(0, {root!r})
    from tests.test_train import (UNET_CFG, TEXT_CFG, _build, _randomize_zero_init,
                                  _stage1_batch)
    from videomv_jax.models.unet3d import UNet3D
    from videomv_jax.models.clip import CLIPTextModel, load_tokenizer
    from videomv_jax.parallel.mesh import make_mesh
    from videomv_jax.train.tasks import Stage1Task
    from videomv_jax.train.trainer import Trainer, TrainConfig
    from videomv_jax.train.optim import OptimConfig
    assert len(jax.devices()) == 8
    tok = load_tokenizer({tok!r})
    batch = _stage1_batch()
    batch = {{k: (np.concatenate([v] * 4) if not isinstance(v, list) else v * 4)
              for k, v in batch.items()}}
    out = {{}}
    for name, mesh in (("single", make_mesh(1, 1, 1, devices=jax.devices()[:1])),
                       ("sharded", make_mesh(4, 2, 1)), ("tensor", make_mesh(2, 2, 2))):
        unet = _randomize_zero_init(_build(UNet3D, UNET_CFG, 0), 0)
        text = _build(CLIPTextModel, TEXT_CFG, 1)
        task = Stage1Task.for_variant("text", tokenizer=tok, latents_key="latents",
                                      context_length=16)
        cfg = TrainConfig(workdir="/tmp/unused", num_steps=2, progress=False,
                          tensorboard=False)
        tr = Trainer(task, {{"unet": unet, "text": text}}, OptimConfig(learning_rate=1e-3,
                     warmup_steps=0), cfg, mesh=mesh)
        for _ in range(2):
            m = tr.train_step(batch)
        leaves = jax.tree.leaves(tr.state.params)
        specs = {{tuple(x.sharding.spec) for x in leaves}}
        if name == "sharded":
            assert any("fsdp" in str(s) for s in specs), specs
        if name == "tensor":  # column- and row-parallel kernels (Megatron style)
            assert ("fsdp", "tensor") in specs and ("tensor", "fsdp") in specs, specs
        np.savez({out!r} + name + ".npz", *[np.asarray(x) for x in leaves])
        out[name] = float(m["loss"])
    print(json.dumps(out))
""")


def test_sharded_and_tensor_parallel_steps_equal_single_device_step(tokenizer, tmp_path):
    """Two AdamW steps of the stage-1 UNet on one device, on data4×fsdp2 and on
    data2×fsdp2×tensor2 (8 CPU devices): the same losses and parameters."""
    tok_dir = tmp_path / "tok"
    build_caption_tokenizer(CAPTIONS, tok_dir)
    script = SHARDED_SCRIPT.format(root=ROOT, tok=str(tok_dir), out=str(tmp_path / "p_"))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    losses = json.loads(res.stdout.strip().splitlines()[-1])
    a = np.load(tmp_path / "p_single.npz")
    for mesh in ("sharded", "tensor"):
        # sharding only changes the order of float32 reductions (measured relative loss
        # differences <= 7e-7 on both meshes)
        np.testing.assert_allclose(losses[mesh], losses["single"], rtol=1e-5, err_msg=mesh)
        b = np.load(tmp_path / f"p_{mesh}.npz")
        assert len(a.files) == len(b.files) > 50
        # Two AdamW steps at lr 1e-3: every update is ~lr·g/|g|, so reduction-order noise in a
        # near-zero gradient element can move that parameter by a small fraction of lr
        # (measured max |Δ| 1.0e-5 on data×fsdp, 1.7e-5 on the tensor mesh, both in
        # middle_block/0/out_conv/kernel); 5e-5 = 5 % of lr bounds it with ~3x headroom, far
        # below a real sharding bug (~lr: before Conv gathered its kernel over fsdp, the tensor
        # mesh moved 466 of 470 parameters by more than 2e-5, up to 4e-3).
        for k in a.files:
            np.testing.assert_allclose(b[k], a[k], rtol=0, atol=5e-5, err_msg=f"{mesh} {k}")


# ---- train.py -----------------------------------------------------------------------------------


def test_train_cli_trains_resumes_and_exports(tmp_path, capsys):
    import importlib.util

    from videomv_jax.data.builders import build_dataset
    from videomv_jax.model_store import load_converted

    data = build_dataset("shapes", tmp_path / "data", num_objects=4, resolution=16)
    spec = importlib.util.spec_from_file_location("train_cli", os.path.join(ROOT, "train.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    argv = ["--config", "vae", "--preset", "tiny", "--data", str(data.path),
            "--workdir", str(tmp_path / "run"), "--export", str(tmp_path / "export"),
            "--set", "models.vae.config={'ch': 8, 'ch_mult': (1, 2), 'norm_groups': 4}",
            "--set", "data.input.batch_size=2", "--set", "data.input.resolution=16",
            "--set", "train.progress=False", "--set", "optim.warmup_steps=0",
            "--set", "train.image_every=2", "--set", "train.log_every=1"]
    assert cli.main(argv + ["--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "steps 0→2" in out and "exported" in out
    vae, cfg = load_converted(tmp_path / "export" / "vae", kind="vae")
    assert cfg.ch == 8
    from videomv_jax.model_store import read_converted_config
    from videomv_jax.pipeline import MultiViewPipeline
    source = read_converted_config(tmp_path / "export" / "vae")["source"]
    assert source["trained_by"] == "videomv_jax train.py" and source["step"] == 2
    # a model we trained is not flagged as random weights by the sampling pipeline
    pipe = MultiViewPipeline.__new__(MultiViewPipeline)
    pipe.sources = {"vae": source, "unet": {"random": True}}
    assert pipe.random_weights == ["unet"]
    first = jax.device_get(nnx.state(vae, nnx.Param))
    assert cli.main(argv + ["--steps", "3"]) == 0  # resumes at 2
    out = capsys.readouterr().out
    assert "steps 2→3" in out
    vae2, _ = load_converted(tmp_path / "export" / "vae", kind="vae")
    second = jax.device_get(nnx.state(vae2, nnx.Param))
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["end_step"] == 3
    # TensorBoard: scalars every step and an image grid at step 2
    from tensorboardX.proto import event_pb2
    tags = set()
    for f in (tmp_path / "run" / "tensorboard").iterdir():
        raw = f.read_bytes()
        pos = 0
        while pos < len(raw):  # TFRecord framing: len (8) + crc (4) + data + crc (4)
            n = int.from_bytes(raw[pos:pos + 8], "little")
            ev = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + n])
            pos += 16 + n
            tags.update((v.tag, v.HasField("image")) for v in ev.summary.value)
    assert ("train/loss", False) in tags and ("train/views", True) in tags, tags
    # bad input: a clear error, not a traceback
    assert cli.main(["--config", "vae", "--preset", "tiny", "--set", "train.nope=1"]) == 2
    assert "unknown config key 'train.nope'" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("x")
    assert cli.main(["--config", "vae", "--preset", "tiny", "--workdir",
                     str(tmp_path / "a_file" / "run")]) == 2
    assert "--workdir" in capsys.readouterr().err
    assert not (tmp_path / "a_file").is_dir()
    assert cli.main(["--config", "vae", "--preset", "tiny", "--data", str(tmp_path)]) == 2
    assert "not a built data set" in capsys.readouterr().err

    # decoder-only fine-tuning from the export: the encoder (the latent space) stays bit-exact
    ft = ["--config", "vae", "--preset", "tiny", "--data", str(data.path),
          "--workdir", str(tmp_path / "ft"), "--export", str(tmp_path / "ft_export"),
          "--set", f"models.vae.checkpoint={tmp_path / 'export' / 'vae'}",
          "--set", "data.input.batch_size=2", "--set", "data.input.resolution=16",
          "--set", "train.progress=False", "--set", "optim.warmup_steps=0",
          "--set", "task.train_encoder=False", "--steps", "2"]
    assert cli.main(ft + ["--set", "optim.weight_decay=0.01"]) == 2
    assert "train_encoder=False" in capsys.readouterr().err
    assert cli.main(ft) == 0
    tuned, _ = load_converted(tmp_path / "ft_export" / "vae", kind="vae")
    for part, same in (("encoder", True), ("quant_conv", True), ("decoder", False),
                       ("post_quant_conv", False)):
        before = jax.tree.leaves(jax.device_get(nnx.state(getattr(vae2, part), nnx.Param)))
        after = jax.tree.leaves(jax.device_get(nnx.state(getattr(tuned, part), nnx.Param)))
        equal = [np.array_equal(a, b) for a, b in zip(before, after, strict=True)]
        assert all(equal) if same else not all(equal), part


def test_train_cli_bad_input_fails_before_anything_runs(tmp_path, capsys, monkeypatch,
                                                       load_script):
    """Every bad train.py argument: one ``error:`` line naming it and the fix, exit code 2,
    before JAX's distributed setup, any data read or model built; nothing written."""
    from videomv_jax.train import run

    def no_run(*a, **k):
        raise AssertionError("training started before the arguments were checked")

    monkeypatch.setattr(run, "train", no_run)
    cli = load_script("train")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    work = tmp_path / "work"
    base = ["--config", "t2mv", "--preset", "tiny", "--workdir", str(work)]
    data = ["--data", str(tmp_path)]  # a folder, but not a built data set
    cases = [
        (["--config", "nope", "--workdir", str(work)], "--config 'nope' is neither one of"),
        ([*base, "--set", "train.nope=1"], "unknown config key 'train.nope'"),
        ([*base, "--set", "train.num_steps='x'"], "bad value for config key 'train.num_steps'"),
        ([*base, "--set", "train.num_steps"], "--set needs KEY=VALUE"),
        ([*base, "--steps", "0"], "--steps must be an integer >= 1"),
        (["--config", "t2mv", "--preset", "tiny", "--workdir", str(a_file / "run")],
         "is a file, not a folder"),
        ([*base, "--export", str(a_file)], "--export"),
        (base, "config.data.path is empty"),
        ([*base, *data], "is not a built data set"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (argv, err)
        assert not work.exists() and a_file.read_text() == "x", argv
    with pytest.raises(SystemExit) as exc:  # argparse's own: exit code 2 as well
        cli.main([*base, "--preset", "big"])
    assert exc.value.code == 2
    assert "invalid choice: 'big'" in capsys.readouterr().err


def test_tiny_export_is_a_sampleable_folder(tmp_path):
    """--export of the tiny text→MV run: beside the trained UNet and text tower it copies the
    frozen VAE and the packaged LGM, and writes the sampling settings the models were trained
    for, which sample.py --checkpoint-dir applies (64², DDIM 25, CFG 3, orbit 15° / 1.645 rather
    than the released 256², 50, 9, 2.0); the pipeline loads the folder."""
    import importlib.util
    import shutil
    import sys

    sys.path.insert(0, ROOT)
    from configs import t2mv
    from videomv_jax import tiny
    from videomv_jax.pipeline import MultiViewPipeline
    from videomv_jax.train.run import _complete_export

    cfg = t2mv.get_train_config("tiny")
    assert os.path.isdir(cfg.models.vae.checkpoint)  # a fresh clone has it: the packaged VAE
    export = tmp_path / "export"
    written = []
    for sub in ("unet", "clip_text"):  # stand-ins for what the run trained and exported
        shutil.copytree(tiny.weights_dir() / sub, export / sub)
        written.append(str(export / sub))
    copied = _complete_export(cfg, str(export), written)
    assert sorted(os.path.basename(c) for c in copied) == ["lgm", "vae"]
    settings = json.loads((export / "sampling.json").read_text())["modes"]["t2mv"]
    assert settings["resolution"] == 64 and settings["sampler.num_steps"] == 25

    spec = importlib.util.spec_from_file_location("sample_cli", os.path.join(ROOT, "sample.py"))
    sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample)
    args = sample.parse_args(["--prompt", "a red cube", "--checkpoint-dir", str(export)])
    scfg, manifest, trained = sample.build_config(args, "t2mv")
    assert manifest is None and trained == (15.0, 1.645)
    assert (scfg.resolution, scfg.sampler.num_steps, scfg.sampler.guidance_scale,
            scfg.sampler.render_size, scfg.distance) == (64, 25, 3.0, 64, 1.645)
    assert scfg.checkpoint_dir == str(export)
    pipe = MultiViewPipeline.from_checkpoints(export, scfg)
    assert pipe.random_weights == []


#: the smallest text→MV models the tiny recipe accepts (one UNet level, a 2-layer text tower):
#: what the real train → export → sample test trains, so that its compiles stay short
E2E_UNET = ("{'variant': 'text', 'base_channels': 8, 'channel_mult': (1,), 'num_res_blocks': 1, "
            "'attn_levels': (True,), 'head_dim': 8, 'first_temporal_heads': 1, "
            "'context_dim': 16, 'norm_groups': 4, 'resblock_dropout': 0.0, "
            "'temporal_conv_dropout': 0.0}")
E2E_TEXT = ("{'vocab_size': 512, 'context_length': 32, 'width': 16, 'layers': 2, 'heads': 2, "
            "'mlp_dim': 32, 'projection_dim': None}")


@pytest.mark.slow
def test_tiny_t2mv_train_export_then_sample_from_the_export(tmp_path, capsys, load_script):
    """The user path of the README, for real: ``train.py --config t2mv --preset tiny`` (one
    shapes object at 64², one step, the models shrunk by --set) with ``--export DIR``, then
    ``sample.py --checkpoint-dir DIR``. The export samples with the settings it recorded
    (64², CFG 3, render size 64, orbit 15° / 1.645; only the step count is cut to the
    packaged model's reference run's, 4 steps with a 3D-aware step at index 2, seed 7), writes
    every output, and its views are the exported models' (run.json names the step-1 UNet of
    this run), not the packaged videomv-tiny's: they differ from its stored reference sample of
    the same prompt, seed and settings by a mean |Δ| > 0.05 (test_tiny holds the packaged
    model to that reference within 1e-4 mean; PNG quantisation is ≤ 2e-3)."""
    from PIL import Image

    from videomv_jax.data.builders import build_dataset

    data = build_dataset("shapes", tmp_path / "data", num_objects=1, resolution=64)
    export = tmp_path / "export"
    assert load_script("train").main([
        "--config", "t2mv", "--preset", "tiny", "--data", str(data.path),
        "--workdir", str(tmp_path / "run"), "--export", str(export), "--steps", "1",
        "--set", f"models.unet.config={E2E_UNET}", "--set", f"models.text.config={E2E_TEXT}",
        "--set", "data.input.batch_size=1", "--set", "optim.warmup_steps=0",
        "--set", "train.progress=False", "--set", "train.tensorboard=False"]) == 0
    out = capsys.readouterr().out
    assert "steps 0→1" in out
    assert sorted(p.name for p in export.iterdir()) == ["clip_text", "lgm", "sampling.json",
                                                         "unet", "vae"]
    recorded = json.loads((export / "sampling.json").read_text())["modes"]["t2mv"]

    samples = tmp_path / "samples"
    prompt = "a red cube on a blue sphere"  # test_tiny's reference prompt, seed and settings
    assert load_script("sample").main([
        "--prompt", prompt, "--checkpoint-dir", str(export), "--out", str(samples),
        "--steps", "4", "--aware-steps", "2", "--seed", "7",
        "--set", "sampler.progress=False", "--set", "output.asset_turntable=False"]) == 0
    err = capsys.readouterr().err
    assert not any(ln.startswith("error") for ln in err.splitlines()), err
    assert "videomv-tiny" not in err, err  # no default-model note: the export was used
    d = samples / "000_a_red_cube_on_a_blue_sphere"
    assert sorted(os.listdir(d / "views")) == [f"{i:03d}.png" for i in range(24)]
    for name in ("grid.png", "gaussians.ply", "run.json"):
        assert (d / name).is_file(), name
    assert (d / "views.mp4").is_file() or (d / "views.gif").is_file()
    assert (samples / "index.json").is_file()
    record = json.loads((d / "run.json").read_text())
    cfg = record["config"]
    assert (cfg["resolution"], cfg["elevation"], cfg["distance"]) == (
        recorded["resolution"], recorded["elevation"], recorded["distance"]) == (64, 15.0, 1.645)
    for key in ("guidance_scale", "render_size", "capacity_per_scene"):
        assert cfg["sampler"][key] == recorded[f"sampler.{key}"], key
    assert (cfg["sampler"]["num_steps"], cfg["sampler"]["aware_steps"]) == (4, [2])
    assert record["cameras"]["trained_orbit"] == {"elevation_deg": 15.0, "distance": 1.645}
    assert record["checkpoint_dir"] == str(export)
    unet = record["sources"]["unet"]
    assert (unet["trained_by"], unet["step"], unet["workdir"]) == (
        "videomv_jax train.py", 1, str(tmp_path / "run"))
    assert not record["weights"].startswith(("videomv-tiny", "RANDOM"))
    views = np.stack([np.asarray(Image.open(d / "views" / f"{i:03d}.png"), np.float32) / 255
                      for i in range(0, 24, 4)])
    packaged = np.load(os.path.join(ROOT, "tests", "data", "videomv_tiny_reference.npz"))["views"]
    assert views.shape == packaged.shape and np.abs(views - packaged).mean() > 0.05


# ---- stage-1 objective, checked by hand ---------------------------------------------------------


class _Echo:
    """Stands in for the UNet: returns x_t, and records what it was called with."""

    def __call__(self, xt, t, context, camera, **kw):
        self.seen = dict(t=t, context=context, camera=camera, **kw)
        return xt


@pytest.mark.parametrize("variant", ["text", "image"])
def test_stage1_loss_is_the_released_objective(variant, tokenizer):
    from videomv_jax.diffusion.schedules import alphas_cumprod

    task = Stage1Task.for_variant(variant, tokenizer=tokenizer, latents_key="latents",
                                  context_length=16, sample_posterior=False)
    rng = np.random.default_rng(0)
    b, f = 2, 3
    batch = {"latents": rng.standard_normal((b, f, 4, 4, 4)).astype(np.float32),
             "camera": rng.standard_normal((b, f, 16)).astype(np.float32),
             "tokens": np.zeros((b, 16), np.int32)}
    models = {"unet": _Echo(), "text": lambda tok: jnp.ones((tok.shape[0], 16, 8))}
    if variant == "image":
        batch["cond_latents"] = rng.standard_normal((b, 4, 4, 4)).astype(np.float32)
        batch["clip_image"] = np.zeros((b, 28, 28, 3), np.float32)
        models["vision"] = lambda x: jnp.full((x.shape[0], 8), 2.0)
    key = jax.random.key(7)
    loss, _ = task.loss(models, batch, key)

    # the same draws, by hand (t ~ U{0..999}, ε ~ N(0, I), offset ε' shared over pixels)
    k_lat, k_img, k_t, k_eps, k_off, _ = jax.random.split(key, 6)
    t = np.asarray(jax.random.randint(k_t, (b,), 0, 1000))
    ab = alphas_cumprod("linear_sd" if variant == "text" else "cosine")[t].reshape(b, 1, 1, 1, 1)
    x0 = batch["latents"].astype(np.float64)
    eps = np.asarray(jax.random.normal(k_eps, x0.shape), np.float64)
    if variant == "image":
        eps = eps + 0.1 * np.asarray(jax.random.normal(k_off, (b, f, 1, 1, 4)), np.float64)
    xt = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
    target = eps if variant == "text" else np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0
    expected = np.mean((xt - target) ** 2)
    # float32 arithmetic on O(1) values; the float64 recomputation agrees to ~1e-7 relative
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    seen = models["unet"].seen
    np.testing.assert_array_equal(np.asarray(seen["t"]), t)
    if variant == "image":  # conditioned on the unshifted view-0 latent and the CLIP embedding
        np.testing.assert_array_equal(np.asarray(seen["image_latent"]), batch["cond_latents"])
        np.testing.assert_array_equal(np.asarray(seen["image_embedding"]), 2.0)
    else:
        assert seen["image_latent"] is None


def test_image_condition_dropout_zeroes_the_flagged_image_embeddings(tokenizer):
    """Examples whose caption was dropped to the negative prompt (``condition_dropped``) get a
    zero CLIP image embedding, the sampler's uncond branch; the others and the image latent
    are untouched."""
    task = Stage1Task.for_variant("image", tokenizer=tokenizer, latents_key="latents",
                                  context_length=16, sample_posterior=False)
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((3, 5, 8)).astype(np.float32)
    batch = {"tokens": np.zeros((3, 16), np.int32),
             "clip_image": np.zeros((3, 28, 28, 3), np.float32),
             "cond_latents": rng.standard_normal((3, 4, 4, 4)).astype(np.float32),
             "condition_dropped": np.array([0.0, 1.0, 0.0], np.float32)}
    models = {"text": lambda tok: jnp.ones((tok.shape[0], 16, 8)), "vision": lambda x: emb}
    cond = task.conditioning(models, batch, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(cond["image_embedding"]),
                                  emb * np.array([1, 0, 1], np.float32)[:, None, None])
    np.testing.assert_array_equal(np.asarray(cond["image_latent"]), batch["cond_latents"])
    del batch["condition_dropped"]  # released recipe (no flag): always conditioned
    np.testing.assert_array_equal(
        np.asarray(task.conditioning(models, batch, jax.random.key(0))["image_embedding"]), emb)


def test_dropped_captions_do_not_warn_about_the_default_negative_prompt(tokenizer):
    """Caption dropout puts VideoMV's negative prompt (longer than the tiny towers' context)
    into the batch at many steps: its truncation is the design and stays silent; a real
    over-long caption in the same batch still warns, once."""
    import warnings

    from videomv_jax.data import DEFAULT_NEGATIVE_PROMPT
    from videomv_jax.models.clip import PromptTruncatedWarning

    task = Stage1Task.for_variant("text", tokenizer=tokenizer, latents_key="latents",
                                  context_length=16)
    long_caption = " ".join(["a red cube"] * 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):  # three steps that dropped a caption
            task.prepare({"caption": [DEFAULT_NEGATIVE_PROMPT, "a blue sphere"]})
        out = task.prepare({"caption": [DEFAULT_NEGATIVE_PROMPT, long_caption]})
    messages = [str(w.message) for w in caught if issubclass(w.category, PromptTruncatedWarning)]
    assert len(messages) == 1 and "red cube" in messages[0], messages
    assert out["tokens"].shape == (2, 16)


def test_image_variant_prepares_its_clip_input_from_the_unshifted_view(tokenizer):
    from videomv_jax.models.clip import preprocess

    task = Stage1Task.for_variant("image", tokenizer=tokenizer, context_length=16,
                                  clip_image_size=28)
    assert task.prediction == "v" and task.offset_noise == 0.1 and task.schedule == "cosine"
    assert set(task.frozen) == {"vae", "vision", "text"}
    rng = np.random.default_rng(1)
    cond = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    frames = rng.uniform(-1, 1, (2, 4, 16, 16, 3)).astype(np.float32)  # shifted: not view 0
    out = task.prepare({"caption": ["", ""], "cond_image": cond, "frames": frames})
    np.testing.assert_array_equal(out["clip_image"],
                                  preprocess(cond * 0.5 + 0.5, crop_size=16, size=28))
    assert out["tokens"].shape == (2, 16)


def test_init_from_copies_matching_params_and_extends_input_channels(tmp_path):
    """The image UNet started from a text UNet (videomv-tiny's i2mv recipe): every parameter
    with the same path and shape is copied, the first conv keeps the text UNet's weights for
    the noisy-latent channels and zeros for the new image channels, the image-conditioning
    layers stay as initialised."""
    from videomv_jax.model_store import save_converted
    from videomv_jax.models.unet3d import UNet3D
    from videomv_jax.train.run import init_partial

    text = _randomize_zero_init(_build(UNet3D, UNET_CFG, 0), 1)
    save_converted(tmp_path / "t2v", "unet-t2v", UNET_CFG, text, {"random": True})
    image_cfg = dataclasses.replace(UNET_CFG, variant="image", image_embed_dim=16)
    image = _build(UNet3D, image_cfg, 3)
    before = {tuple(p): np.asarray(v.get_value())
              for p, v in nnx.to_flat_state(nnx.state(image, nnx.Param))}
    info = init_partial(image, str(tmp_path / "t2v"))
    src = {tuple(p): np.asarray(v.get_value())
           for p, v in nnx.to_flat_state(nnx.state(text, nnx.Param))}
    after = {tuple(p): np.asarray(v.get_value())
             for p, v in nnx.to_flat_state(nnx.state(image, nnx.Param))}
    first = ("input_blocks", 0, 0, "kernel")
    assert src[first].shape[-2] == 4 and after[first].shape[-2] > 4
    np.testing.assert_array_equal(after[first][..., :4, :], src[first])
    assert not after[first][..., 4:, :].any()
    copied = 0
    for path, value in after.items():
        if path == first:
            continue
        if path in src and src[path].shape == value.shape:
            np.testing.assert_array_equal(value, src[path])
            copied += 1
        else:
            np.testing.assert_array_equal(value, before[path])  # left as initialised
    assert copied == len(info["copied"]) - 1 and info["kept"]
    assert all(not k.startswith("input_blocks/0/0") for k in info["kept"])
    save_converted(tmp_path / "lgm", "lgm", LGM_CFG, _build(LGM, LGM_CFG, 0), {"random": True})
    with pytest.raises(ValueError, match="shares no parameter"):
        init_partial(image, str(tmp_path / "lgm"))


def test_deepen_text_encoder_keeps_the_output_and_trains_the_new_blocks(tmp_path):
    """Growing a text tower: the deepened tower gives the same
    tokens bit for bit, the blocks the old tower ran keep their weights, the newly active ones
    start with zero output projections and get a gradient in the first step; the CLI writes a
    loadable directory with the tokenizer and refuses a shallower target."""
    from videomv_jax.model_store import load_converted, save_converted
    from videomv_jax.train.grow import deepen_text_encoder

    cfg = CLIPTextConfig.tiny(layers=2, context_length=16)
    small = CLIPTextModel(cfg, rngs=nnx.Rngs(0))
    deep = deepen_text_encoder(small, 4, seed=5)
    assert deep.config.layers == 4 and deep.config.output_layer == "penultimate"
    ids = jax.random.randint(jax.random.key(1), (3, 16), 0, cfg.vocab_size)
    np.testing.assert_array_equal(np.asarray(deep(ids)), np.asarray(small(ids)))
    old = {tuple(map(str, p)): np.asarray(v.get_value())
           for p, v in nnx.to_flat_state(nnx.state(small, nnx.Param))}
    new = {tuple(map(str, p)): np.asarray(v.get_value())
           for p, v in nnx.to_flat_state(nnx.state(deep, nnx.Param))}
    for key, value in new.items():
        block = int(key[2]) if key[:2] == ("transformer", "resblocks") else -1
        if block == 0 or block < 0:  # the one block "penultimate" ran, embeddings, ln_final
            np.testing.assert_array_equal(value, old[key])
        elif key[3:5] in (("attn", "out_proj"), ("mlp", "c_proj")) and block <= 2:
            assert not value.any(), key
    assert new[("transformer", "resblocks", "1", "attn", "in_proj", "kernel")].std() > 0

    def loss(m):
        return jnp.mean((m(ids) - 1.0) ** 2)

    grads = nnx.grad(loss)(deep)
    flat = {tuple(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}
    for block in ("1", "2"):
        for layer in (("mlp", "c_proj"), ("attn", "out_proj")):
            assert np.abs(flat[("transformer", "resblocks", block, *layer, "kernel")]).max() > 0
    with pytest.raises(ValueError, match="more blocks"):
        deepen_text_encoder(small, 2)

    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "grow_text_encoder", Path(__file__).resolve().parents[1] / "tools" / "grow_text_encoder.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    (tmp_path / "tok").mkdir()
    save_converted(tmp_path / "src", "clip-text", cfg, small, {"random": True},
                   extra_files=[(tmp_path / "tok", "tokenizer")])
    assert tool.main([str(tmp_path / "src"), str(tmp_path / "out"), "--layers", "3"]) == 0
    loaded, _ = load_converted(tmp_path / "out")
    assert loaded.config.layers == 3 and (tmp_path / "out" / "tokenizer").is_dir()
    np.testing.assert_array_equal(np.asarray(loaded(ids)), np.asarray(small(ids)))
