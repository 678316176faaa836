"""What the relearning attack costs: a fine-tuning step and an evaluation point, each against a plain forward
pass over the same tokens.

    .venv/bin/python bench/relearn_cost.py [--batch 4] [--chunk-len 256] [--eval-tokens 4096] [--repeats 5]

On the embedded model and real `code` (forget) and `prose` (retain) chunks, timed in turns, medians:
  fine-tune step   selprune relearn's step: float32 weights, bf16 compute where native, forward + backward
                   + fused AdamW, on --batch x --chunk-len tokens; against a plain forward of that batch
  evaluation point exact top-1 and loss on --eval-tokens tokens of each dataset (the run's chunks), before
                   (a bf16 copy of the trained model per point, eager rank counts) and now (one bf16 model
                   per attack overwritten in place, compiled rank counts, as runs evaluate); against a plain
                   forward of the same chunks in the same batches
A plain forward is the model in its run dtype (bf16 where native), no gradients: what a pruning run pays.
"""

from __future__ import annotations

import argparse
import copy

import torch
from timing import interleaved, machine, median

from selprune.batching import auto_batch_size
from selprune.config import RunConfig
from selprune.data import load_documents, make_splits
from selprune.evaluate import evaluate_causal
from selprune.finetune import fine_tune_step
from selprune.models import cpu_has_bf16, load_model
from selprune.ranks import Head
from selprune.finetune import load_trained_weights


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
    evaluated = copy.deepcopy(trained).to(torch.bfloat16 if bf16 else torch.float32).eval().requires_grad_(False)
    trained.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-5, weight_decay=0.0, fused=True)
    tokens = args.batch * args.chunk_len
    code = make_splits(load_documents("code"), tok, chunk_len=args.chunk_len, score_tokens=tokens,
                       eval_tokens=args.chunk_len)
    ids, mask = code.score.input_ids[:args.batch], code.score.attention_mask[:args.batch]
    eval_len = RunConfig.chunk_len
    rows = -(-args.eval_tokens // eval_len)  # the first chunks of the evaluation split, as relearn takes them
    splits = [make_splits(load_documents(spec), tok, chunk_len=eval_len, score_tokens=eval_len,
                          eval_tokens=args.eval_tokens).eval for spec in ("code", "prose")]
    datasets = [(chunks.input_ids[:rows], chunks.attention_mask[:rows]) for chunks in splits]
    eval_batch = auto_batch_size(plain, eval_len, torch.device("cpu"))
    skip = torch.empty(0, dtype=torch.long)

    @torch.no_grad()
    def forward():
        plain(input_ids=ids, attention_mask=mask)

    @torch.no_grad()
    def forward_eval_tokens():
        for eval_ids, eval_mask in datasets:
            for start in range(0, len(eval_ids), eval_batch):
                plain(input_ids=eval_ids[start:start + eval_batch], attention_mask=eval_mask[start:start + eval_batch])

    def evaluate(model, fused):
        head = Head(model)
        for eval_ids, eval_mask in datasets:
            evaluate_causal(model, eval_ids, eval_mask, eval_batch, skip, fused=fused, head=head)

    def point_before():
        evaluate(copy.deepcopy(trained).to(evaluated.dtype).eval().requires_grad_(False), fused=False)

    def point_now():
        load_trained_weights(evaluated, trained)
        evaluate(evaluated, fused=True)

    passes = {"plain forward": forward, "fine-tune step": lambda: fine_tune_step(trained, optimizer, ids, mask, bf16),
              "plain forward, evaluated tokens": forward_eval_tokens, "point before": point_before,
              "point now": point_now}
    rounds = interleaved(passes, args.repeats)
    f, s, fe, before, now = (median(rounds, name) for name in passes)
    evaluated_tokens = sum(int(eval_mask.sum()) for _, eval_mask in datasets)
    print(f"# {machine()}")
    print(f"# {torch.get_num_threads()} threads, bf16 compute: {bf16}, median of {args.repeats} interleaved rounds")
    print("| pass | seconds | over a plain forward of the same tokens |\n|---|---|---|")
    print(f"| plain forward ({plain.dtype}), {args.batch} x {args.chunk_len} tokens | {f:.3f} | 1.00x |")
    print(f"| fine-tune step (fwd + bwd + AdamW), the same tokens | {s:.3f} | {s / f:.2f}x |")
    print(f"| plain forward ({plain.dtype}), {evaluated_tokens} tokens of 2 datasets | {fe:.3f} | 1.00x |")
    print(f"| evaluation point before: a copy per point, eager ranks | {before:.3f} | {before / fe:.2f}x |")
    print(f"| evaluation point now: one model in place, compiled ranks | {now:.3f} | **{now / fe:.2f}x** |")
    for name in ("fine-tune step", "point now"):
        base = "plain forward" if name == "fine-tune step" else "plain forward, evaluated tokens"
        ratios = [r[name] / r[base] for r in rounds]
        print(f"{name} / its plain forward per round: {min(ratios):.2f} to {max(ratios):.2f}")


if __name__ == "__main__":
    main()
