"""The importance functions as data: what each needs, its formula, and the groups it applies to.

Everything else derives from SCORERS: the command line's choices and help (config.py), the checks of
RunConfig.validate, the sums a scoring pass collects (stats.NEEDS) and the table in docs/METHOD.md
(tests/test_scorers.py checks that the table there documents every entry). scoring.importance computes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .arch import GROUP_TABLE, GROUPS


@dataclass(frozen=True)
class Scorer:
    """One importance function. `formula` is one line, per activation dim i over the scoring positions t, for
    --help and docs/METHOD.md (without '|', which would split the docs' table row)."""

    name: str
    formula: str
    sums: tuple[str, ...] = ()  # what stats.collect gathers (stats.SUMS); "attribution" costs a backward pass
    weights: bool = False  # also the norms of the weights that read each dim (NeuronGroup.out_norms)
    groups: tuple[str, ...] = GROUPS
    refusal: str = ""  # the one line for a group outside `groups`: why, and what to use instead
    relative_eps: bool = False  # its scale is not the activations': eps defaults to a multiple of the retain median

    @property
    def needs(self) -> str:
        """What computing it takes, in words (docs/METHOD.md's table)."""
        if "attribution" in self.sums:
            return "a backward pass"
        if self.weights:
            return "activations + outgoing weights"
        return "activations" if self.sums else "nothing"


SCORERS: dict[str, Scorer] = {s.name: s for s in (
    Scorer("abs", "mean_t abs(z_ti)", ("sum_abs",)),
    Scorer("freq", "mean_t [z_ti > 0]", ("positive",),
           groups=tuple(g for g in GROUPS if GROUP_TABLE[g].activation),
           refusal="the freq scorer needs an activation function, which attention neurons lack: use --scorer abs, "
                   "rms or std for attention groups"),
    Scorer("rms", "sqrt(mean_t z_ti^2)", ("sum_sq",)),
    Scorer("std", "sqrt(mean_t z_ti^2 - (mean_t z_ti)^2)", ("sum", "sum_sq")),
    Scorer("random", "uniform in [0, 1), drawn from (seed, step)"),
    Scorer("attr", "mean_t abs(z_ti dL/dz_ti)", ("attribution",), relative_eps=True),
    Scorer("wanda", "sqrt(mean_t z_ti^2) norm(W_out[:, i])", ("sum_sq",), weights=True, relative_eps=True,
           groups=tuple(g for g in GROUPS if g != "attn-value"),
           refusal="the wanda scorer needs a projection that reads the unit, and attention reads value neurons "
                   "(mixing positions, differently for each query head): use --group attn-preout, the same "
                   "dims after attention, or another scorer"),
)}


def help_text() -> str:
    """The --scorer help: every scorer's formula."""
    return ("importance function, per activation dim i over the scoring positions t (z: activation, L: loss; "
            "docs/METHOD.md): " + "; ".join(f"{s.name} = {s.formula}" for s in SCORERS.values()))
