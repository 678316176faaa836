"""Evaluation (accuracy, loss, perplexity) against naive computations on full-precision logits."""

import math

import pytest
import torch
from conftest import MODEL_TYPES

from selprune import ranks
from selprune.arch import ARCHITECTURES
from selprune.evaluate import evaluate_causal, evaluate_masked, frequent_tokens
from selprune.ranks import Head, NonFiniteLogits, score_predictions

CAUSAL = [t for t in MODEL_TYPES if not ARCHITECTURES[t].masked_lm]


def _rank(logits, targets):
    """How many other tokens' logits are at or above the target's: a tie does not help the target."""
    return (logits >= logits.gather(1, targets[:, None])).sum(1) - 1


def _assert_metrics_of(m, logits, targets, skip):
    """m is what float64 logits [N, V] at the predicted positions say of their targets [N]."""
    target = logits.gather(1, targets[:, None])[:, 0]
    rank = _rank(logits, targets)
    loss = torch.logsumexp(logits, 1) - target
    keep = ~torch.isin(targets, skip)
    assert m.tokens == len(targets) and 0 < keep.sum() < len(keep)
    assert m.top1 == pytest.approx(float((rank == 0).double().mean()))
    assert m.top10 == pytest.approx(float((rank < 10).double().mean()))
    assert m.loss == pytest.approx(float(loss.mean()), rel=1e-5)
    assert m.perplexity == pytest.approx(math.exp(float(loss.mean())), rel=1e-5)
    assert m.top1_skip == pytest.approx(float((rank[keep] == 0).double().mean()))
    assert m.loss_skip == pytest.approx(float(loss[keep].mean()), rel=1e-5)


@pytest.mark.parametrize("arch", CAUSAL)
def test_causal_evaluation_equals_naive_logits(arch, tiny_model, tiny_batch):
    model = tiny_model(arch)
    ids, mask = tiny_batch(batch=3, length=12)
    skip = frequent_tokens(ids, mask, 5)
    m, _ = evaluate_causal(model, ids, mask, batch_size=2, skip_ids=skip)
    logits = model(input_ids=ids, attention_mask=mask).logits.double()
    valid = (mask[:, :-1] * mask[:, 1:]).bool()
    _assert_metrics_of(m, logits[:, :-1][valid], ids[:, 1:][valid], skip)


@pytest.mark.parametrize("width", [7, 2048], ids=["tiled", "whole"])  # the vocabulary in ragged tiles, or in one
@pytest.mark.parametrize("fused", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("arch", ["opt", "phi", "gemma2"])  # plain head, head with bias, soft-capped logits
@pytest.mark.parametrize("scale", [1.0, 400.0])  # random-init logits near 0; logits as large as a trained model's
def test_bf16_ranks_equal_exact_ranks(arch, scale, fused, width, tiny_model, tiny_batch):
    """Ranks decided on bf16 logits plus the float32 band are those of exact logits; an exact tie is a miss."""
    model = tiny_model(arch).to(torch.bfloat16)
    head, cap = model.get_output_embeddings(), model.config.final_logit_softcapping if arch == "gemma2" else None
    head.weight.mul_(scale)
    head.weight[5].mul_(4)  # token 5 on top at many positions,
    head.weight[7] = head.weight[5]  # and token 7 with identical logits: a tie is a hit for neither
    ids, mask = tiny_batch(batch=4, length=24)
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1].reshape(-1, 16)
    exact = hidden.double() @ head.weight.double().T
    if head.bias is not None:
        exact += head.bias.double()
    targets = ids[:, 1:].reshape(-1)
    targets[::3] = 7
    targets[1::3] = exact.argmax(1)[1::3]  # hits, unless token 5 or 7 is on top
    assert Head(model).cap == cap
    top1, top10, loss = score_predictions(hidden, Head(model), targets, rows=7, width=width, fused=fused)
    rank = _rank(exact, targets)
    assert 0 < int((rank == 0).sum()) < len(rank), "the check needs hits and misses"
    tied_on_top = (exact > exact.gather(1, targets[:, None])).sum(1) == 0
    assert (tied_on_top & (targets == 7)).any(), "the check needs token 7 tied with 5 on top"
    assert torch.equal(top1, rank == 0) and torch.equal(top10, rank < 10)
    capped = torch.tanh(exact / cap) * cap if cap else exact
    ref = torch.logsumexp(capped, 1) - capped.gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(loss.double().mean(), ref.mean(), rtol=2e-2, atol=1e-2)
    if fused:
        assert not ranks.fused_reductions.failed, "fell back to eager: nothing was compiled"


def _masked_batch(tiny_batch, batch=3, length=12):
    """A third of the real positions masked (id 4), labels -100 elsewhere."""
    ids, mask = tiny_batch(batch=batch, length=length)
    labels = torch.where((torch.arange(length) % 3 == 1) & mask.bool(), ids, -100)
    return ids.masked_fill(labels != -100, 4), labels, mask


