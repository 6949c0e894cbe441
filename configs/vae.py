"""KL autoencoder training config (``get_train_config(preset)``): only for models trained
from scratch. The released VideoMV keeps the SD VAE frozen; videomv-tiny needs a small one
(f8: 64² views → 8² latents), trained on single ``shapes`` views with L1 + MSE + a small KL."""

from __future__ import annotations

import ml_collections

from configs.train_common import TINY_VAE, base_train_config, model_entry


def get_train_config(preset: str = "tiny") -> ml_collections.ConfigDict:
    if preset != "tiny":
        raise ValueError("configs/vae.py only has the 'tiny' preset (the released VideoMV uses "
                         "the converted SD VAE, frozen)")
    c = base_train_config("vae", "text", preset)
    c.data.input = ml_collections.ConfigDict(dict(mode="recon", batch_size=8, resolution=64,
                                                  seed=0))
    c.models.vae = model_entry(config=TINY_VAE, seed=0)
    # train_encoder=False: decoder-only fine-tuning that keeps the latent space of an already
    # trained diffusion model (start from it with models.vae.checkpoint=...)
    c.task = ml_collections.ConfigDict(dict(kl_weight=1e-6, views_per_example=2,
                                            train_encoder=True))
    c.optim.update(learning_rate=1e-3, warmup_steps=50, decay_steps=20_000,
                   final_lr_fraction=0.1)
    c.train.update(num_steps=2000, checkpoint_every=250, log_every=25)
    return c
