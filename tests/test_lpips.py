"""LPIPS-VGG parity with the ``lpips`` package (0.1.4), the converter and the bilinear resize.

torchvision is not installable beside torch 2.13 CPU, so a minimal stand-in ``torchvision``
module is placed in ``sys.modules`` only while ``lpips`` is imported: its ``models.vgg16`` builds
a ``features`` Sequential laid out exactly like torchvision's VGG16 (conv, ReLU pairs and 2×2 max
pools at the same indices). lpips' own ``pretrained_networks.vgg16`` slices that Sequential and
its ``LPIPS.forward`` is the reference; the linear heads of the full model are the real ones
shipped in the lpips wheel (``pretrained=True``), the VGG trunk is random (``pnet_rand=True``).
CI: ``pip install --no-deps lpips==0.1.4``.
"""

from __future__ import annotations

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from videomv_jax.convert.base import ConversionError, abstract_params, convert_state_dict
from videomv_jax.convert.lpips import (
    convert,
    load_lpips,
    read_lpips_state_dict,
    rules_lpips,
    torchvision_conv_indices,
)
from videomv_jax.models.lpips import (
    LPIPS,
    UNAVAILABLE_MESSAGE,
    LPIPSConfig,
    VGG16Features,
    lpips_from_params,
    lpips_unavailable_reason,
    resize_for_lpips,
)

torch.set_num_threads(1)

# ---- torchvision stand-in ----------------------------------------------------------------------

_LAYOUT = {"stage_widths": LPIPSConfig.vgg().stage_widths}


class _StubVGG(torch.nn.Module):
    """torchvision ``VGG`` reduced to its ``features`` (cfg "D": conv3x3 pad 1 + ReLU(inplace),
    ``MaxPool2d(2, 2)`` after every stage)."""

    def __init__(self, stage_widths):
        super().__init__()
        layers, cin = [], 3
        for stage in stage_widths:
            for width in stage:
                layers += [torch.nn.Conv2d(cin, width, 3, padding=1), torch.nn.ReLU(inplace=True)]
                cin = width
            layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = torch.nn.Sequential(*layers)


def _stub_vgg16(pretrained=False, weights=None, progress=True, **kwargs):
    # lpips 0.1.4 calls tv.vgg16(pretrained=not pnet_rand); only random trunks exist here.
    if pretrained or weights is not None:
        raise RuntimeError("the torchvision stand-in has no pretrained weights")
    return _StubVGG(_LAYOUT["stage_widths"])


def _import_lpips_with_stub():
    stub = types.ModuleType("torchvision")
    stub.models = types.ModuleType("torchvision.models")
    stub.models.vgg16 = _stub_vgg16
    saved = {name: sys.modules.get(name) for name in ("torchvision", "torchvision.models")}
    sys.modules.update({"torchvision": stub, "torchvision.models": stub.models})
    try:
        module = pytest.importorskip("lpips")  # guard only: CI installs lpips==0.1.4
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
    module.pretrained_networks.tv = stub.models  # also if lpips was imported before
    return module


lpips = _import_lpips_with_stub()


# ---- helpers -----------------------------------------------------------------------------------


def _reference(config: LPIPSConfig, seed: int):
    """lpips.LPIPS(net='vgg') with a random (seeded) VGG trunk of ``config``'s widths; for the
    real widths the heads are lpips' released v0.1 weights, otherwise random non-negative."""
    torch.manual_seed(seed)
    _LAYOUT["stage_widths"] = config.stage_widths
    try:
        real = config.stage_widths == LPIPSConfig.vgg().stage_widths
        ref = lpips.LPIPS(net="vgg", pretrained=real, pnet_rand=True, verbose=False)
    finally:
        _LAYOUT["stage_widths"] = LPIPSConfig.vgg().stage_widths
    # He-normal trunk with non-zero biases: every tap carries input-dependent signal (PyTorch's
    # default init lets the biases dominate after 13 layers) and the biases are exercised.
    with torch.no_grad():
        for module in ref.net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                module.bias.normal_(0.0, 0.05)
    if not real:
        heads = [lpips.NetLinLayer(c, use_dropout=True) for c in config.tap_channels]
        with torch.no_grad():
            for head in heads:
                head.model[1].weight.copy_(torch.rand_like(head.model[1].weight))
        for k, head in enumerate(heads):
            setattr(ref, f"lin{k}", head)
        ref.lins = torch.nn.ModuleList(heads)
    return ref.eval()


