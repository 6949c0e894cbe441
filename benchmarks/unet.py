"""Benchmark of the video UNet forward: ``videomv_jax`` (JAX) against diffusers (PyTorch).

Both sides run the *same* network with the *same* weights on the same machine: diffusers'
``UNet3DConditionModel`` is built from the configuration equivalent to our
:class:`~videomv_jax.models.unet3d.UNet3DConfig` (``use_camera=False``: diffusers has no camera
MLP), its parameters are re-randomised (norm scales 1 ± 0.1, biases ±0.1, weights
N(0, 1/fan_in), so no zero-initialised branch makes the check trivial) and converted with
:func:`videomv_jax.convert.unet.rules_diffusers` +
:func:`~videomv_jax.convert.base.convert_state_dict` into our model
(:func:`~videomv_jax.models.unet3d.unet_from_params`). Inputs: batch 1, F frames of H×W latents
(4 channels, N(0, 1)), timestep 500, 77 context tokens (N(0, 1)).

Measured per configuration:

* JAX: ahead-of-time compile time of ``jax.jit(forward).lower(...).compile()`` (weights are
  arguments, not constants), one warm-up call, median of ``--reps`` calls with
  ``block_until_ready``;
* PyTorch: ``UNet3DConditionModel`` under ``torch.inference_mode()`` with torch's default thread
  count (CPU) / ``torch.cuda.synchronize`` (GPU), one warm-up, median of ``--reps`` calls; its
  attention processors are reported (diffusers' default ``AttnProcessor2_0`` = SDPA);
* the ratio torch time / JAX time (> 1: JAX is faster), the max abs difference of the two
  outputs (with the output scale, as a sanity check of the comparison), the parameter count;
* FLOPs of one forward, counted two ways without running anything: XLA's cost analysis of the
  *unoptimised* HLO of our forward lowered with the einsum attention (``attention="xla"``, so
  that attention is counted even where the timed model uses a cuDNN custom call, which the cost
  analysis cannot see; includes element-wise work; convolutions count only taps inside the
  zero padding), and ``torch.utils.flop_counter.FlopCounterMode`` on diffusers' model on the
  meta device (matmuls, convolutions incl. padded taps, SDPA only). Achieved FLOP/s use the XLA
  count.

Configurations (``--configs``; the defaults depend on the JAX backend):

* ``tiny`` (CPU default): ``UNet3DConfig.text_tiny`` (widths 32/64/64, head dim 8, context 32),
  4 frames × 16×16 latents, float32;
* ``mid`` (CPU default): widths 64/128/256/256 (``text_full`` layout with base 64), head dim 32,
  context 1024, 32 GroupNorm groups, 8 frames × 32×32 latents, float32 (61.8 M parameters,
  ~127 GFLOP per forward by XLA's count; ``--frames 16`` doubles the work);
* ``full`` (GPU default): ``UNet3DConfig.text_full(use_camera=False)`` = diffusers'
  ``UNet3DConditionModel()`` default (1,411,233,860 parameters), 24 frames × 32×32 latents,
  compute and parameters in bfloat16 on both sides (``attention="auto"``: cuDNN flash attention
  for the 1024-token spatial self-attention), plus model FLOPs utilisation = XLA FLOPs / time /
  the device's dense bf16 peak (table ``PEAK_BF16_FLOPS``, keyed by ``device_kind``).

``--dtype`` (default float32 on CPU, bfloat16 on GPU) applies to every configuration. On a GPU,
both frameworks share the card: the script sets ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless it
is already set (otherwise JAX reserves 75 % of the memory and PyTorch runs out); keep it that way
if you launch JAX yourself. Without torch / diffusers only the JAX side is timed (random init).

Usage::

    python benchmarks/unet.py             # full run (CPU: tiny + mid, a few minutes on 2
                                          #   cores; GPU: full); appends to benchmarks/RESULTS.md
    python benchmarks/unet.py --quick     # smoke run (tiny, and mid at 2 × 16×16), prints only
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with torch

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jaxlib  # noqa: E402
import numpy as np  # noqa: E402
from common import (  # noqa: E402
    append_results,
    core_count,
    cpu_model,
    fmt_ms,
    log,
    short_error,
    time_compiled,
)
from flax import nnx  # noqa: E402

from videomv_jax.convert.base import abstract_params, convert_state_dict  # noqa: E402
from videomv_jax.convert.unet import rules_diffusers  # noqa: E402
from videomv_jax.models.unet3d import (  # noqa: E402
    UNet3D,
    UNet3DConfig,
    abstract_unet,
    param_count,
    unet_from_params,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"
CONTEXT_TOKENS = 77
TIMESTEP = 500

#: Dense (no sparsity) bf16 tensor-core peak FLOP/s from NVIDIA's datasheets, matched against
#: ``device_kind`` in order (first substring hit wins, case-insensitive).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200 NVL", 835e12),
    ("GH200", 989e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989e12),  # SXM ("NVIDIA H200")
    ("A100", 312e12),  # SXM4 and PCIe, 40 and 80 GB
)




# --------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BenchSpec:
    """One benchmarked configuration: the UNet, the latent video size, what it stands for."""

    name: str
    config: UNet3DConfig
    frames: int
    size: int
    note: str


def make_spec(name: str, dtype: str, frames: int | None, size: int | None,
              quick: bool) -> BenchSpec:
    """The configuration ``name`` (tiny / mid / full) in compute/parameter ``dtype``."""
    common = dict(use_camera=False, dtype=dtype, param_dtype=dtype, attention="auto")
    if name == "tiny":
        cfg = UNet3DConfig.text_tiny(**common)
        default_f, default_s, note = 4, 16, "`UNet3DConfig.text_tiny`"
    elif name == "mid":
        cfg = UNet3DConfig.text_full(base_channels=64, head_dim=32, context_dim=1024,
                                     norm_groups=32, **common)
        default_f, default_s = (2, 16) if quick else (8, 32)
        note = "`UNet3DConfig.text_full` layout at base width 64"
    elif name == "full":
        cfg = UNet3DConfig.text_full(**common)
        default_f, default_s = (4, 16) if quick else (24, 32)
        note = "`UNet3DConfig.text_full(use_camera=False)` = diffusers' default"
    else:
        raise ValueError(f"unknown configuration {name!r}")
    return BenchSpec(name, cfg, frames or default_f, size or default_s, note)


def diffusers_kwargs(cfg: UNet3DConfig, sample_size: int) -> dict[str, Any]:
    """Keyword arguments of diffusers' ``UNet3DConditionModel`` for the same network.

    diffusers' ``attention_head_dim`` is (for historical reasons) passed on as the *number* of
    heads of each block, which then builds ``width // that`` heads of that size: with
    ``attention_head_dim = head_dim`` this is exactly our ``width // head_dim`` heads of
    ``head_dim``. Its ``transformer_in`` always has 8 heads of ``attention_head_dim``.
    """
    if cfg.variant != "text" or cfg.use_camera:
        raise ValueError("diffusers' UNet3DConditionModel is the text variant without camera")
    if cfg.first_temporal_heads != 8:
        raise ValueError("diffusers' transformer_in has 8 heads; first_temporal_heads must be 8")
    if (cfg.resnet_eps, cfg.transformer_norm_eps, cfg.layer_norm_eps) != (1e-5, 1e-6, 1e-5):
        raise ValueError("diffusers' UNet3DConditionModel fixes the norm epsilons")
    down = tuple("CrossAttnDownBlock3D" if a else "DownBlock3D" for a in cfg.attn_levels)
    up = tuple("CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(cfg.attn_levels))
    return dict(sample_size=sample_size, in_channels=cfg.in_channels,
                out_channels=cfg.out_channels, down_block_types=down, up_block_types=up,
                block_out_channels=cfg.widths, layers_per_block=cfg.num_res_blocks,
                norm_num_groups=cfg.norm_groups, norm_eps=cfg.resnet_eps,
                cross_attention_dim=cfg.context_dim, attention_head_dim=cfg.head_dim)


def describe(cfg: UNet3DConfig) -> str:
    levels = ", ".join(f"{w}{'+attn' if a else ''}"
                       for w, a in zip(cfg.widths, cfg.attn_levels, strict=True))
    return (f"widths [{levels}], {cfg.num_res_blocks} encoder ResBlock(s)/level, head dim "
            f"{cfg.head_dim}, context {cfg.context_dim}, {cfg.norm_groups} GroupNorm groups, dtype "
            f"{cfg.dtype}, attention `{cfg.attention}`")


# --------------------------------------------------------------------------------------------
# Models and inputs
# --------------------------------------------------------------------------------------------


def torch_status() -> tuple[bool, str]:
    """Whether torch and diffusers can be imported (without importing them)."""
    missing = [m for m in ("torch", "diffusers") if importlib.util.find_spec(m) is None]
    return (not missing, f"{' and '.join(missing)} not installed" if missing else "")


def randomize_torch(model, seed: int) -> None:
    """Re-randomise every parameter in place (float32): norm scales 1 ± 0.1, biases ±0.1,
    weights N(0, 1/fan_in); zero-initialised layers become non-trivial."""
    import torch

    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, device=device, dtype=torch.float32)
            if p.ndim == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                p.copy_(noise / math.sqrt(p[0].numel()))


def build_torch(spec: BenchSpec, device: str, seed: int):
    """diffusers ``UNet3DConditionModel`` of ``spec`` (float32, randomised, eval mode)."""
    import diffusers
    import torch

    diffusers.utils.logging.set_verbosity_error()
    torch.manual_seed(seed)
    with torch.device(device):
        model = diffusers.UNet3DConditionModel(**diffusers_kwargs(spec.config, spec.size))
    model.eval()
    randomize_torch(model, seed)
    return model


def jax_from_torch(spec: BenchSpec, model) -> UNet3D:
    """Our UNet with the torch model's weights (``rules_diffusers`` + ``convert_state_dict``)."""
    import torch

    with torch.no_grad():
        source = {k: v.detach().to("cpu", torch.float32).numpy()
                  for k, v in model.state_dict().items()}
    rules, ignore = rules_diffusers(spec.config)
    target = abstract_params(abstract_unet(spec.config))
    params = convert_state_dict(source, rules, target, ignore, "UNet3D (diffusers)")
    del source
    return unet_from_params(spec.config, params)


