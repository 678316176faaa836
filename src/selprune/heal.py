"""Healing between pruning steps (`selprune run --heal K`): after each step, K fine-tuning steps on the retain
dataset's scoring chunks repair the retain damage, with every pruned unit held at exactly zero.

The training runs on a float32 master copy (a bf16 model could not take AdamW's small updates); the run's
model takes the master's weights, cast to its dtype, after each healing, and is scored and evaluated as it
is. Each step's healing gets a fresh AdamW, so no moment of a unit pruned since the last one can move it,
and is seeded by (seed, step): a resumed run, which loads the committed step's master weights, goes on
exactly as an uninterrupted one would.
"""

from __future__ import annotations

import copy

import torch
from safetensors.torch import save as save_tensors

from .arch import neuron_group
from .config import RunConfig
from .finetune import hold_at_zero, train_steps
from .pruning import apply
from .selection import step_seed
from .unlearn.checkpoints import load_unlearned


class Healer:
    """The float32 master copy of a run's model, and the fine-tuning that heals it after each pruning step."""

    def __init__(self, model, config: RunConfig, chunks):
        self.model, self.config, self.chunks = model, config, chunks
        self.bf16 = model.dtype == torch.bfloat16
        self.master = copy.deepcopy(model).float().requires_grad_(True).train()
        self.neurons = neuron_group(self.master, config.group)

    def heal(self, step: int, pruned: torch.Tensor) -> list[float]:
        """Prune the master as the model was (`pruned`: every unit so far), train it with those units held at
        zero, and give the model its weights; the losses of the K steps."""
        c = self.config
        apply(self.neurons, pruned)
        hooks = hold_at_zero(self.neurons, pruned)
        try:
            losses = train_steps(self.master, self.chunks, c.heal, c.heal_lr, c.heal_batch_size,
                                 step_seed(c.seed, step), self.bf16)
        finally:
            for hook in hooks:
                hook.remove()
        self._to_model()
        return losses

    def weights(self) -> bytes:
        """The master's weights as a safetensors file's bytes, what the run folder keeps of a healed step."""
        return save_tensors({name: p.detach().cpu().contiguous() for name, p in self.master.named_parameters()})

    def load(self, folder) -> None:
        """Resume: the master (and so the model) takes the weights a committed step saved in `folder`."""
        load_unlearned(self.master, folder)
        self._to_model()

    @torch.no_grad()
    def _to_model(self) -> None:
        master = dict(self.master.named_parameters())
        for name, parameter in self.model.named_parameters():
            parameter.copy_(master[name])

