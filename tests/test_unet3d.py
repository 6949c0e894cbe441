"""VideoMV video UNet (videomv_jax.models.unet3d) and its converters (videomv_jax.convert.unet).

Parity references:

* text variant: diffusers ``UNet3DConditionModel`` (ModelScope-T2V, the architecture of
  VGen's ``UNetSD_T2VBase``) at a tiny config, module by module (ResnetBlock2D +
  TemporalConvLayer, TemporalConvLayer, Transformer2DModel with 1×1-conv and with Linear
  projections, TransformerTemporalModel incl. ``transformer_in`` whose inner width differs from
  its channels) and as a whole; VideoMV's camera MLP (absent in diffusers) is checked at init
  (exactly zero) and with random weights against the diffusers model whose every ResBlock gets
  the camera embedding added to its time embedding (a forward pre-hook), which is what VGen does.
* image variant: diffusers ``I2VGenXLUNet`` agrees with VideoMV's ``UNetSD_I2VGen`` except
  that VideoMV adds the local-image concat features **twice** and builds the frame-position
  mask inside the UNet (diffusers' pipeline builds it). The whole-model test feeds diffusers
  the position-masked latents and doubles the image half of its ``conv_in`` weight (conv_in is
  linear in its input, so this equals adding the features twice). The parts that differ or
  that diffusers does not isolate are tested against NumPy references written here: the exact
  adaptive average pool and the concat branch (position mask → convs → temporal encoder → ×2).
  The fps embedding and the local / global image tokens are identical in both and covered by
  the whole-model parity.

Tolerances (float32, CPU): modules differ by 2–5e-6 on outputs of magnitude 5–9 (residual
sums), so they must agree to 1e-5 relative to the output scale (``_assert_close``, 10–20×
headroom); the whole tiny UNets differ by 2.4–3.9e-6 on outputs of magnitude ~2–3.5 and must
agree to 1e-4 max abs (25× headroom). The differences are float32 summation order (XLA's vs
PyTorch's conv / matmul / GroupNorm reductions), not formula differences: the float64 NumPy
reference of the concat branch agrees with ours to ~2e-6 as well.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from videomv_jax.convert.base import (  # noqa: E402
    ConversionError,
    abstract_params,
    conv1x1_as_linear,
    convert_state_dict,
    linear,
    path_str,
)
from videomv_jax.convert.unet import (  # noqa: E402
    CAMERA_PARAMS,
    convert_unet,
    rules_diffusers,
    rules_vgen,
    target_without,
)
from videomv_jax.models.unet3d import (  # noqa: E402
    Downsample,
    UNet3DConfig,
    _run_layers,
    _run_layers_remat,
    abstract_unet,
    adaptive_avg_pool2d,
    frame_position_latents,
    param_count,
    unet_from_params,
)
from videomv_jax.nn.embeddings import sinusoidal_embedding  # noqa: E402

torch.set_num_threads(1)

SPEC = os.path.join(os.path.dirname(__file__), "data", "checkpoints")
MODULE_RTOL = 1e-5  # modules: max|err| / max(1, max|ref|) ~ 5e-7 observed
MODEL_ATOL = 1e-4  # whole tiny UNets: max|err| 2.4-3.9e-6 observed
B, F, H, W, L = 2, 3, 8, 8, 5

# diffusers config matching UNet3DConfig.text_tiny / image_tiny (widths 32, 64, 64; attention at
# the first two levels; head dim 8; 8 groups; 1 layer per down block, 2 per up block).
DIFFUSERS_TINY = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8,
    cross_attention_dim=32, attention_head_dim=8)


@functools.cache
def _target(cfg: UNet3DConfig) -> dict:
    """{path: ShapeDtypeStruct} of the abstract model (cached: configs are hashable)."""
    return abstract_params(abstract_unet(cfg))


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Re-randomise every parameter (zero-initialised convs / projections included, so no
    branch is trivially zero): norm scales 1 ± 0.1, biases ±0.1, weights ~ N(0, 1/fan_in)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))


def _assert_close(out, ref, rtol: float = MODULE_RTOL) -> None:
    """max |out - ref| <= rtol · max(1, max |ref|) (tolerance relative to the output scale)."""
    out, ref = np.asarray(out), np.asarray(ref)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    err, scale = float(np.abs(out - ref).max()), max(1.0, float(np.abs(ref).max()))
    assert err <= rtol * scale, f"max abs error {err:.3g} > {rtol} x output scale {scale:.3g}"


def _sd(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def _to_torch_video(x: np.ndarray) -> torch.Tensor:  # [B, F, H, W, C] -> [B, C, F, H, W]
    return _t(x).permute(0, 4, 1, 2, 3)


def _fold_nchw(x: np.ndarray) -> torch.Tensor:  # [N, H, W, C] -> [N, C, H, W]
    return _t(x).permute(0, 3, 1, 2)


def _unfold_nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).detach().numpy()


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    return dict(
        x=rng.standard_normal((B, F, H, W, 4)).astype(np.float32),
        t=np.array([10, 500]),
        ctx=rng.standard_normal((B, L, 32)).astype(np.float32),
        camera=rng.standard_normal((B, F, 16)).astype(np.float32),
        image=rng.standard_normal((B, H, W, 4)).astype(np.float32),
        image_embedding=rng.standard_normal((B, 32)).astype(np.float32),
        fps=np.array([8.0, 6.0], np.float32),
    )


@pytest.fixture(scope="module")
def text_pair():
    """(diffusers UNet3DConditionModel, our text_tiny UNet with a camera MLP at init)."""
    torch.manual_seed(0)
    tm = diffusers.UNet3DConditionModel(**DIFFUSERS_TINY).eval()
    _randomize(tm, 0)
    cfg = UNet3DConfig.text_tiny()
    params = convert_unet(_sd(tm), cfg, _target(cfg), "diffusers")
    assert not any(p[0] == "camera_embedding" for p in params)  # diffusers has none
    return tm, unet_from_params(cfg, params, init_camera=True)


@pytest.fixture(scope="module")
def text_forward():
    return nnx.jit(lambda m, x, t, c, cam: m(x, t, c, cam))


# ---- text variant: module by module ------------------------------------------------------------


@pytest.mark.parametrize("where", [
    # (diffusers block, layer j, our path): plain ResBlock, ResBlock with 1x1 skip conv,
    # decoder ResBlock on a skip concatenation (96 -> 64 channels)
    ("down_blocks.0", 0, ("input_blocks", 1, 0)),
    ("down_blocks.1", 0, ("input_blocks", 3, 0)),
    ("up_blocks.1", 1, ("output_blocks", 3, 0)),
])
def test_resblock_matches_resnet_plus_temporal_conv(text_pair, where):
    tm, ours = text_pair
    blk_name, j, path = where
    blk = tm.get_submodule(blk_name)
    mod = ours
    for p in path:
        mod = mod[p] if isinstance(p, int) else getattr(mod, p)
    rng = np.random.default_rng(1)
    cin = blk.resnets[j].conv1.in_channels
    x = rng.standard_normal((B * F, H, W, cin)).astype(np.float32)
    emb = rng.standard_normal((B * F, 128)).astype(np.float32)
    with torch.no_grad():
        ref = blk.temp_convs[j](blk.resnets[j](_fold_nchw(x), _t(emb)), num_frames=F)
    out = mod(jnp.asarray(x), jnp.asarray(emb), F, True)
    _assert_close(np.asarray(out), _unfold_nhwc(ref))


def test_temporal_conv_matches(text_pair):
    """TemporalConvLayer: 5-D GroupNorm over frames, (3, 1, 1) convs zero-padded in time."""
    tm, ours = text_pair
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B * F, H, W, 32)).astype(np.float32)
    with torch.no_grad():
        ref = tm.down_blocks[0].temp_convs[0](_fold_nchw(x), num_frames=F)
    out = ours.input_blocks[1][0].temporal_conv(jnp.asarray(x), F, True)
    _assert_close(np.asarray(out), _unfold_nhwc(ref))


@pytest.mark.parametrize("which", ["down", "mid"])
def test_spatial_transformer_matches(text_pair, which):
    """Transformer2DModel: 1x1-conv projections in the down blocks, Linear in the middle
    block (both map onto our Linear proj_in/proj_out); cross-attention on the text context."""
    tm, ours = text_pair
    if which == "down":
        ref_mod, mod, c, hw = tm.down_blocks[0].attentions[0], ours.input_blocks[1][1], 32, H
    else:
        ref_mod, mod, c, hw = tm.mid_block.attentions[0], ours.middle_block[1], 64, H // 4
    rng = np.random.default_rng(3)
    x = rng.standard_normal((B * F, hw, hw, c)).astype(np.float32)
    ctx = rng.standard_normal((B, L, 32)).astype(np.float32)
    with torch.no_grad():
        ref = ref_mod(_fold_nchw(x), encoder_hidden_states=_t(ctx).repeat_interleave(F, 0),
                      return_dict=False)[0]
    out = mod(jnp.asarray(x), jnp.asarray(ctx))  # context shared by the F frames of a video
    _assert_close(np.asarray(out), _unfold_nhwc(ref))


@pytest.mark.parametrize("which", ["transformer_in", "down"])
def test_temporal_transformer_matches(text_pair, which):
    """TransformerTemporalModel: 5-D GroupNorm, attention over frames per pixel (both attn1 and
    attn2 self-attention), no positional encoding. transformer_in has 8 x 8 = 64 inner
    features on 32 channels."""
    tm, ours = text_pair
    if which == "transformer_in":
        ref_mod, mod = tm.transformer_in, ours.input_blocks[0][1]
    else:
        ref_mod, mod = tm.down_blocks[0].temp_attentions[0], ours.input_blocks[1][2]
    rng = np.random.default_rng(4)
    x = rng.standard_normal((B * F, H, W, 32)).astype(np.float32)
    with torch.no_grad():
        ref = ref_mod(_fold_nchw(x), num_frames=F, return_dict=False)[0]
    out = mod(jnp.asarray(x), F)
    _assert_close(np.asarray(out), _unfold_nhwc(ref))


def test_timestep_sinusoid_is_cos_first_unscaled():
    t = np.array([0, 1, 999])
    half = 16
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
    ref = np.concatenate([np.cos(t[:, None] * freqs), np.sin(t[:, None] * freqs)], axis=1)
    np.testing.assert_allclose(np.asarray(sinusoidal_embedding(jnp.asarray(t), 32)), ref,
                               atol=2e-4)  # float32 arguments up to 999 rad


# ---- text variant: whole model and camera ------------------------------------------------------


def test_text_unet_matches_diffusers_and_camera_is_zero_at_init(text_pair, text_forward, inputs):
    tm, ours = text_pair
    cam = ours.camera_embedding(jnp.asarray(inputs["camera"].reshape(B * F, 16)))
    assert np.all(np.asarray(cam) == 0.0)  # last layer zero-initialised: exactly no effect
    with torch.no_grad():
        ref = tm(_to_torch_video(inputs["x"]), _t(inputs["t"]), _t(inputs["ctx"])).sample
    ref = ref.permute(0, 2, 3, 4, 1).numpy()
    out = np.asarray(text_forward(ours, inputs["x"], inputs["t"], inputs["ctx"],
                                  inputs["camera"]))
    assert out.shape == (B, F, H, W, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=MODEL_ATOL, rtol=0)
    out0 = np.asarray(text_forward(ours, inputs["x"], inputs["t"], inputs["ctx"],
                                   np.zeros_like(inputs["camera"])))
    np.testing.assert_array_equal(out, out0)


def test_camera_mlp_matches_vgen_semantics(text_pair, text_forward, inputs):
    """Random camera MLP: VGen adds ``camera_embedding(camera[b, f])`` to the per-frame time
    embedding that every ResBlock sees; reproduced on the diffusers model with forward
    pre-hooks. Both layers matter: changing the first layer changes the output."""
    tm, ours_at_init = text_pair
    cfg = ours_at_init.config
    params = {p: np.asarray(v.get_value())
              for p, v in nnx.to_flat_state(nnx.state(ours_at_init, nnx.Param))}
    torch.manual_seed(5)
    cam_mlp = torch.nn.Sequential(torch.nn.Linear(16, 128), torch.nn.SiLU(),
                                  torch.nn.Linear(128, 128))
    cam_sd = {f"camera_embedding.{k}": v for k, v in _sd(cam_mlp).items()}
    cam_rules, _ = rules_vgen(cfg)
    cam_rules = [r for r in cam_rules if r.source.startswith("camera_embedding.")]
    target = {p: v for p, v in abstract_params(ours_at_init).items()
              if p[0] == "camera_embedding"}
    params.update(convert_state_dict(cam_sd, cam_rules, target))
    ours = unet_from_params(cfg, params)

    with torch.no_grad():
        cam_emb = cam_mlp(_t(inputs["camera"]).reshape(B * F, 16))
    hooks = [m.register_forward_pre_hook(lambda mod, args: (args[0], args[1] + cam_emb))
             for m in tm.modules() if isinstance(m, diffusers.models.resnet.ResnetBlock2D)]
    try:
        with torch.no_grad():
            ref = tm(_to_torch_video(inputs["x"]), _t(inputs["t"]), _t(inputs["ctx"])).sample
    finally:
        for h in hooks:
            h.remove()
    ref = ref.permute(0, 2, 3, 4, 1).numpy()
    out = np.asarray(text_forward(ours, inputs["x"], inputs["t"], inputs["ctx"],
                                  inputs["camera"]))
    np.testing.assert_allclose(out, ref, atol=MODEL_ATOL, rtol=0)
    base = np.asarray(text_forward(ours_at_init, inputs["x"], inputs["t"], inputs["ctx"],
                                   inputs["camera"]))
    assert np.abs(out - base).max() > 1e-2  # the camera now matters
    k1 = ("camera_embedding", "linear_1", "kernel")
    params[k1] = params[k1] * 1.5
    out_k1 = np.asarray(text_forward(unet_from_params(cfg, params), inputs["x"], inputs["t"],
                                     inputs["ctx"], inputs["camera"]))
    assert np.abs(out_k1 - out).max() > 1e-3  # and so does its first layer


# ---- image variant -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_pair():
    """(diffusers I2VGenXLUNet, our image_tiny UNet with VideoMV's added-twice concat)."""
    torch.manual_seed(1)
    tm = diffusers.I2VGenXLUNet(**DIFFUSERS_TINY).eval()
    _randomize(tm, 1)
    cfg = UNet3DConfig.image_tiny(use_camera=False)
    assert cfg.concat_added_twice
    params = convert_unet(_sd(tm), cfg, _target(cfg), "diffusers")
    return tm, unet_from_params(cfg, params)


def test_image_unet_matches_i2vgenxl_with_concat_added_twice(image_pair, inputs):
    tm, ours = image_pair
    x, img = inputs["x"], inputs["image"]
    # diffusers' pipeline builds the position-masked latents; VideoMV's UNet builds them itself
    lat = _fold_nchw(img)[:, :, None]
    lat = torch.cat([lat] + [torch.ones_like(lat) * (k + 1) / (F - 1) for k in range(F - 1)], 2)
    w = tm.conv_in.weight.detach().clone()
    try:
        with torch.no_grad():
            tm.conv_in.weight[:, 4:] *= 2  # == VideoMV adding the concat features twice
            ref = tm(_to_torch_video(x), _t(inputs["t"]), fps=_t(inputs["fps"]),
                     image_latents=lat, image_embeddings=_t(inputs["image_embedding"]),
                     encoder_hidden_states=_t(inputs["ctx"])).sample
    finally:
        with torch.no_grad():
            tm.conv_in.weight.copy_(w)
    ref = ref.permute(0, 2, 3, 4, 1).numpy()
    fwd = nnx.jit(lambda m, x, t, c, i, e, fps: m(x, t, c, image_latent=i, image_embedding=e,
                                                   fps=fps))
    out = np.asarray(fwd(ours, x, inputs["t"], inputs["ctx"], img, inputs["image_embedding"],
                         inputs["fps"]))
    np.testing.assert_allclose(out, ref, atol=MODEL_ATOL, rtol=0)


def _np_conv3x3(x, w, b):
    """NumPy reference 3x3 conv, stride 1, zero pad 1; x [N, H, W, I], w torch [O, I, 3, 3]."""
    n, h, wd, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, wd, w.shape[0]), np.float64)
    for dy in range(3):
        for dx in range(3):
            out += xp[:, dy:dy + h, dx:dx + wd] @ w[:, :, dy, dx].T
    return out + b


