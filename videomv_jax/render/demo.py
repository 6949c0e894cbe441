"""A procedural Gaussian asset (a shaded red sphere resting on a blue box), for demos and docs.

It is built directly as Gaussians (z-up world, object inside [-0.5, 0.5]³) so that the renderer,
the turntable and the `.ply` path can be shown without any trained model.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from videomv_jax.render.gaussians import Gaussians

__all__ = ["sphere_on_box"]

_LIGHT = np.array([0.4, -0.5, 0.77]) / np.linalg.norm([0.4, -0.5, 0.77])


def _shade(base: np.ndarray, normals: np.ndarray) -> np.ndarray:
    lambert = np.clip(normals @ _LIGHT, 0.0, 1.0)[:, None]
    return np.clip(base[None, :] * (0.45 + 0.55 * lambert), 0.0, 1.0)


def sphere_on_box(num_gaussians: int = 16384, seed: int = 0) -> Gaussians:
    """Surface Gaussians of a red sphere (radius 0.22) on a blue box (0.6 × 0.6 × 0.3)."""
    rng = np.random.default_rng(seed)
    n_sphere = num_gaussians // 2
    n_box = num_gaussians - n_sphere

    normals_s = rng.normal(size=(n_sphere, 3))
    normals_s /= np.linalg.norm(normals_s, axis=1, keepdims=True)
    centre = np.array([0.0, 0.0, 0.07 + 0.22])
    means_s = centre + 0.22 * normals_s

    half = np.array([0.3, 0.3, 0.15])
    centre_b = np.array([0.0, 0.0, -0.08])
    areas = 4 * np.array([half[1] * half[2], half[0] * half[2], half[0] * half[1]])
    axis = rng.choice(3, size=n_box, p=areas / areas.sum())
    sign = rng.choice([-1.0, 1.0], size=n_box)
    uv = rng.uniform(-1.0, 1.0, size=(n_box, 3))
    uv[np.arange(n_box), axis] = sign
    means_b = centre_b + uv * half
    normals_b = np.zeros((n_box, 3))
    normals_b[np.arange(n_box), axis] = sign

    means = np.concatenate([means_s, means_b])
    colors = np.concatenate([_shade(np.array([0.85, 0.12, 0.1]), normals_s),
                             _shade(np.array([0.1, 0.25, 0.85]), normals_b)])
    scales = np.full((num_gaussians, 3), 0.012) * rng.uniform(0.8, 1.2, (num_gaussians, 1))
    quats = np.tile([1.0, 0.0, 0.0, 0.0], (num_gaussians, 1))
    opacities = np.full((num_gaussians,), 0.95)
    return Gaussians(*(jnp.asarray(a, jnp.float32)
                       for a in (means, scales, quats, opacities, colors)))
