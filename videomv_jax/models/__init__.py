"""videomv_jax.models"""
