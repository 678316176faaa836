"""Peak memory does not grow with the token budget: model + one batch + O(neurons) statistics.

    .venv/bin/python bench/memory.py [--budgets 2048 16384]
    .venv/bin/python bench/memory.py --shape 1.3b --budgets 4096 16384   # random OPT-1.3B, random ids

Each budget runs in a fresh process: load the model, one scoring pass and one evaluation pass on
`code` (or on random token ids with --shape); it prints the resident memory (ru_maxrss) after
loading and at the peak, so the difference is what the passes added. glibc keeps its default
thresholds here (unlike `selprune run`, see bench/allocator.py): with freed memory kept, the passes
reuse what loading freed and the difference would read 0.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
from shapes import opt_model, random_chunks

from selprune.arch import NeuronGroup
from selprune.data import load_documents, make_splits
from selprune.evaluate import evaluate_causal
from selprune.models import load_model
from selprune.stats import collect


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(model_spec: str, shape: str | None, tokens: int, batch: int) -> dict:
    if shape:
        model = opt_model(shape, "cpu")
        loaded = rss_mib()
        score_ids, eval_ids = (random_chunks(-(-tokens // 512), 512, seed) for seed in (0, 1))
        score_mask = eval_mask = torch.ones_like(score_ids)
    else:
        model, tok = load_model(model_spec)
        loaded = rss_mib()
        split = make_splits(load_documents("code"), tok, chunk_len=512, score_tokens=tokens, eval_tokens=tokens)
        (score_ids, score_mask), (eval_ids, eval_mask) = ((s.input_ids, s.attention_mask)
                                                          for s in (split.score, split.eval))
    neurons = NeuronGroup(model, "ff")
    stats, _ = collect(model, neurons, score_ids, score_mask, batch)
    evaluate_causal(model, eval_ids, eval_mask, batch, torch.empty(0, dtype=torch.long))
    stat_bytes = sum(v.numel() * v.element_size() for v in stats.moments().values())
    return {"tokens": tokens, "after_load_mib": loaded, "peak_mib": rss_mib(), "stats_bytes": stat_bytes,
            "model_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--shape", help="a random-initialised OPT shape from bench/shapes.py instead of --model")
    p.add_argument("--budgets", type=int, nargs="+", default=[2048, 16384])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, args.shape, args.one, args.batch)))
        return
    name = f"random OPT-{args.shape}" if args.shape else args.model
    print(f"# {name}, batch {args.batch} x 512 tokens, one scoring + one evaluation pass per budget")
    print("| tokens | model bytes | stats bytes (all moments) | RSS after load MiB | peak RSS MiB | added MiB |")
    print("|---|---|---|---|---|---|")
    for tokens in args.budgets:
        shape = ["--shape", args.shape] if args.shape else []
        out = subprocess.run([sys.executable, __file__, "--model", args.model, *shape, "--batch", str(args.batch),
                              "--one", str(tokens)], capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"| {tokens} | {r['model_bytes']:,} | {r['stats_bytes']:,} | {r['after_load_mib']:.0f} | "
              f"{r['peak_mib']:.0f} | {r['peak_mib'] - r['after_load_mib']:.0f} |")


if __name__ == "__main__":
    main()
