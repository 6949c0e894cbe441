"""VideoMV sampling: DDIM + classifier-free guidance with 3D-aware steps, as one jitted scan.

The whole denoising loop is a single ``lax.scan`` over the DDIM steps (docs/design.md §4, §5).
Each step runs the video UNet on both guidance branches (unconditional first, conditional
second). A boolean per step, scanned as data, selects one of two branches with ``lax.cond`` so
plain steps never pay for the 3D work:

* **plain step** (released ``ddim_sample``): ``out = out_u + s·(out_c − out_u)``; x̂0 from
  ``out`` (eps or v); DDIM update.
* **3D-aware step** (released loop indices 20, 30, 40 of 50, i.e. t = 581, 381, 181): for each
  branch b, x̂0_b → VAE-decode views ``aware_views`` (0/6/12/18) → ``x·0.5 + 0.5`` clamped to
  [0, 1] → LGM (ImageNet-normalised RGB + Plücker rays of those views' normalised poses) →
  Gaussians → rasterise all F views at ``render_size`` on a grey ``background`` → clamp [0, 1]
  → downsample to the latent video's image size (``nearest`` = PyTorch ``F.interpolate``
  nearest, ``x[::k, ::k]``) → [-1, 1] → VAE encode (posterior *sample*, as released; or the
  mean) → z_b. Then ``x0 := z_u + s·(z_c − z_u)`` replaces x̂0 entirely in the DDIM update.

Cameras (design §3, §6.4). One input, ``cameras_c2w_zup`` [F, 4, 4] (OpenGL camera-to-world in
VideoMV's z-up Blender world, e.g. :func:`videomv_jax.render.camera.orbit_cameras`), feeds
everything: the UNet camera embedding is its row-major flatten; LGM's Plücker rays and the
rasteriser use :func:`~videomv_jax.render.camera.normalize_poses` of it, the **training**
normalisation. The released inference code's extra y/z column flip before normalising (which
points cameras 1..23 away from the object, VideoMV issue #6) is deliberately not applied.

Purity: :func:`make_sampler` splits the NNX modules once (``nnx.split``); the jitted function
takes the model states as arguments and rebuilds the modules with ``nnx.merge``, so it compiles
once per input shape and always uses the modules' current weights. Rasteriser capacity is a
static int; an overflow is never silent: rendered pixels become NaN (so the latents do too) and
``aux["overflow"]`` reports it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax import lax

from videomv_jax.diffusion.ddim import (
    PREDICTIONS,
    DDIMSchedule,
    ddim_update,
    guidance,
    make_schedule,
    predict_x0,
)
from videomv_jax.diffusion.schedules import SCHEDULES
from videomv_jax.models.lgm import prepare_inputs
from videomv_jax.render.camera import (
    DEFAULT_FOVY_DEG,
    camera_embedding,
    normalize_poses,
    raster_cameras,
)
from videomv_jax.render.gaussians import Gaussians
from videomv_jax.render.rasterize import PRESETS, RasterInfo, RenderOutput, rasterize

__all__ = [
    "DOWNSAMPLE_MODES",
    "COND_KEYS",
    "Sampler",
    "SamplerConfig",
    "SamplerGeometry",
    "downsample_images",
    "image_conditions",
    "lgm_inputs",
    "make_sampler",
    "per_sample_keys",
    "progress_chunk",
    "reconstruct_latents",
    "render_views",
    "sample_python_loop",
    "sampler_geometry",
    "text_conditions",
]

DOWNSAMPLE_MODES = ("nearest", "area")
"""``nearest``: PyTorch ``F.interpolate(mode='nearest')`` by an integer factor = ``x[::k, ::k]``
(released); ``area``: mean over each k×k block (an anti-aliased alternative)."""

COND_KEYS = ("context", "image_latent", "image_embedding", "fps")
"""Keys of a guidance-branch dict: UNet inputs (``context`` positional, the rest keywords)."""


# ---- configuration ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Sampling hyper-parameters (defaults: text→MV as released, design §4/§5).

    ``aware_steps`` are DDIM loop indices (0 = the noisiest step); empty = plain sampling.
    ``aware_views`` are the frames given to LGM (its ``num_views``, 4). ``capacity_per_scene`` is
    the rasteriser's static (Gaussian, tile) buffer size per rendered scene (F views); the
    buffer of one call holds ``capacity_per_scene × scenes``. ``batch_cfg`` runs the two guidance
    branches as one batch of 2B (faster; the same numbers up to float reassociation) instead of
    two passes (less memory). ``encode_sample`` samples the VAE posterior when re-encoding
    renders (released) instead of taking its mean. ``keep_trajectory`` returns x after every
    step in ``aux["trajectory"]``. ``progress`` shows a tqdm bar: the loop then runs in
    segments of steps (:func:`progress_chunk`), one executable for every segment length.
    """

    num_steps: int = 50
    guidance_scale: float = 9.0
    eta: float = 0.0
    schedule: str = "linear_sd"
    prediction: str = "eps"
    num_timesteps: int = 1000
    zero_terminal_snr: bool | None = None
    aware_steps: tuple[int, ...] = (20, 30, 40)
    aware_views: tuple[int, ...] = (0, 6, 12, 18)
    render_size: int = 512
    downsample: str = "nearest"
    background: float | tuple[float, float, float] = 0.5
    fovy: float = DEFAULT_FOVY_DEG
    raster_settings: str = "inria"
    capacity_per_scene: int = 1 << 24
    vae_chunk: int | None = None
    encode_sample: bool = True
    batch_cfg: bool = True
    keep_trajectory: bool = False
    progress: bool = False

    def __post_init__(self):
        object.__setattr__(self, "aware_steps", tuple(int(i) for i in self.aware_steps))
        object.__setattr__(self, "aware_views", tuple(int(i) for i in self.aware_views))
        if not isinstance(self.background, (int, float)):
            object.__setattr__(self, "background", tuple(float(c) for c in self.background))
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or \
                not 1 <= self.num_steps <= self.num_timesteps:
            raise ValueError(f"num_steps must be an int in [1, num_timesteps="
                             f"{self.num_timesteps}], got {self.num_steps!r}")
        if not math.isfinite(self.guidance_scale):
            raise ValueError(f"guidance_scale must be finite, got {self.guidance_scale}")
        if not (math.isfinite(self.eta) and self.eta >= 0):
            raise ValueError(f"eta must be >= 0 (0 = deterministic DDIM), got {self.eta}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; choose one of "
                             f"{PREDICTIONS}")
        steps = self.aware_steps
        if any(not 0 <= i < self.num_steps for i in steps) or len(set(steps)) != len(steps):
            raise ValueError(f"aware_steps must be distinct loop indices in [0, num_steps="
                             f"{self.num_steps}), got {steps}; the released run uses "
                             "(20, 30, 40) of 50; () disables 3D-aware steps")
        if not self.aware_views or any(v < 0 for v in self.aware_views):
            raise ValueError(f"aware_views must be non-negative frame indices (LGM input views), "
                             f"got {self.aware_views}")
        if isinstance(self.render_size, bool) or not isinstance(self.render_size, int) or \
                self.render_size < 1:
            raise ValueError(f"render_size must be a positive int, got {self.render_size!r}")
        if self.downsample not in DOWNSAMPLE_MODES:
            raise ValueError(f"unknown downsample {self.downsample!r}; choose one of "
                             f"{DOWNSAMPLE_MODES}")
        bg = (self.background,) if isinstance(self.background, (int, float)) else self.background
        if len(bg) not in (1, 3) or any(not 0.0 <= c <= 1.0 for c in bg):
            raise ValueError(f"background must be a grey level or an RGB triple in [0, 1], got "
                             f"{self.background}")
        if not 0.0 < self.fovy < 180.0:
            raise ValueError(f"fovy must be in (0, 180) degrees, got {self.fovy}")
        if self.raster_settings not in PRESETS:
            raise ValueError(f"unknown raster_settings {self.raster_settings!r}; choose one of "
                             f"{sorted(PRESETS)}")
        if isinstance(self.capacity_per_scene, bool) or \
                not isinstance(self.capacity_per_scene, int) or self.capacity_per_scene < 1:
            raise ValueError(f"capacity_per_scene must be a positive int, got "
                             f"{self.capacity_per_scene!r}")
        if self.vae_chunk is not None and self.vae_chunk < 0:
            raise ValueError(f"vae_chunk must be None or >= 0 (0 = no chunking), got "
                             f"{self.vae_chunk}")

    # -- presets ----------------------------------------------------------------------------------

    @classmethod
    def text(cls, **overrides: Any) -> SamplerConfig:
        """Text→MV as released: linear_sd / eps, CFG 9, grey 0.5 render background."""
        return cls(**overrides)

    @classmethod
    def image(cls, **overrides: Any) -> SamplerConfig:
        """Image→MV as released: cosine + zero terminal SNR / v, CFG 6, grey 0.7 background."""
        kwargs: dict[str, Any] = dict(schedule="cosine", prediction="v", guidance_scale=6.0,
                                      background=0.7)
        kwargs.update(overrides)
        return cls(**kwargs)

    # -- helpers ----------------------------------------------------------------------------------

    @property
    def has_aware_steps(self) -> bool:
        return bool(self.aware_steps)

    def aware_mask(self) -> np.ndarray:
        """[num_steps] bool: True at the 3D-aware loop indices."""
        mask = np.zeros((self.num_steps,), bool)
        mask[list(self.aware_steps)] = True
        return mask

    def ddim_schedule(self) -> DDIMSchedule:
        return make_schedule(self.schedule, self.num_steps, self.num_timesteps, self.prediction,
                             self.zero_terminal_snr)

    def replace(self, **changes: Any) -> SamplerConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        for name in ("aware_steps", "aware_views", "background"):
            if isinstance(out[name], tuple):
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SamplerConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SamplerConfig fields {unknown}; known: {sorted(known)}")
        return cls(**dict(data))


