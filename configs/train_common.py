"""Shared pieces of the training configs (``configs/{t2mv,i2mv,recon,vae}.py``:
``get_train_config(preset)``); the layout is documented in :mod:`videomv_jax.train.run`.

Presets: ``full`` (the released VideoMV recipe on G-Objaverse with converted released weights:
fill in ``data.path`` and the ``models.*.checkpoint`` directories) and ``tiny`` (the
``videomv-tiny`` recipe: small models trained from scratch on the procedural ``shapes`` data at
64², 24 views; runs on a CPU).
"""

from __future__ import annotations

import ml_collections

#: videomv-tiny model sizes (64² views, f8 VAE → 8² latents)
TINY_VAE = dict(ch=16, ch_mult=(1, 2, 4, 4), num_res_blocks=1, norm_groups=8)
TINY_TEXT = dict(vocab_size=512, context_length=32, width=64, layers=2, heads=4, mlp_dim=128,
                 projection_dim=None)
TINY_VISION = dict(image_size=56, patch_size=14, width=64, layers=2, heads=4, mlp_dim=128,
                   output_dim=64)
TINY_UNET = dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                 attn_levels=(True, True, False), head_dim=16, first_temporal_heads=2,
                 context_dim=64, norm_groups=8, resblock_dropout=0.0, temporal_conv_dropout=0.0)
TINY_LGM = dict(input_size=64, splat_size=32, output_size=64, down_channels=(16, 32, 64),
                down_attention=(False, False, True), up_channels=(64, 32),
                up_attention=(True, False), attention_heads=4, norm_groups=8, layers_per_block=1,
                # trained from scratch: unit quaternions and centres on the pixel rays (clamped
                # absolute centres lose their gradient once past the box; docs/design.md §6.3)
                quat_norm="per_gaussian", positions="ray")


def base_train_config(stage: str, variant: str, preset: str) -> ml_collections.ConfigDict:
    if preset not in ("full", "tiny"):
        raise ValueError(f"unknown preset {preset!r}; choose 'full' or 'tiny'")
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.variant = variant
    c.preset = preset
    c.workdir = f"runs/{stage}-{variant}-{preset}"
    c.data = ml_collections.ConfigDict(dict(
        name="gobjaverse" if preset == "full" else "shapes", path=""))
    c.models = ml_collections.ConfigDict()
    c.tokenizer = ""
    c.task = ml_collections.ConfigDict()
    c.optim = ml_collections.ConfigDict(dict(learning_rate=3e-5, warmup_steps=10,
                                             decay_steps=1_000_000, weight_decay=0.0))
    c.optim.clip_grad_norm = ml_collections.FieldReference(None, field_type=float)
    c.train = ml_collections.ConfigDict(dict(
        num_steps=100_000 if preset == "full" else 3000, seed=0, log_every=10,
        image_every=0, checkpoint_every=500, keep_checkpoints=3, async_checkpointing=True,
        ema_decay=None, max_consecutive_nonfinite=10, mesh_data=-1, mesh_fsdp=1, mesh_tensor=1,
        progress=True, tensorboard=True))
    c.grad_scale = 1.0
    # stage 1: encode the data set once with the frozen VAE (every process holds the table)
    c.pre_encode = False
    c.lpips = ml_collections.ConfigDict(dict(vgg16="", weights=""))
    # what train.py --export writes beside the trained models so that the folder samples:
    # ``models`` {subdir: converted folder} copied in (e.g. the LGM of a UNet run), and
    # ``sampling`` the settings the models were trained for (``sampling.json``)
    c.export = ml_collections.ConfigDict(dict(models={}, sampling={}))
    return c


def packaged(name: str) -> str:
    """A model folder of the packaged videomv-tiny (``videomv_jax/weights/videomv_tiny/``):
    what the tiny presets build on, so that they run on a fresh clone."""
    from videomv_jax.tiny import weights_dir

    return str(weights_dir() / name)


#: videomv-tiny's sampling settings (its manifest's ``modes``): 64² views on the shapes orbit
TINY_SAMPLING = dict(resolution=64, elevation=15.0, distance=1.645,
                     sampler=dict(num_steps=25, aware_steps=(10, 15, 20), guidance_scale=3.0,
                                  render_size=64, capacity_per_scene=1_048_576))


def model_entry(checkpoint: str = "", config: dict | None = None, seed: int = 0,
                overrides: dict | None = None, init_from: str = "") -> ml_collections.ConfigDict:
    """One model: a converted ``checkpoint`` directory, or a ``config`` dict (random init from
    ``seed``, then ``init_from``'s parameters wherever path and shape agree); ``overrides``:
    config fields changed after loading (dtype, remat, attention)."""
    d = dict(checkpoint=checkpoint, seed=seed, overrides=dict(overrides or {}),
             init_from=init_from)
    if config is not None:
        d["config"] = config
    return ml_collections.ConfigDict(d)
