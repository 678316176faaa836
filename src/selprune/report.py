"""Plots and a self-contained HTML report of one or more pruning runs.

The headline numbers are accuracy drops relative to the unpruned model (step 0), in percent of the base
accuracy (docs/METHOD.md, "Headline metrics"); absolute drops in percentage points are shown beside them,
never instead. Everything comes from run folders, read through rundir.py.
"""

from __future__ import annotations

import html
import importlib
import json
import re
from pathlib import Path

import matplotlib
import numpy as np

from . import atomic
from .arch import GROUP_TABLE
from .config import safe_name
from .errors import UserError
from .plots import figure, figure_html, number, png
from .rundir import RunFolder
from .summary import summary_of
from .unlearn.settings import UnlearnConfig

# ---------------------------------------------------------------- plots


def _plot_drops(runs: list[dict], watched: bool = False) -> bytes:
    """Figure 1: forget drop against retain drop; with watched=True, against each watched dataset's drop."""
    fig = figure()
    ax = fig.add_subplot()
    ax.axline((0, 0), slope=1, color="0.6", linestyle=":", label="equal drop (not selective)")
    for run in runs:
        metrics = run["metrics"]
        forget = metrics["forget"]["drop_rel"]
        best = np.flatnonzero(metrics["step"] == run["summary"]["max_rel_diff_step"])[0]
        others = ({name: w["drop_rel"] for name, w in metrics["watch"].items()} if watched
                  else {"": metrics["retain"]["drop_rel"]})
        for (name, other), marker in zip(others.items(), "osD^v<>"):
            label = f"{run['label']}: {name}" if name else run["label"]
            ax.plot(other, forget, marker=marker, markersize=3, color=run["color"], label=label)
            ax.plot(other[best], forget[best], marker="o", markersize=10, fillstyle="none", color=run["color"])
    other = "watched dataset" if watched else "retain"
    ax.set_title(f"Forget vs {other} top-1 drop (circled: max forget - retain difference)")
    ax.set_xlabel(f"{other} top-1 drop (% of unpruned accuracy)")
    ax.set_ylabel("forget top-1 drop (% of unpruned accuracy)")
    ax.grid(alpha=0.3)
    ax.legend()
    return png(fig)


