"""JAX's persistent compilation cache, on by default for the entry points.

XLA compilation dominates a short run on CPU (videomv-tiny: the sampler's ``lax.scan`` with the
UNet, VAE, LGM and rasteriser inside compiles in ~15-30 s, and runs in less). With the cache,
a second process that traces the same computation loads the compiled executable from disk.

:func:`enable_compilation_cache` is what ``sample.py``, ``eval.py``, ``train.py`` (and the web
app) call before their first computation. Where the cache lives, first match wins:

1. the ``path`` argument (``--compilation-cache DIR`` on the command line);
2. the environment variable ``VIDEOMV_JAX_COMPILATION_CACHE`` (a directory);
3. a cache directory already configured for JAX (``JAX_COMPILATION_CACHE_DIR``);
4. ``$XDG_CACHE_HOME/videomv-jax/jax`` (default ``~/.cache/videomv-jax/jax``).

``--no-compilation-cache`` or ``VIDEOMV_JAX_COMPILATION_CACHE=off`` (also ``0``, ``none``,
``false``) turns it off.

Correctness: JAX keys each entry by a hash of the lowered computation (its StableHLO, so every
shape, dtype, constant and static config value that changes the program), the devices, the
compile options and XLA flags, and the jax / jaxlib versions, so a different computation never
finds another's entry. An unreadable entry (truncated, corrupt: entries are zlib-compressed,
whose checksum catches damage) is skipped with a ``UserWarning`` ("Error reading persistent
compilation cache entry") and the computation is compiled again.

Several processes may share the cache directory: entries are written once per key and never
modified; a reader that meets an entry another process is still writing finds a truncated zlib
stream, which fails its check, so it warns and compiles instead (never a wrong executable). The
cache is not size-bounded by default (:data:`DEFAULT_MAX_SIZE`; videomv-tiny's sample command
writes ~4 MiB): JAX's bounded mode takes a file lock and rescans the whole directory on every
write (measured here: 150 ms per write at 1,000 entries, 74 s for 1,000 writes), quadratic in
the number of entries. Delete the directory to clear it.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MAX_SIZE",
    "DISABLE_VALUES",
    "ENV_VAR",
    "MIN_COMPILE_TIME_S",
    "abstract_model_cache",
    "add_arguments",
    "cache_dir_from_args",
    "default_cache_dir",
    "enable_compilation_cache",
    "resolve_cache_dir",
]

ENV_VAR = "VIDEOMV_JAX_COMPILATION_CACHE"
"""Environment variable: a cache directory, or one of :data:`DISABLE_VALUES` to turn it off."""

DISABLE_VALUES = ("off", "0", "none", "false", "no", "disable", "disabled")

DEFAULT_MAX_SIZE = -1
"""No size bound (JAX's ``-1``); a positive byte count turns on JAX's least-recently-used
eviction (with a file lock and a directory scan per write)."""

MIN_COMPILE_TIME_S = 0.0
"""Cache every executable, however quickly it compiled: the small ones (a VAE decode at 64²,
CLIP text) still cost tens of milliseconds each to compile on CPU, more than a cache read."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/videomv-jax/jax`` (``~/.cache/videomv-jax/jax`` without it)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "videomv-jax" / "jax"


def _is_off(value: str) -> bool:
    return value.strip().lower() in DISABLE_VALUES


def resolve_cache_dir(path: str | os.PathLike | None = None, *, enabled: bool = True
                      ) -> Path | None:
    """Where the cache goes (module docstring's order), or ``None`` when it is disabled."""
    if not enabled:
        return None
    if path is not None:
        text = os.fspath(path)
        return None if _is_off(text) else Path(text).expanduser()
    env = os.environ.get(ENV_VAR)
    if env is not None and env.strip():
        return None if _is_off(env) else Path(env).expanduser()
    import jax

    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return Path(configured)
    return default_cache_dir()


def enable_compilation_cache(path: str | os.PathLike | None = None, *, enabled: bool = True,
                             max_size: int = DEFAULT_MAX_SIZE,
                             min_compile_time_s: float = MIN_COMPILE_TIME_S) -> Path | None:
    """Turn on JAX's persistent compilation cache (or off, with ``enabled=False`` / an
    "off" value); returns the cache directory, or ``None`` when disabled.

    Call it before the first ``jit`` compilation of the process. Calling it again with another
    directory re-points the cache (JAX's cache object is reset)."""
    global _model_dir
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    where = resolve_cache_dir(path, enabled=enabled)
    if where is None:
        jax.config.update("jax_enable_compilation_cache", False)
        cc.reset_cache()  # JAX decides once per process whether to use it: ask again
        _model_dir = None
        return None
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the JAX compilation cache directory {str(where)!r} "
                      f"({err}); pass --compilation-cache DIR or --no-compilation-cache") from err
    where = where.resolve()
    previous = (jax.config.jax_compilation_cache_dir
                if jax.config.jax_enable_compilation_cache else None)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(where))
    jax.config.update("jax_compilation_cache_max_size", int(max_size))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    # -1: no size threshold (and JAX does not override it with a backend default)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if previous is None or os.path.abspath(previous) != str(where):
        cc.reset_cache()  # (re)open it at ``where`` on the next compilation
    _model_dir = where / MODELS_SUBDIR
    return where


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--compilation-cache DIR`` / ``--no-compilation-cache`` on an entry point's parser."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--compilation-cache", metavar="DIR",
                   help=f"JAX persistent compilation cache directory (default: ${ENV_VAR}, "
                        f"else {default_cache_dir()})")
    g.add_argument("--no-compilation-cache", action="store_true",
                   help=f"compile everything afresh, read and write no cache (also "
                        f"{ENV_VAR}=off)")


