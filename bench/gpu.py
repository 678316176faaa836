"""One prepared GPU benchmark: the paper's protocol at OPT-1.3B (and OPT-6.7B) shape, bf16.

    python bench/gpu.py                      # OPT-1.3B shape: rates, one step, the full protocol
    python bench/gpu.py --shape 6.7b --no-full
    python bench/gpu.py --tiny --device cpu  # a seconds-long dry run of this script on a CPU

A random-initialised model built from the OPT config (no download) runs through selprune's own
statistics, selection, pruning and evaluation on random token ids (speed does not depend on the
text). Prints tokens/s and TFLOP/s (2 x matmul parameters x tokens / seconds) of a plain forward,
the scoring pass, the evaluation pass and a whole step, then times the paper's full protocol:
step-0 evaluation + 50 steps x (100k scoring + 100k evaluation tokens per dataset, 2 datasets).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from shapes import SHAPES, opt_model, random_chunks

from selprune.arch import NeuronGroup
from selprune.batching import auto_batch_size
from selprune.evaluate import evaluate_causal
from selprune.pruning import apply
from selprune.scorers import importance
from selprune.selection import scores, select
from selprune.stats import collect


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats=3):
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="1.3b")
    p.add_argument("--tiny", action="store_true", help="tiny shape and budgets, to check the script")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tokens", type=int, default=100_000, help="scoring and evaluation tokens per dataset")
    p.add_argument("--chunk-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--no-full", action="store_true", help="skip the full-protocol timing")
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    args = p.parse_args()
    if args.tiny:
        args.shape, args.tokens, args.chunk_len, args.steps = "tiny", 2048, 128, 3

    device = torch.device(args.device)
    model = opt_model(args.shape, device, attn=args.attn)
    body = sum(m.weight.numel() for m in model.base_model.modules() if isinstance(m, torch.nn.Linear))
    head = model.get_output_embeddings().weight.numel()
    neurons = NeuronGroup(model, "ff")
    batch = args.batch_size or auto_batch_size(model, args.chunk_len, device)

    n_chunks = -(-args.tokens // args.chunk_len)
    data = {role: torch.stack([random_chunks(n_chunks, args.chunk_len, seed + 2 * i) for i in range(2)])
            for seed, role in enumerate(("forget", "retain"))}  # [score | eval] chunks per dataset
    mask = torch.ones(n_chunks, args.chunk_len, dtype=torch.long)
    tokens = 2 * n_chunks * args.chunk_len  # per pass over both datasets
    skip = torch.arange(50)

    @torch.no_grad()
    def plain(part: int, run):
        for ids in data.values():
            for s in range(0, n_chunks, batch):
                run(input_ids=ids[part, s:s + batch].to(device), use_cache=False)

    def plain_base():
        plain(0, model.base_model)

    def plain_full():
        plain(1, model)

    def scoring():
        imp = [importance(collect(model, neurons, ids[0], mask, batch, moments=("sum_abs",), fused=args.compile)[0],
                          "abs") for ids in data.values()]
        return scores(imp[0], imp[1], 1e-3)

    def evaluation():
        for ids in data.values():
            evaluate_causal(model, ids[1], mask, batch, skip, fused=args.compile)

    pruned = torch.zeros(neurons.layers, neurons.units_per_layer, dtype=torch.bool)
    per_step = round(0.02 * neurons.total_units)

    def step():
        new = select(scoring(), pruned, per_step)
        apply(neurons, new)
        pruned.__ior__(new)
        evaluation()

    t = {"plain base forward": timed(plain_base, device), "plain full forward": timed(plain_full, device),
         "scoring pass": timed(scoring, device),
         "evaluation pass": timed(evaluation, device), "whole step": timed(step, device)}
    flops = {"plain base forward": 2 * body * tokens, "plain full forward": 2 * (body + head) * tokens,
             "scoring pass": 2 * body * tokens,
             "evaluation pass": 2 * (body + head) * tokens,
             "whole step": 2 * body * tokens + 2 * (body + head) * tokens}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# OPT-{args.shape} shape ({body / 1e9:.2f}B matmul params + {head / 1e6:.0f}M head), bf16, "
          f"{name}, chunks of {args.chunk_len}, batch {batch}, {tokens} tokens per pass, median of 3")
    print("| pass | seconds | tokens/s | TFLOP/s |\n|---|---|---|---|")
    for k, sec in t.items():
        n = tokens * (2 if k == "whole step" else 1)
        print(f"| {k} | {sec:.3f} | {n / sec:,.0f} | {flops[k] / sec / 1e12:.1f} |")
    print(f"scoring / plain base forward = {t['scoring pass'] / t['plain base forward']:.3f}")
    print(f"evaluation / plain full forward = {t['evaluation pass'] / t['plain full forward']:.3f}")
    print(f"whole step / (base + full) = {t['whole step'] / (t['plain base forward'] + t['plain full forward']):.3f}")
    if device.type == "cuda":
        print(f"peak GPU memory = {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    if not args.no_full:
        pruned.zero_()
        t0 = time.perf_counter()
        evaluation()
        for _ in range(args.steps):
            step()
        sync(device)
        print(f"full protocol ({args.steps} steps x 2%, {args.tokens} + {args.tokens} tokens per dataset): "
              f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
