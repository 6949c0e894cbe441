"""videomv_jax.train"""
