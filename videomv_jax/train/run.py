"""Build a training run from a config (``configs/t2mv.py``, ``i2mv.py``, ``recon.py``,
``vae.py``: ``get_train_config(preset)``) and run it; export the trained models.

Config layout (``ml_collections.ConfigDict``)::

    stage        "unet" (stage 1) | "recon" (LGM: stage 2 or plain) | "vae"
    variant      "text" | "image" (stage 1 / stage 2 conditioning)
    workdir      run directory (checkpoints/, tensorboard/, config.json, export/)
    data         name ("shapes" | "gobjaverse" | "synthetic"), path (a built TFDS folder, see
                 tools/make_shapes.py), input (InputConfig fields)
    models       per model name (unet, vae, text, vision, lgm): either ``checkpoint`` (a
                 converted directory, e.g. from tools/convert_torch_weights.py or an earlier
                 export) or ``config`` (a dict of the model config, random init with ``seed``);
                 ``init_from`` (with ``config``): a converted directory whose parameters
                 replace the random ones wherever path and shape agree (e.g. the image UNet
                 started from the text UNet: only the new conditioning layers stay random)
    tokenizer    a tokenizer directory, or "build" (a caption tokenizer built from the data)
    task         task options (prediction, schedule, offset_noise, train_text_encoder, …)
    optim        OptimConfig fields;  train: TrainConfig fields;  grad_scale (stage 1)
    lpips        vgg16 / weights: paths of the public checkpoints (optional)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from videomv_jax.data.pipeline import GREY
from videomv_jax.train.optim import OptimConfig
from videomv_jax.train.trainer import TrainConfig, Trainer

log = logging.getLogger(__name__)

__all__ = ["KINDS", "build_models", "build_run", "export_models", "make_batches", "train"]

#: model name → converted-checkpoint kind (per stage-1 variant for the UNet)
KINDS = {"vae": "vae", "text": "clip-text", "vision": "clip-vision", "lgm": "lgm"}


def _kind(name: str, variant: str) -> str:
    if name == "unet":
        return "unet-t2v" if variant == "text" else "unet-i2v"
    return KINDS[name]


def _to_dict(x: Any) -> Any:
    return x.to_dict() if isinstance(x, ml_collections.ConfigDict) else x


def _random_model(kind: str, config: Any, seed: int) -> nnx.Module:
    """A freshly initialised model, built eagerly on the first local device: every process
    builds the same one, and the trainer assembles the global arrays from it
    (multihost.to_global). Only small models are initialised at random; for them eager
    construction is the fastest: videomv-tiny's UNet in 11.5 s against 37 s through one
    jitted constructor (whose compile dominates) on the 2-core CPU, with the same values
    (bit-equal for the UNet, within 4e-9 for the text tower). (Creating it straight in its
    shardings compiled 1.4x slower still on 8 CPU devices.)"""
    from videomv_jax.models.registry import get_kind

    return get_kind(kind).model_cls()(config, rngs=nnx.Rngs(seed))


def build_models(cfg: ml_collections.ConfigDict, names: list[str],
                 mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
    """Load (``checkpoint``) or initialise (``config``) each named model; ``lpips`` from its
    public checkpoints when ``cfg.lpips`` names them. With ``mesh`` (the run's, possibly
    spanning several processes) parameters are restored / created straight into their
    shardings on it (converted checkpoints; models initialised at random are built on the
    first local device, identically on every process, and placed by the trainer)."""
    from videomv_jax.model_store import load_converted
    from videomv_jax.models.registry import get_kind

    models: dict[str, Any] = {}
    for name in names:
        if name == "lpips":
            models[name] = load_lpips_from_config(cfg)
            continue
        spec = cfg.models.get(name)
        if spec is None:
            raise ValueError(f"config.models.{name} is missing: give a converted checkpoint "
                             f"directory (checkpoint=...) or a model config (config={{...}})")
        kind = _kind(name, cfg.variant)
        ckpt = spec.get("checkpoint", "") or ""
        overrides = _to_dict(spec.get("overrides")) or {}
        if ckpt:
            model, _ = load_converted(ckpt, mesh, kind=kind)
            if overrides:
                model = _with_overrides(model, overrides)
        else:
            conf = spec.get("config")
            if conf is None:
                raise ValueError(f"config.models.{name} needs checkpoint or config")
            model_cfg = get_kind(kind).config_from_dict({**_to_dict(conf), **overrides})
            model = _random_model(kind, model_cfg, int(spec.get("seed", 0)))
            if spec.get("init_from", ""):
                init_partial(model, spec.init_from)
        models[name] = model
    return models


def init_partial(model: nnx.Module, directory: str,
                 mesh: jax.sharding.Mesh | None = None) -> dict[str, list[str]]:
    """Copy the parameters of the converted model in ``directory`` into ``model`` wherever the
    path and shape agree (any kind: e.g. unet-t2v into a unet-i2v). Returns and logs the
    ``copied`` / ``kept`` (random: absent or reshaped in the source) / ``unused`` paths;
    refuses a source that shares no parameter with the model. ``mesh``: the mesh ``model``
    lives on (the source is restored onto it)."""
    from videomv_jax.model_store import load_converted

    src, _ = load_converted(directory, mesh)
    have = {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(src, nnx.Param))}
    state = nnx.state(model, nnx.Param)
    copied, kept = [], []
    for path, var in nnx.to_flat_state(state):
        key = tuple(path)
        name = "/".join(str(k) for k in key)
        other = have.get(key)
        mine = var.get_value()
        theirs = None if other is None else other.get_value()
        if theirs is not None and theirs.shape == mine.shape:
            var.set_value(jnp.asarray(theirs, mine.dtype))
            copied.append(name)
        elif (theirs is not None and theirs.ndim == mine.ndim >= 3
              and theirs.shape[:-2] + theirs.shape[-1:] == mine.shape[:-2] + mine.shape[-1:]
              and theirs.shape[-2] < mine.shape[-2]):
            # a conv kernel that gained input channels (the image UNet's first conv sees the
            # noisy latent, then the image features): the old channels keep their weights,
            # the new ones start at zero, so the copied model's function is unchanged
            new = jnp.zeros_like(mine).at[..., :theirs.shape[-2], :].set(
                jnp.asarray(theirs, mine.dtype))
            var.set_value(new)
            copied.append(name + " (input channels extended with zeros)")
        else:
            kept.append(name)
    if not copied:
        raise ValueError(f"init_from {directory!r} shares no parameter (path and shape) with "
                         f"the model; is it the right kind?")
    ours = {tuple(p) for p, _ in nnx.to_flat_state(state)}
    unused = sorted("/".join(str(k) for k in p) for p in have if p not in ours)
    nnx.update(model, state)
    log.info("init_from %s: %d parameter arrays copied, %d kept as initialised (%s), %d unused",
             directory, len(copied), len(kept), ", ".join(kept), len(unused))
    return {"copied": copied, "kept": kept, "unused": unused}


def _with_overrides(model: nnx.Module, overrides: Mapping[str, Any]) -> nnx.Module:
    """The same parameters in a model built with config fields replaced (compute dtype, remat,
    attention kernel: nothing that changes the parameter layout)."""
    from videomv_jax.models import abstract_model

    new_cfg = dataclasses.replace(model.config, **overrides)
    new = abstract_model(type(model), new_cfg)
    nnx.update(new, nnx.state(model))
    return new


def load_lpips_from_config(cfg: ml_collections.ConfigDict):
    """LPIPS-VGG from ``cfg.lpips.vgg16`` + ``cfg.lpips.weights``, or None (with a message)."""
    from videomv_jax.convert.lpips import load_lpips
    from videomv_jax.models.lpips import lpips_unavailable_reason

    vgg, weights = cfg.lpips.get("vgg16", ""), cfg.lpips.get("weights", "")
    reason = lpips_unavailable_reason(vgg or None, weights or None)
    if reason is not None:
        print(f"{reason}. Training without the LPIPS term.")
        return None
    return load_lpips(vgg, weights)


def _captions(source, limit: int | None = None) -> list[str]:
    n = len(source) if limit is None else min(limit, len(source))
    out = []
    for i in range(n):
        c = source[i]["caption"]
        out.append(c.decode() if isinstance(c, bytes) else str(c))
    return out


def make_tokenizer(cfg: ml_collections.ConfigDict, source) -> Any:
    """The run's tokenizer: a directory, or ``"build"``: a caption tokenizer from the data
    (written to ``workdir/tokenizer``)."""
    from videomv_jax.data.pipeline import DEFAULT_NEGATIVE_PROMPT
    from videomv_jax.data.vocab import build_caption_tokenizer
    from videomv_jax.models.clip import load_tokenizer

    spec = cfg.get("tokenizer", "") or ""
    if spec == "build":
        if source is None:
            raise ValueError("tokenizer='build' needs a data set (not synthetic data)")
        from videomv_jax.parallel.multihost import main_first

        path = os.path.join(cfg.workdir, "tokenizer")

        def build() -> None:
            if not os.path.isfile(os.path.join(path, "vocab.json")):
                texts = _captions(source) + [", 3d asset", DEFAULT_NEGATIVE_PROMPT]
                n = build_caption_tokenizer(texts, path)
                print(f"built a caption tokenizer with {n} tokens in {path}")

        main_first("videomv_jax:tokenizer", build)  # written once, by process 0
        return load_tokenizer(path)
    if spec:
        return load_tokenizer(spec)
    text = cfg.models.get("text")
    if text is not None and text.get("checkpoint"):
        return load_tokenizer(os.path.join(text.checkpoint, "tokenizer"))
    return None


def _task(cfg: ml_collections.ConfigDict, tokenizer: Any):
    from videomv_jax.train.tasks import AutoencoderTask, ReconTask, Stage1Task

    t = _to_dict(cfg.task)
    if cfg.stage == "vae":
        if not t.get("train_encoder", True) and float(cfg.optim.get("weight_decay", 0.0)) > 0:
            raise ValueError("task.train_encoder=False (decoder-only fine-tuning) needs "
                             "optim.weight_decay=0: decoupled weight decay would still shrink "
                             "the frozen encoder and move the latent space")
        return AutoencoderTask(**t)
    s1_keys = {f.name for f in dataclasses.fields(Stage1Task)} - {"variant", "tokenizer"}
    s1_opts = {k: v for k, v in t.items() if k in s1_keys}
    if cfg.stage == "unet":
        return Stage1Task.for_variant(cfg.variant, tokenizer=tokenizer, **s1_opts)
    if cfg.stage == "recon":
        r_keys = {f.name for f in dataclasses.fields(ReconTask)} - {"stage1"}
        r_opts = {k: v for k, v in t.items() if k in r_keys}
        stage1 = None
        if r_opts.get("source", "gt") == "unet":
            stage1 = Stage1Task.for_variant(cfg.variant, tokenizer=tokenizer, **s1_opts)
        return ReconTask(stage1=stage1, **r_opts)
    raise ValueError(f"config.stage must be 'unet', 'recon' or 'vae', got {cfg.stage!r}")


def make_batches(cfg: ml_collections.ConfigDict, source, sharding):
    """``batches(start_step)`` over the configured data (or synthetic batches)."""
    from videomv_jax.data.pipeline import InputConfig, InputPipeline, synthetic_batches

    inp = InputConfig(**_to_dict(cfg.data.input))
    if source is None:
        def synthetic(start: int):
            return synthetic_batches(inp, sharding=sharding)
        return synthetic

    def real(start: int):
        return InputPipeline(source, inp, sharding=sharding, start_step=start)

    return real


def pre_encode(vae: nnx.Module, source, background: tuple[float, float, float],
               resolution: int | None, path: str, chunk: int = 8) -> tuple[np.ndarray, ...]:
    """Encode every example's 24 views (composited on ``background``, in [0, 1]) once with the
    frozen VAE: scaled posterior means and standard deviations ``[N, F, h, w, 4]`` (float16 on
    disk at ``path``, reused when present). Stage 1 then samples the posterior per step from
    them instead of running the encoder in every step. ``vae`` must live on local devices; in
    a multi-process run every process encodes (or reads) the whole table, process 0 writes
    it."""
    from tqdm.auto import tqdm

    from videomv_jax.data.gobjaverse import resize_views
    from videomv_jax.data.pipeline import composite

    if os.path.isfile(path):
        with np.load(path) as z:
            if len(z["mean"]) == len(source):
                return z["mean"].astype(np.float32), z["std"].astype(np.float32)
    scale = vae.config.scale_factor

    @nnx.jit
    def encode(model, x):
        post = model.encode(x)
        return post.mean * scale, post.std * scale

    means, stds = [], []
    for start in tqdm(range(0, len(source), chunk), desc="pre-encoding latents", unit="batch"):
        idx = list(range(start, min(start + chunk, len(source))))
        views = np.stack([np.asarray(source[i]["views"]) for i in idx])  # uint8 premultiplied
        if resolution is not None and views.shape[2] != resolution:
            views = np.stack([resize_views(v, resolution) for v in views])
        frames, _ = composite(views, background)  # in [-1, 1]
        n, f = frames.shape[:2]
        x = jnp.asarray(frames.reshape(n * f, *frames.shape[2:]))
        if n < chunk:  # one compiled shape
            x = jnp.concatenate([x, jnp.zeros(((chunk - n) * f, *x.shape[1:]), x.dtype)])
        m, sd = encode(vae, x)
        means.append(np.asarray(m[:n * f]).reshape(n, f, *m.shape[1:]))
        stds.append(np.asarray(sd[:n * f]).reshape(n, f, *sd.shape[1:]))
    mean, std = np.concatenate(means), np.concatenate(stds)
    if jax.process_index() == 0:  # every process encodes the same table; one writes it
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp.npz"
        np.savez(tmp, mean=mean.astype(np.float16), std=std.astype(np.float16))
        os.replace(tmp, path)  # atomic: another process never reads half a file
    return mean, std


def with_latents(batches, mean: np.ndarray, std: np.ndarray, key: str = "latents"):
    """Attach pre-encoded latents to each batch by its ``index`` (rolled by ``shift`` like the
    frames) plus the unshifted view-0 latent (``cond_<key>``). Each process looks up the rows
    of its own part of the batch (``index`` holds the process-local rows)."""

    from videomv_jax.parallel.multihost import process_rows

    def fn(start: int):
        for b in batches(start):
            idx = process_rows(b["index"])
            shift = process_rows(b.get("shift", np.zeros(len(idx), np.int32)))
            m, s = mean[idx], std[idx]
            if shift.any():
                m = np.stack([np.roll(r, k, axis=0) for r, k in zip(m, shift, strict=True)])
                s = np.stack([np.roll(r, k, axis=0) for r, k in zip(s, shift, strict=True)])
            out = dict(b)
            out.update({key: m, f"{key}_std": s, f"cond_{key}": mean[idx][:, 0],
                        f"cond_{key}_std": std[idx][:, 0]})
            yield out

    return fn


#: the fixed backgrounds pre-encoding supports (the pipeline's grey 128 and white)
BACKGROUNDS = {"grey": (GREY,) * 3, "white": (1.0, 1.0, 1.0)}


def check_data_path(cfg: ml_collections.ConfigDict) -> None:
    """A ``ValueError`` naming the fix unless ``cfg.data.path`` is a built data set (or the
    run uses synthetic data): train.py checks it before anything else runs."""
    if cfg.data.name == "synthetic":
        return
    if not cfg.data.path:
        raise ValueError(f"config.data.path is empty: build the {cfg.data.name} data set "
                         f"first (python tools/make_shapes.py ... --data-dir DIR) and pass "
                         f"its versioned folder with --data, or use data.name='synthetic'")
    if not os.path.isfile(os.path.join(cfg.data.path, "dataset_info.json")):
        raise ValueError(f"config.data.path {cfg.data.path!r} is not a built data set "
                         f"(no dataset_info.json): pass the versioned folder that "
                         f"tools/make_shapes.py printed, e.g. "
                         f"DATA/videomv_shapes/n3000_s0_r64/1.0.0")


def build_run(cfg: ml_collections.ConfigDict) -> tuple[Trainer, Any]:
    """(trainer, batches) for ``cfg``."""
    from videomv_jax.data.pipeline import batch_sharding
    from videomv_jax.parallel.mesh import make_mesh
    from videomv_jax.parallel.multihost import check_batch_layout
    from videomv_jax.train.grad_scale import grad_scale_tree

    # the run's mesh first (all devices of all processes): bad sizes fail here, before any
    # model is loaded or step compiled, and models load straight onto it
    tr = cfg.train
    mesh = make_mesh(int(tr.get("mesh_data", -1)), int(tr.get("mesh_fsdp", 1)),
                     int(tr.get("mesh_tensor", 1)))
    check_batch_layout(mesh, int(cfg.data.input.get("batch_size", 8)))
    source = None
    check_data_path(cfg)
    if cfg.data.name != "synthetic":
        from videomv_jax.data.builders import load_source

        source = load_source(cfg.data.path)
    tokenizer = make_tokenizer(cfg, source) if cfg.stage != "vae" else None
    pre = bool(cfg.get("pre_encode", False)) and cfg.stage == "unet" and source is not None
    if pre:
        with cfg.unlocked():
            cfg.task.latents_key = "latents"
    task = _task(cfg, tokenizer)
    t_cfg = _to_dict(cfg.task)
    names = list(dict.fromkeys(list(task.trainable) + list(task.frozen)))
    models = build_models(cfg, names, mesh)
    if pre and "vae" not in models:  # pre-encoding runs on each process's local devices
        models.update(build_models(cfg, ["vae"]))
    if "lpips" in names and models.get("lpips") is None:  # no weights: drop the term
        task.use_lpips = False
        task.__post_init__()
        names.remove("lpips")
    if "vision" in models and hasattr(task, "clip_image_size") and "clip_image_size" not in t_cfg:
        # the vision tower's own input size (224 for ViT-H-14; the tiny tower is smaller)
        task.clip_image_size = int(models["vision"].config.image_size)
    if "text" in models and tokenizer is not None:
        vocab = tokenizer.vocab_size  # largest id + 1
        if models["text"].config.vocab_size < vocab:
            raise ValueError(f"the text encoder's vocab_size {models['text'].config.vocab_size}"
                             f" is smaller than the tokenizer's {vocab}")
    tcfg = TrainConfig(workdir=cfg.workdir, **_to_dict(cfg.train))
    trainer_models = {n: models[n] for n in names}
    scales = None
    if cfg.stage == "unet" and cfg.get("grad_scale", 1.0) != 1.0:
        unet = models["unet"]
        params = nnx.split(unet, nnx.Param, ...)[1].to_pure_dict()
        scales = {"unet": grad_scale_tree(params, unet.config, cfg.grad_scale)}
    image_fn = None
    if tcfg.image_every and getattr(task, "has_images", False):
        image_fn = task.images
    elif tcfg.image_every and cfg.stage == "unet" and not pre:
        image_fn = task.images  # needs the VAE, which stage 1 has unless latents are pre-encoded
    elif tcfg.image_every:
        print("note: no TensorBoard image grids for this run (stage 1 with pre-encoded latents "
              "has no VAE in the step)")
    trainer = Trainer(task, trainer_models, OptimConfig(**_to_dict(cfg.optim)), tcfg, mesh=mesh,
                      grad_scales=scales, image_fn=image_fn, run_config=_to_dict(cfg))
    sharding = batch_sharding(trainer.mesh)
    batches = make_batches(cfg, source, sharding)
    if pre:
        from videomv_jax.data.pipeline import InputConfig

        inp = InputConfig(**_to_dict(cfg.data.input))
        if inp.background not in BACKGROUNDS:
            raise ValueError(f"pre_encode needs a fixed background, got {inp.background!r}")
        path = os.path.join(cfg.workdir, f"latents_{inp.background}_{inp.resolution}.npz")
        mean, std = pre_encode(models["vae"], source, BACKGROUNDS[inp.background],
                               inp.resolution, path)
        batches = with_latents(batches, mean, std)
    return trainer, batches


def export_models(trainer: Trainer, cfg: ml_collections.ConfigDict, directory: str,
                  use_ema: bool | None = None) -> list[str]:
    """Write each trained model (EMA weights when the run keeps them) as a converted checkpoint
    directory ``directory/<name>`` that :func:`load_converted` and the sampling pipeline read;
    the text encoder also gets the run's tokenizer. Returns the written directories."""
    from videomv_jax.model_store import save_converted

    use_ema = trainer.config.ema_decay is not None if use_ema is None else use_ema
    models = trainer.models(use_ema=use_ema)
    step = int(trainer.state.step)
    written = []
    # frozen models that the run initialised itself (e.g. videomv-tiny's random vision tower)
    # are part of what was trained against, so they are exported too
    random_frozen = [n for n in trainer.task.frozen if n != "lpips" and n in cfg.models
                     and not cfg.models[n].get("checkpoint", "") and n in models]
    for name in list(trainer.task.trainable) + random_frozen:
        model = models[name]
        sub = {"text": "clip_text", "vision": "clip_vision"}.get(name, name)
        out = os.path.join(directory, sub)
        extra = []
        if name == "text":
            tok = os.path.join(cfg.workdir, "tokenizer")
            if not os.path.isdir(tok) and cfg.get("tokenizer"):
                tok = cfg.tokenizer
            if os.path.isdir(tok):
                extra.append((tok, "tokenizer"))
        info = {"trained_by": "videomv_jax train.py", "stage": cfg.stage, "step": step,
                "ema": bool(use_ema), "workdir": os.path.abspath(cfg.workdir)}
        if name in random_frozen:
            info.update(ema=False, frozen=True,
                        init=f"random (seed {int(cfg.models[name].get('seed', 0))}), frozen "
                             f"while the other models trained against it")
        save_converted(out, _kind(name, cfg.variant), model.config, model, info, extra,
                       overwrite=True)
        written.append(out)
    written += _complete_export(cfg, directory, written)
    return written


