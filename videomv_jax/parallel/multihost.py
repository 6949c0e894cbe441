"""Helpers for runs of several JAX processes (TPU pod slices, multi-node GPU, or several CPU
processes on one machine): who writes side files, barriers, placing process-local values on
a global mesh, and the checks that must fail before anything is compiled.

Every function here is a no-op-cheap pass-through in a single-process run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["agree_any", "barrier", "check_batch_layout", "is_main", "main_first",
           "process_rows", "to_global"]

T = TypeVar("T")


def is_main() -> bool:
    """True on the process that writes shared side files (process 0)."""
    return jax.process_index() == 0


_BARRIER_COUNTS: dict[str, int] = {}


def barrier(name: str, timeout_s: float = 3600.0) -> None:
    """Wait (up to ``timeout_s``) until every process reaches the barrier ``name`` (nothing in
    a single process). Uses the coordination service of ``jax.distributed``, not a device
    collective: CPU (gloo) collectives give up after a short wait, too short for one process
    still compiling what another already runs."""
    if jax.process_count() == 1:
        return
    n = _BARRIER_COUNTS[name] = _BARRIER_COUNTS.get(name, 0) + 1
    client = _client()
    if client is None or not hasattr(client, "wait_at_barrier"):
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
        return
    client.wait_at_barrier(f"videomv_jax:{name}:{n}", int(timeout_s * 1000))


def main_first(name: str, fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on process 0 only, then a barrier: afterwards every process sees what it
    wrote. Returns ``fn()`` on process 0 and None elsewhere."""
    out = fn() if is_main() else None
    barrier(name)
    return out


def _client() -> Any:
    try:
        from jax._src import distributed
    except ImportError:  # pragma: no cover - a JAX without it
        return None
    return getattr(distributed.global_state, "client", None)


_AGREE_COUNT = [0]


def agree_any(flag: bool, timeout_s: float = 3600.0) -> bool:
    """True on every process when ``flag`` is True on at least one (e.g. a SIGTERM that reached
    some hosts only), so that all of them take the same branch. Exchanged through the
    coordination service's key-value store (no device collective, no compile)."""
    if jax.process_count() == 1:
        return bool(flag)
    client = _client()
    if client is None or not hasattr(client, "blocking_key_value_get"):
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))
    _AGREE_COUNT[0] += 1
    n, me = _AGREE_COUNT[0], jax.process_index()
    client.key_value_set(f"videomv_jax/agree/{n}/{me}", "1" if flag else "0")
    votes = [client.blocking_key_value_get(f"videomv_jax/agree/{n}/{i}", int(timeout_s * 1000))
             for i in range(jax.process_count())]
    if n > 2:  # every process wrote round n - 1, so all finished reading round n - 2
        client.key_value_delete(f"videomv_jax/agree/{n - 2}/{me}")
    return "1" in votes


def _one_to_global(x: Any, sharding: Any) -> Any:
    if not isinstance(sharding, jax.sharding.Sharding):
        return x
    if isinstance(x, jax.ShapeDtypeStruct):  # abstract (nnx.eval_shape): attach the sharding
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x if x.sharding == sharding else jax.device_put(x, sharding)
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    # a process-local value (e.g. a model loaded onto one local device) that every process
    # holds identically: each device takes its slice of it
    if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _one_to_global(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def to_global(tree: Any, shardings: Any) -> Any:
    """``jax.device_put(tree, shardings)`` that also works when ``shardings`` span several
    processes and the leaves are process-local (the same values on every process): those are
    assembled with ``jax.make_array_from_callback``. Leaves already global are resharded."""
    return jax.tree.map(_one_to_global, tree, shardings)


def check_batch_layout(mesh: Mesh, batch_size: int, what: str = "data.input.batch_size",
                       axes: tuple[str, ...] = ("data", "fsdp")) -> None:
    """Raise a one-line ``ValueError`` unless ``batch_size`` splits evenly over the batch axes
    of ``mesh`` and over the processes, each process holding one contiguous block of rows."""
    present = tuple(a for a in axes if a in mesh.axis_names)
    shards = math.prod(int(mesh.shape[a]) for a in present)
    nproc = jax.process_count()
    if batch_size % shards:
        sizes = " × ".join(f"{a}={mesh.shape[a]}" for a in present)
        raise ValueError(f"{what}={batch_size} does not divide over the mesh's batch axes "
                         f"{sizes} ({shards} shards): use a multiple of {shards} or change "
                         f"train.mesh_data / train.mesh_fsdp / train.mesh_tensor")
    if batch_size % nproc:
        raise ValueError(f"{what}={batch_size} does not divide over the {nproc} processes: use "
                         f"a multiple of {nproc}")
    from videomv_jax.data.pipeline import _host_rows

    _host_rows(NamedSharding(mesh, PartitionSpec(present or None)), batch_size)


def process_rows(x: Any) -> np.ndarray:
    """This process's rows of a batch-sharded global array (its contiguous block, in order) as
    NumPy; NumPy input and fully addressable arrays are returned whole."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    blocks: dict[int, np.ndarray] = {}
    for shard in x.addressable_shards:
        sl = shard.index[0] if shard.index else slice(None)
        start = sl.indices(x.shape[0])[0]
        blocks.setdefault(start, np.asarray(shard.data))
    return np.concatenate([blocks[k] for k in sorted(blocks)])
