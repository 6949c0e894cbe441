"""Table-driven, shape-checked conversion of PyTorch state dicts into Flax NNX parameters.

A converter for one model is a list of :class:`Rule` (source key → target parameter path, with a
tensor transform) built from the model's config, plus patterns of source keys that are
deliberately ignored. :func:`convert_state_dict` applies it against the *abstract* model
(``nnx.eval_shape``): every target parameter must be filled exactly once, every source key must
be used or ignored, and every shape must match; otherwise a :class:`ConversionError` lists all
missing, unexpected, mis-shaped and doubly-filled keys at once.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from flax import nnx

# re-exported: parameter paths belong to the model side (the loader uses them without this module)
from videomv_jax.models.registry import Path, abstract_params, path_str  # noqa: F401

Transform = Callable[[np.ndarray], np.ndarray]


# ---- tensor layout transforms (PyTorch → Flax) -------------------------------------------------
# Transforms return views where possible, so a dry run over zero-strided placeholder arrays
# (np.broadcast_to) checks a full-size checkpoint layout without allocating it.


def identity(w: np.ndarray) -> np.ndarray:
    return w


def linear(w: np.ndarray) -> np.ndarray:
    """Linear weight [out, in] → Dense kernel [in, out]."""
    return w.T


def conv2d(w: np.ndarray) -> np.ndarray:
    """Conv2d weight [O, I, kh, kw] → Conv kernel [kh, kw, I, O]."""
    return w.transpose(2, 3, 1, 0)


def conv3d(w: np.ndarray) -> np.ndarray:
    """Conv3d weight [O, I, kt, kh, kw] → Conv kernel [kt, kh, kw, I, O]."""
    return w.transpose(2, 3, 4, 1, 0)


def conv1x1_as_linear(w: np.ndarray) -> np.ndarray:
    """Conv1d / Conv2d with a 1-wide kernel [O, I, 1(, 1)] → Dense kernel [I, O]."""
    return w.reshape(w.shape[0], w.shape[1]).T


# ---- rules and errors --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """Fill the target parameter at ``target`` from ``source`` (a state-dict key)."""

    source: str
    target: Path
    transform: Transform = identity


def conv_rules(src: str, tgt: Path, transform: Transform = conv2d) -> list[Rule]:
    """``src.weight`` → ``tgt/kernel`` (through ``transform``), ``src.bias`` → ``tgt/bias``."""
    return [Rule(f"{src}.weight", (*tgt, "kernel"), transform), Rule(f"{src}.bias", (*tgt, "bias"))]


def dense_rules(src: str, tgt: Path, transform: Transform = linear,
                bias: bool = True) -> list[Rule]:
    """A Linear (or 1-wide conv, with ``conv1x1_as_linear``) → Dense; bias optional."""
    rules = [Rule(f"{src}.weight", (*tgt, "kernel"), transform)]
    return rules + [Rule(f"{src}.bias", (*tgt, "bias"))] if bias else rules


def norm_rules(src: str, tgt: Path) -> list[Rule]:
    """GroupNorm / LayerNorm ``weight, bias`` → ``scale, bias``."""
    return [Rule(f"{src}.weight", (*tgt, "scale")), Rule(f"{src}.bias", (*tgt, "bias"))]


class ConversionError(ValueError):
    """A checkpoint does not fit the model: lists everything that is wrong at once."""

    def __init__(self, model: str, missing=(), unexpected=(), mismatched=(), duplicated=()):
        self.missing, self.unexpected = list(missing), list(unexpected)
        self.mismatched, self.duplicated = list(mismatched), list(duplicated)
        lines = [f"checkpoint does not fit {model}:"]

        def block(title, items, fmt=str, limit=50):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {fmt(x)}" for x in items[:limit])
                if len(items) > limit:
                    lines.append(f"    ... and {len(items) - limit} more")

        block("missing (model parameters no checkpoint key fills)", self.missing)
        block("unexpected (checkpoint keys the converter does not use)", self.unexpected)
        block("shape mismatches", self.mismatched,
              lambda m: f"{m[0]} -> {m[1]}: checkpoint {m[2]} (after transform), model {m[3]}")
        block("filled more than once", self.duplicated)
        lines.append("  fix: check that the checkpoint and the model config are the same variant "
                     "and size (see the converter's --help for the expected source format)")
        super().__init__("\n".join(lines))


def convert_state_dict(
    source: Mapping[str, np.ndarray],
    rules: Iterable[Rule],
    target: Mapping[Path, Any],
    ignore: Iterable[str] = (),
    model_name: str = "the model",
) -> dict[Path, np.ndarray]:
    """Apply ``rules`` to ``source`` for the parameter shapes in ``target``.

    ``ignore`` holds fnmatch patterns of source keys that are deliberately dropped. Returns
    {target path: numpy array}; raises :class:`ConversionError` listing every problem.
    """
    ignore = list(ignore)
    out: dict[Path, np.ndarray] = {}
    used: set[str] = set()
    missing_src, mismatched, duplicated = [], [], []
    misfit: set[Path] = set()  # targets whose source exists but has the wrong shape
    for rule in rules:
        if rule.target not in target:
            raise KeyError(f"converter bug: rule target {path_str(rule.target)} is not a "
                           f"parameter of {model_name}")
        if rule.source not in source:
            missing_src.append(f"{path_str(rule.target)} (expects checkpoint key {rule.source})")
            continue
        used.add(rule.source)
        value = rule.transform(np.asarray(source[rule.source]))
        want = tuple(target[rule.target].shape)
        if tuple(value.shape) != want:
            mismatched.append((rule.source, path_str(rule.target), tuple(value.shape), want))
            misfit.add(rule.target)
            continue
        if rule.target in out:
            duplicated.append(path_str(rule.target))
        out[rule.target] = value.astype(np.dtype(target[rule.target].dtype), copy=False)
    unfilled = [path_str(p) for p in target if p not in out and p not in misfit]
    missing = missing_src + [p for p in unfilled
                             if not any(p == m.split(" ")[0] for m in missing_src)]
    unexpected = [k for k in source
                  if k not in used and not any(fnmatch.fnmatchcase(k, pat) for pat in ignore)]
    if missing or unexpected or mismatched or duplicated:
        raise ConversionError(model_name, missing, unexpected, mismatched, duplicated)
    return out


def apply_params(model: nnx.Module, params: Mapping[Path, np.ndarray]) -> nnx.Module:
    """Write converted arrays into a (concrete) model in place; returns it."""
    state = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    for path, value in params.items():
        flat[path].set_value(np.asarray(value))
    return model


# ---- reading source checkpoints ----------------------------------------------------------------


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Keep the keys that start with ``prefix`` (e.g. ``first_stage_model.``), without it."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class CheckpointReadError(ValueError):
    """A source checkpoint file that cannot be read (empty, truncated, not a checkpoint)."""


def _first_line(err: BaseException) -> str:
    """The gist of a reader's error: its type and first line, without PyTorch's advice about
    ``weights_only`` (which is about trusted pickles, not damaged files)."""
    text = str(err).strip()
    for marker in ("Weights only load failed", "Re-running `torch.load`", "(1) In PyTorch"):
        if marker in text and text.index(marker) > 0:
            text = text[:text.index(marker)].strip()
    line = text.splitlines()[0].strip() if text else ""
    if "Weights only load failed" in line:
        line = "not a plain tensor state dict"
    return f"{type(err).__name__}: {line}" if line else type(err).__name__ + ", no message"


def _check_not_empty(path: str) -> None:
    if os.path.getsize(path) == 0:
        raise CheckpointReadError(f"checkpoint {path!r} is empty (0 bytes): the download or copy "
                                  f"did not finish; fetch the file again")


def _unreadable(path: str, what: str, err: BaseException) -> CheckpointReadError:
    """One line naming the file and the reader's gist (zip / pickle / EOF / header errors)."""
    return CheckpointReadError(f"checkpoint {path!r} is not {what} ({_first_line(err)}): the "
                               f"file is damaged, truncated or of another format; fetch it again")


