"""What ``sample.py``, ``train.py`` and ``eval.py`` share: the usage error, ``--set key=value``
config overrides, argument parsers and checks that run before any model is loaded.

Every check here raises :class:`UsageError` with a one-line message that names the bad
argument and how to fix it; the entry points print it as ``error: ...`` and exit with code 2.
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "MAX_SEED",
    "HelpFormatter",
    "UsageError",
    "apply_overrides",
    "check_finite",
    "check_int",
    "check_output_dir",
    "check_seed",
    "config_keys",
    "make_parser",
    "parse_ints",
    "parse_rgb",
    "parse_value",
    "set_config_value",
]

MAX_SEED = 2**31 - 1
"""Largest accepted ``--seed`` (a sample's seed is ``seed + index``; JAX keys take int32/64)."""


class UsageError(ValueError):
    """A bad command line or input: printed as ``error: ...`` with exit code 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's layout and shows each option's default (unless the help
    already says it, or there is none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, [], argparse.SUPPRESS)
                or action.option_strings == [] or isinstance(default, bool)):
            return text
        return f"{text} (default: %(default)s)"


def make_parser(description: str | None, **kwargs: Any) -> argparse.ArgumentParser:
    """An :class:`argparse.ArgumentParser` with :class:`HelpFormatter`."""
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter,
                                   **kwargs)


# ---- --set key=value ----------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A Python literal (``3``, ``0.5``, ``(1, 2)``, ``None``, ``'x'``), else the raw string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def _is_section(value: Any) -> bool:
    return isinstance(value, Mapping) or (hasattr(value, "keys") and hasattr(value, "to_dict"))


def config_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a (nested) ``ConfigDict`` / dict, sorted."""
    out = []
    for k in sorted(cfg.keys()):
        v = cfg[k]
        if _is_section(v) and len(v):
            out.extend(config_keys(v, f"{prefix}{k}."))
        else:
            out.append(prefix + k)
    return out


def _coerce(old: Any, value: Any) -> Any:
    if isinstance(old, tuple) and isinstance(value, (list, tuple, int, float)):
        return tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(old, str) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def set_config_value(cfg: Any, key: str, value: Any) -> None:
    """Set the dotted ``key`` of ``cfg`` to ``value`` (coerced to the old value's type where that
    is unambiguous: int → float, list → tuple, number → str). Unknown keys and values of the
    wrong type raise :class:`UsageError` naming the valid keys / the expected type."""
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        if not _is_section(node) or p not in node or not _is_section(node[p]):
            raise UsageError(f"unknown config key {key!r}; valid keys: "
                             f"{', '.join(config_keys(cfg))}")
        node = node[p]
    leaf = parts[-1]
    if leaf not in node or (_is_section(node[leaf]) and len(node[leaf])
                            and not isinstance(value, Mapping)):  # a whole section: a dict
        raise UsageError(f"unknown config key {key!r}; valid keys: {', '.join(config_keys(cfg))}")
    value = _coerce(node[leaf], value)
    try:
        if hasattr(node, "unlocked"):
            with node.unlocked():
                node[leaf] = value
        else:
            node[leaf] = value
    except (TypeError, ValueError) as err:
        raise UsageError(f"bad value for config key {key!r}: {value!r} ({err})") from err


def apply_overrides(cfg: Any, items: Iterable[str], option: str = "--set") -> None:
    """Apply ``KEY=VALUE`` strings (``option``'s values) to ``cfg`` in order."""
    for item in items:
        if "=" not in item:
            raise UsageError(f"{option} needs KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        set_config_value(cfg, k.strip(), parse_value(v.strip()))


# ---- argument values ----------------------------------------------------------------------------


def parse_rgb(text: str | Sequence[float], what: str = "--background",
              allow_auto: bool = False) -> Any:
    """``"R,G,B"`` (or one number for a grey) with values in [0, 1] → a list of 3 floats;
    ``"auto"`` passes through when ``allow_auto``."""
    if allow_auto and text == "auto":
        return "auto"
    form = "'auto' or R,G,B" if allow_auto else "R,G,B (e.g. 1,1,1 for white)"
    try:
        vals = ([float(v) for v in text.split(",")] if isinstance(text, str)
                else [float(v) for v in text])
    except (TypeError, ValueError) as err:
        raise UsageError(f"{what} must be {form} with values in [0, 1], got {text!r}") from err
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3 or not all(0.0 <= v <= 1.0 for v in vals):
        raise UsageError(f"{what} must be {form} with values in [0, 1], got {text!r}")
    return vals


def parse_ints(text: str | None, what: str) -> list[int]:
    """A comma list of ints (``""`` / ``None`` → ``[]``)."""
    if not text:
        return []
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise UsageError(f"{what} must be a comma list of ints, got {text!r}") from err


def check_seed(seed: int, count: int = 1, what: str = "--seed") -> int:
    """``seed`` when ``seed … seed + count - 1`` all lie in ``[0, MAX_SEED]``."""
    if not 0 <= seed <= MAX_SEED - max(count - 1, 0):
        raise UsageError(f"{what} must be an integer in [0, {MAX_SEED - max(count - 1, 0)}], "
                         f"got {seed}")
    return seed


def check_int(name: str, value: int | None, minimum: int = 1) -> int | None:
    """``value`` when it is ``None`` (not given) or ``>= minimum``."""
    if value is not None and value < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_finite(name: str, value: float, positive: bool = False) -> float:
    """A finite number (and > 0 when ``positive``)."""
    if not math.isfinite(value) or (positive and value <= 0):
        raise UsageError(f"{name} must be a finite {'positive ' if positive else ''}number, "
                         f"got {value}")
    return value


def _probe_writable(folder: str) -> str | None:
    """``None`` when a file can be created in the existing ``folder`` (one is created and
    removed: ``os.access`` says yes to root everywhere, also on read-only and virtual file
    systems such as ``/proc``), else the reason."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".videomv-write-probe-", dir=folder)
    except OSError as err:
        return err.strerror or type(err).__name__
    os.close(fd)
    os.unlink(probe)
    return None


def check_output_dir(path: str, what: str = "--out") -> str:
    """``path`` when it is a folder that exists and is writable, or can be created (its nearest
    existing parent is a writable folder). Writability is tried, not assumed: a file is
    created in that folder and removed again; nothing else is created."""
    path = os.fspath(path)
    if "://" in path:  # a remote store (gs://...): checked by its own client when written
        return path
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise UsageError(f"{what} {path!r} exists and is not a folder; give a folder path")
        reason = _probe_writable(path)
        if reason:
            raise UsageError(f"{what} {path!r} is not writable (creating a file there failed: "
                             f"{reason}); give a folder you can write to")
        return path
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"{what} {path!r} cannot be created: {parent!r} is a file, not a folder")
    reason = _probe_writable(parent)
    if reason:
        raise UsageError(f"{what} {path!r} cannot be created: {parent!r} is not writable "
                         f"(creating a file there failed: {reason}); give a folder you can "
                         f"write to")
    return path
