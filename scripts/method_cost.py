"""Print what each pruning run or unlearning folder cost, in plain forward-pass equivalents, as docs/RESULTS.md
("Removal that holds?") shows it.

One forward-pass equivalent (FE) is a plain bf16 forward of the embedded model over one batch of 4 x 512 tokens
(2.30 s on the 2-core AMD EPYC of docs/PERFORMANCE.md). Each piece of work is counted by its tokens and the
cost ratio docs/PERFORMANCE.md measured for it on that CPU, so the totals do not depend on what else shared the
cores while the folders were made:

- a pruning step: its scoring and evaluation forwards over both datasets, x 1.025 (bench/step_cost.py);
  step 0 is the evaluation alone;
- --heal K: K fine-tuning steps on 4 x 512 retain tokens after each pruning step, 3.84 FE each
  (bench/relearn_cost.py's fine-tuning step);
- an unlearning: every step it trained at every learning rate, x its method's step ratio (bench/unlearn_cost.py),
  plus one evaluation of both datasets at each checkpoint (two at step 0 when it starts from a pruned run), plus
  the pruning run it started from, up to that run's step.

Usage: .venv/bin/python scripts/method_cost.py FOLDER [FOLDER ...]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from selprune.rundir import RunFolder
from selprune.unlearn.budget import run_and_step
from selprune.unlearn.settings import UnlearnConfig

BATCH_TOKENS = 4 * 512  # one FE
STEP_RATIO = 1.025  # a pruning step over its plain forwards (docs/PERFORMANCE.md, EPYC row)
FINE_TUNING_STEP = 3.84  # forward + backward + AdamW over a batch, in plain forwards of it
METHOD_STEP = {"ga": 3.53, "graddiff": 9.61, "npo": 9.75, "rmu": 0.88, "distill": 5.42}  # over 4 x 512 tokens


def pruning_cost(folder: RunFolder, up_to: int | None = None) -> float:
    """FE of a pruning run's steps up to `up_to` (default: every step it ran)."""
    config = folder.read_config()
    steps = sorted({int(r["step"]) for r in folder.rows()})
    steps = [s for s in steps if up_to is None or s <= up_to]
    evaluation = 2 * config.eval_tokens / BATCH_TOKENS
    scoring = 2 * config.score_tokens / BATCH_TOKENS
    heal = config.heal * FINE_TUNING_STEP * config.heal_batch_size * config.chunk_len / BATCH_TOKENS
    return sum(STEP_RATIO * (evaluation + (scoring if s else 0)) + (heal if s else 0) for s in steps)


def unlearning_cost(folder: RunFolder, config: UnlearnConfig) -> tuple[float, float]:
    """(FE of the unlearning itself, FE of the pruning run it started from up to its step)."""
    evaluation = STEP_RATIO * 2 * config.eval_tokens / BATCH_TOKENS
    per_step = METHOD_STEP[config.method] * config.batch_size * config.chunk_len / BATCH_TOKENS
    own = evaluation * (2 if config.from_run else 1)  # step 0, measured once for every learning rate
    for metrics in folder.path.glob("lr-*/metrics.csv"):
        steps = sorted({int(r["step"]) for r in csv.DictReader(metrics.open())})
        own += per_step * steps[-1] + evaluation * (len(steps) - 1)
    start = 0.0
    if config.from_run:
        path, step = run_and_step(config.from_run)
        start = pruning_cost(RunFolder(path), step)
    return own, start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    args = parser.parse_args()
    print("| folder | what | its own work (FE) | its starting run (FE) | total (FE) |")
    print("|---|---|---|---|---|")
    for path in args.folders:
        folder = RunFolder(path)
        config = folder.read_config()
        if isinstance(config, UnlearnConfig):
            own, start = unlearning_cost(folder, config)
            what = f"unlearn {config.method}" + (f" from {Path(config.from_run).name}" if config.from_run else "")
        else:
            own, start = pruning_cost(folder), 0.0
            what = f"run, {config.steps} x {config.fraction:g}" + (f", --heal {config.heal}" if config.heal else "")
        print(f"| {path.name} | {what} | {own:.0f} | {start:.0f} | {own + start:.0f} |")


if __name__ == "__main__":
    main()
