"""Evaluation (accuracy, loss, perplexity) against naive computations on full-precision logits."""

import math

import pytest
import torch

from selprune import evaluate as evaluate_module
from selprune.evaluate import Head, evaluate_causal, evaluate_masked, frequent_tokens, score_predictions


def test_causal_evaluation_equals_naive_logits(tiny_model, tiny_batch):
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
def test_bf16_ranks_equal_exact_ranks(arch, scale, fused, tiny_model, tiny_batch):
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


def test_masked_evaluation_counts_only_masked_positions(tiny_model, tiny_batch):
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
