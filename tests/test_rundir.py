"""The run folder: a commit reads back verified, leftovers of an unfinished step are dropped, damage is refused."""

import errno
import json
import os
import shutil

import pytest

from selprune import atomic
from selprune import run as run_module
from selprune.errors import UserError
from selprune.rundir import RunFolder, metrics_text, pruned_text

SHAPE = dict(layers=2, units_per_layer=24, units_per_step=5, roles=("forget", "retain"))  # tiny Llama, ff, 10%


@pytest.fixture
def copy(finished_run, tmp_path):
    return shutil.copytree(finished_run, tmp_path / "copy")


def test_a_commit_reads_back_as_written(copy, tiny_config):
    done, record, rows = RunFolder(copy).committed(tiny_config(copy), **SHAPE)
    assert done == 3 and [s["step"] for s in record.steps] == [1, 2, 3]
    assert metrics_text(rows) == (copy / "metrics.csv").read_text()
    assert pruned_text(record) == (copy / "pruned.json").read_text()


def test_leftovers_of_an_unfinished_step_are_dropped(copy, tiny_config):
    """Killed after writing step 3's files but before its progress.json: resume continues after step 2."""
    folder, config = RunFolder(copy), tiny_config(copy)
    files = {p: p.read_text() for p in (folder.metrics_path, folder.pruned_path)}
    _, record, rows = folder.committed(config, **SHAPE)
    record.truncate(2)
    folder.commit(2, config, record, [r for r in rows if int(r["step"]) <= 2])
    for path, text in files.items():  # step 3's files, as the killed commit left them
        path.write_text(text)
    done, record, rows = folder.committed(config, **SHAPE)
    assert done == 2 and len(record.steps) == 2 and sorted({int(r["step"]) for r in rows}) == [0, 1, 2]


def damage(copy, name):
    """Each way a file can be damaged, and the file the refusal must name."""
    folder = RunFolder(copy)
    if name == "pruned missing":
        folder.pruned_path.unlink()
    elif name == "pruned of another shape":
        data = json.loads(folder.pruned_path.read_text())
        folder.pruned_path.write_text(json.dumps({**data, "units_per_layer": 48}))
    elif name == "pruned with other units":
        data = json.loads(folder.pruned_path.read_text())
        units = data["steps"][0]["pruned"]
        layer = next(iter(units))
        units[layer] = [u for u in range(24) if u not in units[layer]][:len(units[layer])]
        folder.pruned_path.write_text(json.dumps(data))
    elif name == "pruned garbage":
        folder.pruned_path.write_bytes(b"\x00\xff{not json")
    elif name == "metrics cut mid-row":
        text = folder.metrics_path.read_text()
        folder.metrics_path.write_text(text[: len(text) - 40])
    elif name == "metrics row missing":
        lines = folder.metrics_path.read_text().splitlines(keepends=True)
        folder.metrics_path.write_text("".join(lines[:3] + lines[4:]))
    elif name == "metrics value changed":
        lines = folder.metrics_path.read_text().splitlines(keepends=True)
        fields = lines[1].split(",")
        fields[5] = str(int(fields[5]) + 1)  # the tokens column of step 0's first row
        folder.metrics_path.write_text("".join([lines[0], ",".join(fields)] + lines[2:]))
    elif name == "metrics missing":
        folder.metrics_path.unlink()
    elif name == "progress garbage":
        folder.progress_path.write_text("{{{")
    elif name == "progress wrong key":
        folder.progress_path.write_text(json.dumps({"step": 3}))
    elif name == "progress past the end":
        data = json.loads(folder.progress_path.read_text())
        folder.progress_path.write_text(json.dumps({**data, "completed_step": 7}))
    elif name == "progress stopped after its last step":
        data = json.loads(folder.progress_path.read_text())
        folder.progress_path.write_text(json.dumps({**data, "stopped": {"kept_step": 4, "reason": "?"}}))
    elif name == "progress missing":
        folder.progress_path.unlink()
    elif name == "config with another seed":
        folder.config_path.write_text(folder.config_path.read_text().replace("seed = 0", "seed = 1"))
    return {"pruned": "pruned.json", "metrics": "metrics.csv", "progress": "progress.json",
            "config": "config.toml"}[name.split()[0]]


CASES = ["pruned missing", "pruned of another shape", "pruned with other units", "pruned garbage",
         "metrics cut mid-row", "metrics row missing", "metrics value changed", "metrics missing",
         "progress garbage", "progress wrong key", "progress past the end", "progress stopped after its last step", "progress missing",
         "config with another seed"]


@pytest.mark.parametrize("case", CASES)
def test_damaged_files_are_refused_naming_them(copy, tiny_config, case):
    named = damage(copy, case)
    with pytest.raises(UserError, match=rf"^cannot resume: \S*{named}.*--output NEW"):
        RunFolder(copy).committed(tiny_config(copy), **SHAPE)


def test_a_resume_over_damage_changes_nothing(copy, tiny_config):
    damage(copy, "metrics cut mid-row")
    before = {p.name: p.read_bytes() for p in copy.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(UserError, match="metrics.csv"):
        run_module.run(tiny_config(copy), resume=True, quiet=True)
    after = {p.name: p.read_bytes() for p in copy.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


def test_a_held_folder_is_refused_and_released_on_unlock(tmp_path):
    first, second = RunFolder(tmp_path / "run"), RunFolder(tmp_path / "run")
    first.create()
    with pytest.raises(UserError, match="in use by another selprune process"):
        second.lock()
    first.unlock()
    second.create()  # a folder holding only the lock file counts as empty
    second.unlock()


def test_an_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        RunFolder(tmp_path / "file").create()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    """A full disk while writing: the old file stays whole, and no stale temporary file is left behind."""
    target = tmp_path / "metrics.csv"
    target.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        atomic.write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]
