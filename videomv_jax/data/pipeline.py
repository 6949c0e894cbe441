"""Deterministic, resumable, per-host sharded input pipeline for multi-view training.

It reads a random-access source (:func:`videomv_jax.data.builders.load_source`, or any sequence
of example dicts with the builders' features) and yields batches as global ``jax.Array`` s.

Order: epoch ``e`` visits the examples in ``permutation_e`` (a NumPy permutation seeded by
``(seed, e)``; identity when ``shuffle`` is False); global step ``s`` is batch
``s % steps_per_epoch`` of epoch ``s // steps_per_epoch`` (the last partial batch of an epoch
is dropped). Every random choice of an example (caption dropout, the reconstructor's background
colour, the image→MV frame shift) is drawn from a generator seeded by
``(seed, step, row)``, ``row`` being the example's position in the *global* batch. A batch is
therefore a pure function of the step: resuming at step ``k`` (``start_step=k`` or
:meth:`InputPipeline.restore`) yields exactly what an uninterrupted run yields from step ``k``,
whatever the number of hosts.

Sharding: host ``p`` loads only the rows of the global batch that its devices hold (from the
batch sharding's ``addressable_devices_indices_map``; without a sharding, block ``p`` of
``process_count`` equal blocks), i.e. disjoint example indices, and the rows are assembled into
global arrays by ``jax.make_array_from_process_local_data``.

Batch (``B`` global batch, ``b`` = rows on this host, ``F`` = 24 frames, ``H = W`` =
``resolution``): every numeric entry is a global ``jax.Array`` sharded over the batch axis
(host-local NumPy from :meth:`InputPipeline.host_batch`):

=============  ====================  ==========================================================
key            dtype / shape         meaning
=============  ====================  ==========================================================
frames         f32 [B, F, H, W, 3]   views composited on ``background``, in [-1, 1]
alpha          f32 [B, F, H, W, 1]   alpha masks in [0, 1] (shifted together with ``frames``)
camera         f32 [B, F, 16]        UNet camera embedding (row-major OpenGL c2w), never shifted
c2w            f32 [B, F, 4, 4]      OpenGL camera-to-world, z-up world
lgm_cameras    f32 [B, F, 4, 4]      normalised poses for LGM (y-up)
background     f32 [B, 3]            background colour in [0, 1] (``frames`` = 2 * comp - 1)
shift          i32 [B]               i2mv cyclic frame shift (0 when off)
index          i32 [B]               example index in the source
cond_image     f32 [B, H, W, 3]      i2mv only: view 0 *before* the shift, on the background
frames_hr      f32 [B, F, HR, HR, 3] only with ``hr_resolution``: high-res views, same
alpha_hr       f32 [B, F, HR, HR, 1] background, never shifted (reconstructor ground truth)
caption        list[str] (b)         host-local: caption + suffix, "" (i2mv) or the negative
                                     prompt (dropout); tokenise per host, then globalise
object_id      list[str] (b)         host-local object names
=============  ====================  ==========================================================

:func:`synthetic_batches` yields batches of the same structure without a data set.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from videomv_jax.data.gobjaverse import resize_views
from videomv_jax.render.camera import (
    TEXT_TO_MV,
    camera_embedding,
    normalize_poses,
    orbit_cameras,
)

__all__ = [
    "BACKGROUNDS",
    "DEFAULT_NEGATIVE_PROMPT",
    "GREY",
    "MODES",
    "InputConfig",
    "InputPipeline",
    "batch_sharding",
    "composite",
    "globalize",
    "synthetic_batches",
]

MODES: tuple[str, ...] = ("t2mv", "i2mv", "recon")
"""Training modes: text→MV UNet, image→MV UNet, reconstructor (stage 2)."""

BACKGROUNDS: tuple[str, ...] = ("grey", "white", "black", "random")
"""Background choices; "random" is a uniform RGB colour per example and step."""

GREY: float = 128.0 / 255.0
"""VideoMV's text→MV background, grey 128 (docs/design.md §3.4)."""

DEFAULT_NEGATIVE_PROMPT: str = (
    "Distorted, discontinuous, Ugly, blurry, low resolution, disfigured, "
    "disconnected limbs, Ugly faces, incomplete arms"
)
"""VideoMV's negative prompt (design §4), used for the text→MV caption dropout."""

