"""Evaluation report: a Markdown table (mean ± 95 % CI per metric and variant, paired
differences), PNG plots and JSON (aggregates and one file per sample).

Input: a list of per-sample records

.. code-block:: python

    {"sample": "000_a_red_cube", "meta": {...},
     "variants": {"aware": {"metrics": {"ref_psnr": 21.3, "ref_lpips": None, ...},
                            "per_view": {"ref_psnr": [..24 values..], ...}},
                  "plain": {...}}}

Metric values may be ``None`` (unavailable, e.g. LPIPS without weights): such a metric is shown
as ``n/a`` and stored as ``null``, never replaced by a number. Aggregates use
:func:`~videomv_jax.eval.metrics.summarize` (Student-t interval; PSNR capped at
:data:`~videomv_jax.eval.metrics.PSNR_CAP_DB`). When both variants of :data:`PAIR` are present
for the same samples, the paired difference ``aware - plain`` gets its own t interval and
paired t-test p-value (:func:`~videomv_jax.eval.metrics.paired_ci`). A record may name a
``"group"`` (``eval.py shapes``: "1 object" / "2 objects"); the report then adds one table
per group (:func:`aggregate_groups`), because a mean over mixed scene kinds can hide where a
model fails.

Plots use matplotlib when it is installed, else a PIL drawing (same content, plainer look).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from videomv_jax.eval.metrics import PSNR_CAP_DB, SMALL_N, paired_ci, summarize

__all__ = ["METRICS", "PAIR", "aggregate", "aggregate_groups", "compare_records",
           "compare_table", "load_records", "markdown_table", "write_comparison",
           "write_report"]

METRICS: dict[str, tuple[str, bool]] = {
    "ref_psnr": ("PSNR vs GT (dB)", True),
    "ref_ssim": ("SSIM vs GT", True),
    "ref_lpips": ("LPIPS-VGG vs GT", False),
    "lgm_psnr": ("LGM hold-out PSNR (dB)", True),
    "lgm_ssim": ("LGM hold-out SSIM", True),
    "lgm_lpips": ("LGM hold-out LPIPS-VGG", False),
    "lgm_input_psnr": ("LGM input-view PSNR (dB)", True),
    "fit_psnr": ("3DGS-fit hold-out PSNR (dB)", True),
    "fit_ssim": ("3DGS-fit hold-out SSIM", True),
    "fit_lpips": ("3DGS-fit hold-out LPIPS-VGG", False),
    "fit_train_psnr": ("3DGS-fit train-view PSNR (dB)", True),
}
"""Known metric keys → (label, higher is better). Other keys are reported with their key."""

PAIR: tuple[str, str] = ("aware", "plain")
"""Variants compared pairwise (first minus second)."""


def _label(metric: str) -> str:
    label, higher = METRICS.get(metric, (metric, True))
    return f"{label} {'↑' if higher else '↓'}"


def _capped(values: np.ndarray, metric: str) -> np.ndarray:
    return np.minimum(values, PSNR_CAP_DB) if "psnr" in metric else values


def _metric_keys(records: Sequence[Mapping]) -> list[str]:
    keys: list[str] = []
    for r in records:
        for v in r["variants"].values():
            for k in v.get("metrics", {}):
                if k not in keys:
                    keys.append(k)
    order = {k: i for i, k in enumerate(METRICS)}
    return sorted(keys, key=lambda k: (order.get(k, len(order)), k))


def _variant_keys(records: Sequence[Mapping]) -> list[str]:
    names: list[str] = []
    for r in records:
        for k in r["variants"]:
            if k not in names:
                names.append(k)
    return sorted(names, key=lambda k: (k not in PAIR, PAIR.index(k) if k in PAIR else 0, k))


def aggregate(records: Sequence[Mapping], confidence: float = 0.95) -> dict[str, Any]:
    """``{"variants": {variant: {metric: summary | None}}, "paired": {metric: diff | None},
    "metrics", "variant_names"}`` over the samples (see the module docstring)."""
    metrics, variants = _metric_keys(records), _variant_keys(records)
    out: dict[str, Any] = {"metrics": metrics, "variant_names": variants,
                           "confidence": confidence, "variants": {}, "paired": {}}
    for var in variants:
        out["variants"][var] = {}
        for m in metrics:
            vals = [r["variants"][var]["metrics"].get(m) for r in records
                    if var in r["variants"]]
            vals = [v for v in vals if v is not None]
            out["variants"][var][m] = summarize(vals, m, confidence) if vals else None
    if all(v in variants for v in PAIR):
        a_name, b_name = PAIR
        for m in metrics:
            pairs = [(r["variants"][a_name]["metrics"].get(m), r["variants"][b_name]
                      ["metrics"].get(m)) for r in records
                     if a_name in r["variants"] and b_name in r["variants"]]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if not pairs:
                out["paired"][m] = None
                continue
            a = _capped(np.asarray([p[0] for p in pairs], np.float64), m)
            b = _capped(np.asarray([p[1] for p in pairs], np.float64), m)
            out["paired"][m] = paired_ci(a, b, confidence, m)
    return out


def aggregate_groups(records: Sequence[Mapping], confidence: float = 0.95
                     ) -> dict[str, dict[str, Any]]:
    """:func:`aggregate` over each ``record["group"]`` (e.g. the number of objects in a shapes
    scene), in order of first appearance, with ``num_samples`` added; ``{}`` when no record
    names a group. Records without a group are left out of the groups (not of the totals)."""
    subsets: dict[str, list[Mapping]] = {}  # dicts keep insertion (first-appearance) order
    for r in records:
        if r.get("group") is not None:
            subsets.setdefault(str(r["group"]), []).append(r)
    return {name: {**aggregate(subset, confidence), "num_samples": len(subset)}
            for name, subset in subsets.items()}


def _fmt(x: float | None, metric: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    digits = 2 if "psnr" in metric else 4
    return f"{x:.{digits}f}"


def _fmt_summary(s: Mapping | None, metric: str) -> str:
    if s is None:
        return "n/a"
    if s["half_width"] is None:
        return f"{_fmt(s['mean'], metric)} (n={s['n']})"
    capped = f", {s['n_capped']} capped" if s.get("n_capped") else ""
    if s.get("clipped"):  # the t interval leaves the metric's range: show the clipped bounds
        return (f"{_fmt(s['mean'], metric)} [{_fmt(s['low'], metric)}, "
                f"{_fmt(s['high'], metric)}] (n={s['n']}{capped})")
    return f"{_fmt(s['mean'], metric)} ± {_fmt(s['half_width'], metric)} (n={s['n']}{capped})"


def _fmt_paired(d: Mapping | None, metric: str) -> str:
    if d is None:
        return "n/a"
    sign = "+" if d["mean"] >= 0 else ""
    if d["half_width"] is None:
        return f"{sign}{_fmt(d['mean'], metric)} (n={d['n']})"
    p = "n/a" if d["p_value"] is None else f"{d['p_value']:.3g}"
    return f"{sign}{_fmt(d['mean'], metric)} ± {_fmt(d['half_width'], metric)} (p={p})"


def markdown_table(agg: Mapping[str, Any]) -> str:
    """The aggregate as a Markdown table: one row per metric, one column per variant (mean ±
    CI half-width, n) and, when present, the paired ``aware − plain`` difference."""
    variants, metrics = agg["variant_names"], agg["metrics"]
    conf = int(round(agg["confidence"] * 100))
    head = ["metric", *[f"{v} (mean ± {conf}% CI)" for v in variants]]
    paired = bool(agg["paired"])
    if paired:
        head.append(f"{PAIR[0]} − {PAIR[1]} (paired, {conf}% CI)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in metrics:
        row = [_label(m), *[_fmt_summary(agg["variants"][v][m], m) for v in variants]]
        if paired:
            row.append(_fmt_paired(agg["paired"].get(m), m))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "sample"


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def _dump(path: str, obj: Any) -> None:
    def clean(x: Any) -> Any:  # JSON has no inf / NaN: store them as strings
        if isinstance(x, float) and not math.isfinite(x):
            return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.floating, np.integer, np.ndarray)):
            return clean(_json_default(x))
        return x

    with open(path, "w", encoding="utf-8") as f:
        json.dump(clean(obj), f, indent=2, default=_json_default)


# ---- plots --------------------------------------------------------------------------------------


def _errs(s: Mapping[str, Any]) -> tuple[float, float]:
    """(below, above) the mean: the interval as clipped to the metric's range, or 0, 0."""
    if s.get("low") is None:
        return 0.0, 0.0
    return max(0.0, float(s["mean"] - s["low"])), max(0.0, float(s["high"] - s["mean"]))


