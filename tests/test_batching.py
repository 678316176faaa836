"""Batches that shrink on out-of-memory instead of failing."""

import pytest
import torch

from selprune.batching import for_each_batch
from selprune.errors import OutOfMemory


def test_out_of_memory_halves_the_batch_and_loses_nothing():
    done = []

    def work(start, stop):
        if stop - start > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        done.append((start, stop))

    assert for_each_batch(7, 8, work) == 2
    assert done == [(0, 2), (2, 4), (4, 6), (6, 7)]


def test_out_of_memory_with_one_chunk_is_out_of_memory_not_bad_input():
    """OutOfMemory, so the command line exits 3 (errors.py), with what to lower."""
    def work(start, stop):
        raise torch.OutOfMemoryError("out of memory")

    with pytest.raises(OutOfMemory, match="out of memory with one chunk per batch") as exc:
        for_each_batch(3, 4, work)
    assert "--chunk-len" in str(exc.value) and "--dtype bfloat16" in str(exc.value)
