"""videomv-jax web demo (Gradio): a prompt or an image → 24 views, videos and a 3D viewer.

Run from the repository root (the sampling configs live in ``configs/``)::

    python -m videomv_jax.app                      # packaged videomv-tiny, http://127.0.0.1:7860
    python -m videomv_jax.app --host 0.0.0.0 --port 8080
    python -m videomv_jax.app --share              # also a public *.gradio.live link
    python -m videomv_jax.app --checkpoint-dir ckpt/t2mv --checkpoint-dir ckpt/i2mv

The page takes a prompt (text→MV) or an image (image→MV: RGBA, or RGB on white, prepared as
``sample.py`` does) and shows the 24 generated views, a video of the views, a turntable of the
reconstructed 3D Gaussian asset, an interactive viewer of its ``.ply``, a textured mesh of it
(:data:`DEMO_MESH_CONFIG`; "Export a mesh" in the advanced settings turns it off) and downloads
(the ``.ply``, ``mesh.glb``, ``run.json`` and a zip of everything, ``mesh.obj`` / ``.mtl`` /
``.png`` included). Progress is reported per DDIM step. Requests
wait in a queue and run one at a time; the models are loaded and compiled once at start-up (a
warm-up sample with the default settings). Each request writes only into its own folder under
``--output-root`` (default: a new temporary folder); old request folders are deleted.

The request logic (:class:`DemoModel`, :func:`prepare_request`, :func:`clean_old_requests`)
does not import Gradio; :func:`build_demo` builds the page.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import queue
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if (_ROOT / "configs").is_dir() and str(_ROOT) not in sys.path:  # configs/ is not installed
    sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402

from videomv_jax import compile_cache  # noqa: E402

__all__ = ["AppInputError", "DemoModel", "DemoRequest", "DemoResult", "build_demo",
           "clean_old_requests", "main", "parse_args", "prepare_request"]

MODE_TITLES = {"t2mv": "text→MV", "i2mv": "image→MV"}
TINY_PROMPTS = ("a red cube on a blue sphere", "a blue cylinder next to a yellow cone",
                "a green torus", "a purple cube", "an orange cone on a white box")
OTHER_PROMPTS = ("a wooden chair", "a red sports car", "a cute corgi")
SEED_MAX = 2**31 - 1
REQUEST_PREFIX = "req_"
TURNTABLE_SIZE = 256
"""Side of the asset turntable frames (the .ply rendered at the views' cameras)."""
DEMO_MESH_SETTINGS = {"resolution": 96, "target_faces": 5_000, "texture_size": 512,
                      "bake_views": 16, "bake_resolution": 128}
"""The page's mesh export (:class:`videomv_jax.export.mesh.MeshConfig` fields), coarser than
``sample.py --mesh``'s defaults so that it adds seconds on a CPU: videomv-tiny's asset (4,096
Gaussians) meshes in 1.9 s once compiled (the warm-up compiles it) on the idle 2-core CPU,
about 10 s when the machine is loaded."""


class AppInputError(ValueError):
    """A bad request (message shown in the page as is: what is wrong and how to fix it)."""


@dataclasses.dataclass
class DemoRequest:
    """What the page sends. ``None`` settings take the model's defaults."""

    prompt: str = ""
    image: str | None = None
    seed: int | float | None = None
    steps: int | float | None = None
    guidance: float | None = None
    aware: bool = True
    elevation: float | None = None
    negative_prompt: str | None = None
    mesh: bool = True


@dataclasses.dataclass
class DemoResult:
    """The files written for one request (absolute paths) and its record."""

    folder: str
    views: list[str]
    grid: str
    views_video: str
    turntable: str
    ply: str
    viewer_ply: str
    run_json: str
    zip: str
    notes: list[str]
    record: dict[str, Any]
    mesh_glb: str | None = None
    """``mesh.glb`` (the asset's frame, like the ``.ply``); ``None`` without a mesh."""
    viewer_mesh_glb: str | None = None
    """``viewer_mesh.glb``: the same mesh turned upright for glTF's +y up (the page's viewer)."""


# ---- models -------------------------------------------------------------------------------------


def _checkpoint_mode(directory: str) -> str:
    """``t2mv`` / ``i2mv`` from the kind of the UNet in a converted checkpoint directory."""
    from videomv_jax.model_store import read_converted_config
    from videomv_jax.pipeline import CONVERT_HINT, MODES

    unet = os.path.join(directory, "unet")
    if not os.path.isdir(directory):
        raise AppInputError(f"--checkpoint-dir {directory!r} does not exist; {CONVERT_HINT}")
    try:
        kind = read_converted_config(unet).get("model")
    except (OSError, ValueError) as err:
        raise AppInputError(f"--checkpoint-dir {directory!r}: no converted UNet in {unet!r} "
                            f"({err}); {CONVERT_HINT}") from err
    for mode, unet_kind in MODES.items():
        if kind == unet_kind:
            return mode
    raise AppInputError(f"--checkpoint-dir {directory!r}: unet/ holds a {kind!r} model, "
                        f"expected one of {sorted(MODES.values())}")


class DemoModel:
    """The pipelines the page serves (one per mode) with their default configs.

    ``checkpoint_dirs`` empty: the packaged videomv-tiny (both modes, or ``modes``). Otherwise
    each directory serves the mode of its UNet (``unet-t2v`` → text→MV, ``unet-i2v`` →
    image→MV). ``load=False`` reads the configs only (enough for :func:`prepare_request`)."""

    def __init__(self, checkpoint_dirs: Sequence[str] = (),
                 modes: Sequence[str] = ("t2mv", "i2mv"), steps: int | None = None,
                 load: bool = True):
        import jax

        from configs import i2mv, t2mv
        from videomv_jax import tiny
        from videomv_jax.pipeline import MultiViewPipeline, devices_for_inputs

        unknown = sorted(set(modes) - set(MODE_TITLES))
        if unknown:
            raise AppInputError(f"unknown modes {unknown}; choose from {sorted(MODE_TITLES)}")
        self.manifest = None
        self.configs: dict[str, Any] = {}
        if checkpoint_dirs:
            for d in checkpoint_dirs:
                mode = _checkpoint_mode(d)
                if mode in self.configs:
                    raise AppInputError(f"two --checkpoint-dir folders hold {MODE_TITLES[mode]} "
                                        f"models; give at most one per mode")
                cfg = (t2mv if mode == "t2mv" else i2mv).get_config()
                cfg.checkpoint_dir = d
                self.configs[mode] = cfg
        else:
            for mode in modes:
                cfg = (t2mv if mode == "t2mv" else i2mv).get_config()
                try:
                    self.manifest = tiny.use_default_model(cfg, mode)
                except tiny.TinyWeightsError as err:
                    raise AppInputError(str(err)) from err
                self.configs[mode] = cfg
        self.configs = {m: c for m, c in self.configs.items() if m in modes}
        if not self.configs:
            raise AppInputError(f"no model serves the modes {list(modes)}")
        self.default_sampling = {m: (c.sampler.num_steps, tuple(c.sampler.aware_steps))
                                 for m, c in self.configs.items()}
        for mode, cfg in self.configs.items():
            cfg.sampler.progress = True  # the loop in segments, a callback after each
            if steps is not None:
                _set_steps(cfg, int(steps), True, *self.default_sampling[mode])
                _sampler_config(cfg)  # a bad --steps fails at start-up
        for cfg in self.configs.values():  # one request = one sample: no padded data shards
            cfg.parallel.devices = devices_for_inputs(cfg.parallel, 1, jax.local_device_count())
        self.pipelines = {m: MultiViewPipeline.from_checkpoints(c.checkpoint_dir, c)
                          for m, c in self.configs.items()} if load else {}
        for pipe in self.pipelines.values():
            pipe.steps_per_call = 1  # the page's progress advances after every DDIM step
        self.lock = threading.Lock()  # one sample at a time (the page's queue also ensures it)

    @property
    def modes(self) -> list[str]:
        return list(self.configs)

    @property
    def is_tiny(self) -> bool:
        return self.manifest is not None

    def describe(self) -> str:
        """One line naming the models (shown in the page)."""
        if self.is_tiny:
            return ("**videomv-tiny**, the small model that ships with videomv-jax: trained on "
                    "CPU on a procedural world of one or two coloured primitives (sphere, "
                    "cube, box, cylinder, cone, torus; 'on' / 'next to') at 64×64. It knows "
                    "nothing else. Full-size VideoMV: `--checkpoint-dir` with converted "
                    "checkpoints.")
        return "Converted checkpoints: " + ", ".join(
            f"{MODE_TITLES[m]} `{c.checkpoint_dir}`" for m, c in self.configs.items())

    def examples(self) -> tuple[list[str], list[str]]:
        """(example prompts, example image paths) for the page."""
        prompts = list(TINY_PROMPTS if self.is_tiny else OTHER_PROMPTS)
        images = []
        if self.is_tiny:
            from videomv_jax import tiny

            folder = tiny.weights_dir() / "examples"
            images = [str(folder / n) for n in sorted(self.manifest.get("examples", {}))
                      if (folder / n).is_file()]
        return prompts, images

    # -- one request ------------------------------------------------------------------------------

    def generate(self, request: DemoRequest, out_dir: str,
                 step_callback: Callable[[int, int], None] | None = None,
                 stage_callback: Callable[[str], None] | None = None) -> DemoResult:
        """Validate ``request`` (:class:`AppInputError`), sample, reconstruct and write every
        output into ``out_dir`` (created). ``step_callback(done, total)`` after each DDIM step,
        ``stage_callback(name)`` at each stage."""
        mode, cfg, notes, rgb = prepare_request(self, request)
        stage = stage_callback or (lambda _name: None)
        with self.lock:
            pipe = self.pipelines[mode]
            pipe.config = cfg
            pipe.step_callback = step_callback
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    stage("sampling")
                    if mode == "t2mv":
                        result = pipe.text_to_mv([request.prompt.strip()], cfg.seed)[0]
                    else:
                        result = pipe.image_to_mv([rgb], cfg.seed)[0]
            finally:
                pipe.step_callback = None
            total_s = time.perf_counter() - t0
            notes += [str(w.message) for w in caught
                      if not issubclass(w.category, DeprecationWarning)]
            stage("rendering the asset turntable")
            t0 = time.perf_counter()
            turntable = render_asset_turntable(result.gaussians, result.cameras,
                                               pipe.sampler_config())
            render_s = time.perf_counter() - t0
        timings = {"generate_s": total_s, "asset_turntable_s": render_s}
        mesh = None
        if request.mesh:
            stage("meshing the asset")
            t0 = time.perf_counter()
            mesh = write_demo_mesh(result.gaussians, out_dir, notes)
            timings["mesh_s"] = time.perf_counter() - t0
        stage("writing files")
        return _write_outputs(self, out_dir, mode, cfg, request, result, turntable, notes,
                              timings, mesh)

    def warm_up(self, log: Callable[[str], None] = print) -> dict[str, float]:
        """Compile every served mode at its default settings (one sample each, outputs
        discarded); returns seconds per mode."""
        out = {}
        prompts, images = self.examples()
        for mode in self.modes:
            t0 = time.perf_counter()
            if mode == "t2mv":
                req = DemoRequest(prompt=prompts[0])
            else:
                if not images:
                    from PIL import Image

                    tmp_img = os.path.join(tempfile.mkdtemp(prefix="videomv_warmup_"), "x.png")
                    im = np.full((64, 64, 4), 0, np.uint8)
                    im[16:48, 16:48] = (200, 40, 40, 255)
                    Image.fromarray(im, "RGBA").save(tmp_img)
                    images = [tmp_img]
                req = DemoRequest(image=images[0])
            folder = tempfile.mkdtemp(prefix="videomv_warmup_")
            try:
                self.generate(req, folder)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            out[mode] = time.perf_counter() - t0
            log(f"warm-up {MODE_TITLES[mode]}: {out[mode]:.1f} s (compilation included)")
        return out


# ---- validation ---------------------------------------------------------------------------------


def _set_steps(cfg: Any, steps: int, aware: bool, default_steps: int,
               default_aware: tuple[int, ...]) -> None:
    """``steps`` DDIM steps; aware steps at the model's fractions (as ``sample.py --steps``:
    ``i * steps // default_steps``), or none."""
    cfg.sampler.num_steps = steps
    cfg.sampler.aware_steps = (tuple(sorted({i * steps // default_steps for i in default_aware}))
                               if aware else ())


def _sampler_config(cfg: Any):
    """The :class:`SamplerConfig` of ``cfg``, checked (including the DDIM grid); errors as
    :class:`AppInputError`."""
    from videomv_jax.diffusion.sampler import SamplerConfig

    try:
        scfg = SamplerConfig(**dict(cfg.sampler.to_dict()))
        scfg.ddim_schedule()
    except (TypeError, ValueError) as err:
        raise AppInputError(f"invalid settings: {err}") from err
    return scfg


def _as_int(value: Any, name: str, lo: int, hi: int) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError) as err:
        raise AppInputError(f"{name} must be a whole number, got {value!r}") from err
    if not math.isfinite(f) or f != int(f) or not lo <= f <= hi:
        raise AppInputError(f"{name} must be a whole number in [{lo}, {hi}], got {value!r}")
    return int(f)


def _as_float(value: Any, name: str, lo: float, hi: float) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError) as err:
        raise AppInputError(f"{name} must be a number, got {value!r}") from err
    if not math.isfinite(f) or not lo <= f <= hi:
        raise AppInputError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
    return f


def _uploaded(message: str, path: str) -> str:
    """A pipeline message about ``path`` worded for the page: the upload's temporary path is
    not the user's file name ("image '/tmp/…/x.png' is blank" → "the uploaded image is …")."""
    quoted = repr(str(path))
    return message.replace(f"image {quoted}", "the uploaded image").replace(
        quoted, "the uploaded image")


def prepare_request(model: DemoModel, request: DemoRequest
                    ) -> tuple[str, Any, list[str], np.ndarray | None]:
    """Check ``request`` before any model runs, as ``sample.py`` does: returns ``(mode, config,
    notes, image)``, ``image`` the prepared float RGB input for image→MV (read, recentred and
    checked by :func:`videomv_jax.pipeline.load_image`). Raises :class:`AppInputError`."""
    from videomv_jax import tiny
    from videomv_jax.pipeline import PipelineError, load_image

    prompt = (request.prompt or "").strip()
    image = request.image or None
    if prompt and image:
        raise AppInputError("give either a prompt (text→MV) or an image (image→MV), not both: "
                            "clear one of them")
    if not prompt and not image:
        raise AppInputError("give a prompt (text→MV) or an image (image→MV)")
    mode = "i2mv" if image else "t2mv"
    if mode not in model.configs:
        raise AppInputError(f"this server has no {MODE_TITLES[mode]} model (it serves "
                            f"{', '.join(MODE_TITLES[m] for m in model.modes)})")
    cfg = model.configs[mode].copy_and_resolve_references()
    default_steps, default_aware = model.default_sampling[mode]
    if request.seed is not None:
        cfg.seed = _as_int(request.seed, "seed", 0, SEED_MAX)
    steps = (cfg.sampler.num_steps if request.steps is None
             else _as_int(request.steps, "steps", 1, 1000))
    _set_steps(cfg, steps, bool(request.aware), default_steps, default_aware)
    if request.guidance is not None:
        cfg.sampler.guidance_scale = _as_float(request.guidance, "guidance", 0.0, 100.0)
    if request.elevation is not None:
        cfg.elevation = _as_float(request.elevation, "elevation", -89.0, 89.0)
    if request.negative_prompt is not None:
        cfg.negative_prompt = str(request.negative_prompt)
    _sampler_config(cfg)
    notes = []
    if model.is_tiny:
        trained_elev = model.configs[mode].elevation
        if abs(cfg.elevation - trained_elev) > 1e-6:
            notes.append(f"videomv-tiny was trained at elevation {trained_elev:g}° only; at "
                         f"{cfg.elevation:g}° expect the views to ignore the change")
        if prompt:
            unknown = tiny.unknown_words(prompt, model.manifest)
            if unknown:
                notes.append(f"the words {unknown} are outside videomv-tiny's training "
                             f"vocabulary, so they are ignored in effect (it knows only its "
                             f"'shapes' world)")
    rgb = None
    if image:
        res = cfg.resolution
        box = max(1, round(cfg.recenter_size * res / 256))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                rgb = load_image(image, res, box, bool(cfg.recenter))
            except PipelineError as err:
                raise AppInputError(_uploaded(str(err), image)) from err
        notes += [_uploaded(str(w.message), image) for w in caught]
    return mode, cfg, notes, rgb


# ---- outputs ------------------------------------------------------------------------------------


_TURNTABLE_CAPACITY: dict[int, int] = {}  # frame size → the intersection buffer in use


def render_asset_turntable(gaussians: Any, cameras_c2w_zup: Any, sampler_config: Any,
                           size: int = TURNTABLE_SIZE) -> np.ndarray:
    """The asset (:attr:`SampleResult.gaussians`, in the views' z-up world) rendered at the
    sample's cameras, ``size``² on white → uint8 [F, size, size, 3]."""
    import jax.numpy as jnp

    from videomv_jax.data.images import to_uint8
    from videomv_jax.render.camera import raster_cameras
    from videomv_jax.render.rasterize import count_intersections, rasterize

    viewmats, ks = raster_cameras(jnp.asarray(cameras_c2w_zup, jnp.float32), size, size,
                                  sampler_config.fovy)
    args = (gaussians, viewmats, ks, size, size)
    settings = sampler_config.raster_settings
    # The buffer only grows, by powers of two with 2x headroom: the warm-up's compilation
    # serves later requests (the rasterizer's own sizing follows each scene and recompiles).
    needed = count_intersections(*args, settings=settings)
    capacity = _TURNTABLE_CAPACITY.get(size, 0)
    if needed > capacity:
        capacity = _TURNTABLE_CAPACITY[size] = 1 << (2 * max(needed, 1) - 1).bit_length()
    out = rasterize(*args, background=jnp.ones((3,), jnp.float32), settings=settings,
                    capacity=capacity)
    return to_uint8(np.clip(np.asarray(out.colors), 0.0, 1.0))


VIEWER_SCALE = 1.5
"""Gradio's splat viewer orbits at a fixed distance of 5 units: the viewer's copy is scaled up."""


def viewer_gaussians(gaussians: Any, scale: float = VIEWER_SCALE) -> Any:
    """The copy shown in the page's 3D viewer: the views' z-up world turned +90° about x,
    ``(x, y, z) → (x, −z, y)``, into the y-down convention of 3DGS viewers (gsplat.js), so the
    asset stands upright, and scaled by ``scale`` (the downloadable ``gaussians.ply`` keeps the
    views' frame and size)."""
    x, y, z = np.moveaxis(np.asarray(gaussians.means, np.float32), -1, 0)
    means = scale * np.stack([x, -z, y], -1)
    qw, qx, qy, qz = np.moveaxis(np.asarray(gaussians.rotations, np.float32), -1, 0)
    half = np.float32(np.sqrt(0.5))  # (cos 45°, sin 45°, 0, 0) ⊗ q: the same turn
    rotations = half * np.stack([qw - qx, qx + qw, qy - qz, qz + qy], -1)
    return gaussians.replace(means=means.astype(np.float32), rotations=rotations,
                             scales=np.asarray(gaussians.scales, np.float32) * scale)


def write_demo_mesh(gaussians: Any, out_dir: str, notes: list[str]) -> dict[str, Any] | None:
    """The page's mesh: ``mesh.glb`` / ``mesh.obj`` (+ ``.mtl``, ``.png``) in the asset's frame
    (:data:`DEMO_MESH_SETTINGS`) and ``viewer_mesh.glb``, the same mesh turned upright for
    glTF viewers (z-up world → +y up: ``(x, y, z) → (x, z, −y)``). An asset that cannot be
    meshed, or a missing ``mesh`` extra, adds a note and returns ``None`` (the other outputs
    stand); otherwise ``{"files", "viewer", "faces", "timings"}``."""
    from videomv_jax.export import mesh as mesh_export

    try:
        record = mesh_export.export_mesh(gaussians, out_dir, "mesh",
                                         mesh_export.MeshConfig(**DEMO_MESH_SETTINGS))
        mesh = record["mesh"]
        upright = dataclasses.replace(mesh, vertices=np.ascontiguousarray(
            np.stack([mesh.vertices[:, 0], mesh.vertices[:, 2], -mesh.vertices[:, 1]], -1)))
        viewer = os.path.join(os.path.abspath(out_dir), "viewer_mesh.glb")
        mesh_export.save_glb(upright, viewer)
    except (mesh_export.MeshExportError, ImportError) as err:
        notes.append(f"no mesh: {err}")
        return None
    return {"files": record["files"], "viewer": viewer, "faces": record["faces"],
            "timings": record["timings"]}


def _slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    return s[:limit] or "sample"


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple)
                                 else str(o)))


