"""The training loop shared by both stages: one jitted, sharded, donated train step.

:class:`Trainer` takes a :class:`~videomv_jax.train.tasks.Task` (the loss), the NNX models it
names, an :class:`~videomv_jax.train.optim.OptimConfig` and a :class:`TrainConfig`. It

- splits every model into graph + parameters + other state, places parameters on a
  ``data × fsdp`` mesh by their logical axes (:mod:`videomv_jax.parallel.mesh`) and keeps the
  trained ones, the optimizer state, the EMA and the RNG in a :class:`TrainState`;
- compiles one step (``jax.jit``, state donated): loss + gradients, the per-parameter gradient
  scale (VideoMV's ×0.5 rule), AdamW, EMA, and a non-finite guard that leaves the state
  untouched when the loss or a gradient is NaN/inf (the step is counted and logged; the run
  stops after ``max_consecutive_nonfinite`` in a row);
- streams batches (global ``jax.Array`` s split over ``("data", "fsdp")``), logs scalars (and
  image grids from the task) to TensorBoard, shows a tqdm bar;
- saves with orbax ``CheckpointManager`` (periodic async saves, keep-N, a save on SIGTERM) and
  resumes the same run: step, parameters, optimizer, EMA, RNG and data position (the batch of
  step ``k`` is a pure function of ``k``, see :mod:`videomv_jax.data.pipeline`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import NamedSharding, PartitionSpec

from videomv_jax.data.pipeline import batch_sharding
from videomv_jax.parallel.mesh import make_mesh, param_shardings
from videomv_jax.parallel.multihost import agree_any, barrier, to_global
from videomv_jax.train.optim import OptimConfig, learning_rate_schedule, make_optimizer
from videomv_jax.train.tasks import Task, check_models

log = logging.getLogger(__name__)

__all__ = ["NonFiniteError", "TrainConfig", "TrainState", "Trainer", "ema_update"]

class NonFiniteError(FloatingPointError):
    """Too many consecutive steps with a non-finite loss or gradient."""


def ema_update(ema: Any, params: Any, decay: float, step: jax.Array | int,
               warmup: bool = True) -> Any:
    """One EMA step at optimizer step ``step`` (0-based): ``d·ema + (1 − d)·params`` with
    ``d = min(decay, (1 + step) / (10 + step))`` under ``warmup``, else ``decay``."""
    d = jnp.asarray(decay, jnp.float32)
    if warmup:
        k = jnp.asarray(step, jnp.float32)
        d = jnp.minimum(d, (1.0 + k) / (10.0 + k))
    return jax.tree.map(lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), ema, params)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop settings. ``workdir`` holds ``checkpoints/``, ``tensorboard/`` and ``config.json``.
    ``mesh_data`` / ``mesh_fsdp`` / ``mesh_tensor``: mesh sizes (one may be -1 = the remaining
    devices; ``tensor`` splits kernels' output features / channels, Megatron style);
    ``checkpoint_every`` 0 disables periodic saves (the final and SIGTERM saves remain).
    ``ema_decay``: keep an exponential moving average of the parameters; with ``ema_warmup``
    the decay at step ``k`` is ``min(ema_decay, (1 + k) / (10 + k))``, so that the average
    forgets the random initialisation early (a plain 0.999 still holds 16 % of it after 1,800
    steps, too much for a short run from scratch)."""

    workdir: str
    num_steps: int
    seed: int = 0
    log_every: int = 10
    image_every: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    async_checkpointing: bool = True
    ema_decay: float | None = None
    ema_warmup: bool = True
    max_consecutive_nonfinite: int = 10
    mesh_data: int = -1
    mesh_fsdp: int = 1
    mesh_tensor: int = 1
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        if self.num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {self.num_steps}")
        for name in ("log_every", "image_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")
        if self.max_consecutive_nonfinite < 1:
            raise ValueError("max_consecutive_nonfinite must be >= 1")