def _plot_perplexity(runs: list[dict]) -> bytes:
    fig = figure()
    ax = fig.add_subplot()
    for i, run in enumerate(runs):
        forget, retain = run["metrics"]["forget"]["perplexity"], run["metrics"]["retain"]["perplexity"]
        ax.plot(retain, forget, marker="o", markersize=3, color=run["color"], label=run["label"])
        ax.plot(retain[0], forget[0], marker="s", markersize=8, color="black", fillstyle="none",
                linestyle="none", label="unpruned (step 0)" if i == 0 else None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title("Forget vs retain perplexity")
    ax.set_xlabel("retain perplexity (log scale)")
    ax.set_ylabel("forget perplexity (log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return png(fig)


def _plot_accuracy(runs: list[dict]) -> bytes:
    fig = figure()
    ax = fig.add_subplot()
    for run in runs:
        x = run["metrics"]["step"] if run["unlearning"] else 100 * run["metrics"]["fraction_pruned"]
        series = [("forget", run["metrics"]["forget"], "-"), ("retain", run["metrics"]["retain"], "--"),
                  *((name, w, ":") for name, w in run["metrics"]["watch"].items())]
        for name, values, style in series:
            top1, se = 100 * values["top1"], values["drop_abs_se"]
            ax.plot(x, top1, linestyle=style, marker="o", markersize=3, color=run["color"],
                    label=f"{run['label']}: {name}")
            ax.fill_between(x, top1 - se, top1 + se, color=run["color"], alpha=0.15, linewidth=0)
    ax.set_title("Top-1 accuracy vs units pruned (solid: forget, dashed: retain, dotted: watched;\n"
                 "shaded: one standard error of the change since step 0)")
    kinds = {run["unlearning"] for run in runs}
    ax.set_xlabel({frozenset({False}): "neurons of the group pruned (%)", frozenset({True}): "unlearning step"}.get(
        frozenset(kinds), "neurons of the group pruned (%), or unlearning step"))
    ax.set_ylabel("top-1 next-token accuracy (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    return png(fig)


def _plot_neurons(run: dict) -> bytes:
    counts, unit = run["pruned"], run["unit"]
    layers, steps = counts.shape
    fig = figure(7.0, 4.0)
    ax = fig.add_subplot()
    image = ax.imshow(counts if steps else np.zeros((layers, 1)), aspect="auto", origin="lower", vmin=0,
                      interpolation="nearest", cmap="magma_r",
                      extent=(0.5, max(steps, 1) + 0.5, -0.5, layers - 0.5))
    fig.colorbar(image, ax=ax, label=f"{unit} pruned in the step")
    ax.set_title(f"{run['label']}: where the {counts.sum()} pruned {unit} are ({run['config'].group})")
    ax.set_xlabel("pruning step")
    ax.set_ylabel("layer")
    return png(fig)


# ---------------------------------------------------------------- the report


def _load_run(run_dir, color) -> dict:
    folder = RunFolder(run_dir)
    config = folder.read_config()
    metrics = folder.metrics()
    unlearning = isinstance(config, UnlearnConfig)  # fine-tuned (selprune unlearn): steps of training, no units
    return {
        "dir": folder.path,
        "label": config.name or folder.path.name,
        "config": config,
        "metrics": metrics,
        "summary": summary_of(metrics),
        "pruned": None if unlearning else _pruned_per_step(folder),
        "unit": "units" if unlearning or config.group not in GROUP_TABLE else GROUP_TABLE[config.group].units_word,
        "unlearning": unlearning,
        "color": color,
    }


def _pruned_per_step(folder: RunFolder) -> np.ndarray:
    """[layers, steps]: how many units each step newly pruned in each layer."""
    record = folder.record()
    steps = [entry["step"] for entry in record.steps]
    counts = np.zeros((record.layers, max(steps, default=0)), dtype=int)
    for step in steps:
        counts[:, step - 1] += record.mask_of(step).sum(1).numpy()
    return counts


def _table(runs: list[dict]) -> str:
    head = (
        "<tr><th>Run</th><th>Model</th><th>Group</th><th>Scorer</th><th>Forget</th><th>Retain</th>"
        "<th>Steps (pruned)</th><th>Base top-1 forget</th><th>Base top-1 retain</th>"
        "<th>Max forget&minus;retain drop<br>(% of base)</th><th>Same in<br>abs. points</th>"
        "<th>Forget drop at<br>the retain budget</th>"
        "<th>Area between<br>curves (%&times;frac.)</th>"
        "<th>Retain drop at<br>forget drop 50%</th><th>Retain drop at<br>forget drop 80%</th>"
        "<th>Watched datasets: drop at<br>the max difference (final)</th></tr>"
    )
    rows = []
    for run in runs:
        s, config = run["summary"], run["config"]
        crossing = s["retain_budget_crossing"]  # the steps interpolated between, or None: the last step's
        where = f"steps {crossing[0]}&ndash;{crossing[1]}" if crossing else "budget not reached"
        cells = [
            f'<span class="swatch" style="background:{run["color"]}"></span>{html.escape(run["label"])}',
            *(html.escape(str(value)) for value in ((config.model, "—", f"unlearn: {config.method}")
                                                    if run["unlearning"] else
                                                    (config.model, config.group, config.scorer))),
            html.escape(s["forget_dataset"]),
            html.escape(s["retain_dataset"]),
            f'{s["last_step"]} ({number(100 * s["fraction_pruned"], ".1f", "%")})',
            *(number(100 * s[f"base_top1_{role}"], ".1f", "%") + _precision(s[f"base_top1_{role}_se"])
              for role in ("forget", "retain")),
            f'<b>{number(s["max_rel_diff"], ".1f", "%")}</b> <small>step {s["max_rel_diff_step"]}</small>',
            f'{number(s["max_abs_diff"], ".1f", " pts")}{_precision(s["max_abs_diff_se"], 1)} '
            f'<small>step {s["max_abs_diff_step"]}</small>',
            f'<b>{number(s["forget_drop_at_retain_budget"], ".1f", "%")}</b> <small>at retain drop '
            f'&le; {s["retain_budget"]:g}%, {where}, {number(100 * s["fraction_at_retain_budget"], ".1f", "%")} '
            "pruned</small>",
            number(s["area_rel"], ".2f"),
            number(s["retain_drop_at_forget_50"], ".1f", "%"),
            number(s["retain_drop_at_forget_80"], ".1f", "%"),
            "<br>".join(f'{html.escape(name)}: {number(w["drop_at_max_rel_diff"], ".1f", "%")} '
                        f'({number(w["final_drop"], ".1f", "%")})' for name, w in s["watch"].items()) or "&mdash;",
        ]
        row = "".join(f"<td>{c}</td>" for c in cells)
        rows.append(f'<tr title="{html.escape(str(run["dir"]))}">{row}</tr>')
    return f"<table>{head}{''.join(rows)}</table>"


def _precision(se: float | None, points: float = 100) -> str:
    """A standard error across chunks in points beside its number (`points` per unit of `se`: 100 for a top-1's
    fraction); nothing where it is unknown."""
    return "" if se is None else f" <small>±{points * se:.1f}</small>"


CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0 auto;
       max-width: 1180px; padding: 24px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
p.note { color: #555; max-width: 80ch; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f6; font-weight: 600; } td small { color: #777; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 16px; }
figure { margin: 0; } figure img { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #666; font-size: 13px; }
"""


# Analyses that hang off a run folder (e.g. RUN/relearn/): each module renders its own report section with
# report_section(runs, out_dir) -> HTML ("" when none of the runs has it), writing its PNGs into out_dir.
ANALYSES: tuple[str, ...] = ("relearn", "inspection")


def _analyses(runs: list[dict], out_dir: Path) -> str:
    """The report sections of the analyses, for runs given as {"dir", "label", "color", ...} dicts."""
    modules = (importlib.import_module(f"selprune.{name}") for name in ANALYSES)
    return "".join(module.report_section(runs, out_dir) for module in modules)


def heatmap_name(position: int, label: str) -> str:
    """The file of a run's pruned-unit heatmap in a report: the run's place among its runs (from 1), its label."""
    return f"neurons-{position}-{safe_name(label)}.png"


def heatmap_label(file_name: str) -> str | None:
    """The label (as heatmap_name spells it) of the run whose heatmap a report's file is; None: not a heatmap."""
    found = re.fullmatch(r"neurons-\d+-(.+)\.png", file_name)
    return found[1] if found else None


def write_report(run_dirs: list, out_dir) -> Path:
    """Write the plots (PNG), summary.json and a self-contained report.html for the runs; return the HTML path.

    Several runs overlay their curves in the same plots; each run gets its own pruned-neuron heatmap.
    """
    if not run_dirs:
        raise UserError("no run directories given: name at least one run directory to report on")
    colors = matplotlib.colormaps["tab10"].colors
    runs = [_load_run(d, matplotlib.colors.to_hex(colors[i % len(colors)])) for i, d in enumerate(run_dirs)]
    labels = [run["label"] for run in runs]
    for i, run in enumerate(runs):
        if labels.count(run["label"]) > 1:
            run["label"] += f" ({i + 1})"

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {  # file name: (PNG, caption)
        "forget-vs-retain-drop.png": (
            _plot_drops(runs), "Figure 1: forget vs retain top-1 accuracy drop, relative to the unpruned model"),
        "perplexity.png": (_plot_perplexity(runs), "Figure 2: forget vs retain perplexity"),
        "accuracy-vs-pruned.png": (
            _plot_accuracy(runs), "Top-1 accuracy of every dataset against the share of units pruned"),
    }
    if any(run["metrics"]["watch"] for run in runs):
        plots["forget-vs-watched-drop.png"] = (_plot_drops(runs, watched=True), "Collateral damage: forget drop "
                                               "against each watched dataset's drop, relative to the unpruned model")
    heatmaps = {
        heatmap_name(i + 1, run["label"]): (
            _plot_neurons(run), f"Pruned {run['unit']} per layer and step: {run['label']}")
        for i, run in enumerate(runs) if run["pruned"] is not None
    }
    for name, (image, _) in {**plots, **heatmaps}.items():
        atomic.write_bytes(out_dir / name, image)

    summaries = [{"name": run["label"], "run_dir": str(run["dir"]), "summary": run["summary"]} for run in runs]
    atomic.write_bytes(out_dir / "summary.json", (json.dumps(summaries, indent=2) + "\n").encode())

    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>selprune report: {html.escape(", ".join(run["label"] for run in runs))}</title>
<style>{CSS}</style></head>
<body>
<h1>Selective pruning report</h1>
<p class="note">Drops are relative to the unpruned model (step 0), in percent of its top-1 accuracy; the headline
is the largest (forget drop &minus; retain drop) over the steps. Absolute drops in percentage points are shown beside
it but are not comparable when the two base accuracies differ. The area integrates (forget &minus; retain) relative
drop over the fraction of neurons pruned. &plusmn; gives a base top-1's standard error across its evaluation chunks,
in points.</p>
<h2>Summary</h2>
{_table(runs)}
<h2>Forget vs retain</h2>
<div class="grid">{"".join(figure_html(image, caption) for image, caption in plots.values())}</div>
<h2>Where the pruned neurons are</h2>
<div class="grid">{"".join(figure_html(image, caption) for image, caption in heatmaps.values())}</div>
{_analyses(runs, out_dir)}
</body></html>
"""
    report = out_dir / "report.html"
    atomic.write_bytes(report, page.encode())
    return report
