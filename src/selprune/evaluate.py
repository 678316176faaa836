"""Next-token (or masked-token) accuracy, loss and perplexity on held-out chunks.

Both objectives score only the positions they predict, through head.score_predictions: in bf16 the
rounded logits tie often and a plain argmax under-counts top-1, so ranks are those of float32 logits (a
tie does not help the target; NaN or infinite logits end the evaluation with one line that names `what`).
The "skip" variants ignore targets among the dataset's most frequent tokens.

Tokens within a chunk are not independent, so the precision of top-1 is measured across chunks: top1_se
is the ratio estimator's standard error over the chunks read. With a stated `precision` (points), the
chunks are read in order only until top1_se is within it (docs/METHOD.md, "Evaluation to a stated
precision"). A drop compares two evaluations of the same chunks: drop_standard_error pairs them chunk by chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from functools import partial

import torch

from . import distributed
from .arch import decoder
from .batching import for_each_batch
from .ranks import Head, score_predictions

MIN_CHUNKS = 8  # the fewest chunks (that predict anything) whose spread a stated precision may stop on


@dataclass
class Metrics:
    tokens: int
    top1: float
    top1_se: float  # standard error of top1 across the chunks read (a fraction, like top1); NaN under 2 chunks
    top10: float
    loss: float
    perplexity: float
    top1_skip: float
    top10_skip: float
    loss_skip: float
    perplexity_skip: float
    chunks: int  # how many of the chunks given were read: all, or the first ones a stated precision needed
    # [chunks read, (positions, top-1 hits)]: what pairs a later evaluation of the same chunks with this one
    per_chunk: torch.Tensor = field(repr=False, compare=False)

    def as_dict(self) -> dict:
        """The numbers a metrics row holds (per_chunk is not one)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "per_chunk"}


def top1_standard_error(counts: torch.Tensor) -> float:
    """The standard error of top-1 = sum(hits) / sum(positions) over chunks, counts [chunks, (positions, hits)],
    from the chunks that predict something (ratio_standard_error). NaN with fewer than 2 such chunks."""
    predicting = counts[counts[:, 0] > 0]
    return ratio_standard_error(predicting[:, 1], predicting[:, 0])


def ratio_standard_error(num: torch.Tensor, den: torch.Tensor) -> float:
    """The standard error of r = sum(num) / sum(den) over k chunks, the chunks sampled and each chunk's pair of
    sums kept together: the ratio estimator's (first-order) variance, SE^2 = k / (k - 1) x sum_i (num_i - r
    den_i)^2 / sum(den)^2. Top-1 is hits over positions; the relearning's recovered share is regained hits over
    the hits the unpruned model has in excess (relearn/results.py). NaN with fewer than 2 chunks or sum(den) 0."""
    return ratio_difference_standard_error(num, den, torch.zeros_like(num), torch.ones_like(den))


def ratio_difference_standard_error(num: torch.Tensor, den: torch.Tensor, num2: torch.Tensor,
                                    den2: torch.Tensor) -> float:
    """The standard error of sum(num) / sum(den) - sum(num2) / sum(den2), all four summed over the same k chunks
    (two shares measured on the same chunks): each chunk's first-order influence on the difference, (num_i - r
    den_i) / sum(den) - (num2_i - r2 den2_i) / sum(den2), and SE^2 = k / (k - 1) x the sum of their squares.
    What the two ratios share chunk by chunk cancels. NaN with fewer than 2 chunks or a denominator summing to 0."""
    num, den, num2, den2 = (x.double() for x in (num, den, num2, den2))
    k, total, total2 = len(den), den.sum(), den2.sum()
    if k < 2 or total == 0 or total2 == 0:
        return float("nan")
    influence = (num - num.sum() / total * den) / total - (num2 - num2.sum() / total2 * den2) / total2
    return float((k / (k - 1) * (influence ** 2).sum()).sqrt())


def drop_standard_error(base: torch.Tensor, now: torch.Tensor) -> float:
    """The standard error of a top-1 drop between two evaluations of the same chunks, each [chunks, (positions,
    hits)]: the ratio estimator's over the chunks' differences of hits. Pairing cancels what both share (a chunk
    that was hard stays hard), but not what pruning changes: once the forget top-1 has collapsed, the drop keeps
    all of the base's spread, and its error can exceed either top-1's (docs/METHOD.md)."""
    if not torch.equal(base[:, 0], now[:, 0]):
        raise ValueError("a drop pairs evaluations of the same chunks: their positions differ")
    return top1_standard_error(torch.stack([now[:, 0], base[:, 1] - now[:, 1]], 1))