# ---- conditions ---------------------------------------------------------------------------------


def text_conditions(context: jax.Array, negative_context: jax.Array) -> tuple[dict, dict]:
    """(cond, uncond) for text→MV: prompt tokens vs the negative-prompt tokens, each [B, L, C]."""
    return {"context": context}, {"context": negative_context}


def image_conditions(context: jax.Array, negative_context: jax.Array, image_latent: jax.Array,
                     image_embedding: jax.Array, fps: float = 8.0) -> tuple[dict, dict]:
    """(cond, uncond) for image→MV (design §4): cond = {text(""), CLIP image embedding, image
    latent}; uncond = {negative-prompt text, a **zero** image embedding (still passed through
    the UNet's context MLP), the same image latent}. fps (8) in both."""
    b = image_latent.shape[0]
    fps_arr = jnp.full((b,), fps, jnp.float32)
    cond = {"context": context, "image_latent": image_latent,
            "image_embedding": image_embedding, "fps": fps_arr}
    uncond = {"context": negative_context, "image_latent": image_latent,
              "image_embedding": jnp.zeros_like(image_embedding), "fps": fps_arr}
    return cond, uncond


def _check_conditions(cond: Mapping, uncond: Mapping, batch: int, batch_cfg: bool) -> None:
    for name, d in (("cond", cond), ("uncond", uncond)):
        if "context" not in d:
            raise ValueError(f"{name} needs a 'context' entry [B, L, C]")
        unknown = sorted(set(d) - set(COND_KEYS))
        if unknown:
            raise ValueError(f"{name} has unknown keys {unknown}; allowed: {COND_KEYS}")
        for k, v in d.items():
            if jnp.ndim(v) < 1 or jnp.shape(v)[0] != batch:
                raise ValueError(f"{name}[{k!r}] must have the noise batch {batch} as its first "
                                 f"axis, got shape {jnp.shape(v)}")
    if set(cond) != set(uncond):
        raise ValueError(f"cond and uncond must have the same keys, got {sorted(cond)} and "
                         f"{sorted(uncond)}")
    if batch_cfg:
        for k in cond:
            if jnp.shape(cond[k])[1:] != jnp.shape(uncond[k])[1:]:
                raise ValueError(f"batch_cfg=True stacks the two branches, but cond[{k!r}] "
                                 f"{jnp.shape(cond[k])} and uncond[{k!r}] "
                                 f"{jnp.shape(uncond[k])} differ; pad them or set "
                                 "batch_cfg=False")


