"""What the two-pass normalisation statistics cost: the package's GroupNorm / LayerNorm
(``videomv_jax.nn.layers``: two passes, ``E[(x − μ)²]`` with a corrected mean) against Flax's
default one-pass layers (``E[x²] − E[x]²``) and PyTorch's, on activations of the sizes the models
normalise (VAE encoder at 256², UNet transformer and LayerNorm at 24 × 32² latents), forward and
forward + backward.

    python benchmarks/norms.py            # full sizes, appends to benchmarks/RESULTS.md
    python benchmarks/norms.py --quick    # small sizes, prints only
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from common import append_results, core_count, cpu_model, fmt_ms, log, time_compiled
from flax import nnx

from videomv_jax.nn.layers import GroupNorm, LayerNorm

# (name, kind, input shape channels-last, groups)
CASES_FULL = [
    ("VAE encoder GroupNorm, 256² × 128", "group", (1, 256, 256, 128), 32),
    ("UNet GroupNorm, 24 × 32² × 320", "group", (24, 32, 32, 320), 32),
    ("UNet LayerNorm, 24·32² tokens × 320", "layer", (24 * 1024, 320), None),
]
CASES_QUICK = [
    ("GroupNorm, 32² × 64", "group", (1, 32, 32, 64), 8),
    ("LayerNorm, 1024 tokens × 64", "layer", (1024, 64), None),
]


def _layers(kind: str, channels: int, groups: int | None):
    if kind == "group":
        return (GroupNorm(channels, groups, 1e-6, rngs=nnx.Rngs(0)),
                nnx.GroupNorm(channels, num_groups=groups, epsilon=1e-6, rngs=nnx.Rngs(0)))
    return (LayerNorm(channels, 1e-5, rngs=nnx.Rngs(0)),
            nnx.LayerNorm(channels, epsilon=1e-5, rngs=nnx.Rngs(0)))


def _jax_times(layer, x, reps: int) -> tuple[float, float]:
    graphdef, state = nnx.split(layer)

    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    def loss(state, x):
        return jnp.sum(forward(state, x) ** 2)

    _, fwd, _, _ = time_compiled(forward, (state, x), reps)
    _, bwd, _, _ = time_compiled(jax.grad(loss, argnums=(0, 1)), (state, x), reps)
    return fwd, bwd


def _torch_times(kind: str, shape, groups, x: np.ndarray, reps: int) -> tuple[float, float]:
    import torch

    channels = shape[-1]
    if kind == "group":
        layer = torch.nn.GroupNorm(groups, channels, eps=1e-6)
        xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    else:
        layer = torch.nn.LayerNorm(channels, eps=1e-5)
        xt = torch.from_numpy(x)

    def timed(fn):
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def fwd():
        with torch.no_grad():
            layer(xt)

    xg = xt.clone().requires_grad_(True)

    def bwd():
        layer.zero_grad()
        (layer(xg) ** 2).sum().backward()

    return timed(fwd), timed(bwd)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, print only")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    p.add_argument("--out", type=Path, default=Path("benchmarks/RESULTS.md"))
    p.add_argument("--no-write", action="store_true", help="print only, append nothing")
    args = p.parse_args(argv)
    cases = CASES_QUICK if args.quick else CASES_FULL
    use_torch = not args.no_torch
    if use_torch:
        try:
            import torch

            torch_threads = torch.get_num_threads()
        except ImportError:
            use_torch, torch_threads = False, 0

    rows = []
    for name, kind, shape, groups in cases:
        log(f"{name} ...")
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32) + 0.5
        two_pass, one_pass = _layers(kind, shape[-1], groups)
        tf, tb = _jax_times(two_pass, jnp.asarray(x), args.reps)
        of, ob = _jax_times(one_pass, jnp.asarray(x), args.reps)
        pf, pb = _torch_times(kind, shape, groups, x, args.reps) if use_torch else (None, None)
        rows.append((name, tf, of, tb, ob, pf, pb))

    dev = jax.devices()[0]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"## Normalisation statistics: two-pass vs one-pass — {datetime.date.today()}",
        "",
        f"Machine: {cpu_model()}, {core_count()} cores, load average {load:.1f} at the end; "
        f"device {dev.device_kind} ({dev.platform}); jax {jax.__version__}, jaxlib "
        f"{jaxlib.__version__}; torch threads {torch_threads if use_torch else '—'}. "
        f"Median of {args.reps} jitted calls (ms). Command: "
        f"`{shlex.join(['python', 'benchmarks/norms.py', *argv])}`.",
        "",
        "| activation | two-pass fwd | one-pass fwd | ratio | two-pass fwd+bwd | one-pass fwd+bwd "
        "| ratio | torch fwd | torch fwd+bwd | two-pass / torch fwd |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, tf, of, tb, ob, pf, pb in rows:
        torch_cols = (f"{fmt_ms(pf)} | {fmt_ms(pb)} | {tf / pf:.2f}" if pf is not None
                      else "— | — | —")
        lines.append(f"| {name} | {fmt_ms(tf)} | {fmt_ms(of)} | {tf / of:.2f} | {fmt_ms(tb)} | "
                     f"{fmt_ms(ob)} | {tb / ob:.2f} | {torch_cols} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if not (args.quick or args.no_write):
        append_results(args.out, report)
        log(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
