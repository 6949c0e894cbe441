"""Image metrics (PSNR, SSIM, LPIPS) and confidence intervals for the evaluation suite.

Conventions: images are float ``[..., H, W, 3]`` in ``[0, 1]`` (channels last), already
composited on the evaluation background (white unless stated). Every image metric reduces over
the last three axes and keeps the leading ones, so ``[V, H, W, 3]`` views give ``[V]`` per-view
values; averaging over views and samples is done by the caller (:func:`summarize`).

* :func:`psnr` — ``-10 log10(MSE)`` with data range 1. Identical images give ``+inf``;
  :func:`summarize` caps values at :data:`PSNR_CAP_DB` before averaging and counts them.
* :func:`ssim` — Wang et al. 2004 with an 11-tap Gaussian window (sigma 1.5), K1 0.01,
  K2 0.03, population (co)variances, per channel, *valid* filtering (no padding), mean over
  pixels and channels. This equals ``skimage.metrics.structural_similarity(x, y,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1,
  channel_axis=-1)`` (skimage filters with reflection padding and then crops the 5-pixel
  border, which leaves exactly the valid region).
* :func:`lpips` — wraps any callable ``lpips_fn(x, y) -> [B]`` taking NHWC images in
  ``[-1, 1]`` (:class:`videomv_jax.models.lpips.LPIPS`); the wrapper maps ``[0, 1]`` to
  ``[-1, 1]`` and restores the leading axes. Without weights the suite reports LPIPS as
  unavailable (``None``), never a substitute number.

Statistics (NumPy, float64): :func:`mean_ci` (Student-t interval of the mean),
:func:`paired_ci` (t interval of the mean paired difference ``a - b``, e.g. 3D-aware minus plain
from the same noise, with the two-sided paired t-test p-value) and :func:`bootstrap_ci`
(percentile bootstrap, seeded).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "LPIPSFn",
    "PSNR_CAP_DB",
    "SMALL_N",
    "metric_range",
    "SSIM_K1",
    "SSIM_K2",
    "SSIM_SIGMA",
    "SSIM_WIN",
    "bootstrap_ci",
    "gaussian_window",
    "image_metrics",
    "lpips",
    "mean_ci",
    "mse",
    "paired_ci",
    "psnr",
    "ssim",
    "summarize",
]

LPIPSFn = Callable[[jax.Array, jax.Array], jax.Array]
"""``lpips_fn(x, y) -> [B]`` distances for NHWC images ``x, y`` in ``[-1, 1]``."""

PSNR_CAP_DB: float = 100.0
"""PSNR values above this (identical images give +inf) are capped before averaging."""

SSIM_WIN: int = 11
SSIM_SIGMA: float = 1.5
SSIM_K1: float = 0.01
SSIM_K2: float = 0.03


def _check_images(x: Any, y: Any, name: str) -> tuple[jax.Array, jax.Array]:
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.shape != y.shape:
        raise ValueError(f"{name}: images must have the same shape, got {x.shape} and {y.shape}")
    if x.ndim < 3:
        raise ValueError(f"{name}: images must be [..., H, W, C], got shape {x.shape}")
    dtype = jnp.result_type(x.dtype, y.dtype, jnp.float32)
    return x.astype(dtype), y.astype(dtype)


def mse(x: Any, y: Any) -> jax.Array:
    """Mean squared error over the last three axes ``[H, W, C]`` → ``[...]``."""
    x, y = _check_images(x, y, "mse")
    return jnp.mean(jnp.square(x - y), axis=(-3, -2, -1))


def psnr(x: Any, y: Any) -> jax.Array:
    """PSNR in dB with data range 1 over ``[H, W, C]`` → ``[...]``; ``+inf`` for identical."""
    return -10.0 * jnp.log10(mse(x, y))


def gaussian_window(size: int = SSIM_WIN, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian taps ``[size]`` (float64), centred; SSIM's separable window."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    w = np.exp(-0.5 * (r / sigma) ** 2)
    return w / w.sum()


def _filter_valid(x: jax.Array, taps: np.ndarray) -> jax.Array:
    """Separable depthwise 'valid' filtering of ``[N, H, W, C]`` with ``taps`` on H and W."""
    c = x.shape[-1]
    k = len(taps)
    t = jnp.asarray(taps, x.dtype)
    dn = ("NHWC", "HWIO", "NHWC")
    kh = jnp.broadcast_to(t.reshape(k, 1, 1, 1), (k, 1, 1, c))
    kw = jnp.broadcast_to(t.reshape(1, k, 1, 1), (1, k, 1, c))
    hi = lax.Precision.HIGHEST
    x = lax.conv_general_dilated(x, kh, (1, 1), "VALID", dimension_numbers=dn,
                                 feature_group_count=c, precision=hi)
    return lax.conv_general_dilated(x, kw, (1, 1), "VALID", dimension_numbers=dn,
                                    feature_group_count=c, precision=hi)


def ssim(x: Any, y: Any, win_size: int = SSIM_WIN, sigma: float = SSIM_SIGMA,
         k1: float = SSIM_K1, k2: float = SSIM_K2, data_range: float = 1.0) -> jax.Array:
    """Mean SSIM over ``[H, W, C]`` → ``[...]`` (Gaussian window, valid region; see module doc).

    Needs ``H, W >= win_size``. Identical images give exactly 1.
    """
    x, y = _check_images(x, y, "ssim")
    *lead, h, w, c = x.shape
    if h < win_size or w < win_size:
        raise ValueError(f"ssim needs images of at least {win_size}x{win_size} pixels (the "
                         f"window), got {h}x{w}")
    x = x.reshape(-1, h, w, c)
    y = y.reshape(-1, h, w, c)
    # (co)variances are shift invariant: filter images shifted by their joint per-channel mean
    # to limit float32 cancellation in E[x^2] - E[x]^2; the means are shifted back.
    m = 0.5 * jnp.mean(x + y, axis=(1, 2), keepdims=True)
    xs, ys = x - m, y - m
    stack = jnp.concatenate([xs, ys, xs * xs, ys * ys, xs * ys], axis=-1)
    f = _filter_valid(stack, gaussian_window(win_size, sigma))
    ux, uy, uxx, uyy, uxy = jnp.split(f, 5, axis=-1)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    ux, uy = ux + m, uy + m
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return jnp.mean(s, axis=(-3, -2, -1)).reshape(lead)


def lpips(x: Any, y: Any, lpips_fn: LPIPSFn, batch_size: int | None = None) -> jax.Array:
    """LPIPS distances ``[...]`` of images ``[..., H, W, 3]`` in ``[0, 1]`` via ``lpips_fn``.

    The images are mapped to ``[-1, 1]`` and flattened to a batch (processed ``batch_size`` at
    a time when given, to bound memory).
    """
    x, y = _check_images(x, y, "lpips")
    *lead, h, w, c = x.shape
    xb = x.reshape(-1, h, w, c) * 2.0 - 1.0
    yb = y.reshape(-1, h, w, c) * 2.0 - 1.0
    n = xb.shape[0]
    step = n if not batch_size else int(batch_size)
    outs = []
    for i in range(0, n, step):
        d = jnp.asarray(lpips_fn(xb[i:i + step], yb[i:i + step]))
        outs.append(d.reshape(-1))
    d = jnp.concatenate(outs) if len(outs) > 1 else outs[0]
    if d.shape[0] != n:
        raise ValueError(f"lpips_fn returned {d.shape[0]} distances for a batch of {n}")
    return d.reshape(lead)


def image_metrics(x: Any, y: Any, lpips_fn: LPIPSFn | None = None,
                  lpips_batch: int | None = None) -> dict[str, np.ndarray | None]:
    """Per-image ``{"psnr", "ssim", "lpips"}`` as float64 NumPy arrays ``[...]`` for images
    ``[..., H, W, 3]`` in ``[0, 1]``; ``"lpips"`` is ``None`` without ``lpips_fn``."""
    out: dict[str, np.ndarray | None] = {
        "psnr": np.asarray(_psnr_jit(x, y), np.float64),
        "ssim": np.asarray(_ssim_jit(x, y), np.float64),
        "lpips": None,
    }
    if lpips_fn is not None:
        out["lpips"] = np.asarray(lpips(x, y, lpips_fn, lpips_batch), np.float64)
    return out


_psnr_jit = jax.jit(psnr)
_ssim_jit = jax.jit(ssim)


# ---- statistics ---------------------------------------------------------------------------------


def _as_values(values: Any, name: str = "values") -> np.ndarray:
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError(f"{name} is empty")
    if np.any(np.isnan(v)):
        raise ValueError(f"{name} contains NaN")
    return v


def _t_quantile(q: float, dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, dof))


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """Student-t confidence interval of the mean.

    ``mean ± t_{(1+c)/2, n-1} · s / sqrt(n)`` with ``s`` the sample standard deviation
    (ddof 1). Returns ``{"mean", "low", "high", "half_width", "std", "n", "confidence"}``;
    with ``n == 1`` (or infinite values) the interval bounds are ``None``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v = _as_values(values)
    n = v.size
    mean = float(v.mean())
    out: dict[str, Any] = {"mean": mean, "low": None, "high": None, "half_width": None,
                           "std": None, "n": n, "confidence": confidence}
    if n >= 2 and np.all(np.isfinite(v)):
        s = float(v.std(ddof=1))
        hw = _t_quantile(0.5 + confidence / 2.0, n - 1) * s / math.sqrt(n)
        out.update(std=s, half_width=hw, low=mean - hw, high=mean + hw)
    return out


