"""Running a sweep: each run's state, the dry run's plan, running what is missing with its timings, then the
summary and the comparisons.

The sweep's folder, runs/sweeps/<the grid file's name> by default:

    SWEEP/<run>/                    one ordinary run folder per combination of the grid (grid.py), a pruning
                                    run's or an unlearning's (kinds.py); a finished run is skipped, a partial
                                    one resumed, so an interrupted sweep continues when run again; a run that
                                    fails does not stop the others
    SWEEP/timings.json              each run's wall time, the tokens it read and its kind (--dry-run's
                                    estimates: a pruning run's from runs, an unlearning's from its method's)
    SWEEP/summary.csv, summary.md   every run's headline numbers and wall time
    SWEEP/compare/<pair>/<name>/    the overlay reports of each [[compare]] (<pair>: code-vs-prose-seed0,
                                    with the values of the grid's other varying keys that it leaves out)
    SWEEP/.lock                     held by the sweep running in the folder (rundir's lock)
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from .. import atomic
from ..errors import UserError
from ..report import write_report
from ..csvfiles import csv_text
from ..rundir import RunFolder
from ..summary import summary_of
from .grid import Planned, Sweep, load
from .kinds import PRUNING_ONLY, Pending, Progress, finish, progress, timed_as
from .on_ray import Cluster
from .tables import Document, cost_table, duration, overview_table, plots_table, runs_table

TIMINGS = "timings.json"
SUMMARY_COLUMNS = ("last_step", "fraction_pruned", "base_top1_forget", "base_top1_retain", "max_rel_diff",
                   "max_rel_diff_step", "forget_drop_at_retain_budget", "fraction_at_retain_budget", "max_abs_diff",
                   "max_abs_diff_step", "max_abs_diff_se", "area_rel", "final_drop_forget", "final_drop_retain",
                   "retain_drop_at_forget_50", "retain_drop_at_forget_80", "final_perplexity_forget",
                   "final_perplexity_retain", "wall_s")


def read_timings(path: Path) -> dict:
    """timings.json: {run: {"seconds", "tokens", "model", "host", "kind"}} (kind: "run" for a pruning run, else
    the unlearning's method; a file without it holds pruning runs); {} before a run of the sweep has finished."""
    if not path.is_file():
        return {}
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
        ok = all(isinstance(t["seconds"], (int, float)) and isinstance(t["tokens"], int)
                 and isinstance(t["model"], str) and isinstance(t["host"], str)
                 and isinstance(t.setdefault("kind", "run"), str) for t in runs.values())
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise UserError(f"{path} is not a file selprune sweep wrote: delete it (the runs stay; only their recorded "
                        "wall times are lost)")
    return runs


def seconds_per_token(folder: Path) -> dict[tuple[str, str], tuple[float, int]]:
    """{(model, kind): (seconds a token took, how many runs say so)} over the runs that sweeps in `folder`'s
    parent (runs/sweeps/*, this one too) made on this machine."""
    totals: dict[tuple[str, str], tuple[float, int, int]] = {}
    for path in sorted(folder.parent.glob(f"*/{TIMINGS}")):
        for t in read_timings(path).values():
            if t["host"] == platform.node() and t["tokens"] > 0:
                seconds, tokens, runs = totals.get((t["model"], t["kind"]), (0.0, 0, 0))
                totals[t["model"], t["kind"]] = (seconds + t["seconds"], tokens + t["tokens"], runs + 1)
    return {key: (seconds / tokens, runs) for key, (seconds, tokens, runs) in totals.items()}


def print_plan(sweep: Sweep, states: list[Progress]) -> None:
    """--dry-run: each run's state and what is left of it, in tokens and, from earlier timings, in time."""
    print(f"sweep {sweep.grid}: {len(sweep.runs)} runs in {sweep.folder} (dry run: nothing is run or written)")
    width = max(len(run.name) for run in sweep.runs)
    left: dict[tuple[str, str], int] = {}
    for run, now in zip(sweep.runs, states):
        print(f"  {now.state:8s}  {run.name:{width}s}  {now.describe()}")
        if now.tokens:
            key = (run.config.model, timed_as(run))
            left[key] = left.get(key, 0) + now.tokens
    todo = sum(now.state != "finished" for now in states)
    if not todo:
        print(f"to run: nothing; all {len(sweep.runs)} runs are finished")
        return
    print(f"to run: {todo} of {len(sweep.runs)} runs, {sum(left.values()):,} tokens of scoring, training and "
          "evaluation passes (fewer if a stop criterion ends a run early)")
    rates = seconds_per_token(sweep.folder)
    for (model, kind), tokens in left.items():
        label, earlier = (model, "run") if kind == "run" else (f"{model}, {kind} unlearnings", f"{kind} unlearning")
        if (model, kind) in rates:
            rate, runs = rates[model, kind]
            print(f"time for {label}: about {duration(rate * tokens)}, at the {1000 * rate:.3g} ms a token that "
                  f"{runs} earlier {earlier}(s) of it took on this machine")
        else:
            print(f"time for {label}: unknown, no earlier {earlier} of it on this machine (in "
                  f"{sweep.folder.parent}) to estimate it from")


def sweep(grid, output=None, dry_run: bool = False, results=None, quiet: bool = False,
          cluster: Cluster | None = None) -> Path:
    """Run every run of the grid that is not finished (with `cluster`, each as a task on Ray), then write the
    summary, the comparisons and, with `results`, that Markdown file's marked tables; returns the sweep's
    folder. With dry_run, only say what is done and what the rest costs."""
    plan = load(grid, output)
    document = Document(Path(results), plan) if results else None  # its markers are checked before any run
    if dry_run:
        print_plan(plan, [progress(run) for run in plan.runs])
        return plan.folder
    holder = RunFolder(plan.folder)  # one sweep per folder, as one run per run folder
    holder.lock()
    try:
        timings = _run_all(plan, quiet, cluster)
        summaries = {run.name: _summary(run, timings) for run in plan.runs}
        for group, compares in plan.comparisons().items():
            for name, runs in compares.items():
                with atomic.staged_folder(plan.folder / "compare" / group / name) as out:
                    write_report([run.folder.path for run in runs], out)
        _write_summary(plan, summaries)  # after the comparisons, whose plots it shows
        print(f"summary: {plan.folder / 'summary.md'}, {plan.folder / 'summary.csv'}")
        if plan.compares:
            print(f"comparisons: {plan.folder / 'compare'}/<pair>/<name>/report.html")
        if document:
            plots = document.write(summaries)
            print(f"tables: {document.path}; plots: {plots}")
    finally:
        holder.unlock()
    return plan.folder


def _run_all(plan: Sweep, quiet: bool, cluster: Cluster | None) -> dict:
    """Skip the finished runs, resume the partial ones, start the new ones, one after another or, with a
    cluster, as Ray tasks; returns the timings.

    A run that fails (bad input found only when it starts, out of memory) does not stop the others: the
    sweep goes on, then refuses to summarise, naming the failed runs, so that one fix and a rerun finish it.
    """
    states = [progress(run) for run in plan.runs]
    path = plan.folder / TIMINGS
    timings = read_timings(path)
    finished = sum(now.state == "finished" for now in states)
    where = f" on Ray ({cluster.describe()})" if cluster else ""
    print(f"sweep {plan.grid}: {len(plan.runs)} runs in {plan.folder}{where}, {finished} finished already "
          "(if it stops, run it again: it continues where it stopped)", flush=True)
    width = len(str(len(plan.runs)))
    todo: list[Pending] = []
    for i, (run, now) in enumerate(zip(plan.runs, states), 1):
        prefix = f"[{i:{width}d}/{len(plan.runs)}] {run.name}"
        if now.state == "finished":
            print(f"{prefix}: finished, skipped", flush=True)
        else:
            todo.append(Pending(prefix, run, now))
    failed: list[tuple[str, Exception]] = []
    for pending, outcome in (cluster.run(todo, quiet) if cluster else _one_after_another(todo, quiet)):
        run, prefix = pending.run, pending.prefix
        if isinstance(outcome, Exception):
            print(f"{prefix}: failed: {outcome}", flush=True)
            failed.append((run.name, outcome))
            continue
        before = timings.get(run.name, {"seconds": 0.0, "tokens": 0})
        timings[run.name] = {"seconds": before["seconds"] + outcome.seconds,
                             "tokens": before["tokens"] + outcome.tokens, "model": run.config.model,
                             "host": outcome.host, "kind": timed_as(run)}
        atomic.write_text(path, json.dumps({"runs": timings}, indent=2) + "\n")
        print(f"{prefix}: done in {duration(outcome.seconds)}", flush=True)
    if failed:
        (name, first), more = failed[0], [n for n, _ in failed[1:]]
        others = f" (also {', '.join(more)})" if more else ""
        raise type(first)(f"{len(failed)} of {len(plan.runs)} runs failed{others}, so no summary was written; "
                          f"{name}: {first}. The other runs are finished: fix this and run the sweep again, it "
                          "skips them")
    return timings


def _one_after_another(todo: list[Pending], quiet: bool):
    """(run, Done or the error it failed with) for each run, run here in turn."""
    for pending in todo:
        print(f"{pending.prefix}: {pending.doing()}", flush=True)
        yield pending, finish(pending.run, quiet, pending.now)


def _summary(run: Planned, timings: dict) -> dict:
    """rundir's headline numbers, the drops of the last step and the run's wall time (None: not recorded). An
    unlearning's steps are its optimiser steps, and the numbers over the share pruned are None."""
    metrics = run.folder.metrics()
    summary = summary_of(metrics)
    summary.update({f"final_drop_{role}": float(metrics[role]["drop_rel"][-1]) for role in ("forget", "retain")})
    summary["wall_s"] = timings.get(run.name, {}).get("seconds")
    if run.unlearning:
        summary.update(dict.fromkeys(PRUNING_ONLY))
    return summary

def _write_summary(plan: Sweep, summaries: dict) -> None:
    def cell(value):
        return " ".join(map(str, value)) if isinstance(value, tuple) else value

    columns = ("run", "forget", "retain", *plan.keys, *SUMMARY_COLUMNS)
    rows = [{"run": run.name, "forget": run.config.forget, "retain": run.config.retain,
             **{key: cell(value) for key, value in run.values.items()},
             **{column: summaries[run.name][column] for column in SUMMARY_COLUMNS}} for run in plan.runs]
    atomic.write_text(plan.folder / "summary.csv", csv_text(rows, columns))
    compare = plan.folder / "compare"
    lines = [f"# Sweep {plan.name}", "",
             (f"`selprune sweep {plan.grid}`: {len(plan.runs)} runs, each in its own folder in `{plan.folder}` "
              "with its report.html; summary.csv has the same numbers."), "",
             "## Max forget - retain drop", "", *overview_table(plan, summaries), ""]
    for runs in plan.pairs().values():
        config = runs[0].config
        lines += [f"## Forget {config.forget}, retain {config.retain}", "", *runs_table(plan, summaries, runs[0].pair),
                  ""]
    for group in plan.comparisons():
        lines += [f"## Comparisons: {group}", "", *plots_table(plan, group, compare, "compare"), ""]
    lines += ["## Cost", "", *cost_table(plan, summaries)]
    atomic.write_text(plan.folder / "summary.md", "\n".join(lines) + "\n")

