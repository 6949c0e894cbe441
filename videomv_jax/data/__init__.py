"""videomv_jax.data"""
