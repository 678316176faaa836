"""Reading a relearning attack's results: per attack and model, the attacker's best curve over the learning
rates, how much of the forget gap came back and how fast (the anamnesis index among them), and the console's
headline."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch

from ..analysisdir import AnalysisFolder
from ..errors import UserError
from ..evaluate import ratio_difference_standard_error, ratio_standard_error
from ..rundir import RELEARN, RunFolder
from .settings import ADDED_COLUMNS, COLUMNS, RelearnConfig

ANAMNESIS = 0.1  # the anamnesis index: steps until the forget top-1 is within this share of the unpruned model's


def summarize_relearn(rows: list[dict]) -> list[dict]:
    """Per attack and model, the attacker's best at each point (the learning rate whose forget top-1 is highest
    there: an attacker with that many steps picks the rate that recovers most by then, and `lrs` names it):
    the forget top-1 at each point, the recovered share of the forget gap (acc_t - acc_0) / (acc_base - acc_0)
    with its standard error across the evaluation's chunks (None where the rows do not record their chunks) and
    the per-chunk hits behind it (`regained`: regained and in excess, which share_difference pairs), the
    steps to recover 50% and 90% of it (None: not within the attack), the anamnesis index (Chundawat et al.
    2023: the first step whose forget top-1 is within ANAMNESIS of the unpruned model's before the attack,
    None: not within the attack), the retain top-1, and whether the pruned weights stayed exactly zero."""
    table = [{k: chunks_of(v) if k == "forget_chunks" and v else _from_csv(v) for k, v in row.items()} for row in rows]
    base0 = {r["attack"]: r for r in table if r["model"] == "base" and r["step"] == 0}
    summaries = []
    for (attack, model), group in itertools.groupby(sorted(table, key=lambda r: (r["attack"], r["model"])),
                                                    key=lambda r: (r["attack"], r["model"])):
        best = {}
        for r in sorted(group, key=lambda r: (r["step"], r["lr"])):  # ties: the smaller rate
            if r["step"] not in best or r["forget_top1"] > best[r["step"]]["forget_top1"]:
                best[r["step"]] = r
        curve = [best[step] for step in sorted(best)]
        start, base = curve[0], base0.get(attack)
        ceiling = None if base is None else base["forget_top1"]
        gap = None if ceiling is None or model == "base" else ceiling - start["forget_top1"]
        share = [None if not gap or gap <= 0 else (r["forget_top1"] - start["forget_top1"]) / gap for r in curve]
        regained = [None if s is None else regained_hits(base, start, r) for s, r in zip(share, curve)]
        summaries.append({
            "attack": attack, "model": model, "lrs": [r["lr"] for r in curve], "steps": [r["step"] for r in curve],
            "forget_top1": [r["forget_top1"] for r in curve], "retain_top1": [r["retain_top1"] for r in curve],
            "gap": gap, "recovered": share,
            "recovered_se": [None if g is None else ratio_standard_error(*g) for g in regained], "regained": regained,
            "steps_to_50": _first_step(curve, share, 0.5), "steps_to_90": _first_step(curve, share, 0.9),
            "anamnesis": None if ceiling is None else next(
                (r["step"] for r in curve if r["forget_top1"] >= (1 - ANAMNESIS) * ceiling), None),
            "pruned_zero": curve[-1]["pruned_zero"] if curve[-1]["pruned_zero"] != "" else None,
        })
    return summaries


def regained_hits(base: dict, start: dict, now: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per chunk, the hits regained since the start and the hits the unpruned model has in excess of the start
    (each row's forget_chunks read by chunks_of, None where an older analysis has none):
    the two sums whose ratio is the recovered share, whose standard error across the chunks they give. It is the
    error of measuring on these chunks only: it leaves out the attack's own randomness (its data order, one seed)
    and that the attacker's best rate is picked on the same measurements. None where a row does not record its
    chunks (an analysis made before they were)."""
    if any(row.get("forget_chunks") is None for row in (base, start, now)):
        return None
    b, s, n = (row["forget_chunks"] for row in (base, start, now))
    if not (torch.equal(b[:, 0], s[:, 0]) and torch.equal(b[:, 0], n[:, 0])):
        raise UserError("the rows of a relearning analysis were evaluated on different chunks: its relearn.csv is "
                        "damaged; delete the analysis folder and run the attack again")
    return n[:, 1] - s[:, 1], b[:, 1] - s[:, 1]


