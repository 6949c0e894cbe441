"""Batched sampling over several devices (MultiViewPipeline with ``config.parallel``).

The device checks run in one subprocess with 4 host CPU devices (the device count must be set
before jax is imported; see tests/test_parallel.py). Tiny random models (the set of
tests/test_sampler.py: text UNet, VAE ×2, LGM 16², CLIP text width 32), 16² views, 4 DDIM steps
with one 3D-aware step (the step whose VAE posterior sample must be drawn per sample), 3
prompts:

* reference: one prompt at a time on one device (``parallel.devices=1``: batch 1, no mesh);
* data parallel: ``devices=2`` → batches of 2 split over a data=2 mesh, so the 3 prompts are
  one full batch and one padded batch (the padding never returned), one executable for both;
* model parallel: the parameters split over fsdp=2 × tensor=2 (4 devices, data=1), plain
  DDIM (3D-aware steps off, the cheapest program that runs every UNet layer sharded),
  against the same plain sampling on one device.

Everything else is fast and in-process: bad layouts are one clear error before any model
loads, and the per-sample random draws equal the one-sample draws bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videomv_jax.diffusion import sampler as sampler_mod
from videomv_jax.pipeline import PipelineError, devices_for_inputs, parallel_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = textwrap.dedent("""
    import json, sys, time
    t_start = time.perf_counter()
    import jax, numpy as np
    from flax import nnx
    sys.path.insert(0, sys.argv[2])
    from videomv_jax import compile_cache
    compile_cache.enable_compilation_cache()
    from test_sampler import _random_model
    from configs import t2mv
    from videomv_jax.models.clip import CLIPTextModel, CLIPTextConfig, load_tokenizer
    from videomv_jax.models.lgm import LGM, LGMConfig
    from videomv_jax.models.unet3d import UNet3D, UNet3DConfig
    from videomv_jax.models.vae import AutoencoderKL, VAEConfig
    from videomv_jax.pipeline import MultiViewPipeline

    tok_dir = sys.argv[1]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with open(tok_dir + "/vocab.json", "w") as f:
        json.dump(vocab, f)
    with open(tok_dir + "/merges.txt", "w") as f:
        f.write("#version: 0.2\\n")
    models = {"unet": _random_model(UNet3D, UNet3DConfig.text_tiny(), 0),
              "vae": _random_model(AutoencoderKL, VAEConfig.tiny(), 1),
              "clip_text": _random_model(CLIPTextModel, CLIPTextConfig.tiny(), 2),
              "lgm": _random_model(LGM, LGMConfig.tiny(), 3)}
    tokenizer = load_tokenizer(tok_dir)

    def config(aware, **parallel):
        c = t2mv.get_config()
        c.resolution = 16
        c.negative_prompt = "bad"
        c.sampler.update(num_steps=4, aware_steps=(1,) if aware else (), render_size=32,
                         capacity_per_scene=32768, progress=False)
        c.parallel.update(parallel)
        return c

    prompts = ["a red chair", "hello world", "blue cube"]
    out, times = {"devices": jax.device_count()}, {"models": time.perf_counter() - t_start}

    def run(name, aware, **parallel):
        t0 = time.perf_counter()
        pipe = MultiViewPipeline(models, tokenizer, config(aware, **parallel))
        res = pipe.text_to_mv(prompts, seed=5)
        times[name] = time.perf_counter() - t0
        (sampler,) = pipe._samplers.values()
        out[name] = {"batch_size": pipe.batch_size, "devices": pipe.num_devices,
                     "executables": sampler.jitted._cache_size(),
                     "seeds": [r.seed for r in res], "prompts": [r.condition for r in res],
                     "batch": [r.batch for r in res], "overflow": [r.overflow for r in res],
                     "unet_param_specs": sorted({str(getattr(a.sharding, "spec", "one"))
                                                 for a in jax.tree.leaves(
                                                     nnx.state(models["unet"]))})}
        return res

    # the reference first: the models are then placed on the other pipeline's mesh
    if sys.argv[3] == "dp":
        ref = run("ref", True, devices=1)
        other = run("dp", True, devices=2)
    else:
        ref = run("ref", False, devices=1)
        other = run("mp", False, devices=4, fsdp=2, tensor=2)

    def leaves(r):
        return [np.asarray(r.views)] + [np.asarray(a) for a in jax.tree.leaves(r.lgm_gaussians)]

    def errors(a_list, b_list):
        errs = []
        for a, b in zip(a_list, b_list):
            for x, y in zip(leaves(a), leaves(b)):
                scale = max(1.0, float(np.abs(y).max()))
                errs.append(float(np.abs(x - y).max()) / scale)
        return errs

    out["views_err"] = max(float(np.abs(a.views - b.views).max()) for a, b in zip(other, ref))
    out["err"] = max(errors(other, ref))
    # how far apart two different samples are (what the tolerances must tell apart)
    out["between_samples"] = float(np.abs(ref[0].views - ref[1].views).max())
    out["finite"] = all(np.isfinite(r.views).all() for r in ref + other)
    out["times"] = times
    out["total_s"] = time.perf_counter() - t_start
    print("RESULT" + json.dumps(out))