_MODE_DEFAULTS = {
    # mode: (background, caption dropout, use caption, frame shift)
    "t2mv": ("grey", 0.1, True, False),
    "i2mv": ("white", 0.0, False, True),
    "recon": ("random", 0.0, True, False),
}


@dataclass(frozen=True)
class InputConfig:
    """Input pipeline settings. ``None`` fields take the mode's default (design §3.4, §4, §7.1).

    mode: "t2mv" | "i2mv" | "recon". batch_size: *global* batch size. resolution: output view
    size (None: the stored size; otherwise views are resized, PIL bicubic). hr_resolution: also
    output ``frames_hr``/``alpha_hr`` from the ``views_hr`` feature (reconstructor ground truth).
    background: t2mv "grey" (128), i2mv "white", recon "random". caption_dropout: probability
    of replacing the caption by ``negative_prompt`` (t2mv 0.1, otherwise 0); i2mv batches flag
    those examples in ``condition_dropped`` (1.0) so that the image task also zeroes their
    CLIP image embedding, i.e. trains the sampler's unconditional branch. caption_suffix:
    appended to every caption (", 3d asset"). use_caption: False gives "" (i2mv default).
    frame_shift: i2mv cyclic shift of frames and alpha by a random offset in ``[0, F)``
    (i2mv default on; refused for recon, where it would misalign views and cameras). shuffle /
    seed: example order and every random draw. num_epochs: None = infinite. prefetch: batches
    prepared ahead by ``num_workers`` background threads. num_frames: frames of synthetic
    batches (data sets hold 24).
    """

    mode: str = "t2mv"
    batch_size: int = 8
    resolution: int | None = None
    hr_resolution: int | None = None
    background: str | None = None
    caption_dropout: float | None = None
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    caption_suffix: str = ", 3d asset"
    use_caption: bool | None = None
    frame_shift: bool | None = None
    shuffle: bool = True
    seed: int = 0
    num_epochs: int | None = None
    prefetch: int = 2
    num_workers: int = 1
    num_frames: int = 24

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        bg, drop, use_cap, shift = _MODE_DEFAULTS[self.mode]
        for name, default in (("background", bg), ("caption_dropout", drop),
                              ("use_caption", use_cap), ("frame_shift", shift)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        if not 0.0 <= float(self.caption_dropout) <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {self.caption_dropout!r}")
        if self.mode == "recon" and self.frame_shift:
            raise ValueError("frame_shift must be off for mode='recon': shifting the frames "
                             "misaligns the reconstructor's input views with cameras and GT")
        for name in ("batch_size", "prefetch", "num_workers", "num_frames"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "prefetch"
                                                                     else 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("resolution", "hr_resolution", "num_epochs"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be None or a positive int, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (resolved defaults)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown InputConfig field(s) {unknown}")
        return cls(**d)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def batch_sharding(mesh: jax.sharding.Mesh,
                   axes: Sequence[str] = ("data", "fsdp")) -> NamedSharding:
    """Batch-axis sharding over ``axes`` of ``mesh`` (axes the mesh lacks are left out)."""
    present = tuple(a for a in axes if a in mesh.axis_names)
    return NamedSharding(mesh, PartitionSpec(present if present else None))


def composite(views: np.ndarray, background: Any) -> tuple[np.ndarray, np.ndarray]:
    """Premultiplied uint8 RGBA ``[..., 4]`` on ``background`` (RGB in [0, 1], broadcastable
    to ``[..., 3]``) → (colour in [-1, 1], alpha in [0, 1]), float32.

    ``colour = 2 * clip(rgb + background * (1 - alpha), 0, 1) - 1``.
    """
    v = np.asarray(views, np.float32) / 255.0
    rgb, alpha = v[..., :3], v[..., 3:]
    comp = np.clip(rgb + np.asarray(background, np.float32) * (1.0 - alpha), 0.0, 1.0)
    return comp * 2.0 - 1.0, alpha


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return _text(value.item())
    return str(value)


def _batch_spec_sharding(sharding: NamedSharding) -> NamedSharding:
    """Sharding of the batch dimension only (trailing dimensions replicated)."""
    spec = tuple(sharding.spec)
    return NamedSharding(sharding.mesh, PartitionSpec(spec[0] if spec else None))


def _host_rows(sharding: NamedSharding, batch_size: int) -> tuple[int, int]:
    """The contiguous rows ``[start, stop)`` of the global batch held by this process."""
    idx = sharding.addressable_devices_indices_map((batch_size,))
    spans = set()
    for index in idx.values():
        sl = index[0] if index else slice(None)
        start, stop, _ = sl.indices(batch_size)
        spans.add((start, stop))
    spans = sorted(spans)
    start, stop = spans[0][0], spans[0][1]
    for s, e in spans[1:]:
        if s > stop:
            raise ValueError(f"this process holds non-contiguous batch rows {spans}; order the "
                             "mesh devices so each process owns one block of the batch axis")
        stop = max(stop, e)
    return start, stop


def globalize(local: dict[str, Any], sharding: NamedSharding | None,
              batch_size: int) -> dict[str, Any]:
    """Host-local rows → global arrays of ``batch_size`` rows sharded like ``sharding``'s batch
    axis (``jax.make_array_from_process_local_data``); lists (captions) stay host-local.

    Use it for per-host derived data too, e.g. the caption token ids of ``batch["caption"]``.
    ``sharding=None`` returns ``local`` unchanged.
    """
    if sharding is None:
        return local
    shard = _batch_spec_sharding(sharding)
    out: dict[str, Any] = {}
    for key, value in local.items():
        if isinstance(value, np.ndarray):
            out[key] = jax.make_array_from_process_local_data(
                shard, value, (batch_size, *value.shape[1:])
            )
        else:
            out[key] = value
    return out


def _example_rng(seed: int, step: int, row: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, row, 0x1A7A])


def _background(kind: str, rng_rgb: np.ndarray) -> np.ndarray:
    if kind == "grey":
        return np.full(3, GREY, np.float32)
    if kind == "white":
        return np.ones(3, np.float32)
    if kind == "black":
        return np.zeros(3, np.float32)
    return rng_rgb.astype(np.float32)


def _resolve_hosts(
    config: InputConfig,
    sharding: NamedSharding | None,
    process_index: int | None,
    process_count: int | None,
) -> tuple[int, int]:
    b = config.batch_size
    if sharding is not None:
        if process_index is not None or process_count is not None:
            raise ValueError("pass either a sharding (rows follow its devices) or "
                             "process_index/process_count, not both")
        shard = _batch_spec_sharding(sharding)
        n = int(np.prod([shard.mesh.shape[a] for a in jax.tree.leaves(shard.spec[0])]))
        if b % n:
            raise ValueError(f"batch_size {b} is not divisible by the {n} batch shards of "
                             f"{shard.spec}")
        return _host_rows(shard, b)
    p = 0 if process_index is None else int(process_index)
    n = 1 if process_count is None else int(process_count)
    if not 0 <= p < n:
        raise ValueError(f"process_index {p} must lie in [0, process_count={n})")
    if b % n:
        raise ValueError(f"batch_size {b} is not divisible by process_count {n}")
    per = b // n
    return p * per, (p + 1) * per


# --------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------


class InputPipeline:
    """Iterator of (global, sharded) batches over a random-access ``source``.

    ``sharding``: a ``NamedSharding`` whose first spec entry shards the batch (e.g.
    :func:`batch_sharding`); batches are then global ``jax.Array`` s. Without it, batches are
    host-local NumPy for simulated host ``process_index`` of ``process_count``.
    ``start_step``: first global step (resume). ``state()`` / ``restore()`` save and restore the
    position (put ``state()`` in the checkpoint).
    """

    def __init__(
        self,
        source: Any,
        config: InputConfig,
        *,
        sharding: NamedSharding | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        start_step: int = 0,
    ):
        self.source = source
        self.config = config
        self.sharding = sharding
        self.num_examples = len(source)
        self.steps_per_epoch = self.num_examples // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"the source has {self.num_examples} examples, fewer than one "
                             f"global batch of {config.batch_size}")
        self.rows = _resolve_hosts(config, sharding, process_index, process_count)
        self.total_steps = (None if config.num_epochs is None
                            else config.num_epochs * self.steps_per_epoch)
        self._perm_cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._perm_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._queue: collections.deque[tuple[int, Future]] = collections.deque()
        self._step = 0
        self.restore({"step": start_step})

    # ---- order -------------------------------------------------------------------------

    def epoch_permutation(self, epoch: int) -> np.ndarray:
        """Example order of ``epoch`` (int64 ``[num_examples]``)."""
        with self._perm_lock:
            if epoch in self._perm_cache:
                return self._perm_cache[epoch]
            if self.config.shuffle:
                perm = np.random.default_rng([self.config.seed, epoch, 0x5EED]).permutation(
                    self.num_examples)
            else:
                perm = np.arange(self.num_examples)
            self._perm_cache[epoch] = perm
            while len(self._perm_cache) > 2:
                self._perm_cache.popitem(last=False)
            return perm

    def global_indices(self, step: int) -> np.ndarray:
        """Source indices of the whole global batch of ``step`` (``[batch_size]``)."""
        epoch, pos = divmod(int(step), self.steps_per_epoch)
        b = self.config.batch_size
        return self.epoch_permutation(epoch)[pos * b:(pos + 1) * b]

    # ---- one batch -----------------------------------------------------------------------

    def _read(self, indices: list[int]) -> list[dict[str, Any]]:
        getitems = getattr(self.source, "__getitems__", None)
        if getitems is not None:
            return list(getitems(indices))
        return [self.source[i] for i in indices]

    def _example(self, ex: dict[str, Any], step: int, row: int) -> dict[str, Any]:
        cfg = self.config
        rng = _example_rng(cfg.seed, step, row)
        u_drop = rng.random()
        views = np.asarray(ex["views"])
        n_frames = views.shape[0]
        shift = int(rng.integers(n_frames))
        bg = _background(cfg.background, rng.random(3))
        if cfg.resolution is not None:
            views = resize_views(views, cfg.resolution)
        frames, alpha = composite(views, bg)
        out: dict[str, Any] = {}
        if cfg.mode == "i2mv":
            out["cond_image"] = frames[0]
        if cfg.frame_shift:
            frames, alpha = np.roll(frames, shift, axis=0), np.roll(alpha, shift, axis=0)
        else:
            shift = 0
        out.update(frames=frames, alpha=alpha, background=bg, shift=np.int32(shift))
        if cfg.hr_resolution is not None:
            if "views_hr" not in ex:
                raise KeyError("hr_resolution is set but the data set has no 'views_hr' "
                               "feature; build it with hr_resolution=512")
            out["frames_hr"], out["alpha_hr"] = composite(
                resize_views(np.asarray(ex["views_hr"]), cfg.hr_resolution), bg)
        for key in ("camera", "c2w", "lgm_cameras"):
            out[key] = np.asarray(ex[key], np.float32)
        caption = (_text(ex["caption"]) + cfg.caption_suffix) if cfg.use_caption else ""
        dropped = u_drop < cfg.caption_dropout
        if dropped:
            caption = cfg.negative_prompt
        out["caption"] = caption
        if cfg.mode == "i2mv":  # the image task zeroes this example's CLIP image embedding too
            out["condition_dropped"] = np.float32(dropped)
        out["object_id"] = _text(ex.get("object_id", ""))
        return out

    def host_batch(self, step: int) -> dict[str, Any]:
        """This host's rows of the batch of global step ``step`` (NumPy; pure in ``step``)."""
        if step < 0 or (self.total_steps is not None and step >= self.total_steps):
            raise IndexError(f"step {step} outside [0, {self.total_steps})")
        start, stop = self.rows
        idx = self.global_indices(step)[start:stop]
        exs = self._read([int(i) for i in idx])
        items = [self._example(ex, step, start + j) for j, ex in enumerate(exs)]
        out: dict[str, Any] = {}
        for key in items[0]:
            vals = [it[key] for it in items]
            out[key] = vals if isinstance(vals[0], str) else np.stack(vals)
        out["index"] = idx.astype(np.int32)
        return out

    def batch(self, step: int) -> dict[str, Any]:
        """Batch of ``step``: global arrays with a sharding, else host-local NumPy."""
        return globalize(self.host_batch(step), self.sharding, self.config.batch_size)

    # ---- iteration -----------------------------------------------------------------------

    @property
    def step(self) -> int:
        """Global step of the next batch."""
        return self._step

    def state(self) -> dict[str, int]:
        """Position to checkpoint: the next step plus the values that must not change."""
        return {"step": self._step, "epoch": self._step // self.steps_per_epoch,
                "seed": self.config.seed,
                "batch_size": self.config.batch_size, "num_examples": self.num_examples}

    def restore(self, state: dict[str, int]) -> None:
        """Continue at ``state["step"]``; other saved values must match this pipeline."""
        for key, mine in (("seed", self.config.seed), ("batch_size", self.config.batch_size),
                          ("num_examples", self.num_examples)):
            if key in state and int(state[key]) != mine:
                raise ValueError(f"cannot resume: saved {key}={state[key]} but this pipeline "
                                 f"has {key}={mine}; the batches would differ")
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        self._drain()
        self._step = step

    def _drain(self) -> None:
        for _, fut in self._queue:
            fut.cancel()
        self._queue.clear()

    def _fill(self) -> None:
        if self.config.prefetch == 0:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.config.num_workers,
                                            thread_name_prefix="videomv-input")
        nxt = self._queue[-1][0] + 1 if self._queue else self._step
        while len(self._queue) < self.config.prefetch and (
            self.total_steps is None or nxt < self.total_steps
        ):
            self._queue.append((nxt, self._pool.submit(self.host_batch, nxt)))
            nxt += 1

    def __iter__(self) -> InputPipeline:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.total_steps is not None and self._step >= self.total_steps:
            raise StopIteration
        self._fill()
        if self._queue:
            step, fut = self._queue.popleft()
            assert step == self._step
            local = fut.result()
        else:
            local = self.host_batch(self._step)
        self._step += 1
        self._fill()
        return globalize(local, self.sharding, self.config.batch_size)

    def close(self) -> None:
        """Stop the prefetch threads."""
        self._drain()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> InputPipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------------------------


