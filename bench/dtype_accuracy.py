"""bf16 against fp32 on the embedded model: the same evaluation, both dtypes, and the time each took.

    .venv/bin/python bench/dtype_accuracy.py [--tokens 8192]

The issue's bar: bf16 top-1 within 1 point of fp32 on every dataset.
"""

from __future__ import annotations

import argparse
import time

import torch
from timing import machine

from selprune.data import load_documents, make_splits
from selprune.evaluate import evaluate_causal, frequent_tokens
from selprune.models import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--datasets", nargs="+", default=["code", "prose"])
    args = p.parse_args()
    results = {}
    for dtype in ("float32", "bfloat16"):
        model, tok = load_model(args.model, dtype=dtype)
        for name in args.datasets:
            split = make_splits(load_documents(name), tok, chunk_len=512, score_tokens=512,
                                eval_tokens=args.tokens, seed=0)
            ids, mask = split.eval.input_ids, split.eval.attention_mask
            t0 = time.perf_counter()
            m, _ = evaluate_causal(model, ids, mask, 8, frequent_tokens(ids, mask, 50))
            results[dtype, name] = (m, time.perf_counter() - t0)
    print(f"# {machine()}")
    print(f"# {args.model}, {args.tokens} evaluation tokens per dataset, {torch.get_num_threads()} threads")
    print("| dataset | fp32 top-1 | bf16 top-1 | diff (points) | fp32 loss | bf16 loss | fp32 s | bf16 s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.datasets:
        (a, ta), (b, tb) = results["float32", name], results["bfloat16", name]
        print(f"| {name} | {a.top1:.4f} | {b.top1:.4f} | {100 * (b.top1 - a.top1):+.2f} | {a.loss:.4f} | "
              f"{b.loss:.4f} | {ta:.1f} | {tb:.1f} |")


if __name__ == "__main__":
    main()
