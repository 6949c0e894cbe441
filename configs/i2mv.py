"""Image→multi-view sampling config (spec §2.4–2.5, §3.3, §4): ``get_config()`` →
``ConfigDict``. Adds the ``clip_vision`` subdirectory; the UNet is kind unet-i2v."""

from __future__ import annotations

import ml_collections

from configs.t2mv import base_config
from videomv_jax.diffusion.sampler import SamplerConfig


def get_config() -> ml_collections.ConfigDict:
    """Released image→MV settings: orbit 5° / 1.7, cosine + zero-SNR v-prediction, CFG 6, empty
    caption, input recentred (alpha box → 200 px of a 256 white canvas), seed 9999, fps 8."""
    c = base_config("i2mv", SamplerConfig.image())
    c.subdirs.clip_vision = "clip_vision"
    c.elevation = 5.0
    c.distance = 1.7
    c.prompt = ""
    c.recenter = True
    c.recenter_size = 200
    c.fps_cond = 8.0
    c.seed = 9999
    return c
