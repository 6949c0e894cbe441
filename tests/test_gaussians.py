"""Tests for the LGM activation table and the 3DGS ``.ply`` reader/writer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videomv_jax.render.gaussians import (
    LGM_CHANNEL_TABLE,
    LGM_CHANNELS,
    PLY_OPACITY_EPS,
    PLY_PROPERTIES,
    QUAT_NORM_ACROSS_GAUSSIANS,
    QUAT_NORM_PER_GAUSSIAN,
    SH_C0,
    Gaussians,
    PlyFormatError,
    lgm_activations,
    load_ply,
    save_ply,
)

# ------------------------------------------------------------------------------------------
# reference NumPy implementation of the LGM activations
# ------------------------------------------------------------------------------------------


def _np_lgm(raw: np.ndarray, across: bool) -> dict[str, np.ndarray]:
    raw = raw.astype(np.float64)
    rot = raw[..., 7:11]
    axis = -2 if across else -1
    norm = np.sqrt((rot**2).sum(axis=axis, keepdims=True))
    return {
        "means": np.clip(raw[..., 0:3], -1.0, 1.0),
        "opacities": 1.0 / (1.0 + np.exp(-raw[..., 3])),
        "scales": 0.1 * np.logaddexp(0.0, raw[..., 4:7]),
        "rotations": rot / np.maximum(norm, 1e-12),
        "colors": 0.5 * np.tanh(raw[..., 11:14]) + 0.5,
    }


def _raw(shape=(2, 64), seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((*shape, LGM_CHANNELS)) * 2.0).astype(
        np.float32
    )


def test_channel_table_covers_all_channels():
    covered = sorted(i for ch in LGM_CHANNEL_TABLE.values() for i in range(ch.start, ch.stop))
    assert covered == list(range(LGM_CHANNELS)) == list(range(14))
    assert LGM_CHANNEL_TABLE["rotations"].slice == slice(7, 11)


@pytest.mark.parametrize("quat_norm", [QUAT_NORM_PER_GAUSSIAN, QUAT_NORM_ACROSS_GAUSSIANS])
def test_lgm_activations_match_numpy(quat_norm):
    raw = _raw()
    g = lgm_activations(jnp.asarray(raw), quat_norm=quat_norm).validate()
    ref = _np_lgm(raw, across=quat_norm == QUAT_NORM_ACROSS_GAUSSIANS)
    assert g.batch_shape == (2,) and g.num_gaussians == 64
    for name, want in ref.items():
        got = np.asarray(getattr(g, name))
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
    # the clip actually engages on this input
    assert np.abs(raw[..., :3]).max() > 1.0 and np.abs(np.asarray(g.means)).max() == 1.0


def test_per_gaussian_quaternions_are_unit():
    g = lgm_activations(_raw(), quat_norm=QUAT_NORM_PER_GAUSSIAN)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(g.rotations), axis=-1), 1.0, atol=1e-6)


def test_across_gaussians_normalises_columns_not_quaternions():
    g = lgm_activations(_raw(), quat_norm=QUAT_NORM_ACROSS_GAUSSIANS)
    rot = np.asarray(g.rotations)  # [2, 64, 4]
    # each component has unit norm across the N Gaussians (per scene) ...
    np.testing.assert_allclose(np.linalg.norm(rot, axis=-2), 1.0, atol=1e-6)
    # ... while individual quaternions are far from unit length (~ 2 / sqrt(N))
    per = np.linalg.norm(rot, axis=-1)
    assert np.all(np.abs(per - 1.0) > 0.1)
    # and the two options disagree
    g2 = lgm_activations(_raw(), quat_norm=QUAT_NORM_PER_GAUSSIAN)
    assert not np.allclose(rot, np.asarray(g2.rotations))


def test_across_gaussians_zero_column_uses_eps():
    raw = _raw((5,))
    raw[:, 8] = 0.0  # x component zero for every Gaussian -> norm 0 -> divided by eps, stays 0
    g = lgm_activations(raw, quat_norm=QUAT_NORM_ACROSS_GAUSSIANS)
    assert np.all(np.isfinite(np.asarray(g.rotations)))
    np.testing.assert_array_equal(np.asarray(g.rotations)[:, 1], 0.0)


def test_lgm_activations_jit():
    f = jax.jit(lgm_activations, static_argnames="quat_norm")
    raw = _raw()
    a = f(raw, quat_norm=QUAT_NORM_ACROSS_GAUSSIANS)
    b = lgm_activations(raw, quat_norm=QUAT_NORM_ACROSS_GAUSSIANS)
    np.testing.assert_allclose(np.asarray(a.rotations), np.asarray(b.rotations), rtol=1e-6)


def test_ray_means_hand_computed():
    """A ray from o = (0, 0, 2) along -z (d given unnormalised): its closest point to the
    origin is the origin, so the centre is tanh(depth) along d̂; a ray offset by x = 0.5
    passes (0.5, 0, 0). The other channels are activated as in the absolute head."""
    o = np.array([0.0, 0.0, 2.0])
    d = np.array([[0.0, 0.0, -3.0], [0.0, 0.0, -0.5]])
    origins = np.array([o, o + [0.5, 0.0, 0.0]])
    rays = np.concatenate([np.cross(origins, d), d], -1).astype(np.float32)
    raw = _raw((2,), seed=3)
    raw[:, 0] = [0.0, 0.5]
    g = lgm_activations(raw, QUAT_NORM_PER_GAUSSIAN, rays=rays)
    want = np.array([[0.0, 0.0, 0.0], [0.5, 0.0, -np.tanh(0.5)]])
    np.testing.assert_allclose(np.asarray(g.means), want, atol=1e-6)
    ref = _np_lgm(raw, across=False)
    for name in ("opacities", "scales", "rotations", "colors"):
        np.testing.assert_allclose(np.asarray(getattr(g, name)), ref[name], rtol=1e-5, atol=1e-6)
    # the centre keeps a gradient however far raw channel 0 goes (the clamp's is zero past 1)
    grad = jax.grad(lambda r: lgm_activations(r, rays=rays).means[1, 2])(jnp.asarray(raw))
    assert float(grad[1, 0]) < 0 and np.count_nonzero(np.asarray(grad)) == 1
    clamp = jax.grad(lambda r: lgm_activations(r).means[0, 0])(jnp.asarray(raw).at[0, 0].set(2.0))
    assert float(clamp[0, 0]) == 0.0


def test_lgm_activations_errors():
    with pytest.raises(ValueError, match="per_gaussian.*across_gaussians"):
        lgm_activations(_raw(), quat_norm="bogus")
    with pytest.raises(ValueError, match="one Plücker ray per Gaussian"):
        lgm_activations(_raw(), rays=np.zeros((2, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[\.\.\., N, 14\]"):
        lgm_activations(np.zeros((3, 13), np.float32))


# ------------------------------------------------------------------------------------------
# .ply round trip
# ------------------------------------------------------------------------------------------


def _scene(n=50, seed=1) -> Gaussians:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, 4))
    return Gaussians(
        means=jnp.asarray(rng.uniform(-1, 1, (n, 3)), jnp.float32),
        scales=jnp.asarray(rng.uniform(1e-3, 0.2, (n, 3)), jnp.float32),
        rotations=jnp.asarray(q / np.linalg.norm(q, axis=-1, keepdims=True), jnp.float32),
        opacities=jnp.asarray(rng.uniform(0.0, 1.0, n), jnp.float32),
        colors=jnp.asarray(rng.uniform(0.0, 1.0, (n, 3)), jnp.float32),
    )


def _assert_gaussians_close(a: Gaussians, b: Gaussians, rtol=1e-6, atol=1e-6):
    for name in ("means", "scales", "rotations", "opacities", "colors"):
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert x.shape == y.shape, name
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=name)


def test_ply_round_trip(tmp_path):
    g = _scene()
    path = tmp_path / "scene.ply"
    assert save_ply(path, g) == 50
    back = load_ply(path)
    assert back.means.dtype == jnp.float32
    _assert_gaussians_close(back, g)
    # not-unit quaternions (the across-Gaussians bug) are stored as given
    g2 = lgm_activations(_raw((30,)), quat_norm=QUAT_NORM_ACROSS_GAUSSIANS)
    save_ply(path, g2)
    _assert_gaussians_close(load_ply(path), g2)


def test_ply_stored_values_and_header(tmp_path):
    g = _scene(n=4)
    path = tmp_path / "s.ply"
    save_ply(path, g)
    data = path.read_bytes()
    header_end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:header_end].decode()
    assert header.startswith("ply\nformat binary_little_endian 1.0\nelement vertex 4\n")
    assert [ln.split()[2] for ln in header.splitlines() if ln.startswith("property")] == list(
        PLY_PROPERTIES
    )
    assert all(ln.startswith("property float ") for ln in header.splitlines()[3:-1])
    rows = np.frombuffer(data[header_end:], dtype="<f4").reshape(4, 17)
    assert len(data) == header_end + 4 * 17 * 4
    o = np.asarray(g.opacities, np.float64)
    np.testing.assert_allclose(rows[:, 0:3], np.asarray(g.means), rtol=1e-7)
    np.testing.assert_array_equal(rows[:, 3:6], 0.0)
    np.testing.assert_allclose(rows[:, 6:9], (np.asarray(g.colors) - 0.5) / SH_C0, rtol=1e-6)
    np.testing.assert_allclose(rows[:, 9], np.log(o / (1 - o)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rows[:, 10:13], np.log(np.asarray(g.scales)), rtol=1e-6)
    np.testing.assert_allclose(rows[:, 13:17], np.asarray(g.rotations), rtol=1e-7)


def test_ply_min_opacity_prunes_expected_rows(tmp_path):
    g = _scene(n=100)
    o = np.asarray(g.opacities)
    thr = 0.3
    keep = o >= thr
    assert 0 < keep.sum() < 100
    path = tmp_path / "p.ply"
    assert save_ply(path, g, min_opacity=thr) == keep.sum()
    back = load_ply(path)
    expected = jax.tree_util.tree_map(lambda x: np.asarray(x)[keep], g)
    _assert_gaussians_close(back, expected)


def test_ply_opacity_extremes_are_clipped_to_eps(tmp_path):
    g = _scene(n=3).replace(opacities=jnp.asarray([0.0, 1.0, 0.5], jnp.float32))
    path = tmp_path / "e.ply"
    save_ply(path, g)
    back = np.asarray(load_ply(path).opacities)
    assert np.all(np.isfinite(back))
    np.testing.assert_allclose(back, [PLY_OPACITY_EPS, 1 - PLY_OPACITY_EPS, 0.5], atol=1e-7)


def test_save_ply_rejects_bad_input(tmp_path):
    g = _scene(n=4)
    batched = jax.tree_util.tree_map(lambda x: x[None], g)
    with pytest.raises(ValueError, match="single scene"):
        save_ply(tmp_path / "a.ply", batched)
    with pytest.raises(ValueError, match="3 channels"):
        save_ply(tmp_path / "a.ply", g.replace(colors=jnp.zeros((4, 5))))
    with pytest.raises(ValueError, match="strictly positive"):
        save_ply(tmp_path / "a.ply", g.replace(scales=jnp.zeros((4, 3))))


# ------------------------------------------------------------------------------------------
# hand-written headers (files from other tools)
# ------------------------------------------------------------------------------------------

_DC = ["f_dc_0", "f_dc_1", "f_dc_2"]
_REST = [f"f_rest_{i}" for i in range(45)]
_TAIL = ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
_STANDARD_3DGS = ["x", "y", "z", "nx", "ny", "nz", *_DC, *_REST, *_TAIL]


def _write_ply(path, props, values: dict[str, np.ndarray], n, fmt="binary_little_endian 1.0",
               pre="", types=None, truncate=0, magic="ply"):  # fmt: skip
    """Write a ply by hand: ``props`` in order, float unless ``types`` says otherwise."""
    types = types or {}
    lines = [magic, f"format {fmt}", "comment written by hand in a test"]
    lines += [pre] if pre else []
    lines.append(f"element vertex {n}")
    lines += [f"property {types.get(p, 'float')} {p}" for p in props]
    lines.append("end_header")
    header = "\n".join(lines) + "\n"
    np_types = {"float": "<f4", "double": "<f8", "uchar": "u1", "int": "<i4"}
    dtype = np.dtype([(p, np_types[types.get(p, "float")]) for p in props])
    rows = np.zeros(n, dtype)
    for p in props:
        rows[p] = values.get(p, 0.0)
    body = rows.tobytes()
    path.write_bytes(header.encode() + body[: len(body) - truncate])
    return path


def _values(g: Gaussians) -> dict[str, np.ndarray]:
    o = np.asarray(g.opacities, np.float64)
    v = {}
    for i, c in enumerate("xyz"):
        v[c] = np.asarray(g.means)[:, i]
    for i in range(3):
        v[f"f_dc_{i}"] = (np.asarray(g.colors, np.float64)[:, i] - 0.5) / SH_C0
        v[f"scale_{i}"] = np.log(np.asarray(g.scales, np.float64)[:, i])
    for i in range(4):
        v[f"rot_{i}"] = np.asarray(g.rotations)[:, i]
    v["opacity"] = np.log(o / (1 - o))
    return v


def test_load_standard_3dgs_layout_with_higher_sh(tmp_path):
    g = _scene(n=7)
    vals = _values(g)
    for i, p in enumerate(_REST):
        vals[p] = np.full(7, 0.01 * i)
    path = _write_ply(tmp_path / "3dgs.ply", _STANDARD_3DGS, vals, 7)
    with pytest.raises(PlyFormatError, match=r"SH degree > 0.*drop_higher_sh=True") as e:
        load_ply(path)
    assert "3dgs.ply" in str(e.value)
    _assert_gaussians_close(load_ply(path, drop_higher_sh=True), g, rtol=1e-5)


def test_load_any_order_extra_props_doubles_and_no_normals(tmp_path):
    g = _scene(n=9)
    vals = _values(g)
    vals["red"] = np.arange(9)
    props = ["red", *reversed(_TAIL), "z", "y", "x", *_DC, "extra"]
    types = {"red": "uchar", "x": "double", "opacity": "double", "extra": "int"}
    path = _write_ply(tmp_path / "odd.ply", props, vals, 9, types=types)
    _assert_gaussians_close(load_ply(path), g, rtol=1e-5)


def test_load_skips_scalar_element_before_vertex(tmp_path):
    g = _scene(n=5)
    pre = "element camera 2\nproperty float fx\nproperty uchar id"
    path = tmp_path / "cam.ply"
    _write_ply(path, list(PLY_PROPERTIES), _values(g), 5, pre=pre)
    data = path.read_bytes()
    i = data.index(b"end_header\n") + len(b"end_header\n")
    path.write_bytes(data[:i] + b"\x01" * (2 * 5) + data[i:])  # 2 camera rows of 5 bytes
    _assert_gaussians_close(load_ply(path), g, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# malformed files
# ------------------------------------------------------------------------------------------


def test_bad_magic(tmp_path):
    path = _write_ply(tmp_path / "m.ply", list(PLY_PROPERTIES), {}, 2, magic="PLX")
    with pytest.raises(PlyFormatError, match=r"m\.ply: not a PLY file"):
        load_ply(path)


@pytest.mark.parametrize("fmt", ["ascii 1.0", "binary_big_endian 1.0"])
def test_unsupported_format(tmp_path, fmt):
    path = _write_ply(tmp_path / "f.ply", list(PLY_PROPERTIES), {}, 2, fmt=fmt)
    with pytest.raises(PlyFormatError, match="only 'binary_little_endian 1.0' is supported"):
        load_ply(path)


def test_missing_property(tmp_path):
    props = [p for p in PLY_PROPERTIES if p not in ("opacity", "rot_3")]
    path = _write_ply(tmp_path / "mp.ply", props, {}, 2)
    with pytest.raises(PlyFormatError, match=r"missing required properties \['opacity', 'rot_3'\]"):
        load_ply(path)


def test_non_float_required_property(tmp_path):
    path = _write_ply(tmp_path / "t.ply", list(PLY_PROPERTIES), {}, 2, types={"opacity": "uchar"})
    with pytest.raises(PlyFormatError, match=r"opacity \(uchar\).*must be float or double"):
        load_ply(path)


def test_truncated(tmp_path):
    path = _write_ply(tmp_path / "tr.ply", list(PLY_PROPERTIES), {}, 3, truncate=10)
    size = path.stat().st_size
    with pytest.raises(PlyFormatError, match=f"expected {size + 10} bytes.*found {size}"):
        load_ply(path)


def test_list_element_before_vertex(tmp_path):
    pre = "element face 1\nproperty list uchar int vertex_indices"
    path = _write_ply(tmp_path / "l.ply", list(PLY_PROPERTIES), {}, 2, pre=pre)
    with pytest.raises(PlyFormatError, match="'face' has list properties"):
        load_ply(path)


def test_plyformaterror_is_valueerror():
    assert issubclass(PlyFormatError, ValueError)
