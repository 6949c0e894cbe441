"""Image helpers shared by the sampler, the renderer demos and evaluation: grids, PNG, video."""

from __future__ import annotations

import math
import os
import warnings

import imageio.v3 as iio
import numpy as np

__all__ = ["to_uint8", "image_grid", "write_image", "write_video"]

#: JAX's warning on every os.fork() (a regular expression for ``warnings.filterwarnings``)
FORK_WARNING = r"os\.fork\(\) was called"


def to_uint8(images) -> np.ndarray:
    """Float images in [0, 1] (any leading axes, channels last) → uint8 (rounded, clipped)."""
    arr = np.asarray(images, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError("images contain NaN or inf; refusing to write them as pixels")
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def image_grid(images, cols: int | None = None, pad: int = 0, pad_value: float = 1.0):
    """Tile [V, H, W, C] images into one [rows·H, cols·W, C] image (row-major, V ≤ rows·cols).

    Missing cells at the end are filled with ``pad_value``.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"image_grid expects [V, H, W, C] images, got shape {images.shape}")
    num, height, width, channels = images.shape
    cols = cols or math.ceil(math.sqrt(num))
    rows = math.ceil(num / cols)
    cell_h, cell_w = height + pad, width + pad
    grid = np.full((rows * cell_h - pad, cols * cell_w - pad, channels), pad_value,
                   dtype=images.dtype)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * cell_h:r * cell_h + height, c * cell_w:c * cell_w + width] = img
    return grid


def write_image(path: str | os.PathLike, image) -> None:
    """Write one float [H, W, C] image in [0, 1] (or uint8) as PNG."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = to_uint8(image)
    iio.imwrite(path, image)


def write_video(path: str | os.PathLike, frames, fps: int = 8) -> str:
    """Write [T, H, W, C] frames as MP4 (H.264 via imageio-ffmpeg); fall back to GIF.

    Returns the path actually written (the ``.gif`` twin when MP4 writing is unavailable).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = to_uint8(frames)
    path = os.fspath(path)
    try:
        with warnings.catch_warnings():
            # imageio-ffmpeg starts ffmpeg through subprocess with a preexec_fn, i.e. a fork,
            # and JAX's at-fork hook warns that forking a multithreaded process may deadlock:
            # harmless here (the child only execs ffmpeg), so no sample.py / train.py /
            # eval.py / app run prints it
            warnings.filterwarnings("ignore", message=FORK_WARNING, category=RuntimeWarning)
            iio.imwrite(path, frames, fps=fps, codec="libx264", macro_block_size=1)
        return path
    except Exception as err:  # noqa: BLE001 - any encoder problem falls back to GIF
        gif = os.path.splitext(path)[0] + ".gif"
        warnings.warn(f"MP4 writing failed ({err}); writing {gif} instead", stacklevel=2)
        iio.imwrite(gif, frames, duration=1000 / fps, loop=0)
        return gif
