"""How to rebuild the model of any selprune folder from the original model: the one place that does it.

A pruning run's model after step k is the original with the units of steps 1 to k zeroed (its pruned.json);
a --heal run's is that mask over the healed weights it saved for step k (RUN/healed/, its kept step only).
An unlearning folder's model is the original with the weights it saved (RUN/model/), at the checkpoint it
kept: the only step it has. A recipe holds both parts, a mask and saved weights, so an unlearning that started
from a pruned model (`unlearn --from RUN`) is one too: the run's mask and the weights it trained. Relearn,
inspect, their controls and `unlearn --from` all rebuild their models through `recipe_of`, from one copy of
the original model in memory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .arch import NeuronGroup, neuron_group
from .errors import UserError
from .pruning import apply
from .rundir import RunFolder
from .unlearn.budget import run_and_step
from .unlearn.checkpoints import load_unlearned, read_result
from .unlearn.settings import UnlearnConfig


@dataclass(frozen=True)
class Recipe:
    """The original model (`model`, as the folder names it) and what turns it into the folder's model."""

    model: str
    step: int  # the folder's step whose model this is (0: the original model itself)
    group: str = ""  # the group `mask` indexes; "" when nothing is pruned
    mask: torch.Tensor | None = None  # [layers, units], True where pruned
    weights: Path | None = None  # a folder of safetensors (save_pretrained) whose weights replace the original's

    @property
    def original(self) -> Recipe:
        """The recipe of the model this one starts from."""
        return Recipe(self.model, 0)

    def pruned_as(self, mask: torch.Tensor) -> Recipe:
        """The original model with another mask over the same group (a random control)."""
        return replace(self, mask=mask, weights=None)

    def build(self, original):
        """A new model: a copy of `original` (the model this folder started from), made into this recipe's."""
        return self.apply(copy.deepcopy(original))

    def apply(self, model):
        """Make `model` this recipe's model, in place: the weights first, then the mask. `model` is the original,
        or the same folder's model at an earlier step (pruning only adds units, saved weights replace all)."""
        if self.weights is not None:
            load_unlearned(model, self.weights)
        return self.prune(model)

    def prune(self, model):
        """Zero this recipe's pruned units in `model`, in place, and leave every other weight as it is."""
        if self.mask is not None:
            apply(self.neurons(model), self.mask)
        return model

    def neurons(self, model) -> NeuronGroup:
        """The pruned group of `model`, refused when its shape is not the mask's (another model)."""
        neurons = neuron_group(model, self.group)
        if (neurons.layers, neurons.units_per_layer) != tuple(self.mask.shape):
            raise UserError(f"the model has {neurons.layers} x {neurons.units_per_layer} {self.group} units, the "
                            f"pruning {self.mask.shape[0]} x {self.mask.shape[1]}: give the model it pruned")
        return neurons


def model_steps(folder: RunFolder) -> list[int]:
    """The steps whose model `folder` can rebuild: a pruning run's 1 to its kept step; an unlearning's kept
    checkpoint only (the one model it saved)."""
    config = folder.read_config()
    if isinstance(config, UnlearnConfig):
        result = read_result(folder.path)
        if result is None:
            raise UserError(f"{folder.path} is an unlearning that has not finished: finish it with selprune unlearn "
                            f"--resume --output {folder.path}, then use it")
        return [result["kept_step"]]
    kept = folder.kept_step()
    if kept < 1:
        raise UserError(f"{folder.path} has no finished pruning step yet: let the run finish step 1 (selprune run "
                        f"--resume --output {folder.path}), then use it")
    if config.heal:  # a healed step's model is its mask and its healed weights, saved for the kept step only
        return [step for step in folder.healed_steps() if step <= kept]
    return list(range(1, kept + 1))


def steps_text(folder: RunFolder, steps: list[int]) -> str:
    """What `model_steps` found, for a message: "pruning steps 1 to 3" or "one model, its kept step 40"."""
    config = folder.read_config()
    if isinstance(config, UnlearnConfig):
        return f"one model, the checkpoint it kept at step {steps[0]}"
    if config.heal:
        return (f"the healed weights of step {steps[-1]} only (a --heal run keeps those of its last and its kept "
                "step)")
    return f"pruning steps 1 to {steps[-1]}"


def recipe_of(folder, step: int | None = None) -> Recipe:
    """The recipe of `folder`'s model after `step` (None or 0: the model it keeps: a run's kept step, an unlearning's
    kept checkpoint); a step it cannot rebuild is refused with the steps it can."""
    folder = folder if isinstance(folder, RunFolder) else RunFolder(folder)
    if not folder.config_path.is_file():
        raise UserError(f"{folder.path} is not a selprune run folder (it has no config.toml): give one that "
                        "selprune run or selprune unlearn made")
    steps = model_steps(folder)
    step = step or steps[-1]
    if step not in steps:
        raise UserError(f"{folder.path} has {steps_text(folder, steps)}, not {step}")
    config = folder.read_config()
    if isinstance(config, UnlearnConfig):  # started from a pruned model (--from): its mask, then the weights
        start = recipe_of(*run_and_step(config.from_run)) if config.from_run else Recipe(config.model, 0)
        return Recipe(config.model, step, start.group, start.mask, weights=folder.model_path)
    healed = folder.healed.path(step) if config.heal else None
    return Recipe(config.model, step, config.group, folder.record().mask(range(1, step + 1)), healed)
