"""Statistics, scores, selection and evaluation against naive reference computations."""

import math

import numpy as np
import pytest
import torch

from selprune.arch import NeuronGroup
from selprune import evaluate as evaluate_module
from selprune.evaluate import Head, evaluate_causal, evaluate_masked, frequent_tokens, score_predictions
from selprune.scoring import importance, random_scores, scores, select
from selprune import stats as stats_module
from selprune.stats import NEEDS, Stats, collect, reduce_batch
from tiny import tiny_batch, tiny_model


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
    np.testing.assert_allclose(importance(s, "abs", unit=2)[0].numpy(), [(2 + 2) / 2, (3 + 5) / 2])


def test_collect_on_a_model_matches_hooked_activations():
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
def test_collecting_only_what_a_scorer_needs_gives_the_same_importance(kind):
    model = tiny_model("gpt2")
    view = NeuronGroup(model, "ff")
    ids, mask = tiny_batch()
    full, _ = collect(model, view, ids, mask, batch_size=1)
    lean, _ = collect(model, view, ids, mask, batch_size=1, moments=NEEDS[kind])
    assert set(lean.moments()) == set(NEEDS[kind])
    torch.testing.assert_close(importance(lean, kind), importance(full, kind))
    other = {"freq": "abs", "abs": "rms", "rms": "abs", "std": "abs"}[kind]
    with pytest.raises(ValueError, match="needs the moment"):
        importance(lean, other)


def test_compiled_statistics_equal_eager_ones():
    model = tiny_model("llama")
    view = NeuronGroup(model, "ff")
    ids, mask = tiny_batch(batch=3)
    eager, _ = collect(model, view, ids, mask, batch_size=2)
    fused, _ = collect(model, view, ids, mask, batch_size=2, fused=True)
    assert not stats_module.fused_moment_sums.failed, "fell back to eager: nothing was compiled"
    for m, value in eager.moments().items():
        torch.testing.assert_close(fused.moments()[m], value, rtol=1e-5, atol=1e-5)


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


def test_causal_evaluation_equals_naive_logits():
    model = tiny_model("opt")
    ids, mask = tiny_batch(batch=3, length=12)
    skip = frequent_tokens(ids, mask, 5)
    m, _ = evaluate_causal(model, ids, mask, batch_size=2, skip_ids=skip)
    logits = model(input_ids=ids, attention_mask=mask).logits.double()
    valid = (mask[:, :-1] * mask[:, 1:]).bool()
    lg, tg = logits[:, :-1][valid], ids[:, 1:][valid]
    rank = (lg > lg.gather(1, tg[:, None])).sum(1)
    loss = torch.logsumexp(lg, 1) - lg.gather(1, tg[:, None])[:, 0]
    keep = ~torch.isin(tg, skip)
    assert m.tokens == int(valid.sum())
    assert m.top1 == pytest.approx(float((rank == 0).double().mean()))
    assert m.top10 == pytest.approx(float((rank < 10).double().mean()))
    assert m.loss == pytest.approx(float(loss.mean()), rel=1e-5)
    assert m.perplexity == pytest.approx(math.exp(float(loss.mean())), rel=1e-5)
    assert m.top1_skip == pytest.approx(float((rank[keep] == 0).double().mean()))
    assert m.loss_skip == pytest.approx(float(loss[keep].mean()), rel=1e-5)


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("arch", ["opt", "phi", "gemma2"])  # plain head, head with bias, soft-capped logits
@pytest.mark.parametrize("scale", [1.0, 400.0])  # random-init logits near 0; logits as large as a trained model's
def test_bf16_ranks_equal_exact_ranks(arch, scale, fused):
    """Ranks decided on bf16 logits plus the float32 band are those of exact logits, ties included."""
    model = tiny_model(arch).to(torch.bfloat16)
    head, cap = model.get_output_embeddings(), model.config.final_logit_softcapping if arch == "gemma2" else None
    head.weight.mul_(scale)
    head.weight[7] = head.weight[5]  # two tokens with identical logits: a tie is a hit for both
    ids, mask = tiny_batch(batch=4, length=24)
    ids[:, 1::3] = 7
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1].reshape(-1, 16)
    targets = ids[:, 1:].reshape(-1)
    assert Head(model).cap == cap
    top1, top10, loss = score_predictions(hidden, Head(model), targets, rows=7, fused=fused)
    exact = hidden.double() @ head.weight.double().T
    if head.bias is not None:
        exact += head.bias.double()
    rank = (exact > exact.gather(1, targets[:, None])).sum(1)
    assert 0 < int((rank == 0).sum()) < len(rank), "the check needs hits and misses"
    assert torch.equal(top1, rank == 0) and torch.equal(top10, rank < 10)
    capped = torch.tanh(exact / cap) * cap if cap else exact
    ref = torch.logsumexp(capped, 1) - capped.gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(loss.double().mean(), ref.mean(), rtol=2e-2, atol=1e-2)
    if fused:
        assert not evaluate_module.fused_count_bounds.failed, "fell back to eager: nothing was compiled"


def test_masked_evaluation_counts_only_masked_positions():
    model = tiny_model("roberta")
    ids, mask = tiny_batch(batch=2, length=12)
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 5] = ids[0, 3], ids[1, 5]
    masked = ids.clone()
    masked[labels != -100] = 4
    m, _ = evaluate_masked(model, masked, labels, mask, 2, torch.empty(0, dtype=torch.long))
    logits = model(input_ids=masked, attention_mask=mask).logits
    top = logits.argmax(-1)
    assert m.tokens == 2
    assert m.top1 == pytest.approx(float((top[0, 3] == ids[0, 3]).float() + (top[1, 5] == ids[1, 5]).float()) / 2)


def test_frequent_tokens_ignores_padding():
    ids = torch.tensor([[5, 5, 5, 6, 7, 7]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    assert frequent_tokens(ids, mask, 2).tolist() == [5, 6]


def test_out_of_memory_halves_the_batch_and_loses_nothing():
    from selprune.batching import for_each_batch

    done = []

    def work(start, stop):
        if stop - start > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        done.append((start, stop))

    assert for_each_batch(7, 8, work) == 2
    assert done == [(0, 2), (2, 4), (4, 6), (6, 7)]


def test_out_of_memory_with_one_chunk_is_a_clear_error():
    from selprune.batching import for_each_batch
    from selprune.errors import UserError

    def work(start, stop):
        raise torch.OutOfMemoryError("out of memory")

    with pytest.raises(UserError, match="out of memory with one chunk per batch"):
        for_each_batch(3, 4, work)
