"""Sinusoidal embeddings shared by the UNets (timestep, fps)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def sinusoidal_embedding(
    positions: jax.Array, dim: int, max_period: float = 10000.0, cos_first: bool = True
) -> jax.Array:
    """[...] positions → [..., dim] with frequencies ``max_period^(−i/half)``, i < half.

    ``cos_first=True`` gives ``[cos, sin]`` (VGen's ``sinusoidal_embedding`` and diffusers'
    ``Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)``). Odd ``dim`` is zero-padded.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(positions, jnp.float32)[..., None] * freqs
    parts = [jnp.cos(args), jnp.sin(args)] if cos_first else [jnp.sin(args), jnp.cos(args)]
    emb = jnp.concatenate(parts, axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, 1)])
    return emb