def _np_gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _np_silu(x):
    return x / (1.0 + np.exp(-x))


def test_image_concat_branch_matches_numpy_reference(image_pair, inputs):
    """VideoMV's concat branch: frame 0 = image latent, frame k = k/(F-1); per-frame convs;
    a pre-LN attention (2 heads of dim C, fused q|k|v in VGen) and an un-normalised GELU MLP
    over frames at each pixel; the result added twice to a zero tensor."""
    tm, ours = image_pair
    sd = {k: v.astype(np.float64) for k, v in _sd(tm).items()}
    img = inputs["image"].astype(np.float64)
    frames = np.concatenate([img[:, None]] + [np.full_like(img[:, None], k / (F - 1))
                                              for k in range(1, F)], axis=1)
    np.testing.assert_array_equal(np.asarray(frame_position_latents(jnp.asarray(inputs["image"]),
                                                                    F)),
                                  frames.astype(np.float32))
    y = frames.reshape(B * F, H, W, 4)
    p = "image_latents_proj_in"
    y = _np_silu(_np_conv3x3(y, sd[f"{p}.0.weight"], sd[f"{p}.0.bias"]))
    y = _np_silu(_np_conv3x3(y, sd[f"{p}.2.weight"], sd[f"{p}.2.bias"]))
    y = _np_conv3x3(y, sd[f"{p}.4.weight"], sd[f"{p}.4.bias"])
    y = y.reshape(B, F, H, W, 4).transpose(0, 2, 3, 1, 4).reshape(B * H * W, F, 4)
    e = "image_latents_temporal_encoder"
    mu, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
    hn = (y - mu) / np.sqrt(var + 1e-5) * sd[f"{e}.norm1.weight"] + sd[f"{e}.norm1.bias"]
    q, k, v = (hn @ sd[f"{e}.attn1.to_{n}.weight"].T for n in "qkv")
    q, k, v = (a.reshape(-1, F, 2, 4).transpose(0, 2, 1, 3) for a in (q, k, v))
    logits = q @ k.transpose(0, 1, 3, 2) / 2.0  # 1/sqrt(head dim 4)
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att = att / att.sum(-1, keepdims=True)
    a = (att @ v).transpose(0, 2, 1, 3).reshape(-1, F, 8)
    y = y + a @ sd[f"{e}.attn1.to_out.0.weight"].T + sd[f"{e}.attn1.to_out.0.bias"]
    hid = _np_gelu(y @ sd[f"{e}.ff.net.0.proj.weight"].T + sd[f"{e}.ff.net.0.proj.bias"])
    y = y + hid @ sd[f"{e}.ff.net.2.weight"].T + sd[f"{e}.ff.net.2.bias"]
    ref = 2.0 * y.reshape(B, H, W, F, 4).transpose(0, 3, 1, 2, 4)  # added twice
    out = ours.image_concat_features(jnp.asarray(inputs["image"]), F)
    _assert_close(np.asarray(out), ref)
    once = nnx.clone(ours)
    once.config = dataclasses.replace(ours.config, concat_added_twice=False)
    _assert_close(once.image_concat_features(jnp.asarray(inputs["image"]), F), ref / 2)


