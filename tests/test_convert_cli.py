"""The conversion CLI end to end, for every (kind, source format) it supports.

For each source naming a state dict is written to disk in that naming, converted with
``tools/convert_torch_weights.py`` (``main(argv)`` run in-process, tiny config, ``--no-progress``),
loaded with :func:`videomv_jax.model_store.load_converted`, and the Flax model's output
is compared with the PyTorch source model's on the same inputs:

* diffusers / transformers namings come straight from the source library (``state_dict()``,
  ``save_pretrained``);
* VGen UNet, LDM VAE and open_clip namings (libraries that cannot be installed here) are derived
  from the source-library models by renamings: the LDM and open_clip ones are the independent
  helpers of ``tests/test_vae.py`` / ``tests/test_clip.py`` (imported by file path); the VGen one
  maps each parameter's diffusers key to its VGen key through the two rule tables (as
  ``tests/test_unet3d.py`` does) and its key patterns are checked against the released
  checkpoint's names (``tests/data/checkpoints/videomv_{t2v,i2v}.json``). VideoMV's camera MLP
  (absent in diffusers) is a random PyTorch MLP whose output is added to every ResBlock's time
  embedding by forward pre-hooks, which is VGen's semantics;
* LGM naming is the ``state_dict()`` of the independent PyTorch LGM of ``tests/test_lgm.py``.

The image UNet (unet-i2v, VGen naming) is compared with diffusers' ``I2VGenXLUNet`` given the
position-masked image latents and a doubled image half of ``conv_in`` (VideoMV adds the concat
features twice; ``conv_in`` is linear in its input), as in ``tests/test_unet3d.py``.

The files mimic the released containers: one VideoMV-like ``.pth`` holds the VGen text UNet and
the ``lgm_big.*`` LGM (converted twice, as unet-t2v and as lgm), the image UNet is saved with a
``module.`` prefix, the LDM VAE inside a full latent-diffusion ``.ckpt`` with other models' and
loss keys, one open_clip ``.bin`` holds both towers.

Tolerances are those of the per-model parity tests (float32 on CPU; the differences are
summation order, not formulas), max abs: whole UNets / VAE / LGM 1e-4 (observed: UNets
2.6-3.7e-6 on outputs of magnitude ~2, VAE 3.8e-6 on ~1.1, LGM 1.1e-6 on ~0.9, so >= 25x
headroom), CLIP towers 2e-5 (observed: text 1.9-2.4e-6 on ~3.3, vision 7e-7 on ~2.2; 2-3
pre-LN blocks). A wrong conversion (a transposed or swapped tensor) is O(1).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path
from types import ModuleType

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402

from videomv_jax.convert.registry import KINDS  # noqa: E402
from videomv_jax.convert.unet import rules_diffusers, rules_vgen  # noqa: E402
from videomv_jax.model_store import load_converted, read_converted_config  # noqa: E402
from videomv_jax.models.clip import (  # noqa: E402
    CLIPTextConfig,
    load_tokenizer,
    tokenize,
)
from videomv_jax.models.lgm import LGMConfig  # noqa: E402
from videomv_jax.models.unet3d import UNet3DConfig  # noqa: E402
from videomv_jax.models.vae import VAEConfig  # noqa: E402

torch.set_num_threads(1)

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SPEC = Path(__file__).parent / "data" / "checkpoints"

MODEL_ATOL = 1e-4  # whole UNets / VAE / LGM (house bound; observed <= 3.8e-6)
CLIP_ATOL = 2e-5  # CLIP towers, as tests/test_clip.py (observed <= 2.4e-6)
B, F, H, W, L = 2, 2, 8, 8, 5  # UNet inputs: batch, frames, latent size, context tokens


def _load_file_module(name: str, path: Path) -> ModuleType:
    """A module from a file path (tests/ and tools/ are not packages). A test module that pytest
    already imported (same file) is reused; otherwise it is loaded under a private name so that
    pytest's own import of it is not disturbed."""
    mod = sys.modules.get(name)
    if mod is not None and Path(getattr(mod, "__file__", "")).resolve() == path:
        return mod
    private = f"_convert_cli_ref_{name}"
    if private in sys.modules:
        return sys.modules[private]
    spec = importlib.util.spec_from_file_location(private, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[private] = mod
    spec.loader.exec_module(mod)
    return mod


tu = _load_file_module("test_unet3d", TESTS / "test_unet3d.py")
tv = _load_file_module("test_vae", TESTS / "test_vae.py")
tc = _load_file_module("test_clip", TESTS / "test_clip.py")
tl = _load_file_module("test_lgm", TESTS / "test_lgm.py")
cli = _load_file_module("convert_torch_weights", REPO / "tools" / "convert_torch_weights.py")

_fwd = nnx.jit(lambda m, *args, **kw: m(*args, **kw))  # jitted whole-model calls


def _convert(kind: str, src: Path, fmt: str, out: Path, config: str | dict | None = None,
             *extra: str):
    """Run the CLI in-process, then load the converted directory: (model, config). Without
    ``config`` the CLI reads the sizes off the checkpoint (the tests then check that it found
    the tiny config the reference model was built with)."""
    cfg_arg = [] if config is None else ["--config", config if isinstance(config, str)
                                         else json.dumps(config)]
    rc = cli.main([kind, str(src), str(out), "--format", fmt, *cfg_arg, "--no-progress",
                   *extra])
    assert rc == 0, f"convert_torch_weights.py {kind} --format {fmt} exited with {rc}"
    meta = read_converted_config(out)
    assert meta["model"] == kind and meta["source"]["format"] == fmt
    return load_converted(out, kind=kind)


def _close(got, ref, atol: float) -> None:
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert np.abs(ref).max() > 0.1  # a non-trivial output
    np.testing.assert_allclose(got, ref, atol=atol, rtol=0)


def _pattern(key: str) -> str:
    return re.sub(r"\.\d+\.", ".N.", key)


def _check_released_patterns(sd: dict, spec_name: str) -> None:
    """Every key written in a released naming matches a key pattern (indices → N) of the
    released checkpoint with that rank (skipped when its table in tests/data/checkpoints is
    absent)."""
    path = SPEC / f"{spec_name}.json"
    if not path.is_file():
        return
    ranks: dict[str, set[int]] = {}
    for k, shape in json.loads(path.read_text()).items():
        ranks.setdefault(_pattern(k), set()).add(len(shape))
    for k, v in sd.items():
        assert np.ndim(v) in ranks.get(_pattern(k), ()), (k, np.shape(v))


# ---- coverage ------------------------------------------------------------------------------------

COVERED = {("unet-t2v", "vgen"), ("unet-t2v", "diffusers"), ("unet-i2v", "vgen"),
           ("vae", "ldm"), ("vae", "diffusers"), ("clip-text", "open_clip"), ("clip-text", "hf"),
           ("clip-vision", "open_clip"), ("clip-vision", "hf"), ("lgm", "lgm"), ("lgm", "vgen")}


def test_unreadable_source_files_are_named(tmp_path, capsys):
    """An empty file and random bytes: one line naming the file and what is wrong (no bare
    ``EOFError:``, no PyTorch advice about weights_only), exit code 2, nothing written."""
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    cases = [(empty, "is empty (0 bytes)"), (tmp_path / "random.pth", "not a readable PyTorch"),
             (tmp_path / "random.safetensors", "not a readable .safetensors")]
    for path, _ in cases[1:]:
        path.write_bytes(noise)
    for path, message in cases:
        assert cli.main(["vae", str(path), str(tmp_path / "out"), "--format", "ldm",
                         "--config", "tiny", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert message in err and str(path) in err and "weights_only" not in err, err
        assert not (tmp_path / "out").exists()


def test_every_registered_source_format_is_covered():
    assert {(k, f) for k, kind in KINDS.items() for f in kind.formats} == COVERED


# ---- source models (module scope: built once) ----------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("convert_cli")


def _camera_mlp(seed: int) -> torch.nn.Module:
    """VideoMV's camera MLP in VGen's layout (``camera_embedding.{0,2}``), random weights."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 128), torch.nn.SiLU(),
                               torch.nn.Linear(128, 128)).eval()


def diffusers_to_vgen(sd: dict, cfg: UNet3DConfig, camera: dict) -> dict:
    """VGen-named UNet state dict from a diffusers one: for every parameter, the diffusers key
    that fills it (``rules_diffusers``) is renamed to the VGen key that fills it (``rules_vgen``)
    in VGen's layout (temporal proj_in/out Conv1d [O, I, 1], spatial ones Linear [O, I], the
    I2V local temporal encoder's q/k/v fused into ``to_qkv``); ``camera``: the camera MLP's
    ``{0,2}.{weight,bias}``. Same logic as ``test_vgen_rules_agree_with_diffusers_rules``."""
    by_target = {r.target: r.source for r in rules_diffusers(cfg)[0]}
    out = {}
    for r in rules_vgen(cfg)[0]:
        if r.source.startswith("camera_embedding."):
            out[r.source] = camera[r.source[len("camera_embedding."):]]
        elif r.source.endswith("to_qkv.weight"):
            enc = "image_latents_temporal_encoder.attn1"
            out[r.source] = np.concatenate([sd[f"{enc}.to_{n}.weight"] for n in "qkv"])
        else:
            src = by_target[r.target]
            w = sd[src]
            if src.endswith(("proj_in.weight", "proj_out.weight")):
                temporal = ".temp_attentions." in src or src.startswith("transformer_in.")
                w = w.reshape(w.shape[:2] + ((1,) if temporal else ()))
            out[r.source] = w
    return out


def _torch_state(sd: dict) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


@pytest.fixture(scope="module")
def unet_inputs():
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
def t2v_torch():
    """(diffusers UNet3DConditionModel at text_tiny, camera MLP), random weights."""
    torch.manual_seed(0)
    tm = diffusers.UNet3DConditionModel(**tu.DIFFUSERS_TINY).eval()
    tu._randomize(tm, 0)
    return tm, _camera_mlp(5)


@pytest.fixture(scope="module")
def lgm_torch():
    """The independent PyTorch LGM of tests/test_lgm.py (LGM naming), GN affine / biases
    re-randomised (identity / zero by default)."""
    torch.manual_seed(0)
    model = tl.TLGM(LGMConfig.tiny()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif ".norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def videomv_pth(work, t2v_torch, lgm_torch) -> Path:
    """A VideoMV-like text checkpoint: VGen-named UNet keys + ``lgm_big.*`` LGM keys."""
    tm, cam = t2v_torch
    sd = diffusers_to_vgen(tu._sd(tm), UNet3DConfig.text_tiny(), tu._sd(cam))
    sd.update({f"lgm_big.{k}": v for k, v in tu._sd(lgm_torch).items()})
    _check_released_patterns(sd, "videomv_t2v")
    state = _torch_state(sd)
    path = work / "videomv_t2v.pth"
    torch.save({"state_dict": state}, path)
    return path


def _with_camera_hooks(tm: torch.nn.Module, cam_emb: torch.Tensor):
    """VGen: the camera embedding is added to the per-frame time embedding every ResBlock sees."""
    return [m.register_forward_pre_hook(lambda mod, args: (args[0], args[1] + cam_emb))
            for m in tm.modules() if isinstance(m, diffusers.models.resnet.ResnetBlock2D)]


def _video_out(t: torch.Tensor) -> np.ndarray:  # [B, C, F, H, W] -> [B, F, H, W, C]
    return t.permute(0, 2, 3, 4, 1).numpy()


# ---- UNets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["vgen", "diffusers"])
def test_unet_t2v(fmt, work, t2v_torch, videomv_pth, unet_inputs):
    tm, cam_mlp = t2v_torch
    i = unet_inputs
    if fmt == "vgen":  # text_tiny preset (with the camera MLP) from the VideoMV-like .pth
        model, cfg = _convert("unet-t2v", videomv_pth, "vgen", work / "t2v_vgen")
        assert cfg == UNet3DConfig.text_tiny()
        with torch.no_grad():
            cam_emb = cam_mlp(tu._t(i["camera"]).reshape(B * F, 16))
        hooks = _with_camera_hooks(tm, cam_emb)
        camera = i["camera"]
    else:  # diffusers has no camera MLP: inline JSON config with use_camera false
        src = work / "unet_diffusers.bin"
        torch.save(tm.state_dict(), src)
        cfg_dict = UNet3DConfig.text_tiny(use_camera=False).to_dict()
        assert cfg_dict["use_camera"] is False
        model, cfg = _convert("unet-t2v", src, "diffusers", work / "t2v_diffusers", cfg_dict)
        assert not cfg.use_camera and model.camera_embedding is None
        hooks, camera = [], None
    try:
        with torch.no_grad():
            ref = tm(tu._to_torch_video(i["x"]), tu._t(i["t"]), tu._t(i["ctx"])).sample
    finally:
        for h in hooks:
            h.remove()
    out = _fwd(model, i["x"], i["t"], i["ctx"], camera)
    _close(out, _video_out(ref), MODEL_ATOL)


def test_unet_i2v_vgen(work, unet_inputs):
    """VGen-named image UNet (image_tiny preset, camera MLP) saved DataParallel-style with a
    ``module.`` prefix, against I2VGenXLUNet + camera hooks + VideoMV's concat-added-twice."""
    torch.manual_seed(1)
    tm = diffusers.I2VGenXLUNet(**tu.DIFFUSERS_TINY).eval()
    tu._randomize(tm, 1)
    cam_mlp = _camera_mlp(6)
    cfg = UNet3DConfig.image_tiny()
    assert cfg.use_camera and cfg.concat_added_twice
    sd = diffusers_to_vgen(tu._sd(tm), cfg, tu._sd(cam_mlp))
    _check_released_patterns(sd, "videomv_i2v")
    src = work / "videomv_i2v.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in _torch_state(sd).items()}}, src)
    model, got_cfg = _convert("unet-i2v", src, "vgen", work / "i2v_vgen")
    assert got_cfg == cfg

    i = unet_inputs
    lat = tu._fold_nchw(i["image"])[:, :, None]  # the pipeline's position-masked latents
    lat = torch.cat([lat] + [torch.ones_like(lat) * (k + 1) / (F - 1) for k in range(F - 1)], 2)
    with torch.no_grad():
        cam_emb = cam_mlp(tu._t(i["camera"]).reshape(B * F, 16))
        tm.conv_in.weight[:, 4:] *= 2  # == adding the concat features twice
    hooks = _with_camera_hooks(tm, cam_emb)
    try:
        with torch.no_grad():
            ref = tm(tu._to_torch_video(i["x"]), tu._t(i["t"]), fps=tu._t(i["fps"]),
                     image_latents=lat, image_embeddings=tu._t(i["image_embedding"]),
                     encoder_hidden_states=tu._t(i["ctx"])).sample
    finally:
        for h in hooks:
            h.remove()
    out = _fwd(model, i["x"], i["t"], i["ctx"], i["camera"], image_latent=i["image"],
               image_embedding=i["image_embedding"], fps=i["fps"])
    _close(out, _video_out(ref), MODEL_ATOL)


# ---- VAE -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae_torch():
    cfg = VAEConfig.tiny()
    tm = tv.torch_vae(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # norms / biases away from their 1 / 0 init
        for name, p in tm.named_parameters():
            noise = 0.1 * torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + noise)
            elif name.endswith("bias"):
                p.copy_(noise)
    return tm


@pytest.mark.parametrize("fmt", ["ldm", "diffusers"])
def test_vae(fmt, work, vae_torch):
    cfg = VAEConfig.tiny()
    sd = {k: v.detach().clone() for k, v in vae_torch.state_dict().items()}
    if fmt == "diffusers":
        src = work / "vae_diffusers.safetensors"
        save_file(sd, str(src))
    else:  # a whole latent-diffusion checkpoint: prefixed VAE + UNet keys + loss keys
        ldm = tv.diffusers_to_ldm({k: v.numpy() for k, v in sd.items()}, len(cfg.ch_mult))
        state = {f"first_stage_model.{k}": v for k, v in _torch_state(ldm).items()}
        _check_released_patterns(state, "ldm_vae")
        state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(8, 4, 3, 3)
        state["first_stage_model.loss.logvar"] = torch.zeros(())
        src = work / "ldm.ckpt"
        torch.save({"state_dict": state, "global_step": 7}, src)
    model, got_cfg = _convert("vae", src, fmt, work / f"vae_{fmt}")
    assert got_cfg == cfg
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        ref = tv.nhwc(vae_torch(tv.nchw(x), sample_posterior=False).sample)
    _close(_fwd(model, jnp.asarray(x)), ref, MODEL_ATOL)


# ---- CLIP ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_torch():
    """transformers text (with projection) and vision towers at our tiny configs."""
    tcfg = transformers.CLIPTextConfig(
        vocab_size=tc.VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
        layer_norm_eps=1e-5, projection_dim=16, bos_token_id=tc.BOS, eos_token_id=tc.EOS,
        pad_token_id=0, attn_implementation="eager")
    text = transformers.CLIPTextModelWithProjection(tcfg).eval()
    tc._randomize(text, 0)
    vcfg = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=28, patch_size=14, projection_dim=16, hidden_act="gelu",
        layer_norm_eps=1e-5, attn_implementation="eager")
    vision = transformers.CLIPVisionModelWithProjection(vcfg).eval()
    tc._randomize(vision, 1)
    return text, vision


@pytest.fixture(scope="module")
def clip_files(work, clip_torch) -> dict[str, Path]:
    """hf: ``save_pretrained`` (model.safetensors) of each tower; open_clip: one plain ``.bin``
    state dict holding both towers (open_clip_pytorch_model.bin)."""
    text, vision = clip_torch
    files = {}
    for name, model in (("text", text), ("vision", vision)):
        model.save_pretrained(work / f"hf_{name}")
        files[f"hf_{name}"] = work / f"hf_{name}" / "model.safetensors"
    oc = tc.open_clip_state(tc._np_state(text), tc._np_state(vision), 3, 2)
    _check_released_patterns(oc, "open_clip_vit_h_14")
    files["open_clip"] = work / "open_clip_pytorch_model.bin"
    torch.save(_torch_state(oc), files["open_clip"])
    return files


@pytest.fixture(scope="module")
def tokenizer_dir(work) -> Path:
    """A tiny byte-level BPE vocabulary in CLIP's format (as tests/test_clip.py's)."""
    d = work / "tokenizer_src"
    d.mkdir()
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o</w>"), ("o", "r")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    assert len(vocab) <= tc.VOCAB  # ids fit the tiny embedding
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return d


@pytest.mark.parametrize("fmt", ["open_clip", "hf"])
def test_clip_text_and_tokenizer(fmt, work, clip_torch, clip_files, tokenizer_dir):
    text, _ = clip_torch
    src = clip_files["open_clip" if fmt == "open_clip" else "hf_text"]
    out = work / f"clip_text_{fmt}"
    model, cfg = _convert("clip-text", src, fmt, out, "tiny", "--tokenizer-dir",
                          str(tokenizer_dir))
    assert cfg == CLIPTextConfig.tiny() and cfg.projection_dim == 16
    assert read_converted_config(out)["extra_files"] == ["tokenizer"]

    # the copied tokenizer loads and tokenizes like the source files
    prompts = ["hello world", "a red chair"]
    tok = load_tokenizer(out / "tokenizer")
    tok_ids = np.asarray(tokenize(tok, prompts))
    np.testing.assert_array_equal(tok_ids, np.asarray(tokenize(load_tokenizer(tokenizer_dir),
                                                               prompts)))
    assert tok_ids.shape == (2, 77) and tok_ids[0, 0] == tok.get_vocab()["<|startoftext|>"]

    ids = np.concatenate([tc._token_ids(), tok_ids])  # EOT = largest id only in the first 3
    with torch.no_grad():
        hf = text(torch.from_numpy(ids.astype(np.int64)), output_hidden_states=True)
        penult = text.text_model.final_layer_norm(hf.hidden_states[-2]).numpy()
    jids = jnp.asarray(ids, jnp.int32)
    _close(_fwd(model, jids), penult, CLIP_ATOL)  # VideoMV's penultimate + ln_final
    pooled = nnx.jit(lambda m, x: m.pooled(x))(model, jids[:3])
    _close(pooled, hf.text_embeds[:3].numpy(), CLIP_ATOL)


@pytest.mark.parametrize("fmt", ["open_clip", "hf"])
def test_clip_vision(fmt, work, clip_torch, clip_files):
    _, vision = clip_torch
    src = clip_files["open_clip" if fmt == "open_clip" else "hf_vision"]
    model, _ = _convert("clip-vision", src, fmt, work / f"clip_vision_{fmt}")
    images = np.random.default_rng(0).normal(size=(2, 28, 28, 3)).astype(np.float32)
    with torch.no_grad():
        ref = vision(torch.from_numpy(images).permute(0, 3, 1, 2)).image_embeds.numpy()
    _close(_fwd(model, jnp.asarray(images)), ref, CLIP_ATOL)


# ---- LGM -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["lgm", "vgen"])
def test_lgm(fmt, work, lgm_torch, videomv_pth):
    """lgm: LGM's model.safetensors; vgen: the lgm_big.* keys of the VideoMV-like .pth (the
    same file the text UNet is converted from)."""
    if fmt == "lgm":
        src = work / "model.safetensors"
        save_file({k: v.detach().clone().contiguous() for k, v in lgm_torch.state_dict().items()},
                  str(src))
    else:
        src = videomv_pth
    model, cfg = _convert("lgm", src, fmt, work / f"lgm_{fmt}")
    assert cfg == LGMConfig.tiny()
    x = np.random.default_rng(0).standard_normal(
        (2, 4, cfg.input_size, cfg.input_size, 9)).astype(np.float32)
    with torch.no_grad():
        ref = lgm_torch(torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 2)))).numpy()
    _close(_fwd(model, jnp.asarray(x)), ref, MODEL_ATOL)
    assert math.prod(ref.shape) == 2 * cfg.num_gaussians * 14


