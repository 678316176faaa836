"""The seed paper's experiments at small scale on the embedded model, and docs/RESULTS.md from their results.

    .venv/bin/python scripts/experiments.py                # run what is missing, then write the reports
    .venv/bin/python scripts/experiments.py --report-only  # only rewrite docs/results/ and docs/RESULTS.md

Every run uses one fixed CPU budget (BUDGET). Runs go into runs/experiments/<name>: a finished run is
skipped, a partial one resumed. For each forget/retain pair, three overlaid comparisons go into
docs/results/<pair>/<comparison>/ (PNGs and summary.json only), and docs/RESULTS.md is generated from
summarize() of the run folders: no number in it is typed by hand, except the paper's own Table 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from selprune.rundir import RunFolder, summarize

ROOT = Path(__file__).resolve().parent.parent
# docs/RESULTS.md from this line on is written by hand (relearning, inspection) and kept as it is.
HAND_WRITTEN = "<!-- written by hand from here on: scripts/experiments.py keeps it -->\n"
RUNS = Path("runs/experiments")  # relative to ROOT (the script chdirs there)
DOCS = Path("docs")
RESULTS = DOCS / "results"
TIMINGS = RUNS / "timings.json"

BUDGET = dict(steps=8, fraction=0.025, score_tokens=4096, eval_tokens=4096, chunk_len=512, seed=0)
PAIRS = [("code", "prose"), ("prose", "code"), ("python", "code"), ("german", "english")]
VARIANTS = [  # (group, scorer)
    ("ff", "abs"), ("ff", "random"), ("attn-value", "abs"), ("attn-preout", "abs"), ("attn-head", "abs"),
    ("ff", "freq"), ("ff", "rms"), ("ff", "std"),
]
COMPARISONS = {
    "selective-vs-random": [("ff", "abs"), ("ff", "random")],
    "groups": [("ff", "abs"), ("attn-value", "abs"), ("attn-preout", "abs"), ("attn-head", "abs")],
    "scorers": [("ff", "abs"), ("ff", "freq"), ("ff", "rms"), ("ff", "std")],
}
# The seed paper's Table 2: largest difference in top-1 accuracy drop, Code vs Pile, 50 steps x 2%.
PAPER_TABLE2 = {  # model: (feed-forward, attention value neurons)
    "OPT-1.3B": (59.6, 28.4), "Galactica-1.3B": (52.4, 41.7), "Pythia-1.4B": (46.2, 46.6), "RoBERTa-355M": (58.3, 41.5),
}


def pair_name(forget: str, retain: str) -> str:
    return f"{forget}-vs-{retain}"


def run_name(forget: str, retain: str, group: str, scorer: str) -> str:
    return f"{pair_name(forget, retain)}-{group}-{scorer}"


def run_dir(forget: str, retain: str, group: str, scorer: str) -> Path:
    return RUNS / run_name(forget, retain, group, scorer)


def config_for(forget: str, retain: str, group: str, scorer: str):
    from selprune.config import RunConfig

    return RunConfig(forget=forget, retain=retain, group=group, scorer=scorer,
                     output=str(run_dir(forget, retain, group, scorer)), **BUDGET)


def cli_command(forget: str, retain: str, group: str, scorer: str) -> str:
    b = BUDGET
    return (f".venv/bin/selprune run --forget {forget} --retain {retain} --group {group} --scorer {scorer} "
            f"--steps {b['steps']} --fraction {b['fraction']} --score-tokens {b['score_tokens']} "
            f"--eval-tokens {b['eval_tokens']} --chunk-len {b['chunk_len']} --seed {b['seed']} "
            f"--output {run_dir(forget, retain, group, scorer)}")


def completed_step(folder: Path) -> int:
    return RunFolder(folder).completed_step()


def load_timings() -> dict:
    if TIMINGS.is_file():
        return json.loads(TIMINGS.read_text())
    return {"runs": {}}


def save_timings(timings: dict) -> None:
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    tmp = TIMINGS.with_suffix(".json.partial")
    tmp.write_text(json.dumps(timings, indent=2) + "\n")
    os.replace(tmp, TIMINGS)


# ---------------------------------------------------------------- the runs


def run_all() -> list[str]:
    """Run every missing (pair, variant); return the names of runs that failed."""
    from selprune.run import run

    timings = load_timings()
    jobs = [(f, r, g, s) for f, r in PAIRS for g, s in VARIANTS]
    failed = []
    t_all = time.perf_counter()
    for i, (f, r, g, s) in enumerate(jobs, 1):
        name, folder = run_name(f, r, g, s), run_dir(f, r, g, s)
        prefix = f"[{i:2d}/{len(jobs)}] {name}"
        if completed_step(folder) >= BUDGET["steps"]:
            print(f"{prefix}: finished already, skipped", flush=True)
            continue
        resume = (folder / "config.toml").is_file()
        if folder.exists() and not resume:  # killed before it wrote anything worth keeping
            shutil.rmtree(folder)
        print(f"{prefix}: {'resuming' if resume else 'starting'}", flush=True)
        t0 = time.perf_counter()
        try:
            run(config_for(f, r, g, s), resume=resume, quiet=True)
        except Exception as exc:  # keep going: one broken run must not cost the other 31
            print(f"{prefix}: FAILED: {type(exc).__name__}: {exc}", flush=True)
            failed.append(name)
            continue
        seconds = time.perf_counter() - t0
        timings["runs"][name] = timings["runs"].get(name, 0.0) + seconds if resume else seconds
        save_timings(timings)
        s_ = summarize(folder)
        print(f"{prefix}: done in {seconds:.0f} s; max rel. diff {s_['max_rel_diff']:.1f}% "
              f"(step {s_['max_rel_diff_step']}), elapsed {time.perf_counter() - t_all:.0f} s", flush=True)
    return failed


# ---------------------------------------------------------------- reading the results


def drops(folder: Path, step: int = -1) -> tuple[float, float]:
    """Forget and retain top-1 drop relative to step 0 (% of base) at one step (default the last)."""
    metrics = RunFolder(folder).metrics()
    index = step if step < 0 else int(np.flatnonzero(metrics["step"] == step)[0])
    return tuple(float(metrics[role]["drop_rel"][index]) for role in ("forget", "retain"))


def collect_results() -> dict:
    """{(forget, retain): {(group, scorer): summary + final drops}} for every finished run."""
    results = {}
    for f, r in PAIRS:
        results[(f, r)] = {}
        for g, s in VARIANTS:
            folder = run_dir(f, r, g, s)
            if completed_step(folder) < BUDGET["steps"]:
                continue
            summary = summarize(folder)
            summary["final_drop_forget"], summary["final_drop_retain"] = drops(folder)
            results[(f, r)][(g, s)] = summary
    return results


# ---------------------------------------------------------------- plots


def write_comparisons(results: dict) -> None:
    from selprune.report import write_report

    for (f, r), runs in results.items():
        for comparison, variants in COMPARISONS.items():
            present = [v for v in variants if v in runs]
            if not present:
                continue
            out = RESULTS / pair_name(f, r) / comparison
            if out.exists():
                shutil.rmtree(out)
            write_report([run_dir(f, r, g, s) for g, s in present], out)
            (out / "report.html").unlink()
        # The ff-abs heatmap appears in all three comparisons: keep it in the first only.
        for comparison in list(COMPARISONS)[1:]:
            for dup in (RESULTS / pair_name(f, r) / comparison).glob(f"neurons-1-{run_name(f, r, 'ff', 'abs')}.png"):
                dup.unlink()


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------- RESULTS.md


def pct(value, digits: int = 1) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}%"


def num(value, digits: int = 1) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def ppl(value) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def label(group: str, scorer: str) -> str:
    return f"{group} {scorer}"


def pair_table(runs: dict) -> list[str]:
    lines = [
        "| variant | base top-1 forget / retain | **max rel. diff** (step) | max abs. diff, pts (step) "
        "| area (rel.) | forget / retain drop at step 8 | retain drop when forget drop ≥ 50% / ≥ 80% "
        "| final ppl forget / retain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (g, s), x in runs.items():
        lines.append(
            f"| {label(g, s)} | {pct(100 * x['base_top1_forget'])} / {pct(100 * x['base_top1_retain'])} "
            f"| **{pct(x['max_rel_diff'])}** ({x['max_rel_diff_step']}) "
            f"| {num(x['max_abs_diff'])} ({x['max_abs_diff_step']}) | {num(x['area_rel'], 2)} "
            f"| {pct(x['final_drop_forget'])} / {pct(x['final_drop_retain'])} "
            f"| {pct(x['retain_drop_at_forget_50'])} / {pct(x['retain_drop_at_forget_80'])} "
            f"| {ppl(x['final_perplexity_forget'])} / {ppl(x['final_perplexity_retain'])} |"
        )
    return lines


def machine() -> str:
    import torch

    from selprune.models import resolve_dtype

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dtype = str(resolve_dtype("auto", torch.device("cpu"))).replace("torch.", "")
    return (f"{os.cpu_count()}-core CPU ({cpu}), shared with another job while the runs ran; "
            f"dtype `auto` resolved to {dtype}; torch {torch.__version__}, Python {platform.python_version()}")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def duration(seconds: float) -> str:
    minutes, sec = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {sec:02d} s" if hours else f"{minutes} min {sec:02d} s"


def group_units(f: str, r: str, group: str) -> int | None:
    """How many units the group has, from a finished run's metrics.csv (units pruned / fraction pruned)."""
    for (g, s) in VARIANTS:
        if g != group:
            continue
        if (run_dir(f, r, g, s) / "metrics.csv").is_file():
            for row in RunFolder(run_dir(f, r, g, s)).rows():
                if float(row["fraction_pruned"]) > 0:
                    return round(int(row["units_pruned"]) / float(row["fraction_pruned"]))
    return None


