"""Streaming per-neuron activation statistics, collected by hooks during batched forward passes.

Per activation dim: count, sum z, sum |z|, sum z^2 and count(z > 0), over every non-padding
position. Each batch is reduced on the model's device in float32 and added to float64 totals,
so memory is O(neurons), never O(tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import distributed
from .arch import NeuronGroup
from .batching import for_each_batch
from .fusion import Fused

MOMENTS = ("sum", "sum_abs", "sum_sq", "positive")
NEEDS = {"freq": ("positive",), "abs": ("sum_abs",), "rms": ("sum_sq",), "std": ("sum", "sum_sq")}


@dataclass
class Stats:
    """Float64 sums per activation dim [layers, width]; a moment no scorer asked for stays None."""

    count: float  # positions seen (the same for every neuron)
    sum: torch.Tensor | None = None
    sum_abs: torch.Tensor | None = None
    sum_sq: torch.Tensor | None = None
    positive: torch.Tensor | None = None

    @classmethod
    def zeros(cls, layers: int, width: int, moments=MOMENTS, device=None) -> Stats:
        return cls(0.0, **{m: torch.zeros(layers, width, dtype=torch.float64, device=device) for m in moments})

    def moments(self) -> dict[str, torch.Tensor]:
        return {m: getattr(self, m) for m in MOMENTS if getattr(self, m) is not None}

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
            batch_size: int, progress=None, moments=MOMENTS, fused: bool = False) -> tuple[Stats, int]:
    """Statistics of one dataset's chunks; runs the base model only (no language-model head).

    `moments` limits the work to what the scorer needs (NEEDS); by default all are collected.
    `fused` compiles the reductions with torch.compile (worth it for long runs; first use ~30 s).

    Under data parallelism each process reads its share of the chunks and gets the total.
    Returns the statistics (on CPU) and the batch size that worked.
    """
    input_ids, attention_mask = distributed.shard(input_ids, attention_mask)
    device = next(model.parameters()).device
    total = Stats.zeros(neurons.layers, neurons.width, moments, device)
    pending: dict[int, dict] = {}
    keep: list = [None]

    def hook(layer, z):  # layers of a sharded model (device_map) may sit on other devices
        sums = reduce_batch(z, keep[0] if keep[0] is None else keep[0].to(z.device), moments, fused)
        pending[layer] = {m: v.to(device) for m, v in sums.items()}

    def one_batch(start, stop):
        pending.clear()
        ids = input_ids[start:stop].to(device, non_blocking=True)
        mask = attention_mask[start:stop].to(device, non_blocking=True)
        flat = mask.reshape(-1).bool()
        positions = int(flat.sum())
        keep[0] = None if positions == flat.numel() else flat
        model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
        total.add(Stats(float(positions), **{m: torch.stack([pending[layer][m] for layer in range(neurons.layers)])
                                             .double() for m in moments}))
        if progress is not None:
            progress.update(positions)

    handles = neurons.add_hooks(hook)
    try:
        batch_size = for_each_batch(len(input_ids), batch_size, one_batch)
    finally:
        for h in handles:
            h.remove()
    return total.to("cpu").sum_across_processes(), batch_size
