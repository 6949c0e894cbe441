"""Slow, exact rasterizer: every pixel composites every Gaussian in depth order.

This is the oracle the tiled rasterizer is tested (and benchmarked) against. It shares the
projection of :mod:`videomv_jax.render.rasterize` (checked separately against gsplat's PyTorch
reference) but none of the binning, sorting buffers, chunking or custom gradient: a pixel visits
all N Gaussians, sorted by depth with a stable sort, in a :func:`jax.lax.scan` that mirrors the
per-pixel loop of the CUDA rasterizers line by line (skip α < alpha_min or σ < 0, stop before the
splat that takes the transmittance below ``transmittance_min``). A Gaussian reaches a pixel only
if the pixel's tile lies in the Gaussian's tile rectangle — exactly the 3DGS rule.

Gradients come from plain JAX autodiff through the scan. Works in float64 (enable x64 and pass
float64 arrays). Memory is O(pixels) per scan step; pixels can be processed in blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from videomv_jax.render.gaussians import Gaussians
from videomv_jax.render.rasterize import (
    RasterSettings,
    covariance_3d,
    get_settings,
    project_gaussians,
    tile_rects,
)

__all__ = ["render_reference", "render_reference_view"]


def render_reference_view(
    gaussians: Gaussians,
    viewmat: jax.Array,
    K: jax.Array,
    width: int,
    height: int,
    background: jax.Array | None = None,
    settings: str | RasterSettings = "inria",
    pixel_block: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Render one unbatched scene into one camera: colour [H, W, C], alpha [H, W], depth [H, W].

    ``pixel_block`` processes that many pixels at a time (memory), ``None`` = all at once.
    """
    settings = get_settings(settings)
    dtype = gaussians.means.dtype
    channels = gaussians.colors.shape[-1]
    bg = jnp.zeros((channels,), dtype) if background is None else jnp.asarray(background, dtype)
    covars = covariance_3d(gaussians.scales, gaussians.rotations, settings.normalize_quaternions)
    p = project_gaussians(gaussians.means, covars, viewmat, K, width, height, settings)
    rects = tile_rects(p.means2d, p.radii, width, height, settings)
    visible = (rects[:, 1] > rects[:, 0]) & (rects[:, 3] > rects[:, 2])
    order = jnp.argsort(jnp.where(visible, lax.stop_gradient(p.depths), jnp.inf), stable=True)

    ys, xs = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    ts = settings.tile_size
    per_gaussian = (
        p.means2d[order], p.conics[order], gaussians.opacities[order], gaussians.colors[order],
        p.depths[order], rects[order], visible[order],
    )

    def render_pixels(pix):
        px, py = pix
        tx, ty = px // ts, py // ts
        sx = px.astype(dtype) + settings.pixel_center
        sy = py.astype(dtype) + settings.pixel_center
        n_px = px.shape[0]

        def step(carry, g):
            trans, color, depth, done = carry
            mean, conic, opacity, rgb, z, rect, vis = g
            member = vis & (tx >= rect[0]) & (tx < rect[1]) & (ty >= rect[2]) & (ty < rect[3])
            dx, dy = mean[0] - sx, mean[1] - sy
            sigma = 0.5 * (conic[0] * dx * dx + conic[2] * dy * dy) + conic[1] * dx * dy
            alpha = jnp.minimum(settings.alpha_max, opacity * jnp.exp(-sigma))
            use = member & ~done & (sigma >= 0) & (alpha >= settings.alpha_min)
            test = trans * (1.0 - alpha)
            stop = use & (test < settings.transmittance_min)
            add = use & ~stop
            w = jnp.where(add, alpha * trans, 0.0)
            color = color + w[:, None] * rgb[None, :]
            depth = depth + w * z
            trans = jnp.where(add, test, trans)
            return (trans, color, depth, done | stop), None

        init = (jnp.ones((n_px,), dtype), jnp.zeros((n_px, channels), dtype),
                jnp.zeros((n_px,), dtype), jnp.zeros((n_px,), bool))
        (trans, color, depth, _), _ = lax.scan(step, init, per_gaussian)
        return color + trans[:, None] * bg, 1.0 - trans, depth

    if pixel_block is None or pixel_block >= xs.shape[0]:
        color, alpha, depth = render_pixels((xs, ys))
    else:
        n_blocks = -(-xs.shape[0] // pixel_block)
        pad = n_blocks * pixel_block - xs.shape[0]
        blocks = (jnp.pad(xs, (0, pad)).reshape(n_blocks, pixel_block),
                  jnp.pad(ys, (0, pad)).reshape(n_blocks, pixel_block))
        color, alpha, depth = lax.map(render_pixels, blocks)
        color = color.reshape(-1, channels)[: xs.shape[0]]
        alpha, depth = alpha.reshape(-1)[: xs.shape[0]], depth.reshape(-1)[: xs.shape[0]]
    return (color.reshape(height, width, channels), alpha.reshape(height, width),
            depth.reshape(height, width))


def render_reference(
    gaussians: Gaussians,
    viewmats: jax.Array,
    Ks: jax.Array,
    width: int,
    height: int,
    background: jax.Array | None = None,
    settings: str | RasterSettings = "inria",
    pixel_block: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Reference render of one scene into V cameras ([V, 4, 4], [V, 3, 3]); views run in turn."""
    settings = get_settings(settings)

    def one(cam):
        vm, k = cam
        return render_reference_view(gaussians, vm, k, width, height, background, settings,
                                     pixel_block)

    return lax.map(one, (viewmats, Ks))
