"""Next-token (or masked-token) accuracy, loss and perplexity on held-out chunks.

In bf16, rounded logits tie often and a plain argmax under-counts top-1, so the few best candidates
and the target are re-scored in float32 from the final hidden state. The "skip" variants ignore targets among the dataset's most frequent tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from . import distributed
from .batching import for_each_batch

CANDIDATES = 16  # re-scored exactly; top-10 needs a margin for bf16 rounding


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
        mean = lambda a, b: a / b if b else float("nan")  # noqa: E731
        ppl = lambda a, b: math.exp(min(mean(a, b), 700)) if b else float("nan")  # noqa: E731
        return Metrics(int(n), mean(t1, n), mean(t10, n), mean(loss, n), ppl(loss, n),
                       mean(t1s, ns), mean(t10s, ns), mean(losss, ns), ppl(losss, ns))


def frequent_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int) -> torch.Tensor:
    """The k most frequent token ids among real (non-padding) positions."""
    ids = input_ids[attention_mask.bool()]
    if k <= 0 or ids.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    counts = torch.bincount(ids)
    return torch.sort(counts, descending=True, stable=True).indices[:k]


def _softcap(config):
    cfg = getattr(config, "text_config", None) or config
    return getattr(cfg, "final_logit_softcapping", None)


def _exact_logits(hidden: torch.Tensor, head: torch.nn.Linear, ids: torch.Tensor, cap) -> torch.Tensor:
    """float32 logits of the given token ids [N, K] from hidden states [N, D]."""
    w = head.weight[ids].float()  # [N, K, D]
    out = torch.einsum("nd,nkd->nk", hidden.float(), w)
    if head.bias is not None:
        out = out + head.bias[ids].float()
    return torch.tanh(out / cap) * cap if cap else out


def score_predictions(hidden, head, targets, cap, rows: int = 256):
    """Per position: top-1 hit, top-10 hit and loss.

    Ranks come from exact float32 logits of the target and of the best bf16 candidates; the loss is
    a fused cross-entropy on the model-dtype logits (it accumulates in float32). Rows go in blocks
    so the logits of a block stay in cache.
    """
    top1, top10, loss = [], [], []
    for start in range(0, len(targets), rows):
        h, t = hidden[start:start + rows], targets[start:start + rows]
        logits = head(h)
        if cap:
            logits = torch.tanh(logits.float() / cap) * cap
        cand = logits.topk(CANDIDATES, dim=-1).indices
        exact = _exact_logits(h, head, torch.cat([t[:, None], cand], dim=1), cap)
        better = ((exact[:, 1:] > exact[:, :1]) & (cand != t[:, None])).sum(-1)
        top1.append(better == 0)
        top10.append(better < 10)
        loss.append(torch.nn.functional.cross_entropy(logits, t, reduction="none").float())
    return torch.cat(top1), torch.cat(top10), torch.cat(loss)


def _evaluate(model, tensors, batch_size, skip_ids, progress, score_batch) -> tuple[Metrics, int]:
    """Shared by both objectives: shard, batch, back off on OOM, and sum what score_batch returns.

    score_batch(*batch) -> (top1, top10, loss, targets) per predicted position; tensors[-1] is the
    attention mask.
    """
    tensors = distributed.shard(*tensors)
    device = next(model.parameters()).device
    totals = _Totals()

    def one_batch(start, stop):
        batch = [t[start:stop].to(device) for t in tensors]
        top1, top10, loss, targets = score_batch(*batch)
        totals.add(top1, top10, loss, torch.isin(targets, skip_ids.to(targets.device)).to(top1.device))
        if progress is not None:
            progress.update(int(batch[-1].sum()))

    batch_size = for_each_batch(len(tensors[0]), batch_size, one_batch)
    return totals.metrics(), batch_size


@torch.no_grad()
def evaluate_causal(model, input_ids, attention_mask, batch_size, skip_ids, progress=None) -> tuple[Metrics, int]:
    """Next-token prediction at every position whose next token is real."""
    head, cap = model.get_output_embeddings(), _softcap(model.config)
    at_head = head.weight.device  # differs from the input's device when the model is sharded

    def score_batch(ids, mask):
        hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        valid = (mask[:, :-1] * mask[:, 1:]).bool()
        targets = ids[:, 1:][valid].to(at_head)
        top1, top10, loss = score_predictions(hidden[:, :-1][valid.to(hidden.device)].to(at_head), head,
                                              targets, cap)
        return top1, top10, loss, targets

    return _evaluate(model, (input_ids, attention_mask), batch_size, skip_ids, progress, score_batch)


@torch.no_grad()
def evaluate_masked(model, input_ids, labels, attention_mask, batch_size, skip_ids, progress=None):
    """Masked-LM prediction of the (seeded) masked positions; labels are -100 elsewhere."""

    def score_batch(ids, lab, mask):
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        sel = lab != -100
        logits, targets = logits[sel], lab[sel]
        target = logits.gather(1, targets[:, None])
        better = (logits > target).sum(-1)
        return better == 0, better < 10, torch.logsumexp(logits, -1) - target[:, 0], targets

    return _evaluate(model, (input_ids, labels, attention_mask), batch_size, skip_ids, progress, score_batch)
