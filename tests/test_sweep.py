"""selprune sweep on tiny runs: a grid of run folders that skips finished runs, resumes partial ones and ends
with the same results as an uninterrupted sweep; its summary, its dry run, the marked tables of a results
file; and every bad grid refused with one line, before anything runs."""

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import tomli_w
from conftest import Crash, one_error_line

from selprune import run as run_module
from selprune.cli import main
from selprune.config import safe_name
from selprune.errors import UserError
from selprune.report import heatmap_label, heatmap_name
from selprune.rundir import RunFolder, summarize
from selprune.sweep import load, sweep

TWO_SCORERS = {"scorer": ["abs", "random"]}
COMPARES = [{"name": "selective-vs-random", "variants": [{"scorer": "abs"}, {"scorer": "random"}]},
            {"name": "abs-alone", "variants": [{"scorer": "abs"}]}]
SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"
TOKENS = {"abs": 4 * 2 * 200 + 3 * 2 * 300, "random": 4 * 2 * 200}  # conftest's TINY_RUN: evaluation + scoring


def write_grid(path, config, grid=TWO_SCORERS, compares=COMPARES, **changes):
    """A grid file: by default of two tiny runs (scorer abs and random) with two comparisons; `changes` replace
    settings."""
    settings = {**{k: v for k, v in config.to_dict().items() if k not in ("output", "name")}, **changes}
    path.write_text(tomli_w.dumps({"settings": settings, "grid": grid, "compare": compares}))
    return path


def finished_sweep(tiny_config, root, name, **grid):
    """A finished sweep of the grid file root/NAME.toml that write_grid(**grid) writes: (grid file, sweep folder)."""
    path = write_grid(root / f"{name}.toml", tiny_config(root), **grid)
    sweep(path, output=root / "whole", quiet=True)
    return path, root / "whole"


@pytest.fixture(scope="module")
def finished(tiny_config, tmp_path_factory):
    return finished_sweep(tiny_config, tmp_path_factory.mktemp("sweep"), "tiny")


