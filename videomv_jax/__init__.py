"""videomv-jax: JAX/Flax VideoMV (consistent multi-view generation with 3D-aware sampling)."""

__version__ = "0.1.0.dev0"
