"""Device meshes and logical-axis sharding rules for parameters and activations.

Every parameter built with :mod:`videomv_jax.nn.layers` carries logical axis names (``embed``,
``mlp``, ``conv_in``, ``conv_out``, ``vocab`` or ``None``). A *rules* table maps each logical
name to mesh axes of a 3-axis mesh ``("data", "fsdp", "tensor")``; the same model code then runs
data-parallel, FSDP (parameters split over ``fsdp``, gathered per layer by XLA) or
tensor-parallel by changing only the mesh shape and, if wanted, the table.

Sharding never fails because a dimension is too small: a mesh axis of size 1, a mesh axis that
does not divide the dimension, or a mesh axis already used by an earlier dimension of the same
array is dropped, and that dimension falls back to (partial) replication. Tiny test models
therefore run on any mesh, and full-size models shard wherever the sizes allow.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from videomv_jax.nn.layers import logical_axes

log = logging.getLogger(__name__)

MESH_AXES: tuple[str, str, str] = ("data", "fsdp", "tensor")

#: Mesh axes a logical name maps to: one axis name, a tuple of them (the dimension is split over
#: their product), or None (replicated).
MeshAxes = Union[str, tuple[str, ...], None]  # noqa: UP007 - readable alias at runtime
#: Logical axis name → mesh axes.
LogicalRules = Mapping[str, MeshAxes]

#: Default table. Parameters: FSDP splits the input-feature / input-channel axis, tensor
#: parallelism the output-feature / output-channel axis (Megatron-style column split; norm scales
#: and biases follow their feature axis). Activations: the batch is split over data × fsdp (FSDP
#: is data parallel for activations), frames / tokens are not split, attention heads follow the
#: tensor axis. Logical names missing from a table are replicated.
DEFAULT_RULES: dict[str, MeshAxes] = {
    # parameters
    "embed": "fsdp",
    "mlp": "tensor",
    "conv_in": "fsdp",
    "conv_out": "tensor",
    "vocab": "tensor",
    # activations
    "batch": ("data", "fsdp"),
    "frames": None,
    "length": None,
    "heads": "tensor",
}


def make_rules(
    overrides: LogicalRules | Iterable[tuple[str, Any]] | None = None,
    base: LogicalRules = DEFAULT_RULES,
) -> dict[str, MeshAxes]:
    """A rules table: ``base`` updated with ``overrides`` (a mapping or (name, axes) pairs, e.g.
    from a JSON/YAML config where tuples arrive as lists). Values are validated against
    :data:`MESH_AXES` so a typo fails here rather than silently replicating."""
    rules = dict(base)
    if overrides is not None:
        items = overrides.items() if isinstance(overrides, Mapping) else overrides
        for name, axes in items:
            rules[str(name)] = _norm_axes(axes, name)
    for name, axes in rules.items():
        _norm_axes(axes, name)
    return rules


def _norm_axes(axes: Any, name: Any) -> MeshAxes:
    if axes is None or isinstance(axes, str):
        items: tuple[str, ...] = () if axes is None else (axes,)
    elif isinstance(axes, Sequence):
        items = tuple(axes)
    else:
        raise ValueError(f"sharding rule for {name!r}: expected a mesh axis name, a list of them "
                         f"or null, got {axes!r}")
    bad = [a for a in items if a not in MESH_AXES]
    if bad:
        raise ValueError(f"sharding rule for {name!r} names unknown mesh axes {bad}; "
                         f"mesh axes are {MESH_AXES}")
    if axes is None or isinstance(axes, str):
        return axes
    return items


# ---- meshes ------------------------------------------------------------------------------------


def make_mesh(
    data: int = -1,
    fsdp: int = 1,
    tensor: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A ``("data", "fsdp", "tensor")`` mesh over ``devices`` (default: all devices).

    One size may be ``-1``: it takes all remaining devices. The product of the sizes must equal
    the device count. Axes are ``AxisType.Auto`` (sharding propagated by the compiler from the
    parameter placements and :func:`with_logical_constraint` hints).
    """
    devs = list(jax.devices() if devices is None else devices)
    n = len(devs)
    if n == 0:
        raise ValueError("make_mesh: no devices given")
    sizes = [data, fsdp, tensor]
    for name, s in zip(MESH_AXES, sizes, strict=True):
        if not isinstance(s, (int, np.integer)) or (s < 1 and s != -1):
            raise ValueError(f"make_mesh: {name}={s!r}; sizes must be positive ints or -1")
    if sizes.count(-1) > 1:
        raise ValueError(f"make_mesh: at most one axis may be -1, got data={data}, fsdp={fsdp}, "
                         f"tensor={tensor}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n % known:
            raise ValueError(f"make_mesh: the fixed axis sizes (product {known}) do not divide "
                             f"the {n} devices (data={data}, fsdp={fsdp}, tensor={tensor})")
        sizes[sizes.index(-1)] = n // known
    elif known != n:
        raise ValueError(f"make_mesh: data*fsdp*tensor = {data}*{fsdp}*{tensor} = {known} but "
                         f"there are {n} devices; the product must equal the device count "
                         f"(use -1 for one axis to take the rest)")
    if devices is None:
        return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    grid = np.empty(n, dtype=object)
    grid[:] = devs
    return Mesh(grid.reshape(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


# ---- logical → physical ------------------------------------------------------------------------


def _mesh_sizes(mesh: Mesh | jax.sharding.AbstractMesh | None) -> dict[str, int] | None:
    if mesh is None:
        return None
    return dict(mesh.shape)


def logical_to_spec(
    axes: Sequence[str | None] | None,
    rules: LogicalRules | None = None,
    *,
    shape: Sequence[int] | None = None,
    mesh: Mesh | jax.sharding.AbstractMesh | None = None,
) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions have logical names ``axes``.

    Never raises for small or odd sizes; instead, for each dimension, a mesh axis is dropped
    (that part of the dimension replicated) when

    * the mesh axis has size 1 or is not in ``mesh`` (needs ``mesh``),
    * the product of the kept mesh axes would not divide the dimension (needs ``shape`` and
      ``mesh``), or
    * an earlier dimension of the same array already uses that mesh axis (a mesh axis can shard
      only one dimension; e.g. activations ``("batch", "embed")`` under the default table).

    Without ``mesh`` only the last rule applies. Logical names missing from ``rules`` and
    ``None`` are replicated. ``axes=None`` (no metadata) gives a fully replicated spec.
    """
    rules = DEFAULT_RULES if rules is None else rules
    if axes is None:
        return PartitionSpec()
    sizes = _mesh_sizes(mesh)
    if shape is not None and len(shape) != len(axes):
        raise ValueError(f"logical axes {tuple(axes)} do not match an array of rank {len(shape)}")
    used: set[str] = set()
    out: list[MeshAxes] = []
    for i, name in enumerate(axes):
        mapped = rules.get(name) if name is not None else None
        cands = () if mapped is None else ((mapped,) if isinstance(mapped, str) else mapped)
        kept: list[str] = []
        prod = 1
        for ax in cands:
            if ax in used:
                continue
            if sizes is not None:
                size = sizes.get(ax, 1)
                if size == 1:
                    continue
                if shape is not None and shape[i] % (prod * size):
                    continue
                prod *= size
            kept.append(ax)
        used.update(kept)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    while out and out[-1] is None:
        out.pop()
    return PartitionSpec(*out)


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def param_shardings(
    model_or_state: nnx.Module | nnx.State, mesh: Mesh, rules: LogicalRules | None = None
) -> nnx.State:
    """NamedShardings for every variable of a (concrete or ``nnx.eval_shape``-abstract) model.

    Returns an ``nnx.State`` with the structure of ``nnx.state(model)`` whose variables hold a
    ``NamedSharding`` instead of an array, built from each variable's ``logical_axes`` metadata
    (variables without it, e.g. RNG counters, are replicated). Pass a model or a State.
    """
    state = (nnx.state(model_or_state) if isinstance(model_or_state, nnx.Module)
             else model_or_state)

    def one(var: Any) -> Any:
        if not _is_var(var):  # raw leaves (pure dicts): replicate
            return NamedSharding(mesh, PartitionSpec())
        spec = logical_to_spec(logical_axes(var), rules, shape=var.get_value().shape,
                               mesh=mesh)
        return var.replace(NamedSharding(mesh, spec))

    return jax.tree.map(one, state, is_leaf=_is_var)


def shard_model(
    model: nnx.Module, mesh: Mesh, rules: LogicalRules | None = None
) -> nnx.Module:
    """Place a concrete model's variables on ``mesh`` following ``rules`` (in place; returns it).

    Uses ``jax.device_put`` per variable, so each array moves once; jit'd functions of the model
    then run SPMD over the mesh.
    """
    state = nnx.state(model)
    shardings = param_shardings(state, mesh, rules)
    sharded = jax.device_put(state, shardings)
    nnx.update(model, sharded)
    return model


def with_logical_constraint(
    x: jax.Array,
    axes: Sequence[str | None],
    rules: LogicalRules | None = None,
    mesh: Mesh | None = None,
) -> jax.Array:
    """Hint the sharding of an activation by logical names (``batch``, ``frames``, ``length``,
    ``heads``, ...). Uses ``mesh`` or else the mesh set with ``jax.set_mesh``; with neither
    (single device, plain scripts) it returns ``x`` unchanged."""
    ctx = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
    if ctx is None or ctx.empty:
        return x
    # inside a shard_map, its manual axes are already split by hand: hint only the others
    manual = {n for n, t in zip(ctx.axis_names, ctx.axis_types, strict=True)
              if t == AxisType.Manual}
    if math.prod(v for k, v in dict(ctx.shape).items() if k not in manual) == 1:
        return x
    if manual:
        rules = _without_axes(DEFAULT_RULES if rules is None else rules, manual)
    spec = logical_to_spec(axes, rules, shape=x.shape, mesh=ctx)
    target = NamedSharding(mesh, spec) if mesh is not None else spec
    return jax.lax.with_sharding_constraint(x, target)


def _without(axes: MeshAxes, drop: set[str]) -> MeshAxes:
    """``axes`` without the mesh axes in ``drop`` (None when none is left)."""
    items = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    kept = tuple(a for a in items if a not in drop)
    return None if not kept else kept[0] if len(kept) == 1 else kept


def _without_axes(rules: LogicalRules, drop: set[str]) -> dict[str, MeshAxes]:
    """``rules`` with the mesh axes in ``drop`` removed from every logical axis."""
    return {name: _without(axes, drop) for name, axes in rules.items()}


_GATHERED_DEFAULT = _without_axes(DEFAULT_RULES, {"fsdp"})


def gather_fsdp(
    x: jax.Array,
    axes: Sequence[str | None],
    rules: LogicalRules | None = None,
    mesh: Mesh | None = None,
) -> jax.Array:
    """Hint that a parameter with logical axes ``axes`` is used whole over the ``fsdp`` axis:
    its sharding under ``rules`` with ``fsdp`` removed (the tensor split stays). This is the
    per-layer all-gather of FSDP made explicit; in the backward pass the same hint makes the
    gradient a plain sum over the batch shards that is then reduce-scattered onto the stored
    sharding. No-op without a mesh (as :func:`with_logical_constraint`).

    Why explicit: left to itself, XLA's SPMD partitioner (jax 0.10.2, Shardy and GSPMD alike)
    computes wrong kernel gradients for ``conv → SiLU → conv`` with batch over data × fsdp,
    kernels' input channels over fsdp and biases over tensor, on a mesh where all three axes
    are > 1 (O(1) relative errors; the forward pass is right). With the kernel gathered the
    gradients match one device to float32 rounding.
    """
    gathered = (_GATHERED_DEFAULT if rules is None or rules is DEFAULT_RULES
                else _without_axes(rules, {"fsdp"}))
    return with_logical_constraint(x, axes, gathered, mesh)


# ---- multi-process start-up --------------------------------------------------------------------

_DISTRIBUTED_DONE = False


def _env_int(*names: str) -> int | None:
    for n in names:
        v = os.environ.get(n)
        if v not in (None, ""):
            try:
                return int(v)
            except ValueError:
                raise ValueError(f"environment variable {n}={v!r} is not an integer") from None
    return None


def initialize_distributed() -> bool:
    """Call ``jax.distributed.initialize()`` when the environment describes a multi-process job.

    Must run before any other JAX call. Recognised environments, in order:

    1. explicit: ``JAX_COORDINATOR_ADDRESS`` or ``COORDINATOR_ADDRESS`` (host:port) together
       with ``JAX_NUM_PROCESSES``/``NUM_PROCESSES`` and ``JAX_PROCESS_ID``/``PROCESS_ID``;
       passed to ``initialize`` as arguments;
    2. SLURM: ``SLURM_JOB_ID`` with ``SLURM_NTASKS`` > 1 (JAX reads the rest itself);
    3. Open MPI: ``OMPI_COMM_WORLD_SIZE`` > 1;
    4. Cloud TPU pod slice: ``TPU_WORKER_HOSTNAMES`` listing more than one host, or
       ``MEGASCALE_COORDINATOR_ADDRESS`` (multislice).

    ``VIDEOMV_NO_DISTRIBUTED=1`` disables it. Idempotent: later calls (and calls after someone
    else initialised) do nothing. Returns True when running as one of several processes.
    """
    global _DISTRIBUTED_DONE
    if _DISTRIBUTED_DONE or _jax_distributed_ready():
        _DISTRIBUTED_DONE = True
        return jax.process_count() > 1
    if os.environ.get("VIDEOMV_NO_DISTRIBUTED", "") not in ("", "0"):
        log.info("initialize_distributed: disabled by VIDEOMV_NO_DISTRIBUTED")
        return False
    env = os.environ
    coord = env.get("JAX_COORDINATOR_ADDRESS") or env.get("COORDINATOR_ADDRESS")
    kwargs: dict[str, Any] | None = None
    why = ""
    if coord:
        nproc = _env_int("JAX_NUM_PROCESSES", "NUM_PROCESSES")
        pid = _env_int("JAX_PROCESS_ID", "PROCESS_ID")
        if nproc is None or pid is None:
            raise ValueError("initialize_distributed: a coordinator address is set but "
                             "JAX_NUM_PROCESSES/NUM_PROCESSES or JAX_PROCESS_ID/PROCESS_ID is "
                             "missing")
        kwargs = dict(coordinator_address=coord, num_processes=nproc, process_id=pid)
        why = f"coordinator {coord}, process {pid}/{nproc}"
    elif env.get("SLURM_JOB_ID") and (_env_int("SLURM_NTASKS") or 1) > 1:
        kwargs, why = {}, f"SLURM job {env['SLURM_JOB_ID']} with {env['SLURM_NTASKS']} tasks"
    elif (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1:
        kwargs, why = {}, f"Open MPI world of {env['OMPI_COMM_WORLD_SIZE']}"
    elif (len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
          or env.get("MEGASCALE_COORDINATOR_ADDRESS")):
        kwargs, why = {}, "TPU pod slice"
    if kwargs is None:
        log.info("initialize_distributed: single-process run (no coordinator/SLURM/MPI/TPU-pod "
                 "environment found)")
        _DISTRIBUTED_DONE = True
        return False
    jax.distributed.initialize(**kwargs)
    _DISTRIBUTED_DONE = True
    log.info("initialize_distributed: %s -> process %d of %d, %d local / %d global devices",
             why, jax.process_index(), jax.process_count(), jax.local_device_count(),
             jax.device_count())
    return jax.process_count() > 1


def _jax_distributed_ready() -> bool:
    is_init = getattr(jax.distributed, "is_initialized", None)
    return bool(is_init()) if callable(is_init) else False
