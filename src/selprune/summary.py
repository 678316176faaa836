"""A run's numbers, from its metrics.csv rows: the accuracy drops per step, and the headline numbers that
`selprune run` prints, the report shows and a sweep's tables hold. Pure arithmetic: rundir.py reads the
files and hands their rows here.
"""

from __future__ import annotations

import numpy as np

from .errors import UserError

ROLES = ("forget", "retain")  # the two datasets every run compares; watched ones come on top


def metric_series(rows: list[dict[str, str]], path) -> dict:
    """metrics.csv's rows (read from `path`) as arrays over the steps that have a forget and a retain row,
    step 0 first.

    {"step", "fraction_pruned", "forget": {...}, "retain": {...}, "watch": {dataset: {...}}}: each dataset
    holds "dataset", "top1", "top1_se" (NaN where unknown: a folder made before it), "perplexity", the drops
    recomputed from top1: "drop_rel" (% of base) and "drop_abs" (points), and "drop_abs_se" (points, NaN where
    unknown). "watch" has the watched datasets (selprune run --watch), maybe none.
    """
    series: dict[tuple[str, str], dict[int, dict]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            step = int(row["step"])
            values = {c: float(row[c]) for c in ("fraction_pruned", "top1", "perplexity")}
            values.update({c: float(row.get(c) or "nan") for c in ("top1_se", "top1_drop_abs_se")})
        except ValueError:
            raise UserError(f"{path} line {line}: step, fraction_pruned, top1, top1_se, top1_drop_abs_se and "
                            "perplexity must be numbers") from None
        key = (row["role"], row["dataset"] if row["role"] == "watch" else "")
        if step in series.setdefault(key, {}):
            raise UserError(f"{path} line {line}: a second {row['role']} row for step {step}; "
                            "keep one row per step and dataset")
        series[key][step] = {"dataset": row["dataset"], **values}
    unknown = sorted({role for role, _ in series} - {*ROLES, "watch"})
    if unknown:
        raise UserError(f"{path}: role {unknown[0]!r} must be forget, retain or watch")
    steps = sorted(series.get(("forget", ""), {}).keys() & series.get(("retain", ""), {}).keys())
    if not steps or steps[0] != 0:
        raise UserError(f"{path} has no step-0 rows for both forget and retain: "
                        "the unpruned evaluation must come first")
    metrics = {"step": np.array(steps), "watch": {},
               "fraction_pruned": np.array([series["forget", ""][s]["fraction_pruned"] for s in steps])}
    for (role, dataset), by_step in series.items():
        top1, top1_se, drop_abs_se = (np.array([by_step[s][c] if s in by_step else np.nan for s in steps])
                                      for c in ("top1", "top1_se", "top1_drop_abs_se"))
        with np.errstate(divide="ignore", invalid="ignore"):  # a base of 0 has no relative drop: NaN
            drop_rel = np.where(top1[0] > 0, 100 * (top1[0] - top1) / top1[0], np.nan)
        entry = {"dataset": by_step[min(by_step)]["dataset"], "top1": top1, "top1_se": top1_se, "drop_rel": drop_rel,
                 "perplexity": np.array([by_step[s]["perplexity"] if s in by_step else np.nan for s in steps]),
                 "drop_abs": 100 * (top1[0] - top1), "drop_abs_se": drop_abs_se}
        if role == "watch":
            metrics["watch"][dataset] = entry
        else:
            metrics[role] = entry
    return metrics


RETAIN_BUDGET = 10.0  # % of the base retain accuracy that the second headline metric allows to be lost


def at_retain_budget(metrics: dict, budget: float = RETAIN_BUDGET) -> dict:
    """The forget drop reached while the retain drop stays within `budget`: a number a user can act on
    (how much is forgotten for a loss they accept), where the max difference needs no such choice.

    Walking the steps in order, the first step whose retain drop exceeds the budget and the step before it
    are interpolated linearly to where the retain drop equals the budget; the forget drop and the fraction
    pruned are taken at that same point. A run whose retain drop never exceeds the budget gets its last
    step, and "crossing" None.
    """
    forget, retain, fraction = metrics["forget"]["drop_rel"], metrics["retain"]["drop_rel"], metrics["fraction_pruned"]
    over = np.flatnonzero(retain > budget)
    if over.size:  # over[0] > 0: step 0's retain drop is 0
        j = int(over[0])
        t = (budget - retain[j - 1]) / (retain[j] - retain[j - 1])
        at = {"forget": forget[j - 1] + t * (forget[j] - forget[j - 1]),
              "fraction": fraction[j - 1] + t * (fraction[j] - fraction[j - 1]),
              "crossing": [int(metrics["step"][j - 1]), int(metrics["step"][j])]}
    else:
        at = {"forget": forget[-1], "fraction": fraction[-1], "crossing": None}
    return {"retain_budget": float(budget), "forget_drop_at_retain_budget": float(at["forget"]),
            "fraction_at_retain_budget": float(at["fraction"]), "retain_budget_crossing": at["crossing"]}


def summary_of(metrics: dict) -> dict:
    """Headline numbers of one run, from its metric_series (drops recomputed from top1).

    Relative drops are in percent of the step-0 accuracy, absolute drops in percentage points:
    max_rel_diff / max_abs_diff = max over steps of (forget drop - retain drop) and the step where it
    happens; area_rel = trapezoid area of (forget - retain) relative drop over fraction_pruned;
    retain_drop_at_forget_50/80 = retain relative drop at the first step where the forget relative drop
    reaches 50% / 80% (None if it never does); forget_drop_at_retain_budget = the forget relative drop where
    the retain relative drop reaches retain_budget (10%), interpolated between the steps in
    retain_budget_crossing (None: never reached, the last step's), with fraction_at_retain_budget there;
    base_top1_forget_se / _retain_se = the standard error of the base top-1 across its chunks, max_abs_diff_se
    that of max_abs_diff from the two drops' (independent datasets), in points (None where metrics.csv has none).
    """
    forget, retain = metrics["forget"], metrics["retain"]
    rel_gap = forget["drop_rel"] - retain["drop_rel"]
    abs_gap = forget["drop_abs"] - retain["drop_abs"]
    best_rel, best_abs = int(np.argmax(rel_gap)), int(np.argmax(abs_gap))
    abs_gap_se = float(np.hypot(forget["drop_abs_se"][best_abs], retain["drop_abs_se"][best_abs]))
    fraction = metrics["fraction_pruned"]

    def retain_drop_when_forget_drops(level: float) -> float | None:
        reached = np.flatnonzero(forget["drop_rel"] >= level)
        return float(retain["drop_rel"][reached[0]]) if reached.size else None

    return {
        "forget_dataset": forget["dataset"],
        "retain_dataset": retain["dataset"],
        "last_step": int(metrics["step"][-1]),
        "fraction_pruned": float(fraction[-1]),
        "base_top1_forget": float(forget["top1"][0]),
        "base_top1_retain": float(retain["top1"][0]),
        **{f"base_top1_{role}_se": None if np.isnan(se) else float(se)
           for role, se in (("forget", forget["top1_se"][0]), ("retain", retain["top1_se"][0]))},
        "max_rel_diff": float(rel_gap[best_rel]),
        "max_rel_diff_step": int(metrics["step"][best_rel]),
        "max_abs_diff": float(abs_gap[best_abs]),
        "max_abs_diff_step": int(metrics["step"][best_abs]),
        "max_abs_diff_se": None if np.isnan(abs_gap_se) else abs_gap_se,
        **at_retain_budget(metrics),
        "area_rel": float(np.sum(np.diff(fraction) * (rel_gap[1:] + rel_gap[:-1]) / 2)),
        "retain_drop_at_forget_50": retain_drop_when_forget_drops(50),
        "retain_drop_at_forget_80": retain_drop_when_forget_drops(80),
        "final_perplexity_forget": float(forget["perplexity"][-1]),
        "final_perplexity_retain": float(retain["perplexity"][-1]),
        "watch": {name: {"drop_at_max_rel_diff": float(w["drop_rel"][best_rel]), "final_drop": float(w["drop_rel"][-1])}
                  for name, w in metrics["watch"].items()},
    }
