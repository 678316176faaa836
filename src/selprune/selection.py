"""From importances to what is pruned next: the forget/retain score, the selection, and seeded random draws."""

from __future__ import annotations

import torch


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
