"""Per-device memory of sharded values and compiled programs, for memory plans without the
hardware (``benchmarks/memory_plan.py``): build the state abstractly (``nnx.eval_shape``;
:class:`~videomv_jax.train.trainer.Trainer` accepts abstract models), lower and compile the
step for a mesh of simulated devices, then read what each device holds.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

__all__ = ["compiled_memory", "per_device_bytes"]


def _leaf_bytes(x: Any) -> int:
    if x is None or not hasattr(x, "shape") or not hasattr(x, "dtype"):
        return 0
    shape = tuple(x.shape)
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, jax.sharding.Sharding):
        shape = tuple(sharding.shard_shape(shape))
    dtype = x.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):  # the key data's uint32 words
        return math.prod(shape) * jax.random.key_data(jax.random.key(0)).nbytes
    return math.prod(shape) * np.dtype(dtype).itemsize


def per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of ``tree``: every leaf (array or ``ShapeDtypeStruct``) counted
    at its shard shape under its sharding (a whole copy when it has none or is replicated).
    Assumes even shards, as :func:`videomv_jax.parallel.mesh.logical_to_spec` makes them."""
    return sum(_leaf_bytes(x) for x in jax.tree.leaves(tree))


def compiled_memory(compiled: jax.stages.Compiled) -> dict[str, int]:
    """Per-device byte counts of a compiled SPMD program (XLA's buffer assignment):
    ``argument``, ``output``, ``alias`` (outputs written into donated arguments), ``temp``
    (intermediates), ``code`` and ``peak`` = argument + output − alias + temp, the most the
    program holds at once on one device besides the runtime."""
    m = compiled.memory_analysis()
    if m is None:
        raise ValueError("this backend reports no memory analysis for compiled programs")
    out = {"argument": int(m.argument_size_in_bytes), "output": int(m.output_size_in_bytes),
           "alias": int(m.alias_size_in_bytes), "temp": int(m.temp_size_in_bytes),
           "code": int(getattr(m, "generated_code_size_in_bytes", 0))}
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out
