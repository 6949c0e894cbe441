"""Flax NNX models: video UNet (text / image), KL-f8 VAE, OpenCLIP towers, LGM reconstructor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def abstract_model(model_cls: type, config: Any, seed: int = 0) -> nnx.Module:
    """``nnx.eval_shape`` of ``model_cls(config, rngs=nnx.Rngs(seed))``: no memory, no compile.

    The RNG stream's counter is kept as a NumPy scalar during the trace. With a traced counter
    every ``rngs()`` call makes Flax compare the ``.sharding`` of two tracers, which in JAX
    scans the whole jaxpr traced so far: quadratic in the number of layers (~20 s instead of
    ~2 s for the full text UNet).
    """

    def make():
        rngs = nnx.Rngs(seed)
        rngs.default.count.set_value(np.zeros((), np.uint32))
        return model_cls(config, rngs=rngs)

    return nnx.eval_shape(make)


def model_from_params(model_cls: type, config: Any, params: Mapping[tuple, Any], *,
                      seed: int = 0, dtype: Any = None) -> nnx.Module:
    """A concrete ``model_cls(config)`` holding ``params`` ({parameter path: array}, every
    parameter, e.g. a converter's output), built without running the random initialisers
    (:func:`abstract_model`, then each value set once: no second copy of the weights, no init
    time, no compile per kernel shape). Values are cast to the model's parameter dtype (or
    ``dtype``); RNG streams (dropout) are seeded from ``seed``. Missing, unknown or mis-shaped
    parameters raise one ``ValueError`` listing them. The one way to build a model from
    parameters: ``unet_from_params``, ``lgm_from_params`` and ``lpips_from_params`` call it."""
    name = model_cls.__name__
    model = abstract_model(model_cls, config, seed)
    flat = list(nnx.to_flat_state(nnx.state(model)))
    wanted = {tuple(p) for p, v in flat if isinstance(v, nnx.Param)}
    given = {tuple(p) for p in params}
    missing = sorted("/".join(map(str, p)) for p in wanted - given)
    extra = sorted("/".join(map(str, p)) for p in given - wanted)
    bad = sorted(f"{'/'.join(map(str, p))}: {tuple(np.shape(params[tuple(p)]))}, the model wants "
                 f"{tuple(v.get_value().shape)}" for p, v in flat
                 if isinstance(v, nnx.Param) and tuple(p) in given
                 and tuple(np.shape(params[tuple(p)])) != tuple(v.get_value().shape))
    if missing or extra or bad:
        lines = [f"parameters do not fit {name}:"]
        for title, items in (("missing", missing), ("unknown", extra), ("shape mismatches", bad)):
            if items:
                lines.append(f"  {title} ({len(items)}): {', '.join(items[:10])}"
                             f"{' …' if len(items) > 10 else ''}")
        raise ValueError("\n".join(lines))
    base = jax.random.key(seed)
    for i, (path, var) in enumerate(flat):
        if isinstance(var, nnx.Param):
            want = var.get_value().dtype if dtype is None else dtype
            var.set_value(jnp.asarray(params[tuple(path)], want))
        elif isinstance(var, nnx.RngKey):
            var.set_value(jax.random.fold_in(base, i))
        elif isinstance(var, nnx.RngCount):
            var.set_value(jnp.zeros(var.get_value().shape, jnp.uint32))
        else:
            raise TypeError(f"model_from_params: {name} holds {type(var).__name__} state at "
                            f"{'/'.join(map(str, path))}, which parameters do not give")
    return model
