"""Training objectives: stage 1 (video UNet) and stage 2 / plain LGM (reconstructor).

A task names the models it trains and the frozen ones it reads, turns a host batch into device
inputs (:meth:`prepare`: tokenising captions, CLIP image preprocessing) and computes the loss
inside the jitted step (:meth:`loss`). Batches follow :mod:`videomv_jax.data.pipeline`:
``frames`` [B, F, H, W, 3] in [-1, 1] composited on the task's background, ``alpha``
[B, F, H, W, 1], ``camera`` [B, F, 16], ``c2w`` [B, F, 4, 4] (OpenGL, z-up), ``background``
[B, 3] in [0, 1], ``caption`` (host list of str).

Stage 1 (docs/design.md §4, §7): t ~ U{0..T-1}, x_t = √ᾱ x0 + √(1-ᾱ) ε, MSE between the UNet
output and ε (text→MV) or v (image→MV, with offset noise ε + 0.1 ε' where ε' is shared over
pixels). The image variant is conditioned on view 0 (its VAE latent and CLIP image embedding).

Stage 2 (design §6.5): the frozen UNet predicts x̂0 at a random t; 4 random views are decoded and
given to LGM; 8 views (those 4 + 4 others) are rendered on the batch's random background and
compared with the ground truth: MSE(rgb) + MSE(alpha) + λ·LPIPS-VGG (when an LPIPS model is
given). ``source="gt"`` trains LGM on the ground-truth views instead (plain LGM training).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from videomv_jax.diffusion.ddim import predict_x0, q_sample, v_target
from videomv_jax.diffusion.schedules import alphas_cumprod
from videomv_jax.models.clip import PromptTruncatedWarning, tokenize
from videomv_jax.models.clip import preprocess as clip_preprocess
from videomv_jax.models.lgm import prepare_inputs
from videomv_jax.parallel.multihost import process_rows
from videomv_jax.render.camera import normalize_poses, raster_cameras
from videomv_jax.render.rasterize import rasterize

__all__ = ["AutoencoderTask", "ReconTask", "Stage1Task", "Task", "check_models"]


class Task:
    """Interface of a training objective (see the module docstring)."""

    #: names of the trained models (keys of the models mapping)
    trainable: tuple[str, ...] = ()
    #: names of the frozen models the loss reads
    frozen: tuple[str, ...] = ()

    def prepare(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Host-side extra inputs (NumPy, leading batch axis) derived from the batch."""
        return {}

    def loss(self, models: Mapping[str, Any], batch: Mapping[str, jax.Array],
             key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        raise NotImplementedError

    #: whether :meth:`images` is implemented (TensorBoard image grids)
    has_images: bool = False

    def images(self, models: Mapping[str, Any], batch: Mapping[str, jax.Array],
               key: jax.Array) -> jax.Array:
        """[N, H, W, 3] in [0, 1] for TensorBoard (first example of the batch)."""
        raise NotImplementedError


def _mse(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))