def eval_tokens(f: str, r: str) -> dict:
    """Tokens actually evaluated per role, from metrics.csv."""
    rows = RunFolder(run_dir(f, r, "ff", "abs")).rows()
    return {row["role"]: int(row["tokens"]) for row in rows if row["step"] == "0"}


def plot_links(f: str, r: str) -> list[str]:
    lines = []
    for comparison in COMPARISONS:
        folder = RESULTS / pair_name(f, r) / comparison
        if not folder.is_dir():
            continue
        pngs = sorted(p.name for p in folder.glob("*.png"))
        links = ", ".join(f"[{p[:-4]}](results/{pair_name(f, r)}/{comparison}/{p})" for p in pngs)
        lines.append(f"- `{comparison}`: {links}")
    return lines


def best(runs: dict, variants) -> tuple:
    present = [v for v in variants if v in runs]
    return max(present, key=lambda v: runs[v]["max_rel_diff"]) if present else None


def rel_se(x: dict, n: int, role: str) -> float:
    """Binomial standard error of a base top-1 accuracy, in % of that accuracy (tokens taken as independent)."""
    p = x[f"base_top1_{role}"]
    return 100 * math.sqrt(p * (1 - p) / n) / p


def write_results_md(results: dict, timings: dict) -> None:
    """docs/RESULTS.md, every number from the runs (summarize() and metrics.csv) or from timings.json."""
    md: list[str] = []
    add = md.append
    f0, r0 = PAIRS[0]
    runs0 = results.get((f0, r0), {})
    now = dt.datetime.now().astimezone()
    last = timings.get("last_invocation")
    ran_at = (f"runs made on {last['started'][:10]} at selprune commit `{last.get('commit', '?')}`; "
              if last else "")
    add("# Results: selective pruning on SmolLM2-135M-Instruct, small CPU budget")
    add("")
    add(f"_Generated by `scripts/experiments.py` on {now:%Y-%m-%d} ({ran_at}file written at commit `{git_commit()}`); "
        "do not edit by hand: rerun `.venv/bin/python scripts/experiments.py --report-only` to regenerate it "
        "from the run folders. Every number below comes from the runs' `metrics.csv` through "
        "`selprune.rundir.summarize()`, except the seed paper's own Table 2._")
    add("")
    add("The seed paper (Pochinkov & Schoots, *Dissecting Large Language Models*) removes a capability by "
        "iteratively zeroing the neurons whose importance on a *forget* dataset is high relative to a *retain* "
        "dataset. Here its experiments are repeated at small scale on the embedded model: four forget/retain "
        "pairs, eight variants each (neuron group x importance function, plus the random baseline).")
    add("")
    add("**Headline metric** (docs/METHOD.md, \"Headline metrics\"; the paper's Table 2): for each step, the top-1 accuracy "
        "drop of the forget and of the retain dataset *relative to the unpruned model* (step 0), in percent of "
        "the base accuracy; the headline is the **maximum over the steps of (forget drop - retain drop)**. "
        "The same difference in absolute percentage points is shown beside it but is not comparable across "
        "datasets whose base accuracies differ. The *area* integrates (forget - retain) relative drop over the "
        "fraction of the group pruned (0 to 0.2), so its ceiling is 100% x 0.2 = 20.")
    add("")

    # -- how ----------------------------------------------------------------------------------
    add("## Reproduce")
    add("")
    add("```bash")
    add(".venv/bin/python scripts/experiments.py        # the 32 runs (a finished run is skipped, a partial one resumed), plots, this file")
    add(".venv/bin/python scripts/experiments.py --report-only   # plots and this file only")
    add("```")
    add("")
    add("One run on its own, the same as the script's first run:")
    add("")
    add("```bash")
    add(cli_command(*PAIRS[0], *VARIANTS[0]))
    add("```")
    add("")
    add("Run folders: `runs/experiments/<forget>-vs-<retain>-<group>-<scorer>/` (git-ignored; each has its own "
        "`report.html`). Comparison plots: `docs/results/<pair>/<comparison>/` with a `summary.json`.")
    add("")
    add("## Data")
    add("")
    from selprune.data import list_builtin

    used = {name for pair in PAIRS for name in pair}
    add("| dataset | what |")
    add("|---|---|")
    for entry in list_builtin():
        if entry["name"] in used:
            add(f"| `{entry['name']}` | {entry['description']} |")
    add("")
    add("## Budget and machine")
    add("")
    b = BUDGET
    units = {g: group_units(f0, r0, g) for g in dict.fromkeys(g for g, _ in VARIANTS)}
    tokens = eval_tokens(f0, r0) if runs0 else {}
    add("| setting | value |")
    add("|---|---|")
    add("| model | `smollm2-135m` (SmolLM2-135M-Instruct, Llama architecture, 30 layers, trained without dropout) |")
    add(f"| steps x fraction | {b['steps']} x {100 * b['fraction']:g}% of the group's units per step = "
        f"{100 * b['steps'] * b['fraction']:g}% in the end; iterative (statistics recollected on the pruned model every step) |")
    add("| units per group | " + ", ".join(f"{g}: {n}" for g, n in units.items() if n) +
        " (attn-head: whole heads) |")
    add(f"| scoring / evaluation tokens | {b['score_tokens']} / {b['eval_tokens']} per dataset "
        f"(chunks of {b['chunk_len']}; "
        + (f"{tokens.get('forget')} next-token predictions evaluated per dataset" if tokens else "") + "), "
        "disjoint held-out evaluation chunks |")
    add(f"| seed, selection, eps | {b['seed']}, global ranking across layers, default eps (1e-3 ff, 1e-4 attention) |")
    add("| dtype, compile | `auto` (bf16 on this CPU), torch.compile on |")
    add(f"| machine | {machine()} |")
    runs_s = timings.get("runs", {})
    if runs_s:
        vals = sorted(runs_s.values())
        add(f"| time | {len(vals)} runs: {duration(sum(vals))} of run time in all, "
            f"{vals[0]:.0f} to {vals[-1]:.0f} s per run (median {vals[len(vals) // 2]:.0f} s)"
            + (f"; the invocation that made {last.get('runs', '?')} of them (started {last['started']}) took "
               f"**{duration(last['wall_s'])}** of wall time, of which {last['report_s']:.0f} s for the plots"
               if last else "") + "; the first run also pays the model load and the ~30 s torch.compile |")
    add("")
    add("Scale against the paper: 4k instead of 100k tokens per dataset, 8 x 2.5% instead of 50 x 2% "
        "(20% instead of 100% of the units), a 135M model (the paper: 125M to 6.7B; its Table 2 uses 355M to 1.4B). With "
        f"{tokens.get('forget', 0)} evaluated tokens the binomial standard error of a base accuracy is about "
        + (f"{rel_se(runs0[('ff', 'abs')], tokens['forget'], 'forget'):.1f}% (forget) and "
           f"{rel_se(runs0[('ff', 'abs')], tokens['retain'], 'retain'):.1f}% (retain) of the accuracy for "
           f"{f0}/{r0}" if runs0 and ("ff", "abs") in runs0 else "?")
        + " (a lower bound: tokens of one chunk are not independent), so differences of a few percent between "
        "variants are noise.")
    add("")

    # -- overview -------------------------------------------------------------------------------
    add("## Overview: max relative difference (forget drop - retain drop, % of base)")
    add("")
    add("| pair (forget / retain) | " + " | ".join(label(g, s) for g, s in VARIANTS) + " |")
    add("|---|" + "---|" * len(VARIANTS))
    for (f, r), runs in results.items():
        cells = []
        top = best(runs, VARIANTS)
        for v in VARIANTS:
            x = runs.get(v)
            text = pct(x["max_rel_diff"]) if x else "not run"
            cells.append(f"**{text}**" if v == top else text)
        add(f"| {f} / {r} | " + " | ".join(cells) + " |")
    add("")
    add("Bold: the best variant of the pair. 0.0% means the forget drop never exceeded the retain drop "
        "(the maximum is then step 0, where both are 0).")
    add("")

    # -- pairs -----------------------------------------------------------------------------------
    for (f, r), runs in results.items():
        add(f"## Forget {f}, retain {r}")
        add("")
        if not runs:
            add("No finished run.")
            add("")
            continue
        md.extend(pair_table(runs))
        add("")
        add("Drops are relative to step 0 in % of the base accuracy; \"max abs. diff\" is the same difference in "
            "percentage points; \"—\": the forget drop never reached that level within the 8 steps; a maximum "
            "of 0.0% at step 0: the forget drop never exceeded the retain drop. Perplexities are those of step 8.")
        add("")
        for comparison in COMPARISONS:
            png = RESULTS / pair_name(f, r) / comparison / "forget-vs-retain-drop.png"
            if png.is_file():
                add(f"![{f} vs {r}: {comparison}](results/{pair_name(f, r)}/{comparison}/forget-vs-retain-drop.png)")
                add("")
        add("All plots (perplexity, accuracy against units pruned, pruned units per layer):")
        add("")
        md.extend(plot_links(f, r))
        add("")

    # -- paper -----------------------------------------------------------------------------------
    add("## Against the paper's Table 2")
    add("")
    add("Largest difference in top-1 accuracy drop, forget code / retain general text, feed-forward vs attention "
        "(value) neurons, `abs` scorer:")
    add("")
    add("| model | feed-forward | attention (value) | setting |")
    add("|---|---|---|---|")
    for model, (ff, attn) in PAPER_TABLE2.items():
        add(f"| {model} (paper) | {ff:.1f} | {attn:.1f} | Code (CodeParrot) vs Pile, 50 steps x 2%, 100k tokens |")
    ff_ours, val_ours = runs0.get(("ff", "abs")), runs0.get(("attn-value", "abs"))
    if ff_ours and val_ours:
        add(f"| SmolLM2-135M-Instruct (here) | {ff_ours['max_rel_diff']:.1f} (step {ff_ours['max_rel_diff_step']}) "
            f"| {val_ours['max_rel_diff']:.1f} (step {val_ours['max_rel_diff_step']}) "
            f"| built-in `{f0}` vs `{r0}`, {b['steps']} steps x {100 * b['fraction']:g}%, {b['score_tokens'] // 1024}k tokens |")
    add("")
    add("The paper's numbers are differences of relative drops in percent (its Figure 1 plots relative drops; "
        "docs/METHOD.md, \"Headline metrics\"), the same quantity as our headline. The settings differ on every axis that the paper "
        "says matters: the model is much smaller (135M; the paper finds larger models more separable) and was "
        "trained without dropout (the paper finds its dropout-trained OPT/Galactica/RoBERTa more separable in the "
        "feed-forward layers than Pythia, which has no dropout); the budget is 4k instead of 100k tokens (the paper "
        "reports that larger samples prune more selectively) and 8 x 2.5% instead of 50 x 2% (we stop at 20% of the "
        "units, the paper goes to 100%"
        + (f"; our maxima come at step {ff_ours['max_rel_diff_step']} (ff) and {val_ours['max_rel_diff_step']} "
           f"(attn-value) of {b['steps']}" if ff_ours and val_ours else "")
        + "); the data are our built-in corpora (see the Data section) instead of CodeParrot GitHub Code and the "
        "Pile with GitHub filtered out.")
    add("")

    # -- discussion ------------------------------------------------------------------------------
    md.extend(discussion(results))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    path = DOCS / "RESULTS.md"
    kept = path.read_text().partition(HAND_WRITTEN)[2] if path.is_file() else ""
    path.write_text("\n".join(md).rstrip() + "\n\n" + HAND_WRITTEN + kept)


