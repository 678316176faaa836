"""Scores (forget importance over retain importance) and the selection of what to prune next."""

import numpy as np
import torch

from selprune.selection import random_scores, scores, select


def test_scores_prefer_forget_only_units():
    forget = torch.tensor([[1.0, 1.0, 0.0, 2.0]])
    retain = torch.tensor([[1.0, 0.0, 1.0, 4.0]])
    s = scores(forget, retain, eps=0.1)
    np.testing.assert_allclose(s[0].numpy(), [1 / 1.1, 10, 0, 2 / 4.1])
    assert select(s, torch.zeros(1, 4, dtype=torch.bool), 2).tolist() == [[True, True, False, False]]
    rel = scores(forget, retain, eps=0.5, relative=True)  # eps = 0.5 x median(retain) = 0.5 x 1.0
    np.testing.assert_allclose(rel[0].numpy(), [1 / 1.5, 2, 0, 2 / 4.5])


def test_selection_is_global_or_per_layer_and_never_reselects():
    s = torch.tensor([[9.0, 8.0, 7.0, 6.0], [1.0, 2.0, 3.0, 4.0]])
    none = torch.zeros(2, 4, dtype=torch.bool)
    assert select(s, none, 4).tolist() == [[True] * 4, [False] * 4]
    assert select(s, none, 4, per_layer=True).tolist() == [[True, True, False, False], [False, False, True, True]]
    pruned = none.clone()
    for _ in range(4):
        new = select(s, pruned, 2)
        assert int(new.sum()) == 2 and not (new & pruned).any()
        pruned |= new
    assert pruned.all()


def test_random_scores_are_seeded_per_step():
    a, b = random_scores((3, 5), seed=7, step=2), random_scores((3, 5), seed=7, step=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, random_scores((3, 5), seed=7, step=3))
    assert not torch.equal(a, random_scores((3, 5), seed=8, step=2))