def precise_prefix(counts: torch.Tensor, start: int, precision: float) -> int | None:
    """The fewest chunks, more than `start`, whose top-1 standard error is within `precision` points, from at
    least MIN_CHUNKS chunks that predict something; None if no prefix of `counts` is."""
    for k in range(start + 1, len(counts) + 1):
        if (counts[:k, 0] > 0).sum() >= MIN_CHUNKS and 100 * top1_standard_error(counts[:k]) <= precision:
            return k
    return None


class _Totals:
    """Running sums for the plain and the skip variants, and the positions and top-1 hits of each chunk."""

    def __init__(self, chunks: int):
        self.sums = torch.zeros(2, 4, dtype=torch.float64)  # [all, skip] x [n, top1, top10, loss]
        self.per_chunk = torch.zeros(chunks, 2, dtype=torch.long)  # this process's chunks: [positions, hits]

    def add(self, top1, top10, loss, skip, chunks: slice, positions):
        """One batch: per-position results, and `positions` [B]: how many of them each of its chunks has."""
        for row, sel in enumerate((torch.ones_like(skip), ~skip)):
            self.sums[row] += torch.stack([sel.sum(), top1[sel].sum(), top10[sel].sum(),
                                           loss[sel].sum()]).double().cpu()
        owner = torch.repeat_interleave(torch.arange(len(positions), device=positions.device), positions)
        hits = torch.zeros_like(positions).index_add_(0, owner, top1.long().to(positions.device))
        self.per_chunk[chunks] = torch.stack([positions, hits], 1).cpu()

    def counts(self, chunks: int) -> torch.Tensor:
        """[chunks, (positions, hits)] of the first `chunks` chunks of every process (process r reads every
        world-th chunk from the r-th: distributed.shard)."""
        counts = torch.zeros(chunks, 2, dtype=torch.long)
        mine = counts[distributed.rank()::distributed.world()]
        mine.copy_(self.per_chunk[:len(mine)])
        return distributed.sum_(counts)

    def metrics(self, chunks: int) -> Metrics:
        """The means over every position of the first `chunks` chunks (those read), of every process."""
        (n, t1, t10, loss), (ns, t1s, t10s, losss) = distributed.sum_(self.sums).tolist()
        counts = self.counts(chunks)
        return Metrics(int(n), _mean(t1, n), top1_standard_error(counts), _mean(t10, n),
                       _mean(loss, n), _perplexity(loss, n), _mean(t1s, ns), _mean(t10s, ns), _mean(losss, ns),
                       _perplexity(losss, ns), chunks, counts)


def top1_text(row: dict) -> str:
    """A metrics row's top-1, with its standard error in points where it has one, as console lines give it:
    "0.626 ±0.8"."""
    se = 100 * row["top1_se"]
    return f"{row['top1']:.3f}" + (f" ±{se:.1f}" if math.isfinite(se) else "")


def _mean(total: float, n: float) -> float:
    return total / n if n else float("nan")


def _perplexity(loss: float, n: float) -> float:
    """exp of the mean loss, kept finite (a collapsed model's loss can be huge)."""
    return math.exp(min(_mean(loss, n), 700)) if n else float("nan")


def frequent_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int) -> torch.Tensor:
    """The k most frequent token ids among real (non-padding) positions."""
    ids = input_ids[attention_mask.bool()]
    if k <= 0 or ids.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    counts = torch.bincount(ids)
    return torch.sort(counts, descending=True, stable=True).indices[:k]


def _share(chunks: int) -> int:
    """How many of the first `chunks` chunks of all processes this process reads (distributed.shard)."""
    return len(range(distributed.rank(), chunks, distributed.world()))


