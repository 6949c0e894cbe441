"""ml_collections configs (t2mv.py, i2mv.py, recon.py and their tiny presets).

They arrive with the models (the UNet/VAE/CLIP issue) and the sampler; the rasterizer's own
settings are the named presets of :mod:`videomv_jax.render.rasterize`.
"""
