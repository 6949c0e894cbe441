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

import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class Gaussians:
    """A batch of 3D Gaussians (a JAX pytree; every field is an array with the same leading
    axes)."""

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
                f"Gaussians.colors has shape {tuple(self.colors.shape)}, "
                f"expected {(*batch, n, 'C')}"
            )
        return self

    def astype(self, dtype) -> Gaussians:
        return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), self)


def rotation_to_quaternion(rot: np.ndarray) -> np.ndarray:
    """Unit quaternions ``(w, x, y, z)`` [..., 4] of rotation matrices [..., 3, 3] (Shepperd's
    method: the largest of w², x², y², z² is taken first, so it is stable for every angle)."""
    r = np.asarray(rot, np.float64)
    m00, m11, m22 = r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]
    cands = np.stack([
        np.stack([1 + m00 + m11 + m22, r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0],
                  r[..., 1, 0] - r[..., 0, 1]], -1),
        np.stack([r[..., 2, 1] - r[..., 1, 2], 1 + m00 - m11 - m22, r[..., 0, 1] + r[..., 1, 0],
                  r[..., 0, 2] + r[..., 2, 0]], -1),
        np.stack([r[..., 0, 2] - r[..., 2, 0], r[..., 0, 1] + r[..., 1, 0], 1 - m00 + m11 - m22,
                  r[..., 1, 2] + r[..., 2, 1]], -1),
        np.stack([r[..., 1, 0] - r[..., 0, 1], r[..., 0, 2] + r[..., 2, 0],
                  r[..., 1, 2] + r[..., 2, 1], 1 - m00 - m11 + m22], -1),
    ], -2)  # row k: 4·q_k·q
    k = np.argmax(np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22,
                            1 - m00 - m11 + m22], -1), axis=-1)
    q = np.take_along_axis(cands, k[..., None, None], axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def _quaternion_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw], -1)


def transform_gaussians(gaussians: Gaussians, matrix: Any,
                        normalize_quaternions: bool = False) -> Gaussians:
    """Move Gaussians (numpy, any batch axes) by the rigid 4×4 ``matrix`` (``x -> R x + t``):
    the same scene seen from cameras moved the same way renders the same images.

    Colours are RGB (SH degree 0, view-independent). Rotations come out as unit quaternions:
    they are rotated directly when they are unit (or ``normalize_quaternions``, the gsplat
    convention); non-unit quaternions used as given (Inria's rasterizer, the released LGM's
    :data:`QUAT_NORM_ACROSS_GAUSSIANS`) describe a non-orthogonal matrix ``M``, so the covariance
    ``R M S² Mᵀ Rᵀ`` is rotated and factored again into unit quaternions and scales (exact up to
    rounding, and what standard ``.ply`` viewers expect)."""
    m = np.asarray(matrix, np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ValueError(f"transform_gaussians needs a finite 4x4 matrix, got shape {m.shape}")
    rot, t = m[:3, :3], m[:3, 3]
    if (not np.allclose(rot @ rot.T, np.eye(3), atol=1e-4) or np.linalg.det(rot) < 0
            or not np.allclose(m[3], [0, 0, 0, 1])):
        raise ValueError("transform_gaussians needs a rigid transform (rotation + translation)")
    if gaussians.colors.shape[-1] != 3:
        raise ValueError(f"transform_gaussians handles RGB colours (SH degree 0), got "
                         f"{gaussians.colors.shape[-1]} channels")
    means = np.asarray(gaussians.means, np.float64) @ rot.T + t
    quats = np.asarray(gaussians.rotations, np.float64)
    scales = np.asarray(gaussians.scales, np.float64)
    norm = np.linalg.norm(quats, axis=-1, keepdims=True)
    if normalize_quaternions or np.allclose(norm, 1.0, atol=1e-4):
        quats = _quaternion_multiply(rotation_to_quaternion(rot), quats / norm)
    else:
        w, x, y, z = np.moveaxis(quats, -1, 0)
        basis = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                          2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                          2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
                         -1).reshape(*quats.shape[:-1], 3, 3)
        a = rot @ basis * scales[..., None, :]
        eigval, eigvec = np.linalg.eigh(a @ np.swapaxes(a, -1, -2))
        eigvec = eigvec * np.where(np.linalg.det(eigvec) < 0, -1.0, 1.0)[..., None, None]
        quats = rotation_to_quaternion(eigvec)
        scales = np.sqrt(np.maximum(eigval, 0.0))
        scales = np.maximum(scales, np.finfo(np.float32).tiny)
    return Gaussians(means=means.astype(np.float32), scales=scales.astype(np.float32),
                     rotations=quats.astype(np.float32),
                     opacities=np.asarray(gaussians.opacities, np.float32),
                     colors=np.asarray(gaussians.colors, np.float32))


