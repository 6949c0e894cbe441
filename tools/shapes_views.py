#!/usr/bin/env python
"""Write held-out procedural ``shapes`` scenes as view folders for ``eval.py``.

Each scene becomes ``OUT/NNN_seedS/`` with 24 RGBA PNGs (``000.png`` …, the analytic ray-cast
ground truth, transparent background) and a ``cameras.json`` orbit (elevation, distance,
fov), the GSO-style ``cameras`` layout that ``eval.py folders`` / ``consistency`` read. The
default world, orbit and seeds are videomv-tiny's held-out set (seeds 1,000,000 + i, never
used for training), so e.g. a reconstructor can be scored on ground-truth inputs::

    python tools/shapes_views.py --out runs/gt-heldout --num-samples 32
    python eval.py consistency --generated runs/gt-heldout --background 0.5,0.5,0.5 \\
        --lgm-checkpoint runs/final6/lgm --no-fit --out runs/lgm-gt-a
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from videomv_jax.data.shapes import HELD_OUT_SEED_OFFSET, NEXT_TO  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder to write the scene folders into")
    p.add_argument("--num-samples", type=int, required=True)
    p.add_argument("--seed-offset", type=int, default=HELD_OUT_SEED_OFFSET)
    p.add_argument("--num-views", type=int, default=24)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--elevation", type=float, default=None,
                   help="orbit elevation in degrees (default: videomv-tiny's, 15)")
    p.add_argument("--distance", type=float, default=None,
                   help="orbit camera distance (default: videomv-tiny's, 1.645)")
    p.add_argument("--max-objects", type=int, choices=(1, 2, 3), default=None,
                   help="at most this many primitives (default: videomv-tiny's world)")
    p.add_argument("--fit-radius", type=float, default=None)
    p.add_argument("--next-to", choices=NEXT_TO, default=None)
    p.add_argument("--max-size-ratio", type=float, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.num_samples < 1:
        p.error("--num-samples must be >= 1")
    if args.num_views < 1 or args.resolution < 8:
        p.error("--num-views must be >= 1 and --resolution >= 8")

    from videomv_jax.data import images as image_io
    from videomv_jax.data.shapes import random_scene, render_scene, resolve_world
    from videomv_jax.render.camera import DEFAULT_FOVY_DEG
    from videomv_jax.tiny import load_manifest

    manifest = load_manifest()
    t2mv = manifest["modes"]["t2mv"]
    elevation = float(t2mv["elevation"] if args.elevation is None else args.elevation)
    distance = float(t2mv["distance"] if args.distance is None else args.distance)
    try:  # the world is checked before anything is written
        world = resolve_world(manifest["world_config"], max_objects=args.max_objects,
                              fit_radius=args.fit_radius, next_to=args.next_to,
                              max_size_ratio=args.max_size_ratio)
    except ValueError as err:
        p.error(f"shapes world: {err}")

    os.makedirs(args.out, exist_ok=True)
    for i in range(args.num_samples):
        seed = args.seed_offset + i
        scene = random_scene(seed, world["max_objects"], world["fit_radius"], world["next_to"],
                             world["max_size_ratio"])
        rgba, _ = render_scene(scene, args.num_views, args.resolution, elevation, distance,
                               DEFAULT_FOVY_DEG)
        d = os.path.join(args.out, f"{i:03d}_seed{seed}")
        os.makedirs(d, exist_ok=True)
        # render_scene's alpha is 1 on hits and 0 elsewhere (colour 0 there), so its RGBA is
        # already the straight alpha that PNG stores
        for v in range(args.num_views):
            image_io.write_image(os.path.join(d, f"{v:03d}.png"), rgba[v])
        with open(os.path.join(d, "cameras.json"), "w") as f:
            json.dump({"elevation": elevation, "distance": distance,
                       "fovy_deg": DEFAULT_FOVY_DEG, "caption": scene.caption,
                       "seed": seed, "world": world}, f, indent=1)
    print(f"wrote {args.num_samples} scene folders to {args.out} (world {world}, "
          f"elevation {elevation}, distance {distance})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
