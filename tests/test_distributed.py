"""Data-parallel statistics: two processes (torchrun, gloo on CPU) give the same run as one process."""

import json
import socket
import subprocess
import sys

import pytest
from conftest import read_metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def selprune(*args, processes=1):
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}",
                f"--master-port={free_port()}", "-m", "selprune.cli"] if processes > 1 else \
               [sys.executable, "-m", "selprune.cli"]
    done = subprocess.run(launcher + list(args), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("group", ["ff", "attn-value"])
def test_two_processes_prune_the_same_neurons_as_one(tmp_path, group, tiny_llama, make_datasets):
    model = tiny_llama
    make_datasets(tmp_path, documents=5)  # an odd number of chunks: the two shards differ in size
    common = ["run", "--model", str(model), "--forget", str(tmp_path / "forget"), "--retain",
              str(tmp_path / "retain"), "--group", group, "--steps", "3", "--fraction", "0.1",
              "--score-tokens", "330", "--eval-tokens", "200", "--chunk-len", "32", "--batch-size", "2",
              "--dtype", "float32", "--quiet"]
    selprune(*common, "--output", str(tmp_path / "one"))
    selprune(*common, "--output", str(tmp_path / "two"), processes=2)

    one, two = (json.loads((tmp_path / d / "pruned.json").read_text()) for d in ("one", "two"))
    assert one == two and sum(len(v) for s in one["steps"] for v in s["pruned"].values()) > 0
    rows_one, rows_two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert len(rows_one) == len(rows_two) == 8
    for a, b in zip(rows_one, rows_two):
        assert a["tokens"] == b["tokens"]  # every evaluation position counted once, across both processes
        for key in ("top1", "top10", "loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-6, abs=1e-9), (key, a, b)
