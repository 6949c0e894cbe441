#!/usr/bin/env python
"""Convert released PyTorch / safetensors checkpoints into converted-model directories.

One command per release (the directory ``sample.py MODE --checkpoint-dir OUT`` reads)::

    python tools/convert_torch_weights.py release t2mv --unet t2v_00333000.pth \\
        --vae v2-1_512-ema-pruned.ckpt --clip open_clip_pytorch_model.bin --out ckpt/t2mv
    python tools/convert_torch_weights.py release i2mv --unet i2v_00882000.pth \\
        --vae v2-1_512-ema-pruned.ckpt --clip open_clip_pytorch_model.bin --out ckpt/i2mv

writes ``unet/ lgm/ vae/ clip_text/ (+ tokenizer/)`` (and ``clip_vision/`` for i2mv), with the
LGM taken from the VideoMV file's ``lgm_big.*`` keys (or ``--lgm model.safetensors``) and the
shipped OpenCLIP tokenizer, then verifies that every part loads and that the parts fit.

One model::

    python tools/convert_torch_weights.py KIND SOURCE_CKPT OUT_DIR --format FORMAT \\
        [--config PRESET|JSON] [--storage-dtype float16] [--tokenizer-dir DIR] [--overwrite]
        [--dry-run]

The model's sizes are read off the checkpoint's tensor shapes and printed; ``--config`` only
overrides them (a preset name replaces them; JSON fields replace those fields, the rest stays as
read off the checkpoint). Load the result with ``videomv_jax.model_store.load_converted(OUT_DIR,
mesh=...)``, which restores the weights directly into (sharded) device arrays.

Checks: the conversion table of KIND/FORMAT is generated from the config and applied against
the abstract model (no weights allocated); every model parameter must be filled exactly once,
every checkpoint key used or deliberately ignored, every shape must match. Otherwise the full
list of missing / unexpected / mis-shaped / duplicated keys is printed and the exit code is 2
(also for an unreadable checkpoint, a checkpoint no config fits, or bad arguments); nothing is
written in that case.

Host memory: ``.pth`` files are memory-mapped (``torch.load(mmap=True, weights_only=True)``)
and ``.safetensors`` read tensor by tensor, so only the tensors the model uses are ever read,
one at a time, each converted straight into the parameter dtype (``--storage-dtype float16``
keeps a half-precision release in half precision), written to OUT_DIR/params and released
before the next: the process holds one tensor and a bounded write batch (64 MiB), not the model
(benchmarks/conversion_memory.py measures the peak).

Exit codes: 0 done, 2 conversion / input error.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    from videomv_jax.convert.registry import describe_kinds

    p = argparse.ArgumentParser(
        prog="convert_torch_weights.py",
        description="Convert PyTorch/safetensors weights into a videomv_jax converted-model "
                    "directory (config.json + orbax params/). For a whole release: "
                    "convert_torch_weights.py release --help.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="model kinds, presets and source formats:\n" + describe_kinds() + "\n\n"
               "KIND may also be 'package.module:ATTR' naming a videomv_jax.models.registry."
               "ModelKind whose formats are videomv_jax.convert.registry.SourceFormat "
               "(plug-in models).\n\n"
               "examples:\n"
               "  convert_torch_weights.py unet-t2v t2v_00333000.pth out/unet-t2v --format vgen\n"
               "  convert_torch_weights.py vae v2-1_512-ema-pruned.ckpt out/vae --format ldm\n"
               "  convert_torch_weights.py clip-text open_clip_pytorch_model.bin out/clip-text "
               "--format open_clip\n\n"
               "exit codes: 0 converted (or --dry-run passed), 2 the checkpoint does not fit "
               "the model, cannot be read, or bad arguments.",
    )
    p.add_argument("kind", metavar="KIND", help="model kind (see the list below)")
    p.add_argument("source", metavar="SOURCE_CKPT",
                   help="source checkpoint: .pth/.bin/.ckpt (read with torch; a {'state_dict': "
                        "...} wrapper is unwrapped) or .safetensors (no torch needed)")
    p.add_argument("out_dir", metavar="OUT_DIR",
                   help="output directory (created; must be empty unless --overwrite)")
    p.add_argument("--format", required=True, dest="fmt", metavar="FORMAT",
                   help="source naming scheme, e.g. vgen, diffusers, ldm, open_clip, hf "
                        "(per kind, see below)")
    p.add_argument("--config", default=None, metavar="PRESET|JSON",
                   help="override the config read off the checkpoint's shapes: a preset name "
                        "(replaces it), or a JSON file / inline JSON '{...}' with some of the "
                        "config's to_dict() fields (those replace the fields read off the "
                        "checkpoint; a converted directory's config.json also works)")
    _common(p)
    p.add_argument("--tokenizer-dir", default=None, metavar="DIR",
                   help="copy this directory into OUT_DIR/tokenizer (default for clip-text "
                        "with OpenCLIP's vocabulary: the shipped OpenCLIP tokenizer)")
    p.add_argument("--dry-run", action="store_true",
                   help="read and check the checkpoint against the model, write nothing")
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-dtype", default=None, choices=("float16", "bfloat16", "float32"),
                   help="convert and store the floating-point parameters in this dtype (e.g. "
                        "keep a float16 release in float16; loading casts to the model dtype)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def _release_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert_torch_weights.py release",
        description="Convert a VideoMV release into the directory that sample.py MODE "
                    "--checkpoint-dir reads (unet/ lgm/ vae/ clip_text/ with the OpenCLIP "
                    "tokenizer, and clip_vision/ for i2mv), and verify that it loads.")
    p.add_argument("mode", choices=("t2mv", "i2mv"), help="text- or image-to-multi-view")
    p.add_argument("--unet", required=True, metavar="PTH",
                   help="the VideoMV UNet checkpoint (t2mv: text, i2mv: image; VGen names, "
                        "with the lgm_big.* keys)")
    p.add_argument("--vae", required=True, metavar="CKPT",
                   help="the KL-f8 autoencoder: an LDM / Stable Diffusion checkpoint "
                        "(first_stage_model.* keys) or a bare autoencoder state dict")
    p.add_argument("--vae-format", default="ldm", choices=("ldm", "diffusers"))
    p.add_argument("--clip", required=True, metavar="BIN",
                   help="OpenCLIP ViT-H-14 (open_clip_pytorch_model.bin, or a transformers "
                        "CLIPModel state dict)")
    p.add_argument("--lgm", default=None, metavar="SAFETENSORS",
                   help="LGM's own model.safetensors (default: the lgm_big.* keys of --unet)")
    p.add_argument("--tokenizer-dir", default=None, metavar="DIR",
                   help="vocab.json + merges.txt for clip_text/tokenizer (default: the shipped "
                        "OpenCLIP tokenizer)")
    p.add_argument("--out", required=True, metavar="DIR", help="the checkpoint directory")
    _common(p)
    return p


def _err(msg: str) -> int:
    print(f"convert_torch_weights.py: error: {msg}", file=sys.stderr)
    return 2


def _run(fn, *args, **kwargs) -> int:
    from videomv_jax.convert.base import ConversionError

    try:
        fn(*args, **kwargs)
    except ConversionError as err:
        print(str(err), file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as err:
        return _err(str(err))
    except Exception as err:  # torch/zip/pickle errors on a damaged file
        return _err(f"cannot read checkpoint (damaged or not a state dict): "
                    f"{type(err).__name__}: {err}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from videomv_jax.convert import run

    if argv and argv[0] == "release":
        a = _release_parser().parse_args(argv[1:])
        return _run(run.convert_release, a.mode, a.unet, a.vae, a.clip, a.out, lgm=a.lgm,
                    vae_format=a.vae_format, tokenizer_dir=a.tokenizer_dir,
                    storage_dtype=a.storage_dtype,
                    overwrite=a.overwrite, progress=not a.no_progress)
    a = _parser().parse_args(argv)
    return _run(run.convert_file, a.kind, a.fmt, a.source, a.out_dir, config=a.config,
                storage_dtype=a.storage_dtype, tokenizer_dir=a.tokenizer_dir,
                overwrite=a.overwrite, dry_run=a.dry_run, progress=not a.no_progress)


if __name__ == "__main__":
    sys.exit(main())
