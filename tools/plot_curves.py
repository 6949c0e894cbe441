"""Plot the scalar curves of ``train.py`` runs (their TensorBoard event files) into one PNG.

    python tools/plot_curves.py --run vae=runs/vae-tiny2 --run t2mv=runs/t2mv-tiny2 \\
        --tag vae=train/psnr --tag t2mv=train/diffusion_mse --out docs/videomv-tiny/curves.png

Reads the event files with tensorboardX's protobuf definitions (no TensorFlow needed); also
writes the points as JSON next to the PNG (``--out`` with ``.json``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import struct
import sys


def read_scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` from every event file under ``run_dir/tensorboard``
    (or ``run_dir`` itself), sorted by step; a later file's value wins on a repeated step."""
    from tensorboardX.proto import event_pb2

    files = sorted(glob.glob(os.path.join(run_dir, "tensorboard", "events.out.tfevents.*"))
                   or glob.glob(os.path.join(run_dir, "events.out.tfevents.*")))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files in {run_dir!r}")
    out: dict[str, dict[int, float]] = {}
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            start = pos + 12
            if start + length + 4 > len(data):
                break  # a record still being written
            event = event_pb2.Event.FromString(data[start:start + length])
            pos = start + length + 4
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, {})[int(event.step)] = float(v.simple_value)
    return {tag: sorted(points.items()) for tag, points in out.items()}


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, metavar="NAME=DIR")
    p.add_argument("--tag", action="append", default=[], metavar="NAME=TAG",
                   help="scalar to plot per run (default: loss)")
    p.add_argument("--smooth", type=int, default=8, help="moving-average window (log points)")
    p.add_argument("--out", required=True, help="PNG path")
    args = p.parse_args(argv)
    runs = dict(item.split("=", 1) for item in args.run)
    tags = dict(item.split("=", 1) for item in args.tag)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.2), squeeze=False)
    dump = {}
    for ax, (name, run_dir) in zip(axes[0], runs.items(), strict=True):
        scalars = read_scalars(run_dir)
        tag = tags.get(name, "loss")
        if tag not in scalars:
            print(f"error: run {name!r} has no scalar {tag!r}; it has {sorted(scalars)}",
                  file=sys.stderr)
            return 2
        steps, values = zip(*scalars[tag], strict=True)
        ax.plot(steps, values, alpha=0.3, lw=0.8)
        ax.plot(steps, _smooth(list(values), args.smooth), lw=1.5)
        ax.set_title(f"{name}: {tag}")
        ax.set_xlabel("step")
        if tag.split("/")[-1] in ("loss", "diffusion_mse", "mse_rgb") and min(values) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        dump[name] = {"tag": tag, "points": scalars[tag]}
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(dump, f)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
