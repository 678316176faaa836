"""Next-token (or masked-token) accuracy, loss and perplexity on held-out chunks.

In bf16, rounded logits tie often and a plain argmax under-counts top-1, so ranks are decided against
the target's float32 logit, re-scoring in float32 only the logits too close to call (score_predictions).
The "skip" variants ignore targets among the dataset's most frequent tokens.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from . import distributed
from .arch import text_config
from .batching import for_each_batch
from .fusion import Fused

CANDIDATES = 16  # the uncompiled rank bounds look at this many best logits per position


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


class Head:
    """The output layer with what exact ranks need: its soft-cap and the constants of the rounding band."""

    def __init__(self, model):
        self.linear = model.get_output_embeddings()
        self.cap = getattr(text_config(model.config), "final_logit_softcapping", None)
        w = self.linear.weight
        self.eps = torch.finfo(w.dtype).eps
        self.w_norm = torch.linalg.vector_norm(w, dim=1, dtype=torch.float32).max()
        self.b_max = 0.0 if self.linear.bias is None else self.linear.bias.abs().max().float()

    def exact(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """float32 logits (before any soft-capping) of token ids [N, K] from hidden states [N, D]."""
        out = torch.einsum("nd,nkd->nk", hidden.float(), self.linear.weight[ids].float())
        if self.linear.bias is not None:
            out = out + self.linear.bias[ids].float()
        return out

    def band(self, hidden: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
        """Half-width around an exact logit beyond which a model-dtype logit ranks surely above or below it.

        A model-dtype logit is off its float32 value by at most eps x |logit| (rounding, 2x margin; the
        bias may add one more) + the float32 summation error, at most D 2^-23 |h| max|w| (2x margin).
        """
        slack = hidden.shape[-1] * 2.0 ** -22 * self.w_norm * torch.linalg.vector_norm(hidden, dim=1,
                                                                                       dtype=torch.float32)
        return (self.eps * (exact.abs() + self.b_max) + slack) / (1 - self.eps)


def _loss(logits, targets, cap):
    if cap:
        logits = torch.tanh(logits.float() / cap) * cap
    return torch.nn.functional.cross_entropy(logits, targets, reduction="none").float()


def _count_bounds(logits, targets, below, above, cap):
    """Per row: logits surely above the target's, logits that may be (target excluded), and the loss.

    One read of the block's logits once compiled; eager, the comparisons are slow on a CPU.
    """
    surely = (logits > above[:, None]).sum(-1)
    maybe = (logits >= below[:, None]).sum(-1) - (logits.gather(1, targets[:, None])[:, 0] >= below).long()
    return surely, maybe, _loss(logits, targets, cap)


def _candidate_bounds(logits, targets, below, above, cap):
    """The same bounds from the top candidates only (fast eager); `maybe` is the vocabulary size when
    the band reaches past the last candidate."""
    values, ids = logits.topk(CANDIDATES, dim=-1)
    surely = (values > above[:, None]).sum(-1)
    maybe = ((values >= below[:, None]) & (ids != targets[:, None])).sum(-1)
    maybe[values[:, -1] >= below] = logits.shape[-1]
    return surely, maybe, _loss(logits, targets, cap)


fused_count_bounds = Fused(_count_bounds, "the evaluation")


@contextmanager
def _float32_sums(device: torch.device):
    """cuBLAS may add bf16/fp16 products in reduced precision (split-K); the rank band assumes float32 sums."""
    if device.type != "cuda":
        yield
        return
    m = torch.backends.cuda.matmul
    saved = m.allow_bf16_reduced_precision_reduction, m.allow_fp16_reduced_precision_reduction
    m.allow_bf16_reduced_precision_reduction = m.allow_fp16_reduced_precision_reduction = False
    try:
        yield
    finally:
        m.allow_bf16_reduced_precision_reduction, m.allow_fp16_reduced_precision_reduction = saved


def score_predictions(hidden, head: Head, targets, rows: int = 256, fused: bool = False):
    """Per position: top-1 hit, top-10 hit and loss, with ranks as exact as float32 logits.

    The head runs in the model's dtype; logits outside Head.band of the target's exact float32 logit rank
    surely above or below it, and only the few rows where the band decides top-1 or top-10 get their
    in-band candidates re-scored in float32. The loss is a cross-entropy on the model-dtype logits (it
    accumulates in float32). Rows go in blocks so that a block's logits stay in cache.
    """
    bounds = fused_count_bounds if fused else _candidate_bounds
    top1, top10, loss = [], [], []
    for start in range(0, len(targets), rows):
        h, t = hidden[start:start + rows], targets[start:start + rows]
        with _float32_sums(h.device):
            logits = head.linear(h)
        exact = head.exact(h, t[:, None])[:, 0]
        band = head.band(h, exact)
        below, above = exact - band, exact + band
        better, maybe, block_loss = bounds(logits, t, below, above, head.cap)
        unsure = ((better == 0) & (maybe > 0)) | ((better < 10) & (maybe >= 10))
        if unsure.any():  # the logits at or above the band's floor are the row's best: re-score them exactly
            r = unsure.nonzero()[:, 0]
            near = logits[r]
            cand = near.topk(int((near >= below[r, None]).sum(-1).max()), dim=-1).indices
            better[r] = ((head.exact(h[r], cand) > exact[r, None]) & (cand != t[r, None])).sum(-1)
        top1.append(better == 0)
        top10.append(better < 10)
        loss.append(block_loss)
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
def evaluate_causal(model, input_ids, attention_mask, batch_size, skip_ids, progress=None,
                    fused: bool = False, head: Head | None = None) -> tuple[Metrics, int]:
    """Next-token prediction at every position whose next token is real; `fused` compiles the rank counts.

    Pruning never touches the head, so a caller that evaluates repeatedly can pass one Head built once.
    """
    head = head or Head(model)
    at_head = head.linear.weight.device  # differs from the input's device when the model is sharded

    def score_batch(ids, mask):
        hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        valid = (mask[:, :-1] * mask[:, 1:]).bool()
        targets = ids[:, 1:][valid].to(at_head)
        top1, top10, loss = score_predictions(hidden[:, :-1][valid.to(hidden.device)].to(at_head), head,
                                              targets, fused=fused)
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
