"""Text→multi-view and image→multi-view pipelines on converted checkpoints.

:class:`MultiViewPipeline` ties the pieces together: CLIP text (and, for image→MV, CLIP vision
+ the VAE image latent) conditions → the compiled VideoMV sampler (DDIM + CFG with 3D-aware
steps, :mod:`videomv_jax.diffusion.sampler`) → VAE decode of all F views → a final LGM
reconstruction from views ``aware_views`` (0/6/12/18) → Gaussians. Each stage is timed.

Batches and devices (``config.parallel``): inputs are sampled ``batch_size = data ×
batch_per_device`` at a time, the batch split over the ``data`` axis of a mesh of the local
devices (:mod:`videomv_jax.parallel.mesh`), the parameters replicated, or split over ``fsdp`` /
``tensor`` for models too big for one device. Every sample keeps its seed (``seed + index``)
and draws its noise from its own keys, so its result equals the one-at-a-time, one-device
result (up to float32 reassociation); a last partial batch is padded with copies of its last
input (never returned), so every batch runs the same executable.

Image input (docs/design.md §2.4–2.5, §8): the released VideoMV recentres RGBA inputs with
``utils/recenter_i2v.py`` (crop to the alpha bounding box, scale the longer side to 200 px,
paste centred on a 256² white canvas); VGen's own inference then pastes on white and centre
crops (a no-op on a square 256² canvas). We do the same (box and canvas scaled with
``resolution``). RGB images are accepted when their background is white: the object box is
found from non-white pixels and recentred the same way (a warning when the border is not
white, since the I2V UNet was trained on white backgrounds).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from videomv_jax.diffusion.sampler import (
    SamplerConfig,
    image_conditions,
    lgm_inputs,
    make_sampler,
    sampler_geometry,
    text_conditions,
)
from videomv_jax.model_store import load_converted, read_converted_config
from videomv_jax.models.clip import PromptTruncatedWarning, load_tokenizer, preprocess, tokenize
from videomv_jax.render.camera import lgm_frame_to_world, orbit_cameras, raster_cameras
from videomv_jax.render.gaussians import Gaussians, transform_gaussians
from videomv_jax.render.rasterize import get_settings, rasterize

__all__ = ["MODES", "MultiViewPipeline", "PipelineError", "SampleResult", "load_image",
           "devices_for_inputs", "load_poses", "parallel_layout", "recenter"]

MODES = {"t2mv": "unet-t2v", "i2mv": "unet-i2v"}
"""Pipeline mode → the UNet kind its ``unet`` subdirectory must hold."""

CONVERT_HINT = ("convert the released VideoMV / LGM / OpenCLIP weights with "
                "tools/convert_torch_weights.py")


class PipelineError(ValueError):
    """A missing checkpoint, inconsistent models or a bad input (message says which)."""


@dataclasses.dataclass
class SampleResult:
    """One generated sample: ``views`` float [F, H, W, 3] in [0, 1]; ``gaussians`` the final LGM
    reconstruction (numpy, no batch axis) in the views' z-up world (the frame of ``cameras``:
    :func:`~videomv_jax.render.camera.lgm_frame_to_world` applied); ``timings`` seconds per
    stage (first calls include compilation); ``overflow`` True when the rasteriser buffer
    overflowed at an aware step."""

    views: np.ndarray
    gaussians: Gaussians
    timings: dict[str, float]
    overflow: bool
    seed: int
    condition: str
    plain_views: np.ndarray | None = None
    """With ``also_plain``: the plain DDIM sample from the same noise (no 3D-aware step)."""
    cameras: np.ndarray | None = None
    """[F, 4, 4] z-up OpenGL camera-to-world matrices of the views (what was sampled with)."""
    lgm_gaussians: Gaussians | None = None
    """The same reconstruction in LGM's normalised y-up frame (where the sampler renders it)."""
    batch: dict[str, Any] | None = None
    """The batch it was sampled in: ``index`` (of the batch), ``size`` (samples per batch,
    padding included), ``samples`` (real ones), ``devices``, ``mesh`` (axis sizes). ``timings``
    are that batch's stage times (all its samples together)."""


# ---- inputs -------------------------------------------------------------------------------------


