"""videomv-jax evaluation entry point: reference metrics, GT-free consistency, shapes benchmark.

Subcommands (each writes a report folder: ``report.md``, ``summary.json``,
``samples/*.json``, ``metrics.png`` / ``paired.png`` / ``per_view.png``):

* ``folders --generated DIR --reference DIR --out DIR`` — PSNR / SSIM / LPIPS-VGG of generated
  views against reference renders at the same cameras, per view and averaged. ``DIR`` may be
  one view folder or a folder of them (``sample.py`` outputs, G-Objaverse
  ``campos_512_v4``, NeRF ``transforms.json``, PNGs + ``cameras.json``; see
  :mod:`videomv_jax.eval.folders`). References are composited on WHITE (``--background``) and
  resized to the generated resolution. Samples with ``views_plain/`` are scored as both
  variants ("aware", "plain") with paired differences.
* ``consistency --generated DIR --out DIR [--lgm-checkpoint DIR]`` — GT-free consistency:
  (b) fit Gaussians to the even views and score the odd ones (always, unless ``--no-fit``);
  (a) LGM reconstruction from 4 views scored on the other 20 (with ``--lgm-checkpoint``).
* ``shapes --checkpoint-dir DIR --num-samples N --out DIR`` — held-out ``shapes`` scenes
  (seeds ``--seed-offset + i``, default 1,000,000 + i, never used for training), generated
  3D-aware and plain from the same noise; reference metrics against the analytic ray-cast
  ground truth at the same cameras, both consistency scores, paired CIs aware − plain.
* ``compare REPORT_A REPORT_B --out DIR`` — two reports of the same samples (e.g. two
  checkpoints on the same ``shapes`` seeds): per-sample paired differences B − A with 95 %
  intervals and p-values, per variant, metric and group (``compare.md``, ``compare.json``).

LPIPS needs weights (``--lpips-vgg16 FILE --lpips-weights FILE``); without them it is
reported as unavailable (``null`` / ``n/a``), never estimated.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from videomv_jax import (
    cli,  # noqa: E402
    compile_cache,  # noqa: E402
)
from videomv_jax.cli import UsageError  # noqa: E402
from videomv_jax.data.shapes import HELD_OUT_SEED_OFFSET, NEXT_TO, resolve_world  # noqa: E402
from videomv_jax.eval.consistency import (  # noqa: E402
    FitConfig,
    fit_holdout_score,
    lgm_holdout_score,
    resolve_background,
)
from videomv_jax.eval.folders import (  # noqa: E402
    FolderError,
    ViewSet,
    camera_angle_error,
    find_view_sets,
    load_views,
)
from videomv_jax.eval.metrics import PSNR_CAP_DB, SMALL_N, image_metrics  # noqa: E402
from videomv_jax.eval.report import write_comparison, write_report  # noqa: E402

CAMERA_TOLERANCE_DEG = 2.0


# ---- arguments ----------------------------------------------------------------------------------


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--lpips-vgg16", help="VGG16 weights for LPIPS (with --lpips-weights)")
    p.add_argument("--lpips-weights", help="LPIPS linear-layer weights (with --lpips-vgg16)")
    compile_cache.add_arguments(p)
    p.add_argument("--confidence", type=float, default=0.95,
                   help="level of the confidence intervals")
    p.add_argument("--title", help="report title (default: from the command)")


def _add_fit(p: argparse.ArgumentParser, default_bg: str) -> None:
    g = p.add_argument_group("consistency (b): Gaussian fit on even views, scored on odd views")
    g.add_argument("--no-fit", action="store_true", help="skip the Gaussian-fit score")
    g.add_argument("--fit-steps", type=int, default=FitConfig.steps, help="Adam steps")
    g.add_argument("--fit-gaussians", type=int, default=FitConfig.num_gaussians,
                   help="Gaussians fitted")
    g.add_argument("--fit-views-per-step", type=int, default=FitConfig.views_per_step,
                   help="training views per Adam step (0 = all, full batch)")
    g.add_argument("--fit-seed", type=int, default=0, help="seed of the fit's initialisation")
    g.add_argument("--consistency-background", default=default_bg, metavar="auto|R,G,B",
                   help="'auto' (median border colour of the views) or R,G,B in [0, 1]")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.make_parser(__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    fmt = {"formatter_class": cli.HelpFormatter}

    f = sub.add_parser("folders", **fmt,
                       help="reference metrics: generated vs reference renders")
    f.add_argument("--generated", required=True,
                   help="generated view folder (sample.py output) or a folder of them")
    f.add_argument("--reference", required=True,
                   help="reference renders: a view folder or a folder of them")
    f.add_argument("--background", default="1,1,1", metavar="R,G,B",
                   help="compositing colour of RGBA images, values in [0, 1]")
    f.add_argument("--exclude-views", default="",
                   help="comma list of view indices not scored (e.g. 0: the image condition)")
    f.add_argument("--max-views", type=int, default=24, help="G-Objaverse views read (0..N-1)")
    _add_common(f)

    c = sub.add_parser("consistency", **fmt,
                       help="GT-free multi-view consistency of generated views")
    c.add_argument("--generated", required=True,
                   help="generated view folder (sample.py output) or a folder of them")
    c.add_argument("--lgm-checkpoint", help="converted LGM folder: enables score (a)")
    c.add_argument("--lgm-views", help="comma list of LGM input views (default 4 evenly "
                   "spaced: 0,6,12,18 of 24)")
    c.add_argument("--background", default="1,1,1", metavar="R,G,B",
                   help="compositing colour of RGBA images, values in [0, 1]")
    c.add_argument("--max-views", type=int, default=24, help="G-Objaverse views read (0..N-1)")
    _add_common(c)
    _add_fit(c, "auto")

    s = sub.add_parser("shapes", **fmt,
                       help="held-out shapes scenes: generate, score, compare")
    s.add_argument("--checkpoint-dir", help="converted/trained models (default: the packaged "
                   "videomv-tiny with its sampling settings and shapes world)")
    s.add_argument("--num-samples", type=int, required=True,
                   help="held-out scenes to sample and score")
    s.add_argument("--seed-offset", type=int, default=HELD_OUT_SEED_OFFSET,
                   help="seed of the first scene (held-out seeds start here)")
    s.add_argument("--config", choices=("t2mv", "i2mv"), default="t2mv",
                   help="i2mv conditions on the ground-truth view 0 (excluded from scoring)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a pipeline config value (as sample.py)")
    s.add_argument("--steps", type=int, help="DDIM steps (aware steps keep their fractions)")
    s.add_argument("--lgm-checkpoint", help="LGM for score (a) (default: the pipeline's)")
    s.add_argument("--background", default=None, metavar="R,G,B",
                   help="ground-truth compositing colour (default: the training "
                        "background of the mode, grey 128/255 for t2mv, white for i2mv)")
    s.add_argument("--max-objects", type=int, choices=(1, 2, 3),
                   help="shapes scenes: at most this many primitives (default: videomv-tiny's "
                        "world with the default model, else 3)")
    s.add_argument("--fit-radius", type=float,
                   help="shapes scenes: recentre/scale to this radius (default as above)")
    s.add_argument("--next-to", choices=NEXT_TO, default=None,
                   help="shapes scenes: 'next to' pairs along a random axis or left to right "
                        "from the first view (default as above, else random)")
    s.add_argument("--max-size-ratio", type=float, default=None,
                   help="shapes scenes: largest size ratio between a scene's objects "
                        "(default as above, else independent sizes)")
    s.add_argument("--no-lgm", action="store_true", help="skip score (a)")
    s.add_argument("--save-views", action="store_true",
                   help="also write each sample's generated and GT views as PNG grids")
    _add_common(s)
    _add_fit(s, "auto")
    m = sub.add_parser("compare", **fmt,
                       help="paired differences between two reports of the same "
                                       "samples (e.g. two checkpoints)")
    m.add_argument("report_a", help="report folder A (the baseline)")
    m.add_argument("report_b", help="report folder B (differences are B − A)")
    m.add_argument("--out", required=True, help="folder for compare.md / compare.json")
    m.add_argument("--name-a", default="A", help="label of report A in the tables")
    m.add_argument("--name-b", default="B", help="label of report B in the tables")
    m.add_argument("--confidence", type=float, default=0.95,
                   help="level of the confidence intervals")
    return p.parse_args(argv)


def _parse_rgb(text: str, what: str) -> Any:
    return cli.parse_rgb(text, what, allow_auto=True)


def _parse_ints(text: str | None, what: str) -> list[int]:
    return cli.parse_ints(text, what)


def check_args(args: argparse.Namespace) -> None:
    """The value checks of every subcommand's options, before anything is read or loaded."""
    cli.check_output_dir(args.out)
    if not 0 < args.confidence < 1:
        raise UsageError(f"--confidence must be in (0, 1), got {args.confidence}")
    for name, minimum in (("max_views", 1), ("fit_steps", 1), ("fit_gaussians", 1),
                          ("fit_views_per_step", 0), ("num_samples", 1), ("steps", 1)):
        cli.check_int(f"--{name.replace('_', '-')}", getattr(args, name, None), minimum)
    if getattr(args, "seed_offset", None) is not None:
        cli.check_seed(args.seed_offset, args.num_samples, "--seed-offset")
    if getattr(args, "background", None) is not None:
        cli.parse_rgb(args.background, "--background")  # a colour ('auto' is not one)
    if getattr(args, "consistency_background", None) is not None:
        _parse_rgb(args.consistency_background, "--consistency-background")
    for name in ("exclude_views", "lgm_views"):
        _parse_ints(getattr(args, name, None), f"--{name.replace('_', '-')}")
    if getattr(args, "lpips_vgg16", None) or getattr(args, "lpips_weights", None):
        if not (args.lpips_vgg16 and args.lpips_weights):
            raise UsageError("LPIPS needs both --lpips-vgg16 and --lpips-weights")
        for path in (args.lpips_vgg16, args.lpips_weights):
            if not os.path.exists(path):
                raise UsageError(f"LPIPS weights {path!r} do not exist")
    for name in ("checkpoint_dir", "lgm_checkpoint"):
        path = getattr(args, name, None)
        if path and not os.path.isdir(path):
            raise UsageError(f"--{name.replace('_', '-')} {path!r} is not a folder")


