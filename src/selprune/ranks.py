"""Exact ranks of targets among the output layer's logits, at the cost of a model-dtype head.

In bf16 the rounded logits tie often: a plain argmax then picks one of the tied tokens and under-counts
top-1, while counting ties as hits over-counts it. Ranks here are those of float32 logits instead: every
logit is compared with the target's float32 logit, and a logit is re-scored in float32 only where its
model-dtype value falls within the rounding band of that logit, too close to call. A float32 tie with the
target ranks above it: a model whose logits are all equal (collapsed) scores no hit, never a perfect one.
The loss is the cross-entropy of the model-dtype logits, summed in float32. NaN or infinite logits have
no rank: they end the evaluation with NonFiniteLogits.

The logits never exist whole: each block of rows gets them one tile of the vocabulary at a time, every tile
small enough to stay in cache while one compiled pass reduces it, and the tiles' counts and sums are added.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from .arch import text_config
from .errors import UserError
from .fusion import Fused


class NonFiniteLogits(UserError):
    """The output layer gave NaN or infinite logits: accuracy and loss would be meaningless."""

    def __init__(self, what: str = "the model"):
        super().__init__(f"the outputs of {what} are not finite (NaN or infinite logits), so it cannot be evaluated: "
                         "its weights or activations overflowed, e.g. after fine-tuning at too high a learning rate "
                         "(lower it) or in a low-precision dtype (try --dtype float32)")


WHOLE_ROWS = 256  # rows whose logits over the whole vocabulary exist at once (re-scoring, overflowed losses)


def _groups(rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Row indices in groups of at most WHOLE_ROWS (none for none: torch splits an empty tensor into one)."""
    return rows.split(WHOLE_ROWS) if len(rows) else ()


