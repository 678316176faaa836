"""The importance functions, one entry each: formula, what it needs, how it is computed, where it applies.

Adding a scorer is one entry in SCORERS (docs/METHOD.md, "Adding a scorer"). Everything else derives from
it: the command line's choices and help (config.py), the checks of RunConfig.validate, the sums a scoring
pass collects (Run.measure) and the table in docs/METHOD.md (tests/test_scorers.py checks that the table
there documents every entry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .arch import GROUP_TABLE, GROUPS
from .selection import random_scores
from .stats import Stats

PerDim = Callable[[Stats, "torch.Tensor | None"], torch.Tensor]  # (sums, out norms) -> [layers, width]
Draw = Callable[[tuple, int, int], torch.Tensor]  # (shape, seed, step) -> scores [layers, units]


@dataclass(frozen=True)
class Scorer:
    """One importance function. `formula` is one line, per activation dim i over the scoring positions t, for
    --help and docs/METHOD.md (without '|', which would split the docs' table row). A scorer either
    measures (`per_dim`, from the sums a scoring pass collects) or draws its scores (`draw`), not both."""

    name: str
    formula: str
    per_dim: PerDim | None = None
    draw: Draw | None = None
    sums: tuple[str, ...] = ()  # what stats.collect gathers (stats.SUMS); "attribution" costs a backward pass
    weights: bool = False  # per_dim also takes the norms of the weights that read each dim (NeuronGroup.out_norms)
    root_after_mean: bool = False  # per_dim gives squares: a unit's importance is the root of their mean
    groups: tuple[str, ...] = GROUPS
    refusal: str = ""  # the one line for a group outside `groups`: why, and what to use instead
    relative_eps: bool = False  # its scale is not the activations': eps defaults to a multiple of the retain median

    def __post_init__(self):
        if (self.per_dim is None) == (self.draw is None):
            raise ValueError(f"scorer {self.name!r} must either measure (per_dim) or draw its scores, not both")

    @property
    def needs(self) -> str:
        """What computing it takes, in words (docs/METHOD.md's table)."""
        if "attribution" in self.sums:
            return "a backward pass"
        if self.weights:
            return "activations + outgoing weights"
        return "activations" if self.sums else "nothing"


def _wanda(s: Stats, out_norms: torch.Tensor) -> torch.Tensor:
    """The mean squared write z^2 ||w||^2 per dim: the root comes after the mean over a unit's dims, so a head's
    importance is the root-mean-square norm of what it writes (its dims treated as uncorrelated); for one dim it
    is Wanda's rms(z) x ||w||."""
    return s.sum_sq / s.count * out_norms.double() ** 2


SCORERS: dict[str, Scorer] = {s.name: s for s in (  # the paper's Definition 1 first, then the baseline, then ours
    Scorer("abs", "mean_t abs(z_ti)", lambda s, _: s.sum_abs / s.count, sums=("sum_abs",)),
    Scorer("freq", "mean_t [z_ti > 0]", lambda s, _: s.positive / s.count, sums=("positive",),
           groups=tuple(g for g in GROUPS if GROUP_TABLE[g].activation),
           refusal="the freq scorer needs an activation function, which attention neurons lack: use --scorer abs, "
                   "rms or std for attention groups"),
    Scorer("rms", "sqrt(mean_t z_ti^2)", lambda s, _: (s.sum_sq / s.count).sqrt(), sums=("sum_sq",)),
    Scorer("std", "sqrt(mean_t z_ti^2 - (mean_t z_ti)^2)",
           lambda s, _: (s.sum_sq / s.count - (s.sum / s.count) ** 2).clamp_min(0).sqrt(), sums=("sum", "sum_sq")),
    Scorer("random", "uniform in [0, 1), drawn from (seed, step)", draw=random_scores),
    # the first-order loss change of zeroing the unit at each position
    Scorer("attr", "mean_t abs(z_ti dL/dz_ti)", lambda s, _: s.attribution / s.count, sums=("attribution",),
           relative_eps=True),
    Scorer("wanda", "sqrt(mean_t z_ti^2) norm(W_out[:, i])", _wanda, sums=("sum_sq",), weights=True,
           root_after_mean=True, relative_eps=True, groups=tuple(g for g in GROUPS if g != "attn-value"),
           refusal="the wanda scorer needs a projection that reads the unit, and attention reads value neurons "
                   "(mixing positions, differently for each query head): use --group attn-preout, the same "
                   "dims after attention, or another scorer"),
)}


def importance(stats: Stats, kind: str, dims_per_unit: int = 1,
               out_norms: torch.Tensor | None = None) -> torch.Tensor:
    """Scorer `kind`'s importance per activation dim, then averaged over each unit's dims: [layers, units]."""
    if kind not in SCORERS:
        raise ValueError(f"no importance function {kind!r}")
    scorer = SCORERS[kind]
    if scorer.per_dim is None:
        raise ValueError(f"the {kind} scorer draws its scores: it has no importance to compute")
    missing = [m for m in scorer.sums if getattr(stats, m) is None]
    if missing:
        raise ValueError(f"importance {kind!r} needs the moment(s) {missing}, which were not collected")
    if scorer.weights and out_norms is None:
        raise ValueError(f"importance {kind!r} needs the norms of the weights that read each dim (out_norms)")
    value = scorer.per_dim(stats, out_norms)
    layers, width = value.shape
    unit = value.reshape(layers, width // dims_per_unit, dims_per_unit).mean(-1)
    return unit.sqrt() if scorer.root_after_mean else unit


def help_text() -> str:
    """The --scorer help: every scorer's formula."""
    return ("importance function, per activation dim i over the scoring positions t (z: activation, L: loss; "
            "docs/METHOD.md): " + "; ".join(f"{s.name} = {s.formula}" for s in SCORERS.values()))
