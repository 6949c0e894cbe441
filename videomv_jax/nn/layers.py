"""Layer constructors shared by every model: explicit epsilons, dtypes and logical axis names.

Every parameter carries logical axis names (``logical_axes`` variable metadata, read with
:func:`logical_axes`) so that one rules table (:mod:`videomv_jax.parallel`) maps them onto any
device mesh; nothing is sharded at construction. The names:

==============  =============================================================================
``embed``       the input-feature axis of a dense kernel / the feature axis of norms and biases
``mlp``         the output-feature axis of a dense kernel
``conv_in``     the input-channel axis of a convolution kernel
``conv_out``    the output-channel axis of a convolution kernel (and its bias)
``vocab``       the vocabulary axis of token embeddings
``None``        spatial / temporal kernel axes and anything never sharded
==============  =============================================================================

PyTorch parity traps handled here: GroupNorm / LayerNorm epsilons are required arguments (they
differ per module in the ported models), their statistics use the accurate two-pass variance of
:func:`normalization_stats` (never Flax's default one-pass ``E[x²] − E[x]²``), and :func:`gelu` is
the exact erf form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as nnx_dtypes

default_kernel_init = nnx.initializers.lecun_normal()
zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, as PyTorch's default ``nn.GELU`` / ``F.gelu``."""
    return jax.nn.gelu(x, approximate=False)


def _part(init, axes):
    return nnx.with_metadata(init, logical_axes=tuple(axes))


def logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names a parameter was created with (None if it has none)."""
    return variable.get_metadata().get("logical_axes")


def Linear(  # noqa: N802 - constructor-style helper
    in_features: int,
    out_features: int,
    *,
    rngs: nnx.Rngs,
    use_bias: bool = True,
    zero_init: bool = False,
    axes: tuple[str | None, str | None] = ("embed", "mlp"),
    dtype=None,
    param_dtype=jnp.float32,
) -> nnx.Linear:
    """Dense layer (kernel [in, out]); ``zero_init`` zeroes the kernel (and bias)."""
    kernel_init = zeros if zero_init else default_kernel_init
    return nnx.Linear(in_features, out_features, use_bias=use_bias, dtype=dtype,
                      param_dtype=param_dtype, kernel_init=_part(kernel_init, axes),
                      bias_init=_part(zeros, axes[1:]), rngs=rngs)


@dataclasses.dataclass(frozen=True)
class GatheredKernel:
    """``promote_dtype`` hook of :func:`Conv`: Flax's dtype promotion, then the kernel gathered
    over the ``fsdp`` mesh axis (:func:`videomv_jax.parallel.mesh.gather_fsdp`; a no-op
    without a mesh). Works around an XLA SPMD partitioner bug that gave wrong convolution
    kernel gradients on data × fsdp × tensor meshes. A frozen dataclass so that equal layers
    have equal (and picklable) graph definitions."""

    axes: tuple[str | None, ...]

    def __call__(self, args: Any, /, *, dtype: Any = None, inexact: bool = True) -> Any:
        from videomv_jax.parallel.mesh import gather_fsdp  # lazy: parallel imports this module

        inputs, kernel, bias = nnx_dtypes.promote_dtype(args, dtype=dtype, inexact=inexact)
        return inputs, gather_fsdp(kernel, self.axes), bias


def Conv(  # noqa: N802
    in_features: int,
    out_features: int,
    kernel_size: Sequence[int],
    *,
    rngs: nnx.Rngs,
    strides: Sequence[int] | int = 1,
    padding="SAME",
    use_bias: bool = True,
    zero_init: bool = False,
    dtype=None,
    param_dtype=jnp.float32,
) -> nnx.Conv:
    """N-d convolution on channels-last inputs (kernel [*kernel_size, in, out]). Under a mesh
    the kernel is used gathered over ``fsdp`` (:class:`GatheredKernel`)."""
    kernel_size = tuple(kernel_size)
    axes = (None,) * len(kernel_size) + ("conv_in", "conv_out")
    kernel_init = zeros if zero_init else default_kernel_init
    return nnx.Conv(in_features, out_features, kernel_size, strides=strides, padding=padding,
                    use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=_part(kernel_init, axes), bias_init=_part(zeros, ("conv_out",)),
                    promote_dtype=GatheredKernel(axes), rngs=rngs)


def normalization_stats(x: jax.Array, axes: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """Mean and (biased) variance of ``x`` over ``axes`` in at least float32, as PyTorch's norms
    compute them: two passes, ``E[(x − μ)²]``, never the one-pass ``E[x²] − E[x]²``.

    Why: flat backgrounds (grey renders, white image inputs) give groups that are almost constant;
    the one-pass form cancels catastrophically there and a 1e-6 epsilon then magnifies the error
    ~1000×. The mean is also corrected with the residuals' mean (the "corrected two-pass"
    algorithm): a float32 reduction of a large-mean group can be off by more than the group's
    spread, and ``μ₀ + mean(x − μ₀)`` recovers it. The second pass reduces ``d = x − μ₀`` and
    ``d²`` together (one fused pass), so this costs what a plain two-pass variance costs. Returned
    with ``axes`` kept (size 1) for broadcasting.
    """
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    axes = tuple(axes)
    mean0 = jnp.mean(x, axis=axes, keepdims=True)
    residual = x - mean0
    residual_mean = jnp.mean(residual, axis=axes, keepdims=True)
    residual_sq = jnp.mean(jnp.square(residual), axis=axes, keepdims=True)
    variance = jnp.maximum(residual_sq - jnp.square(residual_mean), 0.0)
    return mean0 + residual_mean, variance


def _normalized(x: jax.Array, axes: Sequence[int], epsilon: float) -> jax.Array:
    mean, variance = normalization_stats(x, axes)
    return (x - mean) * jax.lax.rsqrt(variance + epsilon)


def _affine(norm: nnx.Module, y: jax.Array, x: jax.Array) -> jax.Array:
    """``y · scale + bias`` in float32, cast to the layer's compute dtype (that of the input and
    parameters when unset, as Flax's layers do)."""
    args = [x]
    if norm.scale is not None:
        y = y * norm.scale[...].astype(y.dtype)
        args.append(norm.scale[...])
    if norm.bias is not None:
        y = y + norm.bias[...].astype(y.dtype)
        args.append(norm.bias[...])
    dtype = norm.dtype if norm.dtype is not None else jnp.result_type(*args)
    return y.astype(dtype)


