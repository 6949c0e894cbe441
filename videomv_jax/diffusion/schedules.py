"""Noise schedules of the two VideoMV variants (computed in float64, returned as float32).

* ``linear_sd`` (text→MV, eps prediction): betas = linspace(√0.00085, √0.012, T)².
* ``cosine`` (image→MV, v prediction): the improved-DDPM cosine ᾱ(t) = cos²((t/T + s)/(1 + s)·π/2)
  with s = 0.008 and betas clipped at 0.999, then rescaled to **zero terminal SNR** (√ᾱ shifted
  and scaled so that ᾱ[T−1] = 0 while ᾱ[0] is unchanged).
"""

from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("linear_sd", "cosine")


def linear_sd_betas(num_timesteps: int = 1000, start: float = 0.00085,
                    end: float = 0.012) -> np.ndarray:
    return np.linspace(start ** 0.5, end ** 0.5, num_timesteps, dtype=np.float64) ** 2


def cosine_betas(num_timesteps: int = 1000, s: float = 0.008,
                 max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(t: float) -> float:
        return math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

    return np.array([min(1.0 - alpha_bar(i + 1) / alpha_bar(i), max_beta)
                     for i in range(num_timesteps)], dtype=np.float64)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescale betas so the last timestep has zero SNR (ᾱ[T−1] = 0), keeping ᾱ[0]."""
    sqrt_ab = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alphas_bar = sqrt_ab ** 2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1.0 - alphas


def alphas_cumprod(schedule: str, num_timesteps: int = 1000,
                   zero_terminal_snr: bool | None = None) -> np.ndarray:
    """ᾱ[t] for t = 0..T−1 (float64). ``zero_terminal_snr`` defaults to True for ``cosine``
    (as VideoMV's image→MV) and False for ``linear_sd``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}")
    betas = linear_sd_betas(num_timesteps) if schedule == "linear_sd" else cosine_betas(
        num_timesteps)
    if zero_terminal_snr is None:
        zero_terminal_snr = schedule == "cosine"
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return np.cumprod(1.0 - betas)
