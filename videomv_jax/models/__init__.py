"""Flax NNX models: video UNet (text / image), KL-f8 VAE, OpenCLIP towers, LGM reconstructor."""

from __future__ import annotations

from typing import Any

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