class TrainState(struct.PyTreeNode):
    """Everything a resumed run needs (besides the data position, which is ``step``)."""

    step: jax.Array  # [] int32: batches consumed (skipped non-finite steps included)
    params: dict[str, Any]  # trained model name → pure parameter dict
    opt_state: Any
    ema: dict[str, Any] | None
    rng: jax.Array  # raw uint32 key data
    nonfinite_streak: jax.Array  # [] int32 consecutive skipped steps
    nonfinite_total: jax.Array  # [] int32


def _reseed(rest: Any, key_data: jax.Array) -> Any:
    """Fresh, distinct keys for every RNG stream in ``rest`` (dropout) from ``key_data``."""
    leaves, treedef = jax.tree.flatten(rest)
    out = []
    for i, leaf in enumerate(leaves):
        if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            base = jax.random.wrap_key_data(key_data, impl=jax.random.key_impl(leaf))
            out.append(jnp.broadcast_to(jax.random.fold_in(base, i), leaf.shape))
        else:
            out.append(leaf)
    return jax.tree.unflatten(treedef, out)


def _is_abstract(tree: Any) -> bool:
    return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree))


def _fill_abstract(rest: Any) -> Any:
    """Concrete zeros (zero keys) for the abstract non-parameter variables of a model (RNG
    counters and keys): the step reads them as constants, and they are a few bytes."""
    def one(x: Any) -> Any:
        if not isinstance(x, jax.ShapeDtypeStruct):
            return x
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            key = jax.random.key(0)
            if key.dtype != x.dtype:
                raise ValueError(f"abstract model: an RNG key of type {x.dtype}, not the "
                                 f"default {key.dtype}; build the model with default keys")
            zero = jnp.broadcast_to(key, x.shape)
        else:
            zero = jnp.zeros(x.shape, x.dtype)
        return zero if x.sharding is None else jax.device_put(zero, x.sharding)

    return jax.tree.map(one, rest)


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


