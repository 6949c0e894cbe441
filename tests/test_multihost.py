"""Really multi-process, in CI: ``train.py`` and ``sample.py`` as 2 JAX processes × 4 CPU devices
(one JAX system over 127.0.0.1, exactly the README's multi-host commands) against 1 process ×
8 devices.

- t2mv tiny (converted VAE, pre-encoded latents, a tokenizer built by process 0): the losses
  and the exported UNet / text tower of 2 steps equal the 1-process run's.
- SIGTERM to both processes → one checkpoint; the 1-process workdir resumed by 2 processes
  (1 → 2) and then finished by 1 (2 → 1) reaches the loss of the 2-process workdir finished by
  1 process (2 → 1): same steps, same data.
- ``sample.py --checkpoint-dir`` of the 2-process export, 2 prompts as 2 processes (one each,
  one merged index) equal the 1-process run of both.
- i2mv tiny (``init_from`` the exported UNet, the exported text tower frozen, a random vision
  tower) and recon tiny (LGM): 2-step losses equal.

Every child has a bounded time and is killed (with its siblings) on failure. The module's
tests share one worker under xdist (``xdist_group``; pyproject.toml's pytest options select
``--dist loadgroup``) and one persistent compilation cache.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600  # seconds per launch (all its processes); about a minute on an idle 2-core CPU

UNET = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_levels=(True, False),
            head_dim=8, first_temporal_heads=2, context_dim=16, norm_groups=4,
            resblock_dropout=0.0, temporal_conv_dropout=0.0)
TEXT = dict(vocab_size=512, context_length=16, width=16, layers=2, heads=2, mlp_dim=32,
            projection_dim=None)
VISION = dict(image_size=28, patch_size=14, width=16, layers=1, heads=2, mlp_dim=32,
              output_dim=16)
LGM = dict(input_size=16, splat_size=8, output_size=16, down_channels=(8, 16),
           down_attention=(False, True), up_channels=(16,), up_attention=(True,),
           attention_heads=2, norm_groups=4, layers_per_block=1, quat_norm="per_gaussian",
           positions="ray")

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multihost")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(nproc: int, pid: int, port: int, cache: Path) -> dict[str, str]:
    """The environment of process ``pid`` of ``nproc``: what the README tells a user to set
    (plus the simulated CPU devices and a compilation cache)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS", "XLA_FLAGS"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // nproc}")
    if env.get("VIDEOMV_JAX_COMPILATION_CACHE", "off").lower() in ("", "off"):
        env["VIDEOMV_JAX_COMPILATION_CACHE"] = str(cache)  # else the suite's (conftest)
    env.pop("VIDEOMV_NO_DISTRIBUTED", None)
    if nproc > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(nproc),
                   JAX_PROCESS_ID=str(pid))
    return env


