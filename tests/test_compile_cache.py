"""The persistent compilation cache (videomv_jax.compile_cache): where it goes, that it is
read back, that it never serves a wrong result, and that a corrupt entry is skipped.

In-process: each test points JAX at a fresh directory, drops JAX's in-memory caches
(``jax.clear_caches``) so that the next call has to go through the persistent cache, and
counts cache hits with a ``jax.monitoring`` listener. A fixture restores JAX's cache settings
afterwards (other tests in the same worker run as before).
"""

from __future__ import annotations

import argparse
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import monitoring
from jax.experimental.compilation_cache import compilation_cache as cc

from videomv_jax import compile_cache
from videomv_jax.diffusion.ddim import ddim_update, guidance, predict_x0
from videomv_jax.diffusion.sampler import SamplerConfig

SETTINGS = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
            "jax_compilation_cache_max_size", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture
def jax_cache_settings():
    saved = {k: getattr(jax.config, k) for k in SETTINGS}
    model_dir = compile_cache._model_dir
    yield
    for k, v in saved.items():
        jax.config.update(k, v)
    compile_cache._model_dir = model_dir
    cc.reset_cache()
    jax.clear_caches()


@pytest.fixture
def hits():
    """A list that grows by one per persistent-cache hit."""
    events: list[str] = []

    def listener(event: str, **kwargs) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            events.append(event)

    monitoring.register_event_listener(listener)
    yield events
    monitoring.unregister_event_listener(listener)


def _ddim_step(config: SamplerConfig):
    """One guided DDIM update with ``config``'s values baked in as constants (as the sampler
    does: the config is static to the compiled program)."""
    schedule = config.ddim_schedule()

    @jax.jit
    def step(x, out_u, out_c, i):
        out = guidance(out_u, out_c, config.guidance_scale)
        x0 = predict_x0(x, out, schedule.alpha[i], config.prediction)
        return ddim_update(x, x0, schedule.alpha[i], schedule.alpha_prev[i], 0.0, None)

    return step


def _inputs():
    k = jax.random.split(jax.random.key(0), 3)
    shape = (1, 4, 8, 8, 4)
    return (jax.random.normal(k[0], shape), jax.random.normal(k[1], shape),
            jax.random.normal(k[2], shape), jnp.int32(3))


def _fresh_run(config: SamplerConfig) -> np.ndarray:
    """Forget every compiled executable in memory, then compile (or load) and run."""
    jax.clear_caches()
    return np.asarray(_ddim_step(config)(*_inputs()))


def test_resolution_order_and_off_values(tmp_path, monkeypatch, jax_cache_settings):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
    jax.config.update("jax_compilation_cache_dir", None)
    assert compile_cache.default_cache_dir() == tmp_path / "xdg" / "videomv-jax" / "jax"
    assert compile_cache.resolve_cache_dir() == compile_cache.default_cache_dir()
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax"))  # JAX's own setting
    assert compile_cache.resolve_cache_dir() == tmp_path / "jax"
    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "env"))
    assert compile_cache.resolve_cache_dir() == tmp_path / "env"
    assert compile_cache.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    for off in ("off", "0", "None", "false"):
        monkeypatch.setenv(compile_cache.ENV_VAR, off)
        assert compile_cache.resolve_cache_dir() is None, off
        assert compile_cache.resolve_cache_dir(off) is None, off
    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "env"))
    assert compile_cache.resolve_cache_dir(enabled=False) is None

    p = argparse.ArgumentParser()
    compile_cache.add_arguments(p)
    assert p.parse_args([]).compilation_cache is None
    assert p.parse_args(["--no-compilation-cache"]).no_compilation_cache
    with pytest.raises(SystemExit):  # mutually exclusive
        p.parse_args(["--compilation-cache", "x", "--no-compilation-cache"])


def test_cache_is_read_back_and_a_changed_config_value_changes_the_result(
        tmp_path, jax_cache_settings, hits):
    where = compile_cache.enable_compilation_cache(tmp_path / "cache")
    assert where == (tmp_path / "cache").resolve()
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0

    base = SamplerConfig(num_steps=10, aware_steps=(), guidance_scale=3.0)
    first = _fresh_run(base)
    steps = _step_entries(where)
    assert len(steps) == 1, sorted(p.name for p in where.iterdir())
    assert hits == []

    again = _fresh_run(base)  # the same program: read from disk, the same numbers
    assert hits and _step_entries(where) == steps
    np.testing.assert_array_equal(again, first)

    # values that change the computation give new programs (new keys, new entries), never the
    # old result; each result equals what a run without any cache computes
    for changed in (base.replace(guidance_scale=4.0), base.replace(prediction="v"),
                    base.replace(num_steps=20)):
        got = _fresh_run(changed)
        assert len(_step_entries(where)) == len(steps) + 1, changed
        steps = _step_entries(where)
        compile_cache.enable_compilation_cache(enabled=False)
        want = _fresh_run(changed)
        compile_cache.enable_compilation_cache(where)
        np.testing.assert_array_equal(got, want)
        assert np.max(np.abs(got - first)) > 1e-3, changed


