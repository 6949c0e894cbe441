"""Grow a trained model without changing what it computes, so that training can go on with more
capacity instead of starting again.

:func:`deepen_text_encoder` adds transformer blocks to a CLIP text tower. The blocks that become
active start with zero output projections (attention ``out_proj`` and MLP ``c_proj``), so each
is an exact identity (``x + 0``) until training moves them, like zero-initialised residual
branches elsewhere (ControlNet's zero convolutions, the UNet's zero ``proj_out``).
A use: a text tower whose context comes from a single block (two blocks with
``output_layer="penultimate"``) can hardly bind colours to shapes in two-object captions;
deepening it keeps what it learnt and adds capacity.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from videomv_jax.models.clip import CLIPTextModel

ZERO_INIT = (("attn", "out_proj"), ("mlp", "c_proj"))


def active_blocks(config) -> int:
    """How many blocks a text tower's output passes through (``penultimate`` skips the last)."""
    return config.layers - 1 if config.output_layer == "penultimate" else config.layers


def deepen_text_encoder(model: CLIPTextModel, layers: int, seed: int = 0) -> CLIPTextModel:
    """A copy of ``model`` with ``layers`` blocks and the same output for every input.

    The blocks the old model ran keep their weights. The others (new ones, and under
    ``penultimate`` the old skipped last block) get a fresh initialisation from ``seed``, with
    zero output projections on every block that the deeper model runs: the output is unchanged
    exactly, and gradients reach the new blocks through those projections from the first step.
    """
    old = model.config
    if layers <= old.layers:
        raise ValueError(f"deepen_text_encoder needs more blocks than the model's {old.layers}, "
                         f"got layers={layers}")
    cfg = dataclasses.replace(old, layers=layers)
    grown = CLIPTextModel(cfg, rngs=nnx.Rngs(seed))
    keep = active_blocks(old)
    source = {tuple(str(k) for k in path): var.get_value()
              for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    state = nnx.state(grown, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        key = tuple(str(k) for k in path)
        if key[:2] == ("transformer", "resblocks") and int(key[2]) >= keep:
            if key[3:5] in ZERO_INIT:
                var.set_value(jnp.zeros_like(var.get_value()))
            continue
        var.set_value(jnp.asarray(source[key], var.get_value().dtype))
    nnx.update(grown, state)
    return grown
