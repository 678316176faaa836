"""Page faults and time of a plain forward with glibc's default thresholds and with selprune's.

    .venv/bin/python bench/allocator.py [--tokens 4096] [--rounds 4] [--forwards 6]

Each round starts two fresh processes, one per setting, in turns (the setting is process-wide), and
each times --forwards base forwards of the embedded model over the same --tokens tokens of `code`
after one warm-up forward. Prints the medians over all timed forwards and their ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def child(tuned: bool, tokens: int, forwards: int) -> None:
    import torch

    from selprune.allocator import keep_freed_memory
    from selprune.data import load_documents, make_splits
    from selprune.models import load_model

    if tuned:
        assert keep_freed_memory(), "no glibc mallopt here"
    model, tok = load_model("smollm2-135m")
    split = make_splits(load_documents("code"), tok, chunk_len=512, score_tokens=tokens, eval_tokens=512)
    ids, mask = split.score.input_ids, split.score.attention_mask
    out = []
    with torch.no_grad():
        for i in range(forwards + 1):
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
            if i:  # the first forward warms up
                out.append((time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--forwards", type=int, default=6)
    p.add_argument("--child", choices=["default", "tuned"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child == "tuned", args.tokens, args.forwards)
        return
    results = {"default": [], "tuned": []}
    for r in range(args.rounds):
        for setting in (("default", "tuned") if r % 2 == 0 else ("tuned", "default")):
            out = subprocess.run([sys.executable, __file__, "--child", setting, "--tokens", str(args.tokens),
                                  "--forwards", str(args.forwards)], capture_output=True, text=True, check=True)
            results[setting] += json.loads(out.stdout.strip().splitlines()[-1])
    print(f"# base forward of smollm2-135m over {args.tokens} tokens of code; {args.rounds} rounds x "
          f"{args.forwards} forwards per setting, fresh processes in turns")
    print("| glibc thresholds | median seconds | median page faults per forward |\n|---|---|---|")
    med = {}
    for setting, runs in results.items():
        med[setting] = statistics.median(t for t, _ in runs)
        print(f"| {setting} | {med[setting]:.3f} | {statistics.median(f for _, f in runs):,.0f} |")
    print(f"tuned / default = {med['tuned'] / med['default']:.3f}")


if __name__ == "__main__":
    main()
