"""Continuations of fixed length: greedy, or sampled from a seed, in batches that shrink on out-of-memory."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from ..batching import for_each_batch

BATCH = 16  # prompts per generate call; a few dozen tokens each, so memory is never the limit on CPU


@dataclass(frozen=True)
class Decoding:
    """greedy (temperature None) or sampling at a temperature from a seed."""

    name: str
    temperature: float | None = None
    seed: int = 0


GREEDY = Decoding("greedy")


@contextmanager
def one_cpu_thread(device: torch.device):
    """Within: torch computes on one thread when on CPU. Decoding feeds a token at a time through small
    products, where a second thread gains little and, on a busy machine, stalls the first: on 2 shared
    cores with other jobs running, 2 threads made generation 8 to 20 times slower than 1."""
    if device.type != "cpu":
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@torch.no_grad()
def generate(model, prompts: list[list[int]], new_tokens: int, pad_id: int, eos_id: int | None,
             decoding: Decoding = GREEDY) -> list[list[int]]:
    """Exactly `new_tokens` new token ids after each prompt (the end-of-text token is held back until then,
    so every continuation has the same length). Prompts of unequal length are padded on the left."""
    sampled = decoding.temperature is not None
    plain = dict(temperature=decoding.temperature, top_k=0, top_p=1.0) if sampled else {}  # the whole distribution
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=sampled,
                              pad_token_id=pad_id, eos_token_id=eos_id, **plain)
    device = next(model.parameters()).device
    if sampled:
        torch.manual_seed(decoding.seed)  # every model version draws from the same seed
    out: list[list[int]] = []

    def one_batch(start, stop):
        batch = prompts[start:stop]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(batch):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        new = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        out.extend(new[:, width:].tolist())

    with one_cpu_thread(device):
        for_each_batch(len(prompts), BATCH, one_batch)
    return out