@pytest.mark.parametrize("size_in,size_out", [((8, 8), (32, 32)), ((32, 32), (32, 32)),
                                              ((40, 64), (32, 32)), ((7, 10), (3, 4)),
                                              ((5, 6), (8, 9))])
def test_adaptive_avg_pool_is_exact(size_in, size_out):
    """PyTorch AdaptiveAvgPool2d windows [floor(i·n/m), ceil((i+1)·n/m)): NumPy reference and
    torch itself, for up-, down-, uneven and identity sizes."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2,) + size_in + (3,)).astype(np.float32)
    ref = np.zeros((2,) + size_out + (3,))
    (h, w), (oh, ow) = size_in, size_out
    for i in range(oh):
        for j in range(ow):
            r0, r1 = (i * h) // oh, math.ceil((i + 1) * h / oh)
            c0, c1 = (j * w) // ow, math.ceil((j + 1) * w / ow)
            ref[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    out = np.asarray(adaptive_avg_pool2d(jnp.asarray(x), size_out))
    np.testing.assert_allclose(out, ref, atol=1e-6, rtol=0)
    tref = torch.nn.functional.adaptive_avg_pool2d(_fold_nchw(x), size_out)
    np.testing.assert_allclose(out, _unfold_nhwc(tref), atol=1e-6, rtol=0)


# ---- full-size: parameter counts and checkpoint layouts ------------------------------------------


def _count(cfg: UNet3DConfig) -> int:
    return sum(math.prod(v.shape) for v in _target(cfg).values())


def test_full_size_parameter_counts():
    assert param_count(UNet3DConfig.text_full()) == 1_412_895_300
    assert _count(UNet3DConfig.image_full()) == 1_422_130_664
    # diffusers' UNet3DConditionModel / I2VGenXLUNet defaults = ours minus the camera MLP
    assert _count(UNet3DConfig.text_full(use_camera=False)) == 1_411_233_860
    assert _count(UNet3DConfig.image_full(use_camera=False)) == 1_420_469_224
    assert 1_412_895_300 - 1_411_233_860 == 16 * 1280 + 1280 + 1280 * 1280 + 1280


def _spec_shapes(name: str) -> dict:
    path = os.path.join(SPEC, f"{name}.json")
    if not os.path.isfile(path):
        pytest.skip(f"{path} not available")
    with open(path) as f:
        return json.load(f)


def _placeholders(shapes):
    zero = np.zeros((), np.float32)
    return {k: np.broadcast_to(zero, tuple(s)) for k, s in shapes.items()}


@pytest.mark.parametrize("name,preset", [("videomv_t2v", "text_full"),
                                         ("videomv_i2v", "image_full")])
def test_vgen_rules_cover_released_checkpoint(name, preset):
    shapes = _spec_shapes(name)
    cfg = getattr(UNet3DConfig, preset)()
    target = _target(cfg)
    rules, ignore = rules_vgen(cfg)
    assert ignore == ["lgm_big.*"]  # LGM keys inside the VideoMV checkpoint are not the UNet's
    out = convert_state_dict(_placeholders(shapes), rules, target, ignore, name)
    assert set(out) == set(target)
    unet_keys = [k for k in shapes if not k.startswith("lgm_big.")]
    assert len(unet_keys) == {"videomv_t2v": 1484, "videomv_i2v": 1513}[name]
    uses: dict[str, int] = {}
    for r in rules:
        uses[r.source] = uses.get(r.source, 0) + 1
    assert set(uses) == set(unet_keys)  # every non-lgm key used, nothing else
    fused = "local_temporal_encoder.layers.0.0.fn.to_qkv.weight"
    assert {k: n for k, n in uses.items() if n != 1} == ({fused: 3} if cfg.is_image else {})
    assert len(rules) == len(target)  # every parameter filled exactly once


@pytest.mark.parametrize("cls_name,preset", [("UNet3DConditionModel", "text_full"),
                                             ("I2VGenXLUNet", "image_full")])
def test_diffusers_rules_cover_full_size_model(cls_name, preset):
    """Full-size diffusers layouts (built on torch's meta device: names and shapes only)."""
    with torch.device("meta"):
        tm = getattr(diffusers, cls_name)()
    shapes = {k: tuple(v.shape) for k, v in tm.state_dict().items()}
    cfg = getattr(UNet3DConfig, preset)()
    target = _target(cfg)
    with pytest.raises(ConversionError) as err:  # no camera MLP in diffusers
        convert_state_dict(_placeholders(shapes), rules_diffusers(cfg)[0], target)
    assert sorted(err.value.missing) == sorted(
        "/".join(p) for p in target if p[0] == "camera_embedding")
    assert not err.value.unexpected and not err.value.mismatched
    out = convert_unet(_placeholders(shapes), cfg, target, "diffusers")  # camera left at init
    assert set(out) == set(target_without(target, CAMERA_PARAMS))
    no_cam = dataclasses.replace(cfg, use_camera=False)
    out = convert_unet(_placeholders(shapes), no_cam, _target(no_cam),
                       "diffusers")
    assert len(out) == len(shapes) and _count(no_cam) == sum(math.prod(s) for s in
                                                             shapes.values())


@pytest.mark.parametrize("pair", ["text_pair", "image_pair"])
def test_vgen_rules_agree_with_diffusers_rules(pair, request):
    """The VGen table, numerically: rewrite the (parity-tested) diffusers tiny state dict in
    VGen's layout (temporal proj_in/out as Conv1d [O, I, 1], spatial ones Linear [O, I], the
    I2V q/k/v fused into one ``to_qkv``, camera MLP added) and convert it with ``rules_vgen``:
    every parameter must come out identical to the diffusers conversion."""
    tm, ours = request.getfixturevalue(pair)
    cfg = ours.config
    sd = _sd(tm)
    by_target = {r.target: r.source for r in rules_diffusers(cfg)[0]}
    vgen = {}
    rng = np.random.default_rng(8)
    for r in rules_vgen(cfg)[0]:
        if r.source.startswith("camera_embedding."):  # Linear: [out, in] = kernel shape reversed
            vgen[r.source] = rng.standard_normal(_target(cfg)[r.target].shape[::-1]).astype(
                np.float32)
            continue
        if r.source.endswith("to_qkv.weight"):
            enc = "image_latents_temporal_encoder.attn1"
            vgen[r.source] = np.concatenate([sd[f"{enc}.to_{n}.weight"] for n in "qkv"])
            continue
        src = by_target[r.target]
        w = sd[src]
        if src.endswith(("proj_in.weight", "proj_out.weight")):
            temporal = ".temp_attentions." in src or src.startswith("transformer_in.")
            w = w.reshape(w.shape[:2] + ((1,) if temporal else ()))
        vgen[r.source] = w
    want = convert_unet(sd, cfg, _target(cfg), "diffusers")
    got = convert_unet(vgen, cfg, _target(cfg), "vgen")
    assert set(got) == set(want) | {p for p in _target(cfg) if p[0] == "camera_embedding"}
    for p, v in want.items():
        np.testing.assert_array_equal(got[p], v, err_msg="/".join(map(str, p)))


def test_corrupted_checkpoint_lists_every_problem():
    shapes = _spec_shapes("videomv_t2v")
    src = _placeholders(shapes)
    del src["input_blocks.4.0.skip_connection.weight"]
    src["input_blocks.1.1.extra.weight"] = np.zeros(3, np.float32)
    src["middle_block.2.proj_in.weight"] = np.broadcast_to(np.float32(0), (1280, 1281, 1))
    cfg = UNet3DConfig.text_full()
    with pytest.raises(ConversionError) as err:
        convert_unet(src, cfg, _target(cfg), "vgen")
    msg = str(err.value)
    assert "input_blocks.4.0.skip_connection.weight" in msg
    assert "input_blocks.1.1.extra.weight" in msg
    assert "middle_block.2.proj_in.weight" in msg and "(1281, 1280)" in msg
    missing = [m.split(" ")[0] for m in err.value.missing]
    assert "input_blocks/4/0/skip_connection/kernel" in missing
    assert err.value.unexpected == ["input_blocks.1.1.extra.weight"]
    assert [m[0] for m in err.value.mismatched] == ["middle_block.2.proj_in.weight"]
    # the same VGen checkpoint into the image config: I2V-only keys are missing
    icfg = UNet3DConfig.image_full()
    with pytest.raises(ConversionError, match="local_image_concat"):
        convert_unet(_placeholders(shapes), icfg, _target(icfg), "vgen")


def test_transforms_accept_linear_conv1d_and_1x1_conv2d():
    w = np.arange(6, dtype=np.float32).reshape(3, 2)
    for shaped in (w, w[:, :, None], w[:, :, None, None]):
        np.testing.assert_array_equal(conv1x1_as_linear(shaped), linear(w))


# ---- configs, inputs, remat, dropout -----------------------------------------------------------


def test_config_roundtrip_and_validation():
    for cfg in (UNet3DConfig.text_full(), UNet3DConfig.image_tiny(remat=True)):
        d = cfg.to_dict()
        assert json.loads(json.dumps(d)) == d
        assert UNet3DConfig.from_dict(d) == cfg
    bad = [dict(variant="video"), dict(attn_levels=(True, True)), dict(norm_groups=7),
           dict(head_dim=48), dict(dtype="float16"), dict(attention="flash"),
           dict(channel_mult=()), dict(resblock_dropout=1.0), dict(base_channels=0),
           dict(use_camera=1)]
    for kw in bad:
        with pytest.raises(ValueError):
            UNet3DConfig.text_full(**kw)
    with pytest.raises(ValueError, match="unknown"):
        UNet3DConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError, match="source format"):
        convert_unet({}, UNet3DConfig.text_tiny(), {}, "ckpt")


