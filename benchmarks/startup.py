"""Start-up benchmark: the README's sample command as separate processes, cold then warm cache.

Runs ``python sample.py --prompt "a red cube on a blue sphere"`` (videomv-tiny, the README's
first command) ``--runs`` times in fresh processes sharing one new, empty JAX compilation cache
directory (``--compilation-cache DIR``): run 1 compiles everything (cold cache, what a first
run on a new machine costs), the later runs find the executables on disk. For each run it
reports the wall time of the whole process, its CPU time (user + system: less sensitive to
other jobs on a shared machine than wall time), the 1-minute load average when it started, and
the per-stage times ``sample.py`` writes to ``run.json`` (checkpoint loading, text encoding,
sampling, decoding, LGM, writing outputs; "other" = the rest of the process: imports, config,
weight verification, exit), then the ratio of the last run to the first::

    python benchmarks/startup.py             # 2 runs; appends to benchmarks/RESULTS.md
    python benchmarks/startup.py --quick     # smoke run: --steps 5, prints only
    python benchmarks/startup.py --runs 3 --no-cache-run   # + a run with the cache off
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import append_results, core_count, cpu_model, log

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red cube on a blue sphere"
STAGES = ("load_checkpoints_s", "text_encode_s", "sampling_s", "decode_s", "lgm_s",
          "write_outputs_s")


def run_once(cmd: list[str], out_dir: Path, env: dict[str, str]) -> dict:
    """One ``sample.py`` process: wall, CPU, load average at start, ``run.json`` timings."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    records = sorted(out_dir.glob("*/run.json"))
    if not records:
        raise RuntimeError(f"{shlex.join(cmd)} wrote no run.json under {out_dir}")
    timings = json.loads(records[0].read_text())["timings"]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "load": load, "timings": timings}


def render(args, argv: list[str], sample_cmd: str, runs: list[tuple[str, dict]]) -> str:
    import jax
    import jaxlib

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    dev = jax.devices()[0]
    label = "quick smoke run" if args.quick else "full run"
    lines = [
        f"## Start-up: the README's sample command, cold vs warm compilation cache ({label}) — "
        f"{now} — {cpu_model()} ({core_count()} cores), device `{dev.device_kind}`",
        "",
        f"- machine: {cpu_model()}, {core_count()} cores available, {platform.platform()}, "
        f"Python {platform.python_version()}; jax {jax.__version__}, jaxlib "
        f"{jaxlib.__version__}",
        f"- command: `{' '.join(shlex.quote(a) for a in argv)}`; each run is a new process "
        f"`{sample_cmd}` sharing one compilation cache directory that starts empty",
        "- wall = the whole process; CPU = its user + system time (less sensitive to other jobs "
        "than wall); load = the 1-minute load average when it started (2 cores: above 2 the "
        "run shared them with other jobs); stage columns from `run.json`; other = wall − stages "
        "(imports, config, weight verification, process exit)",
        "",
        "| run | cache | load | wall (s) | CPU (s) | load ckpt | text | sampling | decode | LGM "
        "| write | other |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (cache, r) in enumerate(runs, 1):
        t = r["timings"]
        stages = [t.get(k, 0.0) for k in STAGES]
        other = r["wall_s"] - sum(stages)
        lines.append(f"| {i} | {cache} | {r['load']:.1f} | **{r['wall_s']:.1f}** | "
                     f"{r['cpu_s']:.1f} | " + " | ".join(f"{s:.2f}" for s in stages)
                     + f" | {other:.2f} |")
    cached = [r for c, r in runs if c.startswith("warm")]
    if cached:
        first, last = runs[0][1], cached[-1]
        lines += ["", f"- last warm / first (cold): wall **{last['wall_s'] / first['wall_s']:.2f}**"
                      f" ({last['wall_s']:.1f} s / {first['wall_s']:.1f} s), CPU "
                      f"{last['cpu_s'] / first['cpu_s']:.2f} ({last['cpu_s']:.1f} s / "
                      f"{first['cpu_s']:.1f} s)"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=2, help="processes with the cache (>= 2)")
    p.add_argument("--no-cache-run", action="store_true",
                   help="also one run with --no-compilation-cache (what every run cost before)")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--quick", action="store_true", help="--steps 5; prints only")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    p.add_argument("--no-write", action="store_true", help="print only, append nothing")
    args = p.parse_args(argv)
    if args.runs < 2:
        p.error("--runs must be at least 2 (a cold and a warm run)")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="videomv_startup_"))
    cache = tmp / "jax_cache"
    env = dict(os.environ)
    env.pop("VIDEOMV_JAX_COMPILATION_CACHE", None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    base = [sys.executable, "sample.py", "--prompt", args.prompt]
    if args.quick:
        base += ["--steps", "5"]
    plan = [("cold" if i == 0 else "warm", ["--compilation-cache", str(cache)])
            for i in range(args.runs)]
    if args.no_cache_run:
        plan.append(("off", ["--no-compilation-cache"]))
    runs = []
    try:
        for i, (label, flags) in enumerate(plan, 1):
            out = tmp / f"run{i}"
            cmd = base + ["--out", str(out)] + flags
            log(f"run {i}/{len(plan)} ({label} cache): {shlex.join(cmd[1:])}")
            r = run_once(cmd, out, env)
            log(f"  wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, load {r['load']:.1f}")
            runs.append((label, r))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    sample_cmd = shlex.join(["python"] + base[1:] + ["--compilation-cache", "DIR"])
    report = render(args, ["python", "benchmarks/startup.py"] + argv, sample_cmd, runs)
    print(report)
    if not (args.quick or args.no_write):
        append_results(args.out, report)
        log(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