# ---------------------------------------------------------------------------------------------
# LGM activation table
# ---------------------------------------------------------------------------------------------

LGM_CHANNELS = 14
"""Number of raw channels per Gaussian predicted by the LGM head."""

QUAT_NORM_PER_GAUSSIAN = "per_gaussian"
"""Normalise every quaternion to unit length (upstream LGM after its fix; the correct choice)."""

QUAT_NORM_ACROSS_GAUSSIANS = "across_gaussians"
"""Released VideoMV checkpoints' behaviour: PyTorch ``F.normalize(x, dim=1)`` on a ``[B, N, 4]``
tensor, i.e. each quaternion *component* is divided by its L2 norm taken across the N Gaussians.
The resulting quaternions are not unit length; the released weights were trained with this."""

QUAT_NORM_OPTIONS = (QUAT_NORM_PER_GAUSSIAN, QUAT_NORM_ACROSS_GAUSSIANS)

POSITIONS_ABSOLUTE = "absolute"
"""LGM's position head (the released weights): ``means = clip(raw[0:3], -1, 1)``. A centre
pushed past the box gets no gradient again, so a small model trained from scratch can end up
with its centres on the box's faces, out of view (see :data:`POSITIONS_RAY`)."""

POSITIONS_RAY = "ray"
"""Pixel-aligned depth: every Gaussian lies on the ray of its splat pixel, ``means = p0 +
tanh(raw[0]) · d``, where ``d`` is the unit ray direction and ``p0`` the ray's closest point to
the world origin (both from the Plücker input ``[o × d, d]``), so centres stay within the unit
distance of ``p0`` and always project onto their own pixel in their input view; ``raw[1:3]`` are
unused. A choice for models trained from scratch (our tiny LGM), not a released format."""

POSITION_OPTIONS = (POSITIONS_ABSOLUTE, POSITIONS_RAY)

_NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize default


class LGMChannel(NamedTuple):
    """One row of the LGM activation table: channel range ``[start, stop)`` and its activation."""

    start: int
    stop: int
    activation: str

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)


LGM_CHANNEL_TABLE: dict[str, LGMChannel] = {
    "means": LGMChannel(0, 3, "clip(x, -1, 1)"),
    "opacities": LGMChannel(3, 4, "sigmoid(x)"),
    "scales": LGMChannel(4, 7, "0.1 * softplus(x)"),
    "rotations": LGMChannel(7, 11, "x / max(||x||, 1e-12)  (axis chosen by quat_norm)"),
    "colors": LGMChannel(11, 14, "0.5 * tanh(x) + 0.5"),
}
"""Raw channel layout ``[pos 3 | opacity 1 | scale 3 | rotation 4 | rgb 3]`` keyed by field."""


def _l2_normalize(x: jax.Array, axis: int) -> jax.Array:
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, _NORMALIZE_EPS)


def ray_means(depth: jax.Array, rays: jax.Array) -> jax.Array:
    """Centres on the pixel rays (:data:`POSITIONS_RAY`): raw ``depth [..., N]`` and Plücker
    ``rays [..., N, 6]`` (``[o × d, d]``; ``d`` need not be unit, e.g. averaged over pixels)
    → ``p0 + tanh(depth) · d̂`` with ``p0 = d̂ × (o × d̂)``, the ray's point closest to the origin."""
    moment, direction = rays[..., :3], rays[..., 3:]
    norm = jnp.linalg.norm(direction, axis=-1, keepdims=True)
    d = direction / norm
    # o × d̂ = (o × d) / |d| for every d along the same ray
    p0 = jnp.cross(d, moment / norm)
    return p0 + jnp.tanh(depth)[..., None] * d


