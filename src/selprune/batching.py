"""Batches of chunks, sized automatically, that shrink instead of failing on out-of-memory."""

from __future__ import annotations

import torch

from .arch import text_config
from .errors import OutOfMemory

CPU_TOKENS_PER_BATCH = 4096  # measured sweet spot for small models on a 2-core CPU (bench/)
# Bytes per token in flight ~ FACTOR x hidden x 2 (about FACTOR hidden-wide 2-byte activations alive at once;
# layers run one after another, so depth does not enter) + vocab x 6 (the logits and a float32 copy).
GPU_BYTES_PER_TOKEN_FACTOR = 24  # a safe guess


def auto_batch_size(model, chunk_len: int, device: torch.device) -> int:
    """Chunks per batch: a fixed token budget on CPU; on GPU, a share of the free memory."""
    if device.type != "cuda":
        return max(1, CPU_TOKENS_PER_BATCH // chunk_len)
    free, _ = torch.cuda.mem_get_info(device)
    cfg = text_config(model.config)
    vocab = getattr(cfg, "vocab_size", 50_000)
    per_token = GPU_BYTES_PER_TOKEN_FACTOR * cfg.hidden_size * 2 + vocab * 6
    return max(1, min(256, int(0.5 * free) // (per_token * chunk_len)))


OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory")  # CUDA, CPU allocators


def is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or any(m in text for m in OOM_MESSAGES)


def for_each_batch(n: int, batch_size: int, fn) -> int:
    """Call fn(start, stop) over [0, n); on out-of-memory halve the batch and redo that batch.

    fn must only commit its work once it returns, so a failed batch leaves nothing behind.
    Returns the batch size that worked, so the next pass starts there.
    """
    start = 0
    while start < n:
        stop = min(n, start + batch_size)
        try:
            fn(start, stop)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_oom(exc):
                raise
            if batch_size == 1:
                raise OutOfMemory("out of memory with one chunk per batch: use a shorter --chunk-len, "
                                  "--dtype bfloat16, or a larger device") from None
            batch_size //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        start = stop
    return batch_size
