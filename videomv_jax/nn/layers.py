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
differ per module in the ported models), and :func:`gelu` is the exact erf form.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

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
    """N-d convolution on channels-last inputs (kernel [*kernel_size, in, out])."""
    kernel_size = tuple(kernel_size)
    axes = (None,) * len(kernel_size) + ("conv_in", "conv_out")
    kernel_init = zeros if zero_init else default_kernel_init
    return nnx.Conv(in_features, out_features, kernel_size, strides=strides, padding=padding,
                    use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=_part(kernel_init, axes), bias_init=_part(zeros, ("conv_out",)),
                    rngs=rngs)


def GroupNorm(  # noqa: N802
    num_features: int,
    num_groups: int,
    epsilon: float,
    *,
    rngs: nnx.Rngs,
    dtype=None,
    param_dtype=jnp.float32,
) -> nnx.GroupNorm:
    """GroupNorm over all non-batch axes of each group (channels last). ``epsilon`` is required:
    PyTorch's default is 1e-5 but the transformers/VAE of the ported models use 1e-6."""
    return nnx.GroupNorm(num_features, num_groups=num_groups, epsilon=epsilon, dtype=dtype,
                         param_dtype=param_dtype, scale_init=_part(ones, ("embed",)),
                         bias_init=_part(zeros, ("embed",)), rngs=rngs)


def LayerNorm(  # noqa: N802
    num_features: int,
    epsilon: float,
    *,
    rngs: nnx.Rngs,
    dtype=None,
    param_dtype=jnp.float32,
) -> nnx.LayerNorm:
    """LayerNorm over the last axis; ``epsilon`` required (PyTorch default 1e-5)."""
    return nnx.LayerNorm(num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
                         scale_init=_part(ones, ("embed",)), bias_init=_part(zeros, ("embed",)),
                         rngs=rngs)


def Embed(  # noqa: N802
    num_embeddings: int, features: int, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32
) -> nnx.Embed:
    """Token embedding table [vocab, features]."""
    return nnx.Embed(num_embeddings, features, dtype=dtype, param_dtype=param_dtype,
                     embedding_init=_part(nnx.initializers.normal(0.02), ("vocab", "embed")),
                     rngs=rngs)
