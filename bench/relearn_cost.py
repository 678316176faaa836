"""What the relearning attack costs: one fine-tuning step against a plain forward pass over the same tokens.

    .venv/bin/python bench/relearn_cost.py [--batch 4] [--chunk-len 256] [--repeats 5]

On the embedded model and real `code` chunks, timed in turns, medians:
  plain forward   the model in its run dtype (bf16 where native), no gradients: what a pruning run pays
  fine-tune step  selprune relearn's step: float32 weights, bf16 compute where native, forward + backward
                  + fused AdamW, on the same tokens
  evaluation      one evaluation point of selprune relearn: a bf16 copy of the model and exact top-1 and loss
                  on --eval-tokens tokens of each of two datasets
"""

from __future__ import annotations

import argparse
import copy

import torch
from timing import interleaved, median

from selprune.data import load_documents, make_splits
from selprune.evaluate import evaluate_causal
from selprune.finetune import fine_tune_step
from selprune.models import cpu_has_bf16, load_model
from selprune.ranks import Head


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--chunk-len", type=int, default=256)
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    bf16 = cpu_has_bf16()
    plain, tok = load_model("smollm2-135m")
    trained, _ = load_model("smollm2-135m", dtype="float32")
    trained.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-5, weight_decay=0.0, fused=True)
    tokens = args.batch * args.chunk_len
    split = make_splits(load_documents("code"), tok, chunk_len=args.chunk_len, score_tokens=tokens,
                        eval_tokens=args.eval_tokens)
    ids, mask = split.score.input_ids[:args.batch], split.score.attention_mask[:args.batch]
    skip = torch.empty(0, dtype=torch.long)

    @torch.no_grad()
    def forward():
        plain(input_ids=ids, attention_mask=mask)

    def evaluation():
        evaluated = copy.deepcopy(trained).to(torch.bfloat16 if bf16 else torch.float32).eval()
        for _ in range(2):
            evaluate_causal(evaluated, split.eval.input_ids, split.eval.attention_mask, 8, skip, head=Head(evaluated))

    rounds = interleaved({"plain forward": forward, "fine-tune step": lambda: fine_tune_step(
        trained, optimizer, ids, mask, bf16), "evaluation point": evaluation}, args.repeats)
    f, s, e = (median(rounds, name) for name in ("plain forward", "fine-tune step", "evaluation point"))
    print(f"# {args.batch} x {args.chunk_len} tokens, {torch.get_num_threads()} threads, bf16 compute: {bf16}, "
          f"median of {args.repeats} interleaved rounds")
    print("| pass | seconds | over a plain forward |\n|---|---|---|")
    print(f"| plain forward ({plain.dtype}) | {f:.3f} | 1.00x |")
    print(f"| fine-tune step (fwd + bwd + AdamW) | {s:.3f} | {s / f:.2f}x |")
    print(f"| evaluation point ({args.eval_tokens} tokens x 2 datasets) | {e:.3f} | {e / f:.2f}x |")
    ranges = [r["fine-tune step"] / r["plain forward"] for r in rounds]
    print(f"fine-tune step / plain forward per round: {min(ranges):.2f} to {max(ranges):.2f}")


if __name__ == "__main__":
    main()
