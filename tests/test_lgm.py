"""LGM reconstructor: parity with an independent PyTorch reference, conversion, config, inputs.

There is no installable PyTorch LGM, so this file holds a minimal PyTorch re-implementation of
LGM's UNet written from the description in docs/design.md §6.2 and §10.2, with modules named like
LGM's so its ``state_dict()`` has LGM's naming; the big config built on the meta device must
reproduce ``tests/data/checkpoints/lgm_big.json`` key for key and shape for shape, which pins the
structure (block layout, skip widths, shortcut placement) independently of our Flax model.
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from flax import nnx
from safetensors.torch import save_file
from torch import nn

from videomv_jax.convert.base import (
    ConversionError,
    abstract_params,
    apply_params,
    convert_state_dict,
    load_source_checkpoint,
)
from videomv_jax.convert.lgm import (
    VIDEOMV_PREFIX,
    convert,
    detect_prefix,
    lgm_from_params,
    load_lgm,
    not_prefixed_patterns,
    rules_lgm,
)
from videomv_jax.models.lgm import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LGM,
    LGMConfig,
    prepare_inputs,
)
from videomv_jax.render.camera import orbit_cameras, plucker_rays
from videomv_jax.render.gaussians import QUAT_NORM_ACROSS_GAUSSIANS, QUAT_NORM_PER_GAUSSIAN

torch.set_num_threads(1)

SPEC_DIR = os.path.join(os.path.dirname(__file__), "data", "checkpoints")
LGM_JSON = os.path.join(SPEC_DIR, "lgm_big.json")
T2V_JSON = os.path.join(SPEC_DIR, "videomv_t2v.json")
BIG_PARAMS = 415_042_848

# ------------------------------------------------------------------------------------------
# independent PyTorch reference (LGM naming), NCHW, 4 views folded as b * 4 + v
# ------------------------------------------------------------------------------------------

SQRT_HALF = math.sqrt(0.5)


class TResnetBlock(nn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-5)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (h + self.shortcut(x)) * SQRT_HALF


class TAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (c // self.heads) ** -0.5, qkv[1], qkv[2]
        o = (q @ k.transpose(-2, -1)).softmax(-1) @ v  # [b, heads, n, d]
        return self.proj(o.transpose(1, 2).reshape(b, n, c))


class TMVAttention(nn.Module):
    def __init__(self, dim, heads, groups, views=4):
        super().__init__()
        self.views = views
        self.norm = nn.GroupNorm(groups, dim, eps=1e-5)
        self.attn = TAttention(dim, heads)

    def forward(self, x):
        bv, c, h, w = x.shape
        b = bv // self.views
        y = self.norm(x).reshape(b, self.views, c, h, w).permute(0, 1, 3, 4, 2).reshape(b, -1, c)
        y = self.attn(y)
        y = y.reshape(b, self.views, h, w, c).permute(0, 1, 4, 2, 3).reshape(bv, c, h, w)
        return (y + x) * SQRT_HALF


class TDownBlock(nn.Module):
    def __init__(self, cin, cout, layers, downsample, attention, heads, groups):
        super().__init__()
        self.nets = nn.ModuleList(
            [TResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(layers)])
        self.attns = nn.ModuleList(
            [TMVAttention(cout, heads, groups) for _ in range(layers)] if attention else [])
        self.downsample = nn.Conv2d(cout, cout, 3, stride=2, padding=1) if downsample else None

    def forward(self, x):
        xs = []
        for i, net in enumerate(self.nets):
            x = net(x)
            if len(self.attns):
                x = self.attns[i](x)
            xs.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            xs.append(x)
        return x, xs


class TMidBlock(nn.Module):
    def __init__(self, c, attention, heads, groups):
        super().__init__()
        self.nets = nn.ModuleList([TResnetBlock(c, c, groups), TResnetBlock(c, c, groups)])
        self.attns = nn.ModuleList([TMVAttention(c, heads, groups)] if attention else [])

    def forward(self, x):
        x = self.nets[0](x)
        if len(self.attns):
            x = self.attns[0](x)
        return self.nets[1](x)


class TUpBlock(nn.Module):
    def __init__(self, cin, cprev, cout, layers, upsample, attention, heads, groups):
        super().__init__()
        nets = []
        for i in range(layers):
            cskip = cprev if i == layers - 1 else cout  # LGM's UpBlock width formula
            nets.append(TResnetBlock((cin if i == 0 else cout) + cskip, cout, groups))
        self.nets = nn.ModuleList(nets)
        self.attns = nn.ModuleList(
            [TMVAttention(cout, heads, groups) for _ in range(layers)] if attention else [])
        self.upsample = nn.Conv2d(cout, cout, 3, padding=1) if upsample else None

    def forward(self, x, xs):
        for i, net in enumerate(self.nets):
            x = net(torch.cat([x, xs[-1]], dim=1))
            xs = xs[:-1]
            if len(self.attns):
                x = self.attns[i](x)
        if self.upsample is not None:
            x = self.upsample(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class TUNet(nn.Module):
    def __init__(self, cfg: LGMConfig):
        super().__init__()
        down, up, g, h = cfg.down_channels, cfg.up_channels, cfg.norm_groups, cfg.attention_heads
        layers = cfg.layers_per_block
        self.conv_in = nn.Conv2d(cfg.in_channels, down[0], 3, padding=1)
        blocks, cout = [], down[0]
        for i, c in enumerate(down):
            blocks.append(TDownBlock(cout, c, layers, i != len(down) - 1, cfg.down_attention[i],
                                     h, g))
            cout = c
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = TMidBlock(down[-1], cfg.mid_attention, h, g)
        blocks, cout = [], up[0]
        for i, c in enumerate(up):
            cin, cout = cout, c
            cskip = down[max(-2 - i, -len(down))]
            blocks.append(TUpBlock(cin, cskip, cout, layers + 1, i != len(up) - 1,
                                   cfg.up_attention[i], h, g))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = nn.GroupNorm(g, up[-1], eps=1e-5)
        self.conv_out = nn.Conv2d(up[-1], cfg.out_channels, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        xss = [x]
        for block in self.down_blocks:
            x, xs = block(x)
            xss.extend(xs)
        x = self.mid_block(x)
        for block in self.up_blocks:
            n = len(block.nets)
            x = block(x, xss[-n:])
            xss = xss[:-n]
        return self.conv_out(F.silu(self.norm_out(x)))


class TLGM(nn.Module):
    def __init__(self, cfg: LGMConfig):
        super().__init__()
        self.unet = TUNet(cfg)
        self.conv = nn.Conv2d(14, 14, 1)

    def forward(self, images):  # [B, 4, 9, H, W] -> raw [B, 4·h·w, 14]
        b, v, c, h, w = images.shape
        x = self.conv(self.unet(images.reshape(b * v, c, h, w)))
        x = x.reshape(b, v, 14, x.shape[-2], x.shape[-1])
        return x.permute(0, 1, 3, 4, 2).reshape(b, -1, 14)


def torch_activations(x):
    """LGM's (pre-fix) activation code: ``F.normalize`` with its default dim=1."""
    return dict(means=x[..., 0:3].clamp(-1, 1), opacities=torch.sigmoid(x[..., 3]),
                scales=0.1 * F.softplus(x[..., 4:7]), rotations=F.normalize(x[..., 7:11]),
                colors=0.5 * torch.tanh(x[..., 11:14]) + 0.5)


# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------

TINY = LGMConfig.tiny()


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


@pytest.fixture(scope="module")
def torch_tiny() -> TLGM:
    torch.manual_seed(0)
    model = TLGM(TINY).eval()
    with torch.no_grad():  # re-randomise the GN affine and biases (identity / zero by default)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif ".norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def checkpoints(torch_tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("lgm")
    sd = {k: v.detach().clone().contiguous() for k, v in torch_tiny.state_dict().items()}
    st_path, pth_path = str(d / "model.safetensors"), str(d / "videomv.pth")
    save_file(sd, st_path)
    full = {f"{VIDEOMV_PREFIX}{k}": v for k, v in sd.items()}
    full["input_blocks.0.0.weight"] = torch.zeros(4, 4, 3, 3)  # a video-UNet key: ignored
    full[f"{VIDEOMV_PREFIX}lpips_loss.net.slice1.0.weight"] = torch.zeros(2, 3, 3, 3)
    torch.save({"state_dict": full, "step": 7}, pth_path)
    return st_path, pth_path


def _convert_file(path: str, prefix: str) -> LGM:
    state = load_source_checkpoint(path)
    rules, ignore = rules_lgm(TINY, prefix)
    target = abstract_params(nnx.eval_shape(lambda: LGM(TINY, rngs=nnx.Rngs(0))))
    params = convert_state_dict(state, rules, target, ignore, model_name="tiny LGM")
    assert len(params) == len(target)
    # Fill the abstract model (no random init: eager initialisers compile per kernel shape).
    return apply_params(nnx.eval_shape(lambda: LGM(TINY, rngs=nnx.Rngs(1))), params)


