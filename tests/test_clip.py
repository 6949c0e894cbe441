"""OpenCLIP ViT-H-14 towers: parity with transformers' torch CLIP, both checkpoint namings,
full-size layouts, tokenizer and image preprocessing."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
import transformers
from flax import nnx
from PIL import Image

from videomv_jax.convert.base import (
    ConversionError,
    abstract_params,
    apply_params,
    convert_state_dict,
)
from videomv_jax.convert.clip import (
    FUSED_QKV,
    convert_hf_state_dict,
    fuse_hf_qkv,
    hf_text_prefix,
    load_clip_weights,
    rules_hf_text,
    rules_hf_vision,
    rules_open_clip_text,
    rules_open_clip_vision,
)
from videomv_jax.models.clip import (
    CLIP_MEAN,
    CLIP_STD,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    PromptTruncatedWarning,
    load_tokenizer,
    openclip_tokenizer,
    preprocess,
    resize_weights,
    tokenize,
)

torch.set_num_threads(1)
SPEC = Path(__file__).parent / "data" / "checkpoints"

# float32 everywhere; these are 2-3 block towers with O(1) activations, so the only
# differences are summation order in matmuls/softmax/LayerNorm: a few ulps per op, ~1e-6.
ATOL = 2e-5
VOCAB, BOS, EOS = 64, 62, 63


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (LayerNorm scales around 1, so nothing is trivially 0/1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)


def _np_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def hf_text():
    cfg = transformers.CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
        layer_norm_eps=1e-5, projection_dim=16, bos_token_id=BOS, eos_token_id=EOS,
        pad_token_id=0, attn_implementation="eager")
    model = transformers.CLIPTextModelWithProjection(cfg).eval()
    _randomize(model, 0)
    return model


@pytest.fixture(scope="module")
def hf_vision():
    cfg = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=28, patch_size=14, projection_dim=16, hidden_act="gelu",
        layer_norm_eps=1e-5, attn_implementation="eager")
    model = transformers.CLIPVisionModelWithProjection(cfg).eval()
    _randomize(model, 1)
    return model


def _token_ids(lengths=(5, 20, 75), seed=0) -> np.ndarray:
    """open_clip layout: [SOT, ids…, EOT, 0 …]; EOT is the largest id, as in CLIP's vocab."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), 77), np.int64)
    for row, n in enumerate(lengths):
        ids[row, 0] = BOS
        ids[row, 1:n + 1] = rng.integers(1, BOS, n)
        ids[row, n + 1] = EOS
    return ids


def _text_model(state, projection=True, source="hf") -> CLIPTextModel:
    cfg = CLIPTextConfig.tiny(vocab_size=VOCAB, projection_dim=16 if projection else None)
    return load_clip_weights(CLIPTextModel(cfg, rngs=nnx.Rngs(0)), state, source)


def _vision_model(state, source="hf") -> CLIPVisionModel:
    return load_clip_weights(CLIPVisionModel(CLIPVisionConfig.tiny(), rngs=nnx.Rngs(0)), state,
                             source)


# ---- text tower ---------------------------------------------------------------------------------


def test_text_parity_with_transformers(hf_text):
    ids = _token_ids()
    with torch.no_grad():
        out = hf_text(torch.from_numpy(ids), output_hidden_states=True)
        hidden = [h.numpy() for h in out.hidden_states]
        penult = hf_text.text_model.final_layer_norm(out.hidden_states[-2]).numpy()
    model = _text_model(_np_state(hf_text))
    jids = jnp.asarray(ids, jnp.int32)

    # module by module: embeddings, then the residual stream after each block
    x = model.token_embedding(jids) + model.positional_embedding[...]
    np.testing.assert_allclose(np.asarray(x), hidden[0], rtol=0, atol=1e-6)
    causal = jnp.tril(jnp.ones((77, 77), bool))[None, None]
    for n in range(1, 4):
        y = model.transformer(x, causal, num_layers=n)
        np.testing.assert_allclose(np.asarray(y), hidden[n], rtol=0, atol=ATOL)

    # whole tower: VideoMV's penultimate + ln_final (the default), the last layer, the pooled
    np.testing.assert_allclose(np.asarray(model(jids)), penult, rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.asarray(model(jids, output_layer="last")),
                               out.last_hidden_state.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.asarray(model.pooled(jids)), out.text_embeds.numpy(),
                               rtol=0, atol=ATOL)
    assert np.abs(penult - out.last_hidden_state.numpy()).max() > 0.1  # the two differ

    # config output_layer="last" == call-time override; a shorter sequence is a prefix
    last_cfg = CLIPTextModel(dataclasses.replace(model.config, output_layer="last"),
                             rngs=nnx.Rngs(0))
    apply_params(last_cfg, {p: np.asarray(v) for p, v in abstract_params(model).items()})
    np.testing.assert_array_equal(np.asarray(last_cfg(jids)),
                                  np.asarray(model(jids, output_layer="last")))
    np.testing.assert_allclose(np.asarray(model(jids[:, :30])), penult[:, :30], atol=ATOL)