def _load_lpips(args: argparse.Namespace):
    """(lpips_fn or None, note) from --lpips-vgg16 / --lpips-weights."""
    if not args.lpips_vgg16:  # both or neither, checked by check_args
        return None, "LPIPS: unavailable (no weights given: --lpips-vgg16 and --lpips-weights)"
    from flax import nnx

    from videomv_jax.convert.lpips import load_lpips

    model = load_lpips(args.lpips_vgg16, args.lpips_weights)
    fn = nnx.jit(lambda m, x, y: m(x, y))
    return (lambda x, y: fn(model, x, y)), "LPIPS: VGG16 network (LPIPS-VGG)"


def _fit_config(args: argparse.Namespace) -> FitConfig:
    return FitConfig(num_gaussians=args.fit_gaussians, steps=args.fit_steps,
                     views_per_step=args.fit_views_per_step or None, seed=args.fit_seed)


def _mean_metric(values: np.ndarray | None, metric: str) -> float | None:
    if values is None:
        return None
    v = np.minimum(values, PSNR_CAP_DB) if metric == "psnr" else values
    return float(np.mean(v))


def _lgm_views(num_views: int, text: str | None) -> list[int]:
    idx = _parse_ints(text, "--lgm-views")
    return idx or [round(i * num_views / 4) for i in range(4)]


