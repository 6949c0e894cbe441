"""Converter for LPIPS-VGG: torchvision VGG16 ``features.*`` + the lpips package's linear heads.

Sources (two public files, merged into one state dict by :func:`read_lpips_state_dict`):

* torchvision's ImageNet VGG16 (``vgg16-397923af.pth``): ``features.{i}.weight`` [O, I, 3, 3] /
  ``features.{i}.bias`` [O] at the Sequential indices of the convs (VGG16: 0, 2, 5, 7, 10, 12,
  14, 17, 19, 21, 24, 26, 28; ReLUs and max pools hold no parameters); the ``classifier.*``
  keys of the full checkpoint are ignored.
* lpips' ``weights/v0.1/vgg.pth``: ``lin{k}.model.1.weight`` [1, C_k, 1, 1] (bias-free 1×1 convs
  behind a Dropout at ``model.0``).

Targets follow :class:`~videomv_jax.models.lpips.LPIPS`: ``net/stages/{s}/convs/{j}/{kernel,bias}``
and ``lins/{k}/kernel`` [C_k, 1]. The table is generated from the config, so the tiny test config
and the real VGG16 share it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from flax import nnx

from videomv_jax.convert.base import (
    Path,
    Rule,
    abstract_params,
    conv1x1_as_linear,
    conv_rules,
    convert_state_dict,
    load_source_checkpoint,
)
from videomv_jax.models.lpips import LPIPS, LPIPSConfig, lpips_from_params

#: Keys of a full torchvision VGG16 checkpoint that LPIPS does not use.
VGG16_IGNORE = ("classifier.*",)


def torchvision_conv_indices(config: LPIPSConfig) -> list[list[int]]:
    """Index in torchvision's ``features`` Sequential of every conv, per stage: each conv is
    followed by a ReLU (two slots) and each stage by a max pool (one slot)."""
    out, index = [], 0
    for stage in config.stage_widths:
        out.append([index + 2 * j for j in range(len(stage))])
        index += 2 * len(stage) + 1
    return out


def rules_lpips(config: LPIPSConfig) -> tuple[list[Rule], list[str]]:
    """Rules for the merged VGG16 ``features.*`` + lpips ``lin{k}.model.1.weight`` state dict."""
    rules: list[Rule] = []
    for s, indices in enumerate(torchvision_conv_indices(config)):
        for j, idx in enumerate(indices):
            rules += conv_rules(f"features.{idx}", ("net", "stages", s, "convs", j))
    for k in range(len(config.tap_channels)):
        rules.append(Rule(f"lin{k}.model.1.weight", ("lins", k, "kernel"), conv1x1_as_linear))
    return rules, list(VGG16_IGNORE)


def _read(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    try:
        return load_source_checkpoint(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{what} file {os.fspath(path)!r} does not exist") from err
    except ImportError:
        raise
    except Exception as err:  # torch / pickle / zip errors for a corrupt or foreign file
        raise ValueError(f"could not read {what} file {os.fspath(path)!r} as a state dict: "
                         f"{type(err).__name__}: {err}") from err


def read_lpips_state_dict(vgg16_path: str | os.PathLike,
                          lpips_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read torchvision's VGG16 checkpoint and lpips' ``vgg.pth`` into one state dict.

    Raises ``FileNotFoundError`` / ``ValueError`` (unreadable file) naming which file, and
    ``ValueError`` if the two files share a key (e.g. the same file passed twice)."""
    vgg = _read(vgg16_path, "VGG16 (torchvision vgg16-*.pth)")
    heads = _read(lpips_path, "LPIPS linear heads (lpips weights/v0.1/vgg.pth)")
    shared = sorted(set(vgg) & set(heads))
    if shared:
        raise ValueError(f"the VGG16 and LPIPS weight files share keys {shared[:5]} (the same "
                         f"file passed twice?)")
    return {**vgg, **heads}


def convert(state: Mapping[str, np.ndarray], config: LPIPSConfig) -> dict[Path, np.ndarray]:
    """{parameter path: array} for :class:`LPIPS`; raises ``ConversionError`` listing missing,
    unexpected and mis-shaped keys."""
    rules, ignore = rules_lpips(config)
    target = abstract_params(nnx.eval_shape(lambda: LPIPS(config, rngs=nnx.Rngs(0))))
    return convert_state_dict(state, rules, target, ignore, model_name="LPIPS-VGG")


def load_lpips(vgg16_path: str | os.PathLike, lpips_path: str | os.PathLike,
               config: LPIPSConfig | None = None) -> LPIPS:
    """Build :class:`LPIPS` (default :meth:`LPIPSConfig.vgg`) from torchvision's VGG16
    checkpoint (``features.*``; ``classifier.*`` ignored) and the lpips ``vgg.pth`` heads.

    Raises ``FileNotFoundError`` for a missing file, ``ValueError`` for an unreadable one and
    :class:`~videomv_jax.convert.base.ConversionError` when the keys / shapes do not fit."""
    config = LPIPSConfig.vgg() if config is None else config
    params = convert(read_lpips_state_dict(vgg16_path, lpips_path), config)
    return lpips_from_params(params, config)
