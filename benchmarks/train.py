"""Benchmark of one stage-1 train step (video UNet, ε loss, AdamW): ``videomv_jax`` vs PyTorch.

Both sides do the same work per step on the same machine: pre-encoded latents (no VAE) and a
fixed text context (no text encoder); t ~ U{0..999}, x_t = √ᾱ x0 + √(1-ᾱ) ε (``linear_sd``),
MSE(UNet(x_t, t, context), ε), backward, AdamW (lr 3e-5, betas (0.9, 0.999), eps 1e-8, weight
decay 0) on every UNet parameter.

* JAX: the real trainer, :class:`videomv_jax.train.trainer.Trainer` with a
  :class:`~videomv_jax.train.tasks.Stage1Task` (text variant, ``latents_key="latents"``) whose
  ``prepare`` adds nothing and whose conditioning is the batch's ``context`` (so no tokenizer,
  text model or VAE is needed; ``frozen = ()``), ``OptimConfig(learning_rate=3e-5,
  warmup_steps=0)``. Batches are host NumPy dicts ``{"latents": [B, F, h, w, 4], "camera":
  [B, F, 16], "context": [B, 77, ctx]}``; a timed step is ``trainer.train_step(batch)`` followed
  by ``jax.block_until_ready(trainer.state.params)`` (so it includes the host→device copy of the
  batch, the non-finite guard and the metrics). The UNet is our ``UNet3DConfig`` of
  ``benchmarks/unet.py`` with the camera MLP on (the stage-1 loss always feeds ``camera``;
  diffusers has no camera MLP: the parameter counts of both sides are shown) and dropout as
  released (0.1 in ResBlocks and temporal convs, diffusers: 0.0 and 0.1). Extra JAX rows:
  ``remat=True`` and bfloat16 compute (``UNet3DConfig(dtype="bfloat16")``, float32 parameters and
  optimizer state: mixed precision), by default on ``mid`` only (``--variants`` for all).
* PyTorch: diffusers ``UNet3DConditionModel`` of the same sizes (``unet.diffusers_kwargs``) in
  train mode, ``torch.optim.AdamW(lr=3e-5, weight_decay=0)``, the same loss, forward + backward
  + ``optimizer.step()``; ``torch.set_num_threads(<cores>)`` and ``OMP_WAIT_POLICY=PASSIVE``
  (unless set; ``--omp-wait-policy``) on CPU: with spinning OpenMP workers the torch step ran
  ~100× slower on cores shared with other jobs; on a GPU bf16 runs under ``torch.autocast``
  with float32 parameters (the same mixed precision as JAX).

Per row: compile time (ahead-of-time compile of the trainer's jitted step), median step time of
``--reps`` steps after ``--warmup`` steps, samples/s (videos of F frames per second), the ratio
torch step / JAX step (> 1: JAX faster), and two FLOP counts of one step: XLA's cost analysis of
the *compiled* step executable (``jax.jit(step).lower(...).compile().cost_analysis()``; counts
remat recomputation; on GPU it cannot see cuDNN attention), and the "model FLOPs" of the step
without remat and with einsum attention from the *unoptimised* HLO (abstract, nothing is
allocated; the count ``benchmarks/unet.py`` uses), which the achieved rate and MFU use.

Configurations (those of ``benchmarks/unet.py``): ``tiny`` (``UNet3DConfig.text_tiny``, batch 2
× 4 frames × 16² latents) and ``mid`` (``text_full`` layout at base width 64, batch 1 × 8 frames
× 32² latents), float32 rows + the extra JAX rows. ``--gpu-full`` (GPU only): the full text
UNet (``UNet3DConfig.text_full()``, 1.41 B parameters) at batch 1 × 24 frames × 32² latents,
bf16 compute, remat, cuDNN attention ("auto"): step time, peak memory (JAX
``memory_stats()['peak_bytes_in_use']``, torch ``max_memory_allocated``) and MFU = model FLOPs /
step time / ``--peak-tflops`` (default: the datasheet dense bf16 peak of the card from
``unet.PEAK_BF16_FLOPS``), with the diffusers peer on the same card (run first, its cache
emptied before JAX starts). Without a GPU that mode only says so.

Usage::

    python benchmarks/train.py             # tiny + mid on this machine; appends RESULTS.md
    python benchmarks/train.py --quick     # smoke run (tiny, 2 reps), prints only
    python benchmarks/train.py --gpu-full  # full text UNet on a GPU (bf16, remat) + MFU
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with torch

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jaxlib  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from common import append_results, core_count, cpu_model, fmt_ms, log, short_error  # noqa: E402
from flax import nnx  # noqa: E402
from unet import (  # noqa: E402
    CONTEXT_TOKENS,
    describe,
    diffusers_kwargs,
    peak_bf16_flops,
    torch_status,
    version,
)

from videomv_jax.diffusion.schedules import alphas_cumprod  # noqa: E402
from videomv_jax.models.unet3d import UNet3D, UNet3DConfig, abstract_unet, param_count  # noqa: E402
from videomv_jax.train.optim import OptimConfig, make_optimizer  # noqa: E402
from videomv_jax.train.tasks import Stage1Task  # noqa: E402
from videomv_jax.train.trainer import TrainConfig, Trainer  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"
LEARNING_RATE = 3e-5
NUM_TIMESTEPS = 1000


# --------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shape:
    """One benchmarked size: the float32 base UNet config and the batch it is trained on."""

    name: str
    config: UNet3DConfig
    batch: int
    frames: int
    size: int
    note: str


@dataclasses.dataclass(frozen=True)
class Variant:
    """One JAX row: compute dtype and remat of the UNet (parameters stay float32)."""

    dtype: str = "float32"
    remat: bool = False

    @property
    def label(self) -> str:
        return f"{'bf16' if self.dtype == 'bfloat16' else 'f32'}{' + remat' if self.remat else ''}"


def make_shape(name: str, quick: bool, frames: int | None, batch: int | None) -> Shape:
    """``tiny`` / ``mid`` / ``full`` of ``benchmarks/unet.py`` with the camera MLP on."""
    common = dict(use_camera=True, attention="auto")
    if name == "tiny":
        cfg = UNet3DConfig.text_tiny(**common)
        b, f, s, note = 2, 4, 16, "`UNet3DConfig.text_tiny`"
    elif name == "mid":
        cfg = UNet3DConfig.text_full(base_channels=64, head_dim=32, context_dim=1024,
                                     norm_groups=32, **common)
        b, f, s = (1, 2, 16) if quick else (1, 8, 32)
        note = "`UNet3DConfig.text_full` layout at base width 64"
    elif name == "full":
        cfg = UNet3DConfig.text_full(**common)
        b, f, s = (1, 4, 16) if quick else (1, 24, 32)
        note = "`UNet3DConfig.text_full()` (VideoMV text UNet)"
    else:
        raise ValueError(f"unknown configuration {name!r}")
    return Shape(name, cfg, batch or b, frames or f, s, note)


def variant_config(shape: Shape, v: Variant, **overrides: Any) -> UNet3DConfig:
    return dataclasses.replace(shape.config, dtype=v.dtype, remat=v.remat, **overrides)


def make_batch(shape: Shape, seed: int) -> dict[str, np.ndarray]:
    """Host batch: N(0, 1) scaled latents, random flattened cameras, N(0, 1) context."""
    rng = np.random.default_rng(seed)
    cfg = shape.config
    b, f, s = shape.batch, shape.frames, shape.size
    return {
        "latents": rng.standard_normal((b, f, s, s, cfg.in_channels), np.float32),
        "camera": rng.standard_normal((b, f, cfg.camera_dim), np.float32),
        "context": rng.standard_normal((b, CONTEXT_TOKENS, cfg.context_dim), np.float32),
    }


# --------------------------------------------------------------------------------------------
# JAX: the real trainer on a fixed-context stage-1 task
# --------------------------------------------------------------------------------------------


class FixedContextStage1Task(Stage1Task):
    """:class:`Stage1Task` (text, ε, pre-encoded latents) whose context is the batch's
    ``context`` tensor: no tokenizer on the host, no text model or VAE in the step."""

    def __post_init__(self):
        super().__post_init__()
        self.frozen = ()

    def prepare(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {}

    def conditioning(self, models, batch, key) -> dict[str, jax.Array]:
        return {"context": batch["context"]}


def make_task() -> FixedContextStage1Task:
    return FixedContextStage1Task.for_variant("text", latents_key="latents")


def optim_config() -> OptimConfig:
    """AdamW at a constant 3e-5 (no warm-up, so the very first step already uses 3e-5)."""
    return OptimConfig(learning_rate=LEARNING_RATE, warmup_steps=0)


def _flops(analysis: Any) -> float | None:
    if isinstance(analysis, list | tuple):  # older JAX: one dict per computation
        analysis = analysis[0] if analysis else None
    return float(analysis["flops"]) if analysis and "flops" in analysis else None


def model_flops(cfg: UNet3DConfig, shape: Shape) -> float | None:
    """XLA FLOPs of the unoptimised HLO of one train step (loss + grad + AdamW) of ``cfg``
    without remat and with einsum attention: abstract model, nothing allocated or compiled."""
    cfg = dataclasses.replace(cfg, remat=False, attention="xla")
    task, tx = make_task(), make_optimizer(optim_config())
    graphdef, params, rest = nnx.split(abstract_unet(cfg), nnx.Param, ...)
    params = {"unet": params.to_pure_dict()}
    opt_state = jax.eval_shape(tx.init, params)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in
             make_batch(shape, 0).items()}
    key = jax.eval_shape(lambda: jax.random.key(0))

    def step(params, opt_state, rest, batch, key):
        def loss_fn(p):
            # rebuild the non-parameter Variables (RNG counters) inside this trace, as the
            # trainer does: NNX refuses to mutate a Variable created at another trace level
            own = jax.tree.map(lambda x: x, rest)
            return task.loss({"unet": nnx.merge(graphdef, p["unet"], own)}, batch, key)

        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return _flops(jax.jit(step).lower(params, opt_state, rest, batch, key).cost_analysis())


@dataclasses.dataclass
class Row:
    shape: Shape
    side: str  # "JAX" / "torch"
    label: str
    params: int
    step_s: float | None = None
    compile_s: float | None = None
    compiled_flops: float | None = None
    model_flops: float | None = None
    peak_bytes: int | None = None
    loss: float | None = None
    note: str = ""

    @property
    def samples_per_s(self) -> float | None:
        return self.shape.batch / self.step_s if self.step_s else None


def bench_jax(shape: Shape, v: Variant, args, flops: float | None) -> Row:
    """Time the trainer's step for ``shape`` in variant ``v`` (see the module docstring)."""
    cfg = variant_config(shape, v)
    row = Row(shape, "JAX", v.label, param_count(cfg), model_flops=flops)
    log(f"[{shape.name} / JAX {v.label}] {describe(cfg)}; batch {shape.batch} × {shape.frames} "
        f"× {shape.size}²")
    batch = make_batch(shape, args.seed)
    with tempfile.TemporaryDirectory(prefix="videomv-train-bench-") as workdir:
        model = nnx.jit(lambda: UNet3D(cfg, rngs=nnx.Rngs(args.seed)))()
        trainer = Trainer(make_task(), {"unet": model}, optim_config(), TrainConfig(
            workdir=workdir, num_steps=args.warmup + args.reps + 1, seed=args.seed,
            tensorboard=False, progress=False, checkpoint_every=0))
        del model
        # ahead-of-time compile of the very step function train_step calls: compile time and
        # the compiled executable's cost analysis
        t0 = time.perf_counter()
        with jax.set_mesh(trainer.mesh):
            compiled = trainer._step_fn.lower(trainer.state, trainer.frozen,
                                              trainer.device_batch(batch)).compile()
        row.compile_s = time.perf_counter() - t0
        row.compiled_flops = _flops(compiled.cost_analysis())
        del compiled
        log(f"  compiled in {row.compile_s:.1f} s; XLA {fmt_gflop(row.compiled_flops)} GFLOP "
            f"(compiled step), {fmt_gflop(flops)} GFLOP (model, unoptimised)")
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            metrics = trainer.train_step(batch)
            jax.block_until_ready(trainer.state.params)
        log(f"  {args.warmup} warm-up step(s) in {time.perf_counter() - t0:.1f} s")
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            metrics = trainer.train_step(batch)
            jax.block_until_ready(trainer.state.params)
            times.append(time.perf_counter() - t0)
        row.step_s = statistics.median(times)
        row.loss = float(metrics["loss"])
        lr = float(metrics["learning_rate"])
        if not (bool(metrics["finite"]) and np.isfinite(row.loss)):
            row.note = "non-finite loss/gradients (step skipped by the guard)"
        if abs(lr - LEARNING_RATE) > 1e-12:
            row.note = (row.note + "; " if row.note else "") + f"lr {lr:g}"
        dev = jax.devices()[0]
        if dev.platform == "gpu":
            stats = dev.memory_stats() or {}
            row.peak_bytes = stats.get("peak_bytes_in_use")
        del trainer
    gc.collect()
    jax.clear_caches()
    log(f"  step {fmt_ms(row.step_s)} ms (median of {args.reps}: "
        f"{', '.join(fmt_ms(t) for t in times)}), loss {row.loss:.4f}, "
        f"{row.samples_per_s:.2f} samples/s")
    return row


