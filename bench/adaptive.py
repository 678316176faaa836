"""--adaptive-scoring (and --eval-precision) against the fixed budgets, side by side, on the demo's settings.

    .venv/bin/python bench/adaptive.py [--forget code --retain prose] [--steps 10] [--fraction 0.02]
                                      [--score-tokens 16384] [--eval-tokens 16384] [--eval-precision P ...]
                                      [--repeats 1] [--keep DIR]

Makes each run with `selprune run` in its own process (so each pays its own start and compilation): the fixed
budgets with --seed 0 and --seed 1, --adaptive-scoring with --seed 0, and for each P of --eval-precision also
--adaptive-scoring --eval-precision P with --seed 0. Prints per step the scoring and evaluation tokens per
dataset of each run, the overlap of each run's pruned set so far with the fixed run's (seed 0), and the largest
difference of their top-1 drops (forget or retain, points). Seed 1 shows how far the fixed budget is from itself
on another sample of documents (the seed shuffles the scoring and the evaluation documents alike), which is the
bar the others are held to. Ends with each run's wall time over the fixed run's; with --repeats R, every run is
made R times, in turns, and the time is the median of the ratios within a round (a single run's time drifts
by about a tenth on a shared machine). The later rounds must prune the same units as the first.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from timing import machine

from selprune.adaptive import overlap
from selprune.rundir import RunFolder

RUNS = {"fixed": ("--seed", "0"), "seed 1": ("--seed", "1"), "adaptive": ("--seed", "0", "--adaptive-scoring")}


def selprune_run(args, folder: Path, extra: tuple[str, ...]) -> float:
    """Seconds that `selprune run` took, start to finish (the selprune this interpreter imports)."""
    command = [sys.executable, "-m", "selprune.cli", "run", "--forget", args.forget, "--retain",
               args.retain, "--steps", str(args.steps), "--fraction", str(args.fraction), "--score-tokens",
               str(args.score_tokens), "--eval-tokens", str(args.eval_tokens), "--output", str(folder), "-q", *extra]
    t0 = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - t0


def by_step(folder: Path) -> dict[int, dict]:
    """Per step: the top-1 drops (points), the scoring and evaluation tokens per role, the units pruned so far."""
    run = RunFolder(folder)
    record, steps = run.record(), {}
    for row in run.rows():
        entry = steps.setdefault(int(row["step"]), {"drop": {}, "tokens": {}, "evaluated": {}})
        entry["drop"][row["role"]] = float(row["top1_drop_abs"])
        entry["tokens"][row["role"]] = int(row["score_tokens"])
        entry["evaluated"][row["role"]] = int(row["tokens"])
    for step, entry in steps.items():
        entry["pruned"] = record.mask(range(1, step + 1))
    return steps


def largest_gap(a: dict, b: dict) -> float:
    return max(abs(a["drop"][role] - b["drop"][role]) for role in ("forget", "retain"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--forget", default="code")
    p.add_argument("--retain", default="prose")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--fraction", type=float, default=0.02)
    p.add_argument("--score-tokens", type=int, default=16_384)
    p.add_argument("--eval-tokens", type=int, default=16_384)
    p.add_argument("--eval-precision", type=float, nargs="+", default=[],
                   help="add a run with --adaptive-scoring and each of these precisions (points)")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of all the runs, in turns (reversed every other round): times are medians")
    p.add_argument("--keep", help="make the run folders here, and keep them")
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    if not all(math.isfinite(precision) and precision > 0 for precision in args.eval_precision):
        p.error(f"--eval-precision takes finite standard errors above 0, got {args.eval_precision}")
    runs = dict(RUNS)
    for precision in args.eval_precision:
        runs[f"adaptive ±{precision:g}"] = (*RUNS["adaptive"], "--eval-precision", str(precision))
    rounds = []  # seconds of each run, per round
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        for r in range(args.repeats):
            names = list(runs) if r % 2 == 0 else list(reversed(runs))
            folders = {name: root / f"{name.replace(' ', '-').replace('±', 'precision-')}{f'-{r}' if r else ''}"
                       for name in names}
            rounds.append({name: selprune_run(args, folders[name], runs[name]) for name in names})
            again = {name: by_step(folder) for name, folder in folders.items()}
            if r == 0:
                steps = {name: again[name] for name in runs}
            elif any(not torch.equal(again[n][k]["pruned"], steps[n][k]["pruned"]) for n in runs for k in steps[n]):
                raise SystemExit(f"round {r + 1} pruned other units than round 1: the runs are not deterministic")
    seconds = {name: statistics.median(times[name] for times in rounds) for name in runs}
    ratios = {name: sorted(times[name] / times["fixed"] for times in rounds) for name in runs}
    print(f"# {machine()}")
    print(f"{args.forget} vs {args.retain}, {args.steps} x {args.fraction:g}, {args.score_tokens} scoring and "
          f"{args.eval_tokens} evaluation tokens per dataset; each run against the fixed run (seed 0)")
    fixed = steps["fixed"]
    print(f"{'run':16s} {'step':>4s}  {'scored F/R':>13s}  {'evaluated F/R':>13s}  {'overlap':>7s}  {'top-1 gap':>9s}")
    for name, run in steps.items():
        for step in range(1, len(fixed)):
            entry, base = run[step], fixed[step]
            print(f"{name:16s} {step:4d}  {entry['tokens']['forget']:6d}/{entry['tokens']['retain']:<6d}  "
                  f"{entry['evaluated']['forget']:6d}/{entry['evaluated']['retain']:<6d}  "
                  f"{overlap(entry['pruned'], base['pruned']):7.3f}  {largest_gap(entry, base):9.2f}")
    print(f"{'run':16s} {'scoring tokens':>14s}  {'eval tokens':>11s}  {'largest gap':>11s}  {'last overlap':>12s}  "
          f"{'seconds':>7s}  {'time':>5s}  (tokens and time over the fixed run's; time: the median over "
          f"{args.repeats} round(s) of the ratio within a round, and its range)")
    for name, run in steps.items():
        tokens = {key: sum(sum(entry[key].values()) for entry in run.values()) /
                  sum(sum(entry[key].values()) for entry in fixed.values()) for key in ("tokens", "evaluated")}
        gap = max(largest_gap(run[step], fixed[step]) for step in range(1, len(fixed)))
        print(f"{name:16s} {tokens['tokens']:14.3f}  {tokens['evaluated']:11.3f}  {gap:11.2f}  "
              f"{overlap(run[len(fixed) - 1]['pruned'], fixed[len(fixed) - 1]['pruned']):12.3f}  "
              f"{seconds[name]:7.0f}  {statistics.median(ratios[name]):5.2f}  "
              f"({ratios[name][0]:.2f} to {ratios[name][-1]:.2f})")


if __name__ == "__main__":
    main()
