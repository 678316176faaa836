"""`selprune sweep GRID.toml`: a grid of ordinary runs that continues where it stopped, then its summary.

A grid file (sweeps/paper.toml holds the seed paper's experiments):

    [settings]             # any RunConfig key, shared by every run
    steps = 8
    [grid]                 # lists: every combination of their values is one run
    pairs = [["code", "prose"], ["python", "code"]]    # forget and retain, together
    seed = [0, 1]                                       # any RunConfig key
    variants = [{group = "ff", scorer = "abs"}, {group = "attn-value", scorer = "abs"}]   # listed, not a product
    [[compare]]            # an overlay report of the runs these variants select, for each pair and seed
    name = "groups"
    variants = [{group = "ff"}, {group = "attn-value"}]

The sweep's folder, runs/sweeps/<the grid file's name> by default:

    SWEEP/<run>/                    one ordinary run folder per combination, named from the pair and the
                                    grid's values (code-vs-prose-seed0-ff-abs); a finished run is skipped, a
                                    partial one resumed, so an interrupted sweep continues when run again;
                                    a run that fails does not stop the others
    SWEEP/timings.json              each run's wall time and the tokens it read (--dry-run's estimates)
    SWEEP/summary.csv, summary.md   every run's headline numbers and wall time
    SWEEP/compare/<pair>/<name>/    the overlay reports of each [[compare]] (<pair>: code-vs-prose-seed0,
                                    with the values of the grid's other varying keys that it leaves out)
    SWEEP/.lock                     held by the sweep running in the folder (rundir's lock)

With --results FILE.md the tables between this sweep's markers in FILE.md are rewritten, nothing else:

    <!-- sweep: paper table: runs code-vs-prose -->
    ...
    <!-- /sweep -->

The tables (TABLES): overview (the max forget - retain drop, pairs x variants), cost (wall times, the same
layout), runs PAIR (every headline number of the pair's runs), plots PAIR (the comparisons' plots, which
are copied to results/PAIR/NAME/ beside FILE.md).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import platform
import re
import shutil
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import atomic
from .config import RunConfig, flag, read_toml, safe_name
from .errors import OutOfMemory, UserError
from .plots import number
from .rundir import RETAIN_BUDGET, RunFolder, csv_text, summary_of
from .scorers import SCORERS

SECTIONS = ("compare", "grid", "settings")
COMPARE_KEYS = ("name", "variants")
GRID_LISTS = ("pairs", "variants")  # the [grid] keys that are not settings
BY_THE_SWEEP = ("name", "output")  # each run's folder is the sweep's to choose
TABLES = {"overview": 0, "cost": 0, "runs": 1, "plots": 1}  # the tables a marker can ask for: how many arguments
OPEN = re.compile(r"<!-- sweep: (\S+) table: (.*?) -->")
CLOSE = "<!-- /sweep -->"
HEATMAP = re.compile(r"neurons-\d+-(.+)\.png")  # report.py's heatmap of one run, by its label
TIMINGS = "timings.json"
SUMMARY_COLUMNS = ("last_step", "fraction_pruned", "base_top1_forget", "base_top1_retain", "max_rel_diff",
                   "max_rel_diff_step", "forget_drop_at_retain_budget", "fraction_at_retain_budget", "max_abs_diff",
                   "max_abs_diff_step", "area_rel", "final_drop_forget", "final_drop_retain",
                   "retain_drop_at_forget_50", "retain_drop_at_forget_80", "final_perplexity_forget",
                   "final_perplexity_retain", "wall_s")


# ---------------------------------------------------------------- the grid


@dataclass
class Planned:
    """One run of the grid: its folder's name, its settings, and the values of the grid's keys that made it."""

    name: str
    config: RunConfig
    values: dict

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.config.output_dir)

    @property
    def pair(self) -> str:
        return run_name(self.config, ())

    @property
    def label(self) -> str:
        """The run within its pair, for tables: "ff abs"."""
        return " ".join(_part(key, value) for key, value in self.values.items()) or "run"


@dataclass
class Compare:
    """A [[compare]]: the runs its variants select are overlaid in one report for each pair."""

    name: str
    selectors: list[dict]

    def groups(self, runs: list[Planned], keys: list[str]) -> dict[str, list[Planned]]:
        """{pair, with the values of the other keys that vary (seed0): the runs to overlay, selector by selector}."""
        named = {key for selector in self.selectors for key in selector}
        rest = [key for key in keys if key not in named and len({run.values[key] for run in runs}) > 1]
        groups: dict[str, list[Planned]] = {}
        for selector in self.selectors:
            for run in runs:
                if _matches(run, selector):
                    group = groups.setdefault(run_name(run.config, rest), [])
                    if run not in group:
                        group.append(run)
        return groups


@dataclass
class Sweep:
    grid: Path
    folder: Path
    keys: list[str]  # the grid's keys that name the runs (forget and retain name every run), in the file's order
    runs: list[Planned]
    compares: list[Compare]

    @property
    def name(self) -> str:
        """What the markers of a results file call this sweep: the grid file's name."""
        return self.grid.stem

    def pairs(self) -> dict[str, list[Planned]]:
        pairs: dict[str, list[Planned]] = {}
        for run in self.runs:
            pairs.setdefault(run.pair, []).append(run)
        return pairs

    def comparisons(self) -> dict[str, dict[str, list[Planned]]]:
        """{pair (with the values no selector names): {comparison: the runs to overlay}}, in the file's order."""
        out: dict[str, dict[str, list[Planned]]] = {}
        for compare in self.compares:
            for group, runs in compare.groups(self.runs, self.keys).items():
                out.setdefault(group, {})[compare.name] = runs
        return out


