"""Session settings shared by every test module.

``sample.py`` / ``eval.py`` / ``train.py`` turn JAX's persistent compilation cache on (see
:mod:`videomv_jax.compile_cache`), and several tests call their ``main`` in-process or run them
as subprocesses. Their cache goes into pytest's cache folder (``.pytest_cache/d/``), shared by
the xdist workers and kept between runs, instead of the user's ``~/.cache``: repeated runs of
the same programs (the packaged model's sampler in ``test_tiny`` / ``test_pipeline``, the same
model structures) load instead of compiling. ``VIDEOMV_JAX_COMPILATION_CACHE`` set by the
caller wins (``off`` turns it off).
"""

from __future__ import annotations

import os

import pytest

ENV_VAR = "VIDEOMV_JAX_COMPILATION_CACHE"


def pytest_configure(config) -> None:
    if ENV_VAR in os.environ:
        return
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    os.environ[ENV_VAR] = str(cache.mkdir("jax-compilation-cache")) if cache else "off"


@pytest.fixture(scope="session")
def load_script():
    """``load_script("sample")``: a fresh module of the repository's ``sample.py`` /
    ``train.py`` / ``eval.py`` (their ``main`` runs in-process)."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    count = iter(range(1 << 30))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"{name}_script_{next(count)}",
                                                      os.path.join(root, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
