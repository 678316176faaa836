"""Print one relearning analysis as the Markdown table docs/RESULTS.md shows for a comparison of methods.

Per attacked model (the run's own, its controls, the unpruned and random controls): its forget and retain drop
before the attack (from the folder's own metrics.csv, the numbers a --match was made on), the learning rates the
attacker found best (at each step the better one), the recovered share of the forget gap after the chosen steps (±
its standard error across the evaluation's chunks, for an analysis that recorded them), the anamnesis index, the
retain top-1 before and after, and the share that passes each chosen greedy check of `selprune inspect` (run it
first on each folder), and each model's share minus the --against model's (default the random control, if there is one), paired on
the same chunks, ± the difference's standard error. With --curves, a second table follows: each model's attacked
top-1 at those steps, one column per learning rate. Usage:

    .venv/bin/python scripts/relearn_table.py RUN/relearn-NAME [--attack forget] [--at 1 4 16 64] [--against MODEL] [--curves 0 1 4 64]

from the folder relearn ran in (its --control paths are read as they were given).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selprune.analysisdir import AnalysisFolder
from selprune.csvfiles import read_csv
from selprune.errors import UserError
from selprune.inspectdir import InspectFolder
from selprune.relearn.results import (anamnesis_text, lr_text, settings_of, share_difference, share_text,
                                      summarize_relearn)
from selprune.relearn.settings import ADDED_COLUMNS, COLUMNS
from selprune.rundir import RELEARN, RunFolder
from selprune.unlearn.checkpoints import read_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a relearning analysis: RUN/relearn or RUN/relearn-NAME")
    parser.add_argument("--attack", default="forget")
    parser.add_argument("--at", type=int, nargs="+", default=[1, 4, 16, 64], help="steps of the recovered share")
    parser.add_argument("--checks", nargs="+", default=["python body", "same language"],
                        help="the inspect checks shown, each a share (see RUN/inspect/checks.csv)")
    parser.add_argument("--against", metavar="MODEL",
                        help="also show each model's recovered share minus this model's, paired on the same chunks, "
                             "with its standard error (default: the random control, if the attack has one)")
    parser.add_argument("--curves", type=int, nargs="+", metavar="STEP",
                        help="also print each model's forget top-1 (%%) at these attack steps, per learning rate")
    args = parser.parse_args()
    try:
        print_tables(args)
    except UserError as exc:  # a damaged or foreign folder, a model the attack did not have: one line, exit 2
        print(f"relearn_table.py: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def print_tables(args: argparse.Namespace) -> None:
    run = RunFolder(args.results.resolve().parent)
    name = args.results.name[len(RELEARN) + 1:] or None
    results = AnalysisFolder(run, RELEARN, COLUMNS, name, ADDED_COLUMNS)
    settings = settings_of(results)
    rows = results.rows()
    summaries = [s for s in summarize_relearn(rows) if s["attack"] == args.attack]
    against = next((s for s in summaries if s["model"] == (args.against or "random")), None)
    if args.against and against is None:
        raise UserError(f"--against {args.against}: the {args.attack} attack has no such model (it has "
                        f"{', '.join(s['model'] for s in summaries)})")
    folders = {"pruned": (run, settings.step), "unlearned": (run, settings.step)}
    for spec in settings.control:
        path, _, step = spec.partition(":")
        folder = RunFolder(Path(path))  # as given to relearn: relative to where it ran
        config = folder.read_config()
        kept = read_result(folder.path)["kept_step"] if hasattr(config, "method") else int(step or folder.kept_step())
        folders[f"{config.name or folder.path.name}@{kept}"] = (folder, kept)
    checks = sorted({(r["check"], r["dataset"]) for folder, _ in folders.values()
                     for r in InspectFolder(folder).table("checks.csv")
                     if r["decoding"] == "greedy" and r["check"] in args.checks})
    head = (["model", "forget / retain drop before", "attacker's lr", f"{args.attack} top-1 before -> after"]
            + [f"recovered after {' / '.join(map(str, args.at))} steps", "anamnesis index", "retain top-1 before -> after"]
            + ([f"minus {against['model']}'s share (points)"] if against else [])
            + [f"{check} ({dataset})" for check, dataset in checks])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    base = next((s for s in summaries if s["model"] == "base"), None)
    inspected_base = next(iter(folders.values()))
    for s in sorted(summaries, key=lambda s: (s["model"] != "base", s["model"])):
        folder, step = folders.get(s["model"], (None, None))
        if s["model"] == "base":
            folder, step = inspected_base[0], 0
        cells = [s["model"], _drops(folder, step, s, base), lr_text(s),
                 f"{100 * s['forget_top1'][0]:.1f} -> {100 * s['forget_top1'][-1]:.1f}",
                 " / ".join(_share_at(s, t) for t in args.at), anamnesis_text(s) if s["model"] != "base" else "—",
                 f"{100 * s['retain_top1'][0]:.1f} -> {100 * s['retain_top1'][-1]:.1f}"]
        if against:
            cells.append(" / ".join(_difference(s, against, t) for t in args.at))
        cells += [_check(folder, step, check, dataset) for check, dataset in checks]
        print("| " + " | ".join(cells) + " |")
    if args.curves:
        _print_curves(rows, args.attack, args.curves)


def _print_curves(rows: list[dict], attack: str, steps: list[int]) -> None:
    """One row per model under `attack`, one column per learning rate: its forget top-1 at `steps`."""
    top1 = {(r["model"], float(r["lr"]), int(r["step"])): 100 * float(r["forget_top1"])
            for r in rows if r["attack"] == attack}
    models = sorted({model for model, _, _ in top1}, key=lambda m: (m != "base", m))
    lrs = sorted({lr for _, lr, _ in top1})
    print(f"\nforget top-1 (%) under the {attack} attack, at steps {' / '.join(map(str, steps))}:\n")
    print("| model | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |")
    print("|---|" + "---|" * len(lrs))
    for model in models:
        cells = [" / ".join(f"{top1[model, lr, t]:.1f}" if (model, lr, t) in top1 else "—" for t in steps) for lr in lrs]
        print(f"| {model} | " + " | ".join(cells) + " |")


def _drops(folder: RunFolder | None, step: int | None, summary: dict, base: dict | None) -> str:
    """The folder's drops at the attacked step; for the random control, the attack's own step-0 evaluation."""
    if summary["model"] == "base":
        return "—"
    if folder is None:
        forget = 1 - summary["forget_top1"][0] / base["forget_top1"][0]
        retain = 1 - summary["retain_top1"][0] / base["retain_top1"][0]
        return f"{100 * forget:.1f}% / {100 * retain:.1f}% (attack's evaluation)"
    rows = {r["role"]: r for r in read_csv(folder.metrics_path, ("step", "role", "top1_drop_rel")) if int(r["step"]) == step}
    return f"{float(rows['forget']['top1_drop_rel']):.1f}% / {float(rows['retain']['top1_drop_rel']):.1f}%"


def _share_at(summary: dict, step: int) -> str:
    point = summary["steps"].index(step) if step in summary["steps"] else None
    return "—" if point is None or summary["recovered"][point] is None else share_text(summary, point)


def _difference(summary: dict, against: dict, step: int) -> str:
    """The summary's recovered share minus `against`'s after `step` steps, in points, ± its paired error."""
    found = None if summary is against else share_difference(summary, against, step)
    return "—" if found is None else f"{100 * found[0]:+.0f} ±{100 * found[1]:.0f}"


def _check(folder: RunFolder | None, step: int | None, check: str, dataset: str) -> str:
    if folder is None:
        return "—"
    values = [float(r["value"]) for r in InspectFolder(folder).table("checks.csv")
              if r["check"] == check and r["dataset"] == dataset and r["decoding"] == "greedy" and int(r["step"]) == step]
    return f"{100 * values[0]:.0f}%" if values else "—"


if __name__ == "__main__":
    main()