@pytest.fixture(scope="module")
def jax_tiny(checkpoints) -> LGM:
    return _convert_file(checkpoints[0], "")


_run = nnx.jit(lambda m, x: m(x))  # whole-model calls jitted: eager op-by-op is slow on CPU


def _images(b=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((b, 4, TINY.input_size, TINY.input_size, 9)).astype(np.float32)


# ------------------------------------------------------------------------------------------
# structure: the reference reproduces the released layout; our model has the same parameters
# ------------------------------------------------------------------------------------------


def test_reference_state_dict_equals_lgm_big_json():
    spec = json.load(open(LGM_JSON))
    with torch.device("meta"):
        ref = TLGM(LGMConfig.big())
    got = {k: list(v.shape) for k, v in ref.state_dict().items()}
    assert list(got) == list(spec)  # same keys in the same (state-dict) order
    assert got == spec


def test_big_parameter_count():
    model = nnx.eval_shape(lambda: LGM(LGMConfig.big(), rngs=nnx.Rngs(0)))
    params = abstract_params(model)
    assert len(params) == 376
    assert sum(int(np.prod(p.shape)) for p in params.values()) == BIG_PARAMS
    spec = json.load(open(LGM_JSON))
    assert sum(int(np.prod(s)) for s in spec.values()) == BIG_PARAMS


def test_small_matches_reference_count():
    cfg = LGMConfig.small()
    with torch.device("meta"):
        ref = TLGM(cfg)
    params = abstract_params(nnx.eval_shape(lambda: LGM(cfg, rngs=nnx.Rngs(0))))
    ours = sum(int(np.prod(p.shape)) for p in params.values())
    assert ours == sum(p.numel() for p in ref.parameters()) == 412_958_240
    assert cfg.splat_size == 64 and cfg.num_gaussians == 4 * 64 * 64


def _placeholders(spec: dict) -> dict:
    return {k: np.broadcast_to(np.zeros((), np.float32), s) for k, s in spec.items()}


def test_big_dry_run_lgm_json():
    """Every key of the released layout used once, every parameter filled (no allocation)."""
    cfg = LGMConfig.big()
    spec = json.load(open(LGM_JSON))
    rules, ignore = rules_lgm(cfg)
    assert sorted(r.source for r in rules) == sorted(spec)  # each key used exactly once
    target = abstract_params(nnx.eval_shape(lambda: LGM(cfg, rngs=nnx.Rngs(0))))
    assert len({r.target for r in rules}) == len(rules) == len(target)
    src = _placeholders(spec)
    src["lpips_loss.net.slice1.0.weight"] = np.zeros((64, 3, 3, 3), np.float32)
    out = convert_state_dict(src, rules, target, ignore)
    assert set(out) == set(target)
    assert out[("unet", "down_blocks", 3, "attns", 0, "attn", "qkv", "kernel")].shape == (512,
                                                                                        1536)


def test_big_dry_run_videomv_t2v_json():
    """The lgm_big.* keys of the full VideoMV checkpoint convert; the UNet keys are ignored."""
    spec = json.load(open(T2V_JSON))
    src = _placeholders(spec)
    assert detect_prefix(src) == VIDEOMV_PREFIX
    out = convert(src, LGMConfig.big())
    assert len(out) == sum(k.startswith(VIDEOMV_PREFIX) for k in spec) == 376


def test_not_prefixed_patterns_are_exact():
    import fnmatch

    pats = not_prefixed_patterns("lgm_big.")
    for key, ignored in [("lgm_big.unet.conv_in.weight", False), ("lgm_big.", False),
                         ("lgm_big", True), ("lgm_bigx.a", True), ("input_blocks.0.0.weight",
                                                                    True),
                         ("lgm.x", True), ("", True), ("l", True)]:
        assert any(fnmatch.fnmatchcase(key, p) for p in pats) == ignored, key


# ------------------------------------------------------------------------------------------
# numerics: modules, then the whole model through both checkpoint formats
# ------------------------------------------------------------------------------------------

# Modules: float32 on the same inputs, different summation orders (conv / GN / softmax):
# observed ≤ 6e-7 on outputs of order 1, so 1e-5 leaves margin while still catching any
# layout / scale error (a wrong qkv split or a missing √0.5 is off by ≥ 1e-1).
MODULE_ATOL = 1e-5


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def test_resnet_block_matches(torch_tiny, jax_tiny):
    for tb, jb in [(torch_tiny.unet.down_blocks[1].nets[0], jax_tiny.unet.down_blocks[1].nets[0]),
                   (torch_tiny.unet.mid_block.nets[1], jax_tiny.unet.mid_block.nets[1])]:
        cin = tb.norm1.num_channels
        x = np.random.default_rng(1).standard_normal((8, 8, 8, cin)).astype(np.float32)
        with torch.no_grad():
            ref = np.moveaxis(_np(tb(_nchw(x))), 1, -1)
        np.testing.assert_allclose(np.asarray(jb(jnp.asarray(x))), ref, atol=MODULE_ATOL,
                                   rtol=MODULE_ATOL)
    assert jax_tiny.unet.down_blocks[1].nets[0].shortcut is not None
    assert jax_tiny.unet.mid_block.nets[1].shortcut is None


def test_mv_attention_matches(torch_tiny, jax_tiny):
    """B=2 objects × 4 views: tokens mix across the 4 views of one object, never objects."""
    tb, jb = torch_tiny.unet.down_blocks[1].attns[1], jax_tiny.unet.down_blocks[1].attns[1]
    x = np.random.default_rng(2).standard_normal((8, 4, 4, 16)).astype(np.float32)
    with torch.no_grad():
        ref = np.moveaxis(_np(tb(_nchw(x))), 1, -1)
    out = np.asarray(jb(jnp.asarray(x)))
    np.testing.assert_allclose(out, ref, atol=MODULE_ATOL, rtol=MODULE_ATOL)
    x2 = x.copy()  # new content for object 1 (GN would undo a shift or scale): object 0 fixed
    x2[4:] = np.random.default_rng(4).standard_normal(x2[4:].shape)
    out2 = np.asarray(jb(jnp.asarray(x2)))
    np.testing.assert_allclose(out2[:4], out[:4], atol=1e-6)
    assert np.abs(out2[4:] - out[4:]).max() > 1e-1
    x3 = x.copy()
    # new content for view 3 of object 0 (GN would undo a shift or scale): views 0..2 change
    x3[3] = np.random.default_rng(3).standard_normal(x3[3].shape)
    assert np.abs(np.asarray(jb(jnp.asarray(x3)))[:3] - out[:3]).max() > 1e-3


# Whole model: ~20 resnet/attention stages with skip concatenations; float32 drift grows with
# depth (observed ≤ 1.2e-6 on outputs up to ~0.9), so 1e-4 abs is a safe whole-model budget.
MODEL_ATOL = 1e-4


@pytest.fixture(scope="module")
def reference_raw(torch_tiny):
    x = _images()
    with torch.no_grad():
        return _np(torch_tiny(torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 2)))))


