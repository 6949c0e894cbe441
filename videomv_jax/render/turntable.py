"""Render a Gaussian asset around the VideoMV orbit: the views, a grid and a turntable video."""

from __future__ import annotations

import jax.numpy as jnp

from videomv_jax.render import camera
from videomv_jax.render.gaussians import Gaussians
from videomv_jax.render.rasterize import RasterSettings, RenderOutput, rasterize

__all__ = ["render_orbit"]


def render_orbit(
    gaussians: Gaussians,
    num_views: int = camera.NUM_VIEWS,
    elevation_deg: float = camera.TEXT_TO_MV.elevation_deg,
    distance: float = camera.TEXT_TO_MV.distance,
    resolution: int = 256,
    fovy_deg: float = camera.DEFAULT_FOVY_DEG,
    background=(1.0, 1.0, 1.0),
    settings: str | RasterSettings = "inria",
) -> RenderOutput:
    """Render ``gaussians`` (z-up world, as VideoMV) from the VideoMV orbit.

    View k looks at the origin from azimuth 15·k° (for 24 views) at the given elevation and
    distance; images are ``resolution``² with ``fovy_deg`` vertical field of view. Returns the
    rasterizer output ([V, H, W, C] colours, alphas, depths, buffer diagnostics).
    """
    c2w = camera.orbit_cameras(num_views, elevation_deg=elevation_deg, distance=distance)
    viewmats, ks = camera.raster_cameras(c2w, resolution, resolution, fovy_deg)
    return rasterize(gaussians, viewmats, ks, resolution, resolution,
                     background=jnp.asarray(background, gaussians.means.dtype), settings=settings)
