"""What a pruning step costs against the forward passes it cannot avoid, on the same tokens.

    .venv/bin/python bench/step_cost.py [--tokens 8192] [--repeats 5] [--dtype auto] [--no-compile]

Times (medians over interleaved rounds), on forget=code and retain=prose chunks of the same size:
  plain base forward   the model without its head over both datasets' scoring chunks (the floor of scoring)
  plain full forward   the whole model, logits included, over both datasets' evaluation chunks
  scoring pass         statistics hooks on, both datasets
  evaluation pass      accuracy/loss with exact fp32 re-scoring of candidates, both datasets
  whole step           scoring + selection + pruning + evaluation, through the real run loop
and prints the ratios that docs/PERFORMANCE.md records: for each, the median over rounds of the ratio
within a round, and the range over rounds.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from timing import interleaved, machine, median

from selprune.allocator import keep_freed_memory
from selprune.config import RunConfig
from selprune.pruning import apply
from selprune.run import Run
from selprune.selection import select


def ratio(rounds: list[dict[str, float]], num: str, *den: str) -> str:
    """Median over rounds of the ratio within each round (pairs passes timed a minute apart), and its range."""
    values = sorted(r[num] / sum(r[d] for d in den) for r in rounds)
    return f"{statistics.median(values):.3f}  (rounds: {values[0]:.3f} to {values[-1]:.3f})"


@torch.no_grad()
def plain(model, ids, mask, batch: int, head: bool) -> None:
    for start in range(0, len(ids), batch):
        sl = slice(start, start + batch)
        if head:
            model(input_ids=ids[sl], attention_mask=mask[sl], use_cache=False)
        else:
            model.base_model(input_ids=ids[sl], attention_mask=mask[sl], use_cache=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=8192, help="scoring and evaluation tokens per dataset")
    p.add_argument("--chunk-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--group", default="ff")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    args = p.parse_args()
    keep_freed_memory()  # as `selprune run` does

    with tempfile.TemporaryDirectory() as tmp:
        config = RunConfig(model=args.model, score_tokens=args.tokens, eval_tokens=args.tokens,
                           chunk_len=args.chunk_len, dtype=args.dtype, group=args.group, compile=args.compile,
                           output=str(Path(tmp) / "run"))
        run = Run(config, quiet=True)
        run.load()
        model, data, batch = run.model, run.data, run.batch_size

        def base_forward():
            for d in data:
                plain(model, d.score_ids, d.score_mask, batch, head=False)

        def full_forward():
            for d in data:
                plain(model, d.eval_ids, d.eval_mask, batch, head=True)

        def scoring():
            run.step_scores(1)

        def evaluation():
            for d in data:
                run.evaluate(d)

        pruned = torch.zeros(run.neurons.layers, run.neurons.units_per_layer, dtype=torch.bool)

        def step():
            new = select(run.step_scores(1), pruned, run.units_per_step())
            apply(run.neurons, new)
            pruned.__ior__(new)
            for d in data:
                run.evaluate(d)

        rounds = interleaved({"plain base forward": base_forward, "plain full forward": full_forward,
                              "scoring pass": scoring, "evaluation pass": evaluation, "whole step": step},
                             args.repeats)

    tokens = 2 * args.tokens
    print(f"# step cost: {args.model} {model.dtype} group={args.group}, {tokens} scoring + {tokens} evaluation "
          f"tokens (2 datasets), chunks of {args.chunk_len}, batch {batch}, compile={args.compile}, "
          f"medians of {args.repeats} interleaved rounds")
    print(f"# {machine()}")
    print(f"# command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print("| pass | seconds | tokens/s |")
    print("|---|---|---|")
    for name in rounds[0]:
        sec = median(rounds, name)
        n = tokens * (2 if name == "whole step" else 1)
        print(f"| {name} | {sec:.2f} | {n / sec:,.0f} |")
    print(f"\nscoring / plain base forward      = {ratio(rounds, 'scoring pass', 'plain base forward')}")
    print(f"evaluation / plain full forward   = {ratio(rounds, 'evaluation pass', 'plain full forward')}")
    print(f"whole step / (base + full)        = {ratio(rounds, 'whole step', 'plain base forward', 'plain full forward')}")
    print(f"peak resident memory              = {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