def cache_dir_from_args(args: argparse.Namespace) -> Path | None:
    """:func:`enable_compilation_cache` as the flags of :func:`add_arguments` ask."""
    return enable_compilation_cache(getattr(args, "compilation_cache", None),
                                    enabled=not getattr(args, "no_compilation_cache", False))


# ---- abstract models ----------------------------------------------------------------------------

MODELS_SUBDIR = "abstract_models"
"""Subdirectory of the cache holding built-model structures (see :func:`abstract_model_cache`)."""

_model_dir: Path | None = None


@functools.lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    """SHA-256 over every ``.py`` file of the ``videomv_jax`` package and the jax / flax
    versions: any code change makes every cached model structure stale."""
    import flax
    import jax

    root = Path(__file__).resolve().parent
    h = hashlib.sha256(f"jax {jax.__version__} flax {flax.__version__}".encode())
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _to_host(tree: Any) -> Any:
    import jax
    import numpy as np

    def conv(a):
        if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return ("prng_key", str(jax.random.key_impl(a)), np.asarray(jax.random.key_data(a)))
        return np.asarray(a)

    return jax.tree.map(conv, tree)


def _from_host(tree: Any) -> Any:
    import jax

    def is_key(x):
        return isinstance(x, tuple) and len(x) == 3 and x[0] == "prng_key"

    return jax.tree.map(lambda x: jax.random.wrap_key_data(x[2], impl=x[1]) if is_key(x) else x,
                        tree, is_leaf=is_key)


def abstract_model_cache(kind: str, config: dict[str, Any],
                         build: Callable[[], tuple[Any, Any, Any]]) -> tuple[Any, Any, Any]:
    """``build()`` → ``(graphdef, abstract params, non-parameter state)`` of a model, cached on
    disk while the compilation cache is on (:func:`enable_compilation_cache`).

    Building a model's structure means running its constructor under a trace, which costs
    seconds for the UNet on a 2-core CPU (Flax's per-attribute checks); the cached pickle loads
    in ~0.1 s. The key is the model kind, its config and :func:`_code_fingerprint` (all package
    code, jax and flax versions). An unreadable entry warns and is rebuilt. The non-parameter
    state (dropout RNG keys and counters) is stored as host values and returned as host
    arrays (typed PRNG keys restored); the caller places them."""
    if _model_dir is None:
        return build()
    key = hashlib.sha256(json.dumps([kind, config, _code_fingerprint()], sort_keys=True,
                                    default=str).encode()).hexdigest()
    path = _model_dir / f"{kind}-{key[:32]}.pkl"
    if path.is_file():
        try:
            with open(path, "rb") as f:
                graphdef, params, rest = pickle.load(f)
            return graphdef, params, _from_host(rest)
        except Exception as err:  # noqa: BLE001 - any damage: rebuild
            warnings.warn(f"ignoring the unreadable cached model structure {str(path)!r} "
                          f"({type(err).__name__}: {err}); rebuilding it", stacklevel=2)
    graphdef, params, rest = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            pickle.dump((graphdef, params, _to_host(rest)), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)  # atomic: concurrent readers see the old or the whole new file
    except (OSError, pickle.PicklingError, TypeError) as err:
        warnings.warn(f"could not cache the model structure in {str(path)!r}: {err}",
                      stacklevel=2)
    return graphdef, params, rest