def test_text_hf_plain_clip_text_model_naming(hf_text):
    """transformers-5 ``CLIPTextModel`` keys have no ``text_model.`` prefix (as in
    ``tests/data/checkpoints/hf_clip_text_vit_h_14.json``)."""
    state = _np_state(hf_text)
    plain = {k[len("text_model."):]: v for k, v in state.items() if k.startswith("text_model.")}
    torch_plain = transformers.CLIPTextModel(hf_text.config).eval()
    torch_plain.load_state_dict({k: torch.from_numpy(v) for k, v in plain.items()}, strict=True)
    assert hf_text_prefix(plain) == "" and hf_text_prefix(state) == "text_model."
    ids = _token_ids()
    model = _text_model(plain, projection=False)
    assert model.text_projection is None
    with torch.no_grad():
        ref = torch_plain(torch.from_numpy(ids)).last_hidden_state.numpy()
    got = model(jnp.asarray(ids, jnp.int32), output_layer="last")
    np.testing.assert_allclose(np.asarray(got), ref, rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="no text_projection"):
        model.pooled(jnp.asarray(ids, jnp.int32))


def test_vision_parity_with_transformers(hf_vision):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 28, 28, 3)).astype(np.float32)
    with torch.no_grad():
        ref = hf_vision(torch.from_numpy(images).permute(0, 3, 1, 2)).image_embeds.numpy()
    model = _vision_model(_np_state(hf_vision))
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(images))), ref, rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="images must be"):
        model(jnp.zeros((2, 3, 28, 28)))


# ---- open_clip naming ---------------------------------------------------------------------------


def _open_clip_block(src: dict, hf: str, oc: str) -> dict:
    out = {}
    for p in ("weight", "bias"):
        out[f"{oc}.ln_1.{p}"] = src[f"{hf}.layer_norm1.{p}"]
        out[f"{oc}.attn.in_proj_{p}"] = np.concatenate(
            [src[f"{hf}.self_attn.{w}_proj.{p}"] for w in "qkv"], axis=0)
        out[f"{oc}.attn.out_proj.{p}"] = src[f"{hf}.self_attn.out_proj.{p}"]
        out[f"{oc}.ln_2.{p}"] = src[f"{hf}.layer_norm2.{p}"]
        out[f"{oc}.mlp.c_fc.{p}"] = src[f"{hf}.mlp.fc1.{p}"]
        out[f"{oc}.mlp.c_proj.{p}"] = src[f"{hf}.mlp.fc2.{p}"]
    return out


def open_clip_state(text: dict, vision: dict, text_layers: int, vision_layers: int) -> dict:
    """An open_clip ``CLIP`` state dict (open_clip's names and layouts, in its order) from the
    transformers towers; written for this test (open_clip cannot be installed here)."""
    t, v = "text_model.", "vision_model."
    out = {"positional_embedding": text[f"{t}embeddings.position_embedding.weight"],
           "text_projection": text["text_projection.weight"].T.copy(),
           "logit_scale": np.asarray(np.log(1 / 0.07), np.float32),
           "visual.class_embedding": vision[f"{v}embeddings.class_embedding"],
           "visual.positional_embedding": vision[f"{v}embeddings.position_embedding.weight"],
           "visual.proj": vision["visual_projection.weight"].T.copy(),
           "visual.conv1.weight": vision[f"{v}embeddings.patch_embedding.weight"],
           "visual.ln_pre.weight": vision[f"{v}pre_layrnorm.weight"],
           "visual.ln_pre.bias": vision[f"{v}pre_layrnorm.bias"]}
    for i in range(vision_layers):
        out.update(_open_clip_block(vision, f"{v}encoder.layers.{i}",
                                    f"visual.transformer.resblocks.{i}"))
    out["visual.ln_post.weight"] = vision[f"{v}post_layernorm.weight"]
    out["visual.ln_post.bias"] = vision[f"{v}post_layernorm.bias"]
    out["token_embedding.weight"] = text[f"{t}embeddings.token_embedding.weight"]
    for i in range(text_layers):
        out.update(_open_clip_block(text, f"{t}encoder.layers.{i}", f"transformer.resblocks.{i}"))
    out["ln_final.weight"] = text[f"{t}final_layer_norm.weight"]
    out["ln_final.bias"] = text[f"{t}final_layer_norm.bias"]
    return out


