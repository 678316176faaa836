"""Running a sweep: each run's state, the dry run's plan, running what is missing with its timings, then the
summary and the comparisons.

The sweep's folder, runs/sweeps/<the grid file's name> by default:

    SWEEP/<run>/                    one ordinary run folder per combination of the grid (grid.py); a finished
                                    run is skipped, a partial one resumed, so an interrupted sweep continues
                                    when run again; a run that fails does not stop the others
    SWEEP/timings.json              each run's wall time and the tokens it read (--dry-run's estimates)
    SWEEP/summary.csv, summary.md   every run's headline numbers and wall time
    SWEEP/compare/<pair>/<name>/    the overlay reports of each [[compare]] (<pair>: code-vs-prose-seed0,
                                    with the values of the grid's other varying keys that it leaves out)
    SWEEP/.lock                     held by the sweep running in the folder (rundir's lock)
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from .. import atomic
from ..config import RunConfig
from ..errors import OutOfMemory, UserError
from ..report import write_report
from ..rundir import RunFolder, csv_text, summary_of
from ..scorers import SCORERS
from .grid import Planned, Sweep, load
from .tables import Document, cost_table, duration, overview_table, plots_table, runs_table

TIMINGS = "timings.json"
SUMMARY_COLUMNS = ("last_step", "fraction_pruned", "base_top1_forget", "base_top1_retain", "max_rel_diff",
                   "max_rel_diff_step", "forget_drop_at_retain_budget", "fraction_at_retain_budget", "max_abs_diff",
                   "max_abs_diff_step", "area_rel", "final_drop_forget", "final_drop_retain",
                   "retain_drop_at_forget_50", "retain_drop_at_forget_80", "final_perplexity_forget",
                   "final_perplexity_retain", "wall_s")


def state(run: Planned) -> tuple[str, int]:
    """new, partial or finished (complete, or ended by a stop criterion), and the last step done (-1: none).
    A folder whose run has other settings than the grid gives it is refused, never mixed or skipped."""
    folder = run.folder
    if not folder.config_path.is_file():
        return "new", -1
    changed = folder.changed_settings(run.config)
    if changed:
        raise UserError(f"{folder} holds a run with other settings ({', '.join(changed)}) than the grid gives it: "
                        "move it away, or give the sweep another --output")
    done = folder.completed_step()
    finished = folder.stopped() is not None or done >= run.config.steps
    if not finished and done >= 0:
        folder.check_readable(run.config)  # as resuming it will: a damaged run is refused now, not listed
    return ("finished" if finished else "partial"), done


def tokens_left(config: RunConfig, done: int) -> int:
    """Tokens the run still reads: every step from 0 on evaluates each dataset (forget, retain, watched); every
    step from 1 on scores forget and retain, unless the scorer reads no activations (random). A stop criterion
    can end the run sooner."""
    steps = config.steps - max(done, 0)
    evaluations = steps + (1 if done < 0 else 0)
    scoring = 2 * config.score_tokens * steps if SCORERS[config.scorer].sums else 0
    return evaluations * (2 + len(config.watch)) * config.eval_tokens + scoring


def read_timings(path: Path) -> dict:
    """timings.json: {run: {"seconds", "tokens", "model", "host"}}; {} before a run of the sweep has finished."""
    if not path.is_file():
        return {}
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
        ok = all(isinstance(t["seconds"], (int, float)) and isinstance(t["tokens"], int)
                 and isinstance(t["model"], str) and isinstance(t["host"], str) for t in runs.values())
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise UserError(f"{path} is not a file selprune sweep wrote: delete it (the runs stay; only their recorded "
                        "wall times are lost)")
    return runs


def seconds_per_token(folder: Path) -> dict[str, tuple[float, int]]:
    """{model: (seconds a token took, how many runs say so)} over the runs that sweeps in `folder`'s parent
    (runs/sweeps/*, this one too) made on this machine."""
    totals: dict[str, tuple[float, int, int]] = {}
    for path in sorted(folder.parent.glob(f"*/{TIMINGS}")):
        for t in read_timings(path).values():
            if t["host"] == platform.node() and t["tokens"] > 0:
                seconds, tokens, runs = totals.get(t["model"], (0.0, 0, 0))
                totals[t["model"]] = (seconds + t["seconds"], tokens + t["tokens"], runs + 1)
    return {model: (seconds / tokens, runs) for model, (seconds, tokens, runs) in totals.items()}


def print_plan(sweep: Sweep, states: list[tuple[str, int]]) -> None:
    """--dry-run: each run's state and what is left of it, in tokens and, from earlier timings, in time."""
    print(f"sweep {sweep.grid}: {len(sweep.runs)} runs in {sweep.folder} (dry run: nothing is run or written)")
    width = max(len(run.name) for run in sweep.runs)
    left: dict[str, int] = {}
    for run, (what, done) in zip(sweep.runs, states):
        tokens = 0 if what == "finished" else tokens_left(run.config, done)
        if what == "finished":
            detail = f"step {done} of {run.config.steps}" + (" (stopped early)" if run.folder.stopped() else "")
        elif done >= 0:
            detail = f"step {done} of {run.config.steps} done, {tokens:,} tokens left"
        else:
            detail = f"{tokens:,} tokens"
        print(f"  {what:8s}  {run.name:{width}s}  {detail}")
        if tokens:
            left[run.config.model] = left.get(run.config.model, 0) + tokens
    todo = sum(what != "finished" for what, _ in states)
    if not todo:
        print(f"to run: nothing; all {len(sweep.runs)} runs are finished")
        return
    print(f"to run: {todo} of {len(sweep.runs)} runs, {sum(left.values()):,} tokens of scoring and evaluation "
          "passes (fewer if a stop criterion ends a run early)")
    rates = seconds_per_token(sweep.folder)
    for model, tokens in left.items():
        if model in rates:
            rate, runs = rates[model]
            print(f"time for {model}: about {duration(rate * tokens)}, at the {1000 * rate:.3g} ms a token that "
                  f"{runs} earlier run(s) of it took on this machine")
        else:
            print(f"time for {model}: no earlier run of it on this machine (in {sweep.folder.parent}) to estimate "
                  "it from")


def sweep(grid, output=None, dry_run: bool = False, results=None, quiet: bool = False) -> Path:
    """Run every run of the grid that is not finished, then write the summary, the comparisons and, with
    `results`, that Markdown file's marked tables; returns the sweep's folder. With dry_run, only say what
    is done and what the rest costs."""
    plan = load(grid, output)
    document = Document(Path(results), plan) if results else None  # its markers are checked before any run
    if dry_run:
        print_plan(plan, [state(run) for run in plan.runs])
        return plan.folder
    holder = RunFolder(plan.folder)  # one sweep per folder, as one run per run folder
    holder.lock()
    try:
        timings = _run_all(plan, quiet)
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


def _run_all(plan: Sweep, quiet: bool) -> dict:
    """Skip the finished runs, resume the partial ones, start the new ones; returns the timings.

    A run that fails (bad input found only when it starts, out of memory) does not stop the others: the
    sweep goes on, then refuses to summarise, naming the failed runs, so that one fix and a rerun finish it.
    """
    from ..run import run as run_one

    states = [state(run) for run in plan.runs]
    path = plan.folder / TIMINGS
    timings = read_timings(path)
    finished = sum(what == "finished" for what, _ in states)
    print(f"sweep {plan.grid}: {len(plan.runs)} runs in {plan.folder}, {finished} finished already "
          "(if it stops, run it again: it continues where it stopped)", flush=True)
    width = len(str(len(plan.runs)))
    failed: list[tuple[str, Exception]] = []
    for i, (run, (what, done)) in enumerate(zip(plan.runs, states), 1):
        prefix = f"[{i:{width}d}/{len(plan.runs)}] {run.name}"
        if what == "finished":
            print(f"{prefix}: finished, skipped", flush=True)
            continue
        tokens = tokens_left(run.config, done)
        doing = f"resuming after step {done}" if done >= 0 else "resuming" if what == "partial" else "starting"
        print(f"{prefix}: {doing} ({tokens:,} tokens)", flush=True)
        start = time.perf_counter()
        try:
            run_one(run.config, resume=what == "partial", quiet=quiet)
        except (UserError, OutOfMemory) as exc:
            print(f"{prefix}: failed: {exc}", flush=True)
            failed.append((run.name, exc))
            continue
        seconds = time.perf_counter() - start
        before = timings.get(run.name, {"seconds": 0.0, "tokens": 0})
        timings[run.name] = {"seconds": before["seconds"] + seconds, "tokens": before["tokens"] + tokens,
                             "model": run.config.model, "host": platform.node()}
        atomic.write_text(path, json.dumps({"runs": timings}, indent=2) + "\n")
        print(f"{prefix}: done in {duration(seconds)}", flush=True)
    if failed:
        (name, first), more = failed[0], [n for n, _ in failed[1:]]
        others = f" (also {', '.join(more)})" if more else ""
        raise type(first)(f"{len(failed)} of {len(plan.runs)} runs failed{others}, so no summary was written; "
                          f"{name}: {first}. The other runs are finished: fix this and run the sweep again, it "
                          "skips them")
    return timings


def _summary(run: Planned, timings: dict) -> dict:
    """rundir's headline numbers, the drops of the last step and the run's wall time (None: not recorded)."""
    metrics = run.folder.metrics()
    summary = summary_of(metrics)
    summary.update({f"final_drop_{role}": float(metrics[role]["drop_rel"][-1]) for role in ("forget", "retain")})
    summary["wall_s"] = timings.get(run.name, {}).get("seconds")
    return summary

def _write_summary(plan: Sweep, summaries: dict) -> None:
    def cell(value):
        return " ".join(value) if isinstance(value, tuple) else value

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