def files(folder):
    """Every file under folder: (mtime, bytes)."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


def summary_rows(folder, without=("wall_s",)):
    with open(folder / "summary.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in without} for row in csv.DictReader(f)]


def forbid(monkeypatch, target: str, what: str) -> None:
    """`target` fails the test if called."""
    def fail(*args, **kw):
        raise AssertionError(f"the sweep ran {what}")

    monkeypatch.setattr(target, fail)


@pytest.fixture
def no_runs(monkeypatch):
    forbid(monkeypatch, "selprune.run.run", "a run")


def test_a_sweep_writes_every_run_the_summary_and_the_comparisons(finished):
    grid, out = finished
    plan = load(grid, out)
    assert [run.label for run in plan.runs] == ["abs", "random"]
    rows = summary_rows(out, without=())
    assert [row["run"] for row in rows] == [run.name for run in plan.runs]
    for run, row in zip(plan.runs, rows):
        assert run.folder.completed_step() == 3 and (run.folder.path / "report.html").is_file()
        assert run.folder.path.parent == out and run.name.endswith(f"-{row['scorer']}")
        s = summarize(run.folder.path)
        assert float(row["max_rel_diff"]) == s["max_rel_diff"] and float(row["max_abs_diff_se"]) == s["max_abs_diff_se"]
        assert float(row["wall_s"]) > 0
    summary = (out / "summary.md").read_text()
    assert all(f"| {s['max_abs_diff']:.1f} ±{s['max_abs_diff_se']:.1f} ({s['max_abs_diff_step']}) |" in summary
               for s in map(summarize, (run.folder.path for run in plan.runs)))
    assert "| pair (forget / retain) | abs | random |" in summary
    links = re.findall(r"\]\((compare/[^)]+)\)", summary)
    assert len(links) > 2 and all((out / link).is_file() for link in links), links
    pair = plan.runs[0].pair
    for name in ("selective-vs-random", "abs-alone"):
        assert (out / "compare" / pair / name / "report.html").is_file()
    timings = (out / "timings.json").read_text()
    assert all(f'"tokens": {TOKENS[run.values["scorer"]]}' in timings for run in plan.runs), timings


def test_a_rerun_runs_nothing_and_leaves_the_run_folders_as_they_are(finished, no_runs, capsys):
    grid, out = finished
    before = {run.name: files(run.folder.path) for run in load(grid, out).runs}
    assert main(["sweep", str(grid), "--output", str(out)]) == 0
    assert capsys.readouterr().out.count(": finished, skipped") == 2
    assert {run.name: files(run.folder.path) for run in load(grid, out).runs} == before


def test_an_interrupted_sweep_continues_to_the_same_results(finished, tmp_path, monkeypatch, capsys):
    grid, whole = finished
    out = tmp_path / "crashed"
    real, calls = RunFolder.commit, {"n": 0}

    def flaky(self, *args, **kw):  # the first run commits steps 0-3, the second 0 and 1, then dies at step 2
        calls["n"] += 1
        if calls["n"] == 7:
            raise Crash()
        return real(self, *args, **kw)

    monkeypatch.setattr(RunFolder, "commit", flaky)
    with pytest.raises(Crash):
        sweep(grid, output=out, quiet=True)
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["sweep", str(grid), "--output", str(out), "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"finished +\S+-abs +step 3 of 3", listed), listed
    assert re.search(rf"partial +\S+-random +step 1 of 3 done, {2 * 2 * 200:,} tokens left", listed), listed
    assert main(["sweep", str(grid), "--output", str(out), "--quiet"]) == 0
    assert "resuming after step 1" in capsys.readouterr().out
    for run in load(grid, out).runs:
        for name in ("metrics.csv", "pruned.json"):
            assert (run.folder.path / name).read_text() == (whole / run.name / name).read_text(), name
    assert summary_rows(out) == summary_rows(whole)


def test_a_failed_run_does_not_stop_the_others(finished, tmp_path, monkeypatch, capsys):
    """The first run fails when it starts (as out of memory or a bad dataset found late would); the second still
    runs, the sweep then refuses to summarise with one line naming the failed run, and a rerun finishes it."""
    grid, whole = finished
    out = tmp_path / "failed"
    real = run_module.run

    def fussy(config, *args, **kw):
        if config.scorer == "abs":
            raise UserError("no memory for abs today")
        return real(config, *args, **kw)

    monkeypatch.setattr(run_module, "run", fussy)
    abs_run, random_run = load(grid, out).runs
    line = one_error_line(capsys, ["sweep", str(grid), "--output", str(out), "--quiet"], "1 of 2 runs failed",
                          f"{abs_run.name}: no memory for abs today", "run the sweep again")
    assert "also" not in line
    assert random_run.folder.completed_step() == 3 and abs_run.folder.completed_step() == -1
    assert not (out / "summary.csv").exists()
    monkeypatch.undo()
    assert main(["sweep", str(grid), "--output", str(out), "--quiet"]) == 0
    assert "finished, skipped" in capsys.readouterr().out
    assert summary_rows(out) == summary_rows(whole)


def test_a_run_that_a_stop_criterion_ended_counts_as_finished(finished, tmp_path, no_runs, capsys):
    grid, whole = finished
    out = shutil.copytree(whole, tmp_path / "stopped")
    progress = out / load(grid).runs[0].name / "state" / "progress.json"
    record = json.loads(progress.read_text())
    progress.write_text(json.dumps({**record, "completed_step": 2, "stopped": {"kept_step": 1, "reason": "test"}}))
    assert main(["sweep", str(grid), "--output", str(out), "--dry-run"]) == 0
    assert re.search(r"finished +\S+-abs +step 2 of 3 \(stopped early\)", capsys.readouterr().out)
    assert main(["sweep", str(grid), "--output", str(out)]) == 0
    assert capsys.readouterr().out.count(": finished, skipped") == 2


def test_a_dry_run_lists_the_runs_and_their_cost_and_runs_nothing(finished, no_runs, capsys):
    grid, whole = finished
    out = whole.parent / "new"  # beside a finished sweep, whose timings give the estimate
    assert main(["sweep", str(grid), "--output", str(out), "--dry-run"]) == 0
    listed = capsys.readouterr().out
    for scorer in ("abs", "random"):
        assert re.search(rf"new +\S+-{scorer} +{TOKENS[scorer]:,} tokens", listed), listed
    assert f"to run: 2 of 2 runs, {sum(TOKENS.values()):,} tokens" in listed
    assert re.search(r"time for \S+: about \d+ s, at the [\d.]+ ms a token that 2 earlier run\(s\)", listed), listed
    assert not out.exists()
    assert main(["sweep", str(grid), "--output", str(whole), "--dry-run"]) == 0
    assert "to run: nothing; all 2 runs are finished" in capsys.readouterr().out


def test_results_tables_are_rewritten_between_their_markers_only(finished, tmp_path, no_runs):
    grid, out = finished
    pair = load(grid, out).runs[0].pair
    document = tmp_path / "RESULTS.md"
    marked = [f"<!-- sweep: tiny table: {kind} -->" for kind in ("overview", f"runs {pair}", f"plots {pair}", "cost")]
    text = ("# Results\n\nProse written by hand.\n\n" + "".join(f"{m}\nstale table\n<!-- /sweep -->\n\nmore prose\n"
                                                            for m in marked)
            + "<!-- sweep: other table: overview -->\nanother sweep's table\n<!-- /sweep -->\nthe end\n")
    document.write_text(text)
    sweep(grid, output=out, results=document)
    new = document.read_text()

    def prose(markdown):
        return re.sub(r"(<!-- sweep: tiny table: [^>]*-->\n).*?(<!-- /sweep -->)", r"\1\2", markdown,
                      flags=re.DOTALL)

    assert prose(new) == prose(text) and "stale table" not in new and "another sweep's table" in new
    assert "| pair (forget / retain) | abs | random |" in new and "| random |" in new
    links = re.findall(r"\]\((results/[^)]+)\)", new)
    assert links and all((tmp_path / link).is_file() for link in links), links
    copied = {p.relative_to(tmp_path / "results").as_posix() for p in (tmp_path / "results").rglob("*")}
    assert f"{pair}/selective-vs-random/summary.json" in copied
    assert not [p for p in copied if p.endswith("report.html")]
    assert not [p for p in copied if p.startswith(f"{pair}/abs-alone/neurons-")]  # shown once per pair


@pytest.mark.parametrize("label", ["code-vs-prose-ff-abs", "seed 1: ff/abs", "neurons-3-x.png"])
def test_the_run_a_heatmap_shows_is_read_from_the_name_the_report_gave_it(label):
    """Copying plots shows each run's heatmap once per pair; it asks report.py which run a file shows."""
    assert heatmap_label(heatmap_name(12, label)) == safe_name(label)
    assert heatmap_label("forget-vs-retain-drop.png") is None and heatmap_label("summary.json") is None