def _pattern(key: str) -> str:
    return re.sub(r"\.\d+\.", ".N.", key)


def test_open_clip_naming_gives_identical_models(hf_text, hf_vision):
    text, vision = _np_state(hf_text), _np_state(hf_vision)
    oc = open_clip_state(text, vision, 3, 2)
    spec = json.loads((SPEC / "open_clip_vit_h_14.json").read_text())
    # the renaming above produces exactly open_clip's key patterns and ranks
    assert {_pattern(k) for k in oc} == {_pattern(k) for k in spec}
    assert all(len(oc[k].shape) == len(spec[k]) for k in oc if k in spec)

    ids = jnp.asarray(_token_ids(), jnp.int32)
    images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 28, 28, 3)), jnp.float32)
    text_hf, text_oc = _text_model(text), _text_model(oc, source="open_clip")
    vis_hf, vis_oc = _vision_model(vision), _vision_model(oc, source="open_clip")
    for path, value in abstract_params(text_hf).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(abstract_params(text_oc)[path]))
    np.testing.assert_array_equal(np.asarray(text_hf(ids)), np.asarray(text_oc(ids)))
    np.testing.assert_array_equal(np.asarray(text_hf.pooled(ids)), np.asarray(text_oc.pooled(ids)))
    np.testing.assert_array_equal(np.asarray(vis_hf(images)), np.asarray(vis_oc(images)))

    # without a text_projection in the model, open_clip's is ignored (not an error)
    bare = _text_model(oc, projection=False, source="open_clip")
    np.testing.assert_array_equal(np.asarray(bare(ids)), np.asarray(text_hf(ids)))


# ---- corrupted checkpoints ----------------------------------------------------------------------


def _expect_errors(convert, state, missing, unexpected, mismatched):
    with pytest.raises(ConversionError) as info:
        convert(state)
    msg = str(info.value)
    for key in (missing, unexpected, mismatched):
        assert key in msg, f"{key!r} not named in:\n{msg}"
    err = info.value
    assert any(missing in m for m in err.missing)
    assert unexpected in err.unexpected
    assert any(mismatched in m[0] for m in err.mismatched)
    return msg


