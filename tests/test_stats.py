"""Streaming statistics and importance functions against naive reference computations."""

import math

import numpy as np
import pytest
import torch

from selprune import stats as stats_module
from selprune.arch import NeuronGroup
from selprune.scorers import SCORERS, importance
from selprune.stats import Stats, collect, reduce_batch


def naive_importance(z: np.ndarray, kind: str) -> np.ndarray:
    """Definition 1 of the paper, straight from the formulas, in float64 over positions [P, width]."""
    if kind == "freq":
        return (z > 0).mean(0)
    if kind == "abs":
        return np.abs(z).mean(0)
    if kind == "rms":
        return np.sqrt((z ** 2).mean(0))
    return z.std(0)  # population std


def stats_of(batches):
    """Accumulate Stats the way collect() does, from (z [B, T, W], mask [B, T]) batches."""
    total = None
    for z, mask in batches:
        flat = mask.reshape(-1).bool()
        sums = reduce_batch(z, None if flat.all() else flat)
        batch = Stats(float(flat.sum()), **{m: s[None].double() for m, s in sums.items()})
        total = batch if total is None else (total.add(batch) or total)
    return total


@pytest.mark.parametrize("kind", ["freq", "abs", "rms", "std"])
def test_importance_equals_naive_and_ignores_padding(kind):
    g = torch.Generator().manual_seed(1)
    batches = []
    for b in range(3):
        z = torch.randn(2, 7, 5, generator=g) * 3 + 0.5
        mask = torch.ones(2, 7, dtype=torch.long)
        if b == 2:
            mask[1, 4:] = 0
            z[1, 4:] = 1e6  # padding carries garbage that must not count
        batches.append((z, mask))
    got = importance(stats_of(batches), kind)[0].numpy()
    kept = np.concatenate([z.reshape(-1, 5)[m.reshape(-1).bool()].numpy() for z, m in batches]).astype(np.float64)
    np.testing.assert_allclose(got, naive_importance(kept, kind), rtol=1e-5, atol=1e-6)


def test_std_is_not_rms_and_heads_average_their_dims():
    z = torch.tensor([[[1.0, 2.0, 3.0, 5.0]], [[3.0, 2.0, -3.0, 5.0]]])  # 2 positions, 4 dims
    s = stats_of([(z, torch.ones(2, 1))])
    np.testing.assert_allclose(importance(s, "std")[0].numpy(), [1, 0, 3, 0])
    np.testing.assert_allclose(importance(s, "rms")[0].numpy(), [math.sqrt(5), 2, 3, 5])
    np.testing.assert_allclose(importance(s, "abs", dims_per_unit=2)[0].numpy(), [(2 + 2) / 2, (3 + 5) / 2])


def test_collect_on_a_model_matches_hooked_activations(tiny_model, tiny_batch):
    model = tiny_model("llama")
    view = NeuronGroup(model, "ff")
    ids, mask = tiny_batch(batch=3)
    mask[0, -2:] = 0
    seen = {}
    handles = view.add_hooks(lambda layer, z: seen.setdefault(layer, []).append(z.clone()))
    model.base_model(input_ids=ids, attention_mask=mask)
    for h in handles:
        h.remove()
    stats, _ = collect(model, view, ids, mask, batch_size=2)
    for layer in range(view.layers):
        z = seen[layer][0].reshape(-1, view.width)[mask.reshape(-1).bool()].double().numpy()
        for kind in ("freq", "abs", "rms", "std"):
            np.testing.assert_allclose(importance(stats, kind)[layer].numpy(), naive_importance(z, kind),
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["freq", "abs", "rms", "std"])
def test_collecting_only_what_a_scorer_needs_gives_the_same_importance(kind, tiny_model, tiny_batch):
    model = tiny_model("gpt2")
    view = NeuronGroup(model, "ff")
    ids, mask = tiny_batch()
    full, _ = collect(model, view, ids, mask, batch_size=1)
    lean, _ = collect(model, view, ids, mask, batch_size=1, moments=SCORERS[kind].sums)
    assert set(lean.moments()) == set(SCORERS[kind].sums)
    torch.testing.assert_close(importance(lean, kind), importance(full, kind))
    other = {"freq": "abs", "abs": "rms", "rms": "abs", "std": "abs"}[kind]
    with pytest.raises(ValueError, match="needs the moment"):
        importance(lean, other)


def test_compiled_statistics_equal_eager_ones(tiny_model, tiny_batch):
    model = tiny_model("llama")
    view = NeuronGroup(model, "ff")
    ids, mask = tiny_batch(batch=3)
    eager, _ = collect(model, view, ids, mask, batch_size=2)
    fused, _ = collect(model, view, ids, mask, batch_size=2, fused=True)
    assert not stats_module.fused_moment_sums.failed, "fell back to eager: nothing was compiled"
    for m, value in eager.moments().items():
        torch.testing.assert_close(fused.moments()[m], value, rtol=1e-5, atol=1e-5)