""")


def _four_devices(tmp_path_factory, which: str) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH",
                                                                                  ""))
    tok = tmp_path_factory.mktemp("tok")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tok),
                           os.path.join(ROOT, "tests"), which], env=env, capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    result = json.loads(line[len("RESULT"):])
    print(which, {k: result[k] for k in ("times", "total_s", "views_err", "err",
                                         "between_samples")})
    return result


@pytest.mark.slow
def test_batched_data_parallel_equals_one_at_a_time(tmp_path_factory):
    """3 prompts on data=2 (batch 2: one full batch, one padded): the same seeds, names and
    views as one prompt at a time on one device. Every data shard runs the one-device program
    on its one sample with that sample's own keys, so the views are bit-identical (measured
    0.0; bound 1e-6 absolute on [0, 1] images). The final LGM reconstruction runs batched under
    the compiler's partitioning instead of batch 1: float32 reassociation, measured 2.5e-6
    relative to max(1, |x|) (Gaussian parameters); bound 2e-5. Two different prompts' views
    differ by O(0.1), far above both."""
    r = _four_devices(tmp_path_factory, "dp")
    assert r["devices"] == 4
    ref, dp = r["ref"], r["dp"]
    assert ref["batch_size"] == 1 and ref["devices"] == 1
    assert dp["batch_size"] == 2 and dp["devices"] == 2
    assert dp["seeds"] == ref["seeds"] == [5, 6, 7]
    assert dp["prompts"] == ref["prompts"] == ["a red chair", "hello world", "blue cube"]
    assert [(b["index"], b["size"], b["samples"]) for b in dp["batch"]] == [
        (0, 2, 2), (0, 2, 2), (1, 2, 1)]  # the padded copy of "blue cube" is dropped
    assert dp["batch"][0]["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1}
    assert dp["executables"] == 1  # the padded last batch reuses the full batch's executable
    assert not any(dp["overflow"]) and r["finite"]
    assert r["between_samples"] > 0.05
    assert r["views_err"] <= 1e-6, r["views_err"]
    assert r["err"] <= 2e-5, r["err"]
    assert dp["unet_param_specs"] == ["P()"]  # data parallel: parameters replicated


@pytest.mark.slow
def test_fsdp_tensor_sharded_parameters_equal_unsharded(tmp_path_factory):
    """Parameters split over fsdp=2 × tensor=2 (data=1, batch 1), plain DDIM: contractions
    over split channels become partial sums + all-reduce, so float32 summation order changes
    (one UNet call: 2.9e-6 at scale 2.5, tests/test_parallel.py), and 4 DDIM steps with CFG 9
    amplify a UNet output error (by up to ~(1 + 2·9)·sqrt((1 − ᾱ)/ᾱ) at the noisy end).
    Measured: views (in [0, 1]) 4.4e-6, Gaussians 1.7e-5 relative to max(1, |x|); bounds 1e-4
    and 2e-4 (6-20× headroom), far below the O(0.1) between two different samples that a
    sharding bug (a wrong gather, a swapped sample) would produce."""
    r = _four_devices(tmp_path_factory, "mp")
    mp = r["mp"]
    assert mp["devices"] == 4 and mp["batch_size"] == 1
    assert mp["batch"][0]["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
    assert mp["seeds"] == r["ref"]["seeds"] and not any(mp["overflow"]) and r["finite"]
    specs = mp["unet_param_specs"]  # the UNet's parameters really split over both axes
    assert any("fsdp" in s for s in specs) and any("tensor" in s for s in specs), specs
    assert r["views_err"] <= 1e-4, r["views_err"]
    assert r["err"] <= 2e-4, r["err"]
    assert r["between_samples"] > 0.05


# ---- in-process: layouts, errors, per-sample random draws --------------------------------------


def test_parallel_layout_and_clear_errors():
    assert parallel_layout({}, 8) == ((8, 1, 1), 8)
    assert parallel_layout({"batch_per_device": 3}, 8) == ((8, 1, 1), 24)
    assert parallel_layout({"devices": 4, "fsdp": 2}, 8) == ((2, 2, 1), 2)
    assert parallel_layout({"fsdp": 2, "tensor": 4}, 8) == ((1, 2, 4), 1)
    for opts, message in [({"devices": 9}, "only 8 local cpu device"),
                          ({"fsdp": 3}, "does not divide the 8 devices"),
                          ({"devices": 6, "tensor": 4}, "fsdp × tensor among the divisors of 6"),
                          ({"batch_per_device": 0}, "batch_per_device must be a positive int"),
                          ({"fsdp": 1.5}, "fsdp must be a positive int")]:
        with pytest.raises(PipelineError, match=message):
            parallel_layout(opts, 8)


def test_default_devices_are_no_more_than_the_inputs_fill():
    """parallel.devices = 0 ("all") uses no more data shards than a process's inputs fill: a
    lone prompt on 8 devices is one sample, not eight padded copies; a set value is kept."""
    assert devices_for_inputs({}, 2, 8) == 2
    assert devices_for_inputs({}, 20, 8) == 8
    assert devices_for_inputs({}, 0, 8) == 1  # a process whose share is empty
    assert devices_for_inputs({"batch_per_device": 4}, 9, 8) == 3  # ceil(9 / 4) shards
    assert devices_for_inputs({"fsdp": 2}, 1, 8) == 2  # one data shard of fsdp 2
    assert devices_for_inputs({"fsdp": 2, "tensor": 2}, 9, 8) == 8
    assert devices_for_inputs({"devices": 3}, 1, 8) == 3
    for opts, n in (({}, 2), ({"fsdp": 2}, 3), ({"batch_per_device": 2}, 5)):
        devices = devices_for_inputs(opts, n, 8)
        (data, _, _), batch = parallel_layout({**opts, "devices": devices}, 8)
        assert batch >= n > batch - (data and opts.get("batch_per_device", 1)), (opts, n)


def test_bad_device_flags_fail_before_any_model_loads(load_script, tmp_path, capsys,
                                                      monkeypatch):
    from videomv_jax.pipeline import MultiViewPipeline

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(MultiViewPipeline, "from_checkpoints", no_loading)
    sample = load_script("sample")
    n = jax.local_device_count()
    for argv, message in [(["--devices", str(n + 1)], "parallel.devices="),
                          (["--fsdp", str(n + 1)], "does not divide"),
                          (["--batch-per-device", "0"], "batch_per_device must be")]:
        code = sample.main(["--prompt", "a cube", "--out", str(tmp_path / "o"), *argv])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "--batch-per-device" in err, (argv, err)


def test_per_sample_draws_equal_one_sample_draws():
    """Per-sample keys [B] draw, for every sample, exactly what a batch-1 call with its key
    draws (bit for bit): the DDIM η noise, and the 3D-aware step's VAE posterior ε of both
    guidance branches (batched as [uncond ×B, cond ×B])."""
    keys = [jax.random.key(s) for s in (5, 6, 7)]
    batch = jnp.stack(keys)
    assert sampler_mod.per_sample_keys(batch) and not sampler_mod.per_sample_keys(keys[0])
    shape = (3, 2, 4, 4, 4)
    drawn = sampler_mod._normal(batch, shape)
    for b, k in enumerate(keys):
        np.testing.assert_array_equal(drawn[b:b + 1], jax.random.normal(k, (1, *shape[1:])))
    folded = sampler_mod._fold_in(batch, 3)
    for b, k in enumerate(keys):
        assert np.array_equal(jax.random.key_data(folded[b]),
                              jax.random.key_data(jax.random.fold_in(k, 3)))
    # the aware step with batch_cfg: ε of sample b as a batch-1 call draws it ([2, ...])
    two = (2, *shape[1:])
    eps = jax.vmap(lambda k: jax.random.normal(k, two))(batch)
    eps = jnp.swapaxes(eps, 0, 1).reshape(6, *shape[1:])
    for b, k in enumerate(keys):
        one = jax.random.normal(k, two)
        np.testing.assert_array_equal(eps[b], one[0])  # uncond rows first
        np.testing.assert_array_equal(eps[3 + b], one[1])  # then cond rows
