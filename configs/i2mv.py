"""Image→multi-view sampling config (docs/design.md §2.4–2.5, §3.3, §4): ``get_config()`` →
``ConfigDict``. Adds the ``clip_vision`` subdirectory; the UNet is kind unet-i2v."""

from __future__ import annotations

import ml_collections

from configs.t2mv import base_config
from configs.train_common import (
    TINY_SAMPLING,
    TINY_UNET,
    TINY_VISION,
    base_train_config,
    model_entry,
    packaged,
)
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


def get_train_config(preset: str = "full") -> ml_collections.ConfigDict:
    """Stage-1 image→MV fine-tuning (design §7): v loss on cosine + zero terminal SNR, offset
    noise 0.1, empty caption, white background, random cyclic frame shift, conditioning on the
    unshifted view 0 (VAE latent + CLIP image embedding), grad ×0.5 on the inherited spatial
    layers, AdamW 3e-5, EMA 0.9999.

    ``full``: converted released unet-i2v, VAE, OpenCLIP text and vision towers; G-Objaverse at
    256², bf16 + remat. ``tiny``: videomv-tiny on ``shapes`` at 64² (VAE and text encoder from
    the tiny exports, a small random frozen vision tower, 10 % condition dropout, no frame
    shift)."""
    c = base_train_config("unet", "image", preset)
    c.grad_scale = 0.5
    # released: no condition dropout, cyclic frame shift on (design §4, §7.1)
    c.data.input = ml_collections.ConfigDict(dict(mode="i2mv", batch_size=8, resolution=256,
                                                  seed=0, caption_dropout=0.0,
                                                  frame_shift=True))
    c.train.ema_decay = 0.9999
    c.task = ml_collections.ConfigDict(dict(train_text_encoder=False))
    if preset == "full":
        c.models.unet = model_entry(overrides=dict(dtype="bfloat16", remat=True))
        c.models.vae = model_entry()
        c.models.text = model_entry()
        c.models.vision = model_entry()
    else:
        # condition dropout (caption → negative prompt and a zero CLIP image embedding, the
        # sampler's uncond branch) so that CFG has a trained unconditional branch; the released
        # recipe has none (design §4: p_zero 0 for images)
        # no cyclic frame shift: the released shift (design §7.1) rotates the object against the
        # fixed camera labels, so the generated orbit starts at a random azimuth relative to the
        # input; without it frame 0 is the input view, as sample.py / eval.py assume
        c.data.input.update(batch_size=4, resolution=64, caption_dropout=0.1, frame_shift=False)
        # started from the tiny text UNet: only the image-conditioning layers start random
        c.models.unet = model_entry(config=dict(variant="image", image_embed_dim=64,
                                                **TINY_UNET), seed=0,
                                    init_from=packaged("unet"))
        c.models.vae = model_entry(checkpoint=packaged("vae"))
        c.models.text = model_entry(checkpoint=packaged("clip_text"))
        c.export.update(dict(models=dict(lgm=packaged("lgm")), sampling=dict(
            TINY_SAMPLING, recenter=False, sampler=dict(TINY_SAMPLING["sampler"],
                                                        background=1.0))))
        c.models.vision = model_entry(config=TINY_VISION, seed=2)
        c.task.context_length = 32
        c.optim.update(learning_rate=3e-4, warmup_steps=100, decay_steps=1500,
                       final_lr_fraction=0.1)
        c.train.update(num_steps=1500, checkpoint_every=250, log_every=25, ema_decay=0.999)
        c.grad_scale = 1.0
        c.pre_encode = True
    return c
