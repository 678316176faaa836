"""The fine-tuning unlearning methods, one registry entry each: the loss on a (forget batch, retain batch)
pair, what the method needs (a frozen copy of the original model, retain data) and which weights it trains.

Adding a method is one `Method` in METHODS and one test (tests/test_unlearn.py); the runner, the settings'
choices, the command line and the docs' list all read this table.

Defaults are those of the reference implementations:
- ga, graddiff, npo: OpenUnlearning (locuslab/open-unlearning, configs/trainer/finetune.yaml: learning rate
  1e-5, no weight decay; GradDiff.yaml and NPO.yaml: forget weight gamma 1, retain weight alpha 1, retain
  loss NLL; NPO.yaml: beta 0.1). The NPO loss is its compute_dpo_loss with the forget batch as the "lose"
  side only: -(2 / beta) * mean over sequences of log sigmoid(beta * (NLL - NLL of the frozen original)),
  each NLL summed over the sequence's tokens.
- rmu: the WMDP code (centerforaisafety/wmdp, rmu/unlearn.py's arguments: lr 5e-5, batch 4, 80 batches,
  steering coefficient 20, alpha 100, layer_id 7, layer_ids 5,6,7, param_ids 6, which is the MLP's down
  projection of a Mistral block). That layer choice is for a 32-layer model; rmu_layer() scales it to the
  model's depth (round(7 / 32 * layers)), and the updated layers are the rmu_layers blocks ending there.
- distill: UNDO (Lee et al. 2025, "Distillation robustifies unlearning"; their code,
  AddieFoote/distillation-robustify-unlearning, tools/serum.py and run_partial_distill_language.py). The
  student is a noised copy of the teacher, the model the unlearning starts from: each matrix becomes
  (1 - alpha) x itself + alpha x beta x a Xavier-uniform draw, each vector (1 - alpha) x itself; beta 0.1, the
  alphas swept 0.1 to 0.7. It is trained on the forward KL(teacher || student) of the next-token distributions
  on general text, with AdamW at 9e-4 and no weight decay (their language setting, which also warms up and
  decays the rate on a cosine and clips gradients at 1; selprune keeps the rate constant, as for the others).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import architecture_of, find_blocks

Batch = tuple[torch.Tensor, torch.Tensor]  # input_ids, attention_mask: [chunks, tokens]

OPENUNLEARNING_LR = 1e-5
WMDP_LR = 5e-5
WMDP_LAYER, WMDP_DEPTH = 7, 32  # RMU's layer in the 32-layer Zephyr-7B of the WMDP code
UNDO_LR = 9e-4
UNDO_NOISE_SCALE = 0.1  # beta


@dataclass
class Context:
    """What a loss may need besides the two batches: the settings, the frozen original (methods with
    `reference`), and RMU's steering vector at its layer (made once per training, from the seed)."""

    settings: object
    reference: nn.Module | None = None
    control: torch.Tensor | None = None


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one line for --help and the README
    loss: Callable[[nn.Module, Batch, Batch, Context], torch.Tensor]
    lr: float  # the reference implementation's learning rate
    reference: bool  # needs a frozen copy of the original model
    retain: bool  # trains on retain data too
    trained: Callable[[nn.Module, object], list[tuple[str, nn.Parameter]]]  # (name, parameter) it updates
    # how the trained model starts, from a copy of the starting model (None: as that copy); seeded
    init: Callable[[nn.Module, object], None] | None = None
    # it starts damaged (distill's noised student) and training repairs it: a checkpoint past the retain budget
    # does not stop the training, which goes on until a later one is within it
    repairs: bool = False


# -- the pieces of the losses -------------------------------------------------------------------------------