# ---- geometry, rendering, reconstruction --------------------------------------------------------


@struct.dataclass
class SamplerGeometry:
    """Every camera quantity of one sampling run, all derived from ``cameras_c2w_zup``."""

    camera: jax.Array  # [F, 16] UNet camera embedding (row-major OpenGL c2w, z-up world)
    poses: jax.Array  # [F, 4, 4] normalised OpenGL c2w (LGM's y-up training world)
    lgm_c2w: jax.Array  # [V, 4, 4] poses of the aware views (LGM input cameras)
    viewmats: jax.Array  # [F, 4, 4] OpenCV world-to-camera of ``poses`` (rasteriser)
    intrinsics: jax.Array  # [F, 3, 3] pixel intrinsics at render_size, fovy


def sampler_geometry(cameras_c2w_zup: jax.Array, config: SamplerConfig) -> SamplerGeometry:
    """Cameras for the UNet, LGM and the rasteriser from one set of z-up OpenGL c2w [F, 4, 4].

    LGM and the rasteriser use the training pose normalisation (:func:`normalize_poses`: y-up
    world, view 0 at (0, 0, r) with identity rotation); no extra inference flip (design §6.4).
    """
    c2w = jnp.asarray(cameras_c2w_zup, jnp.float32)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"cameras_c2w_zup must be [F, 4, 4] OpenGL camera-to-world matrices, "
                         f"got {tuple(c2w.shape)}")
    if config.has_aware_steps and max(config.aware_views) >= c2w.shape[0]:
        raise ValueError(f"aware_views {config.aware_views} need at least "
                         f"{max(config.aware_views) + 1} frames, got {c2w.shape[0]}")
    poses = normalize_poses(c2w)
    size = config.render_size
    viewmats, ks = raster_cameras(poses, size, size, config.fovy)
    # clip: a plain sampler never reads lgm_c2w, so short videos need not hold aware_views
    lgm_c2w = jnp.take(poses, jnp.asarray(config.aware_views), axis=0, mode="clip")
    return SamplerGeometry(camera=camera_embedding(c2w), poses=poses, lgm_c2w=lgm_c2w,
                           viewmats=viewmats, intrinsics=ks)


def lgm_inputs(rgb: jax.Array, geometry: SamplerGeometry, config: SamplerConfig) -> jax.Array:
    """LGM input [N, V, H, W, 9] for the aware views' images ``rgb`` [N, V, H, W, 3] in [0, 1]:
    ImageNet-normalised RGB and the Plücker rays of ``geometry.lgm_c2w`` at ``config.fovy``."""
    cams = jnp.broadcast_to(geometry.lgm_c2w, (rgb.shape[0], *geometry.lgm_c2w.shape))
    return prepare_inputs(rgb, cams, config.fovy)


def render_views(gaussians: Gaussians, geometry: SamplerGeometry,
                 config: SamplerConfig) -> RenderOutput:
    """Rasterise scenes [S, N] (LGM's normalised world) into all F views at ``render_size`` on
    the grey ``background``; buffer ``capacity_per_scene × S``; NaN pixels on overflow."""
    scenes = math.prod(gaussians.batch_shape)
    bg = jnp.broadcast_to(jnp.asarray(config.background, jnp.float32), (3,))
    size = config.render_size
    return rasterize(gaussians, geometry.viewmats, geometry.intrinsics, size, size,
                     background=bg, settings=config.raster_settings,
                     capacity=config.capacity_per_scene * scenes)


