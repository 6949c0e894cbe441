"""Per-device memory accounting (videomv_jax.parallel.memory) and the abstract Trainer that
benchmarks/memory_plan.py compiles without materialising a parameter.

Shard sizes are checked in-process on ``AbstractMesh`` shardings (no devices needed); the
abstract trainer is checked against a concrete one on the same toy model and mesh: the same
state layout and shardings, and the very same compiled program (equal memory analysis).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

from videomv_jax.nn.layers import Linear
from videomv_jax.parallel.memory import compiled_memory, per_device_bytes
from videomv_jax.parallel.mesh import make_mesh
from videomv_jax.train.optim import OptimConfig
from videomv_jax.train.tasks import Task
from videomv_jax.train.trainer import TrainConfig, Trainer


def test_per_device_bytes_counts_each_leaf_at_its_shard_shape():
    mesh = AbstractMesh((2, 4, 1), ("data", "fsdp", "tensor"))

    def sds(shape, dtype, *spec):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh,
                                                                         PartitionSpec(*spec)))

    tree = {"split": sds((64, 6), jnp.float32, "fsdp"),            # 16 × 6 × 4 = 384
            "both": sds((8, 12), jnp.bfloat16, "data", "fsdp"),     # 4 × 3 × 2 = 24
            "replicated": sds((5, 3), jnp.float32),                 # 60
            "plain": np.zeros((7,), np.int32),                      # 28 (no sharding: whole)
            "keys": jax.random.split(jax.random.key(0), 3),         # 3 × 2 uint32 words = 24
            "none": None}
    assert per_device_bytes(tree) == 384 + 24 + 60 + 28 + 24
    assert per_device_bytes({"a": sds((64, 6), jnp.float32, ("data", "fsdp"))}) == 8 * 6 * 4


class _Toy(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.a = Linear(16, 32, rngs=rngs)
        self.b = Linear(32, 8, rngs=rngs, axes=("mlp", "embed"))

    def __call__(self, x):
        return self.b(jax.nn.gelu(self.a(x)))


class _ToyTask(Task):
    trainable = ("net",)
    frozen = ("teacher",)

    def loss(self, models: Any, batch: Any, key: jax.Array):
        target = jax.lax.stop_gradient(models["teacher"](batch["x"]))
        loss = jnp.mean((models["net"](batch["x"]) - target) ** 2)
        return loss, {"loss": loss}


def _trainer(models, tmp_path, ema):
    cfg = TrainConfig(workdir=str(tmp_path), num_steps=1, ema_decay=ema, progress=False,
                      tensorboard=False)
    return Trainer(_ToyTask(), models, OptimConfig(clip_grad_norm=1.0), cfg,
                   mesh=make_mesh(-1, 1, 1))


def test_abstract_trainer_compiles_the_same_step_as_a_concrete_one(tmp_path):
    concrete = {"net": _Toy(nnx.Rngs(0)), "teacher": _Toy(nnx.Rngs(1))}
    abstract = {"net": nnx.eval_shape(lambda: _Toy(nnx.Rngs(0))),
                "teacher": nnx.eval_shape(lambda: _Toy(nnx.Rngs(1)))}
    real = _trainer(concrete, tmp_path / "c", ema=0.99)
    fake = _trainer(abstract, tmp_path / "a", ema=0.99)
    assert fake.abstract and not real.abstract
    r_leaves, r_def = jax.tree.flatten(real.state)
    a_leaves, a_def = jax.tree.flatten(fake.state)
    assert r_def == a_def
    for r, a in zip(r_leaves, a_leaves, strict=True):
        assert isinstance(a, jax.ShapeDtypeStruct)
        assert (a.shape, a.dtype) == (r.shape, r.dtype)
    assert jax.tree.leaves(fake.state_shardings) == jax.tree.leaves(real.state_shardings)
    # parameters + EMA + Adam's two moments (the clip and schedule states are scalars)
    n = sum(x.size for x in jax.tree.leaves(real.state.params)) * 4
    assert per_device_bytes(fake.state.params) == per_device_bytes(real.state.params) == n
    assert per_device_bytes(fake.state.ema) == n
    assert 2 * n <= per_device_bytes(fake.state.opt_state) <= 2 * n + 64
    batch = real.device_batch({"x": np.ones((4, 16), np.float32)})
    spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding)
            for k, v in batch.items()}
    m_real = compiled_memory(real.lower_step(batch).compile())
    m_fake = compiled_memory(fake.lower_step(spec).compile())
    assert m_fake == m_real
    assert m_fake["alias"] > 0  # the donated state is updated in place
    assert m_fake["peak"] == (m_fake["argument"] + m_fake["output"] - m_fake["alias"]
                              + m_fake["temp"])