def token_losses(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy at every position [chunks, tokens - 1], and where the next token is real."""
    ids, mask = batch
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    losses = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    return losses, mask[:, 1:].bool()


def mean_nll(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The causal-LM loss as transformers computes it: the mean over every real next token of the batch."""
    losses, real = token_losses(model, batch)
    return losses[real].mean()


def sequence_nll(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Each sequence's summed next-token loss [chunks]: NPO's log-likelihood of a whole sequence."""
    losses, real = token_losses(model, batch)
    return (losses * real).sum(1)


class _Reached(Exception):
    """Raised by the hook once the wanted layer has run: nothing after it is computed."""


def layer_output(model: nn.Module, layer: int, batch: Batch) -> torch.Tensor:
    """The residual stream after block `layer` [chunks, tokens, hidden], as float32; later blocks never run."""
    captured = []

    def hook(module, args, out):
        captured.append(out[0] if isinstance(out, tuple) else out)
        raise _Reached

    handle = find_blocks(model)[1][layer].register_forward_hook(hook)
    try:
        model(input_ids=batch[0], attention_mask=batch[1], use_cache=False)
    except _Reached:
        pass
    finally:
        handle.remove()
    return captured[0].float()


def masked_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over the real tokens' hidden units (padding is not text: left out)."""
    real = mask.bool()
    return (hidden[real] - target.expand_as(hidden)[real]).pow(2).mean()


# -- the methods ----------------------------------------------------------------------------------------------


def ga_loss(model, forget: Batch, retain: Batch, context: Context) -> torch.Tensor:
    """Gradient ascent: minimise the negative language-model loss on forget data."""
    return -mean_nll(model, forget)


def graddiff_loss(model, forget: Batch, retain: Batch, context: Context) -> torch.Tensor:
    """Gradient difference: ascent on forget, plus the usual loss on retain, weighted by retain_weight."""
    return -mean_nll(model, forget) + context.settings.retain_weight * mean_nll(model, retain)


def npo_loss(model, forget: Batch, retain: Batch, context: Context) -> torch.Tensor:
    """NPO+RT (Zhang et al. 2024): the forget sequences' log-likelihood pushed below the frozen original's,
    a bounded loss that slows down as they become unlikely; plus the retain loss."""
    beta = context.settings.npo_beta
    with torch.no_grad():
        before = sequence_nll(context.reference, forget)
    forget_term = -(2 / beta) * F.logsigmoid(beta * (sequence_nll(model, forget) - before)).mean()
    return forget_term + context.settings.retain_weight * mean_nll(model, retain)


def rmu_loss(model, forget: Batch, retain: Batch, context: Context) -> torch.Tensor:
    """RMU (Li et al. 2024): the forget activations after one block pushed to a fixed, scaled random
    direction; the retain activations there held at the frozen original's, weighted by rmu_alpha."""
    s = context.settings
    layer = rmu_layer(s, model)
    forget_term = masked_mse(layer_output(model, layer, forget), context.control, forget[1])
    with torch.no_grad():
        held = layer_output(context.reference, layer, retain)
    return forget_term + s.rmu_alpha * masked_mse(layer_output(model, layer, retain), held, retain[1])


def distill_loss(model, forget: Batch, retain: Batch, context: Context) -> torch.Tensor:
    """UNDO's distillation: the forward KL(teacher || student) of the next-token distributions, summed over the
    vocabulary and averaged over the real positions of the retain batch (and --distill-data's, joined to it).
    The forget batch is not used: the student learns only what the teacher shows on other text."""
    ids, mask = retain
    with torch.no_grad():
        teacher = F.log_softmax(context.reference(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1)
    student = F.log_softmax(model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1)
    per_position = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)
    return per_position[mask.bool()].mean()


@torch.no_grad()
def noised(model: nn.Module, settings) -> None:
    """UNDO's student: every matrix mixed with a fresh Xavier-uniform draw scaled by noise_scale, every vector
    shrunk, both by the factor --noise; drawn on the CPU from the seed, so that every device starts alike."""
    alpha, generator = settings.noise, torch.Generator().manual_seed(settings.seed)
    for parameter in model.parameters():
        fresh = torch.zeros(parameter.shape)
        if parameter.dim() == 2:
            torch.nn.init.xavier_uniform_(fresh, generator=generator)
        parameter.mul_(1 - alpha).add_(fresh.to(parameter), alpha=alpha * settings.noise_scale)


def every_weight(model: nn.Module, settings) -> list[tuple[str, nn.Parameter]]:
    return list(model.named_parameters())


def rmu_weights(model: nn.Module, settings) -> list[tuple[str, nn.Parameter]]:
    """The MLP output (down-) projection weights of the rmu_layers blocks ending at RMU's layer."""
    path, blocks = find_blocks(model)
    down = architecture_of(model.config).ff_out
    last = rmu_layer(settings, model)
    layers = range(max(0, last - settings.rmu_layers + 1), last + 1)
    return [(f"{path}.{i}.{down}.weight", blocks[i].get_submodule(down).weight) for i in layers]


def rmu_layer(settings, model: nn.Module) -> int:
    """RMU's layer: the one set, or the WMDP code's layer 7 of 32 scaled to this model's depth."""
    depth = len(find_blocks(model)[1])
    if settings.rmu_layer is not None:
        return settings.rmu_layer
    return min(depth - 1, round(WMDP_LAYER / WMDP_DEPTH * depth))


def steering_vector(hidden_size: int, coefficient: float, seed: int) -> torch.Tensor:
    """RMU's target: a uniform random vector of unit length times the coefficient (the WMDP code's draw)."""
    draw = torch.rand(hidden_size, generator=torch.Generator().manual_seed(seed))
    return draw / draw.norm() * coefficient


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("ga", "gradient ascent on the forget data", ga_loss, OPENUNLEARNING_LR, reference=False, retain=False,
           trained=every_weight),
    Method("graddiff", "gradient ascent on forget plus the language-model loss on retain", graddiff_loss,
           OPENUNLEARNING_LR, reference=False, retain=True, trained=every_weight),
    Method("npo", "negative preference optimisation against the frozen original, with the retain loss (NPO+RT)",
           npo_loss, OPENUNLEARNING_LR, reference=True, retain=True, trained=every_weight),
    Method("rmu", "representation misdirection: forget activations at one layer to a scaled random direction, "
           "retain activations kept; trains the MLP down-projections of a few layers up to it", rmu_loss, WMDP_LR,
           reference=True, retain=True, trained=rmu_weights),
    Method("distill", "UNDO: a noised copy of the starting model (--noise) distilled from it on retain data "
           "(and --distill-data)", distill_loss, UNDO_LR, reference=True, retain=True, trained=every_weight,
           init=noised, repairs=True),
)}