# --------------------------------------------------------------------------------------------
# PyTorch: diffusers UNet3DConditionModel + torch.optim.AdamW
# --------------------------------------------------------------------------------------------


def bench_torch(shape: Shape, dtype: str, args, device: str) -> Row:
    """Time forward + MSE(ε) + backward + AdamW of diffusers' UNet of the same size."""
    import diffusers
    import torch

    cfg = shape.config
    label = "f32" if dtype == "float32" else "bf16 autocast"
    log(f"[{shape.name} / torch {label}] diffusers UNet3DConditionModel on {device}")
    torch.manual_seed(args.seed)
    kwargs = diffusers_kwargs(dataclasses.replace(cfg, use_camera=False), shape.size)
    model = diffusers.UNet3DConditionModel(**kwargs).to(device).train()
    row = Row(shape, "torch", label, sum(p.numel() for p in model.parameters()))
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    live = {"model": model, "opt": opt}  # cleared at the end, freeing the GPU memory
    del model, opt
    batch = make_batch(shape, args.seed)
    x0 = torch.from_numpy(batch["latents"]).permute(0, 4, 1, 2, 3).contiguous().to(device)
    ctx = torch.from_numpy(batch["context"]).to(device)
    alphas = torch.from_numpy(np.asarray(alphas_cumprod("linear_sd", NUM_TIMESTEPS),
                                         np.float32)).to(device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16,
                              enabled=dtype == "bfloat16")

    def step() -> torch.Tensor:
        b = x0.shape[0]
        t = torch.randint(0, NUM_TIMESTEPS, (b,), generator=gen, device=device)
        noise = torch.randn(x0.shape, generator=gen, device=device)
        a = alphas[t].view(b, 1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1.0 - a).sqrt() * noise
        with autocast:
            out = live["model"](xt, t, encoder_hidden_states=ctx).sample
        loss = torch.nn.functional.mse_loss(out.float(), noise)
        live["opt"].zero_grad(set_to_none=True)
        loss.backward()
        live["opt"].step()
        return loss

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        loss = step()
        sync()
    log(f"  {args.warmup} warm-up step(s) in {time.perf_counter() - t0:.1f} s")
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    row.step_s = statistics.median(times)
    row.loss = float(loss.detach())
    if cuda:
        row.peak_bytes = int(torch.cuda.max_memory_allocated())
    live.clear()  # drop the model, its gradients and the optimizer state
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    log(f"  step {fmt_ms(row.step_s)} ms (median of {args.reps}: "
        f"{', '.join(fmt_ms(t) for t in times)}), loss {row.loss:.4f}, "
        f"{row.samples_per_s:.2f} samples/s")
    return row


