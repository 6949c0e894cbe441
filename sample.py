"""videomv-jax sampling entry point.

Two modes:

* **generation** (``--prompt`` / ``--prompts-file`` for text→MV, ``--image`` for image→MV):
  without ``--checkpoint-dir`` it uses **videomv-tiny**, the small model that ships inside the
  package (trained by us on the procedural ``shapes`` world at 64²; see
  ``docs/videomv-tiny.md``), with its own sampling settings. ``--checkpoint-dir`` takes
  converted checkpoints instead (``unet/``, ``vae/``, ``clip_text/`` (+ ``tokenizer/``),
  ``lgm/`` and, for images, ``clip_vision/``; see ``tools/convert_torch_weights.py``). Writes
  per sample ``out/<index>_<slug>/``: ``views/000.png…``, ``grid.png``, ``turntable.mp4`` (GIF
  fallback), ``gaussians.ply`` (final LGM reconstruction) and ``run.json``.
* **render-only** (neither): render a Gaussian asset (a ``.ply``, or a procedural demo asset)
  from the 24-view VideoMV orbit with the JAX rasterizer and write the views, a grid, a
  turntable video, the ``.ply`` and a JSON record.

Config overrides: ``--set key=value`` (dotted keys, e.g. ``sampler.num_steps=20``; values
parsed as Python literals, else strings).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections.config_flags import config_path  # noqa: E402
from tqdm import tqdm  # noqa: E402

from videomv_jax.data import images as image_io  # noqa: E402
from videomv_jax.render import camera  # noqa: E402
from videomv_jax.render.demo import sphere_on_box  # noqa: E402
from videomv_jax.render.gaussians import load_ply, save_ply  # noqa: E402
from videomv_jax.render.rasterize import PRESETS  # noqa: E402
from videomv_jax.render.turntable import render_orbit  # noqa: E402


class UsageError(ValueError):
    """A bad command line / input: printed as ``error: ...`` with exit code 2."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("generation (videomv-tiny, or converted checkpoints)")
    g.add_argument("--prompt", action="append", default=[],
                   help="text→MV prompt (repeatable)")
    g.add_argument("--prompts-file", help="text→MV batch: one prompt per line")
    g.add_argument("--image", action="append", default=[],
                   help="image→MV input (RGBA, or RGB on white; repeatable)")
    g.add_argument("--checkpoint-dir", help="converted models (unet/ vae/ clip_text/ lgm/ ...); "
                   "default: the packaged videomv-tiny")
    g.add_argument("--config", choices=("t2mv", "i2mv"),
                   help="config (default: t2mv for prompts, i2mv for images)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    g.add_argument("--negative-prompt")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    g.add_argument("--steps", type=int, help="DDIM steps (aware steps scale with it)")
    g.add_argument("--aware-steps", help="comma list of 3D-aware loop indices; '' = plain")
    g.add_argument("--also-plain", action="store_true",
                   help="as released, also sample plain DDIM from the same noise "
                        "(views_plain/, grid_plain.png)")
    g.add_argument("--seed", type=int)
    g.add_argument("--poses", help="JSON: F 4x4 OpenGL c2w (z-up) or {elevation, distance}")
    p.add_argument("--ply", help="render-only: Gaussian asset (default: a procedural demo)")
    p.add_argument("--out", default="outputs/demo", help="output folder")
    p.add_argument("--views", type=int, default=camera.NUM_VIEWS)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--elevation", type=float, help="orbit elevation in degrees (default: "
                   "15 text / render-only, 5 image)")
    p.add_argument("--distance", type=float, help="orbit distance (2.0 text, 1.7 image)")
    p.add_argument("--fovy", type=float, default=camera.DEFAULT_FOVY_DEG)
    p.add_argument("--preset", choices=sorted(PRESETS), default="inria")
    p.add_argument("--background", type=float, nargs=3, default=(1.0, 1.0, 1.0))
    p.add_argument("--fps", type=int, default=8)
    return p.parse_args(argv)


# ---- config overrides ---------------------------------------------------------------------------


def _flat_keys(cfg, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(cfg.keys()):
        v = cfg[k]
        if hasattr(v, "keys") and hasattr(v, "to_dict"):
            out.extend(_flat_keys(v, f"{prefix}{k}."))
        else:
            out.append(prefix + k)
    return out


def parse_value(text: str):
    """A Python literal (``3``, ``0.5``, ``(1, 2)``, ``None``, ``'x'``), else the raw string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def set_config_value(cfg, key: str, value) -> None:
    """Set dotted ``key``; unknown keys raise :class:`UsageError` listing the valid ones."""
    valid = _flat_keys(cfg)
    if key not in valid:
        raise UsageError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")
    old = config_path.get_value(key, cfg)
    if isinstance(old, tuple) and isinstance(value, (list, tuple, int)):
        value = tuple(value) if not isinstance(value, int) else (value,)
    elif isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif isinstance(old, str) and not isinstance(value, str):
        value = str(value)
    try:
        config_path.set_value(key, cfg, value)
    except (TypeError, ValueError) as err:
        raise UsageError(f"bad value for config key {key!r}: {value!r} ({err})") from err


def build_config(args: argparse.Namespace, mode: str):
    """``(config, manifest)``: the ml_collections config for ``mode`` with the command-line
    options applied; without ``--checkpoint-dir``, the packaged videomv-tiny and its sampling
    settings (which the command-line options still override) and its manifest, else
    ``None``."""
    from configs import i2mv, t2mv

    cfg = (t2mv if mode == "t2mv" else i2mv).get_config()
    manifest = None
    if not args.checkpoint_dir:
        from videomv_jax import tiny

        try:
            manifest = tiny.use_default_model(cfg, mode)
        except tiny.TinyWeightsError as err:
            raise UsageError(str(err)) from err
    for item in args.set:
        if "=" not in item:
            raise UsageError(f"--set needs KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        set_config_value(cfg, k.strip(), parse_value(v.strip()))
    if args.checkpoint_dir:
        cfg.checkpoint_dir = args.checkpoint_dir
    if args.negative_prompt is not None:
        cfg.negative_prompt = args.negative_prompt
    if args.guidance is not None:
        cfg.sampler.guidance_scale = float(args.guidance)
    if args.steps is not None:
        old = cfg.sampler.num_steps
        cfg.sampler.num_steps = args.steps
        if args.aware_steps is None:  # keep the released fractions (20/30/40 of 50)
            cfg.sampler.aware_steps = tuple(sorted({i * args.steps // old
                                                    for i in cfg.sampler.aware_steps}))
    if args.aware_steps is not None:
        try:
            cfg.sampler.aware_steps = tuple(int(s) for s in args.aware_steps.split(",")
                                            if s.strip())
        except ValueError as err:
            raise UsageError(f"--aware-steps must be a comma list of ints, got "
                             f"{args.aware_steps!r}") from err
    if args.seed is not None:
        cfg.seed = args.seed
    if args.also_plain:
        cfg.also_plain = True
    if args.elevation is not None:
        cfg.elevation = args.elevation
    if args.distance is not None:
        cfg.distance = args.distance
    return cfg, manifest


def _slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    return s[:limit] or "sample"


def _json_safe(obj):
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple)
                                 else str(o)))


def generate(args: argparse.Namespace) -> int:
    """Text→MV / image→MV sampling with converted checkpoints."""
    from videomv_jax.pipeline import CONVERT_HINT, MultiViewPipeline, load_poses

    prompts = list(args.prompt)
    if args.prompts_file:
        if not os.path.isfile(args.prompts_file):
            raise UsageError(f"--prompts-file {args.prompts_file!r} does not exist")
        with open(args.prompts_file, encoding="utf-8") as f:
            prompts += [ln.strip() for ln in f if ln.strip()]
        if not prompts:
            raise UsageError(f"--prompts-file {args.prompts_file!r} holds no prompts")
    if prompts and args.image:
        raise UsageError("give either prompts (text→MV) or --image (image→MV), not both")
    mode = args.config or ("i2mv" if args.image else "t2mv")
    if (mode == "t2mv") != bool(prompts):
        raise UsageError(f"--config {mode} does not fit the inputs given (prompts for t2mv, "
                         f"--image for i2mv)")
    cfg, manifest = build_config(args, mode)
    for path in args.image:  # input errors before any model loading
        if not os.path.isfile(path):
            raise UsageError(f"image file {path!r} does not exist")
    poses = load_poses(args.poses, cfg.num_frames) if args.poses else None
    default_model = manifest is not None
    notes = []
    if default_model:
        from videomv_jax import tiny
        from videomv_jax.data.shapes import KINDS, PALETTE

        shapes_words = ", ".join(k if k != "box" else "cube, box" for k in KINDS)
        notes.append("default model videomv-tiny: a small model trained by us on the "
                     "procedural 'shapes' world (one or two coloured primitives) at 64x64; it "
                     "knows nothing else. Full-size VideoMV needs --checkpoint-dir with "
                     f"converted checkpoints ({CONVERT_HINT}).")
        for prompt in prompts:
            unknown = tiny.unknown_words(prompt, manifest)
            if unknown:
                notes.append(f"prompt {prompt!r}: the words {unknown} are outside videomv-tiny's "
                             f"training vocabulary, so they are ignored in effect: the default "
                             f"model only knows the 'shapes' world (colours "
                             f"{', '.join(PALETTE)}; shapes {shapes_words}; 'on', 'next to')")
        for n in notes:
            print(f"note: {n}", file=sys.stderr)
    t0 = time.perf_counter()
    pipe = MultiViewPipeline.from_checkpoints(cfg.checkpoint_dir, cfg)
    load_s = time.perf_counter() - t0
    random = pipe.random_weights
    if random:
        print(f"warning: the models {random} record no converted source checkpoint (e.g. random "
              f"test weights): the outputs are NOT samples of a trained VideoMV model.",
              file=sys.stderr)
    # several processes (JAX_PROCESS_ID/JAX_NUM_PROCESSES, SLURM, MPI): a disjoint share each,
    # global numbers and seeds kept; one merged index.json (videomv_jax.sampling_batch)
    from videomv_jax import sampling_batch as sb

    proc, nproc = sb.process_identity()
    share = sb.process_share(len(prompts or args.image), proc, nproc)
    inputs = [(prompts or args.image)[k] for k in share]
    if mode == "t2mv":
        results = pipe.text_to_mv(inputs, cfg.seed + share.start, poses)
    else:
        results = pipe.image_to_mv(inputs, cfg.seed + share.start, poses)
    cams = pipe.cameras(poses)
    index = []
    for i, r in zip(share, results, strict=True):
        name = r.condition if mode == "t2mv" else os.path.splitext(os.path.basename(
            r.condition))[0]
        d = os.path.join(args.out, f"{i:03d}_{_slug(name)}")
        os.makedirs(os.path.join(d, "views"), exist_ok=True)
        t0 = time.perf_counter()
        frames = image_io.to_uint8(r.views)
        for k, frame in enumerate(frames):
            image_io.write_image(os.path.join(d, "views", f"{k:03d}.png"), frame)
        image_io.write_image(os.path.join(d, "grid.png"), image_io.image_grid(
            frames, cols=min(cfg.output.grid_cols, len(frames))))
        video = image_io.write_video(os.path.join(d, "turntable.mp4"), frames, cfg.output.fps)
        save_ply(os.path.join(d, "gaussians.ply"), r.gaussians)
        outputs = {"views": "views/", "grid": "grid.png", "video": os.path.basename(video),
                   "ply": "gaussians.ply"}
        if r.plain_views is not None:  # the plain DDIM sample from the same noise
            plain = image_io.to_uint8(r.plain_views)
            os.makedirs(os.path.join(d, "views_plain"), exist_ok=True)
            for k, frame in enumerate(plain):
                image_io.write_image(os.path.join(d, "views_plain", f"{k:03d}.png"), frame)
            image_io.write_image(os.path.join(d, "grid_plain.png"), image_io.image_grid(
                plain, cols=min(cfg.output.grid_cols, len(plain))))
            outputs.update(views_plain="views_plain/", grid_plain="grid_plain.png")
        timings = {**r.timings, "write_outputs_s": time.perf_counter() - t0}
        if i == share.start:
            timings["load_checkpoints_s"] = load_s
        if default_model:
            weights = ("videomv-tiny (packaged default, trained by videomv_jax train.py on "
                       "procedural shapes at 64x64; see docs/videomv-tiny.md)")
        elif random:
            weights = "RANDOM / unknown provenance (not a trained model): " + ", ".join(random)
        else:
            weights = "converted checkpoints (see sources)"
        record = {
            "mode": mode,
            "weights": weights,
            "notes": notes,
            "prompt" if mode == "t2mv" else "image": r.condition,
            "seed": r.seed,
            "checkpoint_dir": pipe.checkpoint_dir,
            "sources": pipe.sources,
            "config": cfg.to_dict(),
            "cameras_c2w_zup": np.asarray(cams).tolist() if args.poses else "orbit",
            "timings": timings,
            "timings_note": "the first sample's timings include JIT compilation",
            "rasterizer_overflow": r.overflow,
            "num_gaussians": int(r.gaussians.num_gaussians),
            "device": str(jax.devices()[0]),
            "outputs": outputs,
        }
        with open(os.path.join(d, "run.json"), "w") as f:
            json.dump(_json_safe(record), f, indent=2)
        if r.overflow:
            print(f"warning: sample {i}: the rasteriser buffer overflowed at a 3D-aware step "
                  f"(latents are NaN); raise sampler.capacity_per_scene", file=sys.stderr)
        print(f"wrote {d} ({', '.join(f'{k} {v:.2f} s' for k, v in timings.items())})")
        index.append({"index": i, "dir": os.path.basename(d), "seed": r.seed,
                      "prompt" if mode == "t2mv" else "image": r.condition})
    sb.write_index_part(args.out, index, proc, nproc)
    if proc == 0:
        print(f"wrote {sb.merge_index(args.out, nproc)}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.prompt or args.prompts_file or args.image:
        from videomv_jax.pipeline import PipelineError
        try:
            return generate(args)
        except (UsageError, PipelineError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except ValueError as err:  # config validation (SamplerConfig etc.)
            print(f"error: invalid configuration: {err}", file=sys.stderr)
            return 2
    if args.set or args.checkpoint_dir or args.poses:
        print("error: --set / --checkpoint-dir / --poses apply to generation (--prompt or "
              "--image); render-only mode does not use them", file=sys.stderr)
        return 2
    if args.elevation is None:
        args.elevation = camera.TEXT_TO_MV.elevation_deg
    if args.distance is None:
        args.distance = camera.TEXT_TO_MV.distance
    if args.views < 1 or args.resolution < 1:
        print("error: --views and --resolution must be positive", file=sys.stderr)
        return 2
    timings = {}
    t0 = time.perf_counter()
    if args.ply:
        if not os.path.isfile(args.ply):
            print(f"error: --ply {args.ply!r} does not exist", file=sys.stderr)
            return 2
        gaussians, source = load_ply(args.ply), os.path.abspath(args.ply)
    else:
        print("note: render-only mode (no --prompt / --image): rendering a procedural demo asset "
              "(a red sphere on a blue box made of 16,384 Gaussians). No weights are involved; "
              "for generation run e.g. sample.py --prompt 'a red cube on a blue sphere'.")
        gaussians, source = sphere_on_box(), "procedural demo: sphere_on_box(16384, seed=0)"
    timings["load_asset_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    out = render_orbit(gaussians, args.views, args.elevation, args.distance, args.resolution,
                       args.fovy, args.background, args.preset)
    jax.block_until_ready(out.colors)
    timings["render_first_call_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(render_orbit(gaussians, args.views, args.elevation, args.distance,
                                       args.resolution, args.fovy, args.background,
                                       args.preset).colors)
    timings["render_compiled_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    os.makedirs(os.path.join(args.out, "views"), exist_ok=True)
    frames = image_io.to_uint8(out.colors)
    for i, frame in enumerate(tqdm(frames, desc="writing views", unit="view")):
        image_io.write_image(os.path.join(args.out, "views", f"{i:03d}.png"), frame)
    image_io.write_image(os.path.join(args.out, "grid.png"),
                         image_io.image_grid(frames, cols=min(6, len(frames))))
    video = image_io.write_video(os.path.join(args.out, "turntable.mp4"), frames, args.fps)
    ply_path = os.path.join(args.out, "asset.ply")
    save_ply(ply_path, jax.tree_util.tree_map(np.asarray, gaussians))
    timings["write_outputs_s"] = time.perf_counter() - t0

    record = {
        "mode": "render-only (no generative model involved)",
        "asset": source,
        "num_gaussians": int(gaussians.num_gaussians),
        "views": args.views, "resolution": args.resolution, "elevation_deg": args.elevation,
        "distance": args.distance, "fovy_deg": args.fovy, "rasterizer_preset": args.preset,
        "background": list(args.background),
        "intersections": int(out.info.intersections), "capacity": int(out.info.capacity),
        "timings": timings, "device": str(jax.devices()[0]),
        "outputs": {"views": "views/", "grid": "grid.png", "video": os.path.basename(video),
                    "ply": "asset.ply"},
    }
    with open(os.path.join(args.out, "run.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {args.views} views, grid.png, {os.path.basename(video)}, asset.ply and "
          f"run.json to {args.out} (render {timings['render_compiled_s']:.2f} s compiled, "
          f"{timings['render_first_call_s']:.2f} s first call)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