class Trainer:
    """See the module docstring. ``grad_scales``: per trained model, a pure dict of floats
    shaped like its parameters (e.g. :func:`~videomv_jax.train.grad_scale.grad_scale_tree`);
    ``image_fn(models, batch, key) -> [N, H, W, 3]`` in [0, 1] feeds TensorBoard images.

    Models may be abstract (``nnx.eval_shape``, e.g. ``get_kind(kind).abstract(config)``):
    nothing is then allocated, the state and frozen parameters are ``ShapeDtypeStruct`` s with
    the shardings a concrete run would have, and :meth:`lower_step` lowers the same step for a
    batch of ``ShapeDtypeStruct`` s (``benchmarks/memory_plan.py``); such a trainer cannot
    train."""

    def __init__(self, task: Task, models: Mapping[str, nnx.Module], optim: OptimConfig,
                 config: TrainConfig, *, mesh: jax.sharding.Mesh | None = None,
                 grad_scales: Mapping[str, Any] | None = None,
                 image_fn: Callable | None = None, run_config: Mapping[str, Any] | None = None):
        check_models(task, models)
        self.task, self.optim, self.config = task, optim, config
        self.mesh = mesh if mesh is not None else make_mesh(config.mesh_data, config.mesh_fsdp,
                                                                config.mesh_tensor)
        self.image_fn = image_fn
        self.run_config = dict(run_config or {})
        names = list(task.trainable) + list(task.frozen)
        #: built from abstract models (``nnx.eval_shape``): state and frozen parameters are
        #: ShapeDtypeStructs with their shardings, for :meth:`lower_step` (memory plans)
        self.abstract = _is_abstract([nnx.state(models[n]) for n in names])
        self.graphdefs, self._params, self._rest = {}, {}, {}
        for name in names:
            model = models[name]
            shardings = param_shardings(model, self.mesh)
            # models may arrive process-local (loaded on one device) or already global
            state = to_global(nnx.state(model), shardings)
            nnx.update(model, state)
            g, p, r = nnx.split(model, nnx.Param, ...)
            if self.abstract:
                r = _fill_abstract(r)
            self.graphdefs[name], self._params[name], self._rest[name] = g, p.to_pure_dict(), r
        self.frozen = {n: (self._params[n], self._rest[n]) for n in task.frozen}
        self.trainable_rest = {n: self._rest[n] for n in task.trainable}
        params = {n: self._params[n] for n in task.trainable}
        self.grad_scales = {n: (grad_scales or {}).get(n) for n in task.trainable}
        self.tx = make_optimizer(optim)
        self._step_impl = self._build_step()
        replicated = NamedSharding(self.mesh, PartitionSpec())
        if self.abstract:
            state = jax.eval_shape(self._init_state, params)
            self.state_shardings = self._abstract_shardings(state, params, replicated)
        else:
            state = self._init_state(params)
            self.state_shardings = jax.tree.map(
                lambda x: x.sharding if isinstance(x.sharding, NamedSharding) else replicated,
                state)
        self.state = to_global(state, self.state_shardings)
        self._step_fn = jax.jit(self._step_impl, donate_argnums=(0,),
                                out_shardings=(self.state_shardings, replicated))
        self._manager = None
        self._stop_requested = False

    # ---- state ---------------------------------------------------------------------------------

    def _init_state(self, params: dict[str, Any]) -> TrainState:
        cfg = self.config
        opt_state = self.tx.init(params)
        ema = params if cfg.ema_decay is not None else None
        rng = jax.random.key_data(jax.random.key(cfg.seed))
        zero = jnp.zeros((), jnp.int32)
        state = TrainState(step=zero, params=params, opt_state=opt_state, ema=ema, rng=rng,
                           nonfinite_streak=zero, nonfinite_total=zero)
        # every leaf its own buffer: the step donates the state, and XLA refuses a buffer
        # donated twice (shared zeros, EMA = params at step 0)
        return jax.tree.map(lambda x: x.copy(), state)

    def _abstract_shardings(self, state: TrainState, params: dict[str, Any],
                            replicated: NamedSharding) -> TrainState:
        """The shardings a concrete state would have: parameters, EMA and the optimizer's
        parameter-shaped leaves (Adam moments) those of the parameters, the rest replicated."""
        like = jax.tree.map(lambda x: x.sharding, params)
        opt = optax.tree_map_params(self.tx, lambda _, s: s, state.opt_state, like,
                                    transform_non_params=lambda _: replicated)
        return TrainState(step=replicated, params=like, opt_state=opt,
                          ema=None if state.ema is None else like, rng=replicated,
                          nonfinite_streak=replicated, nonfinite_total=replicated)

    def models(self, state: TrainState | None = None, use_ema: bool = False) -> dict[str, Any]:
        """The trained models (and frozen ones) as NNX modules holding the state's params."""
        state = state or self.state
        src = state.ema if use_ema else state.params
        if use_ema and src is None:
            raise ValueError("this run keeps no EMA (TrainConfig.ema_decay is None)")
        out = {n: nnx.merge(self.graphdefs[n], src[n], self.trainable_rest[n])
               for n in self.task.trainable}
        out.update({n: nnx.merge(self.graphdefs[n], p, r) for n, (p, r) in self.frozen.items()})
        return out

    # ---- the step ------------------------------------------------------------------------------

    def _merge(self, params, frozen, key):
        models = {}
        for i, n in enumerate(self.task.trainable):
            rest = _reseed(self.trainable_rest[n], jax.random.key_data(
                jax.random.fold_in(jax.random.wrap_key_data(key), i)))
            models[n] = nnx.merge(self.graphdefs[n], params[n], rest)
        for n, (p, r) in frozen.items():
            models[n] = nnx.merge(self.graphdefs[n], p, r)
        return models

    def _build_step(self):
        task, tx, cfg = self.task, self.tx, self.config
        scales = self.grad_scales

        def step(state: TrainState, frozen, batch):
            key = jax.random.wrap_key_data(state.rng)
            key, k_loss, k_drop = jax.random.split(key, 3)

            def loss_fn(params):
                models = self._merge(params, frozen, jax.random.key_data(k_drop))
                return task.loss(models, batch, k_loss)

            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            for n, s in scales.items():
                if s is not None:
                    grads[n] = jax.tree.map(lambda g, f: g * f, grads[n], s)
            finite = jnp.isfinite(loss) & _all_finite(grads)
            updates, new_opt = tx.update(grads, state.opt_state, state.params)
            new_params = optax.apply_updates(state.params, updates)

            def keep(new, old):
                return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

            params = keep(new_params, state.params)
            opt_state = keep(new_opt, state.opt_state)
            ema = state.ema
            if ema is not None:
                ema = keep(ema_update(ema, params, cfg.ema_decay, state.step, cfg.ema_warmup),
                           ema)
            streak = jnp.where(finite, 0, state.nonfinite_streak + 1)
            metrics = dict(metrics)
            metrics.update(finite=finite, nonfinite_streak=streak,
                           grad_norm=optax.global_norm(grads),
                           learning_rate=self._lr(state.opt_state))
            new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                                   ema=ema, rng=jax.random.key_data(key),
                                   nonfinite_streak=streak,
                                   nonfinite_total=state.nonfinite_total + (~finite))
            return new_state, metrics

        return step

    def evaluate(self, batch: Mapping[str, Any], key: jax.Array,
                 use_ema: bool = False) -> dict[str, float]:
        """The task's loss and metrics on ``batch`` with a fixed ``key`` (no update, no
        dropout): a deterministic yardstick for tests and validation."""
        if not hasattr(self, "_eval_fn"):
            def run(params, frozen, batch, key):
                models = self._merge(params, frozen, jax.random.key_data(key))
                for n in self.task.trainable:
                    models[n].eval()
                return self.task.loss(models, batch, key)[1]
            self._eval_fn = jax.jit(run)
        params = self.state.ema if use_ema else self.state.params
        with jax.set_mesh(self.mesh):
            out = self._eval_fn(params, self.frozen, self.device_batch(batch), key)
        return {k: float(v) for k, v in jax.device_get(out).items()}

    def compute_gradients(self, batch: Mapping[str, Any], key: jax.Array,
                          scaled: bool = True) -> dict[str, Any]:
        """Gradients of the loss at the current parameters, after (``scaled``) or before the
        per-parameter gradient scale (for inspecting the ×0.5 rule)."""
        if not hasattr(self, "_grad_fn"):
            def run(params, frozen, batch, key, scales):
                def loss_fn(p):
                    models = self._merge(p, frozen, jax.random.key_data(key))
                    return self.task.loss(models, batch, key)[0]
                grads = jax.grad(loss_fn)(params)
                return {n: jax.tree.map(lambda g, s: g * s, grads[n], scales[n])
                        for n in grads}
            self._grad_fn = jax.jit(run)
        ones = {n: jax.tree.map(lambda _: 1.0, self.state.params[n])
                for n in self.task.trainable}
        scales = {n: (self.grad_scales[n] if scaled and self.grad_scales[n] is not None
                      else ones[n]) for n in self.task.trainable}
        scales = jax.tree.map(lambda s: jnp.float32(s), scales)
        with jax.set_mesh(self.mesh):
            return self._grad_fn(self.state.params, self.frozen, self.device_batch(batch),
                                 key, scales)

    def _lr(self, opt_state) -> jax.Array:
        counts = [s.count for s in jax.tree.leaves(
            opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
            if isinstance(s, optax.ScaleByScheduleState)]
        return learning_rate_schedule(self.optim)(counts[0]) if counts else jnp.float32(0)

    def device_batch(self, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        """Host batch (+ the task's host-side inputs) → global arrays split over the batch
        axes. Strings (captions) stay on the host; jax.Arrays pass through."""
        host = dict(batch)
        host.update(self.task.prepare(batch))
        out = {}
        for k, v in host.items():
            if isinstance(v, jax.Array):
                out[k] = v
                continue
            if isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.dtype.kind in
                                                "OUS"):
                continue
            v = np.asarray(v)
            out[k] = jax.make_array_from_process_local_data(batch_sharding(self.mesh), v)
        return out

    def lower_step(self, inputs: Mapping[str, Any]) -> jax.stages.Lowered:
        """The train step lowered for device ``inputs`` (global arrays or ShapeDtypeStructs
        with shardings, e.g. :meth:`device_batch`'s): ``.compile()`` it, and read
        ``.memory_analysis()`` or ``.cost_analysis()``. Works on an abstract trainer."""
        with jax.set_mesh(self.mesh):
            return self._step_fn.lower(self.state, self.frozen, dict(inputs))

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        """One update on ``batch`` (host dict); returns the step's metrics (device arrays)."""
        with jax.set_mesh(self.mesh):
            inputs = self.device_batch(batch)
            step_fn = self._step_fn
            if jax.process_count() > 1:
                if getattr(self, "_compiled_step", None) is None:
                    # compile first, then start together: a process that runs the step while
                    # another still compiles waits in a collective, and CPU (gloo)
                    # collectives time out
                    self._compiled_step = self.lower_step(inputs).compile()
                    barrier("train_step_compiled")
                step_fn = self._compiled_step
            self.state, metrics = step_fn(self.state, self.frozen, inputs)
        return metrics

    # ---- checkpoints ---------------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(os.path.abspath(self.config.workdir), "checkpoints")

    def manager(self):
        if self._manager is None:
            import orbax.checkpoint as ocp
            cfg = self.config
            options = ocp.CheckpointManagerOptions(
                max_to_keep=cfg.keep_checkpoints, create=True,
                enable_async_checkpointing=cfg.async_checkpointing)
            # its constructor syncs the processes with a short-timeout collective: a process
            # still loading would make the others time out, so arrive together first
            barrier("checkpoint_manager")
            self._manager = ocp.CheckpointManager(self.checkpoint_dir, options=options)
        return self._manager

    def _meta(self) -> dict[str, Any]:
        return {"task": type(self.task).__name__, "trainable": list(self.task.trainable),
                "optim": dataclasses.asdict(self.optim),
                "train": dataclasses.asdict(self.config), "run": self.run_config,
                "ema": self.config.ema_decay is not None}

    def save(self, force: bool = True) -> int:
        """Save the state at its step (async unless disabled); returns the step."""
        import orbax.checkpoint as ocp
        step = int(self.state.step)
        mgr = self.manager()
        if step in mgr.all_steps():
            return step
        barrier("checkpoint_save")  # orbax syncs with short-timeout collectives: start together
        mgr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(self.state),
            meta=ocp.args.JsonSave(self._meta())), force=force)
        return step

    def wait(self) -> None:
        if self._manager is not None:
            self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        if not os.path.isdir(self.checkpoint_dir):
            return None
        return self.manager().latest_step()

    def restore(self, step: int | None = None) -> int:
        """Restore the state of ``step`` (default: the latest) onto this trainer's shardings.
        Raises when the checkpoint was written by a different task / set of trained models."""
        import orbax.checkpoint as ocp
        mgr = self.manager()
        step = mgr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.checkpoint_dir}")
        barrier("checkpoint_restore")  # start together (see save)
        meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if meta["trainable"] != list(self.task.trainable) or meta["task"] != type(
                self.task).__name__ or meta["ema"] != (self.config.ema_decay is not None):
            raise ValueError(
                f"checkpoint {self.checkpoint_dir}/{step} is from task {meta['task']} training "
                f"{meta['trainable']} (EMA {meta['ema']}); this run is {type(self.task).__name__}"
                f" training {list(self.task.trainable)} (EMA {self.config.ema_decay is not None})"
                f". Use a new workdir or the matching config.")
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            self.state, self.state_shardings)
        restored = mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))["state"]
        self.state = restored
        return step

    # ---- the loop ------------------------------------------------------------------------------

    def _on_sigterm(self, signum, frame):
        log.warning("SIGTERM: saving a checkpoint after the current step, then stopping")
        self._stop_requested = True

    def fit(self, batches: Callable[[int], Iterator[Mapping[str, Any]]],
            resume: bool = True) -> dict[str, Any]:
        """Train until ``config.num_steps``. ``batches(start_step)`` must yield the batches of
        steps ``start_step, start_step + 1, …`` (the same batch for the same step on every
        call). Resumes from the latest checkpoint in the workdir when ``resume``. Returns a
        summary (steps run, wall time, last metrics, whether the run was pre-empted)."""
        cfg = self.config
        os.makedirs(cfg.workdir, exist_ok=True)
        start = 0
        if resume and self.latest_step() is not None:
            start = self.restore()
            log.info("resumed from step %d", start)
        if jax.process_index() == 0:
            with open(os.path.join(cfg.workdir, "config.json"), "w") as fh:
                json.dump(self._meta(), fh, indent=2, default=str)
        writer = self._writer()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        bar = None
        if cfg.progress and jax.process_index() == 0:
            from tqdm.auto import tqdm
            bar = tqdm(total=cfg.num_steps, initial=start, desc=type(self.task).__name__,
                       unit="step", dynamic_ncols=True)
        last: dict[str, Any] = {}
        pending = None  # metrics of the previous step, read one step late (no host stall)
        t0, steps_run, preempted = time.time(), 0, False
        try:
            it = batches(start)
            for step in range(start, cfg.num_steps):
                batch = next(it)
                metrics = self.train_step(batch)
                steps_run += 1
                if pending is not None:
                    last = self._check(pending, step - 1, writer, bar)
                pending = metrics
                if cfg.image_every and self.image_fn is not None and \
                        (step + 1) % cfg.image_every == 0:
                    self._log_images(writer, batch, step + 1)
                if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
                    self.save(force=True)
                if bar is not None:
                    bar.update(1)
                # every process stops after the same step, even when only some got SIGTERM
                if agree_any(self._stop_requested):
                    preempted = True
                    break
            if pending is not None:
                last = self._check(pending, int(self.state.step) - 1, writer, bar)
            self.save(force=True)
            self.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
        return {"start_step": start, "end_step": int(self.state.step), "steps_run": steps_run,
                "seconds": time.time() - t0, "metrics": last, "preempted": preempted,
                "nonfinite_total": int(self.state.nonfinite_total)}

    def _check(self, metrics, step: int, writer, bar) -> dict[str, float]:
        cfg = self.config
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not host["finite"]:
            log.warning("step %d: non-finite loss or gradient (loss=%s); update skipped "
                        "(%d in a row)", step, host.get("loss"), int(host["nonfinite_streak"]))
            if host["nonfinite_streak"] >= cfg.max_consecutive_nonfinite:
                self.save(force=True)
                self.wait()
                raise NonFiniteError(
                    f"{int(host['nonfinite_streak'])} consecutive steps with a non-finite loss "
                    f"or gradient (last at step {step}); state saved at step "
                    f"{int(self.state.step)}. Lower the learning rate, check the data, or raise "
                    f"TrainConfig.max_consecutive_nonfinite")
        if bar is not None:
            bar.set_postfix(loss=f"{host.get('loss', float('nan')):.4g}")
        if writer is not None and cfg.log_every and (step + 1) % cfg.log_every == 0:
            for k, v in host.items():
                writer.add_scalar(f"train/{k}", v, step + 1)
            writer.flush()
        return host

    def _writer(self):
        if not self.config.tensorboard or jax.process_index() != 0:
            return None
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            log.warning("tensorboardX is not installed: no TensorBoard logs "
                        "(pip install tensorboardX)")
            return None
        return SummaryWriter(os.path.join(self.config.workdir, "tensorboard"))

    def _log_images(self, writer, batch, step: int) -> None:
        if not self.config.tensorboard:
            return
        key = jax.random.fold_in(jax.random.key(self.config.seed), step)
        if not hasattr(self, "_image_jit"):
            def run(params, frozen, batch, key):
                models = self._merge(params, frozen, jax.random.key_data(key))
                return self.image_fn(models, batch, key)
            # replicated output: every process can read it, process 0 writes it
            self._image_jit = jax.jit(run, out_shardings=NamedSharding(self.mesh,
                                                                       PartitionSpec()))
        # every process runs the (collective) program, not only the one that writes
        with jax.set_mesh(self.mesh):
            grid = self._image_jit(self.state.params, self.frozen, self.device_batch(batch),
                                   key)
        if writer is None:
            return
        grid = np.clip(np.asarray(jax.device_get(grid)), 0.0, 1.0)
        writer.add_images("train/views", grid, step, dataformats="NHWC")
        writer.flush()
