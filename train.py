#!/usr/bin/env python
"""Fine-tune VideoMV (stage 1: video UNet; stage 2 / plain: LGM) or train the small models of
videomv-tiny from scratch.

    python train.py --config t2mv --preset tiny --data DATA/videomv_shapes/... \\
        --workdir runs/t2mv-tiny --export runs/export

The ``tiny`` presets run on a fresh clone: models they build on (the VAE of the UNet stages,
the LGM the exported directory samples with) default to the packaged videomv-tiny ones.
``--export DIR`` writes a complete directory that ``sample.py --checkpoint-dir DIR`` samples
with, at the sampling settings the models were trained for (``DIR/sampling.json``).

``--config`` is ``t2mv``, ``i2mv``, ``recon``, ``vae`` or a path to a Python file with
``get_train_config(preset)``. ``--set key=value`` overrides dotted config keys (values parsed as
Python literals, else strings). Runs resume from the latest checkpoint in ``--workdir`` unless
``--no-resume``. Multi-host (TPU pod slices, multi-node GPU): every process runs the same
command; ``jax.distributed`` is initialised from the environment (see the README).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
CONFIGS = ("t2mv", "i2mv", "recon", "vae")

sys.path.insert(0, ROOT)
from videomv_jax import cli  # noqa: E402
from videomv_jax.cli import UsageError, apply_overrides, make_parser  # noqa: E402


def load_config_module(name: str):
    if name in CONFIGS:
        if ROOT not in sys.path:
            sys.path.insert(0, ROOT)
        return importlib.import_module(f"configs.{name}")
    if not os.path.isfile(name):
        raise UsageError(f"--config {name!r} is neither one of {CONFIGS} nor a Python file")
    spec = importlib.util.spec_from_file_location("train_config", name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "get_train_config"):
        raise UsageError(f"{name} has no get_train_config(preset)")
    return mod


def build_config(args: argparse.Namespace):
    mod = load_config_module(args.config)
    cfg = mod.get_train_config(args.preset)
    apply_overrides(cfg, args.set)
    if args.workdir:
        cfg.workdir = args.workdir
    if args.steps is not None:
        cfg.train.num_steps = args.steps
    if args.data:
        cfg.data.path = args.data
    return cfg


def parse_args(argv=None) -> argparse.Namespace:
    p = make_parser(__doc__)
    p.add_argument("--config", required=True, help=f"one of {CONFIGS} or a config file")
    p.add_argument("--preset", default="full", choices=("full", "tiny"),
                   help="config preset: full (released models, converted checkpoints) or tiny "
                        "(videomv-tiny's small models, any machine)")
    p.add_argument("--workdir", help="run directory (overrides config.workdir)")
    p.add_argument("--data", help="built data set folder, e.g. from tools/make_shapes.py "
                                  "(overrides config.data.path)")
    p.add_argument("--steps", type=int, help="total steps (overrides config.train.num_steps)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key (repeatable; values are Python literals, "
                        "else strings); see --print-config for the keys")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--export", metavar="DIR",
                   help="after training, write the trained models as converted checkpoints")
    p.add_argument("--print-config", action="store_true", help="print the config and exit")
    from videomv_jax import compile_cache

    compile_cache.add_arguments(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax", "tensorflow_datasets"):  # per-save / per-file chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(argv)
    try:
        cli.check_int("--steps", args.steps, 1)
        cfg = build_config(args)
        cli.check_output_dir(cfg.workdir, "--workdir")
        if args.export:
            cli.check_output_dir(args.export, "--export")
        if not args.print_config:
            from videomv_jax.train.run import check_data_path

            check_data_path(cfg)
    except (UsageError, ValueError) as e:  # bad --config / --preset / --set / folders
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(cfg)
        return 0
    from videomv_jax import compile_cache
    from videomv_jax.parallel.mesh import initialize_distributed
    from videomv_jax.train.run import train
    from videomv_jax.train.trainer import NonFiniteError

    compile_cache.cache_dir_from_args(args)
    initialize_distributed()
    try:
        summary = train(cfg, resume=not args.no_resume, export=args.export)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    m = summary["metrics"]
    shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(m.items())
                      if k in ("loss", "psnr", "mse_rgb", "diffusion_mse", "l1"))
    state = "pre-empted (SIGTERM), saved" if summary["preempted"] else "done"
    print(f"{state}: steps {summary['start_step']}→{summary['end_step']} in "
          f"{summary['seconds']:.1f} s; {shown}; non-finite steps skipped: "
          f"{summary['nonfinite_total']}; checkpoints in {cfg.workdir}/checkpoints")
    for d in summary.get("exported", []):
        print(f"exported {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
