#!/usr/bin/env python
"""Where does a small LGM's reconstruction quality stop: the network or the Gaussians?

Fits **one** procedural ``shapes`` scene (24 views at 64², grey background) two ways, with the
same activations, rasterizer and loss as ``configs/recon.py``'s tiny recipe (8 random
supervised views rendered at 32², MSE on colour + alpha):

* ``--mode network``: an LGM (``TINY_LGM``, with ``--lgm '{"down_channels": [32, 64, 128], ...}'``
  overrides) trained to overfit the scene from 4 random input views per step;
* ``--mode free``: the same number of Gaussians as free parameters (no network), i.e. the
  ceiling of the representation and the renderer at this resolution.

If the free fit goes far above the network, the network (its size or its training) is the
limit, not the splatting. Prints the mean training PSNR of every 50 steps::

    python tools/lgm_capacity.py --mode network --steps 300
    python tools/lgm_capacity.py --mode free --steps 500 --lr 1e-2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

# the repository root, for ``configs`` (not an installed package) when run as a script
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from videomv_jax.render.gaussians import POSITION_OPTIONS, POSITIONS_RAY  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("network", "free"), default="network")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--scene-seed", type=int, default=0)
    p.add_argument("--lgm", default="{}", help="JSON overrides of TINY_LGM (network mode)")
    p.add_argument("--quat-norm", default="per_gaussian")
    p.add_argument("--positions", default=POSITIONS_RAY, choices=POSITION_OPTIONS,
                   help="LGM position head (network mode; 'absolute' = the released clamp, "
                        "what the card's one-scene numbers used)")
    p.add_argument("--render-size", type=int, default=32)
    p.add_argument("--log-every", type=int, default=50)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from configs.train_common import TINY_LGM
    from videomv_jax.data.shapes import random_scene, render_scene
    from videomv_jax.models.lgm import LGM, LGMConfig, prepare_inputs
    from videomv_jax.render.camera import normalize_poses, orbit_cameras, raster_cameras
    from videomv_jax.render.gaussians import lgm_activations
    from videomv_jax.render.rasterize import rasterize

    size, bg = args.render_size, 0.5
    rgba = jnp.asarray(render_scene(random_scene(args.scene_seed, 2, 0.5), 24, 64, 15.0, 1.645)[0])
    rgb = rgba[..., :3] + (1.0 - rgba[..., 3:]) * bg
    c2w = normalize_poses(jnp.asarray(orbit_cameras(24, 15.0, 1.645)))
    cfg = LGMConfig(**{**TINY_LGM, **json.loads(args.lgm), "quat_norm": args.quat_norm,
                       "positions": args.positions})
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(args.lr))

    def render_loss(gaussians, sup):
        viewmats, ks = raster_cameras(c2w[sup][None], size, size, cfg.fovy)
        out = rasterize(gaussians, viewmats, ks, size, size, background=jnp.full((1, 3), bg),
                        capacity=16 * cfg.num_gaussians * len(sup))
        gt = jax.image.resize(rgb[sup], (len(sup), size, size, 3), "bilinear")
        ga = jax.image.resize(rgba[sup][..., 3], (len(sup), size, size), "bilinear")
        mse = jnp.mean((out.colors[0] - gt) ** 2)
        return mse + jnp.mean((out.alphas[0] - ga) ** 2), mse

    if args.mode == "network":
        model = LGM(cfg, rngs=nnx.Rngs(0))
        n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        print(f"network: {n_params:,} parameters, {cfg.num_gaussians} Gaussians")
        opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

        def loss_fn(model, key):
            perm = jax.random.permutation(key, 24)
            inp, sup = perm[:4], perm[:8]
            g = model.gaussians(prepare_inputs(rgb[inp][None], c2w[inp][None], cfg.fovy))
            return render_loss(g, sup)

        @nnx.jit
        def step(model, opt, key):
            (_, mse), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, key)
            opt.update(model, grads)
            return mse

        run = lambda key: step(model, opt, key)  # noqa: E731
    else:
        n = cfg.num_gaussians
        key = jax.random.PRNGKey(0)
        raw = jnp.concatenate([jax.random.uniform(key, (n, 3), minval=-0.4, maxval=0.4),
                               jnp.zeros((n, 1)), jnp.full((n, 3), -3.0),
                               jnp.tile(jnp.array([[1.0, 0.0, 0.0, 0.0]]), (n, 1)),
                               jnp.zeros((n, 3))], -1)
        print(f"free Gaussians: {n}")
        state = {"raw": raw, "opt": tx.init(raw)}

        @jax.jit
        def free_step(raw, opt_state, key):
            sup = jax.random.permutation(key, 24)[:8]
            loss = lambda r: render_loss(lgm_activations(r[None], args.quat_norm), sup)  # noqa: E731
            (_, mse), grads = jax.value_and_grad(loss, has_aux=True)(raw)
            updates, opt_state = tx.update(grads, opt_state, raw)
            return optax.apply_updates(raw, updates), opt_state, mse

        def run(key):
            state["raw"], state["opt"], mse = free_step(state["raw"], state["opt"], key)
            return mse

    key, history, t0 = jax.random.PRNGKey(1), [], time.time()
    print(f"{'step':>6} {'train PSNR (dB)':>16} {'seconds':>8}")
    for i in range(args.steps):
        key, sub = jax.random.split(key)
        history.append(float(run(sub)))
        if (i + 1) % args.log_every == 0:
            psnr = -10.0 * np.log10(np.mean(history[-args.log_every:]))
            print(f"{i + 1:>6} {psnr:>16.2f} {time.time() - t0:>8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
