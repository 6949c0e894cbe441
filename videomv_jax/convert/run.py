"""Conversion runs behind ``tools/convert_torch_weights.py``: one model, or a whole release.

:func:`convert_file` converts one checkpoint file into a converted-model directory: the source
is opened lazily (:func:`~videomv_jax.convert.base.open_source_checkpoint`: names and shapes
only), the config is read off its shapes unless given (:func:`~videomv_jax.convert.infer.
infer_config`), and tensors are read, converted, written and released one at a time
(:func:`~videomv_jax.convert.registry.iter_converted` into
:func:`~videomv_jax.model_store.save_converted`; only the keys the model uses are ever read).

:func:`convert_release` writes the directory that ``sample.py --checkpoint-dir`` reads
(``unet/ vae/ clip_text/ (+tokenizer/) lgm/`` and, for image→MV, ``clip_vision/``) from the
released files, then checks that every part loads (parameter layout against its model) and
that the parts fit each other.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path as FsPath
from typing import Any

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def config_summary(config: Any) -> str:
    """The config as one JSON line (what :func:`convert_file` prints)."""
    return json.dumps(config.to_dict(), default=str)


def choose_config(kind: Any, fmt: str, source: Any, spec: str | None) -> tuple[Any, str]:
    """``(config, how)`` for converting ``source``: read off its shapes
    (:func:`~videomv_jax.convert.infer.infer_config`) when ``spec`` is ``None``; a preset name
    replaces it; JSON fields (a file or inline ``{...}``) override those fields of the config
    read off the shapes (the rest stays as read), or of the defaults when the shapes cannot be
    placed."""
    from videomv_jax.convert.base import ConversionError
    from videomv_jax.convert.infer import ConfigInferenceError, infer_config
    from videomv_jax.convert.registry import get_kind, resolve_config
    from videomv_jax.models.registry import config_fields

    k = get_kind(kind)
    if spec is None:
        return infer_config(k, fmt, source)
    fields = config_fields(k, spec)
    if fields is None:
        return resolve_config(k, spec), f"--config preset {spec!r}"
    try:
        inferred, how = infer_config(k, fmt, source)
    except (ConfigInferenceError, ConversionError):
        return resolve_config(k, spec), f"--config {spec} (defaults for the fields not given)"
    merged = k.config_from_dict({**inferred.to_dict(), **fields})
    return merged, f"{how}, with {', '.join(sorted(fields))} from --config"


def convert_file(
    kind: str,
    fmt: str,
    source_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    config: str | None = None,
    storage_dtype: str | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    log: Log = _stderr,
) -> tuple[FsPath | None, Any]:
    """Convert ``source_path`` (``.pth``/``.bin``/``.ckpt``/``.safetensors``) as ``kind`` /
    ``fmt`` into ``out_dir``; returns ``(written directory or None for dry_run, config)``.

    ``config``: ``None`` reads the sizes off the checkpoint (printed); a preset name replaces
    them, JSON fields override those fields (:func:`choose_config`). ``storage_dtype``
    (``"float16"``/``"bfloat16"``) converts and stores floating parameters in that dtype (a
    half-precision release stays half: half the memory and disk); loading casts them to the
    model's dtype. A ``clip-text`` model with OpenCLIP's 49,408-token vocabulary gets the
    shipped OpenCLIP tokenizer in ``tokenizer/`` unless ``tokenizer_dir`` names another.
    Raises ``ConversionError`` / ``ConfigInferenceError`` / ``ValueError`` /
    ``FileNotFoundError`` with a message for the user.
    """
    from videomv_jax.convert.base import open_source_checkpoint
    from videomv_jax.convert.registry import (
        check_source,
        get_kind,
        iter_converted,
        kind_ref,
    )
    from videomv_jax.model_store import save_converted

    k = get_kind(kind)
    k.format(fmt)
    if storage_dtype is not None and storage_dtype not in ("float16", "bfloat16", "float32"):
        raise ValueError(f"--storage-dtype must be float16, bfloat16 or float32, got "
                         f"{storage_dtype!r}")
    out = FsPath(out_dir)
    if (not dry_run and out.exists() and not overwrite
            and (not out.is_dir() or any(out.iterdir()))):
        raise FileExistsError(f"{str(out)!r} exists and is not empty (use --overwrite)")
    t0 = time.time()
    source = open_source_checkpoint(source_path)
    n_tensors = len(source)
    cfg, how = choose_config(k, fmt, source, config)
    log(f"{k.name} config ({how}): {config_summary(cfg)}")
    if dry_run:
        n = check_source(k, fmt, source, cfg)
        log(f"ok: {source_path} fits {k.name} ({n} tensors); nothing written (--dry-run)")
        return None, cfg
    extra: list[tuple[str | os.PathLike, str]] = []
    tmp = None
    if tokenizer_dir is not None:
        if not os.path.isdir(tokenizer_dir):
            raise ValueError(f"--tokenizer-dir {os.fspath(tokenizer_dir)!r} is not a directory")
        extra.append((tokenizer_dir, "tokenizer"))
    elif k.name == "clip-text":
        from videomv_jax.models.clip_tokenizer import OPENCLIP_VOCAB_SIZE, openclip_tokenizer

        if cfg.vocab_size == OPENCLIP_VOCAB_SIZE:
            tmp = tempfile.TemporaryDirectory()
            openclip_tokenizer().save(tmp.name)
            extra.append((tmp.name, "tokenizer"))
            log("tokenizer: the shipped OpenCLIP BPE vocabulary (49,408 tokens)")
    try:
        # tensors are read, converted and written one at a time (the layout was checked when
        # iter_converted was called, before anything is read or written)
        converted = iter_converted(k, fmt, source, cfg, progress=progress, dtype=storage_dtype)
        del source
        info = {"path": os.path.abspath(source_path), "file": os.path.basename(source_path),
                "bytes": os.path.getsize(source_path), "format": fmt, "num_tensors": n_tensors,
                "config_from": how}
        path = save_converted(out, kind if isinstance(kind, str) else kind_ref(k), cfg,
                              converted, info, extra,
                              overwrite=overwrite, check=False, storage_dtype=storage_dtype)
    finally:
        if tmp is not None:
            tmp.cleanup()
    meta = json.loads((path / "config.json").read_text())
    log(f"wrote {path} ({k.name}, {meta['num_params']:,} parameters"
        f"{', stored as ' + storage_dtype if storage_dtype else ''}) in {time.time() - t0:.1f}s")
    return path, cfg


def verify_converted(directory: str | os.PathLike, kind: str) -> Any:
    """Check that ``directory`` loads as ``kind``: complete, and its stored parameter names and
    shapes are exactly those of the model its config.json builds (no tensor is read).
    Returns the config."""
    from videomv_jax.convert.base import abstract_params
    from videomv_jax.convert.registry import get_kind
    from videomv_jax.model_store import (
        PARAMS_DIR,
        ConvertedCheckpointError,
        _checkpointer,
        _compare_layout,
        _flatten_str_tree,
        _saved_tree_metadata,
        read_converted_config,
    )

    meta = read_converted_config(directory)
    if meta["model"] != kind:
        raise ConvertedCheckpointError(f"{os.fspath(directory)!r} holds a {meta['model']!r} "
                                       f"model, not {kind!r}")
    k = get_kind(kind)
    cfg = k.config_from_dict(meta["config"])
    with _checkpointer() as ckptr:
        saved = _flatten_str_tree(_saved_tree_metadata(ckptr, FsPath(directory).absolute()
                                                       / PARAMS_DIR))
    _compare_layout(saved, abstract_params(k.abstract(cfg)),
                    f"the parameters stored in {os.fspath(directory)!r}", k.name)
    return cfg


#: release mode → (UNet kind, parts)
RELEASE_MODES = {"t2mv": "unet-t2v", "i2mv": "unet-i2v"}


def _clip_format(path: str | os.PathLike) -> str:
    from videomv_jax.convert.base import open_source_checkpoint

    keys = open_source_checkpoint(path)
    hf = any(k.startswith(("text_model.", "vision_model.")) for k in keys)
    return "hf" if hf else "open_clip"


def convert_release(
    mode: str,
    unet: str | os.PathLike,
    vae: str | os.PathLike,
    clip: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    lgm: str | os.PathLike | None = None,
    vae_format: str = "ldm",
    tokenizer_dir: str | os.PathLike | None = None,
    storage_dtype: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Log = _stderr,
) -> FsPath:
    """Convert a VideoMV release into the checkpoint directory of ``sample.py {mode}
    --checkpoint-dir OUT``: the UNet (``t2mv``: text, ``i2mv``: image) and the LGM from the
    VideoMV ``.pth`` (its ``lgm_big.*`` keys; or ``lgm``: LGM's own ``model.safetensors``),
    the VAE (``vae``: the LDM / Stable Diffusion checkpoint), the OpenCLIP ViT-H-14 text tower
    (and, for ``i2mv``, the vision tower) from ``clip`` with OpenCLIP's tokenizer (or
    ``tokenizer_dir``'s ``vocab.json`` + ``merges.txt``). Each part's
    config is read off its checkpoint. Then every part is verified to load and the parts to fit
    each other. Returns the directory."""
    if mode not in RELEASE_MODES:
        raise ValueError(f"mode must be one of {sorted(RELEASE_MODES)}, got {mode!r}")
    for flag, path in (("--unet", unet), ("--vae", vae), ("--clip", clip), ("--lgm", lgm)):
        if path is not None and not os.path.isfile(path):
            raise FileNotFoundError(f"{flag} {os.fspath(path)!r} does not exist")
    out = FsPath(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{str(out)!r} exists and is not empty (use --overwrite)")
    clip_fmt = _clip_format(clip)
    parts = [("unet", RELEASE_MODES[mode], "vgen", unet),
             ("lgm", "lgm", "lgm" if lgm is not None else "vgen", lgm if lgm is not None else unet),
             ("vae", "vae", vae_format, vae),
             ("clip_text", "clip-text", clip_fmt, clip)]
    if mode == "i2mv":
        parts.append(("clip_vision", "clip-vision", clip_fmt, clip))
    t0 = time.time()
    for sub, kind, fmt, path in parts:
        log(f"[{sub}] {kind} from {path} (--format {fmt})")
        convert_file(kind, fmt, path, out / sub, storage_dtype=storage_dtype,
                     tokenizer_dir=tokenizer_dir if kind == "clip-text" else None,
                     overwrite=overwrite, progress=progress, log=log)
    configs = {sub: verify_converted(out / sub, kind) for sub, kind, _, _ in parts}
    check_release(out, configs, mode)
    log(f"release {mode} written to {out} and verified ({time.time() - t0:.0f}s): "
        f"python sample.py {mode} --checkpoint-dir {out} ...")
    return out


def check_release(out: FsPath, configs: dict[str, Any], mode: str) -> None:
    """The parts of a release directory fit each other and the tokenizer fits the text
    encoder (the checks the pipeline makes when loading, without loading weights)."""
    from videomv_jax.models.clip_tokenizer import load_tokenizer

    unet, text = configs["unet"], configs["clip_text"]
    problems = []
    if text.width != unet.context_dim:
        problems.append(f"CLIP text width {text.width} != UNet context_dim {unet.context_dim}")
    if mode == "i2mv" and configs["clip_vision"].output_dim != unet.image_embed_dim:
        problems.append(f"CLIP vision output_dim {configs['clip_vision'].output_dim} != UNet "
                        f"image_embed_dim {unet.image_embed_dim}")
    if configs["vae"].embed_dim != unet.in_channels:
        problems.append(f"VAE latent channels {configs['vae'].embed_dim} != UNet in_channels "
                        f"{unet.in_channels}")
    tok = load_tokenizer(out / "clip_text" / "tokenizer")
    try:
        tok.check_fits(text.vocab_size)
    except ValueError as err:
        problems.append(str(err))
    if problems:
        raise ValueError(f"the converted parts of {str(out)!r} do not fit together: "
                         + "; ".join(problems))
