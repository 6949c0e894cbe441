#!/usr/bin/env python
"""Convert a released PyTorch / safetensors checkpoint into a converted-model directory.

    python tools/convert_torch_weights.py KIND SOURCE_CKPT OUT_DIR --format FORMAT \\
        [--config PRESET|JSON] [--tokenizer-dir DIR] [--overwrite] [--dry-run]

The output directory (``config.json`` + orbax ``params/`` + optional ``tokenizer/``) is loaded
with ``videomv_jax.convert.checkpoint.load_converted(OUT_DIR, mesh=...)``, which restores the
weights directly into (sharded) device arrays.

Checks: the conversion table of KIND/FORMAT is generated from the model config and applied
against the abstract model (no weights allocated); every model parameter must be filled exactly
once, every checkpoint key used or deliberately ignored and every shape must match. Otherwise the
full list of missing / unexpected / mis-shaped / duplicated keys is printed and the exit code is
2 (also for an unreadable checkpoint or bad arguments); nothing is written in that case.

Host memory: the peak stays near one copy of the weights (plus one tensor):

1. the source is read once into a dict of numpy arrays (``.pth``/``.bin``/``.ckpt`` via torch,
   ``.safetensors`` without torch); keys outside the model (other prefixes, ignored keys) are
   dropped before converting;
2. the layout check runs on zero-strided placeholders of the source shapes (no memory);
3. tensors are converted one at a time (transpose to the Flax layout, cast to the parameter
   dtype, moved into a host-CPU jax array), and each source entry is deleted from the dict as
   soon as its last rule used it, so the source shrinks as the converted dict grows;
4. orbax writes the converted CPU jax arrays (for jax arrays it stages only a bounded amount
   of data; numpy leaves would be copied as a whole first). No model is instantiated.

Exit codes: 0 done, 2 conversion / input error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parser() -> argparse.ArgumentParser:
    from videomv_jax.convert.registry import describe_kinds

    p = argparse.ArgumentParser(
        prog="convert_torch_weights.py",
        description="Convert PyTorch/safetensors weights into a videomv_jax converted-model "
                    "directory (config.json + orbax params/).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="model kinds, presets and source formats:\n" + describe_kinds() + "\n\n"
               "KIND may also be 'package.module:ATTR' naming a videomv_jax.convert.registry."
               "ModelKind (plug-in models).\n\n"
               "examples:\n"
               "  convert_torch_weights.py unet-t2v t2v_00333000.pth out/unet-t2v --format vgen\n"
               "  convert_torch_weights.py vae v2-1_512-ema-pruned.ckpt out/vae --format ldm\n"
               "  convert_torch_weights.py clip-text open_clip_pytorch_model.bin out/clip-text "
               "--format open_clip --tokenizer-dir tokenizer/\n\n"
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
                   help="model config: a preset name (default: the kind's default preset, "
                        "the full-size model), a JSON file, or inline JSON '{...}' with the "
                        "config's to_dict() fields (a converted directory's config.json also "
                        "works)")
    p.add_argument("--tokenizer-dir", default=None, metavar="DIR",
                   help="copy this directory into OUT_DIR/tokenizer (e.g. the text tokenizer "
                        "files)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty OUT_DIR")
    p.add_argument("--dry-run", action="store_true",
                   help="read and check the checkpoint against the model, write nothing")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def _err(msg: str) -> int:
    print(f"convert_torch_weights.py: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    import jax

    from videomv_jax.convert.base import (
        CheckpointReadError,
        ConversionError,
        load_source_checkpoint,
    )
    from videomv_jax.convert.checkpoint import save_converted
    from videomv_jax.convert.registry import (
        check_source,
        convert_source,
        get_kind,
        resolve_config,
    )

    try:
        kind = get_kind(args.kind)
        kind.format(args.fmt)
        config = resolve_config(kind, args.config)
    except (ValueError, ImportError) as err:
        return _err(str(err))
    if args.tokenizer_dir is not None and not os.path.isdir(args.tokenizer_dir):
        return _err(f"--tokenizer-dir {args.tokenizer_dir!r} is not a directory")
    out = args.out_dir
    if (not args.dry_run and os.path.exists(out) and not args.overwrite
            and (not os.path.isdir(out) or os.listdir(out))):
        return _err(f"{out!r} exists and is not empty (use --overwrite)")

    t0 = time.time()
    print(f"reading {args.source} ...", file=sys.stderr)
    try:
        source = load_source_checkpoint(args.source)
    except (FileNotFoundError, ImportError, CheckpointReadError) as err:
        return _err(str(err))
    except Exception as err:  # torch/safetensors/zip/pickle errors on a damaged file
        return _err(f"cannot read checkpoint {args.source!r} (damaged or not a state dict): "
                    f"{type(err).__name__}: {err}")
    source_info = {
        "path": os.path.abspath(args.source),
        "file": os.path.basename(args.source),
        "bytes": os.path.getsize(args.source),
        "format": args.fmt,
        "num_tensors": len(source),
    }
    try:
        if args.dry_run:
            n = check_source(kind, args.fmt, source, config)
            print(f"ok: {args.source} fits {kind.name} ({n} tensors); nothing written "
                  f"(--dry-run)", file=sys.stderr)
            return 0
        converted = convert_source(kind, args.fmt, source, config, progress=not args.no_progress,
                                   device=jax.devices("cpu")[0])
    except ConversionError as err:
        print(str(err), file=sys.stderr)
        return 2
    except ImportError as err:
        return _err(f"the model code for {kind.name!r} cannot be imported: {err}")
    del source
    n_params = sum(int(v.size) for v in converted.values())
    extra = [(args.tokenizer_dir, "tokenizer")] if args.tokenizer_dir else []
    path = save_converted(out, args.kind, config, converted, source_info, extra,
                          overwrite=args.overwrite, check=False)
    print(f"wrote {path} ({kind.name}, {len(converted)} tensors, {n_params:,} parameters) in "
          f"{time.time() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