def _save_sources(ref, tmp_path, classifier: bool = True):
    """Write ``ref``'s weights as torchvision ``vgg16-*.pth`` and lpips ``vgg.pth`` files."""
    vgg = {}
    for name, value in ref.net.state_dict().items():  # net.slice{n}.{idx}.{weight,bias}
        _, idx, kind = name.split(".")
        vgg[f"features.{idx}.{kind}"] = value.clone()
    if classifier:  # a full torchvision checkpoint also holds the (ignored) classifier
        vgg["classifier.0.weight"] = torch.randn(8, 16)
        vgg["classifier.0.bias"] = torch.randn(8)
    heads = {f"lin{k}.model.1.weight": ref.lins[k].model[1].weight.detach().clone()
             for k in range(len(ref.lins))}
    vgg_path, lpips_path = tmp_path / "vgg16-test.pth", tmp_path / "vgg.pth"
    torch.save(vgg, vgg_path)
    torch.save(heads, lpips_path)
    return vgg_path, lpips_path


def _pairs(shape, seed):
    """Random image pairs in [-1, 1] (NCHW for torch): one unrelated pair, one near pair."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, shape).astype(np.float32)
    b = rng.uniform(-1, 1, shape).astype(np.float32)
    b[0] = np.clip(a[0] + 0.1 * rng.standard_normal(a[0].shape), -1, 1)
    return a, b


def _nhwc(x: np.ndarray) -> jax.Array:
    return jnp.asarray(x.transpose(0, 2, 3, 1))


def _torch_lpips(ref, a, b):
    with torch.no_grad():
        total, per = ref(torch.from_numpy(a), torch.from_numpy(b), retPerLayer=True)
    return total.reshape(-1).numpy(), [p.reshape(-1).numpy() for p in per]


# ---- config ------------------------------------------------------------------------------------


def test_config_presets_roundtrip_and_validation():
    full, tiny = LPIPSConfig.vgg(), LPIPSConfig.tiny()
    assert full.tap_channels == (64, 128, 256, 512, 512)
    assert [len(s) for s in tiny.stage_widths] == [len(s) for s in full.stage_widths]
    for cfg in (full, tiny, tiny.replace(dtype="bfloat16", remat=True)):
        assert LPIPSConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown LPIPSConfig fields"):
        LPIPSConfig.from_dict({"widths": 3})
    for bad in (dict(stage_widths=()), dict(stage_widths=((8, 0),)), dict(shift=(0.0, 0.0)),
                dict(scale=(1.0, 0.0, 1.0)), dict(eps=0.0), dict(dtype="float16"),
                dict(in_channels=0)):
        with pytest.raises(ValueError, match="LPIPSConfig"):
            LPIPSConfig(**bad)


def test_full_size_layout_dry_run():
    """Parameter count and a zero-strided, full torchvision VGG16 + lpips head layout (with the
    real classifier shapes, ignored) against the abstract model: nothing is allocated."""
    cfg = LPIPSConfig.vgg()
    assert torchvision_conv_indices(cfg) == [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21],
                                             [24, 26, 28]]
    target = abstract_params(nnx.eval_shape(lambda: LPIPS(cfg, rngs=nnx.Rngs(0))))
    assert sum(int(np.prod(v.shape)) for v in target.values()) == 14_714_688 + 1_472
    shapes, cin = {}, 3
    for stage, indices in zip(cfg.stage_widths, torchvision_conv_indices(cfg), strict=True):
        for width, idx in zip(stage, indices, strict=True):
            shapes[f"features.{idx}.weight"] = (width, cin, 3, 3)
            shapes[f"features.{idx}.bias"] = (width,)
            cin = width
    shapes.update({"classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,),
                   "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,),
                   "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,)})
    shapes.update({f"lin{k}.model.1.weight": (1, c, 1, 1)
                   for k, c in enumerate(cfg.tap_channels)})
    source = {k: np.broadcast_to(np.zeros((), np.float32), s) for k, s in shapes.items()}
    rules, ignore = rules_lpips(cfg)
    out = convert_state_dict(source, rules, target, ignore)
    assert set(out) == set(target)


# ---- parity ------------------------------------------------------------------------------------


def test_vgg_features_match_torchvision_layout():
    """Module level: the five taps equal lpips' sliced VGG16 outputs (tiny widths)."""
    cfg = LPIPSConfig.tiny()
    ref = _reference(cfg, seed=1)
    params = convert({f"features.{n.split('.')[1]}.{n.split('.')[2]}": v.numpy()
                      for n, v in ref.net.state_dict().items()}
                     | {f"lin{k}.model.1.weight": ref.lins[k].model[1].weight.detach().numpy()
                        for k in range(5)}, cfg)
    model = lpips_from_params(params, cfg)
    x = np.random.default_rng(2).standard_normal((2, 3, 35, 37)).astype(np.float32)
    with torch.no_grad():
        want = [t.numpy() for t in ref.net(torch.from_numpy(x))]
    got = nnx.jit(lambda m, v: m.net(v))(model, _nhwc(x))
    assert isinstance(model.net, VGG16Features)
    for w, g in zip(want, got, strict=True):  # odd sizes: floor-mode pools
        # float32 conv stacks, different summation order: ~1e-6 relative per layer.
        np.testing.assert_allclose(np.asarray(g), w.transpose(0, 2, 3, 1), rtol=1e-4,
                                   atol=1e-5 * float(np.abs(w).max()))


