"""Benchmark of the tiled JAX Gaussian rasterizer on LGM-sized work.

Scenes are synthetic but shaped like LGM outputs (deterministic seed): N Gaussians on and near
the surface of a union of ellipsoids inside [-0.6, 0.6]^3 (90 % on the surfaces with 1 cm noise,
10 % inside), per-axis scales 0.1·softplus(x) with x ~ N(-2.4, 0.6) (LGM's scale activation;
about 0.003-0.03), random unit quaternions, opacities sigmoid(N(1, 1.5)) (mostly high) and
uniform RGB colours. They are rendered into the 24 views of VideoMV's text-to-multi-view orbit
(elevation 15°, distance 2.0, fovy 39.6°: ``TEXT_TO_MV`` and ``DEFAULT_FOVY_DEG`` of
:mod:`videomv_jax.render.camera`) on a white background.

For every (N, image size) the script measures, with ``jax.jit`` ahead-of-time compilation
(compile time reported on its own), one warm-up call and the median of ``--reps`` timed calls
(``block_until_ready``):

* forward: ``rasterize`` (colours, alphas, depths, diagnostics) with a static ``capacity`` taken
  from ``count_intersections`` and rounded up;
* forward+backward: ``jax.value_and_grad`` of ``sum(colors·c) + sum(alphas·a)`` (c, a random
  cotangents) with respect to every Gaussian field (means, scales, rotations, opacities,
  colours).

It also times the exact oracle ``render_reference`` (jitted) at one configuration (default:
the first N and the first size, i.e. 16,384 Gaussians × 24 views × 256²) and reports the
speed-up of the tiled forward over it. The reference is first timed on a subset of the views;
when 24 views are predicted to take longer than ``--reference-budget`` seconds, the 24-view time
is extrapolated linearly from the subset (and labelled so), otherwise all views are rendered.

gsplat (PyTorch) is timed when it can run: its CUDA rasterizer (``gsplat.rasterization``) on the
same scenes when a CUDA device is present, and its PyTorch reference (``_rasterization``, which
still needs gsplat's CUDA ops and nerfacc) at the reference configuration. Otherwise the table
says why it was skipped. The script runs unchanged on CPU and GPU JAX backends.

Usage::

    python benchmarks/rasterize.py            # full run, appends to benchmarks/RESULTS.md
    python benchmarks/rasterize.py --quick    # small smoke run, prints only
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import importlib.util
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from common import (
    append_results,
    core_count,
    cpu_model,
    fmt_ms,
    log,
    short_error,
    time_compiled,
)

from videomv_jax.render.camera import DEFAULT_FOVY_DEG, TEXT_TO_MV, orbit_cameras, raster_cameras
from videomv_jax.render.gaussians import Gaussians
from videomv_jax.render.rasterize import count_intersections, rasterize
from videomv_jax.render.reference import render_reference

DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"
SCALE_LOGIT = (-2.4, 0.6)  # x ~ N(mean, std), scale = 0.1 * softplus(x)
BACKGROUND = (1.0, 1.0, 1.0)
GOAL_CONFIG = (16384, 24, 256)  # (Gaussians, views, size) where the tiled path must be >= 20x




# --------------------------------------------------------------------------------------------
# Scenes and cameras
# --------------------------------------------------------------------------------------------

# (centre, semi-axes, share of the Gaussians): a body, a head and two "arms"; all inside ±0.6.
_BLOBS = (
    ((0.0, 0.0, -0.05), (0.40, 0.40, 0.45), 0.60),
    ((0.0, 0.0, 0.40), (0.18, 0.18, 0.18), 0.20),
    ((0.38, 0.0, 0.05), (0.18, 0.12, 0.12), 0.10),
    ((-0.38, 0.0, 0.05), (0.18, 0.12, 0.12), 0.10),
)


def make_scene(n: int, seed: int) -> Gaussians:
    """An LGM-like scene of ``n`` Gaussians (float32, deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    shares = np.array([b[2] for b in _BLOBS])
    blob = rng.choice(len(_BLOBS), size=n, p=shares / shares.sum())
    centres = np.array([b[0] for b in _BLOBS])[blob]
    axes = np.array([b[1] for b in _BLOBS])[blob]
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    interior = rng.random(n) < 0.1
    radius = np.where(interior, rng.random(n) ** (1.0 / 3.0), 1.0)[:, None]
    means = centres + axes * direction * radius + rng.normal(scale=0.01, size=(n, 3))
    means = np.clip(means, -0.6, 0.6)
    logits = rng.normal(SCALE_LOGIT[0], SCALE_LOGIT[1], size=(n, 3))
    scales = 0.1 * np.logaddexp(0.0, logits)
    quats = rng.normal(size=(n, 4))
    quats /= np.linalg.norm(quats, axis=-1, keepdims=True)
    opacities = 1.0 / (1.0 + np.exp(-rng.normal(1.0, 1.5, size=n)))
    colors = rng.random((n, 3))
    fields = (means, scales, quats, opacities, colors)
    return Gaussians(*(jnp.asarray(x, jnp.float32) for x in fields))


def make_cameras(views: int, size: int, elevation: float, distance: float, fovy: float):
    c2w = orbit_cameras(views, elevation, distance)
    return raster_cameras(c2w, size, size, fovy)


def round_capacity(n: int) -> int:
    """Round up to a multiple of 2^(bits-4) (at most ~6 % slack), at least 4096."""
    n = max(int(n), 1)
    step = 1 << max(n.bit_length() - 4, 0)
    return max(-(-n // step) * step, 4096)


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------


def time_torch(fn, reps: int, sync) -> float:
    """Median seconds of ``fn()`` after one warm-up call; ``sync`` waits for the device."""
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------
# Tiled JAX rasterizer
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TiledResult:
    gaussians: int
    size: int
    views: int
    intersections: int
    capacity: int
    max_tile_load: int
    compile_fwd_s: float
    fwd_s: float
    compile_fb_s: float
    fwd_bwd_s: float
    colors: np.ndarray | None = None  # kept only for the reference configuration
    alphas: np.ndarray | None = None


def bench_tiled(scene, viewmats, Ks, size, args, keep_outputs: bool) -> TiledResult:
    views = viewmats.shape[0]
    needed = count_intersections(scene, viewmats, Ks, size, size, settings=args.settings)
    capacity = round_capacity(needed)
    background = jnp.asarray(BACKGROUND, jnp.float32)

    def forward(g, vm, ks, bg):
        out = rasterize(g, vm, ks, size, size, background=bg, settings=args.settings,
                        capacity=capacity)
        return (out.colors, out.alphas, out.depths, out.info.intersections,
                out.info.max_tile_load, out.info.overflow)

    c_fwd, t_fwd, _, out = time_compiled(forward, (scene, viewmats, Ks, background), args.reps)
    colors, alphas, _, intersections, max_load, overflow = out
    if bool(overflow):
        raise RuntimeError(f"capacity overflow: {int(intersections)} > {capacity}")
    if int(intersections) != needed:
        log(f"  warning: count_intersections={needed} but rasterize reported "
            f"{int(intersections)}")
    if not bool(jnp.all(jnp.isfinite(colors))):
        raise RuntimeError("non-finite colours from the tiled rasterizer")
    kept = (np.asarray(colors), np.asarray(alphas)) if keep_outputs else (None, None)
    del out, colors, alphas

    key_c, key_a = jax.random.split(jax.random.PRNGKey(args.seed + 1))
    cot_c = jax.random.normal(key_c, (views, size, size, 3), jnp.float32)
    cot_a = jax.random.normal(key_a, (views, size, size), jnp.float32)

    def loss(g, vm, ks, bg, cc, ca):
        out = rasterize(g, vm, ks, size, size, background=bg, settings=args.settings,
                        capacity=capacity)
        return jnp.sum(out.colors * cc) + jnp.sum(out.alphas * ca)

    fwd_bwd = jax.value_and_grad(loss)
    c_fb, t_fb, _, (value, grads) = time_compiled(
        fwd_bwd, (scene, viewmats, Ks, background, cot_c, cot_a), args.reps)
    finite = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(grads))
    if not (finite and bool(jnp.isfinite(value))):
        raise RuntimeError("non-finite loss or gradients from the tiled rasterizer")
    del value, grads
    return TiledResult(scene.num_gaussians, size, views, int(intersections), capacity,
                       int(max_load), c_fwd, t_fwd, c_fb, t_fb, *kept)


# --------------------------------------------------------------------------------------------
# Exact reference
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ReferenceResult:
    seconds_all_views: float
    how: str
    max_abs_diff: float


def bench_reference(scene, viewmats, Ks, size, args, tiled: TiledResult) -> ReferenceResult:
    views = viewmats.shape[0]
    pixel_block = min(size * size, args.pixel_block)
    background = jnp.asarray(BACKGROUND, jnp.float32)
    ref = jax.jit(render_reference, static_argnums=(3, 4, 6, 7))

    def ref_fn(g, vm, ks, bg):
        color, alpha, _ = ref(g, vm, ks, size, size, bg, args.settings, pixel_block)
        return color, alpha

    k = max(1, min(args.reference_views, views))
    subset = np.unique(np.linspace(0, views - 1, k).round().astype(int))
    k = len(subset)
    sub_args = (scene, viewmats[subset], Ks[subset], background)
    log(f"  reference: {k} of {views} views (pixel_block={pixel_block})")
    c_s, t_sub, _, (color, alpha) = time_compiled(ref_fn, sub_args, max(1, min(args.reps, 2)))
    diff = max(float(np.max(np.abs(np.asarray(color) - tiled.colors[subset]))),
               float(np.max(np.abs(np.asarray(alpha) - tiled.alphas[subset]))))
    estimate = t_sub * views / k
    log(f"  reference: compile {c_s:.1f} s, {k} views {t_sub:.2f} s -> {views} views "
        f"~{estimate:.1f} s (budget {args.reference_budget:.0f} s)")
    if k == views:
        return ReferenceResult(t_sub, f"measured ({views} views)", diff)
    if estimate > args.reference_budget:
        return ReferenceResult(
            estimate, f"**extrapolated** ×{views / k:g} from {k} views ({t_sub:.2f} s)", diff)
    t0 = time.perf_counter()
    compiled = jax.jit(ref_fn).lower(scene, viewmats, Ks, background).compile()
    log(f"  reference: compiled {views} views in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    color, alpha = jax.block_until_ready(compiled(scene, viewmats, Ks, background))
    t_all = time.perf_counter() - t0
    diff = max(float(np.max(np.abs(np.asarray(color) - tiled.colors))),
               float(np.max(np.abs(np.asarray(alpha) - tiled.alphas))))
    return ReferenceResult(t_all, f"measured ({views} views, 1 run)", diff)


# --------------------------------------------------------------------------------------------
# gsplat (optional, guarded)
# --------------------------------------------------------------------------------------------


def gsplat_backend_status(allow_jit: bool) -> tuple[bool, str]:
    """Whether gsplat's CUDA extension can be loaded without a (minutes-long) JIT build."""
    try:
        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("gsplat") is None:
            return False, "torch or gsplat not installed"
        if importlib.util.find_spec("gsplat.csrc") is not None:
            return True, "prebuilt"
    except (ImportError, ValueError) as e:
        return False, f"gsplat import failed ({type(e).__name__})"
    ext_root = os.environ.get("TORCH_EXTENSIONS_DIR",
                              os.path.expanduser("~/.cache/torch_extensions"))
    if glob.glob(os.path.join(ext_root, "**", "gsplat_cuda", "gsplat_cuda.*"), recursive=True):
        return True, "JIT build found"
    nvcc = shutil.which("nvcc") or os.environ.get("CUDA_HOME") or os.path.exists(
        "/usr/local/cuda/bin/nvcc")
    if nvcc and not allow_jit:
        return False, "gsplat CUDA extension not built (loading it would JIT-compile; " \
                      "pass --gsplat-jit to allow)"
    return True, "no prebuilt extension"


def _torch_scene(torch, scene: Gaussians, viewmats, Ks, device):
    t = lambda x: torch.tensor(np.asarray(x), device=device, dtype=torch.float32)  # noqa: E731
    params = [t(scene.means), t(scene.rotations), t(scene.scales), t(scene.opacities),
              t(scene.colors)]
    for p in params:
        p.requires_grad_(True)
    return params, t(viewmats), t(Ks)


def bench_gsplat_cuda(scene, viewmats, Ks, size, reps: int, seed: int):
    """(forward s, forward+backward s) of ``gsplat.rasterization`` on CUDA."""
    import torch
    from gsplat import rasterization

    device = "cuda"
    params, vm, ks = _torch_scene(torch, scene, viewmats, Ks, device)
    views = vm.shape[0]
    bg = torch.tensor(BACKGROUND, device=device).expand(views, 3).contiguous()
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    cot_c = torch.randn((views, size, size, 3), device=device, generator=gen)
    cot_a = torch.randn((views, size, size, 1), device=device, generator=gen)

    def render():
        means, quats, scales, opacities, colors = params
        return rasterization(means, quats, scales, opacities, colors, vm, ks, size, size,
                             backgrounds=bg)

    def forward():
        with torch.no_grad():
            render()

    def forward_backward():
        for p in params:
            p.grad = None
        colors, alphas, _ = render()
        loss = (colors * cot_c).sum() + (alphas * cot_a).sum()
        loss.backward()

    sync = torch.cuda.synchronize
    return time_torch(forward, reps, sync), time_torch(forward_backward, reps, sync)


def bench_gsplat_torch_reference(scene, viewmats, Ks, size, reps: int) -> float:
    """Forward seconds of gsplat's PyTorch reference ``_rasterization`` (may raise)."""
    import torch
    from gsplat.rendering import _rasterization

    device = "cuda" if torch.cuda.is_available() else "cpu"
    params, vm, ks = _torch_scene(torch, scene, viewmats, Ks, device)
    bg = torch.tensor(BACKGROUND, device=device).expand(vm.shape[0], 3).contiguous()
    means, quats, scales, opacities, colors = params

    def forward():
        with torch.no_grad():
            _rasterization(means, quats, scales, opacities, colors, vm, ks, size, size,
                           backgrounds=bg)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return time_torch(forward, reps, sync)


def torch_cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())




# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------








def render_report(args, argv, scene_stats, tiled, reference, gsplat_rows, gsplat_note,
                  torch_ref) -> str:
    dev = jax.devices()[0]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    label = "quick smoke run" if args.quick else "full run"
    lines = [
        f"## Rasterizer ({label}) — {now} — {cpu_model()} ({core_count()} cores), "
        f"device `{dev.device_kind}`",
        "",
        f"- machine: {cpu_model()}, {core_count()} cores available, {platform.platform()}, "
        f"Python {platform.python_version()}",
        f"- jax {jax.__version__}, jaxlib {jaxlib.__version__}, device `{dev.device_kind}` "
        f"(platform `{dev.platform}`, {jax.device_count()} device(s))",
        f"- command: `{' '.join(shlex.quote(a) for a in argv)}`",
        f"- measured: `videomv_jax.render.rasterize.rasterize` (settings `{args.settings}`, "
        f"float32) under `jax.jit`, ahead-of-time compile timed separately, 1 warm-up, median of "
        f"{args.reps} runs with `block_until_ready`. fwd = colours+alphas+depths; fwd+bwd = "
        f"`value_and_grad` of sum(colours·c)+sum(alphas·a) (random c, a) w.r.t. means, scales, "
        f"rotations, opacities, colours. Capacity = `count_intersections` rounded up.",
        f"- scenes (seed {args.seed}): LGM-like, Gaussians on/near a union of 4 ellipsoids in "
        f"[-0.6, 0.6]³, scales 0.1·softplus(N({SCALE_LOGIT[0]}, {SCALE_LOGIT[1]})) "
        f"(5–95 %: {scene_stats[0]:.4f}–{scene_stats[1]:.4f}), random unit quaternions, "
        f"opacities sigmoid(N(1, 1.5)) (median {scene_stats[2]:.2f}), uniform RGB; white "
        f"background.",
        f"- cameras: VideoMV text orbit, {args.views} views, elevation {args.elevation:g}°, "
        f"distance {args.distance:g}, fovy {args.fovy:g}°, square images.",
        "",
        "| Gaussians | image | views | intersections | capacity | max tile load "
        "| compile fwd (s) | fwd (ms) | compile fwd+bwd (s) | fwd+bwd (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in tiled:
        lines.append(
            f"| {r.gaussians:,} | {r.size}² | {r.views} | {r.intersections:,} | {r.capacity:,} "
            f"| {r.max_tile_load:,} | {r.compile_fwd_s:.1f} | {fmt_ms(r.fwd_s)} "
            f"| {r.compile_fb_s:.1f} | {fmt_ms(r.fwd_bwd_s)} |")
    lines += ["", "Reference comparison (forward):", "",
              "| configuration | method | forward (s) | how | tiled fwd (s) | speed-up "
              "| max abs Δ vs tiled |",
              "|---|---|---:|---|---:|---:|---:|"]
    ref_cfg = f"{args.reference_gaussians:,} × {args.views} × {args.reference_size}²"
    ref_tiled = next((r for r in tiled if r.gaussians == args.reference_gaussians
                      and r.size == args.reference_size), None)
    if reference is None:
        lines.append(f"| {ref_cfg} | `render_reference` (jit) | — | skipped (--no-reference) "
                     "| — | — | — |")
    else:
        speedup = reference.seconds_all_views / ref_tiled.fwd_s
        if (args.reference_gaussians, args.views, args.reference_size) != GOAL_CONFIG:
            goal = "the 20× goal is set at 16,384 × 24 × 256²"
        else:
            goal = "goal ≥ 20× met" if speedup >= 20 else "**below the 20× goal**"
        lines.append(
            f"| {ref_cfg} | `render_reference` (jit, exact) | {reference.seconds_all_views:.2f} "
            f"| {reference.how} | {ref_tiled.fwd_s:.3f} | **{speedup:,.1f}×** ({goal}) "
            f"| {reference.max_abs_diff:.2e} |")
    tiled_ref_s = f"{ref_tiled.fwd_s:.3f}" if ref_tiled else "—"
    if isinstance(torch_ref, float) and ref_tiled:
        lines.append(f"| {ref_cfg} | gsplat `_rasterization` (PyTorch) | {torch_ref:.2f} "
                     f"| measured, median | {tiled_ref_s} | {torch_ref / ref_tiled.fwd_s:,.1f}× "
                     f"| — |")
    else:
        lines.append(f"| {ref_cfg} | gsplat `_rasterization` (PyTorch) | — | skipped: "
                     f"{torch_ref} | {tiled_ref_s} | — | — |")
    lines.append("")
    if gsplat_rows:
        lines += ["gsplat CUDA rasterizer (`gsplat.rasterization`, its own default thresholds; "
                  "ratio = JAX time / gsplat time):", "",
                  "| Gaussians | image | gsplat fwd (ms) | JAX fwd (ms) | ratio fwd "
                  "| gsplat fwd+bwd (ms) | JAX fwd+bwd (ms) | ratio fwd+bwd |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r, g in gsplat_rows:
            if isinstance(g, str):
                lines.append(f"| {r.gaussians:,} | {r.size}² | failed: {g} | {fmt_ms(r.fwd_s)} "
                             f"| — | — | {fmt_ms(r.fwd_bwd_s)} | — |")
                continue
            gf, gfb = g
            lines.append(f"| {r.gaussians:,} | {r.size}² | {fmt_ms(gf)} | {fmt_ms(r.fwd_s)} "
                         f"| {r.fwd_s / gf:.2f} | {fmt_ms(gfb)} | {fmt_ms(r.fwd_bwd_s)} "
                         f"| {r.fwd_bwd_s / gfb:.2f} |")
    else:
        lines.append(f"gsplat CUDA rasterizer: not timed ({gsplat_note}).")
    return "\n".join(lines) + "\n"




# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small smoke run (64², 1,024 Gaussians, 4 views, 2 reps); prints only "
                        "unless --out is given")
    p.add_argument("--sizes", type=int, nargs="+", help="square image sizes (default 256 512)")
    p.add_argument("--gaussians", type=int, nargs="+",
                   help="Gaussian counts (default 16384 65536)")
    p.add_argument("--views", type=int, help="views of the orbit (default 24)")
    p.add_argument("--reps", type=int, help="timed repetitions per measurement (default 3)")
    p.add_argument("--settings", default="inria", choices=("inria", "gsplat"),
                   help="rasterizer preset (default inria, what LGM/VideoMV use)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--elevation", type=float, default=TEXT_TO_MV.elevation_deg)
    p.add_argument("--distance", type=float, default=TEXT_TO_MV.distance)
    p.add_argument("--fovy", type=float, default=DEFAULT_FOVY_DEG)
    p.add_argument("--no-reference", action="store_true", help="skip the exact reference")
    p.add_argument("--reference-gaussians", type=int,
                   help="N of the reference comparison (default: first of --gaussians)")
    p.add_argument("--reference-size", type=int,
                   help="image size of the reference comparison (default: first of --sizes)")
    p.add_argument("--reference-views", type=int, default=2,
                   help="views the reference is timed on first (default 2)")
    p.add_argument("--reference-budget", type=float,
                   help="render all views with the reference only if predicted to take at most "
                        "this many seconds, else extrapolate (default 180; quick 60)")
    p.add_argument("--pixel-block", type=int, default=65536,
                   help="pixels per block of the reference (bounds its memory; default 65536)")
    p.add_argument("--no-gsplat", action="store_true", help="do not try gsplat at all")
    p.add_argument("--gsplat-jit", action="store_true",
                   help="allow gsplat to JIT-compile its CUDA extension (minutes)")
    p.add_argument("--out", type=Path,
                   help=f"Markdown file to append to (default {DEFAULT_OUT}; --quick: none)")
    p.add_argument("--no-write", action="store_true", help="print only, append nothing")
    args = p.parse_args(argv)
    quick = args.quick
    args.sizes = args.sizes or ([64] if quick else [256, 512])
    args.gaussians = args.gaussians or ([1024] if quick else [16384, 65536])
    args.views = args.views or (4 if quick else 24)
    args.reps = args.reps or (2 if quick else 3)
    if args.reference_budget is None:
        args.reference_budget = 60.0 if quick else 180.0
    args.reference_gaussians = args.reference_gaussians or args.gaussians[0]
    args.reference_size = args.reference_size or args.sizes[0]
    if args.out is None and not quick:
        args.out = DEFAULT_OUT
    if args.no_write:
        args.out = None
    for name in ("sizes", "gaussians"):
        if any(v < 1 for v in getattr(args, name)):
            p.error(f"--{name} must be positive")
    if args.views < 1 or args.reps < 1:
        p.error("--views and --reps must be positive")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    configs = [(n, s) for n in args.gaussians for s in args.sizes]
    ref_cfg = (args.reference_gaussians, args.reference_size)
    if not args.no_reference and ref_cfg not in configs:
        configs.append(ref_cfg)
    dev = jax.devices()[0]
    log(f"device: {dev.device_kind} ({dev.platform}); configs: {configs}")

    want_gsplat = not args.no_gsplat
    backend_ok, backend_note = gsplat_backend_status(args.gsplat_jit) if want_gsplat else (
        False, "--no-gsplat")
    cuda = want_gsplat and torch_cuda_available()
    if not want_gsplat:
        gsplat_note = "--no-gsplat"
    elif not cuda:
        gsplat_note = "no CUDA device visible to PyTorch"
    elif not backend_ok:
        gsplat_note = backend_note
    else:
        gsplat_note = ""
    run_gsplat_cuda = cuda and backend_ok

    tiled, gsplat_rows, reference = [], [], None
    torch_ref: float | str = "--no-gsplat" if not want_gsplat else "not run"
    if args.no_reference:
        torch_ref = "--no-reference"
    scene_stats = None
    for n in dict.fromkeys(n for n, _ in configs):
        scene = make_scene(n, args.seed)
        if scene_stats is None:
            s = np.asarray(scene.scales)
            scene_stats = (float(np.percentile(s, 5)), float(np.percentile(s, 95)),
                           float(np.median(np.asarray(scene.opacities))))
        for size in [s for m, s in configs if m == n]:
            viewmats, Ks = make_cameras(args.views, size, args.elevation, args.distance,
                                        args.fovy)
            is_ref = (n, size) == ref_cfg and not args.no_reference
            log(f"[{n:,} Gaussians, {args.views} views, {size}²] tiled ...")
            r = bench_tiled(scene, viewmats, Ks, size, args, keep_outputs=is_ref)
            log(f"  {r.intersections:,} intersections (capacity {r.capacity:,}), max tile load "
                f"{r.max_tile_load:,}; fwd {fmt_ms(r.fwd_s)} ms (compile {r.compile_fwd_s:.1f} "
                f"s), fwd+bwd {fmt_ms(r.fwd_bwd_s)} ms (compile {r.compile_fb_s:.1f} s)")
            tiled.append(r)
            if is_ref:
                reference = bench_reference(scene, viewmats, Ks, size, args, r)
                log(f"  reference: {reference.seconds_all_views:.2f} s ({reference.how}), "
                    f"speed-up {reference.seconds_all_views / r.fwd_s:.1f}x, max |diff| "
                    f"{reference.max_abs_diff:.2e}")
                if want_gsplat:
                    if importlib.util.find_spec("nerfacc") is None:
                        torch_ref = ("it needs nerfacc (not installed) and gsplat's CUDA ops "
                                     "(isect_tiles, rasterize_to_indices_in_range)")
                        if not cuda:
                            torch_ref += "; no CUDA device"
                    elif not backend_ok:
                        torch_ref = backend_note
                    else:
                        try:
                            torch_ref = bench_gsplat_torch_reference(
                                scene, viewmats, Ks, size, max(1, min(args.reps, 2)))
                        except Exception as e:  # optional comparison: report, go on
                            torch_ref = short_error(e)
                    log(f"  gsplat _rasterization: {torch_ref}")
                r.colors = r.alphas = None
            if run_gsplat_cuda:
                try:
                    g = bench_gsplat_cuda(scene, viewmats, Ks, size, args.reps, args.seed)
                    log(f"  gsplat CUDA: fwd {fmt_ms(g[0])} ms, fwd+bwd {fmt_ms(g[1])} ms")
                except Exception as e:  # optional comparison: report, go on
                    g = short_error(e)
                    log(f"  gsplat CUDA failed: {g}")
                gsplat_rows.append((r, g))
            jax.clear_caches()

    report = render_report(args, ["python", "benchmarks/rasterize.py", *argv], scene_stats,
                           tiled, reference, gsplat_rows, gsplat_note, torch_ref)
    print(report)
    if args.out is not None:
        append_results(Path(args.out), report)
        log(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