def test_full_model_safetensors(jax_tiny, reference_raw):
    raw = np.asarray(_run(jax_tiny, jnp.asarray(_images())))
    assert raw.shape == (2, TINY.num_gaussians, 14) == reference_raw.shape
    assert raw.dtype == np.float32
    assert np.abs(reference_raw).max() > 0.1  # non-trivial output
    np.testing.assert_allclose(raw, reference_raw, atol=MODEL_ATOL, rtol=0)


def test_full_model_videomv_pth(checkpoints, jax_tiny, reference_raw):
    model = _convert_file(checkpoints[1], VIDEOMV_PREFIX)
    raw = np.asarray(_run(model, jnp.asarray(_images())))
    np.testing.assert_allclose(raw, reference_raw, atol=MODEL_ATOL, rtol=0)
    auto = load_lgm(checkpoints[1], TINY)  # prefix auto-detected, concrete jax arrays
    assert all(isinstance(v, jax.Array) for v in abstract_params(auto).values())
    np.testing.assert_array_equal(np.asarray(_run(auto, jnp.asarray(_images()))), raw)


@pytest.mark.parametrize("quat_norm", [QUAT_NORM_ACROSS_GAUSSIANS, QUAT_NORM_PER_GAUSSIAN])
def test_gaussians_quaternion_normalisation(jax_tiny, reference_raw, quat_norm):
    model = lgm_from_params(TINY.replace(quat_norm=quat_norm), abstract_params(jax_tiny))
    g = nnx.jit(lambda m, x: m.gaussians(x))(model, jnp.asarray(_images())).validate()
    assert g.means.shape == (2, TINY.num_gaussians, 3)
    rot = np.asarray(g.rotations)
    raw_rot = torch.from_numpy(reference_raw[..., 7:11])
    if quat_norm == QUAT_NORM_ACROSS_GAUSSIANS:
        # F.normalize(x) with default dim=1 on [B, N, 4]: unit norm per component over N.
        np.testing.assert_allclose(np.linalg.norm(rot, axis=1), 1.0, atol=1e-5)
        assert np.linalg.norm(rot, axis=-1).max() < 0.5  # quaternions themselves are tiny
        ref = torch_activations(torch.from_numpy(reference_raw))
        for name in ("means", "opacities", "scales", "rotations", "colors"):
            np.testing.assert_allclose(np.asarray(getattr(g, name)), _np(ref[name]), atol=1e-4,
                                       err_msg=name)
    else:
        np.testing.assert_allclose(np.linalg.norm(rot, axis=-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(rot, _np(F.normalize(raw_rot, dim=-1)), atol=1e-4)


def test_remat_and_bf16_run(jax_tiny):
    x = jnp.asarray(_images(b=1))
    want = np.asarray(_run(jax_tiny, x))
    remat = lgm_from_params(TINY.replace(remat=True), abstract_params(jax_tiny))
    np.testing.assert_allclose(np.asarray(_run(remat, x)), want, atol=1e-5)
    bf16 = lgm_from_params(TINY.replace(dtype="bfloat16"), abstract_params(jax_tiny))
    out = np.asarray(_run(bf16, x))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    # bf16 compute (8-bit mantissa) through ~20 stages: observed 1.5e-2, a coarse bound only
    assert np.abs(out - want).max() < 0.1


# ------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------


def _lgm_get_rays_np(c2w: np.ndarray, h: int, w: int, fovy: float) -> np.ndarray:
    """LGM core/utils.get_rays (OpenGL), as NumPy: Plücker [o × d, d] of shape [h, w, 6]."""
    focal = h * 0.5 / np.tan(0.5 * np.deg2rad(fovy))
    xs, ys = np.meshgrid(np.arange(w), np.arange(h), indexing="xy")
    cam = np.stack([(xs - w * 0.5 + 0.5) / focal, -(ys - h * 0.5 + 0.5) / focal,
                    -np.ones_like(xs, dtype=np.float64)], -1)
    d = cam @ c2w[:3, :3].T
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    o = np.broadcast_to(c2w[:3, 3], d.shape)
    return np.concatenate([np.cross(o, d), d], -1)


def test_prepare_inputs_layout_and_values():
    b, h = 2, 8
    rng = np.random.default_rng(3)
    rgb = rng.uniform(0, 1, (b, 4, h, h, 3)).astype(np.float32)
    c2w = np.asarray(orbit_cameras(4, elevation_deg=10.0, distance=1.5), np.float32)
    c2w = np.broadcast_to(c2w, (b, 4, 4, 4))
    x = np.asarray(prepare_inputs(rgb, c2w, fovy=39.6))
    assert x.shape == (b, 4, h, h, 9)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    assert IMAGENET_MEAN == tuple(mean) and IMAGENET_STD == tuple(std)
    np.testing.assert_allclose(x[..., :3], (rgb - mean) / std, atol=1e-5)
    for v in range(4):
        np.testing.assert_allclose(x[1, v, ..., 3:], _lgm_get_rays_np(c2w[1, v].astype(
            np.float64), h, h, 39.6), atol=1e-5)
    np.testing.assert_allclose(x[..., 3:], np.asarray(plucker_rays(c2w, h, h, 39.6)), atol=1e-6)
    white = np.asarray(prepare_inputs(np.ones((1, 4, h, h, 3), np.float32), c2w[:1]))
    np.testing.assert_allclose(white[0, 0, 0, 0, :3], (1 - mean) / std, atol=1e-6)
    with pytest.raises(ValueError, match="c2w_opengl"):
        prepare_inputs(rgb, c2w[:, :3])
    with pytest.raises(ValueError, match="rgb"):
        prepare_inputs(rgb[..., :2], c2w)


def test_ray_positions_sit_on_their_splat_pixels(jax_tiny):
    """``positions="ray"``: every centre lies on the ray through its splat pixel (so it projects
    onto that pixel's centre in its own input view, to the accuracy of averaging the 2×2 input
    pixels' unit directions), at the depth that the raw channel 0 gives; the other outputs
    are the absolute model's."""
    from videomv_jax.models.lgm import splat_rays
    from videomv_jax.render.camera import normalize_poses, raster_cameras

    cfg = TINY.replace(positions="ray")
    model = lgm_from_params(cfg, abstract_params(jax_tiny))
    c2w = normalize_poses(jnp.asarray(orbit_cameras(4, 15.0, 1.6)))[None]
    size = cfg.input_size
    rgb = np.random.default_rng(5).uniform(0, 1, (1, 4, size, size, 3)).astype(np.float32)
    x = prepare_inputs(rgb, c2w)
    g, raw = model.gaussians(x), np.asarray(model(x))[0]
    ref = jax_tiny.gaussians(x)
    for name in ("scales", "rotations", "opacities", "colors"):
        np.testing.assert_array_equal(np.asarray(getattr(g, name)), np.asarray(getattr(ref, name)))
    s = cfg.splat_size
    means = np.asarray(g.means[0], np.float64).reshape(4, s, s, 3)
    viewmats, ks = raster_cameras(c2w[0], s, s)
    centres = np.stack(np.meshgrid(np.arange(s) + 0.5, np.arange(s) + 0.5, indexing="xy"), -1)
    for v in range(4):
        cam = np.concatenate([means[v], np.ones((s, s, 1))], -1) @ np.asarray(viewmats[v]).T
        uv = cam[..., :3] @ np.asarray(ks[v]).T
        np.testing.assert_allclose(uv[..., :2] / uv[..., 2:], centres, atol=0.01)
    # depth: distance from the ray's closest point to the origin = tanh(raw channel 0)
    rays = np.asarray(splat_rays(x, cfg))[0].astype(np.float64)
    d = rays[:, 3:] / np.linalg.norm(rays[:, 3:], axis=-1, keepdims=True)
    o = np.repeat(np.asarray(c2w[0, :, :3, 3], np.float64), s * s, axis=0)
    p0 = o - (o * d).sum(-1, keepdims=True) * d
    np.testing.assert_allclose(((means.reshape(-1, 3) - p0) * d).sum(-1), np.tanh(raw[:, 0]),
                               atol=1e-5)
    np.testing.assert_allclose(means.reshape(-1, 3), p0 + np.tanh(raw[:, :1]) * d, atol=1e-5)


def test_model_input_errors(jax_tiny):
    with pytest.raises(ValueError, match="expects images"):
        jax_tiny(jnp.zeros((1, 3, 16, 16, 9)))
    with pytest.raises(ValueError, match="expects images"):
        jax_tiny(jnp.zeros((1, 4, 16, 16, 3)))
    with pytest.raises(ValueError, match="multiples of 4"):
        jax_tiny(jnp.zeros((1, 4, 18, 18, 9)))


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------


def test_corrupted_checkpoint_lists_every_problem(checkpoints):
    for path, prefix in [(checkpoints[0], ""), (checkpoints[1], VIDEOMV_PREFIX)]:
        state = dict(load_source_checkpoint(path))
        del state[f"{prefix}unet.mid_block.attns.0.attn.proj.bias"]
        state[f"{prefix}unet.down_blocks.9.nets.0.conv1.weight"] = np.zeros((1,), np.float32)
        state[f"{prefix}conv.weight"] = np.zeros((14, 13, 1, 1), np.float32)
        with pytest.raises(ConversionError) as err:
            convert(state, TINY, prefix)
        msg = str(err.value)
        assert "unet/mid_block/attns/0/attn/proj/bias" in msg
        assert f"{prefix}unet.down_blocks.9.nets.0.conv1.weight" in msg
        assert f"{prefix}conv.weight" in msg and "(1, 1, 13, 14)" in msg
        assert len(err.value.unexpected) == 1 and len(err.value.mismatched) == 1
        # the mis-shaped parameter is reported once, as a shape mismatch, not also as missing
        assert [m.split(" ")[0] for m in err.value.missing] == [
            "unet/mid_block/attns/0/attn/proj/bias"]
    with pytest.raises(ConversionError):  # a tiny checkpoint does not fit the big model
        convert(load_source_checkpoint(checkpoints[0]), LGMConfig.big())
    with pytest.raises(ValueError, match="no LGM keys"):
        detect_prefix({"foo.weight": np.zeros(1)})


@pytest.mark.parametrize("changes, match", [
    (dict(quat_norm="per_quat"), "quat_norm"),
    (dict(positions="relative"), "positions"),
    (dict(splat_size=16), "splat_size"),
    (dict(up_channels=(32, 8)), "up_channels"),
    (dict(up_attention=(True,)), "up_attention"),
    (dict(attention_heads=3), "attention_heads"),
    (dict(norm_groups=3), "norm_groups"),
    (dict(dtype="float16"), "dtype"),
    (dict(attention="flash"), "attention"),
    (dict(input_size=18), "input_size"),
    (dict(num_views=0), "num_views"),
    (dict(up_channels=(32, 16, 8, 8), up_attention=(True,) * 4), "up levels"),
])
def test_bad_config_raises(changes, match):
    with pytest.raises(ValueError, match=match):
        TINY.replace(**changes)


def test_config_round_trip():
    for cfg in (LGMConfig.big(), LGMConfig.small(), TINY):
        d = json.loads(json.dumps(cfg.to_dict()))
        assert LGMConfig.from_dict(d) == cfg
    big = LGMConfig.big()
    assert (big.input_size, big.splat_size, big.fovy, big.attention_heads) == (256, 128, 39.6, 16)
    assert big.num_gaussians == 65_536 and big.quat_norm == QUAT_NORM_ACROSS_GAUSSIANS
    with pytest.raises(ValueError, match="unknown LGMConfig fields"):
        LGMConfig.from_dict({"bogus": 1})