def test_unet_from_params_checks_the_parameter_set():
    cfg = UNet3DConfig.text_tiny(use_camera=False)
    params = {p: np.zeros(v.shape, np.float32) for p, v in _target(cfg).items()}
    key = ("out_conv", "kernel")
    with pytest.raises(ValueError, match="missing"):
        unet_from_params(cfg, {p: v for p, v in params.items() if p != key})
    with pytest.raises(ValueError, match="shape"):
        unet_from_params(cfg, {**params, key: np.zeros((1, 1, 32, 4), np.float32)})
    model = unet_from_params(cfg, params)
    assert np.asarray(model.out_conv.kernel.get_value()).shape == (3, 3, 32, 4)


def test_input_validation(text_pair, image_pair, inputs):
    _, text = text_pair
    _, image = image_pair
    x, t, ctx = inputs["x"], inputs["t"], inputs["ctx"]
    with pytest.raises(ValueError, match="image variant"):
        text(x, t, ctx, image_latent=inputs["image"])
    with pytest.raises(ValueError, match=r"x must be"):
        text(x[..., :3], t, ctx)
    with pytest.raises(ValueError, match="divisible"):
        text(x[:, :, :6], t, ctx)
    with pytest.raises(ValueError, match="context"):
        text(x, t, ctx[..., :16])
    with pytest.raises(ValueError, match="camera"):
        text(x, t, ctx, inputs["camera"][:, :2])
    with pytest.raises(ValueError, match="image_latent"):
        image(x, t, ctx, image_embedding=inputs["image_embedding"])
    with pytest.raises(ValueError, match="image_embedding"):
        image(x, t, ctx, image_latent=inputs["image"], image_embedding=np.zeros((B, 7)))
    with pytest.raises(ValueError, match="no camera MLP"):
        image(x, t, ctx, inputs["camera"], image_latent=inputs["image"],
              image_embedding=inputs["image_embedding"])


