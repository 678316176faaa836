"""Streaming per-neuron activation statistics, collected by hooks during batched forward passes.

Per activation dim: count, sum z, sum |z|, sum z^2 and count(z > 0), over every non-padding
position. Each batch is reduced on the model's device in float32 and added to float64 totals,
so memory is O(neurons), never O(tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .arch import NeuronGroup
from .batching import for_each_batch

MOMENTS = ("sum", "sum_abs", "sum_sq", "positive")


@dataclass
class Stats:
    count: float  # positions seen (the same for every neuron)
    sum: torch.Tensor  # [layers, width] float64
    sum_abs: torch.Tensor
    sum_sq: torch.Tensor
    positive: torch.Tensor

    @classmethod
    def zeros(cls, layers: int, width: int, device=None) -> Stats:
        z = lambda: torch.zeros(layers, width, dtype=torch.float64, device=device)  # noqa: E731
        return cls(0.0, z(), z(), z(), z())

    def add(self, other: Stats) -> None:
        self.count += other.count
        for m in MOMENTS:
            getattr(self, m).add_(getattr(other, m))

    def to(self, device) -> Stats:
        return Stats(self.count, *(getattr(self, m).to(device) for m in MOMENTS))


def reduce_batch(z: torch.Tensor, keep: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """The four sums of one batch of activations [..., width] over kept positions, in float32."""
    z = z.reshape(-1, z.shape[-1])
    if keep is not None:
        z = z[keep]
    z = z.float()
    return z.sum(0), z.abs().sum(0), z.square().sum(0), (z > 0).sum(0, dtype=torch.float32)


@torch.no_grad()
def collect(model, view: NeuronGroup, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            batch_size: int, progress=None) -> tuple[Stats, int]:
    """Statistics of one dataset's chunks; runs the base model only (no language-model head).

    Returns the statistics (on CPU) and the batch size that worked.
    """
    device = next(model.parameters()).device
    total = Stats.zeros(view.layers, view.width, device)
    pending: dict[int, tuple] = {}
    keep: list = [None]

    def hook(layer, z):
        pending[layer] = reduce_batch(z, keep[0])

    def one_batch(start, stop):
        pending.clear()
        ids = input_ids[start:stop].to(device, non_blocking=True)
        mask = attention_mask[start:stop].to(device, non_blocking=True)
        flat = mask.reshape(-1).bool()
        keep[0] = None if bool(flat.all()) else flat
        model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
        batch = Stats(float(flat.sum()), *(torch.stack([pending[l][i] for l in range(view.layers)]).double()
                                           for i in range(len(MOMENTS))))
        total.add(batch)
        if progress is not None:
            progress.update(int(flat.sum()))

    handles = view.add_hooks(hook)
    try:
        batch_size = for_each_batch(len(input_ids), batch_size, one_batch)
    finally:
        for h in handles:
            h.remove()
    return total.to("cpu"), batch_size
