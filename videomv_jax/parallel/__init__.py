"""videomv_jax.parallel"""
