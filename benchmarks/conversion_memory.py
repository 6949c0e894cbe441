#!/usr/bin/env python
"""Peak host memory and time of tools/convert_torch_weights.py on full-size checkpoints.

The checkpoints are built with the released key layout (names, shapes, order) of
``tests/data/checkpoints/*.json`` in the released dtypes: the VideoMV text / image ``.pth``
(float16, UNet + ``lgm_big``), the LDM VAE (float32, ``state_dict`` wrapper), LGM's
``model.safetensors`` (float16) and open_clip ViT-H-14 (float32). Their values are zeros (they
do not change what is read, converted and written). Each conversion runs in its own process
under ``/usr/bin/time -v``; "peak RSS" is its maximum resident set size, "written" the bytes of
the parameters it writes, and "base" the RSS of a process that only imports what the converter
imports (jax, torch, orbax). Run it once, niced, on a machine with ~20 GB of free disk:

    nice python benchmarks/conversion_memory.py [--cases unet-t2v,lgm,...] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SPEC = REPO / "tests" / "data" / "checkpoints"

_MAKE = r"""
import json, sys, torch
spec, out, dtype, wrap = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3]), sys.argv[4]
shapes = json.load(open(spec))
if out.endswith(".safetensors"):
    from safetensors.torch import save_file
    save_file({k: torch.zeros(v, dtype=dtype) for k, v in shapes.items()}, out)
else:  # torch.empty: pages never written, so writing the file needs little memory
    sd = {k: torch.empty(v, dtype=dtype) for k, v in shapes.items()}
    torch.save({"state_dict": sd} if wrap == "wrap" else sd, out)
"""

#: name → (tests/data/checkpoints table, file, torch dtype, wrap in {"state_dict": ...})
SOURCES = {
    "videomv_t2v": ("videomv_t2v.json", "videomv_t2v.pth", "float16", "wrap"),
    "videomv_i2v": ("videomv_i2v.json", "videomv_i2v.pth", "float16", "wrap"),
    "ldm_vae": ("ldm_vae.json", "ldm_vae.ckpt", "float32", "wrap"),
    "lgm_big": ("lgm_big.json", "model.safetensors", "float16", "plain"),
    "open_clip": ("open_clip_vit_h_14.json", "open_clip_pytorch_model.bin", "float32", "plain"),
}
#: case → (kind, format, source, storage dtype or None)
CASES = {
    "unet-t2v": ("unet-t2v", "vgen", "videomv_t2v", "float16"),
    "unet-t2v-f32": ("unet-t2v", "vgen", "videomv_t2v", None),
    "unet-i2v": ("unet-i2v", "vgen", "videomv_i2v", "float16"),
    "lgm-from-t2v": ("lgm", "vgen", "videomv_t2v", None),
    "lgm": ("lgm", "lgm", "lgm_big", "float16"),
    "vae": ("vae", "ldm", "ldm_vae", None),
    "clip-text": ("clip-text", "open_clip", "open_clip", None),
    "clip-vision": ("clip-vision", "open_clip", "open_clip", "float16"),
}


def _time_v(cmd: list[str]) -> tuple[int, float, str]:
    """(max RSS bytes, wall seconds, stderr) of ``cmd`` under /usr/bin/time -v."""
    t0 = time.time()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return int(m.group(1)) * 1024, wall, proc.stderr


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="/tmp/videomv_conversion_bench")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS.md"),
                   help="results file the table is appended to")
    p.add_argument("--no-write", action="store_true", help="only print the table")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: the VAE case only (0.3 GB), printed, not written")
    p.add_argument("--keep", action="store_true", help="keep the converted directories")
    args = p.parse_args(argv)
    from common import append_results, core_count, cpu_model, log

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cases = ["vae"] if args.quick else [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown cases {unknown}; known: {sorted(CASES)}")
    base_rss, _, _ = _time_v([sys.executable, "-c",
                              "import jax, torch, orbax.checkpoint, videomv_jax.convert.run"])
    rows = []
    for case in cases:
        kind, fmt, src_name, storage = CASES[case]
        spec, fname, dtype, wrap = SOURCES[src_name]
        src = work / fname
        if not src.exists():
            log(f"writing {src} ...")
            subprocess.run([sys.executable, "-c", _MAKE, str(SPEC / spec), str(src), dtype, wrap],
                           check=True)
        out = work / f"out_{case}"
        cmd = [sys.executable, "tools/convert_torch_weights.py", kind, str(src), str(out),
               "--format", fmt, "--overwrite", "--no-progress"]
        if storage:
            cmd += ["--storage-dtype", storage]
        log(f"{case}: {' '.join(cmd[1:])}")
        load = os.getloadavg()[0]
        rss, wall, _ = _time_v(cmd)
        meta = json.loads((out / "config.json").read_text())
        written = meta["num_params"] * (2 if storage in ("float16", "bfloat16") else 4)
        rows.append((case, fname, os.path.getsize(src), meta["source"]["num_tensors"],
                     meta["num_params"], storage or "float32", written, rss, wall, load))
        log(f"  peak RSS {rss / 2**30:.2f} GiB, written {written / 2**30:.2f} GiB, {wall:.0f}s")
        if not args.keep:
            subprocess.run(["rm", "-rf", str(out)], check=True)

    import jax
    import torch

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## Conversion memory and time (full-size released layouts) — {now} — "
             f"{cpu_model()} ({core_count()} cores)", "",
             f"- jax {jax.__version__}, torch {torch.__version__}; command: "
             f"`nice python benchmarks/conversion_memory.py`",
             "- source checkpoints: the released key layouts of tests/data/checkpoints in the "
             "released dtypes (values not set); each conversion in its own process under "
             "`/usr/bin/time -v` (peak RSS = maximum resident set size); written = the "
             "parameter bytes stored; base = RSS of a process that only imports jax, torch, "
             f"orbax and the converter: {base_rss / 2**30:.2f} GiB; load = the 1-minute load "
             f"average when the case started ({core_count()} cores: time is wall-clock and "
             f"grows with other work; memory does not).", "",
             "| case | source file | source GiB | tensors | parameters | stored as | written "
             "GiB | peak RSS GiB | peak / written | (peak − base) / written | time (s) | "
             "load |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for case, fname, size, ntens, nparams, stored, written, rss, wall, load in rows:
        lines.append(f"| {case} | {fname} | {size / 2**30:.2f} | {ntens:,} | {nparams:,} | "
                     f"{stored} | {written / 2**30:.2f} | {rss / 2**30:.2f} | "
                     f"{rss / written:.2f} | {(rss - base_rss) / written:.2f} | {wall:.0f} | "
                     f"{load:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not (args.no_write or args.quick):
        append_results(Path(args.out), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