def _write_outputs(model: DemoModel, out_dir: str, mode: str, cfg: Any, request: DemoRequest,
                   result: Any, turntable: np.ndarray, notes: list[str],
                   timings: dict[str, float], mesh: dict[str, Any] | None = None
                   ) -> DemoResult:
    import jax

    from videomv_jax.data import images as image_io
    from videomv_jax.render.gaussians import save_ply

    t0 = time.perf_counter()
    d = os.path.abspath(out_dir)
    os.makedirs(os.path.join(d, "views"), exist_ok=True)
    frames = image_io.to_uint8(result.views)
    views = []
    for k, frame in enumerate(frames):
        views.append(os.path.join(d, "views", f"{k:03d}.png"))
        image_io.write_image(views[-1], frame)
    grid = os.path.join(d, "grid.png")
    image_io.write_image(grid, image_io.image_grid(frames, cols=min(cfg.output.grid_cols,
                                                                    len(frames))))
    fps = cfg.output.fps
    views_video = image_io.write_video(os.path.join(d, "views.mp4"), frames, fps)
    turntable_video = image_io.write_video(os.path.join(d, "asset_turntable.mp4"), turntable,
                                           fps)
    ply = os.path.join(d, "gaussians.ply")
    save_ply(ply, result.gaussians)
    viewer_ply = os.path.join(d, "viewer.ply")
    save_ply(viewer_ply, viewer_gaussians(result.gaussians))
    timings = {**result.timings, **timings, "write_outputs_s": time.perf_counter() - t0}
    name = "videomv-tiny (packaged default; see docs/videomv-tiny.md)" if model.is_tiny else \
        "converted checkpoints (see sources)"
    record = {
        "mode": mode,
        "weights": name,
        "notes": notes,
        ("prompt" if mode == "t2mv" else "image"):
            request.prompt.strip() if mode == "t2mv" else os.path.basename(request.image),
        "seed": result.seed,
        "checkpoint_dir": model.pipelines[mode].checkpoint_dir,
        "sources": model.pipelines[mode].sources,
        "config": cfg.to_dict(),
        "cameras_c2w_zup": "orbit",
        "timings": timings,
        "rasterizer_overflow": result.overflow,
        "num_gaussians": int(result.gaussians.num_gaussians),
        "device": str(jax.devices()[0]),
        "outputs": {"views": "views/", "grid": "grid.png",
                    "views_video": os.path.basename(views_video),
                    "asset_turntable": os.path.basename(turntable_video),
                    "ply": "gaussians.ply",
                    "viewer_ply": f"viewer.ply (for the page's viewer: upright for 3DGS "
                                  f"viewers, y-down, scaled x{VIEWER_SCALE:g})"},
        "written_by": "videomv_jax.app",
    }
    if mesh is not None:
        record["outputs"]["mesh"] = [os.path.basename(f) for f in mesh["files"]]
        record["outputs"]["viewer_mesh"] = ("viewer_mesh.glb (for the page's viewer: the mesh "
                                            "turned +y up)")
        record["mesh"] = {"faces": mesh["faces"], "settings": DEMO_MESH_SETTINGS,
                          "timings": mesh["timings"]}
    run_json = os.path.join(d, "run.json")
    with open(run_json, "w") as f:
        json.dump(_json_safe(record), f, indent=2)
    label = request.prompt.strip() if mode == "t2mv" else os.path.splitext(
        os.path.basename(request.image))[0]
    zip_path = os.path.join(d, f"videomv_{_slug(label)}_{result.seed}.zip")
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(Path(d).rglob("*")):
            if path.is_file() and str(path) != zip_path:
                zf.write(path, path.relative_to(d).as_posix())
    if result.overflow:
        notes.append("the rasteriser buffer overflowed at a 3D-aware step (the latents are "
                     "NaN); raise sampler.capacity_per_scene")
    return DemoResult(d, views, grid, views_video, turntable_video, ply, viewer_ply, run_json,
                      zip_path, notes, record,
                      mesh_glb=mesh["files"][0] if mesh else None,
                      viewer_mesh_glb=mesh["viewer"] if mesh else None)


