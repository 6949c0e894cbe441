"""videomv_jax.parallel: device meshes, logical-axis sharding rules, multi-process start-up."""

from videomv_jax.parallel.mesh import (
    DEFAULT_RULES,
    MESH_AXES,
    LogicalRules,
    MeshAxes,
    initialize_distributed,
    logical_to_spec,
    make_mesh,
    make_rules,
    param_shardings,
    shard_model,
    with_logical_constraint,
)

__all__ = [
    "DEFAULT_RULES",
    "MESH_AXES",
    "LogicalRules",
    "MeshAxes",
    "initialize_distributed",
    "logical_to_spec",
    "make_mesh",
    "make_rules",
    "param_shardings",
    "shard_model",
    "with_logical_constraint",
]