def _output_layer_input(model, ids, mask):
    """What enters the output layer (after RoBERTa's dense + norm), from a plain forward."""
    seen = []
    handle = model.get_output_embeddings().register_forward_hook(lambda layer, args, out: seen.append(args[0]))
    model(input_ids=ids, attention_mask=mask)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("arch", ["roberta", "bert"])
def test_masked_evaluation_equals_naive_logits(arch, tiny_model, tiny_batch):
    """Only masked positions count, and they count as in float64 logits of the whole model."""
    model = tiny_model(arch)
    ids, labels, mask = _masked_batch(tiny_batch)
    skip = frequent_tokens(ids, mask, 5)
    m, _ = evaluate_masked(model, ids, labels, mask, 2, skip)
    sel = labels != -100
    _assert_metrics_of(m, model(input_ids=ids, attention_mask=mask).logits.double()[sel], labels[sel], skip)


def test_masked_bf16_ranks_equal_exact_ranks(tiny_model, tiny_batch):
    """Two tokens whose logits tie once rounded to bf16 but not exactly: the exactly larger one wins."""
    model = tiny_model("roberta").to(torch.bfloat16)
    out = model.get_output_embeddings()
    out.weight[5].mul_(400)  # token 5 far above (or below) every other token
    out.weight[7] = out.weight[5]
    out.bias[5], out.bias[7] = 2.0 ** -6, 2.0 ** -6 * (1 - 2.0 ** -8)  # token 7 one bf16 step below 5
    ids, labels, mask = _masked_batch(tiny_batch, batch=4, length=24)
    sel = labels != -100
    labels[sel] = torch.where(torch.arange(int(sel.sum())) % 2 == 0, 5, 7)
    m, _ = evaluate_masked(model, ids, labels, mask, len(ids), torch.empty(0, dtype=torch.long))
    exact = _output_layer_input(model, ids, mask)[sel].double() @ out.weight.double().T + out.bias.double()
    rank = _rank(exact, labels[sel])
    rounded = exact.to(torch.bfloat16)
    assert (rounded[:, 5] == rounded[:, 7]).all() and (exact[:, 5] > exact[:, 7]).all(), "needs bf16-only ties"
    assert 0 < int((rank == 0).sum()) < len(rank), "the check needs hits and misses"
    assert m.top1 == float((rank == 0).double().mean()) and m.top10 == float((rank < 10).double().mean())


