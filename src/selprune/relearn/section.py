"""The relearning attack's part of a report: per analysis, the forget top-1 curves while fine-tuning and a
table of how much of the forget gap came back and how fast (report.ANALYSES)."""

from __future__ import annotations

import html
from pathlib import Path

from .. import atomic
from ..config import safe_name
from ..plots import figure, figure_html, number, png
from .results import (ANAMNESIS, anamnesis_text, lr_text, relearn_folders, settings_of, share_difference,
                      share_text, summarize_relearn)


def report_section(runs: list[dict], out_dir: Path) -> str:
    """Recovery curves and the headline table of every relearning analysis of the runs ("" if none)."""
    parts = []
    for run in runs:
        for results in relearn_folders(run["dir"]):
            summaries = summarize_relearn(results.rows())
            settings = settings_of(results)
            attacks = sorted({s["attack"] for s in summaries})
            crowded = len(summaries) > 8 * len(attacks)  # then the legend goes beside the curves, not over them
            fig = figure((7.5 if crowded else 5.0) * len(attacks), 4.2)
            legend = dict(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5)) if crowded else dict(fontsize=8)
            for i, attack in enumerate(attacks):
                ax = fig.add_subplot(1, len(attacks), i + 1)
                others = 0  # past the 10 colours of the cycle, the curves are dotted
                for s in (s for s in summaries if s["attack"] == attack):
                    if s["model"] == "base":
                        style = dict(color="black", linestyle="--")
                    else:
                        style, others = dict(linestyle="-" if others < 10 else ":"), others + 1
                    ax.plot(s["steps"], [100 * v for v in s["forget_top1"]], marker="o", markersize=3,
                            label=f"{s['model']} (lr {lr_text(s)})", **style)
                ax.set_xscale("symlog", linthresh=1)
                ax.set_title(f"attack: {attack}")
                ax.set_xlabel("fine-tuning steps")
                ax.set_ylabel("forget top-1 (%)")
                ax.grid(alpha=0.3)
                ax.legend(**legend)
            image = png(fig)
            atomic.write_bytes(out_dir / safe_name(f"relearn-{run['label']}-{results.path.name}.png"), image)
            attacked = (f"the unlearned model (the checkpoint it kept, step {settings.step})" if run["unlearning"]
                        else f"the model after step {settings.step or '(last)'}")
            caption = (f"{run['label']}: forget top-1 while fine-tuning {attacked} ({settings.optimizer}, "
                       f"{settings.batch_size} x {settings.chunk_len} tokens a step)")
            parts.append(figure_html(image, caption) + _relearn_table(summaries))
    if not parts:
        return ""
    return ("<h2>Relearning: removed or hidden?</h2><p class=\"note\">Recovered share = (top-1 after t steps "
            "&minus; top-1 before) / (the unpruned model's top-1 &minus; top-1 before): 0% means nothing came back, "
            "100% the unpruned model's accuracy; &plusmn; its standard error across the evaluation's chunks (the "
            "three top-1s paired on the same chunks; not the attack's own randomness). Pruned weights still 0: "
            "&mdash; for a model that pruned nothing (the unpruned model, an unlearning).</p>" + "".join(parts))


def _percent_change(values: list[float]) -> str:
    """First and last of a curve of accuracies, in percent: "12.0% &rarr; 30.5%"."""
    return f"{number(100 * values[0], '.1f', '%')} &rarr; {number(100 * values[-1], '.1f', '%')}"


def _relearn_table(summaries: list[dict]) -> str:
    head = ("<tr><th>Attack</th><th>Model</th><th>lr (the best at each step)</th><th>Forget top-1</th>"
            "<th>Recovered share (steps: share)</th><th>Steps to 50% / 90%</th><th>Anamnesis index<br>(steps to "
            f"forget top-1 within {100 * ANAMNESIS:g}%<br>of the unpruned model's)</th><th>Retain top-1</th>"
            "<th>Share minus the random control's<br>at the last step (points, paired)</th>"
            "<th>Pruned weights still 0</th></tr>")
    rows = []
    random = {s["attack"]: s for s in summaries if s["model"] == "random"}
    for s in summaries:
        against = random.get(s["attack"])
        difference = None if against is None or against is s else share_difference(s, against, s["steps"][-1])
        shares = ", ".join(f"{step}: {share_text(s, i)}" for i, step in enumerate(s["steps"])
                           if s["recovered"][i] is not None and step)
        cells = [html.escape(s["attack"]), html.escape(s["model"]), lr_text(s), _percent_change(s["forget_top1"]),
                 shares or "&mdash;",
                 " / ".join("&mdash;" if n is None else str(n) for n in (s["steps_to_50"], s["steps_to_90"])),
                 html.escape(anamnesis_text(s)), _percent_change(s["retain_top1"]),
                 "&mdash;" if difference is None else f"{100 * difference[0]:+.0f} &plusmn;{100 * difference[1]:.0f}",
                 {True: "yes", False: "no", None: "&mdash;"}[s["pruned_zero"]]]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"
