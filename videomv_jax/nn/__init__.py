"""videomv_jax.nn"""