def test_full_vgg_lpips_parity(tmp_path):
    """Real VGG16 widths + the lpips package's released linear heads, random trunk, 64×64."""
    ref = _reference(LPIPSConfig.vgg(), seed=0)
    vgg_path, lpips_path = _save_sources(ref, tmp_path)
    model = load_lpips(vgg_path, lpips_path)
    shipped = torch.load(lpips.__path__[0] + "/weights/v0.1/vgg.pth", map_location="cpu")
    for k in range(5):  # the heads really are the released v0.1 weights (non-negative)
        kernel = np.asarray(model.lins[k].kernel[...])
        np.testing.assert_array_equal(kernel[:, 0], shipped[f"lin{k}.model.1.weight"].reshape(-1))
        assert (kernel >= 0).all()
    a, b = _pairs((3, 3, 64, 64), seed=3)
    want, want_per = _torch_lpips(ref, a, b)
    got, got_per = nnx.jit(lambda m, x, y: m(x, y, per_layer=True))(model, _nhwc(a), _nhwc(b))
    # float32 through 13 convs (oneDNN vs XLA summation order) then normalised features:
    # measured ~1e-6 relative; 1e-5 leaves headroom without hiding a layout bug (those are O(1)).
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    for g, w in zip(got_per, want_per, strict=True):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-9)
    assert want[0] < want[1]  # the near pair is nearer
    same = model(_nhwc(a), _nhwc(a))
    np.testing.assert_array_equal(np.asarray(same), np.zeros(3, np.float32))


def test_tiny_lpips_parity_normalize_and_grad(tmp_path):
    cfg = LPIPSConfig.tiny()
    ref = _reference(cfg, seed=4)
    vgg_path, lpips_path = _save_sources(ref, tmp_path, classifier=False)
    model = load_lpips(vgg_path, lpips_path, cfg)
    a, b = _pairs((2, 3, 48, 40), seed=5)
    want, _ = _torch_lpips(ref, a, b)
    np.testing.assert_allclose(np.asarray(model(_nhwc(a), _nhwc(b))), want, rtol=1e-5)
    # [0, 1] inputs with normalize=True (lpips' flag).
    a01, b01 = (a + 1) / 2, (b + 1) / 2
    with torch.no_grad():
        want01 = ref(torch.from_numpy(a01), torch.from_numpy(b01), normalize=True).reshape(-1)
    np.testing.assert_allclose(np.asarray(model(_nhwc(a01), _nhwc(b01), normalize=True)),
                               want01.numpy(), rtol=1e-5)
    # Gradient w.r.t. the first image equals torch autograd; float32, rtol 1e-4 (backward
    # through the stack amplifies rounding a little more than the forward).
    ta = torch.from_numpy(a).requires_grad_(True)
    ref(ta, torch.from_numpy(b)).sum().backward()
    grad = jax.jit(jax.grad(lambda x: model(x, _nhwc(b)).sum()))(_nhwc(a))
    gw = ta.grad.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(grad), gw, rtol=1e-4,
                               atol=1e-4 * float(np.abs(gw).max()))
    # Identical images: distance 0 and a finite (zero) gradient despite sqrt at dead features.
    same = jax.jit(jax.grad(lambda x: model(x, _nhwc(a)).sum()))(_nhwc(a))
    assert np.isfinite(np.asarray(same)).all()
    # remat gives the same values.
    model_r = load_lpips(vgg_path, lpips_path, cfg.replace(remat=True))
    np.testing.assert_allclose(
        np.asarray(jax.jit(jax.grad(lambda x: model_r(x, _nhwc(b)).sum()))(_nhwc(a))),
        np.asarray(grad),
        rtol=1e-6, atol=1e-9)