# ---- scoring ------------------------------------------------------------------------------------


def reference_scores(views: np.ndarray, reference: np.ndarray, keep: list[int], lpips_fn
                     ) -> tuple[dict[str, float | None], dict[str, list[float] | None]]:
    """(mean metrics, per-view metrics) of ``views[keep]`` against ``reference[keep]``."""
    m = image_metrics(views[keep], reference[keep], lpips_fn)
    means = {f"ref_{k}": _mean_metric(v, k) for k, v in m.items()}
    per_view = {f"ref_{k}": None if v is None else [float(x) for x in v] for k, v in m.items()}
    return means, per_view


def consistency_scores(views: np.ndarray, c2w: np.ndarray, fovy: float, lgm: Any,
                       lgm_idx: list[int], fit_cfg: FitConfig | None, background: Any,
                       lpips_fn) -> tuple[dict[str, float | None], dict[str, Any]]:
    """(metrics, details) of scores (a) (when ``lgm``) and (b) (when ``fit_cfg``)."""
    metrics: dict[str, float | None] = {}
    details: dict[str, Any] = {}
    if lgm is not None:
        r = lgm_holdout_score(lgm, views, c2w, lgm_idx, lpips_fn, fovy, background)
        metrics.update(lgm_psnr=r["holdout"]["psnr"], lgm_ssim=r["holdout"]["ssim"],
                       lgm_lpips=r["holdout"]["lpips"], lgm_input_psnr=r["input"]["psnr"])
        details["lgm_holdout"] = r
    if fit_cfg is not None:
        r = fit_holdout_score(views, c2w, fovy=fovy, config=fit_cfg, lpips_fn=lpips_fn,
                              background=background)
        metrics.update(fit_psnr=r["holdout"]["psnr"], fit_ssim=r["holdout"]["ssim"],
                       fit_lpips=r["holdout"]["lpips"], fit_train_psnr=r["train"]["psnr"])
        details["fit_holdout"] = r
    return metrics, details