def test_corrupted_checkpoints_are_reported(hf_text, hf_vision):
    text, vision = _np_state(hf_text), _np_state(hf_vision)
    tcfg = CLIPTextConfig.tiny(vocab_size=VOCAB)
    ttarget = abstract_params(nnx.eval_shape(lambda: CLIPTextModel(tcfg, rngs=nnx.Rngs(0))))

    # transformers naming: a removed k_proj is named as such (not as the fused synthetic key)
    bad = dict(text)
    del bad["text_model.encoder.layers.1.self_attn.k_proj.weight"]
    bad["text_model.encoder.layers.0.extra.weight"] = np.zeros(3, np.float32)
    bad["text_model.final_layer_norm.weight"] = np.zeros(33, np.float32)
    rules, ignore = rules_hf_text(tcfg, prefix="text_model.")
    msg = _expect_errors(lambda s: convert_hf_state_dict(s, rules, ttarget, ignore, "text"), bad,
                         "checkpoint lacks text_model.encoder.layers.1.self_attn.k_proj.weight",
                         "text_model.encoder.layers.0.extra.weight",
                         "text_model.final_layer_norm.weight")
    assert "layers.1.self_attn.q_proj" not in msg  # present parts are not "unexpected"

    # a q/k/v shape disagreement is named too
    bad = dict(text)
    bad["text_model.encoder.layers.2.self_attn.v_proj.weight"] = np.zeros((32, 31), np.float32)
    with pytest.raises(ConversionError, match=r"q/k/v shapes differ.*v_proj.weight \(32, 31\)"):
        convert_hf_state_dict(bad, rules, ttarget, ignore, "text")

    # open_clip naming, both towers
    oc = open_clip_state(text, vision, 3, 2)
    bad = dict(oc)
    del bad["transformer.resblocks.0.attn.in_proj_bias"]
    bad["transformer.resblocks.0.attn.bogus"] = np.zeros(1, np.float32)
    bad["text_projection"] = np.zeros((32, 17), np.float32)
    rules, ignore = rules_open_clip_text(tcfg)
    _expect_errors(lambda s: convert_state_dict(s, rules, ttarget, ignore, "text"), bad,
                   "transformer.resblocks.0.attn.in_proj_bias",
                   "transformer.resblocks.0.attn.bogus", "text_projection")

    vcfg = CLIPVisionConfig.tiny()
    vtarget = abstract_params(nnx.eval_shape(lambda: CLIPVisionModel(vcfg, rngs=nnx.Rngs(0))))
    bad = dict(oc)
    del bad["visual.ln_post.bias"]
    bad["visual.extra"] = np.zeros(1, np.float32)
    bad["visual.proj"] = np.zeros((16, 32), np.float32)  # transposed by mistake
    rules, ignore = rules_open_clip_vision(vcfg)
    _expect_errors(lambda s: convert_state_dict(s, rules, vtarget, ignore, "vision"), bad,
                   "visual.ln_post.bias", "visual.extra", "visual.proj")

    # a vision config that does not match the checkpoint (3 layers, checkpoint has 2)
    big = CLIPVisionModel(CLIPVisionConfig.tiny(layers=3), rngs=nnx.Rngs(0))
    with pytest.raises(ConversionError, match="vision_model.encoder.layers.2.layer_norm1.weight"):
        load_clip_weights(big, vision, "hf")


# ---- full size ----------------------------------------------------------------------------------


def _count(model) -> int:
    return sum(int(np.prod(v.shape)) for v in abstract_params(model).values())


def _placeholders(name: str) -> dict[str, np.ndarray]:
    spec = json.loads((SPEC / name).read_text())
    return {k: np.broadcast_to(np.zeros((), np.float32), tuple(s)) for k, s in spec.items()}


def test_full_size_counts_and_checkpoint_layouts():
    text_cfg, vis_cfg = CLIPTextConfig.full(), CLIPVisionConfig.full()
    text = nnx.eval_shape(lambda: CLIPTextModel(text_cfg, rngs=nnx.Rngs(0)))
    bare_cfg = CLIPTextConfig.full(projection_dim=None)
    bare = nnx.eval_shape(lambda: CLIPTextModel(bare_cfg, rngs=nnx.Rngs(0)))
    vis = nnx.eval_shape(lambda: CLIPVisionModel(vis_cfg, rngs=nnx.Rngs(0)))
    # spec: open_clip text side 354,032,641 counts text_projection and logit_scale; we hold
    # text_projection (1024·1024) but not logit_scale (1 scalar, a contrastive-loss parameter)
    assert _count(text) == 354_032_641 - 1
    assert _count(bare) == 352_984_064 == 354_032_640 - 1024 * 1024  # transformers CLIPTextModel
    assert _count(vis) == 632_076_800
    assert _count(text) + _count(vis) + 1 == 986_109_441  # whole open_clip checkpoint

    def dry_run(source, rules_ignore, model, convert=convert_state_dict):
        target = abstract_params(model)
        out = convert(source, *rules_ignore[:1], target, rules_ignore[1], "full")
        assert set(out) == set(target)
        assert not any(any(v.strides) for v in out.values())  # nothing was allocated
        return out

    oc = _placeholders("open_clip_vit_h_14.json")
    dry_run(oc, rules_open_clip_text(text_cfg), text)
    dry_run(oc, rules_open_clip_vision(vis_cfg), vis)
    hf_t = _placeholders("hf_clip_text_vit_h_14.json")
    assert hf_text_prefix(hf_t) == ""
    dry_run(hf_t, rules_hf_text(bare_cfg), bare, convert_hf_state_dict)
    dry_run(_placeholders("hf_clip_vision_vit_h_14.json"), rules_hf_vision(vis_cfg), vis,
            convert_hf_state_dict)


