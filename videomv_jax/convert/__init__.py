"""videomv_jax.convert"""