# ---- subcommands --------------------------------------------------------------------------------


def _pair_sets(gen: list[str], ref: list[str]) -> list[tuple[str, str]]:
    """Pair generated and reference folders: a single pair, by name (``NNN_name`` also matches
    ``name``), else in sorted order when the counts agree."""
    if len(gen) == 1 and len(ref) == 1:
        return [(gen[0], ref[0])]
    by_name = {os.path.basename(os.path.normpath(r)): r for r in ref}
    pairs = []
    for g in gen:
        base = os.path.basename(os.path.normpath(g))
        stripped = base.split("_", 1)[1] if "_" in base and base.split("_")[0].isdigit() else base
        match = by_name.get(base) or by_name.get(stripped)
        if match is None:
            break
        pairs.append((g, match))
    else:
        return pairs
    if len(gen) == len(ref):
        return list(zip(gen, ref, strict=True))
    raise UsageError(f"cannot pair {len(gen)} generated folders with {len(ref)} reference "
                     f"folders: give matching folder names or equally many folders")


def cmd_folders(args: argparse.Namespace) -> int:
    lpips_fn, lpips_note = _load_lpips(args)
    bg = cli.parse_rgb(args.background, "--background")
    exclude = set(_parse_ints(args.exclude_views, "--exclude-views"))
    pairs = _pair_sets(find_view_sets(args.generated), find_view_sets(args.reference))
    records, notes = [], [lpips_note, f"references composited on RGB {bg}"]
    for gpath, rpath in tqdm(pairs, desc="folders", unit="sample"):
        gen = load_views(gpath, bg, None, args.max_views)
        h, w = gen.views.shape[1:3]
        ref = load_views(rpath, bg, h if h == w else None, args.max_views)
        if ref.views.shape != gen.views.shape:
            raise UsageError(f"{gpath!r} has views {gen.views.shape} but {rpath!r} has "
                             f"{ref.views.shape}; generated and reference views must match "
                             f"one to one")
        angle = camera_angle_error(gen.c2w, ref.c2w)
        if angle is not None and angle > CAMERA_TOLERANCE_DEG:
            msg = (f"{gen.name}: generated and reference cameras differ by up to {angle:.1f}° "
                   f"in viewing direction")
            print(f"warning: {msg}", file=sys.stderr)
            notes.append("WARNING: " + msg)
        keep = [i for i in range(gen.num_views) if i not in exclude]
        variants = {}
        for var, views in gen.variants.items():
            means, per_view = reference_scores(views, ref.views, keep, lpips_fn)
            variants[var] = {"metrics": means, "per_view": per_view}
        records.append({"sample": gen.name, "generated": gpath, "reference": rpath,
                        "reference_layout": ref.layout, "scored_views": keep,
                        "camera_max_angle_deg": angle, "meta": gen.meta, "variants": variants})
    settings = {"command": "folders", "background": bg, "excluded_views": sorted(exclude),
                "lpips": lpips_fn is not None, "generated": args.generated,
                "reference": args.reference}
    out = write_report(args.out, records, args.title or "Reference metrics", notes, settings,
                       args.confidence)
    print(f"wrote {out['report']} ({len(records)} samples)")
    return 0