#: the model folders the sampling pipeline reads, per mode (configs/t2mv.py, configs/i2mv.py)
SAMPLER_MODELS = {"t2mv": ("unet", "vae", "clip_text", "lgm"),
                  "i2mv": ("unet", "vae", "clip_text", "lgm", "clip_vision")}


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = list(v) if isinstance(v, tuple) else v
    return out


def _complete_export(cfg: ml_collections.ConfigDict, directory: str,
                     written: list[str]) -> list[str]:
    """Make ``directory`` a sampleable folder: copy in the frozen models the run read from
    converted checkpoints (e.g. the VAE) and ``cfg.export.models`` (e.g. the LGM of a UNet run),
    and write ``sampling.json`` (``cfg.export.sampling``: the settings the models were trained
    for, which ``sample.py --checkpoint-dir`` applies). Logs the sampler models still missing."""
    import shutil

    from videomv_jax.tiny import SAMPLING_FILE

    if jax.process_index() != 0:  # plain file copies: one process writes them
        return []
    mode = "i2mv" if cfg.variant == "image" else "t2mv"
    export = cfg.get("export", ml_collections.ConfigDict(dict(models={}, sampling={})))
    sources = {}
    for name, entry in cfg.models.items():
        if name != "lpips" and entry.get("checkpoint", ""):
            sources[{"text": "clip_text", "vision": "clip_vision"}.get(name, name)] = \
                entry.checkpoint
    sources.update(dict(export.get("models", {})))
    copied = []
    for sub, src in sorted(sources.items()):
        out = os.path.join(directory, sub)
        if out in written or not src:
            continue
        if not os.path.isdir(src):
            raise FileNotFoundError(f"export: {sub!r} should be copied from {src!r}, which is "
                                    f"not a folder (set export.models.{sub} or "
                                    f"models.*.checkpoint to a converted model folder)")
        if os.path.isdir(out):
            shutil.rmtree(out)
        shutil.copytree(src, out)
        copied.append(out)
    sampling = export.get("sampling", {})
    sampling = _flat(sampling.to_dict() if hasattr(sampling, "to_dict") else dict(sampling))
    if sampling:
        with open(os.path.join(directory, SAMPLING_FILE), "w") as fh:
            json.dump({"modes": {mode: sampling},
                       "note": f"written by train.py --export ({cfg.stage} {cfg.variant} "
                               f"{cfg.get('preset', '')}): the settings these models were "
                               f"trained for; sample.py --checkpoint-dir applies them"},
                      fh, indent=2, sort_keys=True)
    missing = [m for m in SAMPLER_MODELS[mode] if not os.path.isdir(os.path.join(directory, m))]
    if missing:
        logging.getLogger(__name__).warning(
            "export %s: no %s, so sample.py cannot use it as it is; copy converted models there "
            "or set export.models.<name>=DIR", directory, missing)
    return copied


def train(cfg: ml_collections.ConfigDict, resume: bool = True,
          export: str | None = None) -> dict[str, Any]:
    """Build and run; export the trained models when ``export`` is given."""
    trainer, batches = build_run(cfg)
    summary = trainer.fit(batches, resume=resume)
    if export:
        summary["exported"] = export_models(trainer, cfg, export)
    if jax.process_index() == 0:
        with open(os.path.join(cfg.workdir, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=2, default=_json_default)
    return summary


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Mapping):
        return dict(o)
    return str(o)
