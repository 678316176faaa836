"""Importance of each unit on one dataset, the forget/retain score, and which units to prune next."""

from __future__ import annotations

import torch

from .stats import NEEDS, Stats


def importance(stats: Stats, kind: str, dims_per_unit: int = 1) -> torch.Tensor:
    """Paper Definition 1, per activation dim, then averaged over each unit's dims: [layers, units].

    freq = P(z > 0); abs = mean |z|; rms = sqrt(mean z^2); std = population std of z.
    """
    missing = [m for m in NEEDS.get(kind, ()) if getattr(stats, m) is None]
    if missing:
        raise ValueError(f"importance {kind!r} needs the moment(s) {missing}, which were not collected")
    n = stats.count
    if kind == "freq":
        value = stats.positive / n
    elif kind == "abs":
        value = stats.sum_abs / n
    elif kind == "rms":
        value = (stats.sum_sq / n).sqrt()
    elif kind == "std":
        value = (stats.sum_sq / n - (stats.sum / n) ** 2).clamp_min(0).sqrt()
    else:
        raise ValueError(f"no importance function {kind!r}")
    layers, width = value.shape
    return value.reshape(layers, width // dims_per_unit, dims_per_unit).mean(-1)


def scores(forget: torch.Tensor, retain: torch.Tensor, eps: float, relative: bool = False) -> torch.Tensor:
    """score = I(forget) / (I(retain) + eps): high means important to forget, unimportant to retain.

    With relative=True, eps is a multiple of the median retain importance (importance scales vary
    by model and scorer, so a fixed eps means different things on different models).
    """
    if relative:
        eps = eps * float(retain.median())
    return forget / (retain + eps)


def random_scores(shape, seed: int, step: int) -> torch.Tensor:
    """The paper's baseline: uniform random scores, seeded per step so a resumed run matches."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.rand(shape, generator=gen, dtype=torch.float64)


def select(score: torch.Tensor, pruned: torch.Tensor, count: int, per_layer: bool = False) -> torch.Tensor:
    """Boolean mask [layers, units] of the `count` best-scoring units not yet pruned.

    Global selection ranks all layers together; per-layer takes count // layers from each layer.
    Ties break by position (stable sort), so selection is deterministic.
    """
    score = score.double().masked_fill(pruned, float("-inf"))
    new = torch.zeros_like(pruned)
    if per_layer:
        k = count // score.shape[0]
        order = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :k]
        new.scatter_(1, order, True)
    else:
        order = torch.sort(score.reshape(-1), descending=True, stable=True).indices[:count]
        new.view(-1)[order] = True
    return new & ~pruned