def test_a_run_made_with_other_settings_is_refused_and_kept(finished, tmp_path, no_runs, capsys):
    grid, out = finished
    other = write_grid(tmp_path / "tiny.toml", load(grid).runs[0].config, steps=2)
    folders = [run.folder.path for run in load(grid, out).runs]
    before = [files(folder) for folder in folders]
    one_error_line(capsys, ["sweep", str(other), "--output", str(out)], "holds a run with other settings (steps)")
    assert [files(folder) for folder in folders] == before


def test_a_sweep_folder_in_use_is_refused(finished, tmp_path, no_runs, capsys):
    grid, _ = finished
    holder = RunFolder(tmp_path / "busy")
    holder.lock()
    try:
        one_error_line(capsys, ["sweep", str(grid), "--output", str(tmp_path / "busy")],
                       "in use by another selprune process")
    finally:
        holder.unlock()


def test_the_repository_grids_load_with_the_runs_of_docs_results():
    paper = load(SWEEPS / "paper.toml")
    assert len(paper.runs) == 32 and paper.runs[0].name == "code-vs-prose-ff-abs"
    assert paper.folder.as_posix() == "runs/sweeps/paper"
    assert {(r.config.steps, r.config.fraction, r.config.score_tokens, r.config.eval_tokens) for r in paper.runs} \
        == {(8, 0.025, 4096, 4096)}
    assert {name: [r.label for r in runs] for name, runs in paper.comparisons()["german-vs-english"].items()} == {
        "selective-vs-random": ["ff abs", "ff random"],
        "groups": ["ff abs", "attn-value abs", "attn-preout abs", "attn-head abs"],
        "scorers": ["ff abs", "ff freq", "ff rms", "ff std"]}
    beyond = load(SWEEPS / "beyond.toml")
    assert {r.label for r in beyond.runs} == {"ff abs", "ff attr", "ff wanda", "ff+attn-preout abs"}