def paired_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
              confidence: float = 0.95, metric: str = "") -> dict[str, Any]:
    """CI of the mean paired difference ``a - b`` (same samples, e.g. the same noise) plus the
    two-sided paired t-test ``p_value`` (``None`` when undefined: n < 2 or zero variance).
    With ``metric``, ``low`` / ``high`` are clipped to the differences its range allows."""
    a = _as_values(a, "a")
    b = _as_values(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired_ci needs equally many values, got {a.size} and {b.size}")
    d = a - b
    lo, hi = metric_range(metric)
    span = None if lo is None or hi is None else hi - lo
    out = _clip_interval(mean_ci(d, confidence), None if span is None else -span, span)
    out["small_n"] = d.size < SMALL_N
    out["p_value"] = None
    if out["std"]:
        from scipy import stats

        t = out["mean"] / (out["std"] / math.sqrt(d.size))
        out["p_value"] = float(2.0 * stats.t.sf(abs(t), d.size - 1))
    return out


def bootstrap_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95,
                 num_resamples: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Percentile bootstrap interval of the mean (resampling with replacement, seeded)."""
    v = _as_values(values)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(num_resamples, v.size))
    means = v[idx].mean(axis=1)
    lo, hi = np.quantile(means, [0.5 - confidence / 2.0, 0.5 + confidence / 2.0])
    return {"mean": float(v.mean()), "low": float(lo), "high": float(hi), "n": v.size,
            "confidence": confidence, "num_resamples": num_resamples, "seed": seed}


SMALL_N = 5
"""Below this many samples a Student-t interval is very wide (t_{0.975, 1} = 12.7): reports
warn, and intervals are clipped to the metric's range (:func:`metric_range`)."""


def metric_range(metric: str) -> tuple[float | None, float | None]:
    """The values a metric can take: PSNR [0, :data:`PSNR_CAP_DB`] dB (as capped), SSIM
    [-1, 1], LPIPS [0, ∞); ``(None, None)`` for other names."""
    if "psnr" in metric:
        return 0.0, PSNR_CAP_DB
    if "ssim" in metric:
        return -1.0, 1.0
    if "lpips" in metric:
        return 0.0, None
    return None, None


def _clip_interval(out: dict[str, Any], lo: float | None, hi: float | None) -> dict[str, Any]:
    """Clip ``low`` / ``high`` to ``[lo, hi]``; ``clipped`` says whether that changed them."""
    out["clipped"] = False
    if out["low"] is None:
        return out
    if lo is not None and out["low"] < lo:
        out["low"], out["clipped"] = lo, True
    if hi is not None and out["high"] > hi:
        out["high"], out["clipped"] = hi, True
    return out


def summarize(values: Sequence[float] | np.ndarray, metric: str = "",
              confidence: float = 0.95) -> dict[str, Any]:
    """:func:`mean_ci` after capping PSNR-like values at :data:`PSNR_CAP_DB` (``metric``
    containing ``"psnr"``); ``n_capped`` counts the capped (e.g. infinite) values. ``low`` /
    ``high`` are clipped to :func:`metric_range` (``clipped``; ``half_width`` keeps the
    symmetric t half-width); ``small_n`` is True below :data:`SMALL_N` samples."""
    v = _as_values(values)
    n_capped = 0
    if "psnr" in metric:
        n_capped = int(np.sum(v > PSNR_CAP_DB))
        v = np.minimum(v, PSNR_CAP_DB)
    out = _clip_interval(mean_ci(v, confidence), *metric_range(metric))
    out["n_capped"] = n_capped
    out["small_n"] = v.size < SMALL_N
    return out