class TwoPassGroupNorm(nnx.GroupNorm):
    """``nnx.GroupNorm`` (same parameters, so checkpoints are unchanged) whose statistics come
    from :func:`normalization_stats`. Groups pool every non-batch axis, channels last."""

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        if mask is not None or self.axis_name is not None or self.reduction_axes is not None:
            raise NotImplementedError("TwoPassGroupNorm supports neither mask, axis_name nor "
                                      "reduction_axes (none of the ported models uses them)")
        channels = self.num_groups * self.group_size
        if x.shape[-1] != channels:
            raise ValueError(f"GroupNorm expects {channels} channels (last axis), got input of "
                             f"shape {x.shape}")
        x = x if self.dtype is None else x.astype(self.dtype)
        grouped = x.reshape(*x.shape[:-1], self.num_groups, self.group_size)
        axes = (*range(1, grouped.ndim - 2), grouped.ndim - 1)
        y = _normalized(grouped, axes, self.epsilon).reshape(x.shape)
        return _affine(self, y, x)


class TwoPassLayerNorm(nnx.LayerNorm):
    """``nnx.LayerNorm`` over the last axis (same parameters) with the statistics of
    :func:`normalization_stats`."""

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        if mask is not None or self.axis_name is not None or self.reduction_axes not in (-1, (-1,)):
            raise NotImplementedError("TwoPassLayerNorm normalises the last axis only, without "
                                      "mask or axis_name")
        x = x if self.dtype is None else x.astype(self.dtype)
        return _affine(self, _normalized(x, (x.ndim - 1,), self.epsilon), x)


def GroupNorm(  # noqa: N802
    num_features: int,
    num_groups: int,
    epsilon: float,
    *,
    rngs: nnx.Rngs,
    dtype=None,
    param_dtype=jnp.float32,
) -> TwoPassGroupNorm:
    """GroupNorm over all non-batch axes of each group (channels last), two-pass statistics.
    ``epsilon`` is required: PyTorch's default is 1e-5 but the transformers/VAE of the ported
    models use 1e-6."""
    return TwoPassGroupNorm(num_features, num_groups=num_groups, epsilon=epsilon, dtype=dtype,
                         param_dtype=param_dtype, scale_init=_part(ones, ("embed",)),
                         bias_init=_part(zeros, ("embed",)), rngs=rngs)


def LayerNorm(  # noqa: N802
    num_features: int,
    epsilon: float,
    *,
    rngs: nnx.Rngs,
    dtype=None,
    param_dtype=jnp.float32,
) -> TwoPassLayerNorm:
    """LayerNorm over the last axis, two-pass statistics; ``epsilon`` required (PyTorch default
    1e-5)."""
    return TwoPassLayerNorm(num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
                         scale_init=_part(ones, ("embed",)), bias_init=_part(zeros, ("embed",)),
                         rngs=rngs)


def Embed(  # noqa: N802
    num_embeddings: int, features: int, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32
) -> nnx.Embed:
    """Token embedding table [vocab, features]."""
    return nnx.Embed(num_embeddings, features, dtype=dtype, param_dtype=param_dtype,
                     embedding_init=_part(nnx.initializers.normal(0.02), ("vocab", "embed")),
                     rngs=rngs)
