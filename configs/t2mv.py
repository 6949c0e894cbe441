"""Text→multi-view sampling config (docs/design.md §3.3, §4, §5): ``get_config()`` → ``ConfigDict``.

``checkpoint_dir`` holds converted models (``tools/convert_torch_weights.py``) in the
subdirectories named by ``subdirs``: ``unet`` (kind unet-t2v), ``vae``, ``clip_text`` (with a
``tokenizer/`` folder) and ``lgm``. ``sampler`` holds :class:`SamplerConfig` fields.
"""

from __future__ import annotations

import ml_collections

from configs.train_common import (
    TINY_SAMPLING,
    TINY_TEXT,
    TINY_UNET,
    base_train_config,
    model_entry,
    packaged,
)
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
    # asset_turntable: render gaussians.ply at the views' cameras into turntable.mp4
    c.output = ml_collections.ConfigDict(dict(fps=8, grid_cols=6, write_video=True,
                                              write_ply=True, asset_turntable=True))
    # As released, also sample plain DDIM (no 3D-aware step) from the same noise.
    c.also_plain = False
    # Sampling on several devices (MultiViewPipeline): the inputs of one process run in
    # batches of data × batch_per_device samples, split over the mesh's data axis; devices: how
    # many local devices (0 = all); fsdp / tensor > 1 also split the models' parameters (models
    # too big for one device): data = devices / (fsdp × tensor).
    c.parallel = ml_collections.ConfigDict(dict(devices=0, batch_per_device=1, fsdp=1,
                                                tensor=1))
    return c


def get_config() -> ml_collections.ConfigDict:
    """Released text→MV settings: 24 views at 256², orbit 15° / 2.0, DDIM 50, CFG 9,
    3D-aware steps 20/30/40, prompt suffix ", 3d asset", seed 11."""
    c = base_config("t2mv", SamplerConfig.text())
    c.elevation = 15.0
    c.distance = 2.0
    c.prompt_suffix = ", 3d asset"
    return c


def get_train_config(preset: str = "full") -> ml_collections.ConfigDict:
    """Stage-1 text→MV fine-tuning (design §7): eps loss on linear_sd, caption dropout 10 % to the
    negative prompt, grey background, grad ×0.5 on the inherited spatial layers, AdamW 3e-5.

    ``full``: the released UNet (``models.unet.checkpoint``: a converted unet-t2v directory),
    frozen SD VAE and OpenCLIP text tower (converted directories), G-Objaverse at 256², batch 8,
    bf16 compute with remat. ``tiny``: videomv-tiny on ``shapes`` at 64² from scratch (the
    packaged videomv-tiny VAE, or ``configs/vae.py:tiny``'s export via ``--set
    models.vae.checkpoint=DIR``; text encoder trained jointly, a caption tokenizer); its export
    takes the packaged LGM, so it samples as it is."""
    c = base_train_config("unet", "text", preset)
    c.grad_scale = 0.5
    c.data.input = ml_collections.ConfigDict(dict(mode="t2mv", batch_size=8, resolution=256,
                                                  seed=0))
    if preset == "full":
        c.models.unet = model_entry(overrides=dict(dtype="bfloat16", remat=True))
        c.models.vae = model_entry()
        c.models.text = model_entry()
        c.task = ml_collections.ConfigDict(dict(train_text_encoder=False))
    else:
        c.data.input.update(batch_size=4, resolution=64)
        c.models.unet = model_entry(config=dict(variant="text", **TINY_UNET), seed=0)
        c.models.vae = model_entry(checkpoint=packaged("vae"))
        c.models.text = model_entry(config=TINY_TEXT, seed=1)
        c.export.update(dict(models=dict(lgm=packaged("lgm")), sampling=TINY_SAMPLING))
        c.tokenizer = "build"
        c.task = ml_collections.ConfigDict(dict(train_text_encoder=True, context_length=32))
        c.optim.update(learning_rate=4e-4, warmup_steps=100, decay_steps=5000,
                       final_lr_fraction=0.1)
        c.train.update(num_steps=5000, checkpoint_every=250, log_every=25, ema_decay=0.999)
        c.grad_scale = 1.0  # trained from scratch: nothing is inherited
        c.pre_encode = True  # the frozen VAE encodes the data set once, not in every step
    return c