def test_fuse_hf_qkv_layout():
    q, k, v = (np.full((2, 3), i, np.float32) for i in range(3))
    fused, problems = fuse_hf_qkv({"a.self_attn.q_proj.weight": q, "a.self_attn.k_proj.weight": k,
                                   "a.self_attn.v_proj.weight": v, "b": q})
    assert not problems and set(fused) == {"b", f"a.self_attn.{FUSED_QKV}.weight"}
    np.testing.assert_array_equal(fused[f"a.self_attn.{FUSED_QKV}.weight"][:, 0],
                                  [0, 0, 1, 1, 2, 2])


# ---- configs, remat, dtype ----------------------------------------------------------------------


def test_configs_validate_and_round_trip():
    for cfg in (CLIPTextConfig.full(), CLIPTextConfig.tiny(), CLIPVisionConfig.full(),
                CLIPVisionConfig.tiny()):
        assert type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="output_layer"):
        CLIPTextConfig.tiny(output_layer="second")
    with pytest.raises(ValueError, match="not divisible"):
        CLIPTextConfig.tiny(heads=5)
    with pytest.raises(ValueError, match="penultimate"):
        CLIPTextConfig.tiny(layers=1)
    with pytest.raises(ValueError, match="projection_dim"):
        CLIPTextConfig.tiny(projection_dim=0)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        CLIPVisionConfig.tiny(image_size=30)
    with pytest.raises(ValueError, match="dtype"):
        CLIPVisionConfig.tiny(dtype="float16")
    with pytest.raises(ValueError, match="attention"):
        CLIPVisionConfig.tiny(attention="flash")
    with pytest.raises(ValueError, match="layer_norm_eps"):
        CLIPVisionConfig.tiny(layer_norm_eps=0.0)
    with pytest.raises(ValueError, match="unknown CLIPTextConfig fields"):
        CLIPTextConfig.from_dict({"widht": 3})


def test_remat_and_bfloat16_match_float32():
    ids = jnp.asarray(_token_ids(), jnp.int32)
    ref = CLIPTextModel(CLIPTextConfig.tiny(), rngs=nnx.Rngs(3))
    remat = CLIPTextModel(CLIPTextConfig.tiny(remat=True), rngs=nnx.Rngs(3))
    np.testing.assert_allclose(np.asarray(remat(ids)), np.asarray(ref(ids)), atol=1e-6)

    def loss(m):
        return jnp.sum(m(ids) ** 2)

    grad = nnx.jit(nnx.grad(loss))
    g_ref, g_remat = grad(ref), grad(remat)
    np.testing.assert_allclose(np.asarray(g_remat["ln_final"]["scale"][...]),
                               np.asarray(g_ref["ln_final"]["scale"][...]), rtol=1e-5)

    images = jnp.asarray(np.random.default_rng(2).normal(size=(2, 28, 28, 3)), jnp.float32)
    vf = CLIPVisionModel(CLIPVisionConfig.tiny(), rngs=nnx.Rngs(4))
    vb = CLIPVisionModel(CLIPVisionConfig.tiny(dtype="bfloat16"), rngs=nnx.Rngs(4))
    out_b = vb(images)
    assert out_b.dtype == jnp.bfloat16
    # bf16 keeps ~3 significant digits: a loose check that the compute dtype path is sane
    np.testing.assert_allclose(np.asarray(out_b, np.float32), np.asarray(vf(images)), atol=0.1)


# ---- tokenizer ----------------------------------------------------------------------------------


