"""videomv-jax: a JAX/Flax reimplementation of VideoMV (multi-view generation with 3D-aware sampling)."""

__version__ = "0.1.0.dev0"