def new_request_dir(root: str) -> str:
    """A fresh ``root/req_<time>_<random>`` folder for one request."""
    d = os.path.join(root, f"{REQUEST_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}_"
                           f"{uuid.uuid4().hex[:8]}")
    os.makedirs(d)
    return d


def clean_old_requests(root: str, keep: int, max_age_s: float,
                       now: float | None = None) -> list[str]:
    """Delete request folders in ``root`` older than ``max_age_s`` seconds, and all but the
    ``keep`` newest; other files are left alone. Returns the deleted paths."""
    now = time.time() if now is None else now
    if not os.path.isdir(root):
        return []
    dirs = [os.path.join(root, n) for n in os.listdir(root) if n.startswith(REQUEST_PREFIX)]
    dirs = sorted((p for p in dirs if os.path.isdir(p)), key=os.path.getmtime, reverse=True)
    gone = [p for i, p in enumerate(dirs) if i >= keep or now - os.path.getmtime(p) > max_age_s]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


# ---- the page -----------------------------------------------------------------------------------


def _run_with_progress(model: DemoModel, request: DemoRequest, out_dir: str,
                       progress: Callable[..., Any]) -> DemoResult:
    """:meth:`DemoModel.generate` in a worker thread; its per-step events drive ``progress``
    from this (the request's) thread."""
    events: queue.Queue = queue.Queue()
    box: dict[str, Any] = {}

    def work():
        try:
            box["result"] = model.generate(
                request, out_dir, step_callback=lambda d, t: events.put(("step", d, t)),
                stage_callback=lambda name: events.put(("stage", name)))
        except BaseException as err:  # noqa: BLE001 - re-raised in the request thread
            box["error"] = err
        finally:
            events.put(None)

    worker = threading.Thread(target=work, name="videomv-generate", daemon=True)
    worker.start()
    done = 0
    progress(0.0, desc="queued → starting")
    while True:
        event = events.get()
        if event is None:
            break
        if event[0] == "step":
            done = max(done, event[1])
            progress((done, event[2]), desc=f"DDIM step {done}/{event[2]}", unit="steps")
        else:
            progress(0.0 if done == 0 else 1.0, desc=event[1])
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def build_demo(model: DemoModel, output_root: str, keep_requests: int = 16,
               keep_minutes: float = 60.0, default_steps: int | None = None) -> Any:
    """The Gradio page (``gr.Blocks``) serving ``model``; outputs go to ``output_root``."""
    import gradio as gr

    from videomv_jax.pipeline import PipelineError

    first = model.configs[model.modes[0]]
    steps0 = default_steps or first.sampler.num_steps
    prompts, images = model.examples()

    def request_of(prompt, image, seed, steps, guidance, aware, elevation, negative,
                   mesh=True):
        return DemoRequest(prompt=prompt or "", image=image or None, seed=seed, steps=steps,
                           guidance=guidance, aware=bool(aware), elevation=elevation,
                           negative_prompt=negative, mesh=bool(mesh))

    def check(*values):
        """Bad input is answered at once (not queued), in the page, before any work."""
        try:
            prepare_request(model, request_of(*values))
        except AppInputError as err:
            return f"**Error:** {err}", False
        return "Queued…", True

    def run(ok, *values, progress=gr.Progress()):  # noqa: B008 - how Gradio injects progress
        if not ok:
            return (gr.skip(),) * 7
        request = request_of(*values)
        try:
            prepare_request(model, request)
        except AppInputError as err:
            raise gr.Error(str(err), duration=None, title="Bad input",
                           print_exception=False) from None
        clean_old_requests(output_root, max(0, keep_requests - 1), keep_minutes * 60.0)
        out_dir = new_request_dir(output_root)
        try:
            res = _run_with_progress(model, request, out_dir, progress)
        except (AppInputError, PipelineError) as err:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise gr.Error(str(err), duration=None, print_exception=False) from None
        t = res.record["timings"]
        total = sum(t.get(k, 0.0) for k in ("generate_s", "asset_turntable_s", "mesh_s"))
        info = [f"**Done** in {total:.1f} s "
                f"(seed {res.record['seed']}, {res.record['config']['sampler']['num_steps']} "
                f"DDIM steps, 3D-aware steps "
                f"{list(res.record['config']['sampler']['aware_steps']) or 'off'}, "
                f"{res.record['num_gaussians']:,} Gaussians)."]
        info += [f"- note: {n}" for n in res.notes]
        gallery = [(p, f"view {k} · azimuth {15 * k}°") for k, p in enumerate(res.views)]
        if res.mesh_glb:
            info.append(f"- mesh: {res.record['mesh']['faces']:,} faces in {t['mesh_s']:.1f} s")
        downloads = [res.ply, *([res.mesh_glb] if res.mesh_glb else []), res.zip, res.run_json]
        return (gallery, res.views_video, res.turntable, res.viewer_ply, res.viewer_mesh_glb,
                downloads, "\n".join(info))

    with gr.Blocks(title="videomv-jax demo", delete_cache=(600, int(keep_minutes * 60))) as demo:
        gr.Markdown("# videomv-jax: consistent multi-view generation with 3D-aware denoising\n"
                    + model.describe())
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt (text→MV)", elem_id="prompt",
                                    placeholder="a red cube on a blue sphere",
                                    interactive="t2mv" in model.configs)
                image = gr.Image(label="…or an image (image→MV): RGBA, or RGB on white",
                                 type="filepath", image_mode=None, sources=["upload"],
                                 height=240,
                                 elem_id="image", visible="i2mv" in model.configs)
                with gr.Accordion("Advanced settings", open=False):
                    seed = gr.Number(label="Seed", value=int(first.seed), precision=0,
                                     elem_id="seed")
                    steps = gr.Number(label="DDIM steps (must divide 1000)", value=steps0,
                                      precision=0, elem_id="steps")
                    guidance = gr.Number(label="Guidance scale",
                                         value=float(first.sampler.guidance_scale),
                                         elem_id="guidance")
                    aware = gr.Checkbox(label="3D-aware denoising steps", value=True,
                                        elem_id="aware")
                    elevation = gr.Number(label="Elevation (degrees)",
                                          value=float(first.elevation), elem_id="elevation")
                    negative = gr.Textbox(label="Negative prompt",
                                          value=first.negative_prompt, elem_id="negative")
                    mesh = gr.Checkbox(label="Export a textured mesh (.glb / .obj)", value=True,
                                       elem_id="mesh")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
                if "t2mv" in model.configs:
                    gr.Examples([[p] for p in prompts], inputs=[prompt], label="Example prompts")
                if images and "i2mv" in model.configs:
                    gr.Examples([[p] for p in images], inputs=[image], label="Example images")
                info = gr.Markdown(elem_id="info")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="24 views", columns=6, height="auto",
                                     object_fit="contain", elem_id="views")
                with gr.Row():
                    views_video = gr.Video(label="Views video", autoplay=True, loop=True,
                                           elem_id="views_video")
                    turntable = gr.Video(label="3D asset turntable (rendered .ply)",
                                         autoplay=True, loop=True, elem_id="turntable")
                with gr.Row():
                    viewer = gr.Model3D(label="3D Gaussians (drag to orbit, scroll to zoom)",
                                        height=400, elem_id="viewer")
                    mesh_viewer = gr.Model3D(label="Textured mesh (.glb; drag to orbit)",
                                             height=400, elem_id="mesh_viewer")
                files = gr.File(label="Downloads: .ply, mesh .glb, zip of everything "
                                "(.obj + .mtl + .png too), run.json",
                                file_count="multiple", elem_id="downloads")
        inputs = [prompt, image, seed, steps, guidance, aware, elevation, negative, mesh]
        ok = gr.State(False)
        button.click(check, inputs, [info, ok], queue=False).then(
            run, [ok, *inputs],
            [gallery, views_video, turntable, viewer, mesh_viewer, files, info],
            concurrency_limit=1)
    return demo