def jax_random(spec: BenchSpec, seed: int) -> UNet3D:
    """Our UNet with its own random initialisation (when torch is unavailable)."""
    return nnx.jit(lambda: UNet3D(spec.config, rngs=nnx.Rngs(seed)))()


def make_inputs(spec: BenchSpec, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cfg = spec.config
    return dict(
        x=rng.standard_normal((1, spec.frames, spec.size, spec.size, cfg.in_channels),
                              np.float32),
        t=np.full((1,), TIMESTEP, np.int32),
        context=rng.standard_normal((1, CONTEXT_TOKENS, cfg.context_dim), np.float32),
    )


# --------------------------------------------------------------------------------------------
# FLOP counts (nothing is run or allocated)
# --------------------------------------------------------------------------------------------


def xla_flops(spec: BenchSpec) -> float | None:
    """XLA cost-analysis FLOPs of the unoptimised HLO of one forward (einsum attention)."""
    cfg = dataclasses.replace(spec.config, attention="xla")
    graphdef, state = nnx.split(abstract_unet(cfg))

    def forward(state, x, t, context):
        return nnx.merge(graphdef, state)(x, t, context)

    x = jax.ShapeDtypeStruct((1, spec.frames, spec.size, spec.size, cfg.in_channels),
                             jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    c = jax.ShapeDtypeStruct((1, CONTEXT_TOKENS, cfg.context_dim), jnp.float32)
    analysis = jax.jit(forward).lower(state, x, t, c).cost_analysis()
    if isinstance(analysis, list | tuple):  # older JAX: one dict per computation
        analysis = analysis[0] if analysis else None
    return float(analysis["flops"]) if analysis and "flops" in analysis else None


def torch_counted_flops(spec: BenchSpec) -> float | None:
    """``FlopCounterMode`` FLOPs of diffusers' model of ``spec`` on the meta device."""
    import diffusers
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cfg = spec.config
    with torch.device("meta"):
        model = diffusers.UNet3DConditionModel(**diffusers_kwargs(cfg, spec.size)).eval()
        x = torch.empty(1, cfg.in_channels, spec.frames, spec.size, spec.size)
        c = torch.empty(1, CONTEXT_TOKENS, cfg.context_dim)
        t = torch.full((1,), TIMESTEP, dtype=torch.long)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x, t, encoder_hidden_states=c)
    return float(counter.get_total_flops())


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def time_jax(model: UNet3D, inputs: dict[str, np.ndarray], reps: int):
    """(compile s, median forward s, output) of the jitted forward (weights as arguments)."""
    graphdef, state = nnx.split(model)

    def forward(state, x, t, context):
        return nnx.merge(graphdef, state)(x, t, context)

    args = (state, jnp.asarray(inputs["x"]), jnp.asarray(inputs["t"]),
            jnp.asarray(inputs["context"]))
    compile_s, median_s, _, out = time_compiled(forward, args, reps)
    return compile_s, median_s, np.asarray(out)


def time_torch(model, inputs: dict[str, np.ndarray], dtype: str, device: str, reps: int):
    """(median forward s, output as [B, F, H, W, C] float32) of diffusers' model."""
    import torch

    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    x = torch.from_numpy(inputs["x"]).permute(0, 4, 1, 2, 3).contiguous()
    x = x.to(device, tdtype)
    t = torch.from_numpy(inputs["t"]).to(device, torch.long)
    c = torch.from_numpy(inputs["context"]).to(device, tdtype)
    sync: Callable[[], None] = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def forward():
        return model(x, t, encoder_hidden_states=c).sample

    with torch.inference_mode():
        out = forward()  # warm-up
        sync()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            out = forward()
            sync()
            times.append(time.perf_counter() - t0)
        out = out.float().permute(0, 2, 3, 4, 1).cpu().numpy()
    return statistics.median(times), out


# --------------------------------------------------------------------------------------------
# One configuration
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    spec: BenchSpec
    params: int
    xla_flops: float | None
    torch_flops: float | str | None
    compile_s: float
    jax_s: float
    torch_s: float | None = None
    torch_note: str = ""
    max_abs_diff: float | None = None
    ref_scale: float | None = None
    torch_params: int | None = None
    attn_processors: str = ""




def bench_config(spec: BenchSpec, args, use_torch: bool, torch_note: str,
                 torch_device: str) -> Result:
    cfg = spec.config
    log(f"[{spec.name}] {describe(cfg)}; input 1 × {spec.frames} × {spec.size}² latents")
    params = param_count(cfg)
    flops = xla_flops(spec)
    tflops: float | str | None = None
    if use_torch:
        try:
            tflops = torch_counted_flops(spec)
        except Exception as e:  # optional cross-check: report, go on
            tflops = short_error(e)
    log(f"  {params:,} parameters; XLA {fmt_flops(flops)} FLOP / forward, torch counter "
        f"{fmt_flops(tflops)}")

    tmodel, torch_params, processors = None, None, ""
    if use_torch:
        try:
            t0 = time.perf_counter()
            tmodel = build_torch(spec, torch_device, args.seed)
            torch_params = sum(p.numel() for p in tmodel.parameters())
            processors = ", ".join(sorted({type(p).__name__
                                           for p in tmodel.attn_processors.values()}))
            model = jax_from_torch(spec, tmodel)
            import torch

            tmodel.to(dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype])
            log(f"  built both models with the same weights in {time.perf_counter() - t0:.1f} s "
                f"(torch attention: {processors})")
        except Exception as e:  # torch side unusable: time JAX alone
            torch_note = f"torch model failed: {short_error(e)}"
            log(f"  {torch_note}")
            tmodel = None
    if tmodel is None:
        model = jax_random(spec, args.seed)
    inputs = make_inputs(spec, args.seed)

    compile_s, jax_s, out = time_jax(model, inputs, args.reps)
    log(f"  JAX: compile {compile_s:.1f} s, forward {fmt_ms(jax_s)} ms")
    if not np.all(np.isfinite(out)):
        raise RuntimeError(f"[{spec.name}] non-finite output from the JAX UNet")
    del model
    gc.collect()
    result = Result(spec, params, flops, tflops, compile_s, jax_s, torch_note=torch_note,
                    torch_params=torch_params, attn_processors=processors)
    if tmodel is not None:
        try:
            torch_s, ref = time_torch(tmodel, inputs, cfg.dtype, torch_device, args.reps)
            result.torch_s = torch_s
            result.max_abs_diff = float(np.max(np.abs(out - ref)))
            result.ref_scale = float(np.max(np.abs(ref)))
            log(f"  torch: forward {fmt_ms(torch_s)} ms; ratio torch/JAX "
                f"{torch_s / jax_s:.2f}; max |Δ| {result.max_abs_diff:.2e} (max |out| "
                f"{result.ref_scale:.2f})")
        except Exception as e:  # optional comparison: report, go on
            result.torch_note = f"torch forward failed: {short_error(e)}"
            log(f"  {result.torch_note}")
        del tmodel
        gc.collect()
        if torch_device == "cuda":
            import torch

            torch.cuda.empty_cache()
    jax.clear_caches()
    return result


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------






