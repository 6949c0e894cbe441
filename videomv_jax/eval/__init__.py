"""videomv_jax.eval"""