def _torch_state_dict(path: str, mmap: bool) -> tuple[Mapping[str, Any], bool]:
    """``torch.load(weights_only=True)`` of a state dict (a ``{'state_dict': ...}`` wrapper
    unwrapped) → ``(state, mapped)``. With ``mmap`` the file is memory-mapped where its format
    allows (a legacy non-zip ``.pth`` is read whole instead: ``mapped`` is then False)."""
    import torch

    try:
        mapped = False
        if mmap:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                mapped = True
            except RuntimeError:  # legacy serialisation cannot be memory-mapped
                pass
        if not mapped:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip / pickle / EOF errors: PyTorch's advice does not apply here
        raise _unreadable(path, "a readable PyTorch checkpoint", err) from err
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"],
                                                                       Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path!r} does not hold a state dict (got {type(obj).__name__})")
    return obj, mapped


def load_source_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a PyTorch ``.pth``/``.bin``/``.ckpt`` (needs torch) or ``.safetensors`` (no torch)
    state dict as numpy arrays; a ``{'state_dict': ...}`` wrapper is unwrapped."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    _check_not_empty(path)
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            return dict(load_file(path))
        except Exception as err:  # safetensors raises its own error types on a damaged header
            raise _unreadable(path, "a readable .safetensors file", err) from err
    try:
        import torch  # noqa: F401 - a clear error where PyTorch is missing
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading {path!r} needs PyTorch: pip install 'videomv-jax[torch]'"
                          ) from err
    obj, _ = _torch_state_dict(path, mmap=False)
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in obj.items() if hasattr(v, "detach")}


