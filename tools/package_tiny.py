"""Package trained videomv-tiny exports into ``videomv_jax/weights/videomv_tiny``.

    python tools/package_tiny.py --t2mv runs/tiny --i2mv runs/tiny-i2mv --i2mv-text t2mv \\
        --data runs/data/videomv_shapes/n3000_s0_r64_m2_fit0.5/1.0.0 --example-seeds 1000000

``--t2mv`` is a ``train.py --export`` directory with ``unet/`` (text UNet), ``vae/``,
``clip_text/`` (+ ``tokenizer/``) and ``lgm/``; ``--i2mv`` one with ``unet/`` (image UNet) and
``clip_vision/``; ``--i2mv-text`` the text tower the image mode samples with, packaged as
``clip_text_i2v``: ideally the one the image UNet was trained against (its run's
``models.text.checkpoint``), so that training the text model further (or growing its tower)
does not change the image model's text context; ``t2mv`` when the image UNet was trained
against the text model's own ``clip_text`` (no second copy is packaged). Every model is
re-saved with float16 parameter storage (the loader casts back to float32) and its training
record kept in ``config.json``; a few held-out ``shapes`` views are written as example inputs
for image→MV. The manifest (file hashes, per-mode sampling settings, caption vocabulary) is
written last; put the printed SHA-256 into ``videomv_jax/tiny.py:MANIFEST_SHA256``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: (source export, model name there, packaged name, kind)
LAYOUT = (
    ("t2mv", "unet", "unet", "unet-t2v"),
    ("t2mv", "vae", "vae", "vae"),
    ("t2mv", "clip_text", "clip_text", "clip-text"),
    ("t2mv", "lgm", "lgm", "lgm"),
    ("i2mv", "unet", "unet_i2v", "unet-i2v"),
    ("i2mv", "clip_vision", "clip_vision", "clip-vision"),
    ("i2mv_text", "", "clip_text_i2v", "clip-text"),
)
#: packaged name of the image mode's own text tower (``--i2mv-text DIR``)
I2MV_TEXT = next(name for src, _, name, _ in LAYOUT if src == "i2mv_text")

#: sampling settings per mode (dotted config keys of configs/t2mv.py / configs/i2mv.py)
SAMPLING = {
    "t2mv": {"resolution": 64, "elevation": 15.0, "distance": 1.645,
             "sampler.num_steps": 25, "sampler.aware_steps": [10, 15, 20],
             "sampler.guidance_scale": 3.0, "sampler.render_size": 64,
             "sampler.capacity_per_scene": 1 << 20},
    "i2mv": {"subdirs.unet": "unet_i2v", "resolution": 64, "elevation": 15.0,
             "distance": 1.645, "recenter": False, "sampler.num_steps": 25,
             "sampler.aware_steps": [10, 15, 20], "sampler.guidance_scale": 3.0,
             "sampler.render_size": 64, "sampler.background": 1.0,
             "sampler.capacity_per_scene": 1 << 20},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--t2mv", required=True, help="text→MV export (unet, vae, clip_text, lgm)")
    p.add_argument("--i2mv", help="image→MV export (unet, clip_vision)")
    p.add_argument("--i2mv-text", help="converted clip-text directory the image mode samples "
                   "with, ideally the image UNet's training tower, or 't2mv' when that is the "
                   "text model's own tower (required with --i2mv)")
    p.add_argument("--data", required=True, help="the shapes data set the models were trained "
                   "on (caption vocabulary)")
    p.add_argument("--out", default=None, help="default: videomv_jax/weights/videomv_tiny")
    p.add_argument("--example-seeds", type=int, nargs="*", default=[1_000_000, 1_000_001],
                   help="held-out shapes seeds whose view 0 becomes an example input")
    p.add_argument("--max-objects", type=int, default=2,
                   help="the data set's max_objects (for the example inputs)")
    p.add_argument("--fit-radius", type=float, default=0.5,
                   help="the data set's fit_radius (for the example inputs)")
    p.add_argument("--next-to", choices=("random", "left_right"), default="random",
                   help="the data set's next_to (for the example inputs and eval.py's world)")
    p.add_argument("--max-size-ratio", type=float, default=None,
                   help="the data set's max_size_ratio (for the example inputs and eval.py's "
                        "world)")
    p.add_argument("--card", default="docs/videomv-tiny.md", help="model card path (recorded)")
    p.add_argument("--set", action="append", default=[], metavar="MODE.KEY=VALUE",
                   help="override a sampling setting, e.g. t2mv.sampler.guidance_scale=4")
    args = p.parse_args(argv)

    import numpy as np

    if args.i2mv and not args.i2mv_text:
        p.error("--i2mv needs --i2mv-text: the clip-text directory the image mode samples with "
                "(ideally the image UNet's training run's models.text.checkpoint)")

    from videomv_jax import tiny
    from videomv_jax.data import images as image_io
    from videomv_jax.data.builders import ShapesConfig, load_source, shapes_example
    from videomv_jax.model_store import (
        load_converted,
        read_converted_config,
        save_converted,
    )

    # the world of the example inputs and of eval.py; checked before the output folder is wiped
    try:
        shapes_cfg = ShapesConfig(name="examples", resolution=64, max_objects=args.max_objects,
                                  fit_radius=args.fit_radius, next_to=args.next_to,
                                  max_size_ratio=args.max_size_ratio)
    except ValueError as err:
        p.error(f"the data set's world: {err}")
    out = args.out or str(tiny.weights_dir())
    shared_text = args.i2mv_text == "t2mv"  # the image UNet was trained against clip_text
    sources = {"t2mv": args.t2mv, "i2mv": args.i2mv,
               "i2mv_text": None if shared_text else args.i2mv_text}
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    record = {}
    for src_name, model, name, kind in LAYOUT:
        root = sources[src_name]
        if root is None:
            continue
        sub = os.path.join(root, model)
        meta = read_converted_config(sub)
        net, cfg = load_converted(sub, kind=kind)
        extra = [(os.path.join(sub, e), e) for e in meta.get("extra_files", [])]
        info = dict(meta.get("source", {}))
        info.pop("workdir", None)  # a local path of the training machine
        save_converted(os.path.join(out, name), kind, cfg, net, info, extra,
                       storage_dtype="float16")
        record[name] = {"kind": kind, "num_params": meta["num_params"], **info}
        print(f"packaged {sub} → {name} ({meta['num_params']:,} params)")

    source = load_source(args.data)
    words: set[str] = {"3d", "asset"}
    for i in range(len(source)):
        cap = source[i]["caption"]
        words.update(tiny.caption_words(cap if isinstance(cap, str) else cap.decode()))
    sampling = {m: dict(v) for m, v in SAMPLING.items() if m == "t2mv" or args.i2mv}
    if args.i2mv and not shared_text:
        sampling["i2mv"]["subdirs.clip_text"] = I2MV_TEXT
    for item in args.set:
        key, value = item.split("=", 1)
        mode, key = key.split(".", 1)
        sampling[mode][key] = json.loads(value)

    if args.i2mv:
        os.makedirs(os.path.join(out, "examples"))
        examples = {}
        for seed in args.example_seeds:
            ex = shapes_example(shapes_cfg, seed)
            rgba = ex["views"][0].astype(np.float32) / 255.0  # premultiplied
            rgb = rgba[..., :3] + (1.0 - rgba[..., 3:])  # on white
            fname = f"{re.sub(r'[^a-z]+', '_', ex['caption'].lower()).strip('_')}.png"
            image_io.write_image(os.path.join(out, "examples", fname), image_io.to_uint8(rgb))
            examples[fname] = {"seed": seed, "caption": ex["caption"]}
    else:
        examples = {}

    info = {
        "name": "videomv-tiny",
        "card": args.card,
        "world": "procedural shapes: one or two primitives (sphere, cube, box, cylinder, cone, "
                 "torus) in ten colours, stacked ('on') or side by side ('next to')",
        "training_data": os.path.normpath(args.data),
        "world_config": {"max_objects": args.max_objects, "fit_radius": args.fit_radius,
                         "next_to": args.next_to, "max_size_ratio": args.max_size_ratio},
        "modes": sampling,
        "models": record,
        "examples": examples,
        "vocabulary": sorted(words),
    }
    digest = tiny.write_manifest(out, info)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"wrote {out}: {size / 2**20:.2f} MiB; manifest SHA-256 {digest}")
    print("set videomv_jax/tiny.py MANIFEST_SHA256 to that value")
    return 0


if __name__ == "__main__":
    sys.exit(main())
