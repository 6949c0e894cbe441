"""videomv_jax.diffusion"""