def _plot_data(agg: Mapping[str, Any]
               ) -> list[tuple[str, list[tuple[str, float, float, float]]]]:
    """[(metric label, [(variant, mean, error below, error above)])] for metrics with
    values (errors from the clipped interval, 0 without one)."""
    panels = []
    for m in agg["metrics"]:
        bars = []
        for v in agg["variant_names"]:
            s = agg["variants"][v][m]
            if s is not None:
                bars.append((v, float(s["mean"]), *_errs(s)))
        if bars:
            panels.append((_label(m), bars))
    return panels


def _paired_data(agg: Mapping[str, Any]) -> list[tuple[str, float, float, float]]:
    return [(_label(m), float(d["mean"]), *_errs(d))
            for m, d in agg["paired"].items() if d is not None]


def _axis_limits(lo: float, hi: float, nonnegative: bool = False) -> tuple[float, float]:
    """Axis limits around ``[lo, hi]`` with a readable minimum span (5 % of the magnitude, at
    least 0.01), so one sample or identical values do not zoom into rounding noise."""
    span = max(hi - lo, 0.05 * max(abs(lo), abs(hi)), 0.01)
    mid = 0.5 * (lo + hi)
    lo, hi = min(lo, mid - 0.5 * span), max(hi, mid + 0.5 * span)
    pad = 0.15 * (hi - lo)
    return (max(0.0, lo - pad) if nonnegative and lo >= 0 else lo - pad), hi + pad


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _plots_matplotlib(out_dir: str, agg, per_view, title: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    panels = _plot_data(agg)
    if panels:
        cols = min(3, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        for ax, (label, bars) in zip(axes.flat, panels, strict=False):
            names = [b[0] for b in bars]
            ax.bar(names, [b[1] for b in bars], yerr=[[b[2] for b in bars],
                                                       [b[3] for b in bars]], capsize=5,
                   color=["tab:blue", "tab:orange", "tab:green", "tab:red"][:len(bars)])
            ax.set_title(label, fontsize=9)
            lo = min(b[1] - b[2] for b in bars)
            hi = max(b[1] + b[3] for b in bars)
            ax.set_ylim(*_axis_limits(lo, hi, nonnegative=True))
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        conf = int(round(agg["confidence"] * 100))
        fig.suptitle(f"{title}: mean ± {conf}% CI", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out_dir, "metrics.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    paired = _paired_data(agg)
    if paired:  # one panel per metric: units differ (dB, SSIM, LPIPS)
        fig, axes = plt.subplots(len(paired), 1, figsize=(6, 1.1 * len(paired) + 0.8),
                                 squeeze=False)
        for ax, (label, mean, below, above) in zip(axes.flat, paired, strict=True):
            ax.errorbar([mean], [0], xerr=[[below], [above]], fmt="o", capsize=5)
            ax.axvline(0.0, color="grey", lw=1)
            span = max(abs(mean) + max(below, above), 0.01) * 1.2
            ax.set_xlim(-span, span)
            ax.set_yticks([])
            ax.set_title(label, fontsize=8)
        fig.suptitle(f"{PAIR[0]} − {PAIR[1]} (paired, same noise): mean ± "
                     f"{int(round(agg['confidence'] * 100))}% CI", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out_dir, "paired.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    if per_view:
        fig, axes = plt.subplots(1, len(per_view), figsize=(5 * len(per_view), 3.2),
                                 squeeze=False)
        for ax, (metric, curves) in zip(axes.flat, per_view.items(), strict=True):
            for variant, (x, mean) in curves.items():
                ax.plot(x, mean, marker=".", label=variant)
            ax.set_xlabel("view index")
            ax.set_title(_label(metric) + " per view (mean over samples)", fontsize=9)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, "per_view.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _plots_pil(out_dir: str, agg, per_view, title: str) -> list[str]:
    """Matplotlib-free fallback: bar panels with error bars drawn with PIL."""
    from PIL import Image, ImageDraw

    written = []
    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    panels = _plot_data(agg)
    if panels:
        pw, ph = 260, 200
        cols = min(3, len(panels))
        rows = math.ceil(len(panels) / cols)
        img = Image.new("RGB", (pw * cols, ph * rows + 20), "white")
        draw = ImageDraw.Draw(img)
        draw.text((5, 3), title, fill="black")
        for i, (label, bars) in enumerate(panels):
            r, c = divmod(i, cols)
            x0, y0 = c * pw, 20 + r * ph
            draw.text((x0 + 5, y0 + 2), label, fill="black")
            hi = max(b[1] + b[3] for b in bars)
            lo = min(0.0, min(b[1] - b[2] for b in bars))
            scale = (ph - 50) / max(hi - lo, 0.01)
            base = y0 + ph - 20 - (0 - lo) * scale
            bw = (pw - 40) // max(len(bars), 1)
            for j, (name, mean, below, above) in enumerate(bars):
                bx = x0 + 20 + j * bw
                top = base - mean * scale
                draw.rectangle([bx + 5, min(top, base), bx + bw - 5, max(top, base)],
                               fill=colors[j % len(colors)])
                cx = bx + bw // 2
                draw.line([cx, base - (mean - below) * scale, cx, base - (mean + above) * scale],
                          fill="black", width=2)
                draw.text((bx + 5, y0 + ph - 16), f"{name} {mean:.3g}", fill="black")
        path = os.path.join(out_dir, "metrics.png")
        img.save(path)
        written.append(path)
    paired = _paired_data(agg)
    if paired:
        w, rh = 600, 30
        img = Image.new("RGB", (w, rh * len(paired) + 30), "white")
        draw = ImageDraw.Draw(img)
        draw.text((5, 3), f"{PAIR[0]} - {PAIR[1]} (paired, 95% CI)", fill="black")
        mid, half = 3 * w // 4, w // 4 - 10
        draw.line([mid, 20, mid, img.height], fill=(150, 150, 150))
        for i, (label, mean, below, above) in enumerate(paired):  # each row on its own scale
            y = 30 + i * rh + rh // 2
            draw.text((5, y - 5), f"{label}: {mean:+.3g} (-{below:.2g} / +{above:.2g})",
                      fill="black")
            span = max(abs(mean) + max(below, above), 0.01)
            to_x = lambda v, s=span: mid + v / s * half  # noqa: E731
            draw.line([to_x(mean - below), y, to_x(mean + above), y], fill="black", width=2)
            draw.ellipse([to_x(mean) - 4, y - 4, to_x(mean) + 4, y + 4], fill=colors[0])
        path = os.path.join(out_dir, "paired.png")
        img.save(path)
        written.append(path)
    if per_view:
        pw, ph = 400, 220
        img = Image.new("RGB", (pw * len(per_view), ph), "white")
        draw = ImageDraw.Draw(img)
        for i, (metric, curves) in enumerate(per_view.items()):
            x0 = i * pw
            draw.text((x0 + 5, 3), _label(metric) + " per view", fill="black")
            allv = np.concatenate([np.asarray(m) for _, m in curves.values()])
            lo, hi = float(allv.min()), float(allv.max())
            hi = hi if hi > lo else lo + 1.0
            for j, (variant, (x, mean)) in enumerate(curves.items()):
                xs = x0 + 20 + np.asarray(x) / max(max(x), 1) * (pw - 40)
                ys = ph - 20 - (np.asarray(mean) - lo) / (hi - lo) * (ph - 50)
                draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)),
                          fill=colors[j % len(colors)], width=2)
                draw.text((x0 + 20 + 80 * j, ph - 15), variant, fill=colors[j % len(colors)])
        path = os.path.join(out_dir, "per_view.png")
        img.save(path)
        written.append(path)
    return written


def _per_view_curves(records: Sequence[Mapping], metrics: Sequence[str]
                     ) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """{metric: {variant: (view indices, mean over samples)}} for per-view reference PSNR."""
    curves: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for m in metrics:
        for r in records:
            for var, data in r["variants"].items():
                pv = (data.get("per_view") or {}).get(m)
                if pv is None:
                    continue
                curves.setdefault(m, {}).setdefault(var, ([], []))[1].append(pv)
    out: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for m, by_var in curves.items():
        for var, (_, rows) in by_var.items():
            lengths = {len(r) for r in rows}
            if len(lengths) != 1:
                continue
            arr = _capped(np.asarray(rows, np.float64), m)
            out.setdefault(m, {})[var] = (list(range(arr.shape[1])), arr.mean(0).tolist())
    return out


def write_report(out_dir: str, records: Sequence[Mapping], title: str = "Evaluation",
                 notes: Sequence[str] = (), settings: Mapping[str, Any] | None = None,
                 confidence: float = 0.95, plot_backend: str = "auto") -> dict[str, Any]:
    """Write ``report.md``, ``summary.json``, ``samples/<name>.json`` and PNG plots
    (``metrics.png``, ``paired.png`` when both variants exist, ``per_view.png`` when per-view
    reference PSNR exists) into ``out_dir``; returns the aggregate and the paths written.

    ``plot_backend``: ``"auto"`` (matplotlib if installed, else PIL), ``"matplotlib"``,
    ``"pil"``.
    """
    if not records:
        raise ValueError("write_report needs at least one sample record")
    os.makedirs(os.path.join(out_dir, "samples"), exist_ok=True)
    agg = aggregate(records, confidence)
    groups = aggregate_groups(records, confidence)
    per_view_metrics = [m for m in ("ref_psnr",) if m in agg["metrics"]]
    per_view = _per_view_curves(records, per_view_metrics)
    backend = plot_backend
    if backend == "auto":
        backend = "matplotlib" if _have_matplotlib() else "pil"
    if backend not in ("matplotlib", "pil"):
        raise ValueError(f"plot_backend must be 'auto', 'matplotlib' or 'pil', got {backend!r}")
    plot_fn = _plots_matplotlib if backend == "matplotlib" else _plots_pil
    plots = plot_fn(out_dir, agg, per_view, title)

    sample_files = []
    used: set[str] = set()
    for r in records:
        name = _safe_name(str(r["sample"]))
        while name in used:
            name += "_"
        used.add(name)
        path = os.path.join(out_dir, "samples", f"{name}.json")
        _dump(path, r)
        sample_files.append(path)

    lines = [f"# {title}", ""]
    lines += [f"- {n}" for n in notes]
    if notes:
        lines.append("")
    lines += [markdown_table(agg), ""]
    text = (f"Mean over {len(records)} sample(s) ± half-width of the "
            f"{int(round(confidence * 100))}% Student-t interval; n/a = not measured "
            f"(e.g. LPIPS without weights). PSNR values above {PSNR_CAP_DB:g} dB "
            f"(identical images) are capped.")
    if agg["paired"]:
        text += (f" Paired differences are per sample ({PAIR[0]} − {PAIR[1]}, same noise) "
                 f"with the paired t-test p-value.")
    n_min = min((v["n"] for var in agg["variants"].values() for v in var.values() if v),
                default=len(records))
    if n_min < SMALL_N:
        text += (f" **Few samples (n = {n_min} < {SMALL_N})**: the intervals are very wide "
                 f"(or, for n = 1, absent); read the means as indications, not measurements. "
                 f"Intervals are clipped to each metric's possible range (shown as [low, high]).")
    lines.append(text)
    lines.append("")
    for p in plots:
        lines.append(f"![{os.path.basename(p)}]({os.path.basename(p)})")
    lines.append("")
    if groups:
        lines += ["## By group", ""]
        for name, g in groups.items():
            lines += [f"### {name} ({g['num_samples']} sample(s))", "", markdown_table(g), ""]
    lines.append("Per-sample values: `samples/*.json`; aggregates: `summary.json`.")
    if settings:
        lines += ["", "## Settings", "", "```json",
                  json.dumps(settings, indent=2, default=_json_default), "```"]
    report = os.path.join(out_dir, "report.md")
    with open(report, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    summary = {"title": title, "num_samples": len(records), "aggregate": agg,
               "settings": dict(settings or {}), "notes": list(notes),
               "groups": groups, "plots": [os.path.basename(p) for p in plots],
               "plot_backend": backend}
    _dump(os.path.join(out_dir, "summary.json"), summary)
    return {"aggregate": agg, "report": report, "summary": os.path.join(out_dir, "summary.json"),
            "plots": plots, "samples": sample_files}


# --------------------------------------------------------------------------------------------
# two reports of the same samples (e.g. two checkpoints): paired per-sample differences
# --------------------------------------------------------------------------------------------


def load_records(report_dir: str) -> list[dict[str, Any]]:
    """The per-sample records of a report written by :func:`write_report`
    (``report_dir/samples/*.json``, in file-name order)."""
    sample_dir = os.path.join(report_dir, "samples")
    if not os.path.isdir(sample_dir):
        raise FileNotFoundError(f"{report_dir!r} is not an evaluation report: it has no "
                                f"samples/ folder (write one with eval.py)")
    names = sorted(n for n in os.listdir(sample_dir) if n.endswith(".json"))
    if not names:
        raise FileNotFoundError(f"{sample_dir!r} holds no sample JSON files")
    records = []
    for name in names:
        with open(os.path.join(sample_dir, name), encoding="utf-8") as f:
            records.append(json.load(f))
    return records


def _sample_key(r: Mapping) -> tuple:
    return (r.get("seed"), r.get("prompt"), str(r["sample"]))


def compare_records(records_a: Sequence[Mapping], records_b: Sequence[Mapping],
                    confidence: float = 0.95) -> dict[str, Any]:
    """Paired differences ``b − a`` of two evaluations of the same samples (matched by seed,
    prompt and sample name), per variant and metric, overall and per group:
    ``{"num_samples", "variants": {variant: {metric: {"a", "b", "diff", "b_better", "n"}}},
    "groups": {group: {"num_samples", "variants": ...}}}``. ``a`` / ``b`` are
    :func:`summarize` results, ``diff`` a :func:`paired_ci` result, ``b_better`` the number of
    samples where ``b`` is better (by the metric's direction). Raises ``ValueError`` naming the
    samples that only one side has."""
    index_a = {_sample_key(r): r for r in records_a}
    index_b = {_sample_key(r): r for r in records_b}
    only_a = sorted(str(k[2]) for k in index_a.keys() - index_b.keys())
    only_b = sorted(str(k[2]) for k in index_b.keys() - index_a.keys())
    if only_a or only_b:
        raise ValueError(
            "the two reports do not hold the same samples (same seeds and prompts): "
            f"only in the first: {only_a[:10] or 'none'}; only in the second: "
            f"{only_b[:10] or 'none'}. Evaluate both with the same --num-samples, "
            "--seed-offset and world settings")
    keys = [k for k in index_a if k in index_b]

    def table(subset: Sequence[tuple]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        ra = [index_a[k] for k in subset]
        rb = [index_b[k] for k in subset]
        variants = [v for v in _variant_keys(ra) if v in _variant_keys(rb)]
        metrics = [m for m in _metric_keys(ra) if m in _metric_keys(rb)]
        for var in variants:
            out[var] = {}
            for m in metrics:
                pairs = [(x["variants"][var]["metrics"].get(m), y["variants"][var]["metrics"]
                          .get(m)) for x, y in zip(ra, rb, strict=True)
                         if var in x["variants"] and var in y["variants"]]
                pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
                if not pairs:
                    out[var][m] = None
                    continue
                a = _capped(np.asarray([q[0] for q in pairs], np.float64), m)
                b = _capped(np.asarray([q[1] for q in pairs], np.float64), m)
                higher = METRICS.get(m, ("", True))[1]
                out[var][m] = {"a": summarize(a, m, confidence), "b": summarize(b, m, confidence),
                               "diff": paired_ci(b, a, confidence, m),
                               "b_better": int(np.sum(b > a if higher else b < a)),
                               "n": len(pairs)}
        return out

    groups: dict[str, list[tuple]] = {}
    for k in keys:
        g = index_a[k].get("group")
        if g is not None:
            groups.setdefault(str(g), []).append(k)
    return {"num_samples": len(keys), "confidence": confidence, "variants": table(keys),
            "groups": {g: {"num_samples": len(ks), "variants": table(ks)}
                       for g, ks in groups.items()}}


def compare_table(variants: Mapping[str, Any], name_a: str = "a", name_b: str = "b",
                  confidence: float = 0.95) -> str:
    """One Markdown table of :func:`compare_records`' ``variants``: a row per variant and
    metric with both means, the paired difference ``b − a`` and how often ``b`` is better."""
    conf = int(round(confidence * 100))
    head = ["variant", "metric", f"{name_a} (mean ± {conf}% CI)", f"{name_b} (mean ± {conf}% CI)",
            f"{name_b} − {name_a} (paired, {conf}% CI)", f"{name_b} better"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for var, rows in variants.items():
        for m, row in rows.items():
            if row is None:
                cells = ["n/a"] * 4
            else:
                cells = [_fmt_summary(row["a"], m), _fmt_summary(row["b"], m),
                         _fmt_paired(row["diff"], m), f"{row['b_better']} of {row['n']}"]
            lines.append("| " + " | ".join([var, _label(m), *cells]) + " |")
    return "\n".join(lines)


def write_comparison(out_dir: str, report_a: str, report_b: str, name_a: str = "a",
                     name_b: str = "b", confidence: float = 0.95) -> dict[str, Any]:
    """Compare two report folders (:func:`load_records`, :func:`compare_records`) and write
    ``compare.md`` and ``compare.json`` into ``out_dir``; returns the comparison."""
    cmp = compare_records(load_records(report_a), load_records(report_b), confidence)
    cmp.update(report_a=os.path.abspath(report_a), report_b=os.path.abspath(report_b),
               name_a=name_a, name_b=name_b)
    os.makedirs(out_dir, exist_ok=True)
    lines = [f"# {name_b} vs {name_a}", "",
             f"- {name_a}: `{report_a}`", f"- {name_b}: `{report_b}`",
             f"- {cmp['num_samples']} samples matched by seed and prompt; differences are "
             f"per sample ({name_b} − {name_a}) with a {int(round(confidence * 100))}% "
             f"Student-t interval and the paired t-test p-value", "",
             compare_table(cmp["variants"], name_a, name_b, confidence), ""]
    for g, sub in cmp["groups"].items():
        lines += [f"## {g} ({sub['num_samples']} sample(s))", "",
                  compare_table(sub["variants"], name_a, name_b, confidence), ""]
    with open(os.path.join(out_dir, "compare.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    _dump(os.path.join(out_dir, "compare.json"), cmp)
    return cmp