def test_frequent_tokens_ignores_padding():
    ids = torch.tensor([[5, 5, 5, 6, 7, 7]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    assert frequent_tokens(ids, mask, 2).tolist() == [5, 6]


@pytest.mark.parametrize("arch", ["opt", "phi"])  # plain head, head with bias
def test_exact_logits_of_pairs_are_the_same_in_any_chunking(arch, tiny_model):
    """Re-scoring goes pair by pair in bounded chunks: a chunk boundary must not change a logit, and tokens with
    equal weights (one in each chunk) must get bitwise equal logits, or a tie could rank the target above."""
    model = tiny_model(arch).to(torch.bfloat16)
    head = Head(model)
    head.linear.weight[9] = head.linear.weight[3]
    if head.linear.bias is not None:
        head.linear.bias[9] = head.linear.bias[3]
    hidden = torch.randn(4, head.linear.in_features, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    rows = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 2])
    ids = torch.tensor([3, 3, 5, 3, 9, 9, 7, 9, 3])
    whole = head.exact(hidden, ids, rows)
    for size in (1, 2, 3, 4):
        assert torch.equal(head.exact(hidden, ids, rows, pairs=size), whole)
    assert torch.equal(whole[[0, 1, 3]], whole[[4, 5, 7]])
    reference = hidden[rows].double() @ head.linear.weight.double().T
    if head.linear.bias is not None:
        reference += head.linear.bias.double()
    torch.testing.assert_close(whole.double(), reference.gather(1, ids[:, None])[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", ["llama", "roberta"])
def test_constant_logits_score_no_hits(arch, dtype, fused, tiny_model, tiny_batch):
    """A collapsed model (every logit equal) ranks each target below V - 1 ties: top-1 and top-10 are 0,
    skip variants included, never 1."""
    model = tiny_model(arch).to(dtype)
    model.get_output_embeddings().weight.zero_()
    if model.get_output_embeddings().bias is not None:
        model.get_output_embeddings().bias.fill_(0.5)
    ids, mask = tiny_batch(batch=3, length=12)
    skip = frequent_tokens(ids, mask, 5)
    if arch == "roberta":
        ids, labels, mask = _masked_batch(tiny_batch)
        m, _ = evaluate_masked(model, ids, labels, mask, 2, skip, fused=fused)
    else:
        m, _ = evaluate_causal(model, ids, mask, batch_size=2, skip_ids=skip, fused=fused)
    assert m.tokens > 0
    assert (m.top1, m.top10, m.top1_skip, m.top10_skip) == (0.0, 0.0, 0.0, 0.0)
    assert m.loss == pytest.approx(math.log(model.config.vocab_size), rel=1e-2)


def test_whole_rows_of_logits_are_made_a_bounded_number_at_a_time(tiny_model, tiny_batch, monkeypatch):
    """A collapsed model leaves every row unsure: their logits over the whole vocabulary (for the re-scoring)
    are made ranks.WHOLE_ROWS rows at a time, not for all the rows of a block at once, and every target still
    ranks below its ties."""
    model = tiny_model("llama").to(torch.bfloat16)
    model.get_output_embeddings().weight.zero_()
    monkeypatch.setattr(ranks, "WHOLE_ROWS", 3)
    shapes, logits = [], Head.logits

    def spy(head, hidden, tokens=slice(None)):
        out = logits(head, hidden, tokens)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(Head, "logits", spy)
    ids, mask = tiny_batch(batch=2, length=12)
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state.reshape(-1, 16)
    top1, top10, _ = score_predictions(hidden, Head(model), ids.reshape(-1), rows=64, width=7)
    whole = [rows for rows, width in shapes if width == model.config.vocab_size]
    assert len(whole) == -(-len(hidden) // 3) and max(whole) == 3, shapes
    assert not top1.any() and not top10.any()


def _count_bounds(logits, targets, below, above, cap, fused, width):
    """ranks.count_bounds over the given logits in tiles of `width` tokens, shifted by the targets' own logits."""
    tiles = [(start, logits[:, start:start + width]) for start in range(0, logits.shape[1], width)]
    shift = logits.gather(1, targets[:, None])[:, 0].float()
    return ranks.count_bounds(tiles, targets, shift, below, above, cap, lambda rows: logits[rows], fused)


@pytest.mark.parametrize("width", [7, 300], ids=["tiled", "whole"])
@pytest.mark.parametrize("fused", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("cap", [None, 30.0], ids=["uncapped", "soft-capped"])
def test_the_loss_is_the_cross_entropy_even_where_a_logit_is_far_above_the_target(cap, fused, width):
    """The loss is summed relative to the target's own logit: rows where another logit is 100 or 1,000 above it
    (beyond float32's exp) or the target is far on top must still give the cross-entropy, not inf or 0; and the
    counts over ragged tiles of the vocabulary are those over all of it."""
    logits = (torch.randn(6, 300, generator=torch.Generator().manual_seed(1)) * 4).to(torch.bfloat16)
    targets = torch.arange(6) * 7
    logits[1, 3], logits[2, 5], logits[3, targets[3]], logits[4, targets[4]] = 100, 1000, 200, -200
    below, above = torch.full((6,), -0.1), torch.full((6,), 0.1)
    surely, maybe, loss, finite = _count_bounds(logits, targets, below, above, cap, fused, width)
    capped = torch.tanh(logits.double() / cap) * cap if cap else logits.double()
    ref = torch.nn.functional.cross_entropy(capped, targets, reduction="none")
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    assert finite.all()
    assert torch.equal(surely.long(), (logits > above[:, None]).sum(1))
    at_or_above = (logits >= below[:, None]).sum(1) - (logits.gather(1, targets[:, None])[:, 0] >= below).long()
    assert torch.equal(maybe.long(), at_or_above)


@pytest.mark.parametrize("width", [7, 50], ids=["tiled", "whole"])
@pytest.mark.parametrize("fused", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("cap", [None, 30.0], ids=["uncapped", "soft-capped"])
def test_every_kind_of_non_finite_logit_is_flagged(cap, fused, width):
    """Finiteness is read from the row's minimum and its loss (or maximum, under a soft-cap, whose tanh makes
    +inf finite): each of NaN, +inf and -inf, at the target or elsewhere, flags exactly its own row."""
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    targets = torch.arange(8) * 3
    bad = {1: (5, "nan"), 2: (targets[2], "nan"), 3: (7, "inf"), 4: (targets[4], "inf"), 5: (9, "-inf"),
           6: (targets[6], "-inf")}
    for row, (column, value) in bad.items():
        logits[row, column] = float(value)
    below, above = torch.full((8,), -0.1), torch.full((8,), 0.1)
    finite = _count_bounds(logits, targets, below, above, cap, fused, width)[3]
    assert finite.logical_not().nonzero().flatten().tolist() == sorted(bad)


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("arch", ["llama", "roberta"])
def test_non_finite_logits_end_the_evaluation(arch, bad, fused, tiny_model, tiny_batch):
    """NaN or infinite logits have no rank: one clear error that names what was evaluated, not a score."""
    model = tiny_model(arch)
    model.get_output_embeddings().weight[11, 0] = bad  # one token's logit, at every position
    ids, mask = tiny_batch(batch=3, length=12)
    skip = frequent_tokens(ids, mask, 5)
    with pytest.raises(NonFiniteLogits, match="the outputs of tiny on prose are not finite .*learning rate"):
        if arch == "roberta":
            ids, labels, mask = _masked_batch(tiny_batch)
            evaluate_masked(model, ids, labels, mask, 2, skip, fused=fused, what="tiny on prose")
        else:
            evaluate_causal(model, ids, mask, batch_size=2, skip_ids=skip, fused=fused, what="tiny on prose")