# ---- streaming (lazy) source checkpoints -------------------------------------------------------

_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
                       "U8": "uint8", "BOOL": "bool"}


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class LazyTensor:
    """One tensor of a source checkpoint, read only when converted (``np.asarray(t)``) in its
    stored dtype; ``shape`` and ``dtype`` are known without reading. :meth:`release` gives
    the memory it occupied back (for memory-mapped ``.pth`` tensors: drops its pages from this
    process)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, read: Callable[[], np.ndarray],
                 release: Callable[[], None] | None = None):
        self.shape, self.dtype = tuple(int(d) for d in shape), np.dtype(dtype)
        self._read, self._release = read, release

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        value = self._read()
        return value if dtype is None else value.astype(dtype)

    def release(self) -> None:
        if self._release is not None:
            self._release()

    def __repr__(self) -> str:
        return f"LazyTensor(shape={self.shape}, dtype={self.dtype})"


def _safetensors_lazy(path: str) -> dict[str, LazyTensor]:
    """Header-only read of a ``.safetensors`` file; each tensor is read with one ``pread``."""
    import json
    import struct

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    base = 8 + n
    out: dict[str, LazyTensor] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path!r}: tensor {key!r} has unsupported dtype {info['dtype']}")
        dtype = _np_dtype(_SAFETENSORS_DTYPES[info["dtype"]])
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])

        def read(start=start, end=end, dtype=dtype, shape=shape) -> np.ndarray:
            buf = bytearray(end - start)
            with open(path, "rb", buffering=0) as fh:
                fh.seek(base + start)
                got = fh.readinto(buf)
            if got != end - start:
                raise ValueError(f"{path!r} is truncated")
            return np.frombuffer(buf, dtype=dtype).reshape(shape)

        out[key] = LazyTensor(shape, dtype, read)
    return out


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _drop_pages(address: int, nbytes: int) -> None:
    """``madvise(MADV_DONTNEED)`` on a read-only file mapping: its pages leave this process's
    resident set (they are re-read from the file if touched again). Best effort."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        start = address - address % _PAGE
        length = address + nbytes - start
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), 4)  # MADV_DONTNEED
    except (OSError, AttributeError):  # pragma: no cover - non-Linux
        pass


def _torch_lazy(path: str) -> dict[str, LazyTensor]:
    """``torch.load(mmap=True, weights_only=True)``: tensors stay in the file until converted;
    a legacy (non-zip) ``.pth`` is read whole instead."""
    import torch

    obj, mapped = _torch_state_dict(path, mmap=True)
    out: dict[str, LazyTensor] = {}
    for key, t in obj.items():
        if not hasattr(t, "detach"):
            continue
        name = str(t.dtype).removeprefix("torch.")
        dtype = _np_dtype(name)

        def read(t=t, name=name, dtype=dtype) -> np.ndarray:
            t = t.detach()
            if name == "bfloat16":
                return t.view(torch.int16).numpy().view(dtype)
            return t.numpy()

        def release(t=t) -> None:
            if mapped and t.numel():
                _drop_pages(t.data_ptr(), t.numel() * t.element_size())

        out[key] = LazyTensor(tuple(t.shape), dtype, read, release)
    return out


def open_source_checkpoint(path: str | os.PathLike) -> dict[str, LazyTensor]:
    """A PyTorch ``.pth``/``.bin``/``.ckpt`` or ``.safetensors`` state dict as
    {key: :class:`LazyTensor`} without reading any tensor: names, shapes and dtypes come from
    the file's index; a tensor is read (in its stored dtype) when converted, and keys no rule
    uses are never read. ``.pth`` files are memory-mapped (``torch.load(mmap=True,
    weights_only=True)``), ``.safetensors`` read tensor by tensor (no torch needed)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    _check_not_empty(path)
    if path.endswith(".safetensors"):
        try:
            return _safetensors_lazy(path)
        except (CheckpointReadError, FileNotFoundError):
            raise
        except Exception as err:  # a damaged header: json / struct / unicode errors
            raise _unreadable(path, "a readable .safetensors file", err) from err
    try:
        import torch  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading {path!r} needs PyTorch: pip install 'videomv-jax[torch]'"
                          ) from err
    return _torch_lazy(path)


def match_any(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)