def _block(batch_size: int) -> int:
    """Chunks of all processes read between two looks at the precision: a batch each, as many on every process
    (the mean of their batch sizes), so that all of them stop after the same block."""
    total = distributed.sum_(torch.tensor([batch_size], dtype=torch.long))
    return max(1, int(total) // distributed.world()) * distributed.world()


def _evaluate(model, tensors, batch_size, skip_ids, progress, fused, head, predict, positions, what,
              precision) -> tuple[Metrics, int]:
    """Shared by both objectives: shard, batch, back off on OOM, score and sum; with a stated `precision`
    (points), only the first chunks that precise_prefix says are enough.

    predict(*batch) -> (hidden states entering the output layer [N, D], targets [N]) of the predicted
    positions, positions(*batch) -> [B, ...] bool: which positions those are, chunk by chunk; tensors[-1] is
    the attention mask.
    """
    chunks, mine = len(tensors[0]), distributed.shard(*tensors)
    device = next(model.parameters()).device
    head = head or Head(model)
    at_head = head.linear.weight.device  # differs from the input's device when the model is sharded
    totals = _Totals(len(mine[0]))

    def one_batch(start, stop):
        batch = [t[start:stop].to(device) for t in mine]
        hidden, targets = predict(*batch)
        targets = targets.to(at_head)
        top1, top10, loss = score_predictions(hidden.to(at_head), head, targets, fused=fused, what=what)
        totals.add(top1, top10, loss, torch.isin(targets, skip_ids.to(at_head)), slice(start, stop),
                   positions(*batch).sum(1))
        if progress is not None:
            progress.update(int(batch[-1].sum()))

    def read(start, stop):
        """Chunks [start, stop) of all processes: this process's share of them, in batches."""
        nonlocal batch_size
        first = _share(start)
        batch_size = for_each_batch(_share(stop) - first, batch_size, lambda a, b: one_batch(first + a, first + b))

    if not precision:
        read(0, chunks)
        return totals.metrics(chunks), batch_size
    block = _block(batch_size)
    for start in range(0, chunks, block):
        stop = min(chunks, start + block)
        before = totals.sums.clone()
        read(start, stop)
        enough = precise_prefix(totals.counts(stop), start, precision)
        if enough is not None:
            if enough < stop:  # the sums of exactly that prefix, batched as a later evaluation of it batches
                totals.sums = before
                read(start, enough)
            return totals.metrics(enough), batch_size
    return totals.metrics(chunks), batch_size


@torch.no_grad()
def evaluate_causal(model, input_ids, attention_mask, batch_size, skip_ids, progress=None, fused: bool = False,
                    head: Head | None = None, what: str = "the model", precision: float = 0.0) -> tuple[Metrics, int]:
    """Next-token prediction at every position whose next token is real.

    `fused` compiles the rank counts; `head` saves building the Head (its band constants) on every call;
    `what` names the model and data in the error if the logits are not finite; `precision` > 0 (points of
    top-1) reads the chunks only until top1_se is within it (Metrics.chunks says how many).
    """
    return _evaluate(model, (input_ids, attention_mask), batch_size, skip_ids, progress, fused, head,
                     partial(causal_predictions, model), causal_positions, what, precision)


def causal_positions(ids, mask) -> torch.Tensor:
    """[B, L - 1]: the positions whose next token is real, which causal evaluation predicts."""
    return (mask[:, :-1] * mask[:, 1:]).bool()


def causal_predictions(model, ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states entering the output layer [N, D], targets [N]) at every position whose next token is real."""
    hidden = decoder(model)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    valid = causal_positions(ids, mask)
    return hidden[:, :-1][valid.to(hidden.device)], ids[:, 1:][valid]


def _output_layer_input(model, ids, mask, selected) -> torch.Tensor:
    """The hidden states entering the output layer at the selected positions, [N, D].

    Masked LMs transform the last hidden state (dense + norm) before their output layer, so the rows are
    taken at that layer's input. The layer itself is handed none of them: only the selected rows get
    logits, later, in score_predictions.
    """
    rows = []

    def take(layer, args):
        rows.append(args[0][selected.to(args[0].device)])
        return (rows[0][:0], *args[1:])

    handle = model.get_output_embeddings().register_forward_pre_hook(take)
    try:
        model(input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    return rows[0]


@torch.no_grad()
def evaluate_masked(model, input_ids, labels, attention_mask, batch_size, skip_ids, progress=None, fused: bool = False,
                    head: Head | None = None, what: str = "the model", precision: float = 0.0) -> tuple[Metrics, int]:
    """Masked-LM prediction of the (seeded) masked positions, labels -100 elsewhere.

    `fused`, `head`, `what` and `precision` as in evaluate_causal; only the masked positions ever get logits.
    """
    return _evaluate(model, (input_ids, labels, attention_mask), batch_size, skip_ids, progress, fused, head,
                     partial(masked_predictions, model), masked_positions, what, precision)


def masked_positions(ids, labels, mask) -> torch.Tensor:
    """[B, L]: the masked positions (labels != -100), which masked-LM evaluation predicts."""
    return labels != -100


def masked_predictions(model, ids, labels, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states entering the output layer [N, D], targets [N]) at the masked positions (labels != -100)."""
    selected = masked_positions(ids, labels, mask)
    return _output_layer_input(model, ids, mask, selected), labels[selected]