def _load_lgm(path: str):
    from videomv_jax.model_store import load_converted

    if not os.path.isdir(path):
        raise UsageError(f"--lgm-checkpoint {path!r} is not a folder")
    model, _ = load_converted(path, kind="lgm")
    return model


def cmd_consistency(args: argparse.Namespace) -> int:
    lpips_fn, lpips_note = _load_lpips(args)
    bg = cli.parse_rgb(args.background, "--background")
    cbg = _parse_rgb(args.consistency_background, "--consistency-background")
    lgm = _load_lgm(args.lgm_checkpoint) if args.lgm_checkpoint else None
    fit_cfg = None if args.no_fit else _fit_config(args)
    if lgm is None and fit_cfg is None:
        raise UsageError("nothing to do: --no-fit and no --lgm-checkpoint")
    records = []
    notes = [lpips_note, f"consistency renders composited on "
             f"{'the median border colour of the views' if cbg == 'auto' else cbg}"]
    if lgm is None:
        notes.append("score (a) LGM hold-out: not run (no --lgm-checkpoint)")
    for path in tqdm(find_view_sets(args.generated), desc="consistency", unit="sample"):
        vs: ViewSet = load_views(path, bg, None, args.max_views)
        if vs.c2w is None:
            raise UsageError(f"{path!r} has no cameras; consistency needs posed views")
        lgm_idx = _lgm_views(vs.num_views, args.lgm_views)
        variants, details = {}, {}
        for var, views in vs.variants.items():
            metrics, det = consistency_scores(views, vs.c2w, vs.fovy, lgm, lgm_idx, fit_cfg,
                                              resolve_background(cbg, views), lpips_fn)
            variants[var] = {"metrics": metrics}
            details[var] = det
        records.append({"sample": vs.name, "path": path, "layout": vs.layout, "meta": vs.meta,
                        "variants": variants, "details": details})
    settings = {"command": "consistency", "lgm_checkpoint": args.lgm_checkpoint,
                "fit": None if fit_cfg is None else fit_cfg.to_dict(),
                "consistency_background": cbg, "lpips": lpips_fn is not None}
    out = write_report(args.out, records, args.title or "GT-free multi-view consistency",
                       notes, settings, args.confidence)
    print(f"wrote {out['report']} ({len(records)} samples)")
    return 0


def _shapes_config(args: argparse.Namespace):
    from configs import i2mv, t2mv
    from videomv_jax import tiny

    cfg = (t2mv if args.config == "t2mv" else i2mv).get_config()
    manifest = None
    try:
        if not args.checkpoint_dir:
            manifest = tiny.use_default_model(cfg, args.config)
            args.checkpoint_dir = cfg.checkpoint_dir
        else:  # a train.py --export folder: the settings its models were trained for
            tiny.apply_directory_settings(cfg, args.config, args.checkpoint_dir)
    except tiny.TinyWeightsError as err:
        raise UsageError(str(err)) from err
    cli.apply_overrides(cfg, args.set)
    if args.steps is not None:
        old = cfg.sampler.num_steps
        cfg.sampler.num_steps = args.steps
        cfg.sampler.aware_steps = tuple(sorted({i * args.steps // old
                                                for i in cfg.sampler.aware_steps}))
    cfg.checkpoint_dir = args.checkpoint_dir
    cfg.also_plain = True
    cfg.sampler.progress = False
    if not tuple(cfg.sampler.aware_steps):
        raise UsageError("the shapes comparison needs 3D-aware steps (sampler.aware_steps)")
    from videomv_jax.diffusion.sampler import SamplerConfig

    try:  # the sampler settings, before any model loads
        SamplerConfig(**cfg.sampler.to_dict()).ddim_schedule()
    except (TypeError, ValueError) as err:
        raise UsageError(f"invalid configuration: {err}") from err
    return cfg, manifest


