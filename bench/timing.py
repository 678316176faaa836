"""Timing passes in turns, so that the drifts of a shared machine hit all of them alike."""

from __future__ import annotations

import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

import selprune


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


def machine() -> str:
    """What a table of timings must name: the CPU's model and whether it has AMX (bf16 products differ several
    fold with and without), the threads, torch, and the commit of the selprune measured (not the working
    directory's: a bench run with PYTHONPATH on an unpacked snapshot names no commit)."""
    cpu, amx = platform.processor() or platform.machine(), None
    info = Path("/proc/cpuinfo")
    if info.is_file():
        lines = info.read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
        amx = any(line.startswith("flags") and " amx_tile" in line for line in lines)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(selprune.__file__).parent).stdout.strip()
    return (f"{cpu}{'' if amx is None else ' with AMX' if amx else ' without AMX'}, {torch.get_num_threads()} "
            f"threads, torch {torch.__version__}, commit {commit or 'unknown (not a git checkout)'}")
