"""One attention function for every model; the kernel is a configuration choice.

``implementation``:

* ``"xla"`` (default, every backend): einsum attention with the softmax in float32 whatever
  the compute dtype; exact, and the right kernel for short sequences (temporal attention over
  24 frames, cross-attention over 77–145 text/image tokens).
* ``"cudnn"``: :func:`jax.nn.dot_product_attention` with the cuDNN flash kernel (GPU only, bf16 /
  fp16), for long spatial self-attention (32×32 = 1024 tokens and more).
* ``"auto"``: ``"cudnn"`` on GPU for sequences of at least ``long_sequence`` tokens in a
  half-precision dtype, ``"xla"`` otherwise.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp

Implementation = Literal["xla", "cudnn", "auto"]
IMPLEMENTATIONS = ("xla", "cudnn", "auto")


def _resolve(implementation: str, q: jax.Array, kv_len: int, long_sequence: int) -> str:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {implementation!r}; choose one of "
                         f"{IMPLEMENTATIONS}")
    if implementation != "auto":
        return implementation
    on_gpu = jax.default_backend() == "gpu"
    half = q.dtype in (jnp.bfloat16, jnp.float16)
    return "cudnn" if on_gpu and half and max(q.shape[1], kv_len) >= long_sequence else "xla"


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    mask: jax.Array | None = None,
    implementation: str = "xla",
    long_sequence: int = 1024,
) -> jax.Array:
    """Multi-head attention ``softmax(q·kᵀ/√d)·v`` on [B, L, H, D] inputs → [B, L, H, D].

    ``mask`` (broadcastable to [B, H, Lq, Lk], True = attend) is supported by every kernel.
    """
    kind = _resolve(implementation, query, key.shape[1], long_sequence)
    if kind == "cudnn":
        return jax.nn.dot_product_attention(query, key, value, mask=mask, implementation="cudnn")
    scale = 1.0 / math.sqrt(query.shape[-1])
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
    logits = logits * scale
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, value)
