"""videomv_jax.data: multi-view data sets (G-Objaverse, procedural shapes) and input pipeline.

The TFDS builders (:mod:`videomv_jax.data.builders`: ``build_dataset``, ``load_source``,
``GObjaverse``, ``Shapes``) are imported lazily on first access, so importing this package does
not import ``tensorflow_datasets``.
"""

from __future__ import annotations

import importlib
from typing import Any

from videomv_jax.data.gobjaverse import (
    BadCameraError,
    BadExampleError,
    MissingCaptionError,
    MissingViewError,
    UnreadableImageError,
    list_objects,
    load_captions,
    load_object,
)
from videomv_jax.data.pipeline import (
    DEFAULT_NEGATIVE_PROMPT,
    InputConfig,
    InputPipeline,
    batch_sharding,
    composite,
    globalize,
    synthetic_batches,
)

_LAZY = {
    "BuildResult", "GObjaverse", "GObjaverseConfig", "Shapes", "ShapesConfig",
    "build_dataset", "load_source", "make_builder", "read_bad_examples",
}

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "BadCameraError",
    "BadExampleError",
    "InputConfig",
    "InputPipeline",
    "MissingCaptionError",
    "MissingViewError",
    "UnreadableImageError",
    "batch_sharding",
    "composite",
    "globalize",
    "list_objects",
    "load_captions",
    "load_object",
    "synthetic_batches",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("videomv_jax.data.builders"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