def lgm_activations(raw: jax.Array, quat_norm: str = QUAT_NORM_PER_GAUSSIAN,
                    rays: jax.Array | None = None) -> Gaussians:
    """Map raw LGM head outputs ``[..., N, 14]`` to activated :class:`Gaussians`.

    ``quat_norm`` selects the rotation normalisation, one of :data:`QUAT_NORM_OPTIONS`
    (:data:`QUAT_NORM_ACROSS_GAUSSIANS` reproduces the released VideoMV checkpoints).
    ``rays`` ``[..., N, 6]`` (Plücker, one per Gaussian) selects :data:`POSITIONS_RAY`;
    ``None`` the released :data:`POSITIONS_ABSOLUTE` head.
    """
    if quat_norm not in QUAT_NORM_OPTIONS:
        raise ValueError(
            f"unknown quat_norm {quat_norm!r}; valid options: "
            + ", ".join(repr(o) for o in QUAT_NORM_OPTIONS)
        )
    raw = jnp.asarray(raw)
    if raw.ndim < 2 or raw.shape[-1] != LGM_CHANNELS:
        raise ValueError(
            f"lgm_activations expects raw of shape [..., N, {LGM_CHANNELS}], got {tuple(raw.shape)}"
        )
    if rays is not None and tuple(rays.shape) != (*raw.shape[:-1], 6):
        raise ValueError(f"lgm_activations: rays must have shape {(*raw.shape[:-1], 6)} (one "
                         f"Plücker ray per Gaussian), got {tuple(rays.shape)}")
    t = LGM_CHANNEL_TABLE
    rot = raw[..., t["rotations"].slice]
    # per-Gaussian: normalise over the 4 components; across: over the N axis (the VideoMV bug).
    rot = _l2_normalize(rot, axis=-1 if quat_norm == QUAT_NORM_PER_GAUSSIAN else -2)
    if rays is None:
        means = jnp.clip(raw[..., t["means"].slice], -1.0, 1.0)
    else:
        means = ray_means(raw[..., t["means"].start], rays)
    return Gaussians(
        means=means,
        scales=0.1 * jax.nn.softplus(raw[..., t["scales"].slice]),
        rotations=rot,
        opacities=jax.nn.sigmoid(raw[..., t["opacities"].start]),
        colors=0.5 * jnp.tanh(raw[..., t["colors"].slice]) + 0.5,
    )


# ---------------------------------------------------------------------------------------------
# .ply input / output (standard 3D Gaussian Splatting layout)
# ---------------------------------------------------------------------------------------------

SH_C0 = 0.28209479177387814
"""Real spherical-harmonics degree-0 constant; ``f_dc = (rgb - 0.5) / SH_C0``."""

PLY_OPACITY_EPS = 1e-7
"""Opacities are clipped to ``[eps, 1 - eps]`` before the logit so that 0 and 1 stay finite.
This is the only value change made on export; everything else round-trips to float32 precision."""

PLY_PROPERTIES = (
    "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
)  # fmt: skip
"""Vertex properties written by :func:`save_ply`, in order (all ``float``)."""

_PLY_REQUIRED = tuple(p for p in PLY_PROPERTIES if p not in ("nx", "ny", "nz"))

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip

_PLY_FORMAT_HINT = (
    "re-export it as binary_little_endian 1.0 (e.g. open and save it with a splat/mesh tool)"
)


class PlyFormatError(ValueError):
    """A ``.ply`` file that :func:`load_ply` cannot read; the message names the file and the fix."""


class _PlyElement(NamedTuple):
    name: str
    count: int
    properties: list[tuple[str, str | None]]  # (name, numpy type code or None for list props)