def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def peak_bf16_flops(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s of a GPU from :data:`PEAK_BF16_FLOPS`, or None if unknown."""
    kind = device_kind.lower()
    return next((peak for key, peak in PEAK_BF16_FLOPS if key.lower() in kind), None)




def fmt_flops(flops: float | str | None) -> str:
    if flops is None:
        return "—"
    if isinstance(flops, str):
        return f"failed ({flops})"
    return f"{flops / 1e9:,.1f} G" if flops < 1e12 else f"{flops / 1e12:,.2f} T"


def fmt_rate(flops: float | None, seconds: float | None, peak: float | None) -> str:
    if flops is None or not seconds:
        return "—"
    rate = flops / seconds
    text = f"{rate / 1e9:,.1f} G/s" if rate < 1e12 else f"{rate / 1e12:,.1f} T/s"
    return f"{text} ({100 * rate / peak:.1f} % MFU)" if peak else text


def render_report(args, argv, results: list[Result], torch_threads: str, torch_device: str,
                  torch_note: str) -> str:
    dev = jax.devices()[0]
    on_gpu = dev.platform == "gpu"
    peak = peak_bf16_flops(dev.device_kind) if on_gpu else None
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    label = "quick smoke run" if args.quick else "full run"
    torch_line = (f"torch {version('torch')} ({torch_device}, {torch_threads} threads), "
                  f"diffusers {version('diffusers')}")
    lines = [
        f"## Video UNet forward, JAX vs diffusers ({label}) — {now} — {cpu_model()} "
        f"({core_count()} cores), device `{dev.device_kind}`",
        "",
        f"- machine: {cpu_model()}, {core_count()} cores available, {platform.platform()}, "
        f"Python {platform.python_version()}",
        f"- jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {version('flax')}, "
        f"device `{dev.device_kind}` (platform `{dev.platform}`, {jax.device_count()} "
        f"device(s)); {torch_line}" + (f" — torch not timed: {torch_note}" if torch_note
                                       else ""),
        f"- command: `{' '.join(shlex.quote(a) for a in argv)}`",
        f"- measured: `videomv_jax.models.unet3d.UNet3D` under `jax.jit` (ahead-of-time compile "
        f"timed separately, weights passed as arguments) vs diffusers `UNet3DConditionModel` of "
        f"the same configuration under `torch.inference_mode()`; both with the same "
        f"re-randomised weights (converted by `rules_diffusers`), batch 1, timestep "
        f"{TIMESTEP}, {CONTEXT_TOKENS} context tokens; 1 warm-up, median of {args.reps} runs "
        f"(`block_until_ready` / synchronised). ratio = torch time / JAX time (> 1: JAX "
        f"faster). max |Δ| = max abs difference of the outputs (max |out| of torch in "
        f"brackets).",
        "- FLOPs per forward: XLA = cost analysis of the unoptimised HLO of our forward with "
        "einsum attention (incl. element-wise work, conv taps in the zero padding not counted; "
        "used for the rates); torch = `FlopCounterMode` on diffusers' model (matmul, conv, "
        "SDPA; padded taps counted)." + (
            f" MFU = XLA FLOPs / time / {peak / 1e12:,.0f} TFLOP/s (dense bf16 peak of "
            f"`{dev.device_kind}`)." if peak else (
                " MFU: peak of this GPU not in the table." if on_gpu else "")),
        "- configurations:",
    ]
    for r in results:
        s = r.spec
        lines.append(f"  - `{s.name}`: {s.note}; {describe(s.config)}; latents 1 × {s.frames} "
                     f"× {s.size}×{s.size} × {s.config.in_channels}")
    if any(r.attn_processors for r in results):
        procs = sorted({r.attn_processors for r in results if r.attn_processors})
        lines.append(f"- diffusers attention processors: {'; '.join(procs)}")
    lines += [
        "",
        "| config | frames × latent | params | GFLOP/fwd XLA (torch) | JAX compile (s) "
        "| JAX fwd (ms) | torch fwd (ms) | torch/JAX | JAX rate | torch rate "
        "| max \\|Δ\\| (max \\|out\\|) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r.spec
        params = f"{r.params:,}"
        if r.torch_params is not None and r.torch_params != r.params:
            params += f" (**torch {r.torch_params:,}**)"
        xf = "—" if r.xla_flops is None else f"{r.xla_flops / 1e9:,.1f}"
        tf = ("—" if r.torch_flops is None or isinstance(r.torch_flops, str)
              else f"{r.torch_flops / 1e9:,.1f}")
        if r.torch_s is None:
            torch_ms, ratio, trate = (f"— ({r.torch_note})" if r.torch_note else "—"), "—", "—"
            diff = "—"
        else:
            torch_ms = fmt_ms(r.torch_s)
            ratio = f"**{r.torch_s / r.jax_s:.2f}×**"
            trate = fmt_rate(r.xla_flops, r.torch_s, peak)
            diff = f"{r.max_abs_diff:.2e} ({r.ref_scale:.2f})"
        lines.append(
            f"| `{s.name}` | {s.frames} × {s.size}² | {params} | {xf} ({tf}) "
            f"| {r.compile_s:.1f} | {fmt_ms(r.jax_s)} | {torch_ms} | {ratio} "
            f"| {fmt_rate(r.xla_flops, r.jax_s, peak)} | {trate} | {diff} |")
    return "\n".join(lines) + "\n"




# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv, on_gpu: bool):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run (tiny at 4 × 16², mid at 2 × 16², 2 reps); prints only unless "
                        "--out is given")
    p.add_argument("--configs", nargs="+", choices=("tiny", "mid", "full"),
                   help="configurations (default: tiny mid on CPU, full on GPU)")
    p.add_argument("--frames", type=int, help="frames of every configuration (default: its own)")
    p.add_argument("--size", type=int,
                   help="latent height = width of every configuration (default: its own)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"),
                   help="compute and parameter dtype of both models (default float32 on CPU, "
                        "bfloat16 on GPU)")
    p.add_argument("--reps", type=int, help="timed repetitions (default 3; quick 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="time the JAX model only")
    p.add_argument("--out", type=Path,
                   help=f"Markdown file to append to (default {DEFAULT_OUT}; --quick: none)")
    p.add_argument("--no-write", action="store_true", help="print only, append nothing")
    args = p.parse_args(argv)
    args.configs = args.configs or (["full"] if on_gpu else ["tiny", "mid"])
    args.dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    args.reps = args.reps or (2 if args.quick else 3)
    if args.out is None and not args.quick:
        args.out = DEFAULT_OUT
    if args.no_write:
        args.out = None
    if args.reps < 1 or (args.frames is not None and args.frames < 1):
        p.error("--reps and --frames must be positive")
    if args.size is not None and args.size < 1:
        p.error("--size must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    dev = jax.devices()[0]
    on_gpu = dev.platform == "gpu"
    args = parse_args(argv, on_gpu)
    specs = [make_spec(n, args.dtype, args.frames, args.size, args.quick) for n in args.configs]
    for s in specs:
        k = s.config.downsample_factor
        if s.size % k:
            raise SystemExit(f"latent size {s.size} of `{s.name}` must be divisible by {k}")
    log(f"device: {dev.device_kind} ({dev.platform}); configs: "
        f"{[(s.name, s.frames, s.size) for s in specs]}; dtype {args.dtype}")

    use_torch, torch_note = (False, "--no-torch") if args.no_torch else torch_status()
    torch_device, torch_threads = "cpu", "—"
    if use_torch:
        import torch

        if on_gpu:
            if torch.cuda.is_available():
                torch_device = "cuda"
            else:
                use_torch, torch_note = False, "JAX runs on the GPU but torch sees no CUDA device"
        torch_threads = str(torch.get_num_threads())

    results = [bench_config(s, args, use_torch, torch_note, torch_device) for s in specs]
    report = render_report(args, ["python", "benchmarks/unet.py", *argv], results,
                           torch_threads, torch_device, "" if use_torch else torch_note)
    print(report)
    if args.out is not None:
        append_results(Path(args.out), report)
        log(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