def test_remat_and_dropout_keep_values_and_gradients():
    """remat changes memory, not values: on a ResBlock block (4 dropouts) with dropout on, loss
    and gradients agree with and without remat (the same RNG state gives the same masks);
    dropout acts only when deterministic=False; ``config.remat`` wraps every UNet block
    (checked on the traced program, without compiling the whole model)."""
    cfg = UNet3DConfig.text_tiny(channel_mult=(1,), attn_levels=(False,), num_res_blocks=1)
    rng = np.random.default_rng(7)
    params = {p: (rng.standard_normal(v.shape) * 0.1).astype(np.float32)
              for p, v in _target(cfg).items()}
    h = jnp.asarray(rng.standard_normal((2, 4, 4, 32)), jnp.float32)
    emb = jnp.asarray(rng.standard_normal((2, 128)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((1, 3, 32)), jnp.float32)

    def loss_and_grad(run, deterministic):
        block = unet_from_params(cfg, params, seed=3).input_blocks[1]
        fn = nnx.jit(lambda b: nnx.value_and_grad(
            lambda b: jnp.mean(run(b, h, emb, ctx, 2, deterministic) ** 2))(b))
        return fn(block)

    (l0, g0), (l1, g1) = (loss_and_grad(run, False) for run in (_run_layers, _run_layers_remat))
    np.testing.assert_allclose(float(l0), float(l1), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)
    assert abs(float(loss_and_grad(_run_layers, True)[0]) - float(l0)) > 1e-4

    x = jnp.zeros((1, 2, 4, 4, 4))
    for remat in (False, True):
        model = unet_from_params(dataclasses.replace(cfg, remat=remat), params)
        gd, state = nnx.split(model)
        jaxpr = jax.make_jaxpr(lambda s, gd=gd: nnx.merge(gd, s)(x, jnp.array([3]), ctx))(state)
        n_blocks = sum(not isinstance(b, Downsample) for b in model.input_blocks) + 1 + len(
            model.output_blocks)
        assert str(jaxpr).count("remat") == (n_blocks if remat else 0)


# Written by hand from VGen's module names (UNetSD_T2VBase / UNetSD_I2VGen), not generated by
# rules_vgen: VGen key -> (our parameter path, layout transform). It covers every group of
# same-shaped tensors a swapped rule would leave shape-valid: self- vs cross-attention q/k/v/out,
# the three transformer norms, spatial (x.1) vs temporal (x.2, and input_blocks.0.1) transformers,
# the four norm/conv pairs of the temporal conv (VGen spells it "temopral_conv"), the ResBlock's
# in/out norms and convs, the two time-embedding and camera-MLP linears, and the I2V fused qkv.
_T = "input_blocks/1/1/transformer_blocks/0"
_TT = "input_blocks/1/2/transformer_blocks/0"
VGEN_EXPECTED = {
    "input_blocks.0.0.weight": ("input_blocks/0/0/kernel", "conv2d"),
    "input_blocks.0.1.proj_in.weight": ("input_blocks/0/1/proj_in/kernel", "conv1x1_as_linear"),
    "input_blocks.0.1.transformer_blocks.0.attn1.to_q.weight":
        ("input_blocks/0/1/transformer_blocks/0/attn1/to_q/kernel", "linear"),
    "input_blocks.0.1.transformer_blocks.0.attn2.to_q.weight":
        ("input_blocks/0/1/transformer_blocks/0/attn2/to_q/kernel", "linear"),
    "input_blocks.1.0.in_layers.0.weight": ("input_blocks/1/0/in_norm/scale", "identity"),
    "input_blocks.1.0.in_layers.0.bias": ("input_blocks/1/0/in_norm/bias", "identity"),
    "input_blocks.1.0.in_layers.2.weight": ("input_blocks/1/0/in_conv/kernel", "conv2d"),
    "input_blocks.1.0.emb_layers.1.weight": ("input_blocks/1/0/emb_proj/kernel", "linear"),
    "input_blocks.1.0.out_layers.0.weight": ("input_blocks/1/0/out_norm/scale", "identity"),
    "input_blocks.1.0.out_layers.3.weight": ("input_blocks/1/0/out_conv/kernel", "conv2d"),
    **{f"input_blocks.1.0.temopral_conv.conv{i}.0.weight":
       (f"input_blocks/1/0/temporal_conv/norm{i}/scale", "identity") for i in (1, 2, 3, 4)},
    "input_blocks.1.0.temopral_conv.conv1.2.weight":
        ("input_blocks/1/0/temporal_conv/conv1/kernel", "conv3d"),
    **{f"input_blocks.1.0.temopral_conv.conv{i}.3.weight":
       (f"input_blocks/1/0/temporal_conv/conv{i}/kernel", "conv3d") for i in (2, 3, 4)},
    "input_blocks.1.1.norm.weight": ("input_blocks/1/1/norm/scale", "identity"),
    "input_blocks.1.1.proj_in.weight": ("input_blocks/1/1/proj_in/kernel", "conv1x1_as_linear"),
    "input_blocks.1.1.proj_out.weight": ("input_blocks/1/1/proj_out/kernel",
                                         "conv1x1_as_linear"),
    **{f"input_blocks.1.1.transformer_blocks.0.{a}.to_{w}.weight": (f"{_T}/{a}/to_{w}/kernel",
                                                                     "linear")
       for a in ("attn1", "attn2") for w in "qkv"},
    **{f"input_blocks.1.1.transformer_blocks.0.{a}.to_out.0.weight": (f"{_T}/{a}/to_out/kernel",
                                                                       "linear")
       for a in ("attn1", "attn2")},
    **{f"input_blocks.1.1.transformer_blocks.0.norm{i}.{p}": (f"{_T}/norm{i}/{q}", "identity")
       for i in (1, 2, 3) for p, q in (("weight", "scale"), ("bias", "bias"))},
    "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight": (f"{_T}/ff_proj/kernel",
                                                                    "linear"),
    "input_blocks.1.1.transformer_blocks.0.ff.net.2.weight": (f"{_T}/ff_out/kernel", "linear"),
    **{f"input_blocks.1.2.transformer_blocks.0.{a}.to_{w}.weight": (f"{_TT}/{a}/to_{w}/kernel",
                                                                     "linear")
       for a in ("attn1", "attn2") for w in "qkv"},
    **{f"input_blocks.1.2.transformer_blocks.0.norm{i}.weight": (f"{_TT}/norm{i}/scale",
                                                                  "identity") for i in (1, 2, 3)},
    "input_blocks.1.2.proj_in.weight": ("input_blocks/1/2/proj_in/kernel", "conv1x1_as_linear"),
    "input_blocks.3.op.weight": ("input_blocks/3/op/kernel", "conv2d"),
    "input_blocks.4.0.skip_connection.weight": ("input_blocks/4/0/skip_connection/kernel",
                                                "conv2d"),
    "middle_block.0.in_layers.0.weight": ("middle_block/0/in_norm/scale", "identity"),
    "middle_block.3.in_layers.0.weight": ("middle_block/3/in_norm/scale", "identity"),
    "middle_block.1.transformer_blocks.0.attn1.to_q.weight":
        ("middle_block/1/transformer_blocks/0/attn1/to_q/kernel", "linear"),
    "middle_block.2.transformer_blocks.0.attn1.to_q.weight":
        ("middle_block/2/transformer_blocks/0/attn1/to_q/kernel", "linear"),
    "middle_block.2.proj_out.weight": ("middle_block/2/proj_out/kernel", "conv1x1_as_linear"),
    "output_blocks.2.1.conv.weight": ("output_blocks/2/1/conv/kernel", "conv2d"),
    "output_blocks.0.0.skip_connection.weight": ("output_blocks/0/0/skip_connection/kernel",
                                                 "conv2d"),
    "time_embed.0.weight": ("time_embed/linear_1/kernel", "linear"),
    "time_embed.2.weight": ("time_embed/linear_2/kernel", "linear"),
    "camera_embedding.0.weight": ("camera_embedding/linear_1/kernel", "linear"),
    "camera_embedding.2.weight": ("camera_embedding/linear_2/kernel", "linear"),
    "out.0.weight": ("out_norm/scale", "identity"),
    "out.2.weight": ("out_conv/kernel", "conv2d"),
}
VGEN_EXPECTED_I2V = {
    "context_embedding.0.weight": ("context_embedding/linear_1/kernel", "linear"),
    "context_embedding.2.weight": ("context_embedding/linear_2/kernel", "linear"),
    "fps_embedding.0.weight": ("fps_embedding/linear_1/kernel", "linear"),
    "fps_embedding.2.weight": ("fps_embedding/linear_2/kernel", "linear"),
    "local_image_concat.0.weight": ("local_image_concat/conv1/kernel", "conv2d"),
    "local_image_concat.2.weight": ("local_image_concat/conv2/kernel", "conv2d"),
    "local_image_concat.4.weight": ("local_image_concat/conv3/kernel", "conv2d"),
    "local_image_embedding.3.weight": ("local_image_embedding/conv2/kernel", "conv2d"),
    "local_temporal_encoder.layers.0.1.net.0.0.weight": ("local_temporal_encoder/ff_in/kernel",
                                                         "linear"),
    "local_temporal_encoder.layers.0.1.net.2.weight": ("local_temporal_encoder/ff_out/kernel",
                                                       "linear"),
}


@pytest.mark.parametrize("name, preset, expected", [
    ("videomv_t2v", "text_full", VGEN_EXPECTED),
    ("videomv_i2v", "image_full", {**{k: v for k, v in VGEN_EXPECTED.items()
                                      if not k.startswith("camera")}, **VGEN_EXPECTED_I2V}),
])
def test_vgen_names_map_where_written_by_hand(name, preset, expected):
    """rules_vgen against the hand-written table above, on released key names; the I2V fused
    ``to_qkv`` [3·inner, C] must give q, k, v from its first, second and third row blocks."""
    cfg = getattr(UNet3DConfig, preset)()
    released = _spec_shapes(name)
    got: dict[str, list] = {}
    for r in rules_vgen(cfg)[0]:
        got.setdefault(r.source, []).append(r)
    for key, (target, transform) in expected.items():
        assert key in released, f"{key} is not a key of the released {name} checkpoint"
        rules = got.get(key)
        assert rules is not None and len(rules) == 1, f"{key}: rules {rules}"
        assert (path_str(rules[0].target), rules[0].transform.__name__) == (target,
                                                                            transform), key
    if name == "videomv_i2v":
        fused = got["local_temporal_encoder.layers.0.0.fn.to_qkv.weight"]
        w = np.arange(24 * 4, dtype=np.float32).reshape(24, 4)
        parts = {path_str(r.target): r.transform(w) for r in fused}
        for i, n in enumerate("qkv"):
            np.testing.assert_array_equal(parts[f"local_temporal_encoder/to_{n}/kernel"],
                                          w[8 * i:8 * (i + 1)].T)