def discussion(results: dict) -> list[str]:
    """The discussion, its numbers filled in from the runs; the comparisons in words are computed too."""
    try:
        return _discussion(results)
    except KeyError as missing:
        return ["## Discussion", "", f"Not written: the run {missing} is missing. Rerun the script.", ""]


def _discussion(results: dict) -> list[str]:
    R = {pair: runs for pair, runs in results.items()}
    cp, pc, py, de = PAIRS
    FF, RND, VAL, PRE, HEAD = ("ff", "abs"), ("ff", "random"), ("attn-value", "abs"), ("attn-preout", "abs"), ("attn-head", "abs")
    FREQ, RMS, STD = ("ff", "freq"), ("ff", "rms"), ("ff", "std")
    attn = (VAL, PRE, HEAD)
    m = lambda pair, v: R[pair][v]["max_rel_diff"]  # noqa: E731
    st = lambda pair, v: R[pair][v]["max_rel_diff_step"]  # noqa: E731
    P = lambda pair, v: pct(m(pair, v))  # noqa: E731
    name = lambda pair: f"{pair[0]}/{pair[1]}"  # noqa: E731
    last = BUDGET["steps"]
    L: list[str] = ["## Discussion", ""]

    # 1. selective vs random
    gains = {pair: m(pair, FF) - m(pair, RND) for pair in PAIRS}
    clear = sum(g > 10 for g in gains.values())
    L.append(("**Selective pruning beats random pruning, by far, in every pair.**" if clear == len(PAIRS) else
              f"**Selective pruning beats random pruning by more than 10 points in {clear} of {len(PAIRS)} pairs.**")
             + " The max relative difference of "
             "ff `abs` against ff `random`: " + "; ".join(f"{name(p)} {P(p, FF)} vs {P(p, RND)}" for p in PAIRS)
             + f" (a margin of {min(gains.values()):.1f} to {max(gains.values()):.1f} points). Random pruning "
             "degrades both datasets at about the same relative rate, as it should; the exception is "
             f"german/english, where random pruning already reaches {P(de, RND)}: it hurts German more than "
             f"English (step-{last} drops {pct(R[de][RND]['final_drop_forget'])} vs "
             f"{pct(R[de][RND]['final_drop_retain'])}), plausibly because German is the model's weaker, less "
             "redundant language (base top-1 "
             f"{pct(100 * R[de][RND]['base_top1_forget'])} vs {pct(100 * R[de][RND]['base_top1_retain'])}); "
             "the fair measure there is the margin over random, "
             f"{gains[de]:.1f} points. The relative metric matters: on code/prose random pruning scores only "
             f"{P(cp, RND)} relative but {num(R[cp][RND]['max_abs_diff'])} points absolute, because code starts at "
             f"{pct(100 * R[cp][RND]['base_top1_forget'])} and prose at {pct(100 * R[cp][RND]['base_top1_retain'])}. "
             "(The `random` scorer draws its scores from the seed and the step only, so all four random runs prune "
             "exactly the same neurons: one random draw evaluated on five datasets, not four independent baselines.)")
    L.append("")

    # 2. the shape: early peak, then collapse
    f_at, r_at = drops(run_dir(*cp, *FF), st(cp, FF))
    L.append(f"**ff pruning is selective early and then over-prunes.** On code/prose, ff `abs` peaks at step "
             f"{st(cp, FF)} ({100 * BUDGET['fraction'] * st(cp, FF):g}% of the ff neurons): code top-1 has dropped by "
             f"{pct(f_at)} of its base, prose by {pct(r_at)}. The retain drop when the code drop first reaches 50% / "
             f"80% is {pct(R[cp][FF]['retain_drop_at_forget_50'])} / {pct(R[cp][FF]['retain_drop_at_forget_80'])} "
             f"(the paper's OPT-6.7B: 80% for 20%). Past the peak the code capability is gone and further steps "
             f"only hurt prose: at step {last} the drops are {pct(R[cp][FF]['final_drop_forget'])} / "
             f"{pct(R[cp][FF]['final_drop_retain'])} and the perplexities {ppl(R[cp][FF]['final_perplexity_forget'])} "
             f"/ {ppl(R[cp][FF]['final_perplexity_retain'])}. The other pairs have the same shape, peaking at "
             + ", ".join(f"step {st(p, FF)} ({name(p)}, retain drop {pct(R[p][FF]['final_drop_retain'])} at step "
                         f"{last})" for p in PAIRS[1:]) + ". With steps "
             f"of {100 * BUDGET['fraction']:g}% the grid is coarse around such an early peak, so the maxima of "
             "variants that peak at steps 2 to 4 differ partly by where the grid falls.")
    L.append("")

    # 3. ff vs attention
    ff_wins = [p for p in PAIRS if m(p, FF) > max(m(p, v) for v in attn)]
    at_end = [(p, v) for p in PAIRS for v in attn if st(p, v) == last]
    heads = group_units(*cp, "attn-head")
    weakest_heads = [p for p in PAIRS if m(p, HEAD) < min(m(p, VAL), m(p, PRE))]
    L.append(f"**Feed-forward vs attention.** ff `abs` beats every attention group in {len(ff_wins)} of 4 pairs: "
             + "; ".join(f"{name(p)}: ff {P(p, FF)}, value {P(p, VAL)}, pre-out {P(p, PRE)}, heads {P(p, HEAD)}"
                         for p in PAIRS) + ". "
             + ("" if len(ff_wins) == 4 else
                "The exception" + ("s are " if 4 - len(ff_wins) > 1 else " is ")
                + ", ".join(name(p) for p in PAIRS if p not in ff_wins)
                + ", where the best attention group matches or passes ff. ")
             + f"The comparison is biased towards ff by the budget: {len(at_end)} of the 12 attention runs reach "
             f"their maximum at the last step ({last}), so their curves were still rising when the runs stopped at "
             "20% of the units, while ff peaks early. The areas between the curves, which reward staying selective "
             "over the whole range, tell the same story less sharply: "
             + "; ".join(f"{name(p)} ff {num(R[p][FF]['area_rel'], 2)} vs best attention "
                         f"{num(max(R[p][v]['area_rel'] for v in attn), 2)}" for p in PAIRS) + ". "
             + f"Value neurons score below pre-out neurons in {sum(m(p, VAL) < m(p, PRE) for p in PAIRS)} of 4 "
             "pairs (the paper found the two similar). A plausible cause, not tested here, is SmolLM2's "
             "grouped-query attention (9 query heads share 3 key/value heads): one value neuron feeds three query "
             "heads, so it is less likely to serve one task only. "
             + (f"Whole heads are coarse ({round(BUDGET['fraction'] * heads)} of {heads} heads per step); the paper "
                f"found them poor. Here they are the weakest attention group on "
                + (", ".join(name(p) for p in weakest_heads) or "no pair")
                + f", but reach {P(de, HEAD)} on german/english." if heads else ""))
    L.append("")

    # 4. paper Table 2
    paper_ff_max = max(ff for ff, _ in PAPER_TABLE2.values())
    opt_ff, opt_attn = PAPER_TABLE2["OPT-1.3B"]
    py_ff, py_attn = PAPER_TABLE2["Pythia-1.4B"]
    gap = m(cp, FF) - m(cp, VAL)
    L.append(f"**Against the paper's Table 2.** Our code/prose ff {P(cp, FF)} vs attention (value) {P(cp, VAL)} "
             + (f"(a gap of {gap:.1f} points) looks like the paper's OPT-1.3B ({opt_ff} vs {opt_attn}), not like "
                f"Pythia-1.4B ({py_ff} vs {py_attn}), although SmolLM2, like Pythia, was trained without dropout: "
                "the paper's explanation (dropout during training makes ff neurons task-specific) is not needed for "
                "ff to win on this model. " if gap > 15 else
                f"(a gap of {gap:.1f} points) is closer to the paper's Pythia-1.4B ({py_ff} vs {py_attn}), the model "
                "trained without dropout like SmolLM2. ")
             + (f"Our ff number is higher than all of the paper's ({paper_ff_max} at most) although the model is "
                f"smaller than all four (135M against 355M to 1.4B) and the scoring sample is "
                f"{100_000 // BUDGET['score_tokens']}x "
                "smaller, which the paper's trends (larger models and larger samples separate better) would not "
                "predict. Three things likely inflate it: our corpora are cleanly separated (`prose` holds no code "
                "at all, whereas the paper notes its Pile still contains some code after dropping the GitHub "
                "part), the maximum over noisy steps is biased upwards, and the attention numbers are truncated "
                "(above). " if m(cp, FF) > paper_ff_max else "")
             + "The ordering ff > attention is what carries over; the magnitudes should not be compared across "
             "the two settings.")
    L.append("")

    # 5. scorers
    scorers = (FF, RMS, STD)
    winners = {p: max(scorers, key=lambda v: m(p, v)) for p in PAIRS}
    behind = {p: m(p, winners[p]) - m(p, FF) for p in PAIRS}
    spread = {p: max(m(p, v) for v in scorers) - min(m(p, v) for v in scorers) for p in PAIRS}
    L.append("**Scorers.** `abs`, `rms` and `std` are close: "
             + "; ".join(f"{name(p)} abs {P(p, FF)}, rms {P(p, RMS)}, std {P(p, STD)}" for p in PAIRS)
             + f" (spread {min(spread.values()):.1f} to {max(spread.values()):.1f} points). The best of the three is "
             + ", ".join(f"{winners[p][1]} on {name(p)}" for p in PAIRS)
             + ("; `abs`, the paper's default, is never the best here" if all(w != FF for w in winners.values())
                else "")
             + f"; it trails the best by {min(behind.values()):.1f} to {max(behind.values()):.1f} points. With one "
             "seed, 4k evaluation tokens and a coarse grid of steps, gaps of this size are suggestive, not "
             "conclusive. "
             + (f"`rms` stays selective longest on code/prose: at step {last} its prose drop is "
                f"{pct(R[cp][RMS]['final_drop_retain'])} against {pct(R[cp][FF]['final_drop_retain'])} for `abs`, "
                f"and its area, {num(R[cp][RMS]['area_rel'], 2)}, is the largest of the pair."
                if max(R[cp], key=lambda v: R[cp][v]["area_rel"]) == RMS else ""))
    L.append("")
    worse = [p for p in PAIRS if R[p][FREQ]["area_rel"] < R[p][RND]["area_rel"]]
    L.append("**`freq` carries no signal on this SiLU-gated MLP**, as docs/METHOD.md (\"Importance functions\") explains (the "
             "gated mid-layer value `silu(gate) * up` is positive about half the time for nearly every neuron, so "
             "frequency ratios are close to 1 and rank small, unspecific differences). Its max "
             "relative difference: " + "; ".join(f"{name(p)} {P(p, FREQ)}" for p in PAIRS)
             + ", against random " + "; ".join(f"{P(p, RND)}" for p in PAIRS) + ". On code/prose and prose/code "
             "the forget drop never exceeds the retain drop (the maximum is step 0's 0.0%, the area is negative: "
             + ", ".join(num(R[p][FREQ]["area_rel"], 2) for p in (cp, pc)) + f"), and in {len(worse)} of 4 pairs "
             "its area is below random's: `freq` is no better, and sometimes worse, than chance. On "
             f"german/english it reaches {P(de, FREQ)}, {m(de, FREQ) - m(de, RND):.1f} points above random's "
             f"{P(de, RND)} and {m(de, FF) - m(de, FREQ):.1f} below `abs`.")
    L.append("")

    # 6. python vs code
    f50 = R[py][FF]["retain_drop_at_forget_50"]
    L.append(f"**Python vs code is separable, but much less.** ff `abs` reaches {P(py, FF)} (step {st(py, FF)}), "
             f"`std` {P(py, STD)}, random {P(py, RND)}; attention groups stay near random (value {P(py, VAL)}, "
             f"pre-out {P(py, PRE)}, heads {P(py, HEAD)}). Removing half of the Python accuracy costs "
             f"{pct(f50)} of the code accuracy. Two likely reasons, both in the data: the `code` corpus itself "
             "contains Python (IDLE), so some Python "
             "neurons are also retain neurons, and the other six languages share most of Python's syntax "
             "(brackets, identifiers, comments).")
    L.append("")

    # 7. german vs english
    r80 = {p: R[p][FF]["retain_drop_at_forget_80"] for p in PAIRS}
    best80 = min((p for p in PAIRS if r80[p] is not None), key=lambda p: r80[p], default=None)
    L.append("**German vs English (parallel LibreOffice help pages) "
             + ("separates as well as code vs prose:** " if m(de, FF) >= m(cp, FF) - 5 else "separates too:** ")
             + "ff "
             f"`abs` {P(de, FF)}, `rms` {P(de, RMS)}, `std` {P(de, STD)}, attention pre-out {P(de, PRE)}, heads "
             f"{P(de, HEAD)}. The retain drop when German has lost 50% / 80% of its accuracy is "
             f"{pct(R[de][FF]['retain_drop_at_forget_50'])} / {pct(R[de][FF]['retain_drop_at_forget_80'])}"
             + (", the best trade-off of the four pairs" if best80 == de else "") + ". Since the two corpora say the same things, what is removed is the "
             "language, not the topic. The caveat is the random baseline's "
             f"{P(de, RND)}: part of any damage comes to German first even without selection.")
    L.append("")

    # 8. caveats
    L.append("**Caveats.** One seed; 4k scoring and 4k evaluation tokens per dataset (the paper used 100k and "
             "reports that larger samples prune more selectively); eight coarse steps; a 135M model. Numbers a few "
             "points apart are not distinguishable at this budget. All the claims above are about this model, these "
             "corpora and this budget.")
    L.append("")
    return L


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report-only", action="store_true", help="do not run; only rewrite the reports")
    args = parser.parse_args()
    os.chdir(ROOT)

    failed, ran = [], 0
    if not args.report_only:
        t0 = time.perf_counter()
        started = dt.datetime.now().astimezone()
        commit = git_commit()
        before = load_timings()["runs"].copy()
        failed = run_all()
        ran = sum(1 for k, v in load_timings()["runs"].items() if before.get(k) != v)
    results = collect_results()
    t_report = time.perf_counter()
    write_comparisons(results)
    report_seconds = time.perf_counter() - t_report
    timings = load_timings()
    if ran:  # an invocation that only skipped finished runs does not replace the timing of the real one
        timings["last_invocation"] = {
            "commit": commit,
            "runs": ran,
            "started": started.isoformat(timespec="seconds"),
            "wall_s": time.perf_counter() - t0,
            "report_s": report_seconds,
        }
        save_timings(timings)
    write_results_md(results, timings)
    print(f"docs/results: {du(RESULTS) / 1e6:.2f} MB; failed runs: {', '.join(failed) or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