# ---- config inference, half-precision storage, one command per release ---------------------


def test_sizes_read_off_the_checkpoint_half_storage_and_short_error(work, capsys):
    """A VAE of a size no preset has converts without --config (its sizes read off the shapes,
    printed), stored in float16 (values = the float16 rounding of the source); --config JSON
    overrides only its fields; a checkpoint no config of the kind fits gets one short error
    line."""
    import dataclasses

    cfg = dataclasses.replace(VAEConfig.full(), ch=16, ch_mult=(1, 2, 2), num_res_blocks=1,
                              norm_groups=8)
    tm = tv.torch_vae(cfg).eval()
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    ldm = tv.diffusers_to_ldm(sd, len(cfg.ch_mult))
    src = work / "odd_vae.ckpt"
    torch.save({"state_dict": {f"first_stage_model.{k}": v
                               for k, v in _torch_state(ldm).items()}}, src)
    out = work / "odd_vae"
    capsys.readouterr()
    rc = cli.main(["vae", str(src), str(out), "--format", "ldm", "--storage-dtype", "float16",
                   "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "read from the checkpoint's shapes" in err and '"ch": 16' in err
    meta = read_converted_config(out)
    assert meta["storage_dtype"] == "float16"
    assert meta["source"]["config_from"] == "read from the checkpoint's shapes"
    model, got = load_converted(out, kind="vae")
    assert got == cfg
    want = ldm["decoder.conv_out.weight"].transpose(2, 3, 1, 0).astype(np.float16)
    np.testing.assert_array_equal(np.asarray(model.decoder.conv_out.kernel[...]),
                                  want.astype(np.float32))

    # --config JSON overrides only the fields it names; the sizes stay as read off the shapes
    capsys.readouterr()
    rc = cli.main(["vae", str(src), str(work / "odd_vae_eps"), "--format", "ldm", "--config",
                   '{"norm_eps": 1e-5, "frame_chunk": 2}', "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err
    got = read_converted_config(work / "odd_vae_eps")
    assert got["config"] == dict(cfg.to_dict(), norm_eps=1e-5, frame_chunk=2)
    assert "with frame_chunk, norm_eps from --config" in got["source"]["config_from"]

    rc = cli.main(["unet-t2v", str(src), str(work / "not_a_unet"), "--format", "vgen",
                   "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "cannot place this checkpoint as 'unet-t2v'" in err
    assert "--config" in err and not (work / "not_a_unet").exists()


def test_release_command_writes_a_sampleable_directory(work, videomv_pth, vae_torch, clip_files,
                                                       tokenizer_dir):
    """``release t2mv`` turns the VideoMV .pth (UNet + lgm_big), an LDM checkpoint and the
    open_clip file into the directory the pipeline loads, with every size read off the files."""
    import configs.t2mv
    from videomv_jax.pipeline import MultiViewPipeline

    sd = {k: v.detach().numpy() for k, v in vae_torch.state_dict().items()}
    ldm = tv.diffusers_to_ldm(sd, len(VAEConfig.tiny().ch_mult))
    vae = work / "release_ldm.ckpt"
    torch.save({"state_dict": {f"first_stage_model.{k}": v
                               for k, v in _torch_state(ldm).items()}}, vae)
    out = work / "release_t2mv"
    rc = cli.main(["release", "t2mv", "--unet", str(videomv_pth), "--vae", str(vae), "--clip",
                   str(clip_files["open_clip"]), "--tokenizer-dir", str(tokenizer_dir), "--out",
                   str(out), "--no-progress"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip_text", "lgm", "unet", "vae"]
    assert (out / "clip_text" / "tokenizer" / "vocab.json").is_file()
    cfg = configs.t2mv.get_config()
    cfg.checkpoint_dir = str(out)
    pipe = MultiViewPipeline.from_checkpoints(out, cfg)
    assert pipe.models["unet"].config == UNet3DConfig.text_tiny()
    assert pipe.models["lgm"].config == LGMConfig.tiny()
    assert pipe.models["vae"].config == VAEConfig.tiny()
    assert pipe.models["clip_text"].config == CLIPTextConfig.tiny()
    # a second run refuses to overwrite; a missing input is named
    assert cli.main(["release", "t2mv", "--unet", str(videomv_pth), "--vae", str(vae), "--clip",
                     str(clip_files["open_clip"]), "--out", str(out)]) == 2
    assert cli.main(["release", "t2mv", "--unet", str(work / "nope.pth"), "--vae", str(vae),
                     "--clip", str(clip_files["open_clip"]), "--out", str(work / "r2")]) == 2