def save_ply(
    path: str | os.PathLike, gaussians: Gaussians, min_opacity: float | None = None
) -> int:
    """Write one scene (no batch axes, RGB colours) as a standard 3DGS binary ``.ply``.

    Stored: zero normals, ``f_dc = (rgb - 0.5) / SH_C0``, ``opacity = logit(clip(o, eps, 1-eps))``
    (eps = :data:`PLY_OPACITY_EPS`), ``scale = log(s)``, ``rot = (w, x, y, z)`` as given.
    ``min_opacity`` (default None = keep all; LGM uses 0.005) drops Gaussians with a lower
    opacity. Returns the number of Gaussians written.
    """
    gaussians.validate()
    if gaussians.batch_shape:
        raise ValueError(
            f"save_ply writes a single scene; got batch shape {gaussians.batch_shape} "
            "(index the batch first, e.g. jax.tree_util.tree_map(lambda x: x[i], gaussians))"
        )
    if gaussians.colors.shape[-1] != 3:
        raise ValueError(
            f"save_ply needs RGB colors (3 channels), got {gaussians.colors.shape[-1]} channels"
        )
    means, scales, rots, opac, colors = (
        np.asarray(a, dtype=np.float64)
        for a in (
            gaussians.means,
            gaussians.scales,
            gaussians.rotations,
            gaussians.opacities,
            gaussians.colors,
        )
    )
    if min_opacity is not None:
        keep = opac >= min_opacity
        means, scales, rots, opac, colors = (a[keep] for a in (means, scales, rots, opac, colors))
    if np.any(~(scales > 0)):
        raise ValueError("save_ply: scales must be strictly positive (they are stored as log)")
    n = means.shape[0]
    o = np.clip(opac, PLY_OPACITY_EPS, 1.0 - PLY_OPACITY_EPS)
    columns = np.concatenate(
        [
            means,
            np.zeros_like(means),
            (colors - 0.5) / SH_C0,
            (np.log(o) - np.log1p(-o))[:, None],
            np.log(scales),
            rots,
        ],
        axis=1,
    ).astype("<f4")
    header = "\n".join(
        [
            "ply",
            "format binary_little_endian 1.0",
            f"element vertex {n}",
            *(f"property float {p}" for p in PLY_PROPERTIES),
            "end_header",
            "",
        ]
    )
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(np.ascontiguousarray(columns).tobytes())
    return n


def _parse_ply_header(path: str, data: bytes) -> tuple[list[_PlyElement], int]:
    """Return the elements declared in the header and the byte offset of the body."""
    if not (data.startswith(b"ply\n") or data.startswith(b"ply\r\n")):
        raise PlyFormatError(
            f"{path}: not a PLY file (missing 'ply' magic line at the start of the file)"
        )
    end = data.find(b"\nend_header") + 1  # 0 when absent
    if end == 0:
        end = -1
    if end < 0:
        raise PlyFormatError(f"{path}: PLY header has no 'end_header' line (truncated header?)")
    body = data.find(b"\n", end)
    if body < 0:
        raise PlyFormatError(f"{path}: PLY header is not terminated by a newline after end_header")
    try:
        lines = data[:end].decode("ascii").splitlines()[1:]
    except UnicodeDecodeError as e:
        raise PlyFormatError(f"{path}: PLY header is not ASCII text ({e})") from None
    fmt = None
    elements: list[_PlyElement] = []
    for lineno, line in enumerate(lines, start=2):
        tok = line.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format":
            fmt = tok[1:]
            if len(fmt) != 2 or fmt[0] != "binary_little_endian":
                raise PlyFormatError(
                    f"{path}: PLY format {' '.join(fmt)!r} is not supported; only "
                    f"'binary_little_endian 1.0' is supported; {_PLY_FORMAT_HINT}"
                )
        elif tok[0] == "element" and len(tok) == 3 and tok[2].isdigit():
            elements.append(_PlyElement(tok[1], int(tok[2]), []))
        elif tok[0] == "property" and elements and len(tok) >= 3:
            if tok[1] == "list" and len(tok) == 5:
                elements[-1].properties.append((tok[4], None))
            elif len(tok) == 3 and tok[1] in _PLY_TYPES:
                elements[-1].properties.append((tok[2], _PLY_TYPES[tok[1]]))
            else:
                raise PlyFormatError(f"{path}: unsupported PLY property line {lineno}: {line!r}")
        else:
            raise PlyFormatError(f"{path}: malformed PLY header line {lineno}: {line!r}")
    if fmt is None:
        raise PlyFormatError(f"{path}: PLY header has no 'format' line")
    return elements, body + 1


