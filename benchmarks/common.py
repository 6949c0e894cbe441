"""Helpers shared by the benchmark scripts: machine description, logging, result files."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax

RESULTS_HEADER = (
    "# Benchmark results\n\n"
    "Sections are appended by the scripts in `benchmarks/` (newest last); each heading names the "
    "date, machine, JAX version and device. See `benchmarks/README.md` for how to run them.\n"
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def short_error(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    msg = msg if len(msg) <= 90 else msg[:87] + "..."
    return f"{type(e).__name__}: {msg}".replace("|", "/")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def core_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 0


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def append_results(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.stat().st_size == 0:
        path.write_text(RESULTS_HEADER)
    with path.open("a") as f:
        f.write("\n" + text)


def time_compiled(fn, args: tuple, reps: int):
    """Ahead-of-time compile ``jax.jit(fn)`` for ``args``, one warm-up call, then ``reps`` timed
    calls with ``block_until_ready``: (compile s, median s, all timings, last output)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, statistics.median(times), times, out
