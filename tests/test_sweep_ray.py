"""selprune sweep --ray on a local Ray instance of 2 workers and tiny runs: the same run folders as a sweep
without Ray, a worker killed mid-run run again to the same result, a failed run that does not stop the other;
and the refusals (no ray package, resources no machine has) in one line."""

import importlib.util
import os
import signal
import sys

import pytest
from conftest import one_error_line
from test_sweep import summary_rows, write_grid

from selprune.cli import main
from selprune.sweep import load, sweep

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason='ray is not installed (pip install -e ".[ray]")')
SAME_BYTES = ("metrics.csv", "pruned.json", "config.toml", "state/progress.json")  # not timings
KILLED, FAILING = "killed", "failing"  # the sweep folders where the workers' hook kills a run, or fails one


def worker_hook(marks):
    """Run by every Ray worker before its tasks (runtime_env's worker_process_setup_hook): in a sweep folder
    named KILLED, the first run to commit step 2 kills its own worker instead, once (the mark file says it
    did); in one named FAILING, the run with scorer abs fails when it starts, as a dataset found bad late
    would."""
    def hook():
        from selprune import run as run_module
        from selprune.errors import UserError
        from selprune.rundir import RunFolder

        commit, run = RunFolder.commit, run_module.run

        def dying_commit(self, *args, **kw):
            mark = marks / "killed"
            if self.path.parent.name == KILLED and self.completed_step() == 1 and not mark.exists():
                mark.write_text(self.path.name)
                os.kill(os.getpid(), signal.SIGKILL)
            return commit(self, *args, **kw)

        def failing_run(config, *args, **kw):
            if config.scorer == "abs" and os.path.basename(os.path.dirname(config.output)) == FAILING:
                raise UserError("no memory for abs today")
            return run(config, *args, **kw)

        RunFolder.commit, run_module.run = dying_commit, failing_run
    return hook


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    import ray

    marks = tmp_path_factory.mktemp("marks")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": worker_hook(marks)})
    yield marks
    ray.shutdown()


@pytest.fixture(scope="module")
def without_ray(tiny_config, tmp_path_factory):
    """A finished sweep without Ray of two tiny runs (scorer abs and random): (grid file, sweep folder)."""
    root = tmp_path_factory.mktemp("sweep")
    grid = write_grid(root / "tiny.toml", tiny_config(root), compares=[])
    return grid, sweep(grid, output=root / "plain", quiet=True)


def assert_same_runs(grid, out, plain):
    """Every run's files of SAME_BYTES are the same bytes in both sweep folders (config.toml records its own
    folder, otherwise the same)."""
    for run in load(grid, out).runs:
        for name in SAME_BYTES:
            found = (run.folder.path / name).read_bytes().replace(bytes(out), bytes(plain))
            assert found == (plain / run.name / name).read_bytes(), (run.name, name)
    assert summary_rows(out) == summary_rows(plain)


@needs_ray
def test_a_sweep_on_ray_writes_the_folders_a_sweep_without_it_writes(local_ray, without_ray, capsys):
    grid, plain = without_ray
    out = plain.parent / "on-ray"
    assert main(["sweep", str(grid), "--output", str(out), "--ray", "--quiet"]) == 0
    console = capsys.readouterr().out
    assert "on Ray (a local instance, 1 CPU(s) a run)" in console and console.count(": sent to Ray, starting") == 2
    assert_same_runs(grid, out, plain)
    assert main(["sweep", str(grid), "--output", str(out), "--ray", "--quiet"]) == 0
    assert capsys.readouterr().out.count(": finished, skipped") == 2


@needs_ray
def test_a_run_whose_worker_is_killed_is_run_again_and_resumed(local_ray, without_ray):
    grid, plain = without_ray
    out = plain.parent / KILLED
    assert main(["sweep", str(grid), "--output", str(out), "--ray", "--quiet"]) == 0
    assert (local_ray / "killed").read_text() in {run.name for run in load(grid, out).runs}
    assert_same_runs(grid, out, plain)


@needs_ray
def test_a_failed_run_on_ray_does_not_stop_the_other(local_ray, without_ray, capsys):
    grid, plain = without_ray
    out = plain.parent / FAILING
    abs_run, random_run = load(grid, out).runs
    one_error_line(capsys, ["sweep", str(grid), "--output", str(out), "--ray", "--quiet"], "1 of 2 runs failed",
                   f"{abs_run.name}: no memory for abs today", "run the sweep again")
    assert random_run.folder.completed_step() == 3 and abs_run.folder.completed_step() == -1
    assert not (out / "summary.csv").exists()


@needs_ray
def test_runs_that_no_machine_can_take_are_refused(local_ray, without_ray, capsys):
    grid, plain = without_ray
    one_error_line(capsys, ["sweep", str(grid), "--output", str(plain.parent / "gpus"), "--ray", "--ray-gpus", "1"],
                   "no machine of the Ray cluster has the 1 CPU(s) and 1 GPU(s)", "the largest has 2 and 0")


def test_without_the_ray_package_the_sweep_says_how_to_install_it(without_ray, monkeypatch, capsys):
    grid, plain = without_ray
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    one_error_line(capsys, ["sweep", str(grid), "--output", str(plain.parent / "no-ray"), "--ray"],
                   'pip install -e ".[ray]"')


@pytest.mark.parametrize("argv, phrase", [(["--ray-cpus", "2"], "add --ray"),
                                          (["--ray", "--ray-cpus", "0"], "--ray-cpus 0: give the CPUs"),
                                          (["--ray", "--ray-gpus", "nan"], "--ray-gpus nan")])
def test_bad_ray_settings_are_refused_in_one_line(argv, phrase, tmp_path, capsys):
    one_error_line(capsys, ["sweep", str(tmp_path / "grid.toml"), *argv], phrase)