def _scalar_dtype(path: str, el: _PlyElement) -> np.dtype:
    lists = [name for name, t in el.properties if t is None]
    if lists:
        raise PlyFormatError(
            f"{path}: element {el.name!r} has list properties {lists}; this reader cannot "
            f"determine its byte size. Write the 'vertex' element first or remove {el.name!r}."
        )
    names = [name for name, _ in el.properties]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise PlyFormatError(f"{path}: element {el.name!r} repeats properties {dups}")
    return np.dtype([(name, "<" + t) for name, t in el.properties])


def load_ply(path: str | os.PathLike, drop_higher_sh: bool = False) -> Gaussians:
    """Read a 3DGS-layout binary little-endian ``.ply`` into :class:`Gaussians` (float32).

    Property order is free and unrelated properties are ignored. Files with higher SH bands
    (``f_rest_*``) raise :class:`PlyFormatError` unless ``drop_higher_sh=True``, which keeps only
    the DC colour. Scalar-only elements declared before ``vertex`` are skipped.
    """
    spath = os.fspath(path)
    with open(spath, "rb") as f:
        data = f.read()
    elements, offset = _parse_ply_header(spath, data)
    vertex, dtype = None, None
    for el in elements:
        el_dtype = _scalar_dtype(spath, el)
        if el.name == "vertex":
            vertex, dtype = el, el_dtype
            break
        offset += el.count * el_dtype.itemsize  # skip this (scalar-only) element's rows
    if vertex is None:
        raise PlyFormatError(f"{spath}: PLY file has no 'vertex' element")

    types = dict(vertex.properties)
    missing = [p for p in _PLY_REQUIRED if p not in types]
    if missing:
        raise PlyFormatError(
            f"{spath}: vertex element is missing required properties {missing}; a 3D Gaussian "
            f"Splatting .ply needs {list(_PLY_REQUIRED)}"
        )
    ply_name = {code: name for name, code in reversed(_PLY_TYPES.items())}  # prefer short names
    bad = [f"{p} ({ply_name[types[p]]})" for p in _PLY_REQUIRED if types[p] not in ("f4", "f8")]
    if bad:
        raise PlyFormatError(
            f"{spath}: properties {bad} must be float or double; re-export them as float"
        )
    higher = [name for name, _ in vertex.properties if name.startswith("f_rest_")]
    if higher and not drop_higher_sh:
        raise PlyFormatError(
            f"{spath}: file has SH degree > 0 ({len(higher)} f_rest_* coefficients); pass "
            "drop_higher_sh=True to keep only the DC (degree-0) colour term"
        )

    expected = offset + vertex.count * dtype.itemsize
    if len(data) < expected:
        raise PlyFormatError(
            f"{spath}: truncated PLY data: expected {expected} bytes ({vertex.count} vertices x "
            f"{dtype.itemsize} bytes after a {offset}-byte header/prefix), found {len(data)}"
        )
    rows = np.frombuffer(data, dtype=dtype, count=vertex.count, offset=offset)

    def cols(*names: str) -> np.ndarray:
        out = np.empty((vertex.count, len(names)), dtype=np.float64)
        for i, name in enumerate(names):
            out[:, i] = rows[name]
        return out

    logit = cols("opacity")[:, 0]
    fields = dict(
        means=cols("x", "y", "z"),
        scales=np.exp(cols("scale_0", "scale_1", "scale_2")),
        rotations=cols("rot_0", "rot_1", "rot_2", "rot_3"),
        opacities=0.5 * (1.0 + np.tanh(0.5 * logit)),  # overflow-free sigmoid
        colors=cols("f_dc_0", "f_dc_1", "f_dc_2") * SH_C0 + 0.5,
    )
    return Gaussians(**{k: jnp.asarray(v.astype(np.float32)) for k, v in fields.items()})
