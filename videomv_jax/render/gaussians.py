"""3D Gaussian containers, the LGM activation table and `.ply` input/output.

All attributes are stored *activated* (the values a rasterizer consumes):

==========  ===============  =====================================================
field       shape            meaning
==========  ===============  =====================================================
means       [..., N, 3]      world-space centres
scales      [..., N, 3]      per-axis standard deviations (linear, > 0)
rotations   [..., N, 4]      quaternions ``(w, x, y, z)``; *not* necessarily unit
                             (see :data:`QUAT_NORM_ACROSS_GAUSSIANS`)
opacities   [..., N]         opacity in [0, 1]
colors      [..., N, C]      colour / feature channels (RGB in [0, 1] for LGM)
==========  ===============  =====================================================

Leading axes ``...`` are scene batch axes; they are shared by every field.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Gaussians:
    """A batch of 3D Gaussians (a JAX pytree; every field is an array with the same leading axes)."""

    means: jax.Array
    scales: jax.Array
    rotations: jax.Array
    opacities: jax.Array
    colors: jax.Array

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[-2]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return self.means.shape[:-2]

    def validate(self) -> Gaussians:
        """Check that the field shapes agree; raises ``ValueError`` naming the offending field."""
        batch, n = self.means.shape[:-2], self.means.shape[-2]
        expected = {
            "means": (*batch, n, 3),
            "scales": (*batch, n, 3),
            "rotations": (*batch, n, 4),
            "opacities": (*batch, n),
        }
        for name, shape in expected.items():
            got = getattr(self, name).shape
            if tuple(got) != shape:
                raise ValueError(
                    f"Gaussians.{name} has shape {tuple(got)}, expected {shape} "
                    f"(means has shape {tuple(self.means.shape)})"
                )
        if tuple(self.colors.shape[:-1]) != (*batch, n):
            raise ValueError(
                f"Gaussians.colors has shape {tuple(self.colors.shape)}, expected {(*batch, n, 'C')}"
            )
        return self

    def astype(self, dtype) -> Gaussians:
        return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), self)
