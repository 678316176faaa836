"""--adaptive-scoring against the fixed scoring budget, side by side, on the demo's settings.

    .venv/bin/python bench/adaptive.py [--forget code --retain prose] [--steps 10] [--fraction 0.02]
                                      [--score-tokens 16384] [--eval-tokens 16384] [--keep DIR]

Makes three runs, each `selprune run` in its own process (so each pays its own start and compilation): the
fixed budget with --seed 0 and --seed 1, and --adaptive-scoring with --seed 0. Prints per step the scoring tokens
per dataset of the fixed and the adaptive run, the overlap of the pruned sets so far (adaptive against fixed
seed 0, and fixed seed 0 against fixed seed 1: how far the fixed budget is from itself on another sample), the
largest difference of the top-1 drops (forget or retain, points) in the same two pairs, and the wall time of the
adaptive run over the fixed run's (seed 0).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selprune.adaptive import overlap
from selprune.rundir import RunFolder

RUNS = {"fixed": ("--seed", "0"), "fixed seed 1": ("--seed", "1"), "adaptive": ("--seed", "0", "--adaptive-scoring")}


def selprune_run(args, folder: Path, extra: tuple[str, ...]) -> float:
    """Seconds that `selprune run` took, start to finish."""
    command = [str(Path(sys.executable).with_name("selprune")), "run", "--forget", args.forget, "--retain",
               args.retain, "--steps", str(args.steps), "--fraction", str(args.fraction), "--score-tokens",
               str(args.score_tokens), "--eval-tokens", str(args.eval_tokens), "--output", str(folder), "-q", *extra]
    t0 = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - t0


def by_step(folder: Path) -> dict[int, dict]:
    """Per step: the top-1 drops (points) and the scoring tokens per role, and the units pruned so far."""
    run = RunFolder(folder)
    record, steps = run.record(), {}
    for row in run.rows():
        entry = steps.setdefault(int(row["step"]), {"drop": {}, "tokens": {}})
        entry["drop"][row["role"]] = float(row["top1_drop_abs"])
        entry["tokens"][row["role"]] = int(row["score_tokens"])
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
    p.add_argument("--keep", help="make the run folders here, and keep them")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        seconds = {name: selprune_run(args, root / name.replace(" ", "-"), extra) for name, extra in RUNS.items()}
        fixed, other, auto = (by_step(root / name.replace(" ", "-")) for name in RUNS)
    print(f"{args.forget} vs {args.retain}, {args.steps} x {args.fraction:g}, {args.score_tokens} scoring and "
          f"{args.eval_tokens} evaluation tokens per dataset")
    print("step  scoring tokens (forget/retain)  pruned-set overlap            largest top-1 drop difference")
    print("      fixed          adaptive         adaptive~fixed  seed1~seed0   adaptive-fixed  seed1-seed0")
    for step in range(1, len(fixed)):
        f, o, a = fixed[step], other[step], auto[step]
        print(f"{step:4d}  {f['tokens']['forget']:6d}/{f['tokens']['retain']:<6d}  "
              f"{a['tokens']['forget']:6d}/{a['tokens']['retain']:<6d}   "
              f"{overlap(a['pruned'], f['pruned']):14.3f}  {overlap(o['pruned'], f['pruned']):11.3f}   "
              f"{largest_gap(a, f):14.2f}  {largest_gap(o, f):11.2f}")
    scored = [sum(sum(entry["tokens"].values()) for entry in run.values()) for run in (fixed, auto)]
    print(f"scoring tokens, adaptive over fixed: {scored[1] / scored[0]:.3f}")
    print(f"wall time: fixed {seconds['fixed']:.0f} s, fixed seed 1 {seconds['fixed seed 1']:.0f} s, adaptive "
          f"{seconds['adaptive']:.0f} s; adaptive / fixed = {seconds['adaptive'] / seconds['fixed']:.2f}")


if __name__ == "__main__":
    main()