def synthetic_batches(
    config: InputConfig,
    *,
    sharding: NamedSharding | None = None,
    num_steps: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Random batches with the structure of :class:`InputPipeline` batches, without data.

    For step-time measurement: one batch (seeded by ``config.seed``) is built and placed once,
    then yielded ``num_steps`` times (forever when None), so the host does no work per step.
    ``resolution`` defaults to 256 when the config leaves it None. Cameras are the text→MV
    orbit; frames are uniform in [-1, 1], alpha is 0/1.
    """
    cfg = config
    start, stop = _resolve_hosts(cfg, sharding, process_index, process_count)
    b, f = stop - start, cfg.num_frames
    res = cfg.resolution or 256
    rng = np.random.default_rng([cfg.seed, 0x5717])
    c2w = np.asarray(orbit_cameras(f, TEXT_TO_MV.elevation_deg, TEXT_TO_MV.distance),
                     np.float32)
    local: dict[str, Any] = {
        "frames": rng.uniform(-1, 1, (b, f, res, res, 3)).astype(np.float32),
        "alpha": (rng.random((b, f, res, res, 1)) < 0.5).astype(np.float32),
        "camera": np.broadcast_to(np.asarray(camera_embedding(c2w)), (b, f, 16)).copy(),
        "c2w": np.broadcast_to(c2w, (b, f, 4, 4)).copy(),
        "lgm_cameras": np.broadcast_to(np.asarray(normalize_poses(c2w), np.float32),
                                       (b, f, 4, 4)).copy(),
        "background": np.stack([_background(cfg.background, rng.random(3)) for _ in range(b)]),
        "shift": np.zeros(b, np.int32),
        "index": np.arange(start, stop, dtype=np.int32),
    }
    if cfg.mode == "i2mv":
        local["cond_image"] = local["frames"][:, 0].copy()
        local["condition_dropped"] = np.zeros(b, np.float32)
    if cfg.hr_resolution is not None:
        hr = cfg.hr_resolution
        local["frames_hr"] = rng.uniform(-1, 1, (b, f, hr, hr, 3)).astype(np.float32)
        local["alpha_hr"] = (rng.random((b, f, hr, hr, 1)) < 0.5).astype(np.float32)
    caption = "" if not cfg.use_caption else "a synthetic object" + cfg.caption_suffix
    local["caption"] = [caption] * b
    local["object_id"] = [f"synthetic/{start + i}" for i in range(b)]
    batch = globalize(local, sharding, cfg.batch_size)
    step = 0
    while num_steps is None or step < num_steps:
        yield batch
        step += 1