class Head:
    """The output layer with what exact ranks need: its soft-cap and the constants of the rounding band.

    Pruning never touches the head, so a caller that evaluates repeatedly can build one Head once.
    """

    def __init__(self, model):
        self.linear = model.get_output_embeddings()
        self.vocab = self.linear.weight.shape[0]
        self.cap = getattr(text_config(model.config), "final_logit_softcapping", None)
        w = self.linear.weight
        self.eps = torch.finfo(w.dtype).eps
        self.w_norm = torch.linalg.vector_norm(w, dim=1, dtype=torch.float32).max()
        self.b_max = 0.0 if self.linear.bias is None else self.linear.bias.abs().max().float()

    def exact(self, hidden: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor | None = None,
              pairs: int = 2 ** 15) -> torch.Tensor:
        """float32 logits (before any soft-capping) of token ids [P] from hidden states [N, D]: of hidden[rows[p]]
        (hidden[p] without rows), pair by pair.

        Every pair is summed by the same code in the same order, so two tokens with equal weights get equal
        logits. `pairs` at a time bound the memory, however many candidates a row has.
        """
        out = torch.empty(len(ids), dtype=torch.float32, device=hidden.device)
        for start in range(0, len(ids), pairs):
            part = slice(start, start + pairs)
            h = hidden[part] if rows is None else hidden[rows[part]]
            out[part] = (h.float() * self.linear.weight[ids[part]].float()).sum(-1)
        if self.linear.bias is not None:
            out += self.linear.bias[ids].float()
        return out

    def band(self, hidden: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
        """Half-width around an exact logit beyond which a model-dtype logit ranks surely above or below it.

        A model-dtype logit is off its float32 value by at most eps x |logit| (rounding, 2x margin; the
        bias may add one more) + the float32 summation error, at most D 2^-23 |h| max|w| (2x margin).
        """
        slack = hidden.shape[-1] * 2.0 ** -22 * self.w_norm * torch.linalg.vector_norm(hidden, dim=1,
                                                                                       dtype=torch.float32)
        return (self.eps * (exact.abs() + self.b_max) + slack) / (1 - self.eps)

    def logits(self, hidden: torch.Tensor, tokens: slice = slice(None)) -> torch.Tensor:
        """Model-dtype logits [N, tokens] of hidden states [N, D], summed in float32 (before any soft-capping)."""
        bias = None if self.linear.bias is None else self.linear.bias[tokens]
        with _float32_sums(hidden.device):
            return torch.nn.functional.linear(hidden, self.linear.weight[tokens], bias)

    def tiles(self, hidden: torch.Tensor, width: int):
        """(first token id, logits [N, width]) of hidden states [N, D], one tile of the vocabulary after another."""
        for start in range(0, self.vocab, width):
            yield start, self.logits(hidden, slice(start, start + width))


def _capped(logits, cap):
    """The logits as the loss sees them: float32 or wider, soft-capped where the model caps."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.tanh(logits / cap) * cap if cap else logits


def _loss(logits, targets, cap):
    return torch.nn.functional.cross_entropy(_capped(logits, cap), targets, reduction="none").float()


def _reductions(logits, below, above, shift, cap):
    """Per row of one tile, in one read of its logits: the logits surely above the target's, those that may be at
    or above it (target included), the sum of exp(logit - shift) in float32, the minimum, and (soft-capped) the
    maximum. int32 counts, and a given shift instead of the row's maximum (a second read): each cut the compiled
    pass by about a quarter, measured apart on 4,096 positions."""
    surely = (logits > above[:, None]).sum(-1, dtype=torch.int32)
    maybe = (logits >= below[:, None]).sum(-1, dtype=torch.int32)
    sum_exp = torch.exp(_capped(logits, cap) - shift[:, None]).sum(-1)
    return surely, maybe, sum_exp, logits.amin(-1), logits.amax(-1) if cap else None


fused_reductions = Fused(_reductions, "the rank counts")


def count_bounds(tiles, targets, shift, below, above, cap, whole, fused: bool = False):
    """Per row: logits surely above the target's, logits that may be at or above it (target excluded), the
    loss, and whether every logit is finite; from `tiles`, (first token id, logits [N, width]) pairs that cover
    the vocabulary, each read once.

    The loss is log sum exp(logit - shift) + shift - target's logit, with `shift` (float32 [N]) the target's
    exact logit, known before any tile: no pass for the row's maximum is needed. The rare row where some logit
    exceeds the shift by more than float32's exp allows (~88) is recomputed the usual way from its whole row of
    logits, `whole(rows)`. Finiteness comes from reductions already made, not from testing every logit: a NaN
    or -inf logit makes the row's minimum non-finite, and a +inf one the loss, or the maximum where the
    soft-cap's tanh would hide it from the loss.
    """
    reduce = fused_reductions if fused else _reductions
    shift = _capped(shift, cap)
    surely, maybe = torch.zeros_like(targets, dtype=torch.int32), torch.zeros_like(targets, dtype=torch.int32)
    sum_exp, target = torch.zeros_like(shift), torch.zeros_like(shift)  # target: its model-dtype logit, widened
    low, high = torch.full_like(shift, math.inf), torch.full_like(shift, -math.inf)
    for start, logits in tiles:
        inside = (targets >= start) & (targets < start + logits.shape[1])
        mine = logits.gather(1, (targets - start).clamp(0, logits.shape[1] - 1)[:, None])[:, 0]
        target = torch.where(inside, mine.float(), target)
        tile_surely, tile_maybe, tile_sum_exp, tile_low, tile_high = reduce(logits, below, above, shift, cap)
        surely += tile_surely
        maybe += tile_maybe
        sum_exp += tile_sum_exp
        low = torch.minimum(low, tile_low)
        high = high if tile_high is None else torch.maximum(high, tile_high)
    loss = sum_exp.log() + shift - _capped(target, cap)
    for part in _groups(torch.isinf(sum_exp).nonzero()[:, 0]):
        loss[part] = _loss(whole(part), targets[part], cap)
    maybe = maybe.long() - (target >= below).long()
    return surely.long(), maybe, loss, torch.isfinite(low) & torch.isfinite(loss if cap is None else high)


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


def _rescored_rank(head: Head, h, t, below) -> torch.Tensor:
    """Per row, the tokens whose float32 logit is at or above the target's: only those whose model-dtype logit is
    at or above the band's floor may be, and exactly those are re-scored."""
    row, token = (head.logits(h) >= below[:, None]).nonzero().unbind(1)
    # the targets are re-scored in the same call, so that a token equal to its target compares equal
    whose = torch.cat([torch.arange(len(t), device=row.device), row])
    rescored = head.exact(h, torch.cat([t, token]), whose)
    target, candidate = rescored[:len(t)], rescored[len(t):]
    beats = (candidate >= target[row]) & (token != t[row])
    return torch.zeros_like(t).index_add_(0, row, beats.long())


def score_predictions(hidden, head: Head, targets, rows: int = 1024, width: int = 8192, fused: bool = False,
                      what: str = "the model"):
    """Per position: top-1 hit, top-10 hit and loss, with ranks as exact as float32 logits.

    hidden [N, D] is what enters the output layer. The rank counts the other tokens whose float32 logit is
    at or above the target's (a tie does not help the target). Logits outside Head.band of the target's
    exact logit rank surely above or below it; only the few rows where the band decides top-1 or top-10 get
    their in-band candidates re-scored in float32. `fused` compiles the counts. Up to `rows` rows at a time get
    their logits `width` tokens of the vocabulary at a time, so that each tile stays in cache while it is
    counted (docs/PERFORMANCE.md). Raises NonFiniteLogits, naming `what`, if any logit is NaN or infinite.
    """
    top1, top10, loss, finite = [], [], [], []
    for start in range(0, len(targets), rows):
        h, t = hidden[start:start + rows], targets[start:start + rows]
        exact = head.exact(h, t)
        band = head.band(h, exact)
        below, above = exact - band, exact + band
        better, maybe, block_loss, block_finite = count_bounds(head.tiles(h, width), t, exact, below, above,
                                                               head.cap, lambda r: head.logits(h[r]), fused)
        unsure = (((better == 0) & (maybe > 0)) | ((better < 10) & (maybe >= 10))).nonzero()[:, 0]
        for part in _groups(unsure):
            better[part] = _rescored_rank(head, h[part], t[part], below[part])
        top1.append(better == 0)
        top10.append(better < 10)
        loss.append(block_loss)
        finite.append(block_finite)
    if finite and not torch.cat(finite).all():
        raise NonFiniteLogits(what)
    return torch.cat(top1), torch.cat(top10), torch.cat(loss)


def loss_gradient(hidden: torch.Tensor, model, targets: torch.Tensor, rows: int = 256) -> torch.Tensor:
    """d/d hidden [N, D] of the cross-entropy summed over the N positions, where hidden enters the output
    layer; in hidden's dtype.

    One block of logits at a time, in float32 or wider (soft-capped where the model caps), so memory holds
    one block's logits, not all N rows' (the attr scorer: stats.attributions). The weights get no gradient.
    """
    linear = model.get_output_embeddings()
    cap = getattr(text_config(model.config), "final_logit_softcapping", None)
    grads = []
    for start in range(0, len(targets), rows):
        h = hidden[start:start + rows].detach().requires_grad_(True)
        with torch.enable_grad():
            logits = linear(h)
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            grads.append(torch.autograd.grad(_loss(logits, targets[start:start + rows], cap).sum(), h)[0])
    return torch.cat(grads) if grads else torch.zeros_like(hidden)