@dataclasses.dataclass
class Stage1Task(Task):
    """Video-UNet fine-tuning (models ``unet``; frozen ``vae`` unless latents are given,
    ``text`` (trainable with ``train_text_encoder``), ``vision`` for the image variant).

    ``tokenizer`` tokenises captions on the host (CLIP BPE or any object with the same
    ``tokenize`` contract); ``latents_key``: a batch key holding pre-encoded scaled latents
    [B, F, h, w, 4] (posterior means; with ``<key>_std`` a posterior sample is drawn, and the
    image variant reads its conditioning latent from ``cond_<key>``) instead of encoding
    ``frames`` with the VAE on the fly (:func:`videomv_jax.train.run.pre_encode`).
    """

    variant: str = "text"
    tokenizer: Any = None
    prediction: str = "eps"
    schedule: str = "linear_sd"
    num_timesteps: int = 1000
    offset_noise: float = 0.0
    sample_posterior: bool = True
    train_text_encoder: bool = False
    context_length: int = 77
    latents_key: str | None = None
    clip_image_size: int = 224

    def __post_init__(self):
        if self.variant not in ("text", "image"):
            raise ValueError(f"variant must be 'text' or 'image', got {self.variant!r}")
        if self.prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {self.prediction!r}")
        if self.offset_noise < 0:
            raise ValueError(f"offset_noise must be >= 0, got {self.offset_noise}")
        self.trainable = ("unet", "text") if self.train_text_encoder else ("unet",)
        frozen = [] if self.latents_key else ["vae"]
        if self.variant == "image":
            frozen.append("vision")
        if not self.train_text_encoder:
            frozen.append("text")
        self.frozen = tuple(dict.fromkeys(frozen))
        self._alphas = np.asarray(alphas_cumprod(self.schedule, self.num_timesteps), np.float32)

    @classmethod
    def for_variant(cls, variant: str, **kwargs: Any) -> Stage1Task:
        """Released settings: text → eps, linear_sd, no offset noise; image → v, cosine with
        zero terminal SNR, offset noise 0.1 (design §4)."""
        if variant == "text":
            base = dict(prediction="eps", schedule="linear_sd", offset_noise=0.0)
        elif variant == "image":
            base = dict(prediction="v", schedule="cosine", offset_noise=0.1)
        else:
            raise ValueError(f"variant must be 'text' or 'image', got {variant!r}")
        base.update(kwargs)
        return cls(variant=variant, **base)

    def prepare(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if self.tokenizer is None:
            raise ValueError("Stage1Task needs a tokenizer to turn captions into token ids")
        from videomv_jax.data import DEFAULT_NEGATIVE_PROMPT

        captions = list(batch["caption"])
        with warnings.catch_warnings():
            # the negative prompt replaces dropped captions; its truncation on a short-context
            # tower (videomv-tiny: 32 tokens) is the design, not a user's over-long caption,
            # and it would warn at every step that drops a caption
            if DEFAULT_NEGATIVE_PROMPT in captions:
                warnings.filterwarnings("ignore", message=".*Distorted, discontinuous",
                                        category=PromptTruncatedWarning)
            out = {"tokens": tokenize(self.tokenizer, captions,
                                      context_length=self.context_length)}
        if self.variant == "image":
            # this process's rows (batches of a multi-process run hold global arrays)
            ref = (process_rows(batch["cond_image"]) if "cond_image" in batch
                   else process_rows(batch["frames"])[:, 0])
            rgb = np.clip(ref * 0.5 + 0.5, 0.0, 1.0)
            out["clip_image"] = clip_preprocess(rgb, crop_size=rgb.shape[1],
                                                size=self.clip_image_size)
        return out

    def conditioning(self, models: Mapping[str, Any], batch: Mapping[str, jax.Array],
                     key: jax.Array) -> dict[str, jax.Array]:
        """Text context and (image variant) image latent / embedding. Image examples flagged in
        ``condition_dropped`` (the data pipeline's caption dropout, whose caption is then the
        negative prompt) get a zero image embedding: exactly the unconditional branch of
        :func:`videomv_jax.diffusion.sampler.image_conditions`, so that CFG has a trained
        branch to push away from."""
        ctx = models["text"](batch["tokens"])
        if not self.train_text_encoder:
            ctx = jax.lax.stop_gradient(ctx)
        cond: dict[str, Any] = {"context": ctx}
        if self.variant == "image":
            if self.latents_key is not None:  # pre-encoded: the table row of view 0
                lat = self._sample(batch, f"cond_{self.latents_key}", key)
            else:
                ref = batch["cond_image"] if "cond_image" in batch else batch["frames"][:, 0]
                lat = models["vae"].encode_frames(ref[:, None], key if self.sample_posterior
                                                  else None)[:, 0]
            cond["image_latent"] = jax.lax.stop_gradient(lat)
            emb = jax.lax.stop_gradient(models["vision"](batch["clip_image"]))
            if "condition_dropped" in batch:  # condition dropout: the sampler's uncond branch
                keep = 1.0 - batch["condition_dropped"].astype(emb.dtype)
                emb = emb * keep.reshape(-1, *(1,) * (emb.ndim - 1))
            cond["image_embedding"] = emb
        return cond

    def latents(self, models: Mapping[str, Any], batch: Mapping[str, jax.Array],
                key: jax.Array) -> jax.Array:
        if self.latents_key is not None:
            return self._sample(batch, self.latents_key, key)
        lat = models["vae"].encode_frames(batch["frames"],
                                          key if self.sample_posterior else None)
        return jax.lax.stop_gradient(lat)

    def _sample(self, batch: Mapping[str, jax.Array], name: str, key: jax.Array) -> jax.Array:
        """Pre-encoded scaled latents: ``name`` (the posterior mean), plus a posterior sample
        when the batch also holds ``name + "_std"`` and ``sample_posterior`` is on."""
        mean = batch[name]
        std = batch.get(f"{name}_std")
        if std is None or not self.sample_posterior:
            return mean
        return mean + std * jax.random.normal(key, mean.shape, mean.dtype)

    def denoise(self, models: Mapping[str, Any], batch: Mapping[str, jax.Array],
                x0: jax.Array, t: jax.Array, noise: jax.Array, key: jax.Array,
                deterministic: bool = True) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(x_t, ᾱ_t, UNet output) for clean latents ``x0`` noised with ``noise`` at ``t``,
        conditioned as in training (``key`` drives the conditioning's posterior sample)."""
        alpha = jnp.asarray(self._alphas)[t].reshape(-1, 1, 1, 1, 1)
        xt = q_sample(x0, noise, alpha)
        cond = self.conditioning(models, batch, key)
        out = models["unet"](xt, t, cond["context"], batch["camera"],
                             image_latent=cond.get("image_latent"),
                             image_embedding=cond.get("image_embedding"),
                             deterministic=deterministic)
        return xt, alpha, out

    def loss(self, models, batch, key):
        k_lat, k_img, k_t, k_eps, k_off, _ = jax.random.split(key, 6)
        x0 = self.latents(models, batch, k_lat)
        b = x0.shape[0]
        t = jax.random.randint(k_t, (b,), 0, self.num_timesteps)
        noise = jax.random.normal(k_eps, x0.shape, jnp.float32)
        if self.offset_noise:
            noise = noise + self.offset_noise * jax.random.normal(
                k_off, (b, x0.shape[1], 1, 1, x0.shape[-1]), jnp.float32)
        _, alpha, out = self.denoise(models, batch, x0, t, noise, k_img, deterministic=False)
        target = noise if self.prediction == "eps" else v_target(x0, noise, alpha)
        loss = _mse(out, target)
        return loss, {"loss": loss, "diffusion_mse": loss}


def _stage1_images(task: Stage1Task, models, batch, key) -> jax.Array:
    """Top row: the first example's views (ground truth); bottom row: the UNet's x̂0 from
    t = 500, decoded (8 evenly spaced views)."""
    k_lat, k_img, k_eps = jax.random.split(key, 3)
    one = {k: v[:1] for k, v in batch.items() if hasattr(v, "shape")}
    x0 = task.latents(models, one, k_lat)
    t = jnp.full((1,), task.num_timesteps // 2, jnp.int32)
    noise = jax.random.normal(k_eps, x0.shape, jnp.float32)
    xt, alpha, out = task.denoise(models, one, x0, t, noise, k_img)
    x0_hat = predict_x0(xt, out, alpha, task.prediction)
    idx = jnp.linspace(0, x0.shape[1] - 1, min(8, x0.shape[1])).astype(jnp.int32)
    vae = models["vae"]
    pred = vae.decode_frames(x0_hat[:, idx])[0]
    true = vae.decode_frames(x0[:, idx])[0]
    return jnp.clip(jnp.concatenate([true, pred]) * 0.5 + 0.5, 0.0, 1.0)


Stage1Task.images = _stage1_images


@dataclasses.dataclass
class ReconTask(Task):
    """LGM training (model ``lgm``): stage 2 on the frozen UNet's x̂0 (``source="unet"``,
    also needs ``stage1`` for conditioning and the frozen ``unet``, ``vae``, ``text``) or plain
    training on ground-truth views (``source="gt"``). ``lpips`` (frozen, optional) adds
    ``lpips_weight`` × LPIPS-VGG; ``lpips_size`` resizes renders (bilinear) before LPIPS, as
    the released loss does (512 → 256)."""

    source: str = "gt"
    stage1: Stage1Task | None = None
    num_input_views: int = 4
    num_supervised_views: int = 8
    fovy: float = 39.6
    render_size: int | None = None
    capacity_per_scene: int | None = None
    lpips_weight: float = 1.0
    use_lpips: bool = False
    lpips_size: int | None = None
    raster_settings: str = "inria"

    def __post_init__(self):
        if self.source not in ("gt", "unet"):
            raise ValueError(f"source must be 'gt' or 'unet', got {self.source!r}")
        if self.source == "unet" and self.stage1 is None:
            raise ValueError("source='unet' needs the stage-1 task (conditioning, schedule)")
        if not 1 <= self.num_input_views <= self.num_supervised_views:
            raise ValueError("need 1 <= num_input_views <= num_supervised_views")
        self.trainable = ("lgm",)
        self.has_images = True
        self._want_images = False
        frozen = ["lpips"] if self.use_lpips else []
        if self.source == "unet":
            frozen = ["unet", "vae", *self.stage1.frozen, *frozen]
        self.frozen = tuple(dict.fromkeys(frozen))

    def prepare(self, batch):
        return self.stage1.prepare(batch) if self.source == "unet" else {}

    def _views(self, models, batch, key) -> jax.Array:
        """``source="gt"``: the ground-truth views [B, F, H, W, 3] in [0, 1]; ``"unet"``: the
        frozen UNet's x̂0 *latents* [B, F, h, w, 4] (decoded per selected view in loss())."""
        if self.source == "gt":
            return batch["frames"] * 0.5 + 0.5
        s1 = self.stage1
        k_lat, k_img, k_t, k_eps = jax.random.split(key, 4)
        x0 = s1.latents(models, batch, k_lat)
        t = jax.random.randint(k_t, (x0.shape[0],), 0, s1.num_timesteps)
        noise = jax.random.normal(k_eps, x0.shape, jnp.float32)
        xt, alpha, out = s1.denoise(models, batch, x0, t, noise, k_img)
        return jax.lax.stop_gradient(predict_x0(xt, out, alpha, s1.prediction))

    def loss(self, models, batch, key):
        k_views, k_perm = jax.random.split(key)
        lgm = models["lgm"]
        lcfg = lgm.config
        frames = batch["frames"]
        b, f = frames.shape[:2]
        perm = jax.vmap(lambda k: jax.random.permutation(k, f))(jax.random.split(k_perm, b))
        inp_idx = perm[:, :self.num_input_views]
        sup_idx = perm[:, :self.num_supervised_views]

        def take(x, idx):
            return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

        views = self._views(models, batch, k_views)
        if self.source == "unet":
            lat = take(views, inp_idx)
            rgb_in = jnp.clip(models["vae"].decode_frames(lat) * 0.5 + 0.5, 0.0, 1.0)
            rgb_in = jax.lax.stop_gradient(rgb_in)
        else:
            rgb_in = take(views, inp_idx)
        if rgb_in.shape[2] != lcfg.input_size:
            rgb_in = jax.image.resize(rgb_in, (*rgb_in.shape[:2], lcfg.input_size,
                                               lcfg.input_size, 3), "bilinear")
        poses = normalize_poses(batch["c2w"])  # [B, F, 4, 4] LGM's y-up world
        gaussians = lgm.gaussians(prepare_inputs(rgb_in, take(poses, inp_idx), self.fovy))

        size = self.render_size or frames.shape[2]
        viewmats, ks = raster_cameras(take(poses, sup_idx), size, size, self.fovy)
        # default: every Gaussian may touch 16 tiles in each supervised view; an overflow
        # poisons the renders with NaN, and the trainer then skips the step (and says so)
        per_scene = self.capacity_per_scene or 16 * lcfg.num_gaussians * sup_idx.shape[1]
        capacity = per_scene * b
        bg = batch["background"][:, None, :]
        out = rasterize(gaussians, viewmats, ks, size, size, background=bg,
                        settings=self.raster_settings, capacity=capacity)
        # ground truth: the high-resolution renders when the batch has them (design §6.5: 512²)
        gt_frames = batch.get("frames_hr", frames)
        gt_rgb = take(gt_frames * 0.5 + 0.5, sup_idx)
        gt_alpha = take(batch.get("alpha_hr", batch["alpha"]), sup_idx)[..., 0]
        if gt_rgb.shape[2] != size:
            gt_rgb = jax.image.resize(gt_rgb, (*gt_rgb.shape[:2], size, size, 3), "bilinear")
            gt_alpha = jax.image.resize(gt_alpha, (*gt_alpha.shape[:2], size, size), "bilinear")
        if self._want_images:
            return jnp.concatenate([gt_rgb[0], jnp.clip(out.colors[0], 0.0, 1.0)]), {}
        mse_rgb = _mse(out.colors, gt_rgb)
        mse_alpha = _mse(out.alphas, gt_alpha)
        loss = mse_rgb + mse_alpha
        metrics = {"mse_rgb": mse_rgb, "mse_alpha": mse_alpha,
                   "psnr": -10.0 * jnp.log10(mse_rgb + 1e-12),
                   "raster_overflow": out.info.overflow.astype(jnp.float32)}
        if self.use_lpips:
            lp = _lpips(models["lpips"], out.colors, gt_rgb, self.lpips_size)
            loss = loss + self.lpips_weight * lp
            metrics["lpips"] = lp
        metrics["loss"] = loss
        return loss, metrics


@dataclasses.dataclass
class AutoencoderTask(Task):
    """KL autoencoder training (model ``vae``) on single views, for small models trained from
    scratch (the released VideoMV uses the frozen SD VAE): per-pixel L1 + ``mse_weight``·MSE +
    ``kl_weight``·KL (mean over latent elements) + optional ``lpips_weight``·LPIPS. Views are
    ``frames`` [B, F, H, W, 3]; ``views_per_example`` random frames of each are used.

    ``train_encoder=False`` fine-tunes the decoder alone: the latent sample is cut from the
    gradient, so the encoder (and with it the latent space a diffusion model was trained on)
    stays exactly as it is (its gradients are zero, so Adam leaves it unchanged) and the KL
    term is dropped."""

    kl_weight: float = 1e-6
    mse_weight: float = 1.0
    l1_weight: float = 1.0
    views_per_example: int = 4
    use_lpips: bool = False
    lpips_weight: float = 0.1
    train_encoder: bool = True

    def __post_init__(self):
        self.trainable = ("vae",)
        self.frozen = ("lpips",) if self.use_lpips else ()
        self.has_images = True

    def images(self, models, batch, key):
        """Top row: 8 views of the first example; bottom row: their reconstructions."""
        frames = batch["frames"][0]
        idx = jnp.linspace(0, frames.shape[0] - 1, min(8, frames.shape[0])).astype(jnp.int32)
        x = frames[idx]
        recon = models["vae"].decode(models["vae"].encode(x).mode())
        return jnp.clip(jnp.concatenate([x, recon]) * 0.5 + 0.5, 0.0, 1.0)

    def loss(self, models, batch, key):
        k_pick, k_post = jax.random.split(key)
        frames = batch["frames"]
        b, f = frames.shape[:2]
        idx = jax.vmap(lambda k: jax.random.permutation(k, f)[:self.views_per_example])(
            jax.random.split(k_pick, b))
        x = jnp.take_along_axis(frames, idx[:, :, None, None, None], axis=1)
        x = x.reshape(-1, *x.shape[2:])
        vae = models["vae"]
        post = vae.encode(x)
        z = post.sample(k_post)
        kl = jnp.mean(post.kl()) / math.prod(post.mean.shape[1:])
        if not self.train_encoder:
            z, kl = jax.lax.stop_gradient(z), jax.lax.stop_gradient(kl)
        recon = vae.decode(z)
        l1 = jnp.mean(jnp.abs(recon - x))
        mse = _mse(recon, x)
        loss = self.l1_weight * l1 + self.mse_weight * mse
        if self.train_encoder:
            loss = loss + self.kl_weight * kl
        metrics = {"l1": l1, "mse": mse, "kl": kl,
                   "psnr": -10.0 * jnp.log10(_mse(recon * 0.5, x * 0.5) + 1e-12)}
        if self.use_lpips:
            lp = jnp.mean(models["lpips"](jnp.clip(recon, -1, 1), x))
            loss = loss + self.lpips_weight * lp
            metrics["lpips"] = lp
        metrics["loss"] = loss
        return loss, metrics


def _recon_images(task: ReconTask, models, batch, key) -> jax.Array:
    """Top row: the 8 supervised ground-truth views of the first example; bottom row: LGM's
    renders of them."""
    task._want_images = True
    try:
        one = {k: v[:1] for k, v in batch.items() if hasattr(v, "shape")}
        return task.loss(models, one, key)[0]
    finally:
        task._want_images = False


ReconTask.images = _recon_images


def _lpips(model: Any, pred: jax.Array, gt: jax.Array, size: int | None) -> jax.Array:
    x = pred.reshape(-1, *pred.shape[-3:]) * 2.0 - 1.0
    y = gt.reshape(-1, *gt.shape[-3:]) * 2.0 - 1.0
    if size is not None and size != x.shape[1]:
        from videomv_jax.models.lpips import resize_for_lpips
        x, y = resize_for_lpips(x, size), resize_for_lpips(y, size)
    return jnp.mean(model(x, y))


def check_models(task: Task, models: Mapping[str, Any], names: Sequence[str] | None = None):
    """Raise naming every model the task needs but was not given."""
    need = list(task.trainable) + list(task.frozen)
    missing = [n for n in need if models.get(n) is None]
    if missing:
        raise ValueError(f"{type(task).__name__} needs models {missing} (given: "
                         f"{sorted(k for k, v in models.items() if v is not None)})")