def recenter(rgba: np.ndarray, canvas: int = 256, box: int = 200) -> np.ndarray:
    """VideoMV ``recenter_i2v``: crop uint8 RGBA [H, W, 4] to its alpha bounding box, scale the
    longer side to ``box`` px, paste centred on a ``canvas``² white background → float RGB
    [canvas, canvas, 3] in [0, 1]."""
    from PIL import Image

    alpha = rgba[..., 3]
    ys, xs = np.nonzero(alpha > 0)
    if len(ys) == 0:
        raise PipelineError("the image's alpha channel is empty (fully transparent)")
    crop = rgba[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape[:2]
    s = box / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    im = Image.fromarray(crop, "RGBA").resize((nw, nh), Image.Resampling.LANCZOS)
    out = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    out.paste(im, ((canvas - nw) // 2, (canvas - nh) // 2))
    arr = np.asarray(out).astype(np.float32) / 255.0
    a = arr[..., 3:]
    return np.clip(arr[..., :3] * a + (1.0 - a), 0.0, 1.0)


def load_image(path: str | os.PathLike, canvas: int = 256, box: int = 200,
               recentre: bool = True) -> np.ndarray:
    """Read an image-to-MV input → float RGB [canvas, canvas, 3] in [0, 1] on white.

    RGBA (or palette with transparency): recentred through its alpha. RGB: must have a white
    background; the non-white pixels give the object box. Greyscale, CMYK, unreadable or
    non-image files raise :class:`PipelineError` naming the file."""
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PipelineError(f"image file {path!r} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                mode = im.mode
            if mode not in ("RGB", "RGBA"):
                raise PipelineError(
                    f"image {path!r} has mode {mode!r}; image→MV needs an RGBA image (object on "
                    f"a transparent background) or an RGB image on a white background "
                    f"(greyscale / CMYK / 16-bit inputs are not accepted: convert it first)")
            arr = np.asarray(im)
    except PipelineError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise PipelineError(f"could not read {path!r} as an image: {err}") from err
    if mode == "RGB":
        border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]]).astype(np.float32)
        if np.mean(border.min(-1) >= 240) < 0.9:
            warnings.warn(f"{path!r} is RGB without a white background; the image→MV model was "
                          f"trained on objects on white (give an RGBA image to recentre it "
                          f"properly)", stacklevel=2)
        fg = (arr.astype(np.int32).min(-1) < 245)
        alpha = np.where(fg, 255, 0).astype(np.uint8)
        if not fg.any():
            raise PipelineError(f"image {path!r} is blank (all white)")
        arr = np.concatenate([arr, alpha[..., None]], -1)
        if np.mean(border.min(-1) >= 240) < 0.9:  # not on white: keep the whole picture
            arr[..., 3] = 255
    if not recentre:
        from PIL import Image as _I
        im = _I.fromarray(arr, "RGBA").resize((canvas, canvas), _I.Resampling.LANCZOS)
        a = np.asarray(im).astype(np.float32) / 255.0
        return np.clip(a[..., :3] * a[..., 3:] + 1.0 - a[..., 3:], 0.0, 1.0)
    return recenter(arr, canvas, box)


def load_poses(path: str | os.PathLike, num_frames: int) -> np.ndarray | dict[str, float]:
    """Per-view cameras from JSON: a list of ``num_frames`` 4×4 OpenGL camera-to-world matrices
    (z-up world, as :func:`~videomv_jax.render.camera.orbit_cameras`) → float32 [F, 4, 4], or
    ``{"elevation": deg, "distance": d}`` → that dict (an orbit). Errors name the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PipelineError(f"pose file {path!r} does not exist")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PipelineError(f"pose file {path!r} is not valid JSON: {err}") from err
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"elevation", "distance"})
        if unknown or not data:
            raise PipelineError(f"pose file {path!r}: an orbit object takes keys 'elevation' "
                                f"and 'distance', got {sorted(data)}")
        try:
            orbit = {k: float(v) for k, v in data.items()}
        except (TypeError, ValueError) as err:
            raise PipelineError(f"pose file {path!r}: elevation / distance must be numbers"
                                ) from err
        if not all(np.isfinite(v) for v in orbit.values()) or orbit.get("distance", 1.0) <= 0 \
                or not -90.0 < orbit.get("elevation", 0.0) < 90.0:
            raise PipelineError(f"pose file {path!r}: elevation must be a finite angle in (-90, "
                                f"90) degrees and distance a finite positive number, got {data}")
        return orbit
    if not isinstance(data, list):
        raise PipelineError(f"pose file {path!r} must hold a list of {num_frames} 4x4 matrices "
                            f"or an object {{'elevation': .., 'distance': ..}}")
    if len(data) != num_frames:
        raise PipelineError(f"pose file {path!r} has {len(data)} poses, but {num_frames} views "
                            f"are generated (num_frames); give exactly one 4x4 matrix per view")
    try:
        poses = np.asarray(data, np.float32)
    except (TypeError, ValueError) as err:
        raise PipelineError(f"pose file {path!r}: poses must be 4x4 number matrices") from err
    if poses.shape != (num_frames, 4, 4):
        raise PipelineError(f"pose file {path!r}: expected {num_frames} 4x4 matrices, got an "
                            f"array of shape {poses.shape}")
    bad = np.flatnonzero(~np.all(np.isfinite(poses), axis=(1, 2)))
    if bad.size:
        raise PipelineError(f"pose file {path!r}: the matrices of views {bad.tolist()} hold "
                            f"NaN or infinite values; every entry must be a finite number")
    if not np.allclose(poses[:, 3], [0, 0, 0, 1], atol=1e-4):
        raise PipelineError(f"pose file {path!r}: the last row of each matrix must be 0 0 0 1 "
                            f"(camera-to-world)")
    rot = poses[:, :3, :3].astype(np.float64)
    gram = np.einsum("fji,fjk->fik", rot, rot)
    bad = np.flatnonzero(~np.all(np.isclose(gram, np.eye(3), atol=1e-3), axis=(1, 2))
                         | (np.linalg.det(rot) < 0))
    if bad.size:
        raise PipelineError(f"pose file {path!r}: the 3x3 rotation blocks of views {bad.tolist()} "
                            f"are not rotations (orthonormal, determinant +1); camera-to-world "
                            f"matrices are [[R, t], [0, 0, 0, 1]]")
    return poses


# ---- devices ------------------------------------------------------------------------------------


def parallel_layout(options: Any, local_devices: int, platform: str = "cpu",
                    count_only: bool = False) -> tuple[tuple[int, int, int], int]:
    """``((data, fsdp, tensor), batch_size)`` for ``config.parallel`` (``devices``: how many
    of the ``local_devices`` to use, 0 = all; ``batch_per_device``; ``fsdp``; ``tensor``):
    ``data = devices / (fsdp × tensor)``, ``batch_size = data × batch_per_device``. Raises
    :class:`PipelineError` naming the option and the fix when they do not fit the devices
    (checked before any model is loaded or compiled). ``count_only``: check the values only
    (batch_size is then the per-device batch)."""
    opts = {k: _cfg_get(options, k, d) for k, d in
            (("devices", 0), ("batch_per_device", 1), ("fsdp", 1), ("tensor", 1))}
    for k, v in opts.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 or \
                (v == 0 and k != "devices"):
            raise PipelineError(f"parallel.{k} must be a positive int"
                                f"{' (0 = all local devices)' if k == 'devices' else ''}, "
                                f"got {v!r}")
    per_device = int(opts["batch_per_device"])
    if count_only:
        return (1, 1, 1), per_device
    n = int(opts["devices"]) or local_devices
    if n > local_devices:
        raise PipelineError(f"parallel.devices={n} but this process has only {local_devices} "
                            f"local {platform} device(s); use at most {local_devices} (0 = all)")
    model = int(opts["fsdp"]) * int(opts["tensor"])
    if n % model:
        raise PipelineError(
            f"parallel.fsdp × parallel.tensor = {opts['fsdp']} × {opts['tensor']} = {model} does "
            f"not divide the {n} devices used: the mesh is data × fsdp × tensor = devices, so "
            f"choose fsdp × tensor among the divisors of {n} (or set parallel.devices to a "
            f"multiple of {model})")
    data = n // model
    return (data, int(opts["fsdp"]), int(opts["tensor"])), data * per_device


def devices_for_inputs(options: Any, num_inputs: int, local_devices: int) -> int:
    """The ``parallel.devices`` to use for ``num_inputs`` samples: as given when it is set;
    for 0 ("all local devices") no more data shards than the inputs fill, so a lone prompt on
    8 devices runs on one (× ``fsdp`` × ``tensor``) instead of being padded to eight copies.
    The result is a multiple of ``fsdp × tensor`` and at most ``local_devices``."""
    given = int(_cfg_get(options, "devices", 0) or 0)
    if given:
        return given
    model = int(_cfg_get(options, "fsdp", 1)) * int(_cfg_get(options, "tensor", 1))
    per_device = int(_cfg_get(options, "batch_per_device", 1))
    data_max = max(1, local_devices // max(1, model))
    data = min(data_max, max(1, -(-int(num_inputs) // max(1, per_device))))
    return data * model


# ---- pipeline -----------------------------------------------------------------------------------


def _cfg_get(config: Any, key: str, default: Any = None) -> Any:
    try:
        return config[key]
    except (KeyError, AttributeError):
        return default


class MultiViewPipeline:
    """Converted VideoMV models + a sampling config (``configs/t2mv.py`` / ``configs/i2mv.py``).

    Build it with :meth:`from_checkpoints`; call :meth:`text_to_mv` or :meth:`image_to_mv`."""

    def __init__(self, models: Mapping[str, nnx.Module], tokenizer: Any, config: Any,
                 sources: Mapping[str, Any] | None = None, checkpoint_dir: str = "",
                 mesh: Any = None, rules: Any = None):
        """``mesh``: a ``("data", "fsdp", "tensor")`` mesh to sample on (default: built from
        ``config.parallel`` over the local devices); ``rules``: the logical → mesh axis table
        for the parameters (default :data:`~videomv_jax.parallel.mesh.DEFAULT_RULES`, the
        training table). The models are placed on the mesh (in place)."""
        self.models = dict(models)
        self.tokenizer = tokenizer
        self.config = config
        self.mode = config.mode
        self.sources = dict(sources or {})
        self.checkpoint_dir = checkpoint_dir
        self._check_consistency()
        self.mesh, self.batch_size = self._setup_parallel(mesh, rules)
        self._samplers: dict[SamplerConfig, Any] = {}  # compiled once per sampling config
        self.max_samplers = 4
        self.step_callback: Any = None
        """``step_callback(done, num_steps)`` as the denoising loop advances (with
        ``sampler.progress``, the configs' default), e.g. a web page's progress bar; see
        ``Sampler.step_callback``."""
        self.steps_per_call: int | None = None
        """DDIM steps between ``step_callback`` calls (None: the sampler's default, at most 10
        calls per sample; 1: after every step, same executable)."""
        self._decode = nnx.jit(lambda vae, z: jnp.clip(vae.decode_frames(z) * 0.5 + 0.5, 0.0,
                                                       1.0))
        self._reconstruct = None  # (sampler config, jitted views -> Gaussians)
        self._text = nnx.jit(lambda m, t: m(t))
        self._embed_image = nnx.jit(lambda m, x: m(x))
        self._encode_image = nnx.jit(lambda m, x, eps: m.encode_frames(x, noise=eps))

    # -- devices ----------------------------------------------------------------------------------

    def _setup_parallel(self, mesh: Any, rules: Any) -> tuple[Any, int]:
        """(mesh or None for one device, batch size); checks ``config.parallel`` and places
        the models. Every check runs before anything is compiled."""
        from videomv_jax.parallel.mesh import MESH_AXES, make_mesh, shard_model

        par = _cfg_get(self.config, "parallel", None) or {}
        if mesh is None:
            local = jax.local_devices()
            (data, fsdp, tensor), batch = parallel_layout(par, len(local), local[0].platform)
            if data * fsdp * tensor == 1:
                return None, batch
            mesh = make_mesh(data, fsdp, tensor, devices=local[:data * fsdp * tensor])
        else:
            if tuple(mesh.axis_names) != MESH_AXES:
                raise PipelineError(f"mesh axes must be {MESH_AXES} (videomv_jax.parallel."
                                    f"make_mesh), got {tuple(mesh.axis_names)}")
            _, per_device = parallel_layout(par, int(mesh.size), "mesh", count_only=True)
            batch = int(mesh.shape["data"]) * per_device
        for model in self.models.values():
            shard_model(model, mesh, rules)
        return mesh, batch

    @property
    def num_devices(self) -> int:
        """Devices sampled on (1 without a mesh)."""
        return 1 if self.mesh is None else int(self.mesh.size)

    def _batch_info(self, index: int, samples: int) -> dict[str, Any]:
        mesh = {"data": 1, "fsdp": 1, "tensor": 1} if self.mesh is None else \
            {k: int(v) for k, v in dict(self.mesh.shape).items()}
        return {"index": index, "size": self.batch_size, "samples": samples,
                "devices": self.num_devices, "mesh": mesh}

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_checkpoints(cls, checkpoint_dir: str | os.PathLike, config: Any
                         ) -> MultiViewPipeline:
        """Load ``unet`` / ``vae`` / ``clip_text`` (+ ``tokenizer/``) / ``lgm`` (and
        ``clip_vision`` for i2mv) from ``checkpoint_dir`` (names from ``config.subdirs``)."""
        mode = config.mode
        if mode not in MODES:
            raise PipelineError(f"config.mode must be one of {sorted(MODES)}, got {mode!r}")
        root = os.fspath(checkpoint_dir)
        if not os.path.isdir(root):
            raise PipelineError(f"checkpoint directory {root!r} does not exist; {CONVERT_HINT}")
        kinds = {"unet": MODES[mode], "vae": "vae", "clip_text": "clip-text", "lgm": "lgm"}
        if mode == "i2mv":
            kinds["clip_vision"] = "clip-vision"
        models, sources = {}, {}
        for name, kind in kinds.items():
            sub = os.path.join(root, _cfg_get(config.subdirs, name, name))
            if not os.path.isdir(sub):
                raise PipelineError(f"checkpoint directory {root!r} has no {name!r} subdirectory "
                                    f"({sub!r}, a converted {kind!r} model); {CONVERT_HINT}")
            try:
                models[name], _ = load_converted(sub, kind=kind)
                sources[name] = read_converted_config(sub).get("source", {})
            except (ValueError, FileNotFoundError) as err:
                raise PipelineError(f"could not load {name!r} from {sub!r}: {err}") from err
        tok_dir = os.path.join(root, _cfg_get(config.subdirs, "clip_text", "clip_text"),
                               "tokenizer")
        if not os.path.isdir(tok_dir) and models["clip_text"].config.vocab_size == 49408:
            tok_dir = "openclip"  # OpenCLIP's vocabulary: the tokenizer shipped with the package
        try:
            tokenizer = load_tokenizer(tok_dir)
        except (FileNotFoundError, OSError, ValueError) as err:
            raise PipelineError(f"no CLIP tokenizer in {tok_dir!r}: {err}") from err
        try:  # ids past the text encoder's embedding would give NaN features
            tokenizer.check_fits(models["clip_text"].config.vocab_size)
        except ValueError as err:
            raise PipelineError(str(err)) from err
        return cls(models, tokenizer, config, sources, os.path.abspath(root))

    def _check_consistency(self) -> None:
        m, c = self.models, self.config
        unet_cfg = m["unet"].config
        if m["clip_text"].config.width != unet_cfg.context_dim:
            raise PipelineError(f"CLIP text width {m['clip_text'].config.width} != UNet "
                                f"context_dim {unet_cfg.context_dim}")
        if self.mode == "i2mv":
            if unet_cfg.variant != "image":
                raise PipelineError("image→MV needs an image UNet (kind unet-i2v)")
            if m["clip_vision"].config.output_dim != unet_cfg.image_embed_dim:
                raise PipelineError(f"CLIP vision output_dim {m['clip_vision'].config.output_dim}"
                                    f" != UNet image_embed_dim {unet_cfg.image_embed_dim}")
        factor = m["vae"].config.downsample_factor
        if c.resolution % factor:
            raise PipelineError(f"resolution {c.resolution} is not a multiple of the VAE factor "
                                f"{factor}")
        views = tuple(c.sampler.aware_views)
        if len(views) != m["lgm"].config.num_views:
            raise PipelineError(f"sampler.aware_views {views} must list LGM's "
                                f"{m['lgm'].config.num_views} input views")
        if max(views) >= c.num_frames:
            raise PipelineError(f"sampler.aware_views {views} need more than {max(views)} "
                                f"frames, num_frames is {c.num_frames}")

    @property
    def random_weights(self) -> list[str]:
        """Models whose ``config.json`` records neither a converted source checkpoint nor a
        training run of ours (``train.py --export``), e.g. random test weights."""
        return sorted(k for k, s in self.sources.items()
                      if not s or s.get("random")
                      or not (s.get("path", s.get("file")) or s.get("trained_by")))

    def sampler_config(self) -> SamplerConfig:
        d = dict(self.config.sampler.to_dict())
        return SamplerConfig(**d)

    # -- stages -----------------------------------------------------------------------------------

    def cameras(self, poses: Any = None) -> np.ndarray:
        """[F, 4, 4] z-up OpenGL c2w: the config orbit, an orbit dict, or explicit matrices."""
        c = self.config
        if poses is None or isinstance(poses, Mapping):
            p = dict(poses or {})
            return np.asarray(orbit_cameras(c.num_frames, p.get("elevation", c.elevation),
                                            p.get("distance", c.distance)))
        poses = np.asarray(poses, np.float32)
        if poses.shape != (c.num_frames, 4, 4):
            raise PipelineError(f"poses must be [{c.num_frames}, 4, 4], got {poses.shape}")
        return poses

    def encode_text(self, prompts: Sequence[str]) -> jax.Array:
        """Text tokens for ``prompts``; a prompt longer than the tower's context warns
        (:class:`PromptTruncatedWarning`), except the config's own negative prompt: training
        tokenised it the same way for caption dropout, so its truncation on a short-context
        tower (videomv-tiny: 32 tokens) is what the model was trained with, not a user error."""
        tcfg = self.models["clip_text"].config
        rows = []
        for prompt in prompts:
            with warnings.catch_warnings():
                if prompt == self.config.negative_prompt:
                    warnings.simplefilter("ignore", PromptTruncatedWarning)
                rows.append(tokenize(self.tokenizer, [prompt], tcfg.context_length))
        return self._text(self.models["clip_text"], jnp.asarray(np.concatenate(rows)))

    def _decode_views(self, latents: jax.Array) -> jax.Array:
        """[B, F, h, w, C] latents → float [B, F, H, W, 3] in [0, 1] (one executable)."""
        return jax.block_until_ready(self._decode(self.models["vae"], latents))

    def _final_gaussians(self, views: jax.Array, cams: np.ndarray, scfg: SamplerConfig
                         ) -> Gaussians:
        """LGM's reconstruction [B, G] from the aware views of ``views`` [B, F, H, W, 3]: camera
        geometry, resize, LGM inputs and LGM in one executable (compiled once per sampler
        config and shapes; not a chain of small eager ones)."""
        if self._reconstruct is None or self._reconstruct[0] != scfg:
            size = self.models["lgm"].config.input_size
            aware = list(scfg.aware_views)

            def reconstruct(lgm, frames, cameras):
                rgb = frames[:, jnp.asarray(aware)]
                if rgb.shape[2:4] != (size, size):
                    rgb = jax.image.resize(rgb, (*rgb.shape[:2], size, size, 3), "linear")
                return lgm.gaussians(lgm_inputs(rgb, sampler_geometry(cameras, scfg), scfg))

            self._reconstruct = (scfg, nnx.jit(reconstruct))
        g = self._reconstruct[1](self.models["lgm"], views, jnp.asarray(cams))
        return jax.tree.map(np.asarray, jax.block_until_ready(g))

    def _keys(self, seeds: Sequence[int]) -> tuple[jax.Array, jax.Array]:
        """Per-sample (noise keys, sampler keys), each [B]: sample b's are
        ``jax.random.split(jax.random.key(seeds[b]))``, as a one-sample run derives them."""
        pairs = [jax.random.split(jax.random.key(int(s))) for s in seeds]
        return jnp.stack([p[0] for p in pairs]), jnp.stack([p[1] for p in pairs])

    def _generate(self, cond: dict, uncond: dict, cams: np.ndarray, seeds: Sequence[int],
                  timings: dict[str, float]
                  ) -> tuple[np.ndarray, Gaussians, np.ndarray, np.ndarray | None]:
        """Sample one batch (conditions [B, ...], ``seeds`` [B]) → views [B, F, H, W, 3],
        LGM-frame Gaussians [B, G], per-sample overflow flags [B], plain views or None."""
        c, scfg = self.config, self.sampler_config()
        sampler = self._samplers.get(scfg)
        if sampler is None:
            while len(self._samplers) >= max(1, self.max_samplers):  # drop the oldest
                self._samplers.pop(next(iter(self._samplers)))
            sampler = self._samplers[scfg] = make_sampler(
                self.models["unet"], self.models["vae"], self.models["lgm"], scfg, self.mesh)
        sampler.step_callback = self.step_callback
        if self.steps_per_call is not None:
            sampler.steps_per_call = int(self.steps_per_call)
        vae = self.models["vae"]
        h = c.resolution // vae.config.downsample_factor
        key_noise, key_sample = self._keys(seeds)
        # each sample's noise from its own key, shaped as a one-sample run draws it
        noise = jnp.concatenate([jax.random.normal(k, (1, c.num_frames, h, h,
                                                       vae.config.embed_dim))
                                 for k in key_noise])
        t0 = time.perf_counter()
        x, aux = sampler(noise, cond, uncond, jnp.asarray(cams), key_sample)
        jax.block_until_ready(x)
        timings["sampling_s"] = time.perf_counter() - t0
        # an overflow poisons (NaN) the latents of the scenes that shared the rasteriser's
        # buffer: report it for those samples (for all when none can be told apart)
        overflow = np.zeros(len(seeds), bool)
        if bool(aux.get("overflow", False)):
            overflow = ~np.all(np.isfinite(np.asarray(x)), axis=(1, 2, 3, 4))
            if not overflow.any():
                overflow[:] = True

        t0 = time.perf_counter()
        views = self._decode_views(x)
        timings["decode_s"] = time.perf_counter() - t0

        plain = None
        if _cfg_get(c, "also_plain", False) and scfg.aware_steps:
            t0 = time.perf_counter()
            x_plain, _ = sampler(noise, cond, uncond, jnp.asarray(cams), key_sample,
                                 aware_mask=np.zeros(scfg.num_steps, bool))
            plain = np.asarray(self._decode_views(x_plain))
            timings["plain_sampling_and_decode_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        gaussians = self._final_gaussians(views, cams, scfg)
        timings["lgm_s"] = time.perf_counter() - t0
        return np.asarray(views), gaussians, overflow, plain

    def _batches(self, items: Sequence[Any], seed: int, cams: np.ndarray, conditions: Any
                 ) -> list[SampleResult]:
        """Sample ``items`` ``batch_size`` at a time (the last batch padded with copies of its
        last item, dropped from the results). ``conditions(batch_items, seeds, timings)`` →
        ``(cond, uncond, names)`` for a full batch."""
        results = []
        for k, start in enumerate(range(0, len(items), self.batch_size)):
            real = list(items[start:start + self.batch_size])
            pad = self.batch_size - len(real)
            seeds = [seed + start + j for j in range(len(real))]
            seeds += [seeds[-1]] * pad
            timings: dict[str, float] = {}
            cond, uncond, names = conditions(real + [real[-1]] * pad, seeds, timings)
            views, g, over, plain = self._generate(cond, uncond, cams, seeds, timings)
            info = self._batch_info(k, len(real))
            for j in range(len(real)):
                g_j = jax.tree.map(lambda a, j=j: a[j], g)
                results.append(SampleResult(
                    views[j], self.to_world(g_j, cams), dict(timings), bool(over[j]),
                    seeds[j], names[j], None if plain is None else plain[j], np.asarray(cams),
                    g_j, dict(info)))
        return results

    def to_world(self, gaussians: Gaussians, cams: np.ndarray) -> Gaussians:
        """LGM-frame Gaussians → the z-up world of ``cams`` (see :func:`lgm_frame_to_world`)."""
        normalize = get_settings(self.sampler_config().raster_settings).normalize_quaternions
        return transform_gaussians(gaussians, lgm_frame_to_world(cams), normalize)

    def render_asset(self, gaussians: Gaussians, cams: np.ndarray,
                     size: int | None = None) -> np.ndarray:
        """Render world-frame Gaussians (:attr:`SampleResult.gaussians`) at the z-up cameras
        ``cams`` [F, 4, 4] → float RGB [F, size, size, 3] in [0, 1] on the sampler's background
        (``size`` default: the views' resolution). Same rasteriser settings as the sampler."""
        scfg = self.sampler_config()
        size = int(self.config.resolution if size is None else size)
        viewmats, ks = raster_cameras(jnp.asarray(cams, jnp.float32), size, size, scfg.fovy)
        bg = jnp.broadcast_to(jnp.asarray(scfg.background, jnp.float32), (3,))
        out = rasterize(jax.tree.map(jnp.asarray, gaussians), viewmats, ks, size, size,
                        background=bg, settings=scfg.raster_settings)
        return np.clip(np.asarray(out.colors), 0.0, 1.0)

    # -- public entry points ----------------------------------------------------------------------

    def text_to_mv(self, prompts: Sequence[str], seed: int | None = None,
                   poses: Any = None, negative_prompt: str | None = None) -> list[SampleResult]:
        """One sample per prompt (``", 3d asset"`` appended), seeds ``seed + i``."""
        if self.mode != "t2mv":
            raise PipelineError("text_to_mv needs a t2mv pipeline (configs/t2mv.py)")
        c = self.config
        seed = c.seed if seed is None else seed
        cams = self.cameras(poses)
        neg = c.negative_prompt if negative_prompt is None else negative_prompt

        def conditions(batch, seeds, timings):
            t0 = time.perf_counter()
            ctx = self.encode_text([p + c.prompt_suffix for p in batch] + [neg])
            ctx = jax.block_until_ready(ctx)
            timings["text_encode_s"] = time.perf_counter() - t0
            b = len(batch)
            cond, uncond = text_conditions(ctx[:b], jnp.broadcast_to(ctx[b:], ctx[:b].shape))
            return cond, uncond, list(batch)

        return self._batches(list(prompts), seed, cams, conditions)

    def image_to_mv(self, images: Sequence[str | np.ndarray], seed: int | None = None,
                    poses: Any = None, negative_prompt: str | None = None
                    ) -> list[SampleResult]:
        """One sample per image (a path, or float RGB [H, W, 3] in [0, 1] already on white),
        seeds ``seed + i``; caption ``config.prompt`` ("" as released)."""
        if self.mode != "i2mv":
            raise PipelineError("image_to_mv needs an i2mv pipeline (configs/i2mv.py)")
        c = self.config
        seed = c.seed if seed is None else seed
        cams = self.cameras(poses)
        neg = c.negative_prompt if negative_prompt is None else negative_prompt
        res = c.resolution
        box = max(1, round(c.recenter_size * res / 256))
        vae, vision = self.models["vae"], self.models["clip_vision"]
        numbered = list(enumerate(images))

        def conditions(batch, seeds, timings):
            t0 = time.perf_counter()
            rgbs, names = [], []
            for i, image in batch:
                if isinstance(image, (str, os.PathLike)):
                    rgb, name = load_image(image, res, box, bool(c.recenter)), os.fspath(image)
                else:
                    rgb, name = np.asarray(image, np.float32), f"array {i}"
                    if rgb.shape != (res, res, 3):
                        raise PipelineError(f"image arrays must be [{res}, {res}, 3], got "
                                            f"{rgb.shape}")
                rgbs.append(rgb)
                names.append(name)
            b = len(batch)
            ctx = self.encode_text([c.prompt] * b + [neg])
            clip_in = np.concatenate([preprocess(rgb, crop_size=res,
                                                 size=vision.config.image_size)
                                      for rgb in rgbs])
            emb = self._embed_image(vision, jnp.asarray(clip_in))
            # the image latent's posterior sample: ε from the sample's own key, as drawn alone
            h = res // vae.config.downsample_factor
            eps = jnp.concatenate([jax.random.normal(
                jax.random.fold_in(jax.random.key(s), 1), (1, 1, h, h, vae.config.embed_dim))
                for s in seeds])
            z = self._encode_image(vae, jnp.asarray(np.stack(rgbs))[:, None] * 2.0 - 1.0,
                                   eps)[:, 0]
            jax.block_until_ready((ctx, emb, z))
            timings["condition_encode_s"] = time.perf_counter() - t0
            cond, uncond = image_conditions(ctx[:b], jnp.broadcast_to(ctx[b:], ctx[:b].shape),
                                            z, emb, c.fps_cond)
            return cond, uncond, names

        return self._batches(numbered, seed, cams, conditions)
