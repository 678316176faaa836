"""Timing passes in turns, so that the drifts of a shared machine hit all of them alike."""

from __future__ import annotations

import statistics
import time


def interleaved(passes: dict, repeats: int, warm_up: bool = True) -> list[dict[str, float]]:
    """Seconds of each pass per round, after one warm-up call each (first calls allocate, pick kernels
    and compile) unless the caller warmed up more cheaply. Every other round runs the passes in reverse order."""
    if warm_up:
        for fn in passes.values():
            fn()
    rounds = []
    for r in range(repeats):
        names = list(passes) if r % 2 == 0 else list(reversed(passes))
        times = {}
        for name in names:
            t0 = time.perf_counter()
            passes[name]()
            times[name] = time.perf_counter() - t0
        rounds.append(times)
    return rounds


def median(rounds: list[dict[str, float]], name: str) -> float:
    return statistics.median(r[name] for r in rounds)