def cmd_shapes(args: argparse.Namespace) -> int:
    from videomv_jax.data import images as image_io
    from videomv_jax.data.shapes import random_scene, render_scene
    from videomv_jax.pipeline import MultiViewPipeline, devices_for_inputs

    if args.num_samples < SMALL_N:
        print(f"warning: --num-samples {args.num_samples} < {SMALL_N}: the confidence intervals "
              f"will be very wide (none for 1 sample); use more samples for conclusions",
              file=sys.stderr)
    lpips_fn, lpips_note = _load_lpips(args)
    cfg, manifest = _shapes_config(args)
    default_model = manifest is not None
    if args.background is None:
        from videomv_jax.data.pipeline import GREY

        bg = [GREY] * 3 if cfg.mode == "t2mv" else [1.0, 1.0, 1.0]
    else:
        bg = cli.parse_rgb(args.background, "--background")
    cbg = _parse_rgb(args.consistency_background, "--consistency-background")
    try:  # check the world before the models load
        world = resolve_world(manifest.get("world_config") if default_model else None,
                              max_objects=args.max_objects, fit_radius=args.fit_radius,
                              next_to=args.next_to, max_size_ratio=args.max_size_ratio)
    except ValueError as err:
        raise UsageError(f"shapes world: {err}") from None
    import jax

    # one scene at a time: no data shards padded with copies of it
    cfg.parallel.devices = devices_for_inputs(cfg.parallel, 1, jax.local_device_count())
    t0 = time.perf_counter()
    pipe = MultiViewPipeline.from_checkpoints(args.checkpoint_dir, cfg)
    load_s = time.perf_counter() - t0
    lgm = None
    if not args.no_lgm:
        lgm = _load_lgm(args.lgm_checkpoint) if args.lgm_checkpoint else pipe.models["lgm"]
    fit_cfg = None if args.no_fit else _fit_config(args)
    cams = np.asarray(pipe.cameras(), np.float32)
    fovy = float(cfg.sampler.fovy)
    res = int(cfg.resolution)
    exclude = {0} if cfg.mode == "i2mv" else set()
    keep = [i for i in range(cfg.num_frames) if i not in exclude]
    lgm_idx = [int(i) for i in cfg.sampler.aware_views]
    records = []
    os.makedirs(args.out, exist_ok=True)
    bar = tqdm(range(args.num_samples), desc="shapes", unit="sample")
    steps = int(cfg.sampler.num_steps)
    for i in bar:
        seed = args.seed_offset + i
        bar.set_postfix_str(f"sample {i}: ground truth + sampling (DDIM {steps} steps, "
                            f"3D-aware and plain)", refresh=True)
        scene = random_scene(seed, world["max_objects"], world["fit_radius"], world["next_to"],
                             world["max_size_ratio"])
        t_s = time.perf_counter()
        rgba, _ = render_scene(scene, cfg.num_frames, res, float(cfg.elevation),
                               float(cfg.distance), fovy)
        gt = rgba[..., :3] + (1.0 - rgba[..., 3:]) * np.asarray(bg, np.float32)
        if cfg.mode == "t2mv":
            result = pipe.text_to_mv([scene.caption], seed=seed)[0]
        else:
            result = pipe.image_to_mv([gt[0]], seed=seed)[0]
        gen_s = time.perf_counter() - t_s
        variants, details = {}, {}
        for var, views in (("aware", result.views), ("plain", result.plain_views)):
            views = np.asarray(views, np.float32)
            bar.set_postfix_str(f"sample {i}: {var} reference metrics", refresh=True)
            means, per_view = reference_scores(views, gt, keep, lpips_fn)
            bar.set_postfix_str(f"sample {i}: {var} consistency (" + ", ".join(
                (["LGM hold-out"] if lgm is not None else [])
                + ([f"Gaussian fit, {fit_cfg.steps} steps"] if fit_cfg else [])) + ")",
                refresh=True)
            t_c = time.perf_counter()
            cm, det = consistency_scores(views, cams, fovy, lgm, lgm_idx, fit_cfg,
                                         resolve_background(cbg, views), lpips_fn)
            variants[var] = {"metrics": {**means, **cm}, "per_view": per_view,
                             "consistency_seconds": time.perf_counter() - t_c}
            details[var] = det
            if args.save_views:
                d = os.path.join(args.out, "views")
                os.makedirs(d, exist_ok=True)
                image_io.write_image(os.path.join(d, f"{i:03d}_{var}.png"),
                                     image_io.image_grid(views, cols=6))
        if args.save_views:
            image_io.write_image(os.path.join(args.out, "views", f"{i:03d}_gt.png"),
                                 image_io.image_grid(gt, cols=6))
        n_obj = len(scene.primitives)
        records.append({"sample": f"{i:03d}_seed{seed}", "seed": seed, "prompt": scene.caption,
                        "group": f"{n_obj} object{'s' if n_obj > 1 else ''}",
                        "timings": {**result.timings, "generate_and_gt_s": gen_s},
                        "rasterizer_overflow": result.overflow, "variants": variants,
                        "details": details})
    random = pipe.random_weights
    notes = [f"{args.num_samples} held-out shapes scenes, seeds {args.seed_offset}.."
             f"{args.seed_offset + args.num_samples - 1} ({cfg.mode}); 'aware' = 3D-aware "
             f"sampling (steps {tuple(cfg.sampler.aware_steps)}), 'plain' = plain DDIM from "
             f"the same noise",
             f"ground truth: analytic ray-cast renders at the same cameras, composited on {bg}; "
             f"scenes random_scene(seed, max_objects={world['max_objects']}, "
             f"fit_radius={world['fit_radius']}, next_to={world['next_to']!r}, "
             f"max_size_ratio={world['max_size_ratio']})",
             lpips_note,
             "consistency (a): LGM from views " + str(lgm_idx) + " scored on the others"
             if lgm is not None else "consistency (a): not run",
             "consistency (b): Gaussian fit on even views scored on odd views"
             if fit_cfg is not None else "consistency (b): not run"]
    if exclude:
        notes.append("view 0 (the image condition) is excluded from the reference metrics")
    if random:
        notes.append(f"WARNING: models {random} carry random / unrecorded weights")
    settings = {"command": "shapes", "checkpoint_dir": os.path.abspath(args.checkpoint_dir),
                "config": cfg.to_dict(), "seed_offset": args.seed_offset,
                "num_samples": args.num_samples, "fit": None if fit_cfg is None else
                fit_cfg.to_dict(), "consistency_background": cbg, "gt_background": bg,
                "lgm_checkpoint": args.lgm_checkpoint or "pipeline", "load_seconds": load_s,
                "world": world, "default_model": default_model,
                "lpips": lpips_fn is not None}
    out = write_report(args.out, records, args.title or f"shapes benchmark ({cfg.mode})",
                       notes, settings, args.confidence)
    print(f"wrote {out['report']} ({len(records)} samples)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    for path in (args.report_a, args.report_b):
        if not os.path.isdir(os.path.join(path, "samples")):
            raise UsageError(f"{path!r} is not an evaluation report (no samples/ folder); "
                             f"pass folders written by eval.py")
    cmp = write_comparison(args.out, args.report_a, args.report_b, args.name_a, args.name_b,
                           args.confidence)
    print(f"wrote {os.path.join(args.out, 'compare.md')} ({cmp['num_samples']} samples)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    compile_cache.cache_dir_from_args(args)
    commands = {"folders": cmd_folders, "consistency": cmd_consistency, "shapes": cmd_shapes,
                "compare": cmd_compare}
    try:
        check_args(args)  # before anything is read or loaded
        return commands[args.command](args)
    except (UsageError, FolderError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # config / pipeline validation
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
