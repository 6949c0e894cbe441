"""Sampling many prompts / images with several processes: each process takes a disjoint,
contiguous share of the inputs (keeping their global numbering and seeds, so the outputs equal
a one-process run's), writes its own samples, and one merged ``index.json`` lists them all.

Processes need no JAX collectives for this (each samples on its own devices), so the process
identity is read from the environment a multi-host launcher sets: ``JAX_PROCESS_ID`` /
``JAX_NUM_PROCESSES`` (as for ``train.py``), SLURM (``SLURM_PROCID`` / ``SLURM_NTASKS``) or
Open MPI (``OMPI_COMM_WORLD_RANK`` / ``OMPI_COMM_WORLD_SIZE``); one process otherwise.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["INDEX_FILE", "merge_index", "process_identity", "process_share",
           "write_index_part"]

INDEX_FILE = "index.json"
_ENV = (("JAX_PROCESS_ID", "JAX_NUM_PROCESSES"), ("SLURM_PROCID", "SLURM_NTASKS"),
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"))


def process_identity(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(process index, process count) from the launcher's environment; (0, 1) without one."""
    env = os.environ if env is None else env
    for pid_key, n_key in _ENV:
        if env.get(n_key, "") not in ("", "1") and env.get(pid_key, "") != "":
            try:
                pid, n = int(env[pid_key]), int(env[n_key])
            except ValueError:
                raise ValueError(f"{pid_key}={env[pid_key]!r} / {n_key}={env[n_key]!r} are not "
                                 f"integers") from None
            if not 0 <= pid < n:
                raise ValueError(f"{pid_key}={pid} must lie in [0, {n_key}={n})")
            return pid, n
    return 0, 1


def process_share(num_items: int, index: int = 0, count: int = 1) -> range:
    """The global item numbers process ``index`` of ``count`` handles: contiguous blocks, the
    first ``num_items % count`` processes one item more. Every item goes to exactly one
    process; a process may get none when there are fewer items than processes."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"process {index} of {count}: need 0 <= index < count")
    base, extra = divmod(int(num_items), count)
    start = index * base + min(index, extra)
    return range(start, start + base + (1 if index < extra else 0))


def _part_name(index: int, count: int) -> str:
    return f"index.part{index:05d}-of-{count:05d}.json"


def write_index_part(out_dir: str, entries: Sequence[Mapping[str, Any]], index: int = 0,
                     count: int = 1) -> str:
    """Write this process's list of samples (each entry must hold its global ``"index"``)
    atomically under ``out_dir``; returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, _part_name(index, count))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"process": index, "processes": count, "samples": list(entries)}, f,
                  indent=2)
    os.replace(tmp, path)
    return path


def merge_index(out_dir: str, count: int = 1, timeout_s: float = 3600.0,
                poll_s: float = 1.0) -> str:
    """Wait (up to ``timeout_s``) for the index parts of all ``count`` processes, then write
    one ``index.json`` with every sample in global order and remove the parts. Run it on
    process 0 after its own :func:`write_index_part`; returns the index path."""
    paths = [os.path.join(out_dir, _part_name(i, count)) for i in range(count)]
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [p for p in paths if not os.path.isfile(p)]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"merge_index: after {timeout_s:.0f} s still no {missing}: did "
                               f"every process run with the same inputs and --out?")
        time.sleep(poll_s)
    samples = []
    for p in paths:
        with open(p) as f:
            samples += json.load(f)["samples"]
    samples.sort(key=lambda e: e["index"])
    numbers = [e["index"] for e in samples]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"merge_index: sample numbers written twice in {out_dir}: the "
                         f"processes' parts overlap (stale parts of an earlier run?)")
    out = os.path.join(out_dir, INDEX_FILE)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"processes": count, "samples": samples}, f, indent=2)
    os.replace(tmp, out)
    for p in paths:
        os.remove(p)
    return out
