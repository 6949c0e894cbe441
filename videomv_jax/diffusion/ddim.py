"""DDIM exactly as VideoMV's released sampler, as pure functions usable inside ``lax.scan``.

Grid: t = 981, 961, …, 21, 1 (``1 + arange(0, T, T // steps)`` reversed); the "previous" ᾱ is
taken at max(t − stride, 0), so the last step uses ᾱ[0] (not 1) and the output keeps a trace of
noise, as released. x̂0 from eps: xt/√ᾱ − √(1/ᾱ − 1)·ε̂; from v: √ᾱ·xt − √(1 − ᾱ)·v̂. Then
ε = (xt/√ᾱ − x̂0)/√(1/ᾱ − 1) and x_prev = √ᾱ_prev·x̂0 + √(1 − ᾱ_prev − σ²)·ε + σ·z with
σ = η·√((1 − ᾱ_prev)/(1 − ᾱ))·√(1 − ᾱ/ᾱ_prev) (η = 0 as released: deterministic).
No clipping or thresholding of x̂0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from videomv_jax.diffusion.schedules import alphas_cumprod

PREDICTIONS = ("eps", "v")


@struct.dataclass
class DDIMSchedule:
    """Per-step constants of a DDIM run (index i = 0 is the first, noisiest step)."""

    timesteps: jax.Array  # [S] int32, 981 … 1
    alpha: jax.Array  # [S] ᾱ at each step's t
    alpha_prev: jax.Array  # [S] ᾱ at max(t − stride, 0)
    prediction: str = struct.field(pytree_node=False, default="eps")


def make_schedule(schedule: str = "linear_sd", num_steps: int = 50, num_timesteps: int = 1000,
                  prediction: str = "eps", zero_terminal_snr: bool | None = None) -> DDIMSchedule:
    """The released DDIM grid over ``num_timesteps`` with ``num_steps`` steps."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
    if num_timesteps % num_steps:
        divisors = [d for d in (10, 20, 25, 40, 50, 100, 125, 200, 250) if num_timesteps % d == 0]
        raise ValueError(f"the released DDIM grid needs num_steps to divide num_timesteps "
                         f"({num_timesteps}); got {num_steps}. Use e.g. one of {divisors}")
    ab = alphas_cumprod(schedule, num_timesteps, zero_terminal_snr)
    stride = num_timesteps // num_steps
    steps = (1 + np.arange(0, num_timesteps, stride))[::-1][:num_steps]
    prev = np.maximum(steps - stride, 0)
    return DDIMSchedule(jnp.asarray(steps, jnp.int32), jnp.asarray(ab[steps], jnp.float32),
                        jnp.asarray(ab[prev], jnp.float32), prediction)


def predict_x0(xt: jax.Array, model_out: jax.Array, alpha: jax.Array, prediction: str):
    """x̂0 from the model output (eps or v) at ᾱ = ``alpha``."""
    if prediction == "eps":
        return xt / jnp.sqrt(alpha) - jnp.sqrt(1.0 / alpha - 1.0) * model_out
    if prediction == "v":
        return jnp.sqrt(alpha) * xt - jnp.sqrt(1.0 - alpha) * model_out
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")


def eps_from_x0(xt: jax.Array, x0: jax.Array, alpha: jax.Array) -> jax.Array:
    return (xt / jnp.sqrt(alpha) - x0) / jnp.sqrt(1.0 / alpha - 1.0)


def ddim_update(xt: jax.Array, x0: jax.Array, alpha: jax.Array, alpha_prev: jax.Array,
                eta: float = 0.0, noise: jax.Array | None = None) -> jax.Array:
    """One DDIM update from x_t to x_prev given the (possibly replaced) clean estimate x0."""
    eps = eps_from_x0(xt, x0, alpha)
    sigma = eta * jnp.sqrt((1 - alpha_prev) / (1 - alpha)) * jnp.sqrt(1 - alpha / alpha_prev)
    x_prev = jnp.sqrt(alpha_prev) * x0 + jnp.sqrt(1 - alpha_prev - sigma ** 2) * eps
    if noise is not None:
        x_prev = x_prev + sigma * noise
    elif eta != 0.0:
        raise ValueError("eta > 0 needs noise for the stochastic term")
    return x_prev


def guidance(uncond: jax.Array, cond: jax.Array, scale: float | jax.Array) -> jax.Array:
    """Classifier-free guidance out_u + s·(out_c − out_u)."""
    return uncond + scale * (cond - uncond)


def q_sample(x0: jax.Array, noise: jax.Array, alpha: jax.Array) -> jax.Array:
    """Forward process x_t = √ᾱ·x0 + √(1 − ᾱ)·ε (training)."""
    return jnp.sqrt(alpha) * x0 + jnp.sqrt(1 - alpha) * noise


def v_target(x0: jax.Array, noise: jax.Array, alpha: jax.Array) -> jax.Array:
    """v = √ᾱ·ε − √(1 − ᾱ)·x0 (the image→MV training target)."""
    return jnp.sqrt(alpha) * noise - jnp.sqrt(1 - alpha) * x0