def downsample_images(images: jax.Array, size: int, mode: str = "nearest") -> jax.Array:
    """Images [..., R, R, C] → [..., size, size, C] by the integer factor R / size.

    ``nearest`` keeps pixels 0, k, 2k, … (PyTorch ``F.interpolate`` nearest: source index
    ``floor(i·R/size)``), ``area`` averages each k×k block."""
    r = images.shape[-2]
    if images.shape[-3] != r or r % size:
        raise ValueError(f"renders must be square with a side divisible by the target size "
                         f"{size}, got {images.shape[-3:-1]}; choose render_size = k·{size}")
    k = r // size
    if k == 1:
        return images
    if mode == "nearest":
        return images[..., ::k, ::k, :]
    if mode == "area":
        x = images.reshape(*images.shape[:-3], size, k, size, k, images.shape[-1])
        return x.mean(axis=(-4, -2))
    raise ValueError(f"unknown downsample {mode!r}; choose one of {DOWNSAMPLE_MODES}")


def reconstruct_latents(vae: nnx.Module, lgm: nnx.Module, x0: jax.Array,
                        geometry: SamplerGeometry, config: SamplerConfig,
                        key: jax.Array | None, noise: jax.Array | None = None
                        ) -> tuple[jax.Array, Gaussians, RasterInfo]:
    """The 3D-aware replacement of x̂0 (design §5.1 steps 3–9) for latents x0 [N, F, h, w, 4].

    Returns the re-encoded scaled latents [N, F, h, w, 4], LGM's Gaussians [N, G] and the
    rasteriser diagnostics. ``key`` drives the VAE posterior sample (``None``: the mean);
    ``noise`` (x0's shape, standard normal) is that sample's ε instead of one drawn from ``key``.
    """
    images = vae.decode_frames(x0[:, jnp.asarray(config.aware_views)], chunk=config.vae_chunk)
    rgb = jnp.clip(images * 0.5 + 0.5, 0.0, 1.0)
    size = rgb.shape[2]
    lgm_cfg = lgm.config
    if len(config.aware_views) != lgm_cfg.num_views:
        raise ValueError(f"LGM takes {lgm_cfg.num_views} views, aware_views has "
                         f"{len(config.aware_views)}")
    if rgb.shape[2:4] != (lgm_cfg.input_size, lgm_cfg.input_size):
        raise ValueError(f"decoded views are {rgb.shape[2:4]} but LGM input_size is "
                         f"{lgm_cfg.input_size}; use latents of side "
                         f"{lgm_cfg.input_size} / VAE factor")
    gaussians = lgm.gaussians(lgm_inputs(rgb, geometry, config))
    out = render_views(gaussians, geometry, config)
    renders = downsample_images(jnp.clip(out.colors, 0.0, 1.0), size, config.downsample)
    use_key = key if config.encode_sample else None
    latents = vae.encode_frames(renders * 2.0 - 1.0, use_key, chunk=config.vae_chunk,
                                sample=config.encode_sample, noise=noise)
    return latents.astype(x0.dtype), gaussians, out.info


# ---- the step -----------------------------------------------------------------------------------


def _unet_outputs(unet, x, t, cond, uncond, camera, batch_cfg):
    """UNet outputs (uncond, cond) at x [B, F, h, w, 4] and integer step t."""
    b, f = x.shape[:2]
    tb = jnp.full((b,), t, jnp.int32)
    cam = None
    if unet.config.use_camera:
        cam = jnp.broadcast_to(camera, (b, f, camera.shape[-1]))

    def call(xx, tt, cc, kw):
        kw = dict(kw)
        ctx = kw.pop("context")
        return unet(xx, tt, ctx, cc, **kw)

    if batch_cfg:
        both = jax.tree.map(lambda u, c: jnp.concatenate([u, c], axis=0), dict(uncond),
                            dict(cond))
        out = call(jnp.concatenate([x, x]), jnp.concatenate([tb, tb]),
                   None if cam is None else jnp.concatenate([cam, cam]), both)
        return out[:b], out[b:]
    return call(x, tb, cam, uncond), call(x, tb, cam, cond)


def per_sample_keys(key: Any) -> bool:
    """True for a 1-D array of typed PRNG keys (one per sample, ``jax.random.key`` stacked);
    False for one key (a typed scalar key or a raw ``uint32[2]`` key)."""
    return (hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
            and jnp.ndim(key) == 1)


def _fold_in(key: jax.Array, data: Any) -> jax.Array:
    """``fold_in`` of one key or of every per-sample key."""
    if per_sample_keys(key):
        return jax.vmap(jax.random.fold_in, in_axes=(0, None))(key, data)
    return jax.random.fold_in(key, data)


