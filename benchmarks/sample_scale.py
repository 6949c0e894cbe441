"""Sampling at scale: samples/s for N prompts on one device vs all devices, in one run.

Each configuration runs in its own subprocess (the CPU device count is an XLA flag that must
be set before jax is imported): ``MultiViewPipeline.text_to_mv`` on N prompts with
``config.parallel.devices`` = 1 (one prompt at a time) and = D (batches of D ×
``batch_per_device`` prompts split over a data mesh; the last batch padded). A warm-up call on
one batch compiles first (its time is reported apart); then the N prompts are timed.

* ``--device cpu`` (default): D = 8 simulated CPU devices
  (``XLA_FLAGS=--xla_force_host_platform_device_count=8``). They share the machine's cores, so
  the ratio measures what batching costs or saves on the same cores, not multi-device scaling.
* ``--device gpu``: D = all GPUs of the machine (``JAX_PLATFORMS=cuda``), the real scaling
  number.

Models: ``random-tiny`` (default on CPU: the test suite's tiny random UNet / VAE / LGM / CLIP,
16² views, seconds per sample) or ``videomv-tiny`` (default on GPU: the packaged trained
model with its sampling settings, 64² views). Outputs are not written (sampling only).

Usage::

    python benchmarks/sample_scale.py                   # CPU: 1 vs 8 simulated devices
    python benchmarks/sample_scale.py --device gpu      # 1 vs all GPUs
    python benchmarks/sample_scale.py --quick           # 4 prompts, prints only
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"
PROMPTS = ["a red cube", "a blue sphere", "a green cone on a yellow box", "a white torus",
           "a purple cylinder next to a red sphere", "an orange box", "a cyan cone",
           "a grey sphere on a blue cube"]


# ---- child: one configuration ------------------------------------------------------------------


def _random_models():
    """Tiny random models (text UNet, VAE ×2, LGM 16², CLIP text width 32) and a letter
    tokenizer, built abstractly and filled with NumPy weights (no eager init)."""
    import tempfile

    import numpy as np

    from videomv_jax.convert.base import abstract_params, apply_params
    from videomv_jax.models import abstract_model
    from videomv_jax.models.clip import CLIPTextConfig, CLIPTextModel, load_tokenizer
    from videomv_jax.models.lgm import LGM, LGMConfig
    from videomv_jax.models.unet3d import UNet3D, UNet3DConfig, unet_from_params
    from videomv_jax.models.vae import AutoencoderKL, VAEConfig

    def params(model, seed):
        rng = np.random.default_rng(seed)
        out = {}
        for path, spec in abstract_params(model).items():
            if path[-1] == "kernel":
                v = rng.standard_normal(spec.shape) / np.sqrt(np.prod(spec.shape[:-1]))
            else:
                v = (1.0 if path[-1] == "scale" else 0.0) + 0.05 * rng.standard_normal(
                    spec.shape)
            out[path] = v.astype(spec.dtype)
        return out

    models = {}
    for name, cls, cfg, seed in (("unet", UNet3D, UNet3DConfig.text_tiny(), 0),
                                 ("vae", AutoencoderKL, VAEConfig.tiny(), 1),
                                 ("clip_text", CLIPTextModel, CLIPTextConfig.tiny(), 2),
                                 ("lgm", LGM, LGMConfig.tiny(), 3)):
        abstract = abstract_model(cls, cfg)
        models[name] = (unet_from_params(cfg, params(abstract, seed)) if cls is UNet3D
                        else apply_params(abstract, params(abstract, seed)))
    tok = tempfile.mkdtemp(prefix="sample_scale_tok")
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    Path(tok, "vocab.json").write_text(json.dumps(vocab))
    Path(tok, "merges.txt").write_text("#version: 0.2\n")
    return models, load_tokenizer(tok)


def child(spec: dict) -> dict:
    import jax

    from configs import t2mv
    from videomv_jax.pipeline import MultiViewPipeline

    t0 = time.perf_counter()
    cfg = t2mv.get_config()
    if spec["model"] == "videomv-tiny":
        from videomv_jax import tiny

        tiny.use_default_model(cfg, "t2mv")
        old = cfg.sampler.num_steps  # keep its aware steps' fractions
        cfg.sampler.aware_steps = tuple(sorted({i * spec["steps"] // old
                                                for i in cfg.sampler.aware_steps}))
    else:
        cfg.resolution = 16
        cfg.negative_prompt = "bad"
        cfg.sampler.update(render_size=32, capacity_per_scene=32768,
                           aware_steps=(spec["steps"] // 2,))
    cfg.sampler.num_steps = spec["steps"]
    cfg.sampler.progress = False
    cfg.parallel.update(devices=spec["devices"], batch_per_device=spec["batch_per_device"])
    if spec["model"] == "videomv-tiny":
        pipe = MultiViewPipeline.from_checkpoints(cfg.checkpoint_dir, cfg)
    else:
        models, tokenizer = _random_models()
        pipe = MultiViewPipeline(models, tokenizer, cfg)
    load_s = time.perf_counter() - t0
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(spec["prompts"])]
    t0 = time.perf_counter()
    pipe.text_to_mv(prompts[:pipe.batch_size], seed=0)  # compiles (one batch)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = pipe.text_to_mv(prompts, seed=0)
    wall_s = time.perf_counter() - t0
    stages = {}
    for r in results[::pipe.batch_size]:  # one entry per batch (its samples share them)
        for k, v in r.timings.items():
            stages[k] = stages.get(k, 0.0) + v
    return {"devices": pipe.num_devices, "batch": pipe.batch_size, "prompts": len(results),
            "load_s": load_s, "warmup_s": warmup_s, "wall_s": wall_s, "stages": stages,
            "device": str(jax.local_devices()[0]),
            "device_kind": jax.local_devices()[0].device_kind,
            "local_devices": jax.local_device_count(), "overflow": any(r.overflow for r in results)}


# ---- parent ------------------------------------------------------------------------------------


def run_child(spec: dict, device: str, simulated: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                            f"{simulated}").strip()
    else:
        env["JAX_PLATFORMS"] = "cuda"
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec} failed:\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--devices", type=int, default=8, help="simulated CPU devices (cpu mode)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--steps", type=int, default=4, help="DDIM steps (aware steps scale)")
    p.add_argument("--batch-per-device", type=int, default=1)
    p.add_argument("--model", choices=("random-tiny", "videomv-tiny"),
                   help="default: random-tiny on cpu, videomv-tiny on gpu")
    p.add_argument("--quick", action="store_true", help="4 prompts, prints only")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT" + json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import jax
    import jaxlib
    from common import append_results, core_count, cpu_model, log

    model = args.model or ("random-tiny" if args.device == "cpu" else "videomv-tiny")
    n = 4 if args.quick else args.prompts
    load0 = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)
    rows = []
    for devices in (1, 0):  # 0: all (the simulated count on cpu)
        spec = {"devices": devices, "batch_per_device": args.batch_per_device,
                "prompts": n, "steps": args.steps, "model": model}
        log(f"running {spec} on {args.device} ...")
        rows.append(run_child(spec, args.device, args.devices))
        log(f"  -> {rows[-1]}")
    load1 = os.getloadavg()
    base = rows[0]["prompts"] / rows[0]["wall_s"]
    header = ("| devices | batch | prompts | load (s) | warm-up incl. compile (s) | sampling "
              "wall (s) | samples/s | vs 1 device |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = []
    for r in rows:
        sps = r["prompts"] / r["wall_s"]
        lines.append(f"| {r['devices']} | {r['batch']} | {r['prompts']} | {r['load_s']:.1f} | "
                     f"{r['warmup_s']:.1f} | {r['wall_s']:.2f} | {sps:.2f} | "
                     f"{sps / base:.2f}x |")
    table = header + "\n" + "\n".join(lines)
    print(table)
    kind = rows[-1]["device_kind"]
    simulated = (" (simulated: XLA_FLAGS=--xla_force_host_platform_device_count)"
                 if args.device == "cpu" else "")
    text = (
        f"## Sampling at scale ({args.device}) — {started:%Y-%m-%d %H:%M} UTC — "
        f"{cpu_model()} ({core_count()} cores), device `{rows[-1]['device']}`\n\n"
        f"- machine: {cpu_model()}, {core_count()} cores available, {platform.platform()}, "
        f"Python {platform.python_version()}; load average (1 / 5 / 15 min) "
        f"{' / '.join(f'{v:.1f}' for v in load0)} when it started, "
        f"{' / '.join(f'{v:.1f}' for v in load1)} when it ended (the machine is shared: "
        f"timings under load are upper bounds)\n"
        f"- jax {jax.__version__}, jaxlib {jaxlib.__version__}, device kind `{kind}`, "
        f"{rows[-1]['local_devices']} local devices{simulated}\n"
        f"- command: `python benchmarks/sample_scale.py {' '.join(argv or sys.argv[1:])}`\n"
        f"- measured: `MultiViewPipeline.text_to_mv` on {n} prompts, model `{model}`, "
        f"{args.steps} DDIM steps (3D-aware steps scaled from the config's), batch = devices × "
        f"{args.batch_per_device}, each configuration in its own process after a one-batch "
        f"warm-up (compilation); samples/s = prompts / sampling wall time (text encode, "
        f"sampling, decode, LGM; no files written).\n\n{table}\n")
    if args.device == "cpu":
        text += ("\nThe simulated CPU devices share the same cores, so this ratio is the cost "
                 "or gain of batching on one machine's cores, not multi-device scaling. No GPU "
                 "was available for this run: `python benchmarks/sample_scale.py --device gpu` "
                 "gives the row for all GPUs of a machine.\n")
    if not (args.quick or args.no_write):
        append_results(args.out, text)
        log(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
