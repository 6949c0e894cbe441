"""Full-size memory plan by simulation: compile (never run) the stage-1 text→MV train step and
the sampler on meshes of simulated CPU devices and report what each device holds.

Each case runs in its own process with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
and ``JAX_PLATFORMS=cpu`` under ``/usr/bin/time -v`` (peak RSS of the compile). Nothing is
materialised: the models are ``nnx.eval_shape``-abstract, the real
:class:`~videomv_jax.train.trainer.Trainer` is built from them (its state and frozen parameters
become ``ShapeDtypeStruct`` s with the shardings of :mod:`videomv_jax.parallel.mesh`), and its
jitted step is lowered for a batch of ``ShapeDtypeStruct`` s and compiled. Reported per device:
parameters, optimizer state, EMA and frozen-model bytes from the shardings, and the compiled
program's argument / output / alias / temporary bytes (``compiled.memory_analysis()``).

Cases:

* ``train``: ``configs/t2mv.py`` ``full`` as train.py builds it (released text UNet in bf16
  compute with remat, float32 parameters, AdamW; frames at 256² encoded by the frozen VAE and
  captions by the frozen OpenCLIP text tower inside the step; no EMA: ``ema_decay`` is None),
  global batch = 1 per batch shard (data × fsdp), 24 frames (32² latents).
* ``train-pre``: the same with ``pre_encode=True`` (latents read from the table: the step holds
  the UNet and the text tower, no VAE).
* ``sampler``: the whole jitted DDIM scan of ``configs/t2mv.py`` (50 steps, CFG batched, 3D-aware
  steps with the full VAE + LGM-big + rasteriser at 512²), models as ``sample.py`` loads them
  (float32); one sample per device, weights replicated (``sample.py`` runs one process per
  device group and samples on one device; ``N`` devices data-parallel only repeat it).

Usage::

    nice python benchmarks/memory_plan.py                     # 8/16/32 devices, all cases
    nice python benchmarks/memory_plan.py --devices 8 --cases train
    python benchmarks/memory_plan.py --quick                  # tiny models, 8 devices, prints

Caveat: the CPU compiler's buffer assignment and scheduling are not the GPU's or TPU's (no
latency-hiding scheduler, CPU fusion rules, bf16 may be computed in float32), so temporaries are
an estimate of the order of magnitude; parameter / optimizer bytes are exact.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"
GIB = 2 ** 30


# ---- child: one compile ------------------------------------------------------------------------


def _batch_spec(task, cfg, batch: int, mesh, quick: bool) -> dict:
    """ShapeDtypeStructs (batch-sharded) of the device batch train.py feeds the step: the
    synthetic pipeline's keys for one example, the task's token ids, pre-encoded latents."""
    import jax
    import numpy as np

    from videomv_jax.data.pipeline import InputConfig, batch_sharding, synthetic_batches

    inp = InputConfig(**{**cfg.data.input.to_dict(), "batch_size": 1})
    host = next(synthetic_batches(inp))
    host = dict(host)
    host.update(task.prepare(host))
    if task.latents_key:
        lat = inp.resolution // 8
        zeros = np.zeros((1, inp.num_frames, lat, lat, 4), np.float32)
        host.update(latents=zeros, latents_std=zeros, cond_latents=zeros[:, 0],
                    cond_latents_std=zeros[:, 0])
    shard = batch_sharding(mesh)
    out = {}
    for k, v in host.items():
        if isinstance(v, (list, tuple)):
            continue
        v = np.asarray(v)
        if v.dtype.kind in "OUS":
            continue
        out[k] = jax.ShapeDtypeStruct((batch, *v.shape[1:]), v.dtype, sharding=shard)
    return out


def child_train(spec: dict) -> dict:
    import jax
    from flax import nnx

    from configs import t2mv
    from videomv_jax.models.clip import openclip_tokenizer
    from videomv_jax.models.registry import get_kind
    from videomv_jax.parallel.memory import compiled_memory, per_device_bytes
    from videomv_jax.parallel.mesh import make_mesh
    from videomv_jax.train import run
    from videomv_jax.train.grad_scale import grad_scale_tree
    from videomv_jax.train.optim import OptimConfig
    from videomv_jax.train.trainer import TrainConfig, Trainer

    quick = spec["quick"]
    d, f, t = spec["mesh"]
    mesh = make_mesh(d, f, t)
    batch = d * f  # one example per batch shard
    cfg = t2mv.get_train_config("full")
    with cfg.unlocked():
        cfg.train.update(mesh_data=d, mesh_fsdp=f, mesh_tensor=t, progress=False,
                         tensorboard=False)
        cfg.data.input.batch_size = batch
        if quick:
            cfg.data.input.resolution = 64
        if spec["case"] == "train-pre":
            cfg.pre_encode = True
            cfg.task.latents_key = "latents"
    tokenizer = None if quick else openclip_tokenizer()
    task = run._task(cfg, tokenizer)
    if quick:
        from videomv_jax.data.vocab import build_caption_tokenizer
        from videomv_jax.models.clip import load_tokenizer

        tok_dir = tempfile.mkdtemp()
        build_caption_tokenizer(["a synthetic object, 3d asset"], tok_dir)
        task.tokenizer = load_tokenizer(tok_dir)
    t0 = time.perf_counter()
    models = {}
    for name in list(task.trainable) + list(task.frozen):
        kind = get_kind(run._kind(name, cfg.variant))
        conf = kind.make_config("tiny" if quick else "full")
        overrides = cfg.models[name].get("overrides", {}).to_dict()
        models[name] = kind.abstract(dataclasses.replace(conf, **overrides))
    unet = models["unet"]
    params = nnx.split(unet, nnx.Param, ...)[1].to_pure_dict()
    scales = {"unet": grad_scale_tree(params, unet.config, cfg.grad_scale)}
    tcfg = TrainConfig(workdir=tempfile.mkdtemp(), **cfg.train.to_dict())
    trainer = Trainer(task, models, OptimConfig(**cfg.optim.to_dict()), tcfg, mesh=mesh,
                      grad_scales=scales)
    inputs = _batch_spec(task, cfg, batch, mesh, quick)
    compiled, compile_s = None, None
    if spec.get("compile", True):
        lowered = trainer.lower_step(inputs)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        compiled = compiled_memory(lowered.compile())
        compile_s = time.perf_counter() - t0
    else:
        build_s = time.perf_counter() - t0
    st = trainer.state
    n_params = {n: int(sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param))))
                for n, m in models.items()}
    return dict(
        models=sorted(models), param_counts=n_params, batch=batch,
        params=per_device_bytes(st.params), opt=per_device_bytes(st.opt_state),
        ema=per_device_bytes(st.ema), frozen=per_device_bytes(
            {n: p for n, (p, _) in trainer.frozen.items()}),
        inputs=per_device_bytes(inputs), compiled=compiled, build_s=build_s,
        compile_s=compile_s)


def child_sampler(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from configs import t2mv
    from videomv_jax.diffusion.sampler import SamplerConfig, make_sampler, text_conditions
    from videomv_jax.models.registry import get_kind
    from videomv_jax.parallel.memory import compiled_memory, per_device_bytes
    from videomv_jax.parallel.mesh import make_mesh

    quick = spec["quick"]
    d, f, t = spec["mesh"]
    mesh = make_mesh(d, f, t)
    batch = d * f
    c = t2mv.get_config()
    scfg = SamplerConfig.from_dict({**c.sampler.to_dict(), "progress": False})
    frames, res = c.num_frames, c.resolution
    if quick:
        scfg = scfg.replace(num_steps=5, aware_steps=(2,), render_size=64,
                            capacity_per_scene=1 << 16)
        res = 64
    t0 = time.perf_counter()
    preset = "tiny" if quick else "full"
    kinds = {"unet": "unet-t2v", "vae": "vae", "lgm": "lgm"}
    models = {n: get_kind(k).abstract(get_kind(k).make_config(preset)) for n, k in kinds.items()}
    if spec.get("dtype"):
        models["unet"] = get_kind("unet-t2v").abstract(dataclasses.replace(
            models["unet"].config, dtype=spec["dtype"]))
    sampler = make_sampler(models["unet"], models["vae"], models["lgm"], scfg)
    rep = NamedSharding(mesh, PartitionSpec())
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    states = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                          sampler.states())
    lat = res // 8
    noise = jax.ShapeDtypeStruct((batch, frames, lat, lat, 4), jnp.float32, sharding=rows)
    ctx_dim = models["unet"].config.context_dim
    ctx = jax.ShapeDtypeStruct((batch, 77, ctx_dim), jnp.float32, sharding=rows)
    cond, uncond = text_conditions(ctx, ctx)
    cams = jax.ShapeDtypeStruct((frames, 4, 4), jnp.float32, sharding=rep)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=rep)
    mask = jax.ShapeDtypeStruct(np.shape(scfg.aware_mask()), jnp.bool_, sharding=rep)
    with jax.set_mesh(mesh):
        lowered = sampler.jitted.lower(states, noise, cond, uncond, cams, key, mask)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    n_params = {n: int(sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param))))
                for n, m in models.items()}
    return dict(models=sorted(models), param_counts=n_params, batch=batch,
                params=per_device_bytes(states), opt=0, ema=0, frozen=0,
                inputs=per_device_bytes((noise, cond, uncond)),
                compiled=compiled_memory(compiled), build_s=build_s, compile_s=compile_s)


def child_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    sys.path.insert(0, str(ROOT))
    fn = child_sampler if spec["case"] == "sampler" else child_train
    out = fn(spec)
    print("RESULT " + json.dumps(out), flush=True)
    return 0


# ---- parent: one process per case --------------------------------------------------------------


def meshes_for(n: int) -> list[tuple[int, int, int]]:
    """data-only, FSDP over all devices, and data × fsdp=8 (FSDP inside an 8-device host)."""
    out = [(n, 1, 1), (1, n, 1)]
    if n > 8 and n % 8 == 0:
        out.append((n // 8, 8, 1))
    return out


def run_case(case: str, n: int, mesh: tuple[int, int, int], quick: bool, timeout: int,
             dtype: str | None = None, compile: bool = True) -> dict:
    spec = dict(case=case, mesh=list(mesh), quick=quick, dtype=dtype, compile=compile)
    # LLVM optimisation level 0: the same HLO passes and buffer assignment (hence the same
    # memory analysis), ~1.5x faster CPU compiles (checked on the tiny VAE's encoder gradient)
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n} "
               "--xla_backend_optimization_level=0",
               JAX_PLATFORMS="cpu", PYTHONPATH=f"{ROOT}{os.pathsep}"
               + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    if os.path.exists("/usr/bin/time"):
        cmd = ["/usr/bin/time", "-v"] + cmd
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(case=case, n=n, mesh=mesh, error=f"timed out after {timeout} s",
                    wall_s=time.perf_counter() - t0, load=load)
    wall = time.perf_counter() - t0
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    row = dict(case=case, n=n, mesh=mesh, wall_s=wall, load=load, dtype=dtype,
               rss_gib=int(rss.group(1)) / 2 ** 20 if rss else None)
    res = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not res:
        lines = p.stderr.strip().splitlines()
        cut = next((i for i, ln in enumerate(lines) if "Command exited with" in ln
                    or "Command terminated by signal" in ln), len(lines))
        tail = [ln for ln in lines[:cut] if ln.strip()]
        row["error"] = (tail[-1] if tail else f"exit {p.returncode}")[:200]
        if cut < len(lines):
            row["error"] += f" ({lines[cut].strip()})"
        row["stderr_tail"] = "\n".join(tail[-30:])
        return row
    row.update(json.loads(res[-1][len("RESULT "):]))
    return row


def gib(x: float | None) -> str:
    return "—" if x is None else f"{x / GIB:.2f}"


def render(rows: list[dict]) -> str:
    head = ("| case | devices | mesh (data×fsdp×tensor) | global batch | params | optimizer | "
            "EMA | frozen models | inputs | argument | output | alias | temp | **peak** | "
            "compile (s) | peak RSS (GiB) | load |")
    lines = [head, "|---|---:|---|---:|" + "---:|" * 13]
    for r in rows:
        mesh = "×".join(str(s) for s in r["mesh"])
        label = r["case"] + (f" ({r['dtype']})" if r.get("dtype") else "")
        rss = "—" if r.get("rss_gib") is None else f"{r['rss_gib']:.1f}"
        tail = f"{rss} | {r['load']:.1f} |"
        if "error" in r:
            err = r["error"].replace("|", "/")
            lines.append(f"| {label} | {r['n']} | {mesh} | — | failed: {err} |"
                         + " — |" * 9 + f" {r['wall_s']:.0f} (wall) | {tail}")
            continue
        c = r["compiled"] or {}
        lines.append(
            f"| {label} | {r['n']} | {mesh} | {r['batch']} | {gib(r['params'])} | "
            f"{gib(r['opt']) if r['opt'] else '—'} | {gib(r['ema']) if r['ema'] else '—'} | "
            f"{gib(r['frozen']) if r['frozen'] else '—'} | {gib(r['inputs'])} | "
            f"{gib(c.get('argument'))} | {gib(c.get('output'))} | {gib(c.get('alias'))} | "
            f"{gib(c.get('temp'))} | **{gib(c.get('peak'))}** | "
            f"{'not compiled' if r['compile_s'] is None else format(r['compile_s'], '.0f')} | "
            f"{tail}")
    return "\n".join(lines)


def report(rows: list[dict], cmd: str, started: datetime.datetime) -> str:
    import jax
    import jaxlib

    counts: dict[str, int] = {}
    for r in rows:
        counts.update(r.get("param_counts", {}))
    loads = [r["load"] for r in rows]
    return (
        f"## Memory plan by simulation (compiled, not run) — {started:%Y-%m-%d %H:%M} UTC — "
        f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores), simulated CPU "
        f"devices\n\n"
        f"- jax {jax.__version__}, jaxlib {jaxlib.__version__}; command: `nice {cmd}`; "
        f"1-minute load average {min(loads):.1f}-{max(loads):.1f} when the cases started "
        f"(per case in the table; the 2-core machine is shared, compile times grow with it)\n"
        f"- GiB per device. params / optimizer / EMA / frozen models / inputs: from the "
        f"shardings of the abstract state (exact); argument / output / alias / temp: XLA's "
        f"buffer assignment of the compiled SPMD program (`compiled.memory_analysis()` of the "
        f"CPU compiler: an estimate for GPU/TPU); peak = argument + output − alias + temp. "
        f"Compile (s): `lowered.compile()` with `--xla_backend_optimization_level=0`; peak "
        f"RSS: the compiling process (`/usr/bin/time -v`).\n"
        f"- parameter counts: {', '.join(f'{k} {v:,}' for k, v in sorted(counts.items()))}\n"
        f"\n{render(rows)}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--devices", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--cases", nargs="+", default=["train", "train-pre", "sampler"],
                   choices=["train", "train-pre", "sampler"])
    p.add_argument("--meshes", nargs="+", metavar="DxFxT",
                   help="meshes to compile (default: data-only, fsdp-only, data×fsdp=8); "
                        "each must multiply to the device count")
    p.add_argument("--sampler-dtype", default=None, help="UNet compute dtype of the sampler "
                   "(default: float32, as sample.py loads it)")
    p.add_argument("--quick", action="store_true", help="tiny models on 8 devices; prints only")
    p.add_argument("--shardings-only", action="store_true",
                   help="build the abstract state and report its per-device bytes; compile "
                        "nothing (seconds per mesh)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per compile")
    p.add_argument("--jsonl", type=Path, help="also append each case's result to this file")
    p.add_argument("--report", type=Path, nargs="+", metavar="JSONL",
                   help="compile nothing: render the cases saved with --jsonl and append them")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if args.child:
        return child_main(args.child)
    argv_s = " ".join(argv if argv is not None else sys.argv[1:])
    started = datetime.datetime.now(datetime.UTC)
    rows: list[dict] = []
    if args.report:
        for path in args.report:
            rows += [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    devices = [] if args.report else [8] if args.quick else args.devices
    for n in devices:
        meshes = ([tuple(int(s) for s in m.split("x")) for m in args.meshes]
                  if args.meshes else meshes_for(n))
        for case in args.cases:
            for mesh in meshes:
                if len(mesh) != 3 or mesh[0] * mesh[1] * mesh[2] != n:
                    continue
                if case == "sampler" and mesh != (n, 1, 1):
                    continue  # weights replicated: one data-parallel layout
                print(f"[{time.strftime('%H:%M:%S')}] {case} on {n} devices, mesh {mesh} ...",
                      file=sys.stderr, flush=True)
                if case == "sampler" and args.shardings_only:
                    continue
                row = run_case(case, n, mesh, args.quick, args.timeout,
                               args.sampler_dtype if case == "sampler" else None,
                               compile=not args.shardings_only)
                rows.append(row)
                if args.jsonl:
                    with args.jsonl.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
                print(render([row]).splitlines()[-1], file=sys.stderr, flush=True)
    print(render(rows))
    if args.quick or args.no_write:
        return 0
    from common import append_results  # benchmarks/common.py

    append_results(args.out, report(rows, f"python benchmarks/memory_plan.py {argv_s}",
                                    started))
    print(f"appended to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
