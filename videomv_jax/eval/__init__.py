"""videomv_jax.eval: image metrics, GT-free multi-view consistency, view folders and reports.

* :mod:`~videomv_jax.eval.metrics` — PSNR, SSIM (skimage-compatible), LPIPS wrapper,
  Student-t / paired / bootstrap confidence intervals.
* :mod:`~videomv_jax.eval.consistency` — (a) LGM 4-view reconstruction scored on the other
  views, (b) gradient-descent Gaussian fit on half of the views scored on the other half.
* :mod:`~videomv_jax.eval.folders` — ``sample.py`` outputs, G-Objaverse, NeRF
  ``transforms.json`` and PNG + ``cameras.json`` folders, composited on white.
* :mod:`~videomv_jax.eval.report` — Markdown table, PNG plots, per-sample JSON.

The command line is ``eval.py`` at the repository root.
"""

from videomv_jax.eval.consistency import (
    DEFAULT_LGM_INPUT_VIEWS,
    FitConfig,
    estimate_background,
    fit_gaussians,
    fit_holdout_score,
    lgm_holdout_score,
    resolve_background,
)
from videomv_jax.eval.folders import (
    FolderError,
    ViewSet,
    camera_angle_error,
    detect_layout,
    find_view_sets,
    load_views,
    read_image,
    write_cameras_json,
)
from videomv_jax.eval.metrics import (
    PSNR_CAP_DB,
    bootstrap_ci,
    image_metrics,
    lpips,
    mean_ci,
    mse,
    paired_ci,
    psnr,
    ssim,
    summarize,
)
from videomv_jax.eval.report import (
    METRICS,
    aggregate,
    aggregate_groups,
    markdown_table,
    write_report,
)

__all__ = [
    "DEFAULT_LGM_INPUT_VIEWS",
    "METRICS",
    "PSNR_CAP_DB",
    "FitConfig",
    "FolderError",
    "ViewSet",
    "aggregate",
    "aggregate_groups",
    "bootstrap_ci",
    "camera_angle_error",
    "detect_layout",
    "estimate_background",
    "find_view_sets",
    "fit_gaussians",
    "fit_holdout_score",
    "image_metrics",
    "lgm_holdout_score",
    "load_views",
    "lpips",
    "markdown_table",
    "mean_ci",
    "mse",
    "paired_ci",
    "psnr",
    "read_image",
    "resolve_background",
    "ssim",
    "summarize",
    "write_cameras_json",
    "write_report",
]
