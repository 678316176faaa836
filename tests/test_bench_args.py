"""The benchmarks' own settings refuse bad input in one line, exit status 2, before any work."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, **kwargs)


@pytest.mark.parametrize("tiles", ["0x2048", "4096x-1", "4096", "axb", "4096x2048x1"])
def test_eval_cost_refuses_tiles_that_are_not_two_positive_integers(tiles):
    done = _bench(sys.executable, "bench/eval_cost.py", "--tiles", "4096x2048", tiles)
    assert done.returncode == 2
    assert f"takes ROWSxWIDTH with positive integers, e.g. 4096x2048, got '{tiles}'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("precision", ["nan", "inf", "0", "-1"])
def test_adaptive_refuses_precisions_that_are_not_finite_and_positive(precision):
    done = _bench(sys.executable, "bench/adaptive.py", "--eval-precision", "2", precision)
    assert done.returncode == 2
    assert "--eval-precision takes finite standard errors above 0" in done.stderr
    assert "Traceback" not in done.stderr


def test_cpu_session_refuses_an_output_folder_that_exists(tmp_path):
    """Earlier figures are never overwritten, and a second session on the same folder does not start."""
    out = tmp_path / "cpu-out"
    out.mkdir()
    (out / "step_cost.txt").write_text("earlier figures\n")
    done = _bench("bash", "bench/cpu_session.sh", env={"OUT": str(out), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert done.stderr.strip() == (f"bench/cpu_session.sh: {out} exists (figures of an earlier session?); move it "
                                   "away or set OUT=NEW")
    assert [p.name for p in out.iterdir()] == ["step_cost.txt"]
    assert (out / "step_cost.txt").read_text() == "earlier figures\n"
