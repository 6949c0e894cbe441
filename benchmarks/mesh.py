"""Benchmark of the mesh export (videomv_jax.export.mesh) on an LGM-big-sized asset.

The asset is ``benchmarks/rasterize.py``'s synthetic LGM-like scene (a union of ellipsoids in
[-0.6, 0.6]³, LGM's scale activation, mostly high opacities) with 65,536 Gaussians, the number
LGM-big predicts. ``export_mesh`` runs with the default :class:`MeshConfig` (grid 128 along the
longest side, iso level 0.25, 10 Taubin passes, decimation to 20,000 faces, 1024² texture baked
from 32 renders at 256²) and writes ``.glb`` + ``.obj``/``.mtl``/``.png`` to a temporary folder.
Reported per stage (``export_mesh``'s record): the first call (includes JAX compilation) and a
second call in the same process (compiled), and the process's peak resident memory
(``ru_maxrss``, includes the JAX runtime and the asset) after each.

Usage::

    python benchmarks/mesh.py            # full run, appends to benchmarks/RESULTS.md
    python benchmarks/mesh.py --quick    # 4,096 Gaussians, small grid and texture, prints only
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import jax
import jaxlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import append_results, core_count, cpu_model, log  # noqa: E402
from rasterize import make_scene  # noqa: E402

from videomv_jax.export.mesh import MeshConfig, export_mesh  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"
STAGES = ("opacity_field_s", "marching_cubes_cleanup_s", "uv_atlas_s", "texture_bake_s",
          "write_s")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small smoke run; prints only")
    p.add_argument("--gaussians", type=int, default=65536)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    cfg = MeshConfig()
    n = args.gaussians
    if args.quick:
        n = 4096
        cfg = MeshConfig(resolution=48, texture_size=128, bake_views=4, bake_resolution=64,
                         target_faces=2000)
    load_start = os.getloadavg()
    scene = make_scene(n, args.seed)
    log(f"asset: {n:,} Gaussians; baseline peak RSS {peak_rss_gib():.2f} GiB")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in ("first call (incl. compile)", "second call (compiled)"):
            t0 = time.perf_counter()
            record = export_mesh(scene, tmp, "asset", cfg)
            total = time.perf_counter() - t0
            sizes = sum(os.path.getsize(f) for f in record["files"])
            rows.append((run, record, total, peak_rss_gib(), sizes))
            log(f"{run}: {total:.1f} s, {record['faces']:,} faces, peak RSS "
                f"{peak_rss_gib():.2f} GiB")
    header = ("| run | Gaussians | grid | faces | " + " | ".join(s[:-2].replace("_", " ")
                                                            + " (s)" for s in STAGES)
              + " | total (s) | peak RSS (GiB) | files (MiB) |")
    lines = [header, "|---" + "|---:" * (len(STAGES) + 6) + "|"]
    for run, rec, total, rss, sizes in rows:
        t = rec["timings"]
        lines.append(f"| {run} | {n:,} | {'×'.join(map(str, rec['grid']))} | {rec['faces']:,} | "
                     + " | ".join(f"{t.get(s, 0.0):.2f}" for s in STAGES)
                     + f" | {total:.2f} | {rss:.2f} | {sizes / 2 ** 20:.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.quick or args.no_write:
        return 0
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    text = "\n".join([
        f"## Mesh export (full run) — {now} — {cpu_model()} ({core_count()} cores), device "
        f"`{jax.devices()[0].platform}`",
        "",
        f"- machine: {cpu_model()}, {core_count()} cores available, {platform.platform()}, "
        f"Python {platform.python_version()}; load average (1 / 5 / 15 min) "
        f"{load_start[0]:.1f} / {load_start[1]:.1f} / {load_start[2]:.1f} when it started, "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} when it ended (the machine is shared: "
        "timings under load are upper bounds)",
        f"- jax {jax.__version__}, jaxlib {jaxlib.__version__}, device `{jax.devices()[0]}`",
        "- command: `python benchmarks/mesh.py`",
        "- measured: `videomv_jax.export.mesh.export_mesh` with the default `MeshConfig` "
        f"({cfg.resolution} grid points along the longest side, level {cfg.level}, "
        f"{cfg.smooth_iterations} Taubin passes, {cfg.target_faces:,} faces, "
        f"{cfg.texture_size}² texture from {cfg.bake_views} renders at {cfg.bake_resolution}²) "
        "on `benchmarks/rasterize.py`'s LGM-like scene (seed 0); stage times from its record; "
        "peak RSS = the process's `ru_maxrss` after the call (JAX runtime included).",
        "",
        table,
        "",
    ])
    append_results(args.out, text)
    log(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
