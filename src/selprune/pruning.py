"""Applying a selection to the weights, and the record of what was pruned at each step."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .arch import NeuronGroup


@dataclass
class PrunedRecord:
    """Which units of a group were pruned at each step; the cumulative mask is derived from it."""

    group: str
    layers: int
    units_per_layer: int
    steps: list[dict] = field(default_factory=list)  # {"step": k, "pruned": {"layer": [units]}}

    @classmethod
    def for_view(cls, view: NeuronGroup) -> PrunedRecord:
        return cls(view.group, view.layers, view.size)

    def mask(self) -> torch.Tensor:
        mask = torch.zeros(self.layers, self.units_per_layer, dtype=torch.bool)
        for entry in self.steps:
            for layer, units in entry["pruned"].items():
                mask[int(layer), units] = True
        return mask

    def add(self, step: int, new: torch.Tensor) -> None:
        pruned = {str(layer): row.nonzero().flatten().tolist() for layer, row in enumerate(new) if row.any()}
        self.steps.append({"step": step, "pruned": pruned})

    def truncate(self, last_step: int) -> None:
        self.steps = [s for s in self.steps if s["step"] <= last_step]

    @property
    def last_step(self) -> int:
        return self.steps[-1]["step"] if self.steps else 0

    def to_json(self) -> dict:
        return {"group": self.group, "layers": self.layers, "neurons_per_layer": self.units_per_layer,
                "steps": self.steps}

    @classmethod
    def from_json(cls, data: dict) -> PrunedRecord:
        return cls(data["group"], data["layers"], data["neurons_per_layer"], list(data["steps"]))


def apply(view: NeuronGroup, mask: torch.Tensor) -> None:
    """Zero, in the weights, every unit marked in mask [layers, units]."""
    for layer, row in enumerate(mask):
        units = row.nonzero().flatten()
        if units.numel():
            view.zero(layer, units)
