#!/usr/bin/env python
"""Deepen a converted CLIP text tower (e.g. an exported videomv-tiny ``clip_text``) without
changing its output, for ``train.py``'s ``models.text.init_from``.

    python tools/grow_text_encoder.py runs/tiny-final3/clip_text runs/text-grown4 --layers 4
    python train.py --config t2mv --preset tiny ... --set models.text.config.layers=4 \\
        --set models.text.init_from=runs/text-grown4 --set models.unet.init_from=.../unet

The new blocks start as exact identities (zero output projections; see
``videomv_jax/train/grow.py``); the tokenizer directory, if any, is copied along.
"""

from __future__ import annotations

import argparse
import os

import jax.numpy as jnp


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="converted clip-text directory")
    p.add_argument("out", help="directory to write (must not exist or be empty)")
    p.add_argument("--layers", type=int, required=True, help="total transformer blocks")
    p.add_argument("--seed", type=int, default=0, help="initialisation of the new blocks")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)

    from videomv_jax.model_store import load_converted, save_converted
    from videomv_jax.models.clip import CLIPTextModel
    from videomv_jax.train.grow import deepen_text_encoder

    model, _ = load_converted(args.source)
    if not isinstance(model, CLIPTextModel):
        raise SystemExit(f"{args.source} holds a {type(model).__name__}, not a CLIP text tower")
    grown = deepen_text_encoder(model, args.layers, args.seed)
    probe = jnp.arange(model.config.context_length)[None] % model.config.vocab_size
    diff = float(jnp.abs(grown(probe) - model(probe)).max())
    if diff != 0.0:
        raise SystemExit(f"internal error: the deepened tower's output moved by {diff}")
    tok = os.path.join(args.source, "tokenizer")
    extra = [(tok, "tokenizer")] if os.path.isdir(tok) else []
    save_converted(args.out, "clip-text", grown.config, grown,
                   {"grown_from": os.path.abspath(args.source), "layers_before":
                    model.config.layers, "seed": args.seed}, extra_files=extra,
                   overwrite=args.overwrite)
    print(f"wrote {args.out}: {model.config.layers} -> {args.layers} blocks, output unchanged")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