def run_name(config: RunConfig, keys) -> str:
    """A run's folder name: its pair, then its values of `keys` (code-vs-prose-ff-abs)."""
    parts = [f"{config.forget}-vs-{config.retain}", *(_part(key, getattr(config, key)) for key in keys)]
    return safe_name("-".join(parts))


def _part(key: str, value) -> str:
    """A value in a run's name: a word as it is (ff), a number or switch with its key (seed1, no-compile)."""
    word = flag(key)[2:]
    if value is None:
        return f"{word}-default"
    if isinstance(value, bool):
        return word if value else f"no-{word}"
    if isinstance(value, (int, float)):
        return f"{word}{value!r}"
    if isinstance(value, tuple):
        return f"{word}-{'+'.join(value) or 'none'}"
    return value


def load(grid, output=None) -> Sweep:
    """The sweep a grid file describes, every run's settings checked (RunConfig.validate): nothing is run."""
    path = Path(grid)
    where = f"grid file {path}"
    data = read_toml(path, "grid file", "such as sweeps/paper.toml")
    _known(data, SECTIONS, where)
    settings, grid_lists, entries = data.get("settings", {}), data.get("grid", {}), data.get("compare", [])
    if not (isinstance(settings, dict) and isinstance(grid_lists, dict)):
        raise UserError(f"{where}: settings and grid should be tables, [settings] and [grid]")
    if not (isinstance(entries, list) and all(isinstance(entry, dict) for entry in entries)):
        raise UserError(f"{where}: compare should be tables, each headed [[compare]]")
    base = RunConfig.from_dict(_typed(settings, f"{where} [settings]"))
    axes, keys = _axes(grid_lists, f"{where} [grid]")
    if not axes:
        raise UserError(f"{where} names no run: give [grid] lists, e.g. pairs = [[\"code\", \"prose\"]] (sweeps/"
                        "paper.toml shows the format)")
    folder = Path(output) if output else Path("runs", "sweeps", path.stem)
    runs = []
    for combination in itertools.product(*axes):
        config = dataclasses.replace(base, **{k: v for point in combination for k, v in point.items()})
        name = run_name(config, keys)
        config = dataclasses.replace(config, output=str(folder / name))
        try:
            config.validate()
        except UserError as exc:
            raise UserError(f"{where}: run {name}: {exc}") from None
        runs.append(Planned(name, config, {key: getattr(config, key) for key in keys}))
    twice = [name for name, count in Counter(run.name for run in runs).items() if count > 1]
    if twice:
        raise UserError(f"{where}: several runs would share the folder {twice[0]}: give them different values")
    return Sweep(path, folder, keys, runs, _compares(entries, runs, keys, where))


def _known(data: dict, valid, where: str) -> None:
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}: valid keys are {', '.join(valid)}")


def _toml(value) -> str:
    return json.dumps(value, default=str)


def _typed(values: dict, where: str) -> dict:
    """values, type-checked as RunConfig's settings (a whole number where a number goes becomes a float)."""
    taken = sorted(set(values) & set(BY_THE_SWEEP))
    if taken:
        raise UserError(f"{where}: {', '.join(taken)} cannot be set in a grid file: the sweep names each run's "
                        "folder after its settings (give the sweep's folder with --output)")
    config = RunConfig.from_dict(values, source=where)
    return {key: getattr(config, key) for key in values}


