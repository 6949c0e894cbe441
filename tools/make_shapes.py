#!/usr/bin/env python
"""Build the multi-view TFDS data sets (array_record) used for training.

Procedural shapes (default mode)::

    python tools/make_shapes.py --num-objects 1000 --resolution 256 --data-dir DATA \\
        [--seed-offset 0] [--hr-resolution 512] [--elevation-range 5 30] [--strict]

G-Objaverse renders (``<root>/<dir>/<id>/campos_512_v4/000NN/000NN.{png,json}``)::

    python tools/make_shapes.py --gobjaverse-root ROOT --captions text_captions_cap3d.json \\
        [--objects lvis_thres_28.json] --resolution 256 [--hr-resolution 512] --data-dir DATA \\
        [--no-require-caption] [--strict]

The data set lands in ``DATA/videomv_<name>/<config-name>/1.0.0`` (printed at the end); open it
with ``videomv_jax.data.load_source(PATH)``. Bad examples (missing view or camera, unreadable
PNG, missing caption) are skipped and listed with their paths and count at the end, or stop the
build under ``--strict`` (nothing is written then).

Exit codes: 0 built (bad examples, if any, are listed), 2 strict failure or bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="make_shapes.py",
        description="Build the procedural 'shapes' (default) or the G-Objaverse multi-view "
                    "TFDS data set as array_record.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data-dir", required=True, help="TFDS data directory to write into")
    p.add_argument("--resolution", type=int, default=None,
                   help="stored view size (default: 64 for shapes, 256 for G-Objaverse)")
    p.add_argument("--hr-resolution", type=int, default=None,
                   help="also store views_hr at this size (512 for the reconstructor)")
    p.add_argument("--config-name", default=None,
                   help="sub-folder name (default derived from the sizes)")
    p.add_argument("--strict", action="store_true", help="fail on the first bad example")
    s = p.add_argument_group("shapes")
    s.add_argument("--num-objects", type=int, default=None, help="number of shapes objects")
    s.add_argument("--seed-offset", type=int, default=0, help="seed of the first object")
    s.add_argument("--elevation-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="per-object orbit elevation drawn in [LO, HI] degrees (default: 15)")
    s.add_argument("--max-objects", type=int, default=3, choices=(1, 2, 3),
                   help="at most this many primitives per scene (default: 3)")
    s.add_argument("--fit-radius", type=float, default=None,
                   help="recentre and scale every scene to this bounding radius (at most 0.5; "
                        "drops size words from captions; videomv-tiny uses 0.5)")
    s.add_argument("--next-to", choices=("random", "left_right"), default="random",
                   help="'next to' pairs along a random horizontal axis, or left to right as "
                        "seen from the first view (the caption then fixes the layout)")
    s.add_argument("--max-size-ratio", type=float, default=None,
                   help="largest size ratio between the objects of a scene, at least 1 "
                        "(default: independent sizes, up to 3.2x; captions do not name sizes "
                        "with --fit-radius, so a small ratio lets the caption fix the scene)")
    g = p.add_argument_group("G-Objaverse")
    g.add_argument("--gobjaverse-root", default=None, help="root of the G-Objaverse renders")
    g.add_argument("--captions", default=None, help="captions JSON keyed by 'dir/id'")
    g.add_argument("--objects", default=None,
                   help="JSON list of 'dir/id' object names (default: scan the root)")
    g.add_argument("--no-require-caption", action="store_true",
                   help="objects without a caption get '' instead of being bad examples")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import tensorflow_datasets as tfds

    from videomv_jax.data.builders import build_dataset
    from videomv_jax.data.gobjaverse import BadExampleError

    tfds.disable_progress_bar()  # ours (tqdm over objects) replaces TFDS's
    config: dict = {"strict": args.strict, "progress": True, "config_name": args.config_name,
                    "hr_resolution": args.hr_resolution}
    if args.gobjaverse_root is not None:
        if args.num_objects is not None:
            print("error: --num-objects is for shapes, not --gobjaverse-root", file=sys.stderr)
            return 2
        name = "gobjaverse"
        config.update(root=args.gobjaverse_root, captions=args.captions,
                      object_list=args.objects, resolution=args.resolution or 256,
                      require_caption=not args.no_require_caption)
    else:
        if args.num_objects is None:
            print("error: pass --num-objects N (shapes) or --gobjaverse-root ROOT",
                  file=sys.stderr)
            return 2
        name = "shapes"
        config.update(num_objects=args.num_objects, seed_offset=args.seed_offset,
                      resolution=args.resolution or 64, max_objects=args.max_objects,
                      fit_radius=args.fit_radius, next_to=args.next_to,
                      max_size_ratio=args.max_size_ratio,
                      elevation_range=None if args.elevation_range is None
                      else tuple(args.elevation_range))
    try:
        result = build_dataset(name, args.data_dir, **config)
    except BadExampleError as err:
        print(f"error (--strict): bad example {err.path}: {err.reason}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"built {result.num_examples} examples at {result.path}")
    if result.num_bad:
        print(f"skipped {result.num_bad} bad example(s):")
        for bad in result.bad_examples:
            print(f"  {bad['path']}: {bad['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
