"""videomv-jax sampling entry point.

Two modes:

* **generation** (``--prompt`` / ``--prompts-file`` for text→MV, ``--image`` for image→MV):
  without ``--checkpoint-dir`` it uses **videomv-tiny**, the small model that ships inside the
  package (trained by us on the procedural ``shapes`` world at 64²; see
  ``docs/videomv-tiny.md``), with its own sampling settings. ``--checkpoint-dir`` takes
  converted checkpoints instead (``unet/``, ``vae/``, ``clip_text/`` (+ ``tokenizer/``),
  ``lgm/`` and, for images, ``clip_vision/``; see ``tools/convert_torch_weights.py``), or a
  ``train.py --export`` directory (its ``sampling.json`` gives the settings it was trained
  for). Writes per sample ``out/<index>_<slug>/``: ``views/000.png…``, ``grid.png``,
  ``views.mp4`` (the generated views as a video; GIF fallback), ``gaussians.ply`` (the final
  LGM reconstruction, in the views' z-up world), ``turntable.mp4`` (a render of that ``.ply``
  at the views' cameras) and ``run.json`` (settings, cameras used, timings).
* **render-only** (neither): render a Gaussian asset (a ``.ply``, or a procedural demo asset)
  from the 24-view VideoMV orbit with the JAX rasterizer and write the views, a grid, a
  turntable video, the ``.ply`` and a JSON record.

Config overrides: ``--set key=value`` (dotted keys, e.g. ``sampler.num_steps=20``; values
parsed as Python literals, else strings). Every argument is checked before any model loads;
a bad one is a one-line ``error:`` and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from videomv_jax import (
    cli,  # noqa: E402
    compile_cache,  # noqa: E402
)
from videomv_jax.cli import UsageError, parse_value, set_config_value  # noqa: E402, F401
from videomv_jax.data import images as image_io  # noqa: E402
from videomv_jax.export.mesh import add_mesh_arguments, write_mesh_outputs  # noqa: E402
from videomv_jax.render import camera  # noqa: E402
from videomv_jax.render.demo import sphere_on_box  # noqa: E402
from videomv_jax.render.gaussians import load_ply, save_ply  # noqa: E402
from videomv_jax.render.rasterize import PRESETS  # noqa: E402
from videomv_jax.render.turntable import render_orbit  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.make_parser(__doc__)
    g = p.add_argument_group("generation (videomv-tiny, or converted checkpoints)")
    g.add_argument("--prompt", action="append", default=[],
                   help="text→MV prompt (repeatable)")
    g.add_argument("--prompts-file", help="text→MV batch: one prompt per line")
    g.add_argument("--image", action="append", default=[],
                   help="image→MV input (RGBA, or RGB on white; repeatable)")
    g.add_argument("--checkpoint-dir", help="converted models (unet/ vae/ clip_text/ lgm/ ...) "
                   "or a train.py --export folder; default: the packaged videomv-tiny")
    g.add_argument("--config", choices=("t2mv", "i2mv"),
                   help="config (default: t2mv for prompts, i2mv for images)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key (repeatable), e.g. sampler.num_steps=20")
    g.add_argument("--negative-prompt", help="negative prompt (default: the config's)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: "
                   "the model's: 9 text / 6 image released, 3 videomv-tiny)")
    g.add_argument("--steps", type=int, help="DDIM steps (aware steps scale with it; default: "
                   "the model's, 50 released / 25 videomv-tiny)")
    g.add_argument("--aware-steps", help="comma list of 3D-aware loop indices; '' = plain DDIM")
    g.add_argument("--also-plain", action="store_true",
                   help="as released, also sample plain DDIM from the same noise "
                        "(views_plain/, grid_plain.png)")
    g.add_argument("--seed", type=int, help=f"seed of the first sample (sample i uses seed + "
                   f"i; 0 … {cli.MAX_SEED}; default: the config's, 11)")
    g.add_argument("--poses", help="JSON file: F 4x4 OpenGL camera-to-world matrices (z-up "
                   "world) or {\"elevation\": deg, \"distance\": d}")
    d = p.add_argument_group(
        "devices (batched sampling; config parallel.*)",
        "The prompts / images of a process are sampled data x batch-per-device at a time, the "
        "batch split over the devices (data = devices / (fsdp x tensor)); each sample keeps "
        "its seed and equals a one-at-a-time run. Several processes (JAX_PROCESS_ID / "
        "JAX_NUM_PROCESSES, SLURM, MPI) each take a share of the inputs.")
    d.add_argument("--devices", type=int, help="local devices to use (default 0 = all)")
    d.add_argument("--batch-per-device", type=int,
                   help="samples per device in one batch (default 1; more uses more memory)")
    d.add_argument("--fsdp", type=int, help="split the models' parameters over this many "
                   "devices (FSDP; for models too big for one device; default 1)")
    d.add_argument("--tensor", type=int, help="split the models' layers over this many "
                   "devices (tensor parallel; default 1)")
    r = p.add_argument_group("render-only (no --prompt / --image)")
    r.add_argument("--ply", help="Gaussian asset to render (default: a procedural demo)")
    r.add_argument("--views", type=int, default=camera.NUM_VIEWS, help="number of orbit views")
    r.add_argument("--resolution", type=int, default=256, help="image size in pixels")
    r.add_argument("--fovy", type=float, default=camera.DEFAULT_FOVY_DEG,
                   help="vertical field of view in degrees")
    r.add_argument("--raster-preset", choices=sorted(PRESETS), default="inria",
                   help="rasterizer settings preset")
    r.add_argument("--background", default="1,1,1", metavar="R,G,B",
                   help="background colour, values in [0, 1] (one number: a grey)")
    r.add_argument("--fps", type=int, default=8, help="frames per second of the videos")
    o = p.add_argument_group("both modes")
    o.add_argument("--out", default="outputs/demo", help="output folder")
    o.add_argument("--elevation", type=float, help="orbit elevation in degrees (default: the "
                   "model's; 15 text / render-only, 5 image released)")
    o.add_argument("--distance", type=float, help="orbit distance (default: the model's; 2.0 "
                   "text / render-only, 1.7 image released, 1.645 videomv-tiny)")
    compile_cache.add_arguments(p)
    p.add_argument("--mesh", action="store_true", help="also write mesh.glb and mesh.obj (+ .mtl, "
                   ".png) from the Gaussians (videomv_jax.export.mesh; options --mesh-*)")
    add_mesh_arguments(p.add_argument_group("mesh export (with --mesh)"))
    return p.parse_args(argv)


def check_args(args: argparse.Namespace, count: int = 1) -> None:
    """Argument checks shared by both modes (nothing loaded or written yet)."""
    cli.check_output_dir(args.out)
    if args.seed is not None:
        cli.check_seed(args.seed, count)
    if args.elevation is not None:
        cli.check_finite("--elevation", args.elevation)
        if not -90.0 < args.elevation < 90.0:
            raise UsageError(f"--elevation must be in (-90, 90) degrees, got {args.elevation}")
    if args.distance is not None:
        cli.check_finite("--distance", args.distance, positive=True)
    if args.guidance is not None:
        cli.check_finite("--guidance", args.guidance)
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    for name in ("views", "resolution", "fps"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be positive, got {getattr(args, name)}")
    cli.check_finite("--fovy", args.fovy)
    if not 0.0 < args.fovy < 180.0:
        raise UsageError(f"--fovy must be in (0, 180) degrees, got {args.fovy}")


def build_config(args: argparse.Namespace, mode: str):
    """``(config, manifest, trained_orbit)``: the ml_collections config for ``mode`` with the
    command-line options applied; without ``--checkpoint-dir``, the packaged videomv-tiny and
    its sampling settings (which the command-line options still override) and its manifest,
    else ``None``; a ``train.py --export`` folder's ``sampling.json`` settings likewise.
    ``trained_orbit``: (elevation, distance) the models were trained / released for. The
    sampler settings are checked here, before any model loads."""
    from configs import i2mv, t2mv
    from videomv_jax import tiny

    cfg = (t2mv if mode == "t2mv" else i2mv).get_config()
    manifest = None
    try:
        if not args.checkpoint_dir:
            manifest = tiny.use_default_model(cfg, mode)
        else:  # a train.py --export folder records the settings its models were trained for
            tiny.apply_directory_settings(cfg, mode, args.checkpoint_dir)
    except tiny.TinyWeightsError as err:
        raise UsageError(str(err)) from err
    trained = (float(cfg.elevation), float(cfg.distance))  # the orbit before any override
    cli.apply_overrides(cfg, args.set)
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
    for name in ("devices", "batch_per_device", "fsdp", "tensor"):
        if getattr(args, name, None) is not None:
            cfg.parallel[name] = getattr(args, name)
    from videomv_jax.pipeline import PipelineError, parallel_layout
    try:  # the batch / mesh fit the local devices: one clear error before any model loads
        parallel_layout(cfg.parallel, jax.local_device_count(), jax.local_devices()[0].platform)
    except PipelineError as err:
        raise UsageError(f"{err} (command line: --devices, --batch-per-device, --fsdp, "
                         f"--tensor)") from err
    from videomv_jax.diffusion.sampler import SamplerConfig

    try:
        SamplerConfig(**cfg.sampler.to_dict()).ddim_schedule()
    except (TypeError, ValueError) as err:
        raise UsageError(f"invalid configuration: {err}") from err
    return cfg, manifest, trained


def _slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    return s[:limit] or "sample"


def _json_safe(obj):
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple)
                                 else str(o)))


def _inputs(args: argparse.Namespace) -> tuple[str, list[str]]:
    """``(mode, prompts)`` from the command line; checks the input files exist."""
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
    for path in args.image:
        if not os.path.isfile(path):
            raise UsageError(f"image file {path!r} does not exist")
    return mode, prompts


def sampling_cameras(cfg, poses) -> tuple[np.ndarray, dict | None]:
    """``(cameras [F, 4, 4], orbit)``: the config's orbit, an orbit file's ``{"elevation",
    "distance"}`` (also written into ``cfg``, so that run.json's config states the orbit
    used), or explicit matrices (``orbit`` None)."""
    if poses is not None and not isinstance(poses, dict):
        return np.asarray(poses, np.float32), None
    if poses:
        cfg.elevation = float(poses.get("elevation", cfg.elevation))
        cfg.distance = float(poses.get("distance", cfg.distance))
    orbit = {"elevation_deg": float(cfg.elevation), "distance": float(cfg.distance)}
    cams = camera.orbit_cameras(cfg.num_frames, orbit["elevation_deg"], orbit["distance"])
    return np.asarray(cams, np.float32), orbit


def pose_note(cams: np.ndarray, trained: tuple[float, float], known: bool) -> str | None:
    """A note when the cameras ``cams`` [F, 4, 4] are not the orbit (elevation, distance)
    ``trained`` that the models were trained for (``known``) / released with."""
    elevation, distance = trained
    ref = np.asarray(camera.orbit_cameras(len(cams), elevation, distance))
    if np.allclose(cams, ref, atol=1e-3 * max(1.0, distance)):
        return None
    pos = cams[:, :3, 3]
    r = np.linalg.norm(pos, axis=-1)
    elev = np.degrees(np.arcsin(np.clip(pos[:, 2] / np.maximum(r, 1e-12), -1, 1)))
    seen = (f"elevation {elev.min():.1f}..{elev.max():.1f} deg, distance {r.min():.3f}.."
            f"{r.max():.3f}")
    what = ("the models were trained only on" if known else "the released models were trained "
            "on G-Objaverse orbits around")
    return (f"the cameras used ({seen}) are not the orbit {what} (elevation {elevation:g} deg, "
            f"distance {distance:g}, 24 views 15 deg apart): the model never saw such poses, so "
            f"the views may not follow them")


def generate(args: argparse.Namespace) -> int:
    """Text→MV / image→MV sampling with the packaged or converted checkpoints."""
    from videomv_jax.pipeline import CONVERT_HINT, MultiViewPipeline, load_poses

    mode, prompts = _inputs(args)
    check_args(args, len(prompts) or len(args.image))
    cfg, manifest, trained = build_config(args, mode)
    poses = load_poses(args.poses, cfg.num_frames) if args.poses else None
    cams, orbit = sampling_cameras(cfg, poses)
    default_model = manifest is not None
    known_orbit = default_model or os.path.isfile(os.path.join(
        cfg.checkpoint_dir, "sampling.json"))
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
    note = pose_note(cams, trained, known_orbit)
    if note:
        notes.append(note)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    # several processes (JAX_PROCESS_ID/JAX_NUM_PROCESSES, SLURM, MPI): a disjoint share each,
    # global numbers and seeds kept; one merged index.json (videomv_jax.sampling_batch)
    from videomv_jax import sampling_batch as sb
    from videomv_jax.pipeline import devices_for_inputs

    proc, nproc = sb.process_identity()
    share = sb.process_share(len(prompts or args.image), proc, nproc)
    inputs = [(prompts or args.image)[k] for k in share]
    # all local devices by default, but no more data shards than this process's inputs fill
    cfg.parallel.devices = devices_for_inputs(cfg.parallel, len(inputs), jax.local_device_count())
    t0 = time.perf_counter()
    pipe = MultiViewPipeline.from_checkpoints(cfg.checkpoint_dir, cfg)
    load_s = time.perf_counter() - t0
    random = pipe.random_weights
    if random:
        print(f"warning: the models {random} record no converted source checkpoint (e.g. random "
              f"test weights): the outputs are NOT samples of a trained VideoMV model.",
              file=sys.stderr)
    if mode == "t2mv":
        results = pipe.text_to_mv(inputs, cfg.seed + share.start, cams)
    else:
        results = pipe.image_to_mv(inputs, cfg.seed + share.start, cams)
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
        video = image_io.write_video(os.path.join(d, "views.mp4"), frames, cfg.output.fps)
        save_ply(os.path.join(d, "gaussians.ply"), r.gaussians)
        write_s = time.perf_counter() - t0
        outputs = {"views": "views/", "grid": "grid.png", "views_video": os.path.basename(video),
                   "ply": "gaussians.ply", **write_mesh_outputs(args, r.gaussians, d)}
        t0 = time.perf_counter()  # the asset turntable: the .ply rendered at the views' cameras
        if cfg.output.get("asset_turntable", True):
            asset = image_io.to_uint8(pipe.render_asset(r.gaussians, r.cameras))
            outputs["asset_turntable"] = os.path.basename(image_io.write_video(
                os.path.join(d, "turntable.mp4"), asset, cfg.output.fps))
        render_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if r.plain_views is not None:  # the plain DDIM sample from the same noise
            plain = image_io.to_uint8(r.plain_views)
            os.makedirs(os.path.join(d, "views_plain"), exist_ok=True)
            for k, frame in enumerate(plain):
                image_io.write_image(os.path.join(d, "views_plain", f"{k:03d}.png"), frame)
            image_io.write_image(os.path.join(d, "grid_plain.png"), image_io.image_grid(
                plain, cols=min(cfg.output.grid_cols, len(plain))))
            outputs.update(views_plain="views_plain/", grid_plain="grid_plain.png")
        timings = {**r.timings, "render_asset_s": render_s,
                   "write_outputs_s": write_s + time.perf_counter() - t0}
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
            "cameras": {"orbit": orbit, "source": args.poses or "config orbit",
                        "fovy_deg": float(cfg.sampler.fovy),
                        "trained_orbit": {"elevation_deg": trained[0], "distance": trained[1]},
                        "c2w_opengl_zup": np.asarray(r.cameras).round(6).tolist()},
            "asset_frame": "gaussians.ply is in the views' world: z up, OpenGL cameras "
                           "cameras.c2w_opengl_zup (turntable.mp4 renders it there)",
            "timings": timings,
            "timings_note": "the first batch's timings include JIT compilation; stage times "
                            "are those of the batch (see batch) the sample was sampled in",
            "rasterizer_overflow": r.overflow,
            "num_gaussians": int(r.gaussians.num_gaussians),
            "device": str(jax.local_devices()[0]),
            "batch": r.batch,
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


def render_only(args: argparse.Namespace) -> int:
    """Render a ``.ply`` (or the procedural demo asset) around the orbit."""
    if args.set or args.checkpoint_dir or args.poses:
        raise UsageError("--set / --checkpoint-dir / --poses apply to generation (--prompt or "
                         "--image); render-only mode does not use them")
    check_args(args)
    background = cli.parse_rgb(args.background, "--background")
    if args.elevation is None:
        args.elevation = camera.TEXT_TO_MV.elevation_deg
    if args.distance is None:
        args.distance = camera.TEXT_TO_MV.distance
    timings = {}
    t0 = time.perf_counter()
    if args.ply:
        if not os.path.isfile(args.ply):
            raise UsageError(f"--ply {args.ply!r} does not exist")
        gaussians, source = load_ply(args.ply), os.path.abspath(args.ply)
        if gaussians.num_gaussians == 0:
            raise UsageError(f"--ply {args.ply!r} holds no Gaussians (an empty vertex element)")
    else:
        print("note: render-only mode (no --prompt / --image): rendering a procedural demo asset "
              "(a red sphere on a blue box made of 16,384 Gaussians). No weights are involved; "
              "for generation run e.g. sample.py --prompt 'a red cube on a blue sphere'.")
        gaussians, source = sphere_on_box(), "procedural demo: sphere_on_box(16384, seed=0)"
    timings["load_asset_s"] = time.perf_counter() - t0

    def render():
        return render_orbit(gaussians, args.views, args.elevation, args.distance,
                            args.resolution, args.fovy, background, args.raster_preset)

    t0 = time.perf_counter()
    out = render()
    jax.block_until_ready(out.colors)
    timings["render_first_call_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(render().colors)
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
    mesh_outputs = write_mesh_outputs(args, gaussians, args.out)
    timings["write_outputs_s"] = time.perf_counter() - t0

    c2w = camera.orbit_cameras(args.views, args.elevation, args.distance)
    record = {
        "mode": "render-only (no generative model involved)",
        "asset": source,
        "num_gaussians": int(gaussians.num_gaussians),
        "views": args.views, "resolution": args.resolution, "elevation_deg": args.elevation,
        "distance": args.distance, "fovy_deg": args.fovy, "rasterizer_preset": args.raster_preset,
        "background": list(background),
        "cameras": {"c2w_opengl_zup": np.asarray(c2w).round(6).tolist()},
        "intersections": int(out.info.intersections), "capacity": int(out.info.capacity),
        "timings": timings, "device": str(jax.devices()[0]),
        "outputs": {"views": "views/", "grid": "grid.png",
                    "asset_turntable": os.path.basename(video), "ply": "asset.ply",
                    **mesh_outputs},
    }
    with open(os.path.join(args.out, "run.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {args.views} views, grid.png, {os.path.basename(video)}, asset.ply and "
          f"run.json to {args.out} (render {timings['render_compiled_s']:.2f} s compiled, "
          f"{timings['render_first_call_s']:.2f} s first call)")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    compile_cache.cache_dir_from_args(args)
    from videomv_jax.pipeline import PipelineError
    from videomv_jax.render.gaussians import PlyFormatError

    try:
        if args.prompt or args.prompts_file or args.image:
            return generate(args)
        return render_only(args)
    except (UsageError, PipelineError, PlyFormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # config validation (SamplerConfig etc.)
        print(f"error: invalid configuration: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. the disk filled up while writing
        print(f"error: could not write the outputs: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
