"""How far a step's selection from fewer scoring tokens lies from the full budget's, against how far the full
budget's lies from itself on another sample: the measurements behind --adaptive-scoring's rule.

    .venv/bin/python bench/selection_noise.py [--forget code --retain prose] [--samples 3] [--blocks 8]
                                             [--save blocks.pt | --load blocks.pt]

Collects step 1's statistics (the unpruned model) in blocks of --block-tokens per dataset: --samples disjoint
samples of --blocks blocks each (the first sample is the scoring split of a run with --blocks x --block-tokens
scoring tokens; the others are the documents after it). Prints, at --fraction of the units (global):
  - per budget 1..blocks blocks: the mean overlap of a sample's selection with its own full-budget selection;
  - the overlap of the full-budget selections of different samples (the fixed budget against itself);
  - for each stopping rule in RULES (below), simulated on every sample with its blocks in --orders orders:
    the blocks it stops at, and the overlap of its selection with the sample's full-budget selection.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from selprune.adaptive import Settled, overlap
from selprune.config import RunConfig
from selprune.run import Run
from selprune.scorers import SCORERS, importance
from selprune.selection import scores, select
from selprune.stats import Stats, collect


def block_stats(args) -> dict:
    """{"forget"/"retain": [Stats of each block], "config": ...}: every block of every sample, collected once."""
    per_block = args.block_tokens // args.chunk_len
    total = args.samples * args.blocks * args.block_tokens
    with tempfile.TemporaryDirectory() as tmp:
        config = RunConfig(forget=args.forget, retain=args.retain, score_tokens=total, eval_tokens=args.eval_tokens,
                           chunk_len=args.chunk_len, fraction=args.fraction, output=str(Path(tmp) / "run"))
        run = Run(config, quiet=True)
        run.load()
        sums = SCORERS[config.scorer].sums
        out = {"eps": config.eps_value, "units": run.units_per_step(), "scorer": config.scorer,
               "dims": run.neurons.dims_per_unit}
        t0 = time.perf_counter()
        for d in run.data:
            out[d.role] = []
            for start in range(0, len(d.score_ids), per_block):
                chunk = slice(start, start + per_block)
                stats, run.batch_size = collect(run.model, run.neurons, d.score_ids[chunk], d.score_mask[chunk],
                                                run.batch_size, None, sums, fused=config.compile)
                out[d.role].append(stats)
        print(f"collected {len(out['forget'])} + {len(out['retain'])} blocks in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
    return out


def selection(data: dict, forget: list[int], retain: list[int]) -> torch.Tensor:
    """The step-1 selection from the sums of the given blocks of each dataset."""
    imp = []
    for role, which in (("forget", forget), ("retain", retain)):
        total = Stats.zeros(*data[role][0].sum_abs.shape, moments=("sum_abs",))
        for b in which:
            total.add(data[role][b])
        imp.append(importance(total, data["scorer"], data["dims"]))
    score = scores(imp[0], imp[1], data["eps"])
    return select(score, torch.zeros_like(score, dtype=torch.bool), data["units"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--forget", default="code")
    p.add_argument("--retain", default="prose")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--blocks", type=int, default=8, help="blocks per sample: the full budget")
    p.add_argument("--block-tokens", type=int, default=2048)
    p.add_argument("--chunk-len", type=int, default=512)
    p.add_argument("--eval-tokens", type=int, default=16_384, help="as the demo: the scoring split starts after it")
    p.add_argument("--fraction", type=float, default=0.02)
    p.add_argument("--orders", type=int, default=20, help="block orders per sample for the simulated rules")
    p.add_argument("--save", help="write the block statistics here")
    p.add_argument("--load", help="read block statistics written by --save instead of collecting them")
    args = p.parse_args()
    data = torch.load(args.load, weights_only=False) if args.load else block_stats(args)
    if args.save:
        torch.save(data, args.save)
    n = args.blocks
    samples = [list(range(s * n, (s + 1) * n)) for s in range(len(data["forget"]) // n)]
    full = [selection(data, s, s) for s in samples]
    print(f"{args.forget} vs {args.retain}: {data['units']} units, {len(samples)} samples of {n} x "
          f"{args.block_tokens} tokens per dataset")
    print("blocks  tokens  overlap with the sample's full budget (mean over samples)")
    for k in range(1, n + 1):
        values = [overlap(selection(data, s[:k], s[:k]), f) for s, f in zip(samples, full)]
        print(f"{k:6d}  {k * args.block_tokens:6d}  {statistics.mean(values):.3f}  "
              f"({' '.join(f'{v:.3f}' for v in values)})")
    pairs = [overlap(full[a], full[b]) for a, b in itertools.combinations(range(len(samples)), 2)]
    print(f"full budget vs another sample's: mean {statistics.mean(pairs):.3f}  "
          f"({' '.join(f'{v:.3f}' for v in pairs)})")
    generator, self_overlap = random.Random(0), statistics.mean(pairs)
    paths = []  # (sample's full-budget selection, the selections after each block of one order of its blocks)
    for s, f in zip(samples, full):
        for order in range(args.orders):
            blocks = list(s) if order == 0 else generator.sample(s, len(s))
            paths.append((f, [selection(data, blocks[:k], blocks[:k]) for k in range(1, n + 1)]))
    steady = [statistics.mean(overlap(path[k], path[k - 1]) for _, path in paths) for k in range(1, n)]
    print(f"overlap with the block before, after blocks 2..{n} (mean over {len(paths)} orders): "
          f"{' '.join(f'{v:.3f}' for v in steady)}")
    for name, rule in RULES.items():
        stops, overlaps = [], []
        for f, path in paths:
            settled = rule()
            k = next(k for k in range(1, n + 1) if settled.after(path[k - 1], k, n))
            stops.append(k)
            overlaps.append(overlap(path[k - 1], f))
        below = sum(o < self_overlap for o in overlaps) / len(overlaps)
        print(f"rule {name:28s} stops after {statistics.mean(stops):.2f} blocks ({min(stops)} to {max(stops)}); "
              f"overlap with the full budget: mean {statistics.mean(overlaps):.3f}, min {min(overlaps):.3f}, "
              f"{100 * below:.0f}% below {self_overlap:.3f}")


RULES = {f"overlap >= {t:g} x{times}, floor 1/3": (lambda t=t, times=times: Settled(t, times, 1 / 3))
         for t in (0.0, 0.8, 0.85, 0.9) for times in (1, 2) if t or times == 1}

if __name__ == "__main__":
    main()
