"""What one step of each unlearning method costs, against a plain forward pass over one batch of its tokens.

    .venv/bin/python bench/unlearn_cost.py [--batch 4] [--chunk-len 512] [--repeats 3] [--methods ga npo ...]

On the embedded model, forget = code and retain = prose, timed in turns (medians over rounds), through
selprune unlearn's own trainer and step (unlearn/runner.py):
  plain forward   the model in the run's dtype (bf16 where native), no gradients, on one forget batch of
                  --batch x --chunk-len tokens: what a pruning run pays per batch
  METHOD step     one optimiser step of the method: its forward passes (forget, retain, the frozen
                  reference or teacher where it has one), the backward pass and AdamW on float32 weights
                  with bf16 compute where native, on one forget and one retain batch of the same size
Each method gets its own warm-up step (a process's first bf16 backward passes are slow once).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from timing import interleaved, machine, median

from selprune.allocator import keep_freed_memory
from selprune.models import load_model
from selprune.unlearn import UnlearnConfig
from selprune.unlearn.methods import METHODS
from selprune.unlearn.runner import Unlearning


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--chunk-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = p.parse_args()
    keep_freed_memory()  # as the commands do
    tokens = args.batch * args.chunk_len
    plain, _ = load_model(args.model)
    passes, loaded = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            config = UnlearnConfig(model=args.model, forget="code", retain="prose", method=method,
                                   batch_size=args.batch, chunk_len=args.chunk_len, score_tokens=tokens,
                                   eval_tokens=args.chunk_len, output=str(Path(tmp) / method))
            unlearning = Unlearning(config, quiet=True)
            unlearning.load()
            model, _, optimizer = unlearning.trainer(config.learning_rates[0])
            rows = {role: torch.arange(args.batch) for role in unlearning.training}
            unlearning.step(model, optimizer, rows)  # warm-up
            passes[f"{method} step"] = lambda u=unlearning, m=model, o=optimizer: u.step(m, o, rows)
            loaded.append(unlearning)  # the folders are unlocked when the process ends
        forget = loaded[0].training["forget"]
        ids, mask = forget.input_ids[:args.batch], forget.attention_mask[:args.batch]

        @torch.no_grad()
        def forward():
            plain(input_ids=ids, attention_mask=mask, use_cache=False)

        rounds = interleaved({"plain forward": forward, **passes}, args.repeats)

    f = median(rounds, "plain forward")
    print(f"# unlearning step cost: {args.model}, plain forward in {plain.dtype}, batches of {args.batch} x "
          f"{args.chunk_len} tokens, medians of {args.repeats} interleaved rounds")
    print(f"# {machine()}")
    print(f"# command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print("| pass | seconds | over a plain forward | per round |\n|---|---|---|---|")
    print(f"| plain forward | {f:.3f} | 1.00x | |")
    for name in passes:
        ratios = sorted(r[name] / r["plain forward"] for r in rounds)
        print(f"| {name} | {median(rounds, name):.3f} | {median(rounds, name) / f:.2f}x | "
              f"{ratios[0]:.2f} to {ratios[-1]:.2f} |")


if __name__ == "__main__":
    main()