def guarded(fn, row_if_failed: Row, *a) -> Row:
    """Run one benchmark row; a failure becomes a row with the error (the run goes on)."""
    try:
        return fn(*a)
    except Exception as e:  # report, go on with the other rows
        row_if_failed.note = f"failed: {short_error(e)}"
        log(f"  {row_if_failed.note}")
    # outside the handler: the traceback (and the frames holding the model) is gone
    gc.collect()
    jax.clear_caches()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row_if_failed


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def fmt_gflop(flops: float | None) -> str:
    return "—" if flops is None else f"{flops / 1e9:,.1f}"


def fmt_rate(flops: float | None, seconds: float | None, peak: float | None) -> str:
    if flops is None or not seconds:
        return "—"
    rate = flops / seconds
    text = f"{rate / 1e9:,.1f} G/s" if rate < 1e12 else f"{rate / 1e12:,.1f} T/s"
    return f"{text} ({100 * rate / peak:.1f} % MFU)" if peak else text


def fmt_bytes(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**30:,.2f} GiB"


def render_report(args, argv, rows: list[Row], torch_line: str, peak: float | None) -> str:
    dev = jax.devices()[0]
    on_gpu = dev.platform == "gpu"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    label = "GPU full" if args.gpu_full else ("quick smoke run" if args.quick else "full run")
    shapes = list(dict.fromkeys(r.shape for r in rows))
    lines = [
        f"## Stage-1 train step, JAX trainer vs diffusers + torch AdamW ({label}) — {now} — "
        f"{cpu_model()} ({core_count()} cores), device `{dev.device_kind}`",
        "",
        f"- machine: {cpu_model()}, {core_count()} cores available, {platform.platform()}, "
        f"Python {platform.python_version()}" + (
            "; the CPUs were shared with other jobs during the run (timings are noisy)"
            if args.shared_cpu else ""),
        f"- jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {version('flax')}, "
        f"optax {version('optax')}, device `{dev.device_kind}` (platform `{dev.platform}`, "
        f"{jax.device_count()} device(s)); {torch_line}",
        f"- command: `{' '.join(shlex.quote(a) for a in argv)}`",
        "- measured: one stage-1 train step (ε loss on pre-encoded latents, fixed 77-token "
        "context, t ~ U{0..999} linear_sd, AdamW lr 3e-5 wd 0). JAX = `Trainer.train_step` of "
        "`videomv_jax.train` (Stage1Task with the batch's context as conditioning; host batch "
        "copied to the device each step; step donated, non-finite guard, metrics) + "
        "`block_until_ready(params)`; torch = diffusers `UNet3DConditionModel` of the same "
        "sizes, train mode, forward + MSE + backward + `torch.optim.AdamW.step()`"
        + (" under bf16 autocast" if on_gpu else "") + f". {args.warmup} warm-up step(s), "
        f"median of {args.reps}. samples/s = videos/s. torch/JAX = torch step / JAX step "
        "(> 1: JAX faster). Our UNet has VideoMV's camera MLP (diffusers' has none: see the "
        "parameter counts) and dropout 0.1 in ResBlocks (diffusers 0.0).",
        "- FLOPs per step: compiled = `jax.jit(step).lower(...).compile().cost_analysis()` of "
        "the timed executable (includes remat recomputation); model = unoptimised-HLO count of "
        "the same step without remat, einsum attention (loss + grad + AdamW), used for the "
        "rates" + (f"; MFU against {peak / 1e12:,.0f} TFLOP/s" if peak else "") + ".",
        "- configurations:",
    ]
    for s in shapes:
        lines.append(f"  - `{s.name}`: {s.note}; {describe(s.config)} (+ camera MLP); batch "
                     f"{s.batch} × {s.frames} frames × {s.size}² × {s.config.in_channels} "
                     f"latents")
    if not on_gpu:
        lines.append("- `--gpu-full` (full text UNet, 24 × 32² latents, bf16 + remat, peak "
                     "memory, MFU, diffusers peer on the same card) was not run: no GPU on this "
                     "machine; that code path is untested.")
    lines += [
        "",
        "| config | side | variant | params | compile (s) | step (ms) | samples/s "
        "| torch/JAX | GFLOP/step compiled (model) | rate | peak mem | loss |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in shapes:
        group = [r for r in rows if r.shape == s]
        ref = next((r for r in group if r.side == "torch" and r.step_s), None)
        for r in group:
            if r.step_s is None:
                lines.append(f"| `{s.name}` | {r.side} | {r.label} | {r.params:,} | — | — | — "
                             f"| — | — | — | — | {r.note or '—'} |")
                continue
            ratio = (f"**{ref.step_s / r.step_s:.2f}×**" if ref is not None and r.side == "JAX"
                     else "—")
            comp = "—" if r.compile_s is None else f"{r.compile_s:.1f}"
            if r.side == "JAX":
                fl = f"{fmt_gflop(r.compiled_flops)} ({fmt_gflop(r.model_flops)})"
            else:
                fl = f"({fmt_gflop(r.model_flops)})"
            loss = f"{r.loss:.3f}" + (f" ({r.note})" if r.note else "")
            lines.append(
                f"| `{s.name}` | {r.side} | {r.label} | {r.params:,} | {comp} "
                f"| {fmt_ms(r.step_s)} | {r.samples_per_s:,.2f} | {ratio} | {fl} "
                f"| {fmt_rate(r.model_flops, r.step_s, peak)} | {fmt_bytes(r.peak_bytes)} "
                f"| {loss} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run (tiny only, 1 warm-up, 2 reps); prints only unless --out")
    p.add_argument("--gpu-full", action="store_true",
                   help="full text UNet at 24 × 32² latents, bf16 + remat, with peak memory and "
                        "MFU (GPU only)")
    p.add_argument("--configs", nargs="+", choices=("tiny", "mid"),
                   help="configurations of the CPU/default run (default: tiny mid)")
    p.add_argument("--variants", nargs="+", choices=("f32", "f32-remat", "bf16", "bf16-remat"),
                   help="JAX rows of every configuration (default: tiny f32; mid f32 "
                        "f32-remat bf16; --gpu-full: bf16-remat)")
    p.add_argument("--frames", type=int, help="frames of every configuration")
    p.add_argument("--batch", type=int, help="videos per batch of every configuration")
    p.add_argument("--reps", type=int, help="timed steps (default 3; quick 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after compile")
    p.add_argument("--peak-tflops", type=float,
                   help="peak TFLOP/s of the device for MFU (default: dense bf16 datasheet peak "
                        "of the GPU, none on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="time the JAX step only")
    p.add_argument("--omp-wait-policy", default="PASSIVE", choices=("PASSIVE", "ACTIVE", "keep"),
                   help="OMP_WAIT_POLICY for torch's OpenMP pool, set before torch is imported "
                        "unless already in the environment (default PASSIVE: with spinning "
                        "workers torch's CPU step ran ~100x slower on cores shared with other "
                        "jobs; 'keep' leaves the library default)")
    p.add_argument("--shared-cpu", action="store_true",
                   help="note in the report that other jobs shared the CPUs")
    p.add_argument("--out", type=Path,
                   help=f"Markdown file to append to (default {DEFAULT_OUT}; --quick: none)")
    p.add_argument("--no-write", action="store_true", help="print only, append nothing")
    args = p.parse_args(argv)
    if args.gpu_full:
        args.configs = ["full"]
        args.variants = args.variants or ["bf16-remat"]
    else:
        args.configs = args.configs or (["tiny"] if args.quick else ["tiny", "mid"])
    args.reps = args.reps or (2 if args.quick else 3)
    if args.out is None and not args.quick:
        args.out = DEFAULT_OUT
    if args.no_write:
        args.out = None
    for name in ("reps", "frames", "batch"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be positive")
    if args.warmup < 1:
        p.error("--warmup must be >= 1")
    return args


VARIANTS = {"f32": Variant("float32"), "f32-remat": Variant("float32", True),
            "bf16": Variant("bfloat16"), "bf16-remat": Variant("bfloat16", True)}
#: JAX rows per configuration when ``--variants`` is not given: each row compiles a train step
#: (~0.5-2 min on 2 shared cores), so the extra rows go where they matter (``mid``)
DEFAULT_VARIANTS = {"tiny": ("f32",), "mid": ("f32", "f32-remat", "bf16"),
                    "full": ("bf16-remat",)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    dev = jax.devices()[0]
    on_gpu = dev.platform == "gpu"
    if args.gpu_full and not on_gpu:
        print(f"--gpu-full needs a GPU; JAX sees only `{dev.device_kind}` ({dev.platform}). "
              "Nothing was measured: the GPU path (full text UNet, bf16 + remat, peak memory, "
              "MFU, diffusers peer) is untested on this machine.")
        return 0
    peak = args.peak_tflops * 1e12 if args.peak_tflops else (
        peak_bf16_flops(dev.device_kind) if on_gpu else None)
    shapes = [make_shape(n, args.quick, args.frames, args.batch) for n in args.configs]
    for s in shapes:
        if s.size % s.config.downsample_factor:
            raise SystemExit(f"latent size {s.size} of `{s.name}` must be divisible by "
                             f"{s.config.downsample_factor}")

    use_torch, torch_note = (False, "--no-torch") if args.no_torch else torch_status()
    torch_device, torch_threads = "cpu", "—"
    if use_torch:
        if args.omp_wait_policy != "keep" and "torch" not in sys.modules:
            os.environ.setdefault("OMP_WAIT_POLICY", args.omp_wait_policy)
        import torch

        if on_gpu:
            if torch.cuda.is_available():
                torch_device = "cuda"
            else:
                use_torch, torch_note = False, "JAX runs on the GPU but torch sees no CUDA device"
        else:
            torch.set_num_threads(core_count())
        torch_threads = str(torch.get_num_threads())
    omp = os.environ.get("OMP_WAIT_POLICY", "library default")
    torch_line = (f"torch {version('torch')} ({torch_device}, {torch_threads} threads, "
                  f"OMP_WAIT_POLICY {omp}), diffusers {version('diffusers')}")
    if not use_torch:
        torch_line += f" — torch not timed: {torch_note}"
    log(f"device: {dev.device_kind} ({dev.platform}); {torch_line}; configs "
        f"{[(s.name, s.batch, s.frames, s.size) for s in shapes]}")

    rows: list[Row] = []
    for s in shapes:
        torch_dtype = "bfloat16" if on_gpu else "float32"
        variants = [VARIANTS[v] for v in args.variants or DEFAULT_VARIANTS[s.name]]
        # one model-FLOP count per configuration: the compute dtype only adds converts
        try:
            t0 = time.perf_counter()
            flops = model_flops(s.config, s)
            log(f"[{s.name}] model FLOPs of one step {fmt_gflop(flops)} G (counted in "
                f"{time.perf_counter() - t0:.1f} s)")
        except Exception as e:  # the count is optional: report, go on
            log(f"[{s.name}] model FLOP count failed: {short_error(e)}")
            flops = None
        torch_row = None
        if use_torch:  # first, so that on a GPU its cache is emptied before JAX allocates
            failed = Row(s, "torch", "f32" if torch_dtype == "float32" else "bf16 autocast",
                         param_count(dataclasses.replace(s.config, use_camera=False)))
            torch_row = guarded(bench_torch, failed, s, torch_dtype, args, torch_device)
            torch_row.model_flops = flops
        for v in variants:
            failed = Row(s, "JAX", v.label, param_count(variant_config(s, v)))
            rows.append(guarded(bench_jax, failed, s, v, args, flops))
        if torch_row is not None:
            rows.append(torch_row)

    report = render_report(args, ["python", "benchmarks/train.py", *argv], rows, torch_line,
                           peak)
    print(report)
    if args.out is not None:
        append_results(Path(args.out), report)
        log(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
