"""videomv-tiny: the small default model that ships inside the package.

The weights live in ``videomv_jax/weights/videomv_tiny/`` as ordinary converted-model
directories (the layout :func:`videomv_jax.model_store.load_converted` reads, parameters
stored as float16 and cast back to float32 on load), trained by ``train.py`` on the procedural
``shapes`` world (see ``docs/videomv-tiny.md``). ``manifest.json`` beside them lists every file
with its SHA-256, the sampling settings of each mode and the caption vocabulary;
:data:`MANIFEST_SHA256` pins the manifest itself, so :func:`verify` detects any changed, missing
or extra file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "MANIFEST",
    "MANIFEST_SHA256",
    "TinyWeightsError",
    "SAMPLING_FILE",
    "apply_directory_settings",
    "apply_sampling_defaults",
    "caption_words",
    "hash_tree",
    "load_manifest",
    "unknown_words",
    "use_default_model",
    "verify",
    "weights_dir",
    "write_manifest",
]

MANIFEST = "manifest.json"

#: SHA-256 of the shipped ``manifest.json`` (which holds the SHA-256 of every weight file).
MANIFEST_SHA256 = "ac22ae12a13e6a5a0fb87d14ed3163596c7c088e290c6929af6b43fbe7dfcfbf"


class TinyWeightsError(RuntimeError):
    """The packaged videomv-tiny weights are missing, incomplete or modified."""


def weights_dir() -> Path:
    """The packaged videomv-tiny directory (inside the installed ``videomv_jax``)."""
    return Path(__file__).resolve().parent / "weights" / "videomv_tiny"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_tree(root: str | os.PathLike, skip: Iterable[str] = (MANIFEST,)) -> dict[str, str]:
    """``{relative/posix/path: sha256}`` of every file under ``root`` (``skip`` excluded)."""
    root = Path(root)
    skip = set(skip)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in skip and "__pycache__" not in p.parts:
            out[rel] = _sha256(p)
    return out


def write_manifest(root: str | os.PathLike, info: Mapping[str, Any]) -> str:
    """Write ``root/manifest.json`` = ``info`` + the file hashes; returns the manifest's
    SHA-256 (what :data:`MANIFEST_SHA256` must be set to)."""
    root = Path(root)
    data = dict(info)
    data["files"] = hash_tree(root)
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    (root / MANIFEST).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def load_manifest(root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The parsed manifest of ``root`` (default: the packaged weights)."""
    root = Path(root) if root is not None else weights_dir()
    path = root / MANIFEST
    if not path.is_file():
        raise TinyWeightsError(
            f"videomv-tiny weights not found: {str(path)!r} is missing. They ship inside the "
            f"package (videomv_jax/weights/videomv_tiny); reinstall videomv-jax from a full "
            f"clone (pip install -e .), or pass --checkpoint-dir with converted models.")
    return json.loads(path.read_text())


def verify(root: str | os.PathLike | None = None, expected_sha256: str | None = None
           ) -> dict[str, Any]:
    """Check the manifest's own hash (default :data:`MANIFEST_SHA256` for the packaged
    weights) and every file's hash; return the manifest. Raises :class:`TinyWeightsError`
    listing changed, missing and unexpected files."""
    packaged = root is None
    root = Path(root) if root is not None else weights_dir()
    manifest = load_manifest(root)
    want = expected_sha256 if expected_sha256 is not None else (
        MANIFEST_SHA256 if packaged else None)
    if want:
        got = _sha256(root / MANIFEST)
        if got != want:
            raise TinyWeightsError(f"{str(root / MANIFEST)!r} has SHA-256 {got}, expected "
                                   f"{want}: the packaged videomv-tiny was modified")
    have = hash_tree(root)
    listed = manifest.get("files", {})
    changed = sorted(k for k in listed if k in have and have[k] != listed[k])
    missing = sorted(k for k in listed if k not in have)
    extra = sorted(k for k in have if k not in listed)
    if changed or missing or extra:
        lines = [f"videomv-tiny weights in {str(root)!r} do not match their manifest:"]
        for title, items in (("changed", changed), ("missing", missing),
                             ("unexpected", extra)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20]))
        lines.append("reinstall the package from a clean clone")
        raise TinyWeightsError("\n".join(lines))
    return manifest


def apply_sampling_defaults(cfg: Any, mode: str, root: str | os.PathLike | None = None,
                            manifest: Mapping[str, Any] | None = None) -> None:
    """Point ``cfg`` (configs/t2mv.py or configs/i2mv.py) at the weights in ``root`` (default:
    the packaged ones) and apply the sampling settings their manifest (read from ``root``
    unless given) records for ``mode`` (dotted keys, e.g. ``sampler.num_steps``). Call before
    command-line overrides so that those still win."""
    root = Path(root) if root is not None else weights_dir()
    manifest = load_manifest(root) if manifest is None else manifest
    modes = manifest.get("modes", {})
    if mode not in modes:
        raise TinyWeightsError(f"videomv-tiny has no {mode!r} model (it has {sorted(modes)})")
    from ml_collections.config_flags import config_path

    cfg.checkpoint_dir = str(root)
    for key, value in modes[mode].items():
        old = config_path.get_value(key, cfg)
        config_path.set_value(key, cfg, tuple(value) if isinstance(old, tuple) else value)


SAMPLING_FILE = "sampling.json"
"""Written by ``train.py --export``: ``{"modes": {mode: {dotted key: value}}, ...}``, the sampling
settings the exported models were trained for (the same layout as the manifest's ``modes``)."""


def apply_directory_settings(cfg: Any, mode: str, directory: str | os.PathLike) -> bool:
    """When ``directory`` (a ``--checkpoint-dir``) holds :data:`SAMPLING_FILE` (a ``train.py
    --export`` folder) or a videomv-tiny ``manifest.json``, apply its ``mode`` settings to
    ``cfg`` as :func:`apply_sampling_defaults` does and return True; else leave ``cfg`` (the
    released full-size settings) and return False."""
    root = Path(directory)
    for name in (SAMPLING_FILE, MANIFEST):
        path = root / name
        if path.is_file():
            try:
                settings = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise TinyWeightsError(f"{str(path)!r} is not valid JSON: {err}") from err
            if mode not in settings.get("modes", {}):
                return False
            apply_sampling_defaults(cfg, mode, root, settings)
            return True
    return False


def use_default_model(cfg: Any, mode: str) -> dict[str, Any]:
    """What ``sample.py`` / ``eval.py`` do without ``--checkpoint-dir``: :func:`verify` the
    packaged weights, point ``cfg`` at them with their ``mode`` sampling settings, and return
    the manifest (vocabulary, world). Raises :class:`TinyWeightsError`."""
    manifest = verify()
    apply_sampling_defaults(cfg, mode, manifest=manifest)
    return manifest


def caption_words(text: str) -> set[str]:
    """The lower-case words of ``text``: how the vocabulary is built from the training captions
    (``tools/package_tiny.py``) and how prompts are checked against it."""
    return set(re.findall(r"[a-z]+", text.lower()))


def unknown_words(prompt: str, manifest: Mapping[str, Any] | None = None) -> list[str]:
    """Words of ``prompt`` that never occur in videomv-tiny's training captions."""
    manifest = load_manifest() if manifest is None else manifest
    return sorted(caption_words(prompt) - set(manifest.get("vocabulary", ())))