def _step_entries(where) -> set[str]:
    """Cache entries of the jitted ``step`` (JAX names them ``jit_step-<key hash>...``)."""
    return {p.name for p in where.iterdir() if p.name.startswith("jit_step-")}


def test_corrupt_entry_is_skipped_with_a_warning(tmp_path, jax_cache_settings, hits):
    where = compile_cache.enable_compilation_cache(tmp_path / "cache")
    config = SamplerConfig(num_steps=10, aware_steps=(), guidance_scale=2.0)
    want = _fresh_run(config)
    written = [p for p in where.iterdir() if p.is_file()]
    assert written
    for i, p in enumerate(written):  # garbage in one half, a truncated entry in the other
        data = p.read_bytes()
        p.write_bytes(b"not a cache entry" * 7 if i % 2 == 0 else data[:len(data) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _fresh_run(config)
    messages = [str(w.message) for w in caught]
    assert any("Error reading persistent compilation cache entry" in m for m in messages), \
        messages
    assert hits == []  # every entry was damaged: all compiled afresh
    np.testing.assert_array_equal(got, want)


def test_disabled_writes_nothing(tmp_path, jax_cache_settings, monkeypatch):
    monkeypatch.setenv(compile_cache.ENV_VAR, "off")
    assert compile_cache.enable_compilation_cache() is None
    assert not jax.config.jax_enable_compilation_cache
    args = argparse.Namespace(compilation_cache=str(tmp_path / "c"), no_compilation_cache=False)
    assert compile_cache.cache_dir_from_args(args) == (tmp_path / "c").resolve()
    args = argparse.Namespace(compilation_cache=None, no_compilation_cache=True)
    assert compile_cache.cache_dir_from_args(args) is None
    _fresh_run(SamplerConfig(num_steps=10, aware_steps=(), guidance_scale=5.0))
    assert not any((tmp_path / "c").iterdir())


# ---- model loading: cached structure, direct tensorstore reads ----------------------------------


def _leaves(model) -> list[np.ndarray]:
    from flax import nnx

    def host(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return np.asarray(jax.random.key_data(x))
        return np.asarray(x)

    return [host(x) for x in jax.tree.leaves(nnx.state(model))]


def _assert_same_model(a, b) -> None:
    from flax import nnx

    assert repr(nnx.graphdef(a)) == repr(nnx.graphdef(b))
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", ["clip_text", "lgm"])
def test_packaged_model_loads_the_same_from_cache_and_tensorstore(name, tmp_path,
                                                                  jax_cache_settings,
                                                                  monkeypatch):
    """The reference: the model built afresh, restored by orbax (no cache). Then the fast
    paths: the structure from the on-disk cache (written, then read), the arrays read straight
    from the store. Everything must be identical, dtypes included (stored float16 -> float32)."""
    from videomv_jax import model_store as ck
    from videomv_jax import tiny

    directory = tiny.weights_dir() / name
    compile_cache.enable_compilation_cache(enabled=False)
    monkeypatch.setattr(ck, "_read_single_device", lambda *a: None)
    reference, _ = ck.load_converted(directory)
    monkeypatch.undo()

    where = compile_cache.enable_compilation_cache(tmp_path / "cache")
    built, _ = ck.load_converted(directory)  # builds, writes the structure
    entries = list((where / compile_cache.MODELS_SUBDIR).glob("*.pkl"))
    assert len(entries) == 1
    cached, _ = ck.load_converted(directory)  # reads it
    for model in (built, cached):
        _assert_same_model(model, reference)

    entries[0].write_bytes(b"\x80\x05 damaged")
    with pytest.warns(UserWarning, match="unreadable cached model structure"):
        rebuilt, _ = ck.load_converted(directory)
    _assert_same_model(rebuilt, reference)
    again, _ = ck.load_converted(directory)  # rewritten whole by the rebuild
    _assert_same_model(again, reference)
