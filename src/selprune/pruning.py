"""Pruning: zeroing units in the weights, and the record of what each step pruned.

Zeroing is exact: the pruned model equals the unpruned one with those activations masked to 0
(tests/test_arch.py checks it for every architecture and group).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .arch import NeuronGroup


@dataclass
class PrunedRecord:
    """Which units of a group were pruned at each step; the cumulative mask is derived from it."""

    group: str
    layers: int
    units_per_layer: int
    steps: list[dict] = field(default_factory=list)  # {"step": k, "pruned": {"layer": [units]}}

    @classmethod
    def for_group(cls, neurons: NeuronGroup) -> PrunedRecord:
        return cls(neurons.group, neurons.layers, neurons.units_per_layer)

    def mask(self, steps=None) -> torch.Tensor:
        """[layers, units] True where pruned, by all steps or by the given ones."""
        mask = torch.zeros(self.layers, self.units_per_layer, dtype=torch.bool)
        for entry in self.steps:
            if steps is None or entry["step"] in steps:
                for layer, units in entry["pruned"].items():
                    mask[int(layer), torch.as_tensor(units, dtype=torch.long)] = True
        return mask

    def mask_of(self, step: int) -> torch.Tensor:
        return self.mask((step,))

    def add(self, step: int, new: torch.Tensor) -> None:
        pruned = {str(layer): row.nonzero().flatten().tolist() for layer, row in enumerate(new) if row.any()}
        self.steps.append({"step": step, "pruned": pruned})

    def truncate(self, last_step: int) -> None:
        self.steps = [s for s in self.steps if s["step"] <= last_step]

    def to_json(self) -> dict:
        return {"group": self.group, "layers": self.layers, "units_per_layer": self.units_per_layer,
                "steps": self.steps}

    @classmethod
    def from_json(cls, data: dict) -> PrunedRecord:
        """Raises ValueError (or KeyError / TypeError) on anything that is not a record's shape."""
        layers, units = int(data["layers"]), int(data["units_per_layer"])
        steps = list(data["steps"])
        for entry in steps:
            if not isinstance(entry["step"], int) or entry["step"] < 1 or not isinstance(entry["pruned"], dict):
                raise ValueError(f"step entry {entry!r} is not {{'step': int, 'pruned': {{layer: [units]}}}}")
            for layer, ids in entry["pruned"].items():
                if not (layer.isdigit() and int(layer) < layers and all(
                        isinstance(u, int) and 0 <= u < units for u in ids)):
                    raise ValueError(f"step {entry['step']}: layer {layer} or its units are out of range")
        return cls(str(data["group"]), layers, units, steps)


def step_budget(per_step: int, total: int, step: int) -> int:
    """Units that step `step` prunes: per_step, rounded from the fraction, until the last step, which takes
    what is left if the rounding ran over (50 steps of 2% of 46,080 units: 49 x 922, then 902)."""
    return max(0, min(per_step, total - per_step * (step - 1)))


def pruned_parts(neurons: NeuronGroup, mask: torch.Tensor) -> Iterator[tuple[torch.Tensor, int, torch.Tensor]]:
    """(tensor, dim, index) for every weight and bias slice that holds a unit marked in mask [layers, units]."""
    for layer, row in enumerate(mask):
        units = row.nonzero().flatten()
        if len(units) == 0:
            continue
        for module, side, index in neurons.weights_of(layer, units):
            for tensor, dim in _parts(module, side):
                yield tensor, dim, index.to(tensor.device)


@torch.no_grad()
def apply(neurons: NeuronGroup, mask: torch.Tensor) -> None:
    """Zero, in the weights, every unit marked in mask [layers, units]."""
    for tensor, dim, index in pruned_parts(neurons, mask):
        tensor.index_fill_(dim, index, 0)


def zero(neurons: NeuronGroup, layer: int, units) -> None:
    """Zero the given units of one layer in the weights."""
    mask = torch.zeros(neurons.layers, neurons.units_per_layer, dtype=torch.bool)
    mask[layer, torch.as_tensor(units, dtype=torch.long)] = True
    apply(neurons, mask)


@torch.no_grad()
def still_zero(neurons: NeuronGroup, mask: torch.Tensor) -> bool:
    """True if every weight of the units in mask is still exactly 0 (e.g. after fine-tuning)."""
    return all(bool((tensor.index_select(dim, index) == 0).all()) for tensor, dim, index in pruned_parts(neurons, mask))


def _parts(module: nn.Module, side: str) -> list[tuple[torch.Tensor, int]]:
    """The tensors of a Linear (or GPT-2 Conv1D, stored [in, out]) that hold its input dims ("in": the
    weights reading them) or its output dims ("out": the weights and bias entries making them), each with
    the dim that indexes those dims."""
    conv = isinstance(module, Conv1D)
    if side == "in":
        return [(module.weight, 0 if conv else 1)]
    parts = [(module.weight, 1 if conv else 0)]
    if getattr(module, "bias", None) is not None:
        parts.append((module.bias, 0))
    return parts
