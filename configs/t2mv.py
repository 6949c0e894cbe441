"""Text→multi-view sampling config (spec §3.3, §4, §5): ``get_config()`` → ``ConfigDict``.

``checkpoint_dir`` holds converted models (``tools/convert_torch_weights.py``) in the
subdirectories named by ``subdirs``: ``unet`` (kind unet-t2v), ``vae``, ``clip_text`` (with a
``tokenizer/`` folder) and ``lgm``. ``sampler`` holds :class:`SamplerConfig` fields.
"""

from __future__ import annotations

import ml_collections

from videomv_jax.diffusion.sampler import SamplerConfig

NEGATIVE_PROMPT = ("Distorted, discontinuous, Ugly, blurry, low resolution, disfigured, "
                   "disconnected limbs, Ugly faces, incomplete arms")


def base_config(mode: str, sampler: SamplerConfig) -> ml_collections.ConfigDict:
    """Fields shared by text→MV and image→MV."""
    c = ml_collections.ConfigDict()
    c.mode = mode
    c.checkpoint_dir = ""
    c.subdirs = ml_collections.ConfigDict(dict(unet="unet", vae="vae", clip_text="clip_text",
                                               lgm="lgm"))
    c.num_frames = 24
    c.resolution = 256
    c.negative_prompt = NEGATIVE_PROMPT
    c.seed = 11
    d = sampler.to_dict()
    d["aware_steps"] = tuple(d["aware_steps"])
    d["aware_views"] = tuple(d["aware_views"])
    d["background"] = (tuple(d["background"]) if isinstance(d["background"], list)
                       else d["background"])
    d["progress"] = True
    d.pop("keep_trajectory")
    c.sampler = ml_collections.ConfigDict(d)
    c.output = ml_collections.ConfigDict(dict(fps=8, grid_cols=6, write_video=True,
                                              write_ply=True))
    # As released, also sample plain DDIM (no 3D-aware step) from the same noise.
    c.also_plain = False
    return c


def get_config() -> ml_collections.ConfigDict:
    """Released text→MV settings: 24 views at 256², orbit 15° / 2.0, DDIM 50, CFG 9,
    3D-aware steps 20/30/40, prompt suffix ", 3d asset", seed 11."""
    c = base_config("t2mv", SamplerConfig.text())
    c.elevation = 15.0
    c.distance = 2.0
    c.prompt_suffix = ", 3d asset"
    return c
