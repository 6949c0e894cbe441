"""Exporters from 3D Gaussians to other asset formats (meshes: :mod:`videomv_jax.export.mesh`)."""