def launch(nproc: int, args: list[str], logs: Path, cache: Path, script: str = "train.py",
           sigterm_when: Path | None = None) -> list[str]:
    """Run ``python SCRIPT ARGS`` as ``nproc`` processes; returns their outputs. With
    ``sigterm_when``, every process gets SIGTERM once that path exists. Kills all on a failure
    or after ``TIMEOUT`` s."""
    port = free_port()
    procs, files = [], []
    logs.mkdir(parents=True, exist_ok=True)
    tag = f"{len(list(logs.iterdir()))}"
    for pid in range(nproc):
        f = open(logs / f"{tag}_{script[:-3]}_{nproc}p_{pid}.log", "w+")  # noqa: SIM115
        files.append(f)
        procs.append(subprocess.Popen([sys.executable, script, *args], cwd=ROOT,
                                      env=process_env(nproc, pid, port, cache), stdout=f,
                                      stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.time() + TIMEOUT
    signalled = False
    try:
        while any(p.poll() is None for p in procs):
            if time.time() > deadline:
                raise TimeoutError(f"{script} x{nproc} did not finish in {TIMEOUT} s")
            if any(p.returncode not in (None, 0) for p in procs):
                break  # one failed: do not wait for the others to hang in a collective
            if sigterm_when is not None and not signalled and sigterm_when.exists():
                for p in procs:
                    p.send_signal(signal.SIGTERM)
                signalled = True
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    outs = []
    for f in files:
        f.seek(0)
        outs.append(f.read())
        f.close()
    for pid, (p, out) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, (f"{script}: process {pid}/{nproc} exited {p.returncode}:\n"
                                   f"{out[-4000:]}")
    if sigterm_when is not None:
        assert signalled, f"{sigterm_when} never appeared"
    return outs


def summary(workdir: Path) -> dict:
    return json.loads((workdir / "summary.json").read_text())


def exported_params(directory: Path) -> dict[str, np.ndarray]:
    import jax
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as ck:
        meta = ck.metadata(directory / "params")
        meta = getattr(meta, "item_metadata", meta)
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
        tree = ck.restore(directory / "params", args=ocp.args.PyTreeRestore(restore_args=args))
    flat = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}")
        else:
            flat[prefix] = np.asarray(node)

    walk(tree, "")
    return flat


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small shapes data set (8 objects, 16²) and a random converted tiny VAE (f2)."""
    from flax import nnx

    from videomv_jax.data.builders import build_dataset
    from videomv_jax.model_store import save_converted
    from videomv_jax.models.vae import AutoencoderKL, VAEConfig

    root = tmp_path_factory.mktemp("multihost")
    data = build_dataset("shapes", root / "data", num_objects=8, resolution=16)
    cfg = VAEConfig(ch=8, ch_mult=(1, 2), num_res_blocks=1, norm_groups=4)
    vae = nnx.jit(lambda: AutoencoderKL(cfg, rngs=nnx.Rngs(0)))()
    save_converted(root / "vae", "vae", cfg, vae, {"random": True})
    return {"root": root, "data": str(data.path), "vae": str(root / "vae"),
            "cache": root / "jax_cache", "logs": root / "logs"}


def common(world, workdir: Path, steps: int) -> list[str]:
    return ["--preset", "tiny", "--data", world["data"], "--workdir", str(workdir),
            "--steps", str(steps), "--set", "data.input.batch_size=8",
            "--set", "data.input.resolution=16", "--set", "optim.warmup_steps=0",
            "--set", "train.progress=False", "--set", "train.log_every=1"]


def t2mv_args(world, workdir: Path, steps: int) -> list[str]:
    return ["--config", "t2mv", *common(world, workdir, steps),
            "--set", f"models.vae.checkpoint={world['vae']}",
            "--set", f"models.unet.config={dict(variant='text', **UNET)!r}",
            "--set", f"models.text.config={TEXT!r}", "--set", "task.context_length=16"]


@pytest.fixture(scope="module")
def t2mv(world):
    """2 steps of t2mv tiny as 1 process × 8 devices (workdir ``t2mv_1p``, export ``e1``) and
    as 2 processes × 4 devices (``t2mv_2p``, ``e2``)."""
    root, cache, logs = world["root"], world["cache"], world["logs"]
    launch(1, [*t2mv_args(world, root / "t2mv_1p", 2), "--export", str(root / "e1")], logs,
           cache)
    outs = launch(2, [*t2mv_args(world, root / "t2mv_2p", 2), "--export", str(root / "e2")],
                  logs, cache)
    return {"outs": outs, "w1": root / "t2mv_1p", "w2": root / "t2mv_2p", "e1": root / "e1",
            "e2": root / "e2"}


def test_t2mv_two_processes_equal_one(t2mv):
    assert all("steps 0→2" in o for o in t2mv["outs"])
    s1, s2 = summary(t2mv["w1"]), summary(t2mv["w2"])
    # the same global program over the same 8 devices; only the collectives' reduction order
    # (in-process vs. gloo across processes) may differ: float32 rounding
    np.testing.assert_allclose(s2["metrics"]["loss"], s1["metrics"]["loss"], rtol=1e-5)
    for name in ("unet", "clip_text"):
        a, b = exported_params(t2mv["e1"] / name), exported_params(t2mv["e2"] / name)
        assert a.keys() == b.keys() and len(a) > 10
        for k in a:  # 2 Adam steps at lr 4e-4: reduction-order noise moves a weight << lr
            np.testing.assert_allclose(b[k], a[k], rtol=0, atol=4e-5, err_msg=k)
    # process 0 alone wrote the side files, once
    assert (t2mv["e2"] / "clip_text" / "tokenizer" / "vocab.json").is_file()
    assert sorted(p.name for p in t2mv["e2"].iterdir()) == sorted(
        p.name for p in t2mv["e1"].iterdir())


def test_sigterm_then_resume_across_process_counts(world, t2mv):
    cache, logs = world["cache"], world["logs"]
    w1, w2 = t2mv["w1"], t2mv["w2"]
    # 1 → 2: the 1-process workdir resumed by 2 processes, SIGTERM to both once the step-3
    # checkpoint exists: both stop after the same step and save one checkpoint
    outs = launch(2, [*t2mv_args(world, w1, 6), "--set", "train.checkpoint_every=1"], logs,
                  cache, sigterm_when=w1 / "checkpoints" / "3")
    s = summary(w1)
    assert s["preempted"] and s["start_step"] == 2 and 3 <= s["end_step"] < 6, s
    assert all("pre-empted (SIGTERM), saved" in o for o in outs)
    assert (w1 / "checkpoints" / str(s["end_step"])).is_dir()
    # 2 → 1: both workdirs finished by 1 process; same steps, same data, same loss
    launch(1, t2mv_args(world, w1, 6), logs, cache)
    launch(1, t2mv_args(world, w2, 6), logs, cache)
    a, b = summary(w1), summary(w2)
    assert a["end_step"] == b["end_step"] == 6 and b["start_step"] == 2
    # 4 more Adam steps on states equal to float32 rounding: still equal to ~1e-6
    np.testing.assert_allclose(a["metrics"]["loss"], b["metrics"]["loss"], rtol=1e-4)


def test_sample_the_multiprocess_export_with_two_processes_equals_one(world, t2mv, tmp_path):
    """``sample.py --checkpoint-dir`` of the 2-process export: 2 prompts as 2 processes (one
    prompt each, their own seeds, one merged index.json) equal 1 process sampling both."""
    from PIL import Image

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere on a green box\n")
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"samples_{nproc}p"
        launch(nproc, ["--prompts-file", str(prompts), "--checkpoint-dir", str(t2mv["e2"]),
                       "--out", str(out), "--steps", "2", "--aware-steps", "1", "--seed", "5",
                       "--set", "sampler.progress=False",
                       "--set", "output.asset_turntable=False"],
               world["logs"], world["cache"], script="sample.py")
        runs[nproc] = out
    index = {n: json.loads((runs[n] / "index.json").read_text()) for n in runs}
    assert index[2]["processes"] == 2 and index[1]["processes"] == 1
    entries = {n: [(e["index"], e["dir"], e["seed"]) for e in index[n]["samples"]] for n in runs}
    assert entries[1] == entries[2] == [(0, "000_a_red_cube", 5),
                                        (1, "001_a_blue_sphere_on_a_green_box", 6)]
    for _, name, _ in entries[1]:
        for k in range(0, 24, 5):
            a, b = (np.asarray(Image.open(runs[n] / name / "views" / f"{k:03d}.png"), np.int16)
                    for n in (1, 2))
            # the same program on one CPU device each: bit-equal up to one PNG level
            assert np.abs(a - b).max() <= 1, (name, k)
        ply = [(runs[n] / name / "gaussians.ply").read_bytes() for n in (1, 2)]
        assert len(ply[0]) == len(ply[1]) > 1000
    # the two prompts are different samples (the shares were not swapped or duplicated)
    v0, v1 = (np.asarray(Image.open(runs[2] / e["dir"] / "views" / "000.png"), np.float32)
              for e in index[2]["samples"])
    assert np.abs(v0 - v1).mean() > 1.0


def test_i2mv_init_from_and_recon_two_processes_equal_one(world, t2mv):
    root, cache, logs = world["root"], world["cache"], world["logs"]
    export = t2mv["e2"]
    i2mv = ["--set", f"models.unet.config={dict(variant='image', image_embed_dim=16, **UNET)!r}",
            "--set", f"models.unet.init_from={export / 'unet'}",
            "--set", f"models.text.checkpoint={export / 'clip_text'}",
            "--set", f"models.vae.checkpoint={world['vae']}",
            "--set", f"models.vision.config={VISION!r}", "--set", "task.context_length=16"]
    recon = ["--set", f"models.lgm.config={LGM!r}", "--set", "task.render_size=16"]
    for config, extra in (("i2mv", i2mv), ("recon", recon)):
        losses = []
        for nproc in (1, 2):
            w = root / f"{config}_{nproc}p"
            launch(nproc, ["--config", config, *common(world, w, 2), *extra], logs, cache)
            losses.append(summary(w)["metrics"]["loss"])
        np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5, err_msg=config)