def _axes(grid: dict, where: str) -> tuple[list[list[dict]], list[str]]:
    """Each of the grid's lists as the settings its values give, and the keys that name the runs."""
    settings = RunConfig.field_types()
    axes, given_by = [], {}
    for key, values in grid.items():
        if key not in GRID_LISTS and key not in settings:
            raise UserError(f"{where}: unknown key {key}: use pairs, variants or a setting's key "
                            f"({', '.join(sorted(settings))})")
        if not isinstance(values, list):
            raise UserError(f"{where}: {key} = {_toml(values)} should be a list of values, e.g. "
                            f"{key} = [{_toml(values)}]")
        if not values:
            raise UserError(f"{where}: {key} is an empty list: give at least one value, or leave {key} out")
        if key == "pairs":
            points = [_pair(value, where) for value in values]
        elif key == "variants":
            points = [_variant(value, where) for value in values]
        else:
            points = [_typed({key: value}, where) for value in values]
        for setting in dict.fromkeys(k for point in points for k in point):
            if setting in given_by:
                raise UserError(f"{where}: {setting} is given by both {given_by[setting]} and {key}: give it in "
                                "one place")
            given_by[setting] = key
        axes.append(points)
    return axes, [key for key in given_by if key not in ("forget", "retain")]


def _pair(value, where: str) -> dict:
    if not (isinstance(value, list) and len(value) == 2):
        raise UserError(f'{where}: pairs: {_toml(value)} should be [forget, retain], e.g. ["code", "prose"]')
    return _typed({"forget": value[0], "retain": value[1]}, f"{where} pairs")


def _variant(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f'{where}: variants: {_toml(value)} should be a table of settings, e.g. '
                        '{group = "ff", scorer = "abs"}')
    return _typed(value, f"{where} variants")


def _matches(run: Planned, selector: dict) -> bool:
    return all(run.values[key] == value for key, value in selector.items())


def _compares(entries: list[dict], runs: list[Planned], keys: list[str], where: str) -> list[Compare]:
    compares: list[Compare] = []
    for entry in entries:
        _known(entry, COMPARE_KEYS, f"{where} [[compare]]")
        name, selectors = entry.get("name"), entry.get("variants")
        if not isinstance(name, str) or not name or safe_name(name) != name or name.startswith("."):
            raise UserError(f"{where} [[compare]]: name = {_toml(name)} should be a plain folder name: letters, "
                            "digits, '-', '_' and '.'")
        if any(compare.name == name for compare in compares):
            raise UserError(f"{where}: two [[compare]] are named {name}: give each its own name")
        here = f"{where} [[compare]] {name}"
        if not (isinstance(selectors, list) and selectors and all(isinstance(s, dict) and s for s in selectors)):
            raise UserError(f'{here}: variants should be a list of tables that select runs, e.g. '
                            '[{scorer = "abs"}, {scorer = "random"}]')
        typed = []
        for selector in selectors:
            other = sorted(set(selector) - set(keys))
            if other:
                raise UserError(f"{here}: {', '.join(other)} is not a key the grid varies (it varies "
                                f"{', '.join(keys) or 'nothing but the pairs'})")
            typed.append(_typed(selector, here))
            if not any(_matches(run, typed[-1]) for run in runs):
                described = ", ".join(f"{key} = {_toml(value)}" for key, value in selector.items())
                raise UserError(f"{here}: no run of the grid has {described}: compare variants the grid makes")
        compares.append(Compare(name, typed))
    return compares


# ---------------------------------------------------------------- the runs


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


def duration(seconds: float) -> str:
    minutes, sec = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {sec:02d} s" if minutes else f"{sec} s"


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
                _fresh(plan.folder / "compare" / group / name, _report, runs)
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
    from .run import run as run_one

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


def _fresh(out: Path, fill, *args) -> None:
    """Make the folder `out` anew: fill(folder, *args) writes a folder beside it, which then replaces it."""
    with atomic.staged_folder(out) as tmp:
        fill(tmp, *args)


def _report(out: Path, runs: list[Planned]) -> None:
    from .report import write_report

    write_report([run.folder.path for run in runs], out)


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


# ---------------------------------------------------------------- tables


def _pct(value) -> str:
    return number(value, ".1f", "%")