def _normal(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """Standard normal of ``shape`` [B, ...]: from one key as ``jax.random.normal``, or with
    per-sample keys [B] each sample's slice drawn from its own key as ``normal(key_b, [1,
    ...])``, i.e. exactly what a batch-1 call with that key would draw."""
    if not per_sample_keys(key):
        return jax.random.normal(key, shape, dtype)
    one = (1, *shape[1:])
    return jax.vmap(lambda k: jax.random.normal(k, one, dtype))(key).reshape(shape)


def _aware_x0(vae, lgm, x, out_u, out_c, alpha, geometry, config, key):
    """3D-aware x0 := guidance(z_u, z_c) plus (gaussians [2, B, G], overflow, intersections)."""
    b = x.shape[0]
    x0_u = predict_x0(x, out_u, alpha, config.prediction)
    x0_c = predict_x0(x, out_c, alpha, config.prediction)
    per_sample = per_sample_keys(key) and config.encode_sample
    if config.batch_cfg:
        eps = None
        if per_sample:  # sample b's (uncond, cond) ε as a batch-1 call draws them: [2, ...]
            two = (2, *x.shape[1:])
            eps = jax.vmap(lambda k: jax.random.normal(k, two, jnp.float32))(key)
            eps = jnp.swapaxes(eps, 0, 1).reshape(2 * b, *x.shape[1:])
        z, g, info = reconstruct_latents(vae, lgm, jnp.concatenate([x0_u, x0_c]), geometry,
                                         config, None if per_sample else key, eps)
        z_u, z_c = z[:b], z[b:]
        gaussians = jax.tree.map(lambda a: a.reshape(2, b, *a.shape[1:]), g)
        overflow, count = info.overflow, info.intersections
    else:
        k_u, k_c = _fold_in(key, 0), _fold_in(key, 1)
        eps_u = _normal(k_u, x.shape) if per_sample else None
        eps_c = _normal(k_c, x.shape) if per_sample else None
        z_u, g_u, i_u = reconstruct_latents(vae, lgm, x0_u, geometry, config,
                                            None if per_sample else k_u, eps_u)
        z_c, g_c, i_c = reconstruct_latents(vae, lgm, x0_c, geometry, config,
                                            None if per_sample else k_c, eps_c)
        gaussians = jax.tree.map(lambda u, c: jnp.stack([u, c]), g_u, g_c)
        overflow = i_u.overflow | i_c.overflow
        count = jnp.maximum(i_u.intersections, i_c.intersections)
    return guidance(z_u, z_c, config.guidance_scale), gaussians, overflow, count


def _gaussians_like(vae, lgm, x, geometry, config) -> Gaussians:
    """Zero Gaussians shaped like the aware step's [2, B, G] output (for the scan carry)."""
    b = x.shape[0]
    size = lgm.config.input_size
    # only LGM is traced for the shapes (decoded views are float32 [2B, V, size, size, 3]),
    # not the decode / render / encode around it: tracing costs seconds on every run
    spec = jax.eval_shape(
        lambda rgb: lgm.gaussians(lgm_inputs(rgb, geometry, config)),
        jax.ShapeDtypeStruct((2 * b, len(config.aware_views), size, size, 3), jnp.float32))
    return jax.tree.map(lambda s: jnp.zeros((2, b, *s.shape[1:]), s.dtype), spec)


def _init_aux(vae, lgm, x, geometry, config) -> dict:
    aux = {"overflow": jnp.zeros((), bool), "intersections": jnp.zeros((), jnp.int32)}
    if config.has_aware_steps:
        aux["gaussians"] = _gaussians_like(vae, lgm, x, geometry, config)
    return aux


def _build_step(graphdefs, config: SamplerConfig, schedule: DDIMSchedule,
                on_step: Callable[[Any], None] | None):
    """The pure step ``(states, consts, carry, (i, aware)) -> (carry, x_next | None)``.

    ``consts = (cond, uncond, geometry, key)``; ``carry = (x, aux)``. Shared by the scanned
    sampler and :func:`sample_python_loop`.
    """
    s = config.guidance_scale

    def step(states, consts, carry, xs):
        unet, vae, lgm = _merge(graphdefs, states)
        cond, uncond, geometry, key = consts
        x, aux = carry
        i, aware = xs
        t, alpha, alpha_prev = (schedule.timesteps[i], schedule.alpha[i],
                                schedule.alpha_prev[i])
        key_i = _fold_in(key, i)
        k_enc, k_eta = _fold_in(key_i, 0), _fold_in(key_i, 1)
        out_u, out_c = _unet_outputs(unet, x, t, cond, uncond, geometry.camera,
                                     config.batch_cfg)

        def plain(aux):
            out = guidance(out_u, out_c, s)
            return predict_x0(x, out, alpha, config.prediction), aux

        def aware_fn(aux):
            x0, gaussians, overflow, count = _aware_x0(vae, lgm, x, out_u, out_c, alpha,
                                                       geometry, config, k_enc)
            new = {"overflow": aux["overflow"] | overflow,
                   "intersections": jnp.maximum(aux["intersections"],
                                                count.astype(jnp.int32)),
                   "gaussians": gaussians}
            return x0, new

        if config.has_aware_steps:
            x0, aux = lax.cond(aware, aware_fn, plain, aux)
        else:
            x0, aux = plain(aux)
        noise = _normal(k_eta, x.shape, x.dtype) if config.eta > 0 else None
        x_next = ddim_update(x, x0, alpha, alpha_prev, config.eta, noise)
        if on_step is not None:
            jax.debug.callback(on_step, i)
        return (x_next, aux), (x_next if config.keep_trajectory else None)

    return step


# ---- public samplers ----------------------------------------------------------------------------


def _split(unet, vae, lgm):
    graphdefs, states = [], []
    for m in (unet, vae, lgm):
        if m is None:
            graphdefs.append(None)
            states.append(None)
        else:
            g, st = nnx.split(m)
            graphdefs.append(g)
            states.append(st)
    return tuple(graphdefs), tuple(states)


def _merge(graphdefs, states) -> tuple:
    return tuple(None if g is None else nnx.merge(g, st)
                 for g, st in zip(graphdefs, states, strict=True))


def _check_models(unet, vae, lgm, config: SamplerConfig) -> None:
    if unet is None:
        raise ValueError("make_sampler needs the video UNet")
    if config.has_aware_steps and (vae is None or lgm is None):
        raise ValueError(f"aware_steps={config.aware_steps} need the VAE and LGM; pass them or "
                         "set aware_steps=() for plain sampling")
    if config.has_aware_steps and len(config.aware_views) != lgm.config.num_views:
        raise ValueError(f"LGM takes {lgm.config.num_views} views, aware_views has "
                         f"{len(config.aware_views)}: {config.aware_views}")


def _check_inputs(noise, cond, uncond, cameras, config, aware_mask):
    if jnp.ndim(noise) != 5:
        raise ValueError(f"noise must be [B, F, h, w, C], got shape {jnp.shape(noise)}")
    b, f = jnp.shape(noise)[:2]
    if jnp.shape(cameras) != (f, 4, 4):
        raise ValueError(f"cameras_c2w_zup must be [F={f}, 4, 4], got {jnp.shape(cameras)}")
    if config.has_aware_steps and max(config.aware_views) >= f:
        raise ValueError(f"aware_views {config.aware_views} need at least "
                         f"{max(config.aware_views) + 1} frames, got F={f}")
    _check_conditions(cond, uncond, b, config.batch_cfg)
    mask = config.aware_mask() if aware_mask is None else np.asarray(aware_mask, bool)
    if mask.shape != (config.num_steps,):
        raise ValueError(f"aware_mask must be [{config.num_steps}] bool, got {mask.shape}")
    if mask.any() and not config.has_aware_steps:
        raise ValueError("this sampler was built without 3D-aware steps (aware_steps=()); "
                         "build it with aware_steps to use an aware_mask")
    return mask


class Sampler:
    """The compiled VideoMV sampler returned by :func:`make_sampler` (call it).

    ``mesh``: a ``("data", "fsdp", "tensor")`` mesh (:func:`videomv_jax.parallel.make_mesh`)
    for batched sampling on several devices. The batch B is split over ``data``: every data
    shard runs the one-device program on its B / data samples (``jax.shard_map`` manual over
    ``data``, so the rasteriser's buffer, the VAE and LGM stay per device), and the modules'
    parameters are used where they lie (replicated, or split over ``fsdp`` / ``tensor`` by
    :func:`~videomv_jax.parallel.shard_model`, which the compiler partitions automatically).
    Such a sampler takes per-sample keys [B] so each sample's randomness does not depend on
    the batch it is in; ``aux["overflow"]`` / ``aux["intersections"]`` are then reduced over
    the whole batch."""

    def __init__(self, unet: nnx.Module, vae: nnx.Module | None, lgm: nnx.Module | None,
                 config: SamplerConfig, mesh: Any = None):
        _check_models(unet, vae, lgm, config)
        self.config = config
        self.mesh = mesh
        self.data_shards = int(dict(mesh.shape).get("data", 1)) if mesh is not None else 1
        self.schedule = config.ddim_schedule()
        self.models = (unet, vae, lgm)
        self.graphdefs, _ = _split(unet, vae, lgm)
        self.step = _build_step(self.graphdefs, config, self.schedule, None)
        self.step_callback: Callable[[int, int], None] | None = None
        """Called as ``step_callback(done, num_steps)`` after every ``steps_per_call`` DDIM
        steps when ``config.progress`` is set (on the calling thread), e.g. to drive a web
        page's progress bar."""
        self.jitted = jax.jit(self._sharded(self._sample, "sample"))
        # progress: the loop run ``steps_per_call`` steps at a time, the bar advanced between
        # calls (a host callback inside the loop would keep the executable out of the
        # persistent compilation cache). The segment's bounds are traced, so one executable
        # serves every segment length, one step included.
        self.steps_per_call: int = progress_chunk(config.num_steps)
        """DDIM steps per compiled call with ``config.progress`` (1: a callback per step)."""
        self._jitted_init = jax.jit(self._sharded(self._init, "init"))
        self._jitted_segment = jax.jit(self._sharded(self._segment, "segment"))

    # -- data parallelism: each data shard runs the one-device program on its samples --------

    def _sharded(self, fn: Callable, kind: str) -> Callable:
        """``fn`` itself (one data shard), or ``fn`` mapped over the mesh's ``data`` axis with
        the batch axis of noise / conditions / per-sample keys / carry split and the rest
        (model states, cameras, mask, bounds) passed whole; the overflow flag and buffer use
        are reduced over the shards (so they are replicated, as in a one-device run)."""
        if self.data_shards == 1:
            return fn
        from jax.sharding import PartitionSpec as P

        data, rep = P("data"), P()

        def aux_specs(aux: dict) -> dict:
            out = {k: rep for k in ("overflow", "intersections")}
            for k in ("gaussians", "trajectory"):
                if k in aux:
                    out[k] = P(None, "data")
            return out

        def reduce(aux: dict) -> dict:
            aux = dict(aux)
            aux["overflow"] = lax.pmax(aux["overflow"].astype(jnp.int32), "data") > 0
            aux["intersections"] = lax.pmax(aux["intersections"], "data")
            return aux

        def mapped(*args):
            if kind == "sample":
                states, noise, cond, uncond, cameras, key, mask = args
                in_specs = (rep, data, data, data, rep, data, rep)
            elif kind == "init":
                in_specs = (rep, data, rep)
            else:  # segment: (states, carry, cond, uncond, cameras, key, mask, start, stop)
                x, aux, traj = args[1]
                carry_spec = (data, aux_specs(aux), None if traj is None else P(None, "data"))
                in_specs = (rep, carry_spec, data, data, rep, data, rep, rep, rep)
            probe = jax.eval_shape(fn, *args)  # the output's structure (for its specs)

            def body(*local):
                out = fn(*local)
                if kind == "segment":
                    x, aux, traj = out
                    return x, reduce(aux), traj
                return out[0], reduce(out[1])

            if kind == "segment":
                _, aux, traj = probe
                out_specs = (data, aux_specs(aux), None if traj is None else P(None, "data"))
            else:
                out_specs = (data, aux_specs(probe[1]))
            return jax.shard_map(body, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs,
                                 axis_names={"data"}, check_vma=False)(*args)

        return mapped

    def _place(self, args: tuple, batched: tuple[bool, ...]) -> tuple:
        """Put the call's arguments on the mesh: batch-first ones split over ``data``, the
        others replicated (arrays already laid out so are not moved)."""
        if self.mesh is None:
            return args
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        split = NamedSharding(self.mesh, P("data" if self.data_shards > 1 else None))
        whole = NamedSharding(self.mesh, P())
        return tuple(a if a is None else jax.device_put(a, split if b else whole)
                     for a, b in zip(args, batched, strict=True))

    def _init(self, states, noise, cameras):
        # returns x too: the segments' carry is then always a jit output (committed the same
        # way on every call, so they reuse one executable)
        _, vae, lgm = _merge(self.graphdefs, states)
        return noise, _init_aux(vae, lgm, noise, sampler_geometry(cameras, self.config),
                                self.config)

    def _segment(self, states, carry, cond, uncond, cameras, key, mask, start, stop):
        """Steps ``start`` ≤ i < ``stop`` (traced: a while loop whose trip count XLA cannot
        see, so it is never folded into its surroundings; the body is the scan's step)."""
        consts = (cond, uncond, sampler_geometry(cameras, self.config), key)

        def body(i, carry):
            x, aux, traj = carry
            (x, aux), x_next = self.step(states, consts, (x, aux), (i, mask[i]))
            if traj is not None:
                traj = lax.dynamic_update_index_in_dim(traj, x_next, i, 0)
            return x, aux, traj

        return lax.fori_loop(start, stop, body, carry)

    def _sample(self, states, noise, cond, uncond, cameras, key, mask):
        _, vae, lgm = _merge(self.graphdefs, states)
        geometry = sampler_geometry(cameras, self.config)
        aux = _init_aux(vae, lgm, noise, geometry, self.config)
        consts = (cond, uncond, geometry, key)
        steps = jnp.arange(self.config.num_steps, dtype=jnp.int32)
        (x, aux), traj = lax.scan(lambda c, xs: self.step(states, consts, c, xs), (noise, aux),
                                  (steps, mask))
        if self.config.keep_trajectory:
            aux["trajectory"] = traj
        return x, aux

    def _sample_with_progress(self, states, noise, cond, uncond, cameras, key, mask):
        from tqdm.auto import tqdm

        n, per_call = self.config.num_steps, self.steps_per_call
        if not (isinstance(per_call, int) and per_call >= 1):
            raise ValueError(f"Sampler.steps_per_call must be a positive int, got {per_call!r}")
        x, aux = self._jitted_init(states, noise, cameras)
        traj = (jnp.zeros((n, *x.shape), x.dtype) if self.config.keep_trajectory else None)
        carry = (x, aux, traj)
        with tqdm(total=n, desc="DDIM", unit="step") as bar:
            for start in range(0, n, per_call):
                stop = min(start + per_call, n)
                carry = self._jitted_segment(states, carry, cond, uncond, cameras, key, mask,
                                             jnp.int32(start), jnp.int32(stop))
                jax.block_until_ready(carry[0])
                bar.update(stop - start)
                if self.step_callback is not None:
                    self.step_callback(stop, n)
        x, aux, traj = carry
        if self.config.keep_trajectory:
            aux["trajectory"] = traj
        return x, aux

    def states(self) -> tuple:
        """The modules' current states (weights), the jitted function's first argument."""
        return tuple(None if m is None else nnx.state(m) for m in self.models)

    def __call__(self, noise: jax.Array, cond: Mapping[str, jax.Array],
                 uncond: Mapping[str, jax.Array], cameras_c2w_zup: jax.Array, key: jax.Array,
                 *, aware_mask: Any = None) -> tuple[jax.Array, dict]:
        """Sample latents [B, F, h, w, 4] from ``noise`` (same shape).

        ``cond`` / ``uncond``: guidance-branch UNet inputs (:data:`COND_KEYS`, batch B first;
        see :func:`text_conditions`, :func:`image_conditions`). ``cameras_c2w_zup`` [F, 4, 4]:
        OpenGL c2w in the z-up orbit world. ``key``: VAE posterior samples (and η noise).
        ``aware_mask`` [num_steps] bool overrides ``config.aware_steps`` without recompiling
        (needs a sampler built with aware steps).

        Returns ``(latents, aux)``; ``aux["overflow"]`` (bool: any rasteriser overflow at an
        aware step; the latents are then NaN), ``aux["intersections"]`` (the largest buffer
        use), ``aux["gaussians"]`` (the last aware step's Gaussians, [2 = (uncond, cond), B,
        G], zeros if no aware step ran; only with aware steps) and ``aux["trajectory"]``
        ([num_steps, B, F, h, w, 4], with ``keep_trajectory``).
        """
        mask = _check_inputs(noise, cond, uncond, cameras_c2w_zup, self.config, aware_mask)
        b = jnp.shape(noise)[0]
        if per_sample_keys(key) and key.shape[0] != b:
            raise ValueError(f"per-sample keys must be [B={b}], got {key.shape[0]} keys")
        if self.data_shards > 1:
            if not per_sample_keys(key):
                raise ValueError("a sampler on a data mesh needs per-sample keys [B] "
                                 "(jnp.stack of jax.random.key(...) per sample), so that each "
                                 "sample's noise does not depend on its batch")
            if b % self.data_shards:
                raise ValueError(f"batch {b} is not divisible by the mesh's data axis "
                                 f"{self.data_shards}; pad the batch to a multiple of it")
        args = (self.states(), jnp.asarray(noise), dict(cond), dict(uncond),
                jnp.asarray(cameras_c2w_zup, jnp.float32), key, jnp.asarray(mask))
        if self.mesh is not None:
            states, *rest = args
            rest = self._place(tuple(rest), (True, True, True, False, True, False))
            args = (states, *rest)
        if not self.config.progress:
            return self.jitted(*args)
        return self._sample_with_progress(*args)


def progress_chunk(num_steps: int) -> int:
    """The default DDIM steps per compiled call when a progress bar is shown: at most 10 calls
    per sample, a few host round trips (the last call may run fewer steps; every call runs
    the same executable). Set :attr:`Sampler.steps_per_call` to 1 for a callback after every
    step."""
    return max(1, -(-int(num_steps) // 10))


def make_sampler(unet: nnx.Module, vae: nnx.Module | None, lgm: nnx.Module | None,
                 config: SamplerConfig | None = None, mesh: Any = None) -> Sampler:
    """Build the jitted sampler ``sample_fn(noise, cond, uncond, cameras_c2w_zup, key) ->
    (latents, aux)`` (one ``lax.scan`` over all DDIM steps; see :class:`Sampler`).

    ``vae`` and ``lgm`` may be ``None`` for plain sampling (``config.aware_steps == ()``).
    The modules are split once; each call passes their current states to the compiled function.
    ``mesh``: sample the batch on several devices (see :class:`Sampler`).
    """
    return Sampler(unet, vae, lgm, SamplerConfig() if config is None else config, mesh)


@functools.lru_cache(maxsize=8)
def _jitted_step(graphdefs, config: SamplerConfig):
    """One compiled step per (module structure, config), reused across Python-loop calls."""
    return jax.jit(_build_step(graphdefs, config, config.ddim_schedule(), None))


def sample_python_loop(unet: nnx.Module, vae: nnx.Module | None, lgm: nnx.Module | None,
                       config: SamplerConfig, noise: jax.Array, cond: Mapping[str, jax.Array],
                       uncond: Mapping[str, jax.Array], cameras_c2w_zup: jax.Array,
                       key: jax.Array, *, aware_mask: Any = None) -> tuple[jax.Array, dict]:
    """The same step function as :func:`make_sampler`, jitted alone and driven by a Python loop
    (a reference for the scanned loop, and a debugging aid: intermediate states are concrete).
    Same arguments and results as :meth:`Sampler.__call__`."""
    _check_models(unet, vae, lgm, config)
    cfg = config.replace(progress=False)
    mask = _check_inputs(noise, cond, uncond, cameras_c2w_zup, cfg, aware_mask)
    graphdefs, states = _split(unet, vae, lgm)
    step = _jitted_step(graphdefs, cfg)
    geometry = sampler_geometry(cameras_c2w_zup, cfg)
    x = jnp.asarray(noise)
    aux = _init_aux(vae, lgm, x, geometry, cfg)
    consts = (dict(cond), dict(uncond), geometry, key)
    traj = []
    for i in range(cfg.num_steps):
        (x, aux), y = step(states, consts, (x, aux),
                           (jnp.asarray(i, jnp.int32), jnp.asarray(mask[i])))
        traj.append(y)
    if cfg.keep_trajectory:
        aux["trajectory"] = jnp.stack(traj)
    return x, aux