@pytest.fixture()
def tok_dir(tmp_path):
    """A tiny byte-level BPE vocabulary in CLIP's format (…</w> word ends, specials last)."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o</w>"), ("o", "r")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return tmp_path, vocab


def test_tokenize_like_open_clip(tok_dir):
    directory, vocab = tok_dir
    tok = load_tokenizer(directory)
    sot, eot = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = tokenize(tok, ["Hello   World", "", "hello &amp; hello"])
    assert ids.dtype == np.int32 and ids.shape == (3, 77)
    hello, w, o_r, ld = vocab["hello</w>"], vocab["w"], vocab["or"], vocab["l"]
    np.testing.assert_array_equal(ids[0, :6], [sot, hello, w, o_r, ld, vocab["d</w>"]])
    assert ids[0, 6] == eot and not ids[0, 7:].any()
    np.testing.assert_array_equal(ids[1, :3], [sot, eot, 0])  # "" → SOT, EOT, padding
    assert ids[2, 1] == hello and ids[2, -1] == 0
    # exactly 75 BPE tokens fit: no warning, EOT at position 76
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = tokenize(tok, " ".join(["hello"] * 75))
    assert full[0, 0] == sot and full[0, 76] == eot and (full[0, 1:76] == hello).all()


def test_tokenize_truncation_is_announced(tok_dir):
    directory, vocab = tok_dir
    tok = load_tokenizer(directory)
    long_prompt = " ".join(["hello"] * 80) + " world"  # 80 + w|or|l|d = 84 BPE tokens
    with pytest.warns(PromptTruncatedWarning,
                      match=r"prompt 1 has 84 BPE tokens.*dropping \"hello hello hello hello "
                            r"hello world\": \"hello hello"):
        ids, cut = tokenize(tok, ["short hello", long_prompt], return_truncated=True)
    assert cut == [False, True]
    # open_clip: the first 77 ids, the last forced to EOT
    assert ids[1, 0] == vocab["<|startoftext|>"] and ids[1, 76] == vocab["<|endoftext|>"]
    assert (ids[1, 1:76] == vocab["hello</w>"]).all()
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        load_tokenizer(directory / "nowhere")


OPEN_CLIP_CORPUS = Path(__file__).parent / "data" / "open_clip_tokens.json"


def test_openclip_tokenizer_matches_open_clip_corpus():
    """The shipped tokenizer against ids open_clip 3.3.0 itself produced for 250 prompts
    (tools/make_tokenizer_corpus.py): curly quotes, full-width forms, ligatures, mojibake, HTML
    entities, CJK, emoji, special-token look-alikes, prompts cut at 77 ids. Exact equality."""
    data = json.loads(OPEN_CLIP_CORPUS.read_text())
    cases = data["cases"]
    assert len(cases) >= 200 and sum(len(c["ids"]) == 77 for c in cases) >= 5
    tok = openclip_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        ids = tokenize(tok, [c["prompt"] for c in cases], vocab_size=49408)
    bad = []
    for row, case in zip(ids, cases, strict=True):
        want = np.zeros(77, np.int32)
        want[:len(case["ids"])] = case["ids"]
        if not np.array_equal(row, want):
            bad.append(case["prompt"])
    assert not bad, f"{len(bad)} prompts differ from open_clip, e.g. {bad[:5]}"
    assert (tok.sot_id, tok.eot_id, tok.vocab_size) == (49406, 49407, 49408)
    assert tok.decode(tok.encode("A \u2018Curly\u2019 caf\u00c3\u00a9")) == "a ' curly ' caf\u00e9"


def test_tokenizer_directory_round_trip_and_special_names(tmp_path):
    tok = openclip_tokenizer()
    tok.save(tmp_path / "oc")
    again = load_tokenizer(tmp_path / "oc")
    prompts = ["a \u201ccurly\u201d \ufb01sh", "\u732b \U0001f431 <end_of_text> x"]
    np.testing.assert_array_equal(tokenize(again, prompts), tokenize(tok, prompts))
    assert load_tokenizer("openclip") is tok
    # open_clip's special-token names are found at their own ids (not appended as new ids)
    assert (again.sot_token, again.sot_id, again.eot_id) == ("<start_of_text>", 49406, 49407)


def test_special_tokens_beyond_the_embedding_are_an_error(tok_dir, tmp_path):
    """A vocabulary whose start/end ids do not fit the text encoder's embedding is refused
    (before: such ids read past the table and the text model returned NaN)."""
    directory, vocab = tok_dir
    tok = load_tokenizer(directory)
    with pytest.raises(ValueError, match=r"emits ids up to 58 .*only 50 token embeddings"):
        tokenize(tok, ["hello"], vocab_size=50)
    cfg = CLIPTextConfig.tiny(layers=2, context_length=8, width=8, heads=2, mlp_dim=8)
    model = CLIPTextModel(cfg, rngs=nnx.Rngs(0))
    ids = np.zeros((1, 8), np.int32)
    ids[0, 1] = cfg.vocab_size  # one past the last row
    with pytest.raises(ValueError, match=rf"must lie in \[0, {cfg.vocab_size}\)"):
        model(ids)
    ids[0, 1] = cfg.vocab_size - 1
    assert np.isfinite(np.asarray(model(ids))).all()
    # a vocabulary without start/end tokens is refused when loaded
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "a</w>": 1}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match="no start/end special tokens"):
        load_tokenizer(tmp_path)
    assert isinstance(tok, CLIPTokenizer)


# ---- image preprocessing ------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(256, 224), (5, 7), (31, 8)])
def test_resize_weights_match_torch(sizes):
    n_in, n_out = sizes
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, n_in, n_in)))
    for antialias in (False, True):
        ref = F.interpolate(x, size=(n_out, n_out), mode="bilinear", align_corners=False,
                            antialias=antialias)[0, 0].numpy()
        w = resize_weights(n_in, n_out, "bilinear", antialias)
        np.testing.assert_allclose(w @ x[0, 0].numpy() @ w.T, ref, atol=1e-9)


def _videomv_reference(rgba: np.ndarray) -> np.ndarray:
    """VideoMV's I2V CLIP input with Pillow, written for this test from the VGen transforms:
    paste on white, CenterCropWide((256, 256)), Resize(224) bilinear, /255, clamp, mean/std."""
    img = Image.fromarray(rgba, "RGBA")
    image = Image.new("RGB", img.size, (255, 255, 255))
    image.paste(img, (0, 0), mask=img)
    scale = min(image.width / 256, image.height / 256)
    image = image.resize((round(image.width // scale), round(image.height // scale)),
                         resample=Image.BOX)
    x1, y1 = (image.width - 256) // 2, (image.height - 256) // 2
    image = image.crop((x1, y1, x1 + 256, y1 + 256)).resize((224, 224), Image.BILINEAR)
    arr = np.clip(np.asarray(image, np.float64) / 255.0, 0, 1)
    return (arr - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)


def test_preprocess_matches_videomv_pillow_pipeline():
    rng = np.random.default_rng(0)
    # smooth content plus sharp edges, partly transparent, non-square
    yy, xx = np.mgrid[0:300, 0:410]
    rgb = np.stack([(xx * 0.6) % 256, (yy * 0.8) % 256, ((xx + yy) // 16 % 2) * 255], -1)
    alpha = np.where((xx - 200) ** 2 + (yy - 150) ** 2 < 120 ** 2, 255, 0)
    alpha[:40] = rng.integers(0, 256, size=(40, 410))
    rgba = np.concatenate([rgb, alpha[..., None]], -1).astype(np.uint8)
    noise = rng.integers(0, 256, size=(513, 300, 4)).astype(np.uint8)  # tall, random alpha
    for image in (rgba, noise):
        got = preprocess(image)
        assert got.shape == (1, 224, 224, 3) and got.dtype == np.float32
        # the uint8 path reproduces Pillow's fixed-point resampler bit for bit: what is left
        # is float32 rounding of the normalisation (in 8-bit steps: < 1e-4)
        err = np.abs(got[0] - _videomv_reference(image)) * np.asarray(CLIP_STD) * 255
        assert err.max() < 1e-4, err.max()
    got = preprocess(rgba)

    # without antialias the result is torch's plain bilinear interpolation instead
    square = rng.random((256, 256, 3))
    plain = preprocess(square, antialias=False)[0]
    t = torch.from_numpy(square).permute(2, 0, 1)[None]
    ref = F.interpolate(t, size=(224, 224), mode="bilinear", align_corners=False)
    ref = ((ref[0].permute(1, 2, 0).numpy() - CLIP_MEAN) / CLIP_STD)
    np.testing.assert_allclose(plain, ref, atol=1e-5)
    assert np.abs(preprocess(square)[0] - plain).max() > 1e-3  # the choice matters

    batch = preprocess([rgba, rgba[:, :300]])
    assert batch.shape == (2, 224, 224, 3)
    np.testing.assert_array_equal(batch[0], got[0])
    np.testing.assert_array_equal(CLIPVisionModel.preprocess(rgba), got)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        preprocess(square * 2)
    with pytest.raises(ValueError, match="channels last"):
        preprocess(np.zeros((3, 64, 64), np.uint8))
