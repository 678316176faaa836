"""Importance of each unit on one dataset, the forget/retain score, and which units to prune next."""

from __future__ import annotations

import torch

from .stats import NEEDS, Stats


def importance(stats: Stats, kind: str, dims_per_unit: int = 1,
               out_norms: torch.Tensor | None = None) -> torch.Tensor:
    """Per activation dim, then averaged over each unit's dims: [layers, units] (formulas: scorers.py).

    The paper's Definition 1: freq = P(z > 0); abs = mean |z|; rms = sqrt(mean z^2); std = population std.
    attr = mean |z dL/dz|, the first-order loss change of zeroing the unit at each position.
    wanda = sqrt(mean of (z ||w||)^2) over the unit's dims, with ||w|| the norm of the weights that read a
    dim (`out_norms`, [layers, width]): the root-mean-square norm of what the unit writes (a head's dims
    are treated as uncorrelated), which for one dim is Wanda's rms(z) x ||w||.
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
    elif kind == "attr":
        value = stats.attribution / n
    elif kind == "wanda":
        if out_norms is None:
            raise ValueError("importance 'wanda' needs the norms of the weights that read each dim (out_norms)")
        value = stats.sum_sq / n * out_norms.double() ** 2  # mean squared write; the root comes after the mean
    else:
        raise ValueError(f"no importance function {kind!r}")
    layers, width = value.shape
    unit = value.reshape(layers, width // dims_per_unit, dims_per_unit).mean(-1)
    return unit.sqrt() if kind == "wanda" else unit


def scores(forget: torch.Tensor, retain: torch.Tensor, eps: float, relative: bool = False) -> torch.Tensor:
    """score = I(forget) / (I(retain) + eps): high means important to forget, unimportant to retain.

    With relative=True, eps is a multiple of the median retain importance (importance scales vary
    by model and scorer, so a fixed eps means different things on different models).
    """
    if relative:
        eps = eps * float(retain.median())
    return forget / (retain + eps)


def step_seed(seed: int, step: int) -> int:
    """The seed of one pruning step's random draws: a resumed run draws what an uninterrupted one did."""
    return seed * 1_000_003 + step


def random_scores(shape, seed: int, step: int) -> torch.Tensor:
    """The paper's baseline: uniform random scores, seeded per step so a resumed run matches."""
    gen = torch.Generator().manual_seed(step_seed(seed, step))
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
