"""Next-token (or masked-token) accuracy, loss and perplexity on held-out chunks.

Both objectives score only the positions they predict, through head.score_predictions: in bf16 the
rounded logits tie often and a plain argmax under-counts top-1, so ranks are those of float32 logits (a
tie does not help the target; NaN or infinite logits end the evaluation with one line that names `what`).
The "skip" variants ignore targets among the dataset's most frequent tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import partial

import torch

from . import distributed
from .arch import decoder
from .batching import for_each_batch
from .ranks import Head, score_predictions


@dataclass
class Metrics:
    tokens: int
    top1: float
    top10: float
    loss: float
    perplexity: float
    top1_skip: float
    top10_skip: float
    loss_skip: float
    perplexity_skip: float

    def as_dict(self) -> dict:
        return asdict(self)


class _Totals:
    """Running sums for the plain and the skip variants."""

    def __init__(self):
        self.sums = torch.zeros(2, 4, dtype=torch.float64)  # [all, skip] x [n, top1, top10, loss]

    def add(self, top1, top10, loss, skip):
        for row, sel in enumerate((torch.ones_like(skip), ~skip)):
            self.sums[row] += torch.stack([sel.sum(), top1[sel].sum(), top10[sel].sum(),
                                           loss[sel].sum()]).double().cpu()

    def metrics(self) -> Metrics:
        """The means over every position, of every process under data parallelism."""
        (n, t1, t10, loss), (ns, t1s, t10s, losss) = distributed.sum_(self.sums).tolist()
        return Metrics(int(n), _mean(t1, n), _mean(t10, n), _mean(loss, n), _perplexity(loss, n),
                       _mean(t1s, ns), _mean(t10s, ns), _mean(losss, ns), _perplexity(losss, ns))


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


def _evaluate(model, tensors, batch_size, skip_ids, progress, fused, head, predict, what) -> tuple[Metrics, int]:
    """Shared by both objectives: shard, batch, back off on OOM, score and sum.

    predict(*batch) -> (hidden states entering the output layer [N, D], targets [N]) of the predicted
    positions; tensors[-1] is the attention mask.
    """
    tensors = distributed.shard(*tensors)
    device = next(model.parameters()).device
    head = head or Head(model)
    at_head = head.linear.weight.device  # differs from the input's device when the model is sharded
    totals = _Totals()

    def one_batch(start, stop):
        batch = [t[start:stop].to(device) for t in tensors]
        hidden, targets = predict(*batch)
        targets = targets.to(at_head)
        top1, top10, loss = score_predictions(hidden.to(at_head), head, targets, fused=fused, what=what)
        totals.add(top1, top10, loss, torch.isin(targets, skip_ids.to(at_head)))
        if progress is not None:
            progress.update(int(batch[-1].sum()))

    batch_size = for_each_batch(len(tensors[0]), batch_size, one_batch)
    return totals.metrics(), batch_size


@torch.no_grad()
def evaluate_causal(model, input_ids, attention_mask, batch_size, skip_ids, progress=None,
                    fused: bool = False, head: Head | None = None, what: str = "the model") -> tuple[Metrics, int]:
    """Next-token prediction at every position whose next token is real.

    `fused` compiles the rank counts; `head` saves building the Head (its band constants) on every call;
    `what` names the model and data in the error if the logits are not finite.
    """
    return _evaluate(model, (input_ids, attention_mask), batch_size, skip_ids, progress, fused, head,
                     partial(causal_predictions, model), what)


def causal_predictions(model, ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states entering the output layer [N, D], targets [N]) at every position whose next token is real."""
    hidden = decoder(model)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    valid = (mask[:, :-1] * mask[:, 1:]).bool()
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
def evaluate_masked(model, input_ids, labels, attention_mask, batch_size, skip_ids, progress=None,
                    fused: bool = False, head: Head | None = None, what: str = "the model") -> tuple[Metrics, int]:
    """Masked-LM prediction of the (seeded) masked positions, labels -100 elsewhere.

    `fused`, `head` and `what` as in evaluate_causal; only the masked positions ever get logits.
    """
    return _evaluate(model, (input_ids, labels, attention_mask), batch_size, skip_ids, progress, fused, head,
                     partial(masked_predictions, model), what)


def masked_predictions(model, ids, labels, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states entering the output layer [N, D], targets [N]) at the masked positions (labels != -100)."""
    selected = labels != -100
    return _output_layer_input(model, ids, mask, selected), labels[selected]