def share_difference(one: dict, other: dict, step: int) -> tuple[float, float] | None:
    """One model's recovered share minus another's after `step` steps of the same attack, and the difference's
    standard error, the two shares paired on the same chunks (what both share, a chunk that is hard for every
    model, cancels). None where either has no share there or its rows do not record their chunks."""
    if step not in one["steps"] or step not in other["steps"]:
        return None
    i, j = one["steps"].index(step), other["steps"].index(step)
    if one["regained"][i] is None or other["regained"][j] is None:
        return None
    return (one["recovered"][i] - other["recovered"][j],
            ratio_difference_standard_error(*one["regained"][i], *other["regained"][j]))


def chunks_text(per_chunk: torch.Tensor) -> str:
    """An evaluation's [chunks, (positions, hits)] as relearn.csv keeps it: "positions:hits" per chunk."""
    return " ".join(f"{p}:{h}" for p, h in per_chunk.tolist())


def chunks_of(text: str) -> torch.Tensor:
    """chunks_text read back."""
    try:
        chunks = torch.tensor([[int(x) for x in pair.split(":")] for pair in str(text).split()], dtype=torch.long)
        if chunks.ndim != 2 or chunks.shape[1] != 2:
            raise ValueError
        return chunks
    except ValueError:
        raise UserError(f"a relearn.csv records chunks as {str(text)[:40]!r}, not as positions:hits pairs: the "
                        "file is damaged; delete the analysis folder and run the attack again") from None


def headline(summaries: list[dict]) -> list[str]:
    """One console line per attack and model: forget top-1 before and after, and how much of the gap returned."""
    lines = []
    for s in summaries:
        recovered = "" if s["recovered"][-1] is None else (
            f"; recovered {share_text(s, -1)} of the gap in {s['steps'][-1]} steps (50% "
            + ("not reached" if s["steps_to_50"] is None else f"by step {s['steps_to_50']}") + ")")
        zero = ("" if s["pruned_zero"] is None
                else f"; pruned weights still zero: {'yes' if s['pruned_zero'] else 'no'}")
        recovered += f"; anamnesis index {anamnesis_text(s)} steps"
        lines.append(f"attack {s['attack']}, {s['model']} (lr {lr_text(s)}): forget top1 "
                     f"{s['forget_top1'][0]:.3f} -> {s['forget_top1'][-1]:.3f}, retain {s['retain_top1'][0]:.3f} "
                     f"-> {s['retain_top1'][-1]:.3f}{recovered}{zero}")
    return lines


def share_text(summary: dict, point: int) -> str:
    """A recovered share at one point of a summary's curve, in percent with its standard error where the rows
    recorded their chunks: "65% ±4" ("" where there is no share)."""
    share, se = summary["recovered"][point], summary["recovered_se"][point]
    if share is None:
        return ""
    return f"{100 * share:.0f}%" + ("" if se is None or math.isnan(se) else f" ±{100 * se:.0f}")


def lr_text(summary: dict) -> str:
    """The learning rates that were the attacker's best after some step, in the order they first were:
    "3e-4", or "3e-4 then 1e-4" when the better rate changes as the attack goes on."""
    winners = list(dict.fromkeys(lr for step, lr in zip(summary["steps"], summary["lrs"]) if step))
    return " then ".join(f"{lr:g}" for lr in winners or summary["lrs"][:1])


def anamnesis_text(summary: dict) -> str:
    """The anamnesis index as a table shows it: the steps, or "> N" when the attack's N steps were not enough."""
    return f"> {summary['steps'][-1]}" if summary["anamnesis"] is None else str(summary["anamnesis"])


def _from_csv(value):
    """CSV strings back to numbers and booleans; other text as it is."""
    if isinstance(value, str):
        if value in ("True", "False"):
            return value == "True"
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value
    return value


def _first_step(curve, share, level):
    return next((r["step"] for r, s in zip(curve, share) if s is not None and s >= level), None)


def relearn_folders(run: Path) -> list[AnalysisFolder]:
    """The relearning analyses of a run folder that have results."""
    return AnalysisFolder.with_results(RunFolder(run), RELEARN, COLUMNS, ADDED_COLUMNS)


def settings_of(results: AnalysisFolder) -> RelearnConfig:
    return RelearnConfig.from_toml(results.settings_path)