# ---- command line -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m videomv_jax.app", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 = every interface)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true",
                   help="also open a public *.gradio.live link (needs internet)")
    p.add_argument("--checkpoint-dir", action="append", default=[],
                   help="converted checkpoints (unet/ vae/ clip_text/ lgm/ [clip_vision/]); "
                        "repeat for a text→MV and an image→MV folder; default: videomv-tiny")
    p.add_argument("--modes", default="t2mv,i2mv",
                   help="comma list of the modes to serve (default t2mv,i2mv)")
    p.add_argument("--steps", type=int,
                   help="default DDIM steps in the page (and the warm-up); default: the "
                        "model's (25 for videomv-tiny, 50 for checkpoints)")
    p.add_argument("--output-root",
                   help="folder for the per-request output folders (default: a new temporary "
                        "folder, deleted at exit)")
    p.add_argument("--keep-requests", type=int, default=16,
                   help="request folders kept (older ones are deleted; default 16)")
    p.add_argument("--keep-minutes", type=float, default=60.0,
                   help="request folders older than this are deleted (default 60)")
    p.add_argument("--max-queue", type=int, default=16,
                   help="requests that may wait in the queue (default 16)")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the start-up compilation (the first request then compiles)")
    compile_cache.add_arguments(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    problems = []
    if not 0 < args.port < 65536:
        problems.append(f"--port must be in 1..65535, got {args.port}")
    if args.keep_requests < 1 or args.keep_minutes <= 0 or args.max_queue < 1:
        problems.append("--keep-requests, --keep-minutes and --max-queue must be positive")
    if len(args.checkpoint_dir) > 2:
        problems.append("give at most two --checkpoint-dir folders (text→MV and image→MV)")
    if problems:
        print(f"error: {'; '.join(problems)}", file=sys.stderr)
        return 2
    if importlib.util.find_spec("gradio") is None:
        print("error: the web demo needs Gradio: pip install -e '.[app]'", file=sys.stderr)
        return 2
    own_root = args.output_root is None
    root = os.path.abspath(args.output_root or tempfile.mkdtemp(prefix="videomv_app_"))
    os.makedirs(root, exist_ok=True)
    # Gradio's own copies of inputs and outputs stay under the output root too.
    os.environ.setdefault("GRADIO_TEMP_DIR", os.path.join(root, "gradio"))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # clean up on kill as on Ctrl-C
    compile_cache.cache_dir_from_args(args)  # a restarted demo loads its executables
    try:
        t0 = time.perf_counter()
        try:
            model = DemoModel(args.checkpoint_dir, modes, args.steps)
        except AppInputError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"loaded {', '.join(MODE_TITLES[m] for m in model.modes)} in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        if not args.no_warmup:
            model.warm_up(lambda s: print(s, flush=True))
        demo = build_demo(model, root, args.keep_requests, args.keep_minutes, args.steps)
        demo.queue(max_size=args.max_queue, default_concurrency_limit=1)
        print(f"outputs under {root}", flush=True)
        demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                    allowed_paths=[root], show_error=True)
    finally:
        if own_root:
            shutil.rmtree(root, ignore_errors=True)
    return 0

if __name__ == "__main__":
    sys.exit(main())
