"""Fine-tuning as the relearning attack does it, shared by `selprune relearn` (the attack on a finished run),
`selprune run --harden` (the same attack on a copy of the model before each pruning step) and `selprune run
--heal` (retain fine-tuning after each pruning step, the pruned units held at zero).

Full fine-tuning: AdamW with no weight decay on the causal-LM loss, bf16 compute where asked. With no decay
a weight whose gradient is always 0 never moves, so pruned ff units stay exactly zero (docs/METHOD.md).
"""

from __future__ import annotations

import torch

from .arch import NeuronGroup
from .errors import UserError
from .pruning import pruned_parts

# The attack's defaults, for `selprune relearn` and `selprune run --harden` alike.
LR = 1e-4
BATCH_SIZE = 4
CHUNK_LEN = 256
TOKENS = 16_384


def fine_tune_step(model, optimizer, ids: torch.Tensor, mask: torch.Tensor, bf16: bool) -> float:
    """One optimiser step on the causal-LM loss of a batch (padding not predicted); returns the loss."""
    labels = ids.masked_fill(mask == 0, -100)
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach().item()


def batches(rows: int, batch_size: int, seed: int):
    """Row indices of each fine-tuning batch: seeded shuffles of the attack data, one epoch after another."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(rows, generator=generator)
        for start in range(0, rows - batch_size + 1, batch_size):  # a last, smaller batch waits for the next epoch
            yield order[start:start + batch_size]


def fine_tuning(model, chunks, lr: float, batch_size: int, seed: int, bf16: bool):
    """AdamW on the model's trainable parameters, one step per next(): yields each step's loss, without end.

    The batches are seeded shuffles of `chunks` (input_ids, attention_mask). Closing the generator frees the
    optimiser's state.
    """
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0,
                                  fused=True)
    device = next(model.parameters()).device
    for index in batches(len(chunks.input_ids), batch_size, seed):
        yield fine_tune_step(model, optimizer, chunks.input_ids[index].to(device),
                             chunks.attention_mask[index].to(device), bf16)


def train_steps(model, chunks, steps: int, lr: float, batch_size: int, seed: int, bf16: bool) -> list[float]:
    """`steps` steps of `fine_tuning` with a fresh optimiser, freed after; the losses. `seed` seeds the batches
    and torch's generator (dropout), so the same call always trains the same way, in a resumed run too."""
    torch.manual_seed(seed)
    training = fine_tuning(model, chunks, lr, batch_size, seed, bf16)
    losses = [next(training) for _ in range(steps)]
    training.close()
    return losses


def hold_at_zero(neurons: NeuronGroup, mask: torch.Tensor) -> list:
    """Gradient hooks that zero the gradient of every trainable weight of the units in mask [layers, units]; their
    handles. A pruned weight is 0 and, with its gradient always 0, AdamW without weight decay never moves it
    (its moments stay 0, so each update is 0 / (0 + eps)): the units stay pruned, whatever the loss."""
    return [tensor.register_hook(lambda grad, dim=dim, index=index: grad.index_fill(dim, index, 0))
            for tensor, dim, index in pruned_parts(neurons, mask) if tensor.requires_grad]


def require_one_batch(what: str, chunks, batch_size: int, tokens_flag: str, batch_flag: str) -> None:
    """Refuse attack data of fewer chunks than one batch: `batches` would never yield."""
    if len(chunks.input_ids) < batch_size:
        raise UserError(f"{what} has {len(chunks.input_ids)} chunks of {chunks.input_ids.shape[1]} tokens, fewer "
                        f"than one batch of {batch_size}: raise {tokens_flag} or lower {batch_flag}")


@torch.no_grad()
def load_trained_weights(evaluated, trained) -> None:
    """Overwrite the evaluation model's weights with the trained model's, cast to the evaluation model's dtype.

    Under LoRA only the adapted layers train, and each gets its base weight plus its adapters' deltas, the sum
    that peft's merge forms for plain LoRA (as configured here: no DoRA, no bias), so the numbers are those of
    `merge_and_unload` on a copy; the trained model itself stays unmerged.
    """
    if not hasattr(trained, "merge_and_unload"):
        for target, source in zip(evaluated.parameters(), trained.parameters(), strict=True):
            target.copy_(source)
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, layer in trained.get_base_model().named_modules():
        if isinstance(layer, BaseTunerLayer):
            merged = layer.get_base_layer().weight.clone()
            for adapter in layer.active_adapters:
                merged += layer.get_delta_weight(adapter)
            evaluated.get_submodule(name).weight.copy_(merged)
