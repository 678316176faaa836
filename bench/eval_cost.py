"""What scoring predictions costs on top of the language-model head, per way of deciding ranks.

    .venv/bin/python bench/eval_cost.py [--tokens 4096] [--repeats 7] [--tiles 1024x8192 4096x2048 ...]

On the embedded model's real final hidden states (`prose`), timed in turns, medians:
  head only   the bf16 head over every position in one product (what a plain full forward pays)
  compiled    selprune's evaluation: the head + rank band counted in one compiled pass + loss, for each of
              --tiles ROWSxWIDTH: ROWS positions at a time, the vocabulary WIDTH tokens at a time (the
              default's tiles first; 256x49152 is the whole vocabulary 256 positions at a time, as before)
  eager       the same without torch.compile, in the first tiles
and how many top-1 / top-10 decisions differ from a float32 head (should be 0). Last, what the exact
ranks are for: the bias of a plain argmax over the bf16 logits, against the float32 head's top-1 (ties
with the target counted as hits), on the same positions.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from timing import interleaved, machine, median

from selprune.data import load_documents, make_splits
from selprune.models import load_model
from selprune.ranks import Head, score_predictions


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--tiles", nargs="+", default=[(1024, 8192)], type=tile,
                   help="ROWSxWIDTH: positions and vocabulary tokens whose logits are made together")
    args = p.parse_args()
    model, tok = load_model("smollm2-135m")
    split = make_splits(load_documents("prose"), tok, chunk_len=512, score_tokens=512, eval_tokens=args.tokens)
    ids, mask = split.eval.input_ids, split.eval.attention_mask
    valid = (mask[:, :-1] * mask[:, 1:]).bool()
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1][valid]
    targets = ids[:, 1:][valid]
    head = Head(model)

    ways = {"head only": lambda: head.linear(hidden)}
    for rows, width in args.tiles:
        ways[f"compiled, tiles of {rows} x {width}"] = partial(score_predictions, hidden, head, targets, rows=rows,
                                                              width=width, fused=True)
    rows, width = args.tiles[0]
    ways["eager"] = partial(score_predictions, hidden, head, targets, rows=rows, width=width)
    rounds = interleaved(ways, args.repeats)
    results = {name: fn() for name, fn in ways.items()}

    exact = hidden.float() @ head.linear.weight.float().T
    rank = (exact > exact.gather(1, targets[:, None])).sum(1)
    base = median(rounds, "head only")
    print(f"# {machine()}")
    print(f"# {len(targets)} positions of prose, {model.dtype}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} interleaved rounds")
    print("| way | seconds | over the head | top-1 / top-10 differences from a float32 head |\n|---|---|---|---|")
    for name in ways:
        sec = median(rounds, name)
        diff = "" if name == "head only" else (f"{int(((rank == 0) != results[name][0]).sum())} / "
                                               f"{int(((rank < 10) != results[name][1]).sum())}")
        print(f"| {name} | {sec:.3f} | {sec / base:.2f}x | {diff} |")
    argmax_hit = results["head only"].argmax(-1) == targets
    print(f"\n{argmax_bias(argmax_hit, rank == 0)}")


def tile(text: str) -> tuple[int, int]:
    """ROWSxWIDTH, both positive integers, as --tiles takes it."""
    try:
        rows, width = (int(part) for part in text.split("x"))
    except ValueError:
        rows = width = 0
    if rows < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"takes ROWSxWIDTH with positive integers, e.g. 4096x2048, got {text!r}")
    return rows, width


def argmax_bias(argmax_hit: torch.Tensor, exact_hit: torch.Tensor) -> str:
    """Top-1 by a plain bf16 argmax against the exact top-1, in percentage points."""
    plain, exact = 100 * argmax_hit.double().mean(), 100 * exact_hit.double().mean()
    disagree = 100 * (argmax_hit != exact_hit).double().mean()
    return (f"top-1 by a plain bf16 argmax {plain:.2f}% vs exact {exact:.2f}%: {plain - exact:+.2f} points; "
            f"they disagree at {disagree:.2f}% of positions")


if __name__ == "__main__":
    main()
