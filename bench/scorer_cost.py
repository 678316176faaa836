"""What each scorer's scoring pass costs against plain forward passes over the same tokens.

    .venv/bin/python bench/scorer_cost.py [--tokens 4096] [--repeats 3] [--scorers abs attr wanda] [--no-compile]

On forget=code scoring chunks, through the run's own measure() (statistics + importance), timed in turns:
  plain base forward   the model without its head (the floor of a forward-only scorer: abs, wanda, ...)
  plain full forward   the whole model, logits included (attr needs the loss, so the head too)
  <scorer> scoring     one dataset's scoring pass for that scorer: attr adds a backward pass, wanda the
                       norms of the weights that read each unit
and prints, for each scorer, the median over rounds of its ratio to each plain pass within a round, with
the range over rounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import sys
import tempfile
from pathlib import Path

from step_cost import plain
from timing import interleaved, machine, median

from selprune.allocator import keep_freed_memory
from selprune.config import RunConfig
from selprune.run import Run


def ratios(rounds: list[dict[str, float]], num: str, den: str) -> str:
    values = sorted(r[num] / r[den] for r in rounds)
    return f"{statistics.median(values):.2f}x ({values[0]:.2f} to {values[-1]:.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=4096, help="scoring tokens of the forget dataset")
    p.add_argument("--chunk-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--group", default="ff")
    p.add_argument("--scorers", nargs="+", default=["abs", "attr", "wanda"])
    p.add_argument("--no-compile", dest="compile", action="store_false")
    args = p.parse_args()
    keep_freed_memory()  # as `selprune run` does

    with tempfile.TemporaryDirectory() as tmp:
        config = RunConfig(model=args.model, score_tokens=args.tokens, eval_tokens=args.chunk_len, steps=1,
                           chunk_len=args.chunk_len, group=args.group, compile=args.compile,
                           output=str(Path(tmp) / "run"))
        run = Run(config, quiet=True)
        run.load()
        model, d, batch = run.model, run.data[0], run.batch_size

        def scoring(scorer):
            def measure():
                run.config = dataclasses.replace(config, scorer=scorer)
                run.measure(d, run.neurons)
            return measure

        passes = {"plain base forward": lambda: plain(model, d.score_ids, d.score_mask, batch, head=False),
                  "plain full forward": lambda: plain(model, d.score_ids, d.score_mask, batch, head=True),
                  **{f"{s} scoring": scoring(s) for s in args.scorers}}
        rounds = interleaved(passes, args.repeats)

    tokens = int(d.score_mask.sum())
    print(f"# scorer cost: {args.model} {model.dtype} group={args.group}, {tokens} scoring tokens of code, chunks "
          f"of {args.chunk_len}, batch {batch}, compile={args.compile}, medians of {args.repeats} interleaved rounds")
    print(f"# {machine()}")
    print(f"# command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print("| pass | seconds | tokens/s | over plain base forward | over plain full forward |")
    print("|---|---|---|---|---|")
    for name in passes:
        sec = median(rounds, name)
        print(f"| {name} | {sec:.2f} | {tokens / sec:,.0f} | {ratios(rounds, name, 'plain base forward')} | "
              f"{ratios(rounds, name, 'plain full forward')} |")
    print(f"peak resident memory = {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
