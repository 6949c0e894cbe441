"""Reconstructor (LGM) training configs: ``get_train_config(preset)``.

Stage 2 of VideoMV (docs/design.md §6.5): LGM trained on the frozen text UNet's x̂0 predictions at a
random t (4 random input views decoded by the VAE, 8 supervised views rendered on a random
background, MSE(rgb) + MSE(alpha) + LPIPS-VGG). ``task.source="gt"`` trains LGM on the
ground-truth renders instead (plain LGM training; what videomv-tiny uses, since its UNet is
trained in the same session).
"""

from __future__ import annotations

import ml_collections

from configs.train_common import TINY_LGM, TINY_SAMPLING, base_train_config, model_entry, packaged


def get_train_config(preset: str = "full") -> ml_collections.ConfigDict:
    """``full``: converted lgm_big + frozen text UNet / VAE / text tower, G-Objaverse 256² views
    with 512² ground truth, LPIPS when ``lpips.vgg16`` / ``lpips.weights`` are given.
    ``tiny``: a small LGM (64² in, 32² splats) on ``shapes`` ground truth (64² views,
    supervised with 32² renders)."""
    c = base_train_config("recon", "text", preset)
    c.data.input = ml_collections.ConfigDict(dict(mode="recon", batch_size=8, resolution=256,
                                                  hr_resolution=512, seed=0))
    if preset == "full":
        c.models.lgm = model_entry(overrides=dict(dtype="bfloat16", remat=True))
        c.models.unet = model_entry()
        c.models.vae = model_entry()
        c.models.text = model_entry()
        c.task = ml_collections.ConfigDict(dict(source="unet", num_input_views=4,
                                                num_supervised_views=8, fovy=39.6,
                                                render_size=512, use_lpips=True,
                                                lpips_weight=1.0, lpips_size=256))
    else:
        c.data.input.update(batch_size=4, resolution=64, hr_resolution=None)
        c.models.lgm = model_entry(config=TINY_LGM, seed=0)
        c.task = ml_collections.ConfigDict(dict(source="gt", num_input_views=4,
                                                num_supervised_views=8, fovy=39.6,
                                                # supervised at 32² (the rasterizer backward
                                                # dominates the CPU step at 64²)
                                                render_size=32, use_lpips=False,
                                                capacity_per_scene=262_144))
        # LGM's own recipe (lr 4e-4, clip 1.0): a larger unclipped step can push every opacity
        # below the rasterizer's alpha cut-off, where no gradient reaches it again
        c.optim.update(learning_rate=4e-4, warmup_steps=100, decay_steps=1200,
                       final_lr_fraction=0.1, clip_grad_norm=1.0)
        c.train.update(num_steps=1200, checkpoint_every=250, log_every=25)
        # the export samples text→MV with the packaged videomv-tiny UNet, VAE and text tower
        c.export.update(dict(models=dict(unet=packaged("unet"), vae=packaged("vae"),
                                         clip_text=packaged("clip_text")),
                             sampling=TINY_SAMPLING))
    return c
