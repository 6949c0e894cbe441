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

Path = tuple[Any, ...]
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


def path_str(path: Path) -> str:
    return "/".join(str(p) for p in path)


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


def abstract_params(model: nnx.Module) -> dict[Path, Any]:
    """Flat {path: ShapeDtypeStruct or array} of a model's ``nnx.Param`` variables."""
    state = nnx.state(model, nnx.Param)
    return {tuple(path): var.get_value() for path, var in nnx.to_flat_state(state)}


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


def load_source_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a PyTorch ``.pth``/``.bin``/``.ckpt`` (needs torch) or ``.safetensors`` (no torch)
    state dict as numpy arrays; a ``{'state_dict': ...}`` wrapper is unwrapped."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise CheckpointReadError(f"checkpoint {path!r} is empty (0 bytes): the download or copy "
                                  f"did not finish; fetch the file again")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            return dict(load_file(path))
        except Exception as err:  # safetensors raises its own error types on a damaged header
            raise CheckpointReadError(f"checkpoint {path!r} is not a readable .safetensors file "
                                      f"({_first_line(err)}); the file is damaged or truncated: "
                                      f"fetch it again") from err
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading {path!r} needs PyTorch: pip install 'videomv-jax[torch]'"
                          ) from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip / pickle / EOF errors: PyTorch's advice does not apply here
        raise CheckpointReadError(f"checkpoint {path!r} is not a readable PyTorch checkpoint "
                                  f"({_first_line(err)}): the file is damaged, truncated or not "
                                  f"a .pth/.bin/.ckpt state dict; fetch it again") from err
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"],
                                                                       Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path!r} does not hold a state dict (got {type(obj).__name__})")
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in obj.items() if hasattr(v, "detach")}


def match_any(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)
