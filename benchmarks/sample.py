"""Benchmark of VideoMV sampling, stage by stage, with random weights.

Every model of the text→MV pipeline is built abstractly and filled with random NumPy weights
(kernels N(0, 1/fan_in), norm scales 1 ± 0.1, everything else ±0.05: no zero-initialised branch,
so no stage is trivially cheap or trivially zero): the OpenCLIP text tower, the video UNet (text
variant with the camera MLP), the KL VAE and LGM. Timings use ``jax.jit`` ahead-of-time
compilation with the weights passed as arguments (compile time reported on its own), one warm-up
call and the median of ``--reps`` calls with ``block_until_ready``. Batch 1 (one prompt), the
VideoMV orbit (:func:`videomv_jax.render.camera.orbit_cameras`), the released sampler settings
(:class:`videomv_jax.diffusion.sampler.SamplerConfig`: CFG 9 with batched guidance branches,
aware views 0/6/12/18, posterior *sample* on re-encoding, grey background) unless noted.

Stages (each its own jitted function):

* ``text encode``: the text tower on the prompt and the negative prompt (2 × 77 tokens);
* ``plain step``: one DDIM step = the UNet on both guidance branches (one batch of 2) + CFG +
  DDIM update (a 1-step :func:`~videomv_jax.diffusion.sampler.make_sampler` without aware steps);
* ``3D-aware step``: one aware step (a 1-step sampler whose only step is aware): the UNet pass,
  then for both branches VAE-decode of the 4 aware views, LGM, rasterising all F views at the
  render size, downsampling and VAE-encode of F frames;
* ``LGM``: LGM on one object's 4 views (input prep with Plücker rays + network + activations);
* ``rasterize``: one object's Gaussians (from the timed LGM on random views) into all F views
  at the render size, with the static capacity the sampler uses;
* ``VAE encode`` / ``VAE decode``: F frames of one video (posterior sample / to pixels);
* ``sampler``: the whole scanned sampler for ``--steps`` steps with ``--aware-steps``
  (default 5 steps, aware at loop index 2), extrapolated to the released 50 steps with 3 aware
  steps as ``T_N + (47 − plain_N)·t_plain + (3 − aware_N)·t_aware`` (single-step stage times).

Totals: *per sample* = text encode + 50-step sampler (extrapolated) + VAE decode of the F
frames; *per 3D asset* = LGM + rasterize (one object, F views at the render size).

The rasteriser's static capacity per scene is ``--capacity`` or, by default, twice the
(Gaussian, tile) intersections of the LGM output on random views rounded up (at least 2^15); the
report says whether any aware step of the timed sampler overflowed (its latents are then NaN,
the timing is still that of the full work).

Configurations (``--configs``; the defaults depend on the JAX backend):

* ``tiny`` (CPU): the consistent tiny setup of ``tests/test_sampler.py``: ``text_tiny`` UNet,
  ``CLIPTextConfig.tiny`` (width 32 = the UNet context), ``VAEConfig.tiny`` (×2),
  ``LGMConfig.tiny`` (16² input, 256 Gaussians), 24 frames of 8×8 latents → 16² frames, renders
  at 32², float32;
* ``mid`` (CPU): UNet ``text_full`` layout at base width 64 (head dim 32, context 256, 32
  groups), a 4-layer width-256 text tower (full vocabulary), a 3-level ×4 VAE (widths
  64/128/256, 1 ResBlock per level), a 4-level LGM (widths 16/32/64/128, 64² input, 32² splats,
  4,096 Gaussians), 24 frames of 16×16 latents → 64² frames, renders at 128², float32;
* ``full`` (GPU): ``UNet3DConfig.text_full`` (1.41 B), ``CLIPTextConfig.full``,
  ``VAEConfig.full``, ``LGMConfig.big`` (65,536 Gaussians), 24 frames of 32×32 latents → 256²,
  renders at 512², compute and parameters in bfloat16 (``attention="auto"``).

With ``--torch on`` (default ``auto``: only when JAX runs on a GPU and torch sees CUDA)
diffusers' ``UNet3DConditionModel`` (the same UNet without the camera MLP, which diffusers lacks)
and ``AutoencoderKL`` of the same configurations, with their own random weights, in the same
dtype on the same device, time the same UNet / VAE work (UNet on the 2 guidance branches as one
batch, VAE encode / decode of F frames all at once), and the report gives torch time / JAX time
per operation and for the UNet + VAE work of one sample (``50·unet + (1 + 3·8/F)·decode +
6·encode``). On a GPU the script sets ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless set.

Usage::

    python benchmarks/sample.py              # CPU: tiny + mid (a few minutes on 2 cores);
                                             #   GPU: full; appends to benchmarks/RESULTS.md
    python benchmarks/sample.py --quick      # smoke run (tiny, 1 rep), prints only
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

from videomv_jax.convert.base import abstract_params, apply_params  # noqa: E402
from videomv_jax.diffusion.sampler import (  # noqa: E402
    SamplerConfig,
    lgm_inputs,
    make_sampler,
    render_views,
    sampler_geometry,
    text_conditions,
)
from videomv_jax.models import abstract_model  # noqa: E402
from videomv_jax.models.clip import CLIPTextConfig, CLIPTextModel  # noqa: E402
from videomv_jax.models.lgm import LGM, LGMConfig  # noqa: E402
from videomv_jax.models.unet3d import UNet3DConfig, abstract_unet, unet_from_params  # noqa: E402
from videomv_jax.models.vae import AutoencoderKL, VAEConfig  # noqa: E402
from videomv_jax.render.camera import orbit_cameras  # noqa: E402
from videomv_jax.render.rasterize import count_intersections  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"
TOKENS = 77
RELEASED_STEPS, RELEASED_AWARE = 50, 3
MIN_CAPACITY = 1 << 15




# --------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setup:
    """One benchmarked pipeline: the four model configs and the video / render sizes."""

    name: str
    unet: UNet3DConfig
    clip: CLIPTextConfig
    vae: VAEConfig
    lgm: LGMConfig
    frames: int
    latent: int
    render_size: int
    note: str

    @property
    def image_size(self) -> int:
        return self.latent * self.vae.downsample_factor


def make_setup(name: str, dtype: str) -> Setup:
    """The configuration ``name`` (tiny / mid / full) in compute/parameter ``dtype``."""
    dt = dict(dtype=dtype, param_dtype=dtype)
    if name == "tiny":
        return Setup(name, UNet3DConfig.text_tiny(**dt), CLIPTextConfig.tiny(**dt),
                     VAEConfig.tiny(**dt), LGMConfig.tiny(**dt), 24, 8, 32,
                     "the tiny setup of `tests/test_sampler.py`")
    if name == "mid":
        unet = UNet3DConfig.text_full(base_channels=64, head_dim=32, context_dim=256,
                                      norm_groups=32, **dt)
        clip = CLIPTextConfig.tiny(vocab_size=49408, width=256, layers=4, heads=4, mlp_dim=1024,
                                   projection_dim=None, **dt)
        vae = VAEConfig(ch=64, ch_mult=(1, 2, 4), num_res_blocks=1, norm_groups=32, **dt)
        lgm = LGMConfig.tiny(input_size=64, splat_size=32, output_size=128,
                             down_channels=(16, 32, 64, 128),
                             down_attention=(False, False, True, True),
                             up_channels=(128, 64, 32), up_attention=(True, False, False),
                             attention_heads=4, norm_groups=8, **dt)
        return Setup(name, unet, clip, vae, lgm, 24, 16, 128,
                     "UNet `text_full` layout at base 64; small text tower, ×4 VAE, 4-level LGM")
    if name == "full":
        fast = dict(attention="auto", **dt)
        return Setup(name, UNet3DConfig.text_full(**fast), CLIPTextConfig.full(**fast),
                     VAEConfig.full(**fast), LGMConfig.big(**fast), 24, 32, 512,
                     "released sizes (text UNet, ViT-H-14 text tower, KL-f8 VAE, LGM big)")
    raise ValueError(f"unknown configuration {name!r}")


def describe(s: Setup) -> str:
    u, v, g, c = s.unet, s.vae, s.lgm, s.clip
    return (f"UNet widths {list(u.widths)} head dim {u.head_dim} context {u.context_dim}; "
            f"text tower width {c.width} × {c.layers} layers; VAE widths {list(v.widths)} "
            f"(×{v.downsample_factor}); LGM widths {list(g.down_channels)} input {g.input_size}² "
            f"→ {g.num_gaussians:,} Gaussians; {s.frames} frames × {s.latent}² latents → "
            f"{s.image_size}², renders {s.render_size}²; dtype {u.dtype}")


# --------------------------------------------------------------------------------------------
# Models with random weights
# --------------------------------------------------------------------------------------------


def random_params(model: nnx.Module, seed: int) -> dict:
    """Random float32 NumPy weights for every parameter of an (abstract) model."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, spec in abstract_params(model).items():
        shape = tuple(spec.shape)
        if path[-1] == "kernel" and len(shape) > 1:
            value = rng.standard_normal(shape, np.float32)
            value *= np.float32(1.0 / np.sqrt(np.prod(shape[:-1])))
        elif path[-1] == "scale":
            value = 1.0 + 0.1 * rng.standard_normal(shape, np.float32)
        else:
            value = 0.05 * rng.standard_normal(shape, np.float32)
        out[path] = value
    return out


