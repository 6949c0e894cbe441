"""Optimiser of both training stages: AdamW with the released warm-up + cosine schedule."""

from __future__ import annotations

import dataclasses
from typing import Any

import optax

__all__ = ["OptimConfig", "learning_rate_schedule", "make_optimizer"]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW settings (defaults = VideoMV, docs/design.md §7.2: lr 3e-5, weight decay 0, betas
    (0.9, 0.999), eps 1e-8, 10 linear warm-up steps, then cosine over ``decay_steps``
    (1,000,000 as released, so effectively constant); no gradient clipping)."""

    learning_rate: float = 3e-5
    warmup_steps: int = 10
    decay_steps: int = 1_000_000
    final_lr_fraction: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_grad_norm: float | None = None

    def __post_init__(self):
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.warmup_steps < 0 or self.decay_steps < 1:
            raise ValueError(f"warmup_steps must be >= 0 and decay_steps >= 1, got "
                             f"{self.warmup_steps}, {self.decay_steps}")
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1 and self.eps > 0):
            raise ValueError(f"need 0 <= b1, b2 < 1 and eps > 0, got {self.b1}, {self.b2}, "
                             f"{self.eps}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be > 0 or None, got {self.clip_grad_norm}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OptimConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown OptimConfig fields {unknown}")
        return cls(**d)


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
    """Linear warm-up from 0 to ``learning_rate`` over ``warmup_steps``, then cosine decay to
    ``final_lr_fraction * learning_rate`` over ``decay_steps``."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.warmup_steps + cfg.decay_steps,
        end_value=cfg.final_lr_fraction * cfg.learning_rate)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """AdamW (optionally after global-norm clipping) on the schedule above."""
    adamw = optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay)
    if cfg.clip_grad_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.clip_grad_norm), adamw)