# ---- bad checkpoints ---------------------------------------------------------------------------


def test_bad_checkpoints_raise(tmp_path):
    cfg = LPIPSConfig.tiny()
    ref = _reference(cfg, seed=6)
    vgg_path, lpips_path = _save_sources(ref, tmp_path)
    state = read_lpips_state_dict(vgg_path, lpips_path)
    assert "classifier.0.weight" in state  # read, then ignored by the rules
    convert(state, cfg)
    bad = dict(state)
    del bad["features.7.bias"]
    bad["features.31.weight"] = np.zeros((3, 3), np.float32)
    bad["lin2.model.1.weight"] = np.zeros((1, 7, 1, 1), np.float32)
    with pytest.raises(ConversionError) as info:
        convert(bad, cfg)
    msg = str(info.value)
    assert "features.7.bias" in msg and "net/stages/1/convs/1/bias" in msg
    assert "features.31.weight" in msg
    assert "lin2.model.1.weight -> lins/2/kernel" in msg and "(7, 1)" in msg
    # The full config does not fit tiny weights: shape mismatches, reported through load_lpips.
    with pytest.raises(ConversionError, match="shape mismatches"):
        load_lpips(vgg_path, lpips_path, LPIPSConfig.vgg())
    # Files swapped / passed twice, missing and unreadable files.
    with pytest.raises(ValueError, match="share keys"):
        load_lpips(vgg_path, vgg_path, cfg)
    with pytest.raises(FileNotFoundError, match="VGG16"):
        load_lpips(tmp_path / "nope.pth", lpips_path, cfg)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="could not read LPIPS linear heads"):
        load_lpips(vgg_path, junk, cfg)


def test_unavailable_reason(tmp_path):
    present = tmp_path / "a.pth"
    present.write_bytes(b"")
    assert lpips_unavailable_reason(present, present) is None
    for args in ((None, None), (present, None), (tmp_path / "missing.pth", present)):
        reason = lpips_unavailable_reason(*args)
        assert reason.startswith(UNAVAILABLE_MESSAGE)
    assert "--lpips-weights not given" in lpips_unavailable_reason(present, None)
    assert "does not exist" in lpips_unavailable_reason(tmp_path / "missing.pth", present)


def test_input_validation():
    model = nnx.eval_shape(lambda: LPIPS(LPIPSConfig.tiny(), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="same shape"):
        model(jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16, 8, 3)))
    with pytest.raises(ValueError, match="expects"):
        model(jnp.zeros((1, 16, 16, 4)), jnp.zeros((1, 16, 16, 4)))


# ---- resize ------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_hw,out", [((512, 512), 256), ((100, 80), 256), ((37, 53), (20, 31)),
                                       ((256, 256), 256), ((300, 200), (256, 128))])
def test_resize_matches_torch_bilinear(in_hw, out):
    x = np.random.default_rng(7).uniform(-1, 1, (2, 3, *in_hw)).astype(np.float32)
    size = (out, out) if isinstance(out, int) else out
    want = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bilinear",
                                           align_corners=False, antialias=False).numpy()
    got = np.asarray(resize_for_lpips(_nhwc(x), out))
    # Same taps and weights (float32 index math as ATen); only the rounding of the
    # separable vs. 2-D weighted sum differs: a few ulp of values in [-1, 1].
    np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), rtol=0, atol=2e-6)
    hwc = np.asarray(resize_for_lpips(_nhwc(x)[0], out))
    np.testing.assert_allclose(hwc, got[0], rtol=0, atol=0)