def build_models(s: Setup, seed: int) -> tuple:
    """(text tower, UNet, VAE, LGM) with random weights, built without an eager init."""
    unet = unet_from_params(s.unet, random_params(abstract_unet(s.unet), seed))
    models = [unet]
    for i, (cls, cfg) in enumerate(((CLIPTextModel, s.clip), (AutoencoderKL, s.vae),
                                    (LGM, s.lgm))):
        model = abstract_model(cls, cfg)
        params = {k: np.asarray(v).astype(jnp.dtype(cfg.param_dtype))
                  for k, v in random_params(model, seed + 1 + i).items()}
        models.append(apply_params(model, params))
    unet, clip, vae, lgm = models
    return clip, unet, vae, lgm


def count_params(model: nnx.Module) -> int:
    return sum(int(np.prod(v.shape)) for v in abstract_params(model).values())


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Stage:
    name: str
    work: str
    compile_s: float
    run_s: float


def with_module(module: nnx.Module, fn: Callable) -> tuple[Callable, Any]:
    """(jittable ``f(state, *args) = fn(module, *args)``, state): weights as arguments."""
    graphdef, state = nnx.split(module)
    return (lambda st, *a: fn(nnx.merge(graphdef, st), *a)), state


def round_capacity(n: int) -> int:
    """Round up to a multiple of 2^(bits-4) (at most ~6 % slack), at least MIN_CAPACITY."""
    n = max(int(n), 1)
    step = 1 << max(n.bit_length() - 4, 0)
    return max(-(-n // step) * step, MIN_CAPACITY)


@dataclasses.dataclass
class Result:
    setup: Setup
    params: dict[str, int]
    stages: list[Stage]
    capacity: int
    intersections: int
    steps: int
    aware: tuple[int, ...]
    sampler_s: float
    sampler_compile_s: float
    estimate_s: float | None
    per_sample_s: float | None
    per_asset_s: float
    overflow: bool
    torch: dict[str, float] = dataclasses.field(default_factory=dict)
    torch_note: str = ""

    def stage(self, name: str) -> Stage:
        return next(st for st in self.stages if st.name == name)


def extrapolate(total: float, steps: int, n_aware: int, t_plain: float,
                t_aware: float) -> float | None:
    """T_N + (47 − plain_N)·t_plain + (3 − aware_N)·t_aware (None when N exceeds that run)."""
    plain = steps - n_aware
    if plain > RELEASED_STEPS - RELEASED_AWARE or n_aware > RELEASED_AWARE:
        return None
    return (total + (RELEASED_STEPS - RELEASED_AWARE - plain) * t_plain
            + (RELEASED_AWARE - n_aware) * t_aware)


def bench_setup(s: Setup, args) -> Result:
    log(f"[{s.name}] {describe(s)}")
    t0 = time.perf_counter()
    clip, unet, vae, lgm = build_models(s, args.seed)
    params = {n: count_params(m) for n, m in (("text", clip), ("unet", unet), ("vae", vae),
                                               ("lgm", lgm))}
    log(f"  built random models in {time.perf_counter() - t0:.1f} s: "
        + ", ".join(f"{k} {v:,}" for k, v in params.items()))
    reps, f, lat, img, r = args.reps, s.frames, s.latent, s.image_size, s.render_size
    base = SamplerConfig.text(render_size=r, capacity_per_scene=MIN_CAPACITY)
    cameras = orbit_cameras(f)
    geometry = sampler_geometry(cameras, base)
    keys = jax.random.split(jax.random.key(args.seed), 6)
    stages: list[Stage] = []

    def add(name: str, work: str, fn: Callable, fargs: tuple, n: int = reps):
        c, t, _, out = time_compiled(fn, fargs, n)
        stages.append(Stage(name, work, c, t))
        log(f"  {name:<14} compile {c:6.1f} s, run {t * 1e3:10,.1f} ms  ({work})")
        return out

    # text encode: prompt + negative prompt
    ids = jax.random.randint(keys[0], (2, TOKENS), 0, s.clip.vocab_size, jnp.int32)
    fn, st = with_module(clip, lambda m, x: m(x))
    tokens = add("text encode", f"2 × {TOKENS} tokens", fn, (st, ids))
    cond, uncond = text_conditions(tokens[:1], tokens[1:])

    # LGM on one object's 4 views, then the capacity the rasteriser needs for its output
    nv = len(base.aware_views)
    rgb = jax.random.uniform(keys[1], (1, nv, img, img, 3))
    fn, st = with_module(lgm, lambda m, x, g: m.gaussians(lgm_inputs(x, g, base)))
    gaussians = add("LGM", f"1 object, {nv} views of {img}²", fn, (st, rgb, geometry))
    needed = count_intersections(gaussians, geometry.viewmats, geometry.intrinsics, r, r,
                                 base.raster_settings)
    capacity = args.capacity or round_capacity(2 * needed)
    cfg = base.replace(capacity_per_scene=capacity)
    log(f"  rasteriser: {needed:,} intersections for the LGM output, capacity/scene "
        f"{capacity:,}")

    add("rasterize", f"{lgm.config.num_gaussians:,} Gaussians → {f} views × {r}²",
        lambda g, geo: render_views(g, geo, cfg).colors, (gaussians, geometry))

    frames = jax.random.uniform(keys[2], (1, f, img, img, 3), minval=-1.0, maxval=1.0)
    fn, st = with_module(vae, lambda m, x, k: m.encode_frames(x, k, chunk=cfg.vae_chunk))
    add("VAE encode", f"{f} frames of {img}²", fn, (st, frames, keys[3]))
    latents = jax.random.normal(keys[4], (1, f, lat, lat, 4))
    fn, st = with_module(vae, lambda m, z: m.decode_frames(z, chunk=cfg.vae_chunk))
    add("VAE decode", f"{f} frames of {lat}² latents", fn, (st, latents))
    del frames

    def sampler_args(sampler):
        mask = jnp.asarray(sampler.config.aware_mask())
        return (sampler.states(), latents, dict(cond), dict(uncond),
                jnp.asarray(cameras, jnp.float32), keys[5], mask)

    work = f"UNet × 2 branches on {f} × {lat}² + CFG + DDIM"
    one = make_sampler(unet, vae, lgm, cfg.replace(num_steps=1, aware_steps=()))
    add("plain step", work, lambda *a: one.jitted(*a), sampler_args(one))
    one = make_sampler(unet, vae, lgm, cfg.replace(num_steps=1, aware_steps=(0,)))
    add("3D-aware step", "plain step + 2 × (decode 4 views, LGM, rasterize, encode F)",
        lambda *a: one.jitted(*a), sampler_args(one))

    full = make_sampler(unet, vae, lgm, cfg.replace(num_steps=args.steps,
                                                    aware_steps=tuple(args.aware_steps)))
    c, t, _, (_, aux) = time_compiled(lambda *a: full.jitted(*a), sampler_args(full),
                                   args.sampler_reps)
    overflow = bool(aux["overflow"])
    log(f"  sampler        compile {c:6.1f} s, run {t * 1e3:10,.1f} ms  ({args.steps} steps, "
        f"aware {tuple(args.aware_steps)}; overflow {overflow})")
    del aux

    by = {st_.name: st_.run_s for st_ in stages}
    est = extrapolate(t, args.steps, len(args.aware_steps), by["plain step"],
                      by["3D-aware step"])
    per_sample = None if est is None else by["text encode"] + est + by["VAE decode"]
    result = Result(s, params, stages, capacity, needed, args.steps, tuple(args.aware_steps),
                    t, c, est, per_sample, by["LGM"] + by["rasterize"], overflow)
    if args.use_torch:
        try:
            result.torch = time_torch_and_free(s, args)
        except Exception as e:  # optional comparison: report, go on
            result.torch_note = f"torch failed: {short_error(e)}"
            log(f"  {result.torch_note}")
    del clip, unet, vae, lgm
    gc.collect()
    jax.clear_caches()
    return result


# --------------------------------------------------------------------------------------------
# PyTorch (diffusers) comparison of the UNet / VAE work
# --------------------------------------------------------------------------------------------


def diffusers_unet_kwargs(cfg: UNet3DConfig, sample_size: int) -> dict[str, Any]:
    """diffusers ``UNet3DConditionModel`` kwargs of ``cfg`` without the camera MLP (taken from
    ``benchmarks/unet.py``, which documents the head-count mapping)."""
    path = Path(__file__).resolve().parent / "unet.py"
    spec = importlib.util.spec_from_file_location("_bench_unet", path)
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    return module.diffusers_kwargs(dataclasses.replace(cfg, use_camera=False), sample_size)


def diffusers_vae_kwargs(cfg: VAEConfig, sample_size: int) -> dict[str, Any]:
    n = len(cfg.widths)
    return dict(in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                down_block_types=("DownEncoderBlock2D",) * n,
                up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=cfg.widths,
                layers_per_block=cfg.num_res_blocks, latent_channels=cfg.z_channels,
                norm_num_groups=cfg.norm_groups, sample_size=sample_size)


def torch_device_and_status(on_gpu: bool, mode: str) -> tuple[str | None, str]:
    """(torch device or None, reason when None) for ``--torch auto|on|off``."""
    if mode == "off":
        return None, "--torch off"
    missing = [m for m in ("torch", "diffusers") if importlib.util.find_spec(m) is None]
    if missing:
        return None, f"{' and '.join(missing)} not installed"
    import torch

    if torch.cuda.is_available():
        return "cuda", ""
    if mode == "on":
        return "cpu", ""
    return None, ("JAX runs on the GPU but torch sees no CUDA device" if on_gpu
                  else "CPU run (use --torch on to compare on the CPU)")


def time_torch(s: Setup, args) -> dict[str, float]:
    """Median seconds of diffusers' UNet (2 branches), VAE encode and decode of F frames."""
    import diffusers
    import torch

    diffusers.utils.logging.set_verbosity_error()
    device = args.torch_device
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[s.unet.dtype]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(args.seed)
    f, lat, img = s.frames, s.latent, s.image_size

    def median(fn) -> float:
        with torch.inference_mode():
            fn()
            sync()
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                fn()
                sync()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    out: dict[str, float] = {}
    with torch.device(device):
        unet = diffusers.UNet3DConditionModel(**diffusers_unet_kwargs(s.unet, lat))
    unet = unet.to(tdtype).eval()
    x = torch.randn(2, s.unet.in_channels, f, lat, lat, device=device, dtype=tdtype)
    t = torch.full((2,), 500, device=device, dtype=torch.long)
    ctx = torch.randn(2, TOKENS, s.unet.context_dim, device=device, dtype=tdtype)
    out["unet"] = median(lambda: unet(x, t, encoder_hidden_states=ctx).sample)
    log(f"  torch UNet × 2 branches {out['unet'] * 1e3:,.1f} ms")
    with torch.device(device):
        vae = diffusers.AutoencoderKL(**diffusers_vae_kwargs(s.vae, img))
    vae = vae.to(tdtype).eval()
    images = torch.rand(f, 3, img, img, device=device, dtype=tdtype) * 2 - 1
    z = torch.randn(f, s.vae.z_channels, lat, lat, device=device, dtype=tdtype)
    out["encode"] = median(lambda: vae.encode(images).latent_dist.sample())
    out["decode"] = median(lambda: vae.decode(z).sample)
    log(f"  torch VAE encode {out['encode'] * 1e3:,.1f} ms, decode "
        f"{out['decode'] * 1e3:,.1f} ms")
    return out


def time_torch_and_free(s: Setup, args) -> dict[str, float]:
    """:func:`time_torch`, then give the models' memory back (CUDA cache included)."""
    try:
        return time_torch(s, args)
    finally:
        gc.collect()
        if args.torch_device == "cuda":
            import torch

            torch.cuda.empty_cache()


def unet_vae_work(frames: int, unet: float, encode: float, decode: float) -> float:
    """UNet + VAE work of one released sample: 50 CFG passes, 3 aware steps × 2 branches ×
    (decode 4 views + encode F frames), the final decode of F frames."""
    return (RELEASED_STEPS * unet + (1 + RELEASED_AWARE * 2 * 4 / frames) * decode
            + RELEASED_AWARE * 2 * encode)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------








def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def fmt_s(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:,.2f}"




def render_report(args, argv: list[str], results: list[Result]) -> str:
    dev = jax.devices()[0]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    label = "quick smoke run" if args.quick else "full run"
    torch_line = (f"torch {version('torch')} on `{args.torch_device}`, diffusers "
                  f"{version('diffusers')}" if args.use_torch
                  else f"torch not timed ({args.torch_note})")
    aware = tuple(args.aware_steps)
    lines = [
        f"## VideoMV sampling by stage, random weights ({label}) — {now} — {cpu_model()} "
        f"({core_count()} cores), device `{dev.device_kind}`",
        "",
        f"- machine: {cpu_model()}, {core_count()} cores available, {platform.platform()}, "
        f"Python {platform.python_version()}",
        f"- jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {version('flax')}, "
        f"device `{dev.device_kind}` (platform `{dev.platform}`, {jax.device_count()} "
        f"device(s)); {torch_line}",
        f"- command: `{' '.join(shlex.quote(a) for a in argv)}`",
        f"- measured: each stage under `jax.jit` (ahead-of-time compile timed separately, "
        f"weights as arguments), 1 warm-up, median of {args.reps} runs (sampler: "
        f"{args.sampler_reps}); batch 1, released text→MV sampler settings (CFG 9, batched "
        f"branches, aware views 0/6/12/18, posterior sample on re-encode); random weights "
        f"(N(0, 1/fan_in) kernels).",
        f"- sampler: {args.steps} DDIM steps with aware loop indices {aware}, extrapolated to "
        f"the released {RELEASED_STEPS} steps with {RELEASED_AWARE} aware steps as T_N + "
        f"(47 − plain_N)·t(plain step) + (3 − aware_N)·t(3D-aware step). per sample = text "
        f"encode + 50-step estimate + VAE decode of the F frames; per 3D asset = LGM + "
        f"rasterize of all F views at the render size.",
        "- configurations:",
    ]
    for r in results:
        p = r.params
        lines.append(f"  - `{r.setup.name}` ({r.setup.note}): {describe(r.setup)}; parameters "
                     f"UNet {p['unet']:,}, text {p['text']:,}, VAE {p['vae']:,}, LGM "
                     f"{p['lgm']:,}; rasteriser capacity {r.capacity:,}/scene (LGM output on "
                     f"random views needs {r.intersections:,})")
    lines += ["", "| config | stage | work | compile (s) | time (ms) |",
              "|---|---|---|---:|---:|"]
    for r in results:
        for st in r.stages:
            lines.append(f"| `{r.setup.name}` | {st.name} | {st.work} | {st.compile_s:.1f} "
                         f"| {fmt_ms(st.run_s)} |")
        lines.append(f"| `{r.setup.name}` | sampler | {r.steps} steps, aware {r.aware}"
                     f"{' (**overflow**: NaN latents)' if r.overflow else ''} "
                     f"| {r.sampler_compile_s:.1f} | {fmt_ms(r.sampler_s)} |")
    lines += ["", f"| config | sampler {args.steps} steps (s) | est. {RELEASED_STEPS} steps / "
              f"{RELEASED_AWARE} aware (s) | per sample (s) | per 3D asset (s) |",
              "|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| `{r.setup.name}` | {fmt_s(r.sampler_s)} | {fmt_s(r.estimate_s)} "
                     f"| **{fmt_s(r.per_sample_s)}** | **{fmt_s(r.per_asset_s)}** |")
    torch_rows = [r for r in results if r.torch or r.torch_note]
    if torch_rows:
        lines += ["", "UNet / VAE work against diffusers (torch time / JAX time, > 1: JAX "
                  "faster; JAX UNet = the plain step, which also holds the camera MLP, CFG and "
                  "DDIM; per sample = 50·unet + (1 + 3·8/F)·decode + 6·encode):", "",
                  "| config | op | JAX (ms) | torch (ms) | torch/JAX |",
                  "|---|---|---:|---:|---:|"]
        for r in torch_rows:
            if not r.torch:
                lines.append(f"| `{r.setup.name}` | — | — | {r.torch_note} | — |")
                continue
            jx = {"unet": r.stage("plain step").run_s, "encode": r.stage("VAE encode").run_s,
                  "decode": r.stage("VAE decode").run_s}
            ops = [("UNet × 2 branches", jx["unet"], r.torch["unet"]),
                   ("VAE encode F", jx["encode"], r.torch["encode"]),
                   ("VAE decode F", jx["decode"], r.torch["decode"]),
                   ("UNet + VAE per sample", unet_vae_work(r.setup.frames, **jx),
                    unet_vae_work(r.setup.frames, **r.torch))]
            for op, a, b in ops:
                lines.append(f"| `{r.setup.name}` | {op} | {fmt_ms(a)} | {fmt_ms(b)} "
                             f"| **{b / a:.2f}×** |")
    return "\n".join(lines) + "\n"




# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str], on_gpu: bool):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run (tiny only, 1 rep); prints only unless --out is given")
    p.add_argument("--configs", nargs="+", choices=("tiny", "mid", "full"),
                   help="configurations (default: tiny mid on CPU, full on GPU; quick: tiny)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"),
                   help="compute and parameter dtype (default float32 on CPU, bfloat16 on GPU)")
    p.add_argument("--steps", type=int, default=5, help="DDIM steps of the timed sampler")
    p.add_argument("--aware-steps", type=int, nargs="*", default=[2],
                   help="aware loop indices of the timed sampler (default: 2)")
    p.add_argument("--capacity", type=int,
                   help="rasteriser capacity per scene (default: 2 × the LGM output's need)")
    p.add_argument("--reps", type=int, help="timed repetitions per stage (default 3; quick 1)")
    p.add_argument("--sampler-reps", type=int,
                   help="timed repetitions of the whole sampler (default 2; quick 1)")
    p.add_argument("--torch", choices=("auto", "on", "off"), default="auto",
                   help="time diffusers' UNet / VAE too (auto: only with CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path,
                   help=f"Markdown file to append to (default {DEFAULT_OUT}; --quick: none)")
    p.add_argument("--no-write", action="store_true", help="print only, append nothing")
    args = p.parse_args(argv)
    default = ["tiny"] if args.quick else (["full"] if on_gpu else ["tiny", "mid"])
    args.configs = args.configs or default
    args.dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    args.reps = args.reps or (1 if args.quick else 3)
    args.sampler_reps = args.sampler_reps or (1 if args.quick else 2)
    if args.out is None and not args.quick:
        args.out = DEFAULT_OUT
    if args.no_write:
        args.out = None
    if min(args.reps, args.sampler_reps, args.steps) < 1:
        p.error("--reps, --sampler-reps and --steps must be positive")
    try:
        SamplerConfig(num_steps=args.steps, aware_steps=tuple(args.aware_steps))
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    dev = jax.devices()[0]
    on_gpu = dev.platform == "gpu"
    args = parse_args(argv, on_gpu)
    args.torch_device, args.torch_note = torch_device_and_status(on_gpu, args.torch)
    args.use_torch = args.torch_device is not None
    log(f"device: {dev.device_kind} ({dev.platform}); configs {args.configs}; dtype "
        f"{args.dtype}; torch: {args.torch_device or args.torch_note}")
    results = [bench_setup(make_setup(n, args.dtype), args) for n in args.configs]
    report = render_report(args, ["python", "benchmarks/sample.py", *argv], results)
    print(report)
    if args.out is not None:
        append_results(Path(args.out), report)
        log(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
