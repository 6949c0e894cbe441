"""VideoMV's gradient hook: ×0.5 on the parameters inherited from the image model.

The released fine-tuning multiplies the gradients of 682 named parameters by ``grad_scale``
(0.5): the spatial UNet of the text-to-image base (``conv_in``, the ResBlocks' 2-D parts, the
spatial transformers, down/up-sampling convs, the output head). Temporal layers, the time /
camera / fps / context embeddings and the image-conditioning modules get the full gradient
(docs/design.md §7.2). The list ships as ``train/data/grad_scale_keys.json`` (VGen state-dict
names).

Our parameters are mapped to VGen names through the converter's own table
(:func:`videomv_jax.convert.unet.rules_vgen`): a parameter is scaled iff its source name is
*inherited*. For the released (full-size) configs that set is exactly the released list (the
tests check it); for other sizes the same rule is applied by layer kind (:func:`is_inherited`),
since the released list only names full-size layers.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

from videomv_jax.convert.unet import rules_vgen
from videomv_jax.models.unet3d import UNet3DConfig, unet_layout

__all__ = ["RELEASED_GRAD_SCALE", "grad_scale_tree", "inherited_params", "is_inherited",
           "released_grad_scale_keys"]

#: ``grad_scale`` of the released training configs.
RELEASED_GRAD_SCALE = 0.5

_SPATIAL_KINDS = ("conv_in", "res", "spatial", "down", "up")


@functools.lru_cache(maxsize=1)
def released_grad_scale_keys() -> frozenset[str]:
    """The 682 VGen state-dict names whose gradient VideoMV scales (its
    ``stable_diffusion_image_key_temporal_attention_x1.json``)."""
    text = resources.files("videomv_jax.train").joinpath("data/grad_scale_keys.json").read_text()
    return frozenset(json.loads(text))


def is_inherited(target_path: tuple[Any, ...], cfg: UNet3DConfig) -> bool:
    """Whether a UNet parameter (our path, e.g. ``('input_blocks', 1, 0, 'in_conv', 'kernel')``)
    belongs to the spatial image-model part: layers of kind conv_in / res / spatial / down / up
    (minus the ResBlocks' temporal conv stack) and the output head."""
    head = target_path[0]
    if head in ("out_norm", "out_conv"):
        return True
    if head not in ("input_blocks", "middle_block", "output_blocks"):
        return False
    inputs, middle, outputs = unet_layout(cfg)
    if head == "middle_block":
        spec, rest = middle[target_path[1]], target_path[2:]
    else:
        blk = (inputs if head == "input_blocks" else outputs)[target_path[1]]
        if blk[0].kind == "down":  # a bare Downsample: ('input_blocks', k, 'op', ...)
            spec, rest = blk[0], target_path[2:]
        else:
            spec, rest = blk[target_path[2]], target_path[3:]
    return spec.kind in _SPATIAL_KINDS and "temporal_conv" not in rest


def inherited_params(cfg: UNet3DConfig) -> dict[tuple[Any, ...], str]:
    """Our parameter path → VGen source name, for every inherited (×0.5) parameter."""
    rules, _ = rules_vgen(cfg)
    return {r.target: r.source for r in rules if is_inherited(r.target, cfg)}


def grad_scale_tree(params: Mapping[str, Any], cfg: UNet3DConfig,
                    scale: float = RELEASED_GRAD_SCALE) -> dict[str, Any]:
    """A pure dict shaped like the UNet's parameter dict ``params`` (``nnx.split(...)[1]
    .to_pure_dict()``) holding ``scale`` for inherited parameters and ``1.0`` elsewhere."""
    inherited = set(inherited_params(cfg))

    def walk(node: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(node, Mapping):
            return {k: walk(v, path + (k,)) for k, v in node.items()}
        return scale if path in inherited else 1.0

    return walk(params, ())