def test_help_says_what_the_paper_grid_costs(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    assert "32 runs" in capsys.readouterr().out


UNLEARNING = {"method": "graddiff", "lr": [0.001, 0.03], "steps": 4, "eval_every": 2, "batch_size": 2}
# the unlearning's tokens: step 0 evaluated once; per learning rate, 4 steps of a forget and a retain batch of
# 2 x 32 tokens, and 2 checkpoints, each evaluating forget and retain (200 tokens each)
UNLEARNING_TOKENS = 2 * 200 + 2 * (4 * 2 * 2 * 32 + 2 * 2 * 200)


@pytest.fixture(scope="module")
def mixed(tiny_config, tmp_path_factory):
    """A finished sweep of one pruning run (scorer abs) and one graddiff unlearning, and a comparison of both."""
    overlay = {"name": "pruning-vs-unlearning", "variants": [{"scorer": "abs"}, {"method": "graddiff"}]}
    return finished_sweep(tiny_config, tmp_path_factory.mktemp("mixed"), "mixed",
                          grid={"variants": [{"scorer": "abs"}, UNLEARNING]}, compares=[overlay])


@pytest.fixture
def no_unlearnings(monkeypatch):
    forbid(monkeypatch, "selprune.unlearn.unlearn", "an unlearning")


def test_a_grid_runs_pruning_and_unlearning_variants_and_overlays_them(mixed):
    grid, out = mixed
    pruning, unlearning = load(grid, out).runs
    assert not pruning.unlearning and unlearning.unlearning
    assert pruning.name.endswith("-abs") and unlearning.name.endswith("-graddiff-lr-0.001_0.03-steps4-eval-every2-"
                                                                      "batch-size2")
    assert pruning.folder.completed_step() == 3 and (unlearning.folder.path / "state" / "result.json").is_file()
    config = unlearning.folder.read_config()
    assert (config.score_tokens, config.eval_tokens, config.chunk_len, config.lr) == (300, 200, 32, (0.001, 0.03))
    rows = {row["run"]: row for row in summary_rows(out, without=())}
    assert rows[unlearning.name]["method"] == "graddiff" and rows[pruning.name]["method"] == ""
    assert float(rows[unlearning.name]["max_rel_diff"]) == summarize(unlearning.folder.path)["max_rel_diff"]
    assert rows[unlearning.name]["last_step"] == "4" and float(rows[unlearning.name]["wall_s"]) > 0
    assert {rows[unlearning.name][c] for c in ("fraction_pruned", "fraction_at_retain_budget", "area_rel")} == {""}
    assert float(rows[pruning.name]["fraction_pruned"]) > 0
    table = next(line for line in (out / "summary.md").read_text().splitlines()
                 if line.startswith(f"| {unlearning.label} |"))
    assert "(—)" in table, table  # no share pruned at the retain budget
    report = (out / "compare" / pruning.pair / "pruning-vs-unlearning" / "report.html").read_text()
    assert "unlearn: graddiff" in report and "abs" in report
    assert json.loads((out / "timings.json").read_text())["runs"][unlearning.name]["kind"] == "graddiff"


def test_a_rerun_skips_the_finished_pruning_run_and_unlearning(mixed, no_runs, no_unlearnings, capsys):
    grid, out = mixed
    before = {run.name: files(run.folder.path) for run in load(grid, out).runs}
    assert main(["sweep", str(grid), "--output", str(out)]) == 0
    assert capsys.readouterr().out.count(": finished, skipped") == 2
    assert {run.name: files(run.folder.path) for run in load(grid, out).runs} == before
    assert main(["sweep", str(grid), "--output", str(out), "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"finished +\S+-batch-size2 +step 4 of 4, lr 0.03 kept at step 4", listed), listed


def test_an_interrupted_unlearning_is_resumed_to_the_same_files(mixed, tmp_path, monkeypatch, capsys):
    from selprune.unlearn import runner as unlearn_runner

    grid, whole = mixed
    out = tmp_path / "crashed"
    real = unlearn_runner.Unlearning.evaluate

    def crash_at_step_4(self, model, step, base):  # lr 0.001 has committed step 2
        if step == 4:
            raise Crash()
        return real(self, model, step, base)

    monkeypatch.setattr(unlearn_runner.Unlearning, "evaluate", crash_at_step_4)
    with pytest.raises(Crash):
        sweep(grid, output=out, quiet=True)
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["sweep", str(grid), "--output", str(out), "--dry-run"]) == 0
    left = 2 * 2 * 2 * 32 + 2 * 200 + 4 * 2 * 2 * 32 + 2 * 2 * 200  # lr 0.001: 2 steps, 1 checkpoint; lr 0.03: all
    listed = capsys.readouterr().out
    assert re.search(rf"partial +\S+-batch-size2 +step 2 of 4 at lr 0.001 done, {left:,} tokens left", listed), listed
    assert main(["sweep", str(grid), "--output", str(out), "--quiet"]) == 0
    assert "resuming after step 2 of 4 at lr 0.001" in capsys.readouterr().out
    unlearning = load(grid, out).runs[1]
    for name in ("metrics.csv", "model/model.safetensors", "lr-0.001/metrics.csv", "lr-0.03/metrics.csv"):
        assert (unlearning.folder.path / name).read_bytes() == (whole / unlearning.name / name).read_bytes(), name
    assert summary_rows(out) == summary_rows(whole)


def test_a_failed_unlearning_does_not_stop_the_pruning_run(mixed, tmp_path, monkeypatch, capsys):
    grid, whole = mixed
    out = tmp_path / "failed"

    def fussy(*args, **kw):
        raise UserError("no memory for unlearning today")

    monkeypatch.setattr("selprune.unlearn.unlearn", fussy)
    pruning, unlearning = load(grid, out).runs
    one_error_line(capsys, ["sweep", str(grid), "--output", str(out), "--quiet"], "1 of 2 runs failed",
                   f"{unlearning.name}: no memory for unlearning today")
    assert pruning.folder.completed_step() == 3 and not (out / "summary.csv").exists()


def test_a_dry_run_counts_an_unlearnings_tokens_and_estimates_its_time(mixed, no_runs, no_unlearnings, capsys):
    grid, whole = mixed
    out = whole.parent / "new"  # beside the finished sweep, whose timings give the estimate
    assert main(["sweep", str(grid), "--output", str(out), "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert re.search(rf"new +\S+-batch-size2 +{UNLEARNING_TOKENS:,} tokens", listed), listed
    assert re.search(r"time for \S+, graddiff unlearnings: about \d+ s, at the [\d.]+ ms a token that 1 earlier "
                     r"graddiff unlearning\(s\)", listed), listed
    assert re.search(r"time for \S+: about \d+ s, .* 1 earlier run\(s\)", listed), listed
    assert not out.exists()


GRID = '[grid]\nscorer = ["abs", "random"]\n'


@pytest.mark.parametrize("content, phrases", [
    ("runs = 3\n", ["unknown key(s) runs", "valid keys are compare, grid, settings"]),
    ("[settings]\nstep = 8\n", ["[settings]: unknown key(s) step"]),
    ('[settings]\nsteps = "ten"\n', ['steps = "ten" should be an integer']),
    ('[settings]\noutput = "x"\n', ["output cannot be set", "--output"]),
    ('[grid]\ngroups = ["ff"]\n', ["[grid]: unknown key groups"]),
    ('[grid]\nscorer = "abs"\n', ['scorer = "abs" should be a list', 'scorer = ["abs"]']),
    ("[grid]\nscorer = []\n", ["scorer is an empty list"]),
    ('[grid]\nseed = ["one"]\n', ['seed = "one" should be an integer']),
    ('[grid]\npairs = [["code"]]\n', ["should be [forget, retain]"]),
    ('[grid]\nvariants = ["ff"]\n', ["should be a table of settings"]),
    ('[grid]\nscorer = ["nope"]\n', ["run code-vs-prose-nope", "unknown scorer 'nope'"]),
    ('[grid]\nscorer = ["abs"]\nvariants = [{scorer = "rms"}]\n', ["scorer is given by both scorer and variants"]),
    ('[grid]\nscorer = ["abs", "abs"]\n', ["several runs would share the folder code-vs-prose-abs"]),
    (GRID + '[[compare]]\nname = "x"\nvariants = [{scorer = "rms"}]\n',
     ['compare]] x: no run of the grid has scorer = "rms"']),
    (GRID + '[[compare]]\nname = "x"\nvariants = [{group = "ff"}]\n', ["group is not a key the grid varies"]),
    (GRID + '[[compare]]\nname = "x"\nvariant = [{scorer = "abs"}]\n', ["unknown key(s) variant"]),
    (GRID + '[[compare]]\nname = "a b"\nvariants = [{scorer = "abs"}]\n', ["should be a plain folder name"]),
    ("[grid\n", ["not valid TOML"]),
    ('[grid]\nvariants = [{method = "npo", scorer = "abs"}]\n',
     ["scorer is a setting of pruning runs, not of an unlearning", "give it in a variant without method"]),
    ('[grid]\nvariants = [{scorer = "abs", npo_beta = 0.2}]\n',
     ["npo_beta is a setting of unlearnings", "add a method"]),
    ('[settings]\nmethod = "npo"\n[grid]\nscorer = ["abs"]\n', ["method makes a variant an unlearning"]),
    ('[grid]\nmethod = ["npo", "ga"]\n', ["method cannot be a list", "give each unlearning as a variant"]),
    ('[settings]\nnpo_beta = 0.2\n' + GRID, ["npo_beta is a setting of unlearnings, and the grid makes none"]),
    ('[grid]\nvariants = [{method = "npo", lr = [0.0]}]\n', ["run code-vs-prose-npo-lr-0.0", "must be positive"]),
    (None, ["does not exist"]),
])
def test_a_bad_grid_is_one_line_exit_2_before_anything_runs(tmp_path, no_runs, capsys, content, phrases):
    grid = tmp_path / "bad.toml"
    if content is not None:
        grid.write_text(content)
    one_error_line(capsys, ["sweep", str(grid), "--output", str(tmp_path / "out")], str(grid), *phrases)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, phrases", [
    (None, ["does not exist"]),
    ("# Results\n", ["has no table of the sweep grid"]),
    ("<!-- sweep: grid table: everything -->\n<!-- /sweep -->\n", ["line 1", "unknown table 'everything'"]),
    ("<!-- sweep: grid table: runs nowhere -->\n<!-- /sweep -->\n", ["has no runs for nowhere", "code-vs-prose"]),
    ("text\n<!-- sweep: grid table: overview -->\n", ["line 2", "never closed"]),
    ("<!-- /sweep -->\n", ["closes no table"]),
    ("<!-- sweep grid overview -->\n", ["not a sweep marker"]),
])
def test_a_bad_results_file_is_one_line_exit_2_before_anything_runs(tmp_path, no_runs, capsys, content, phrases):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    document = tmp_path / "RESULTS.md"
    if content is not None:
        document.write_text(content)
    one_error_line(capsys, ["sweep", str(grid), "--output", str(tmp_path / "out"), "--results", str(document)],
                   str(document), *phrases)
    assert not (tmp_path / "out").exists()