def _ppl(value) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _by_pair(plan: Sweep, cell) -> list[str]:
    """A table of pairs x variants; cell(run, the pair's runs) gives a cell's text and whether it is bold."""
    labels = list(dict.fromkeys(run.label for run in plan.runs))
    lines = ["| pair (forget / retain) | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for runs in plan.pairs().values():
        cells = {run.label: cell(run, runs) for run in runs}
        texts = [(f"**{cells[label][0]}**" if cells[label][1] else cells[label][0]) if label in cells else "—"
                 for label in labels]
        lines.append(f"| {runs[0].config.forget} / {runs[0].config.retain} | " + " | ".join(texts) + " |")
    return lines


def overview_table(plan: Sweep, summaries: dict) -> list[str]:
    def value(run):
        found = summaries[run.name]["max_rel_diff"]
        return found if math.isfinite(found) else -math.inf

    def cell(run, runs):
        return _pct(summaries[run.name]["max_rel_diff"]), value(run) == max(map(value, runs))

    note = ("Bold: the best variant of the pair. 0.0% means the forget drop never exceeded the retain drop (the "
            "maximum is then step 0, where both are 0).")
    return [*_by_pair(plan, cell), "", note]


def cost_table(plan: Sweep, summaries: dict) -> list[str]:
    times = [s["wall_s"] for s in summaries.values() if s["wall_s"] is not None]
    if not times:
        return ["No wall times recorded."]

    def cell(run, runs):
        seconds = summaries[run.name]["wall_s"]
        return ("—" if seconds is None else duration(seconds)), False

    note = (f"{len(times)} runs timed: {duration(sum(times))} of run time in all, {duration(min(times))} to "
            f"{duration(max(times))} a run (median {duration(statistics.median(times))}). Each time is the wall "
            "time of the sessions that finished the run, loading the model included; an interrupted session's time "
            "is not counted.")
    return [*_by_pair(plan, cell), "", note]


def runs_table(plan: Sweep, summaries: dict, pair: str) -> list[str]:
    budget = f"{RETAIN_BUDGET:g}%"
    head = (f"| variant | base top-1 forget / retain | **max rel. diff** (step) | forget drop at retain drop ≤ "
            f"{budget} (pruned) | max abs. diff, pts (step) | area (rel.) | forget / retain drop at the last step "
            "| retain drop when forget drop ≥ 50% / ≥ 80% | final ppl forget / retain | wall time |")
    lines = [head, "|---" * 10 + "|"]
    for run in plan.pairs()[pair]:
        x = summaries[run.name]
        lines.append(
            f"| {run.label} | {_pct(100 * x['base_top1_forget'])} / {_pct(100 * x['base_top1_retain'])} "
            f"| **{_pct(x['max_rel_diff'])}** ({x['max_rel_diff_step']}) "
            f"| {_pct(x['forget_drop_at_retain_budget'])} ({_pct(100 * x['fraction_at_retain_budget'])}) "
            f"| {number(x['max_abs_diff'], '.1f')} ({x['max_abs_diff_step']}) | {number(x['area_rel'], '.2f')} "
            f"| {_pct(x['final_drop_forget'])} / {_pct(x['final_drop_retain'])} "
            f"| {_pct(x['retain_drop_at_forget_50'])} / {_pct(x['retain_drop_at_forget_80'])} "
            f"| {_ppl(x['final_perplexity_forget'])} / {_ppl(x['final_perplexity_retain'])} "
            f"| {'—' if x['wall_s'] is None else duration(x['wall_s'])} |")
    note = ("Drops are relative to step 0 in % of the base accuracy; \"max abs. diff\" is the same difference in "
            f"percentage points. The forget drop at retain drop ≤ {budget} is interpolated between the two steps "
            f"around the crossing, with the share of units pruned there (the last step's if the retain drop stays "
            f"within {budget}). \"—\": the forget drop never reached that level; a maximum of 0.0% at step 0: the "
            "forget drop never exceeded the retain drop. Drops and perplexities \"at the last step\" are those of "
            "the last step evaluated.")
    return [*lines, "", note]


def plots_table(plan: Sweep, group: str, root: Path, link: str) -> list[str]:
    """Each comparison's Figure 1 and links to all its plots, from root/<group>/<name>/, as `link`/<group>/..."""
    names = [name for name in plan.comparisons().get(group, {}) if (root / group / name).is_dir()]
    if not names:
        return ["No comparison plots yet."]
    title = group.replace("-vs-", " vs ")
    lines = []
    for name in names:
        lines += [f"![{title}: {name}]({link}/{group}/{name}/forget-vs-retain-drop.png)", ""]
    lines += ["All plots (perplexity, accuracy against units pruned, pruned units per layer):", ""]
    for name in names:
        pngs = sorted(p.name for p in (root / group / name).glob("*.png"))
        lines.append(f"- `{name}`: " + ", ".join(f"[{p[:-4]}]({link}/{group}/{name}/{p})" for p in pngs))
    return lines


@dataclass
class Block:
    """A marked table of a results file: its lines are start (the opening marker) to end (the closing one)."""

    start: int
    end: int
    sweep: str
    kind: str
    args: list[str]


class Document:
    """A Markdown file (docs/RESULTS.md) whose tables between this sweep's markers are generated; its prose, and
    other sweeps' tables, are kept as they are."""

    def __init__(self, path: Path, plan: Sweep):
        self.path, self.plan = path, plan
        self.blocks()  # checked now, before any run

    def _lines(self) -> list[str]:
        try:
            return self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        except FileNotFoundError:
            raise UserError(f"results file {self.path} does not exist: give a Markdown file with this sweep's "
                            f"markers, e.g. <!-- sweep: {self.plan.name} table: overview --> and {CLOSE}") from None
        except UnicodeDecodeError:
            raise UserError(f"results file {self.path} is not UTF-8 text: save it as UTF-8") from None

    def blocks(self) -> tuple[list[str], list[Block]]:
        """The file's lines and this sweep's marked tables, each checked: a known table of a pair it has."""
        lines, blocks, opened = self._lines(), [], None
        for i, line in enumerate(lines):
            where = f"{self.path} line {i + 1}"
            marker = OPEN.fullmatch(line.strip())
            if marker or line.strip() == CLOSE:
                if bool(marker) == (opened is not None):
                    raise UserError(f"{where}: " + (f"a sweep table opens inside the one of line {opened.start + 1}"
                                                    if marker else f"{CLOSE} closes no table") +
                                    f": each <!-- sweep: ... --> needs its own {CLOSE} after it")
                if marker:
                    kind, *args = marker[2].split() or [""]
                    opened = Block(i, -1, marker[1], kind, args)
                else:
                    opened.end = i
                    blocks.append(opened)
                    opened = None
            elif line.lstrip().startswith("<!-- sweep"):
                raise UserError(f"{where}: not a sweep marker: write <!-- sweep: NAME table: KIND -->")
        if opened is not None:
            raise UserError(f"{self.path} line {opened.start + 1}: the sweep table is never closed: add {CLOSE}")
        mine = [block for block in blocks if block.sweep == self.plan.name]
        if not mine:
            raise UserError(f"{self.path} has no table of the sweep {self.plan.name}: mark where one goes with "
                            f"<!-- sweep: {self.plan.name} table: overview --> and {CLOSE} on a later line")
        groups = {"runs": list(self.plan.pairs()), "plots": list(self.plan.comparisons())}
        for block in mine:
            where = f"{self.path} line {block.start + 1}"
            if TABLES.get(block.kind) != len(block.args):
                raise UserError(f"{where}: unknown table {' '.join([block.kind, *block.args])!r}: use overview, "
                                "cost, runs PAIR or plots PAIR")
            if block.args and block.args[0] not in groups[block.kind]:
                raise UserError(f"{where}: the sweep {self.plan.name} has no {block.kind} for {block.args[0]}: it "
                                f"has {', '.join(groups[block.kind]) or 'none'}")
        return lines, mine

    def write(self, summaries: dict) -> Path:
        """Copy the comparisons' plots to results/ beside the file, then rewrite the marked tables (the file is
        read again: its prose may have changed while the runs ran). Returns the plots' folder."""
        plots = self.path.parent / "results"
        for group, compares in self.plan.comparisons().items():
            shown: set[str] = set()
            for name in compares:
                _fresh(plots / group / name, _copy_plots, self.plan.folder / "compare" / group / name, shown)
        lines, blocks = self.blocks()
        text, last = [], 0
        for block in blocks:
            table = self._table(block, summaries, plots)
            text += [*lines[last:block.start + 1], "\n", *(line + "\n" for line in table), "\n"]
            last = block.end
        atomic.write_text(self.path, "".join(text + lines[last:]))
        return plots

    def _table(self, block: Block, summaries: dict, plots: Path) -> list[str]:
        if block.kind == "overview":
            return overview_table(self.plan, summaries)
        if block.kind == "cost":
            return cost_table(self.plan, summaries)
        if block.kind == "runs":
            return runs_table(self.plan, summaries, block.args[0])
        return plots_table(self.plan, block.args[0], plots, os.path.relpath(plots, self.path.parent))


def _copy_plots(out: Path, source: Path, shown: set[str]) -> None:
    """A comparison's PNGs and summary.json (not report.html, whose images are inline); a run's heatmap only
    in the first comparison of the pair that shows it. `shown` collects the runs whose heatmaps were copied."""
    out.mkdir()
    heatmaps = set()
    for path in sorted(source.iterdir()):
        heatmap = HEATMAP.fullmatch(path.name)
        if path.name == "summary.json" or (path.suffix == ".png" and not (heatmap and heatmap[1] in shown)):
            shutil.copyfile(path, out / path.name)
        if heatmap:
            heatmaps.add(heatmap[1])
    shown |= heatmaps
