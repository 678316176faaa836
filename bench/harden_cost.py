"""What --harden costs: a hardened pruning step against a plain one, through the real run's methods.

    .venv/bin/python bench/harden_cost.py [--tokens 2048] [--harden 4] [--repeats 3] [--no-compile]

By default on the embedded model, forget=code and retain=prose, --tokens scoring and evaluation tokens per
dataset, timed in turns (medians over rounds):
  plain step      scoring on the model + selection + pruning + evaluation of both datasets
  hardened step   the same, scored on an attacked copy: copy the model, --harden fine-tuning steps of the
                  attack (4 x 256 tokens each, selprune relearn's defaults), cast back, score, drop the copy
The difference is the attack, whose cost does not depend on the token budgets: the ratio falls as --tokens
grows. The warm-up is one plain step (it compiles) and two fine-tuning steps of a copy (a process's first
bf16 fine-tuning steps are slow once), cheaper than a whole hardened step.
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from timing import interleaved, machine, median

from selprune.allocator import keep_freed_memory
from selprune.config import RunConfig
from selprune.finetune import fine_tuning
from selprune.pruning import apply
from selprune.run import Run
from selprune.selection import select


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--forget", default="code")
    p.add_argument("--retain", default="prose")
    p.add_argument("--tokens", type=int, default=2048, help="scoring and evaluation tokens per dataset")
    p.add_argument("--chunk-len", type=int, default=512)
    p.add_argument("--harden", type=int, default=4, help="fine-tuning steps of the attack")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    args = p.parse_args()
    keep_freed_memory()  # as `selprune run` does

    with tempfile.TemporaryDirectory() as tmp:
        config = RunConfig(model=args.model, forget=args.forget, retain=args.retain, steps=10,
                           score_tokens=args.tokens, eval_tokens=args.tokens, chunk_len=args.chunk_len,
                           harden=args.harden, compile=args.compile, output=str(Path(tmp) / "run"))
        run = Run(config, quiet=True)
        run.load()
        pruned = torch.zeros(run.neurons.layers, run.neurons.units_per_layer, dtype=torch.bool)

        def step(scores):  # as Run.execute does with them
            new = select(scores, pruned, run.units_per_step())
            apply(run.neurons, new)
            pruned.__ior__(new)
            for d in run.evaluated:
                run.evaluate(d)

        step(run.step_scores(2))
        warm = copy.deepcopy(run.model).float().requires_grad_(True).train()
        training = fine_tuning(warm, run.data[0].attack, config.harden_lr, config.harden_batch_size, 0,
                               bf16=run.model.dtype == torch.bfloat16)
        next(training), next(training)
        del warm, training
        rounds = interleaved({"plain step": lambda: step(run.step_scores(2)),
                              "hardened step": lambda: step(run.pruning_scores(2))}, args.repeats, warm_up=False)

    plain, hardened = (median(rounds, name) for name in ("plain step", "hardened step"))
    ratios = sorted(r["hardened step"] / r["plain step"] for r in rounds)
    print(f"# harden cost: {config.model} {run.model.dtype}, {args.tokens} scoring + {args.tokens} evaluation tokens "
          f"per dataset (2 datasets), --harden {args.harden} x {config.harden_batch_size} x {config.harden_chunk_len} "
          f"tokens, compile={args.compile}, medians of {args.repeats} interleaved rounds")
    print(f"# {machine()}")
    print(f"# command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print("| pass | seconds | over a plain step |\n|---|---|---|")
    for name, sec in (("plain step", plain), ("hardened step", hardened)):
        print(f"| {name} | {sec:.2f} | {sec / plain:.2f}x |")
    print(f"\nhardened / plain step: ratio of medians {hardened / plain:.2f}; per round {ratios[0]:.2f} to "
          f"{ratios[-1]:.2f} (median {statistics.median(ratios):.2f}); the attack: {hardened - plain:.1f} s a step")
    print(f"peak resident memory = {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
