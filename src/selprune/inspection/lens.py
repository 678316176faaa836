"""The logit lens: next-token top-1 of the residual stream after every block, read through the model's own
final norm and head, with ranks as exact as the evaluation's (head.score_predictions).

At the last block this is the model's own top-1, so the curve ends where the run's evaluation does. Where
the pruned curve keeps up with the unpruned one in the middle layers and falls only at the end, the
information is still in the stream, hidden from the last layer rather than removed.
"""

from __future__ import annotations

import torch

from ..arch import ResidualStream, decoder
from ..batching import for_each_batch
from ..ranks import Head, score_predictions

MIDDLE = (0.25, 0.75)  # the middle layers: from a quarter to three quarters of the depth
HIDDEN_KEEPS = 0.8  # pruned / unpruned top-1 in the middle layers at or above this: the information is still there
LAST_FAILS = 0.5  # pruned / unpruned top-1 at the last layer below this: the model no longer shows it


@torch.no_grad()
def lens_top1(model, ids: torch.Tensor, mask: torch.Tensor, batch_size: int, head: Head | None = None,
              fused: bool = False) -> tuple[list[float], int]:
    """(top-1 after each block, positions scored) on chunks ids/mask [n, L], every position whose next
    token is real, as in evaluate_causal. `fused` compiles the rank counts (a third of the eager time)."""
    stream, body = ResidualStream(model), decoder(model)
    head = head or Head(model)
    at_head = head.linear.weight.device
    device = next(model.parameters()).device
    hits = torch.zeros(len(stream.blocks), dtype=torch.float64)
    count = 0

    def one_batch(start, stop):
        nonlocal count
        chunk_ids, chunk_mask = ids[start:stop].to(device), mask[start:stop].to(device)
        valid = (chunk_mask[:, :-1] * chunk_mask[:, 1:]).bool()
        targets = chunk_ids[:, 1:][valid].to(at_head)
        batch = torch.zeros_like(hits)

        def score(layer, hidden):
            read = stream.to_head(hidden[:, :-1][valid.to(hidden.device)])
            batch[layer] = score_predictions(read.to(at_head), head, targets, fused=fused)[0].sum().item()

        handles = stream.add_hooks(score)
        try:
            body(input_ids=chunk_ids, attention_mask=chunk_mask, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        hits.add_(batch)
        count += len(targets)

    for_each_batch(len(ids), batch_size, one_batch)
    return (hits / max(count, 1)).tolist(), count


def verdict(base: list[float], pruned: list[float]) -> tuple[str, str]:
    """(hidden | removed | kept | unclear, a sentence with the numbers) for one dataset's lens curves."""
    layers = len(base)
    middle = range(int(MIDDLE[0] * layers), max(int(MIDDLE[1] * layers), int(MIDDLE[0] * layers) + 1))
    base_mid = sum(base[i] for i in middle) / len(middle)
    if base[-1] <= 0 or base_mid <= 0:
        return "unclear", "the unpruned model's lens accuracy is zero here, so there is nothing to compare"
    last = pruned[-1] / base[-1]
    mid = sum(pruned[i] for i in middle) / len(middle) / base_mid
    where = f"layers {middle[0] + 1} to {middle[-1] + 1}"
    numbers = (f"at the last layer the pruned model keeps {100 * last:.0f}% of the unpruned top-1, in the middle "
               f"({where}) {100 * mid:.0f}%")
    if last >= LAST_FAILS:
        return "kept", f"not removed: {numbers}"
    if mid >= HIDDEN_KEEPS:
        return "hidden", f"looks hidden rather than removed: {numbers}"
    return "removed", f"looks removed, not only hidden from the last layer: {numbers}"
