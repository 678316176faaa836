"""The inspection's part of a report: the checks, the logit lens and example generations of every run that
was inspected. Every text a model wrote, or a user named, is escaped before it enters the page."""

from __future__ import annotations

import html
import itertools
from pathlib import Path

from .. import atomic
from ..config import safe_name
from ..plots import figure, figure_html, png
from ..inspectdir import InspectFolder
from ..rundir import RunFolder
from .lens import verdict

EXAMPLES = 3  # prompts shown per prompt set
ROLE_COLORS = {"forget": "#d62728", "retain": "#1f77b4"}
WATCH_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
STEP_STYLES = ("--", ":", "-.")
CELL = 'style="white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px"'


def report_section(runs: list[dict], out_dir: Path) -> str:
    """HTML for every run in `runs` with a RUN/inspect/ ("" when none has one); lens plots go to out_dir."""
    parts = [_run_section(run, i, Path(out_dir)) for i, run in enumerate(runs)]
    parts = [p for p in parts if p]
    if not parts:
        return ""
    return ('<h2>What the model can still do after pruning or unlearning</h2>\n<p class="note">selprune inspect: '
            "what the original model and the model after the chosen steps (pruning steps, or the checkpoint an "
            "unlearning kept) write after held-out prompts, what the checks say of "
            "it, and top-1 after every block read through the model's own final norm and head (the logit "
            "lens).</p>\n" + "".join(parts))


def _run_section(run: dict, index: int, out_dir: Path) -> str:
    folder = InspectFolder(RunFolder(run["dir"]))
    checks = folder.table("checks.csv")
    if not checks:
        return ""
    steps = sorted({int(r["step"]) for r in checks})
    lens = folder.table("lens.csv")
    examples = folder.records()
    label = html.escape(run["label"])
    return (f'<h3><span class="swatch" style="background:{run["color"]}"></span>{label}</h3>\n'
            f"{_checks_table(checks, steps)}\n{_lens(lens, run['label'], index, out_dir)}\n"
            f"{_examples(examples, steps)}\n")


def _column(step: int) -> str:
    return "original" if step == 0 else f"after step {step}"


def _checks_table(rows: list[dict], steps: list[int]) -> str:
    values = {(r["set"], r["dataset"], r["check"], r["decoding"], int(r["step"])): r for r in rows}
    keys = list(dict.fromkeys(k[:4] for k in values))
    head = "<tr><th>Prompts</th><th>Check</th><th>Decoding</th>" + "".join(
        f"<th>{_column(s)}</th>" for s in steps) + "</tr>"
    body = []
    for key in keys:
        name, dataset, check, decoding = key
        about = next(values[(*key, s)]["about"] for s in steps if (*key, s) in values)
        cells = "".join(f"<td>{_number(values[(*key, s)]['value']) if (*key, s) in values else '—'}</td>"
                        for s in steps)
        body.append(f"<tr><td>{html.escape(name)} <small>{html.escape(dataset)}</small></td>"
                    f'<td title="{html.escape(about)}">{html.escape(check)}</td><td>{html.escape(decoding)}</td>'
                    f"{cells}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _number(text) -> str:
    try:
        return f"{float(text):.3g}"
    except (TypeError, ValueError):
        return html.escape(str(text))


def _lens(rows: list[dict], label: str, index: int, out_dir: Path) -> str:
    """The lens plot; the last block's top-1 (the model's own) per dataset and step; and per pruned step what
    the curve of each dataset that was not retained says: hidden, removed or kept."""
    if not rows:
        return ""
    curves: dict[tuple[int, str, str], list[float]] = {}
    for r in sorted(rows, key=lambda r: int(r["layer"])):
        curves.setdefault((int(r["step"]), r["role"], r["dataset"]), []).append(float(r["top1"]))
    datasets = list(dict.fromkeys((role, dataset) for _, role, dataset in curves))
    watched = itertools.cycle(WATCH_COLORS)
    colors = {d: ROLE_COLORS.get(d[0]) or next(watched) for d in datasets}
    fig = figure(7.0, 4.5)
    ax = fig.add_subplot()
    for (step, role, dataset), curve in sorted(curves.items()):
        style = "-" if step == 0 else STEP_STYLES[(step - 1) % len(STEP_STYLES)]
        ax.plot(range(1, len(curve) + 1), [100 * v for v in curve], linestyle=style, marker="o", markersize=2,
                color=colors[role, dataset], label=f"{role} ({dataset}), {_column(step)}")
    ax.set_title(f"{label}: logit lens")
    ax.set_xlabel("block (residual stream after it, read through the final norm and head)")
    ax.set_ylabel("top-1 next-token accuracy (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    image = png(fig)
    atomic.write_bytes(out_dir / f"inspect-lens-{index + 1}-{safe_name(label)}.png", image)
    steps = sorted({step for step, _, _ in curves})
    head = "<tr><th>Dataset</th>" + "".join(f"<th>{_column(s)}</th>" for s in steps) + "</tr>"
    body = "".join(f"<tr><td>{html.escape(role)} <small>{html.escape(dataset)}</small></td>" + "".join(
        f"<td>{100 * curves[s, role, dataset][-1]:.1f}%</td>" if (s, role, dataset) in curves else "<td>—</td>"
        for s in steps) + "</tr>" for role, dataset in datasets)
    findings = [f"<li>{html.escape(_column(step))}, {role} ({html.escape(dataset)}): "
                f"{html.escape(verdict(curves[0, role, dataset], curve)[1])}</li>"
                for (step, role, dataset), curve in sorted(curves.items())
                if step and role != "retain" and (0, role, dataset) in curves]
    return (f'<div class="grid">{figure_html(image, f"Logit lens: {label}")}</div>'
            f'<p class="note">Top-1 at the last block, the model\'s own, on the lens tokens:</p>'
            f"<table>{head}{body}</table>"
            f'<ul class="note">{"".join(findings)}</ul>')


def _examples(records: list[dict], steps: list[int]) -> str:
    """The first greedy prompts of each set: prompt | original | after each step, with each check's verdict."""
    table: dict[tuple[str, str], dict[int, dict[int, dict]]] = {}
    for r in records:
        if r["decoding"] == "greedy" and r["index"] < EXAMPLES:
            table.setdefault((r["set"], r["dataset"]), {}).setdefault(r["index"], {})[r["step"]] = r
    out = []
    for (name, dataset), prompts in table.items():
        head = "<tr><th>Prompt</th>" + "".join(f"<th>{_column(s)}</th>" for s in steps) + "</tr>"
        rows = []
        for _, by_step in sorted(prompts.items()):
            prompt = next(iter(by_step.values()))["prompt"]
            cells = "".join(_example_cell(by_step.get(s)) for s in steps)
            rows.append(f"<tr><td {CELL}>{html.escape(prompt)}</td>{cells}</tr>")
        out.append(f"<h4>Examples: {html.escape(name)} <small>{html.escape(dataset)}</small></h4>"
                   f"<table>{head}{''.join(rows)}</table>")
    return "".join(out)


def _example_cell(record: dict | None) -> str:
    if record is None:
        return "<td>—</td>"
    verdicts = "; ".join(f"{k}: {_number(v) if isinstance(v, float) else v}" for k, v in record["verdicts"].items())
    return f"<td {CELL}>{html.escape(record['continuation'])}<br><small>{html.escape(verdicts)}</small></td>"
