"""Streaming per-neuron activation statistics, collected by hooks during batched forward passes.

Per activation dim: count, sum z, sum |z|, sum z^2 and count(z > 0), over every non-padding
position; and, for the attr scorer, sum |z dL/dz|, which takes a backward pass (`attributions`).
Each batch is reduced on the model's device in float32 and added to float64 totals, so memory is
O(neurons), never O(tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import distributed
from .arch import NeuronGroup, architecture_of, decoder
from .batching import for_each_batch
from .evaluate import causal_predictions, masked_predictions
from .fusion import Fused
from .ranks import loss_gradient

MOMENTS = ("sum", "sum_abs", "sum_sq", "positive")  # of the activations alone: a forward pass
SUMS = (*MOMENTS, "attribution")  # attribution = sum |z dL/dz|: a forward and a backward pass


@dataclass
class Stats:
    """Float64 sums per activation dim [layers, width]; a moment no scorer asked for stays None."""

    count: float  # positions seen (the same for every neuron)
    sum: torch.Tensor | None = None
    sum_abs: torch.Tensor | None = None
    sum_sq: torch.Tensor | None = None
    positive: torch.Tensor | None = None
    attribution: torch.Tensor | None = None

    @classmethod
    def zeros(cls, layers: int, width: int, moments=MOMENTS, device=None) -> Stats:
        return cls(0.0, **{m: torch.zeros(layers, width, dtype=torch.float64, device=device) for m in moments})

    def moments(self) -> dict[str, torch.Tensor]:
        return {m: getattr(self, m) for m in SUMS if getattr(self, m) is not None}

    def add(self, other: Stats) -> None:
        self.count += other.count
        for m, value in other.moments().items():
            mine = getattr(self, m)
            if mine is None:
                raise ValueError(f"cannot add moment {m!r} to statistics that lack it")
            mine.add_(value)

    def to(self, device) -> Stats:
        return Stats(self.count, **{m: v.to(device) for m, v in self.moments().items()})

    def sum_across_processes(self) -> Stats:
        """Under data parallelism each process saw a share of the chunks: add them all up."""
        count = distributed.sum_(torch.tensor([self.count], dtype=torch.float64))
        return Stats(float(count), **{m: distributed.sum_(v) for m, v in self.moments().items()})


def moment_sums(z: torch.Tensor, moments=MOMENTS) -> dict[str, torch.Tensor]:
    """Sums over positions of activations [positions, width], accumulated in float32."""
    out = {}
    if "sum" in moments:
        out["sum"] = z.sum(0, dtype=torch.float32)
    if "sum_abs" in moments:
        out["sum_abs"] = z.abs().sum(0, dtype=torch.float32)
    if "sum_sq" in moments:
        out["sum_sq"] = z.to(torch.float32, copy=True).square_().sum(0)  # never in place on z
    if "positive" in moments:
        out["positive"] = (z > 0).sum(0, dtype=torch.float32)
    return out


# One pass per layer instead of one per moment (bench/: hooks cost ~5% of a forward, not ~30%).
fused_moment_sums = Fused(moment_sums, "the statistics")


def reduce_batch(z: torch.Tensor, keep: torch.Tensor | None, moments=MOMENTS,
                 fused: bool = False) -> dict[str, torch.Tensor]:
    """Moment sums of one batch of activations [..., width] over the kept (non-padding) positions."""
    z = z.reshape(-1, z.shape[-1])
    if keep is not None:
        z = z[keep]
    return (fused_moment_sums if fused else moment_sums)(z, tuple(moments))


@torch.no_grad()
def collect(model, neurons: NeuronGroup, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            batch_size: int, progress=None, moments=MOMENTS, fused: bool = False,
            labels: torch.Tensor | None = None) -> tuple[Stats, int]:
    """Statistics of one dataset's chunks.

    `moments` (of SUMS) limits the work to what the scorer needs (its `sums`); by default the four activation
    moments, for which the base model runs alone (no language-model head). "attribution" runs the whole
    model and a backward pass per batch (`attributions`); `labels` are then a masked LM's targets (-100
    where nothing is predicted), while a causal LM predicts each next token.
    `fused` compiles the reductions with torch.compile (worth it for long runs; first use ~30 s).

    Under data parallelism each process reads its share of the chunks and gets the total.
    Returns the statistics (on CPU) and the batch size that worked.
    """
    tensors = distributed.shard(input_ids, attention_mask, *(() if labels is None else (labels,)))
    device = next(model.parameters()).device
    total = Stats.zeros(neurons.layers, neurons.width, moments, device)
    activation = tuple(m for m in moments if m in MOMENTS)
    attribute = "attribution" in moments
    pending: dict[int, dict] = {}
    keep: list = [None]

    def reduce(t: torch.Tensor, which) -> dict[str, torch.Tensor]:  # a sharded model's layers may sit elsewhere
        sums = reduce_batch(t, keep[0] if keep[0] is None else keep[0].to(t.device), which, fused) if which else {}
        return {m: v.to(device) for m, v in sums.items()}

    def observe(layer, z):
        pending[layer] = reduce(z, activation)

    def one_batch(start, stop):
        pending.clear()
        ids, mask, *lab = (t[start:stop].to(device, non_blocking=True) for t in tensors)
        flat = mask.reshape(-1).bool()
        positions = int(flat.sum())
        keep[0] = None if positions == flat.numel() else flat
        if not attribute:
            body(input_ids=ids, attention_mask=mask, use_cache=False)
        else:
            zg = attributions(model, neurons, ids, mask, *lab, observe=observe)
            for layer, g in enumerate(zg):
                pending[layer]["attribution"] = reduce(g, ("sum_abs",))["sum_abs"]  # sum |z dL/dz|
        total.add(Stats(float(positions), **{m: torch.stack([pending[layer][m] for layer in range(neurons.layers)])
                                             .double() for m in moments}))
        if progress is not None:
            progress.update(positions)

    body = _without_head(model)
    handles = [] if attribute else neurons.add_hooks(observe)  # attributions hooks each batch itself
    try:
        batch_size = for_each_batch(len(tensors[0]), batch_size, one_batch)
    finally:
        for h in handles:
            h.remove()
    return total.to("cpu").sum_across_processes(), batch_size


def _without_head(model):
    """The model up to its output layer, which activation statistics never need: arch.decoder for a causal LM
    (model.base_model can be a multimodal wrapper's whole model), the encoder model of a masked LM."""
    return model.base_model if architecture_of(model.config).masked_lm else decoder(model)


def attributions(model, neurons: NeuronGroup, ids: torch.Tensor, mask: torch.Tensor,
                 labels: torch.Tensor | None = None, observe=None) -> list[torch.Tensor]:
    """z x dL/dz at every position of one batch, per layer [batch, length, width].

    L is the cross-entropy summed over the predicted positions (each next token, or a masked LM's
    labels), so z dL/dz at a position is the first-order estimate of how much L falls when that z is set
    to 0 there. Each block's z is multiplied by a gate of ones, and dL/dgate = z dL/dz: nothing is
    detached, so the gradient keeps every path through the later layers, and the parameters get none
    (autograd.grad). observe(layer, z), if given, sees the activations on the way.
    """
    gates: dict[int, torch.Tensor] = {}

    def gate(layer, z):
        if observe is not None:
            observe(layer, z.detach())
        gates[layer] = z.new_ones(()).expand(z.shape).requires_grad_()  # one stored number, a full-size gradient
        return z * gates[layer]

    handles = neurons.add_hooks(gate, edit=True)
    try:
        with torch.enable_grad():
            hidden, targets = (causal_predictions(model, ids, mask) if labels is None
                               else masked_predictions(model, ids, labels, mask))
            hidden = hidden.to(model.get_output_embeddings().weight.device)  # a sharded model's head is elsewhere
            grad = loss_gradient(hidden, model, targets.to(hidden.device))
            return list(torch.autograd.grad(hidden, [gates[layer] for layer in range(neurons.layers)], grad))
    finally:
        for h in handles:
            h.remove()
