"""A sweep's tables (its summary.md's, and those of a results file), and the results file they are written into.

With --results FILE.md the tables between this sweep's markers in FILE.md are rewritten, nothing else:

    <!-- sweep: paper table: runs code-vs-prose -->
    ...
    <!-- /sweep -->

The tables (TABLES): overview (the max forget - retain drop, pairs x variants), cost (wall times, the same
layout), runs PAIR (every headline number of the pair's runs), plots PAIR (the comparisons' plots, which
are copied to results/PAIR/NAME/ beside FILE.md).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

from .. import atomic
from ..errors import UserError
from ..plots import number
from ..report import heatmap_label
from ..summary import RETAIN_BUDGET
from .grid import Sweep

TABLES = {"overview": 0, "cost": 0, "runs": 1, "plots": 1}  # the tables a marker can ask for: how many arguments
OPEN = re.compile(r"<!-- sweep: (\S+) table: (.*?) -->")
CLOSE = "<!-- /sweep -->"


def duration(seconds: float) -> str:
    minutes, sec = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {sec:02d} s" if minutes else f"{sec} s"


def _pct(value) -> str:
    return number(value, ".1f", "%")


def _plus_minus(se) -> str:
    """A standard error in points after its number; nothing where it is unknown (a folder made before it)."""
    return "" if se is None else f" ±{se:.1f}"


def _share(fraction) -> str:
    """A share of units pruned, in percent; a dash for an unlearning, which prunes none."""
    return _pct(None if fraction is None else 100 * fraction)


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
            f"| {_pct(x['forget_drop_at_retain_budget'])} ({_share(x['fraction_at_retain_budget'])}) "
            f"| {number(x['max_abs_diff'], '.1f')}{_plus_minus(x['max_abs_diff_se'])} ({x['max_abs_diff_step']}) "
            f"| {number(x['area_rel'], '.2f')} "
            f"| {_pct(x['final_drop_forget'])} / {_pct(x['final_drop_retain'])} "
            f"| {_pct(x['retain_drop_at_forget_50'])} / {_pct(x['retain_drop_at_forget_80'])} "
            f"| {_ppl(x['final_perplexity_forget'])} / {_ppl(x['final_perplexity_retain'])} "
            f"| {'—' if x['wall_s'] is None else duration(x['wall_s'])} |")
    note = ("Drops are relative to step 0 in % of the base accuracy; \"max abs. diff\" is the same difference in "
            "percentage points, ± its standard error across the evaluation chunks. The forget drop at retain drop "
            f"≤ {budget} is interpolated between the two steps around the crossing, with the share of units pruned "
            f"there (the last step's if the retain drop stays within {budget}). \"—\": the forget drop never "
            "reached that level; a maximum of 0.0% at step 0: the forget drop never exceeded the retain drop. "
            "Drops and perplexities \"at the last step\" are those of the last step evaluated.")
    if any(run.unlearning for run in plan.pairs()[pair]):
        note += (" An unlearning's steps are its optimiser steps (selprune unlearn; the numbers are those of the "
                 "learning rate it kept), and it prunes no units: \"—\" for the share pruned and the area over it.")
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
                with atomic.staged_folder(plots / group / name) as out:
                    _copy_plots(out, self.plan.folder / "compare" / group / name, shown)
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
        run = heatmap_label(path.name)  # None: not a run's heatmap
        if path.name == "summary.json" or (path.suffix == ".png" and run not in shown):
            shutil.copyfile(path, out / path.name)
        if run is not None:
            heatmaps.add(run)
    shown |= heatmaps
