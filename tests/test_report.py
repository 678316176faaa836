"""The report: headline numbers from a hand-written run directory, and a self-contained HTML page."""

import json
import re

import pytest

from selprune.config import RunConfig
from selprune.errors import UserError
from selprune.pruning import PrunedRecord
from selprune.report import write_report
from selprune.rundir import COLUMNS, summarize


def make_run(write_run, path, name, forget_top1, retain_top1, group="ff", scorer="abs"):
    """A run folder: 2% of 4 x 50 neurons per step. The drop columns are deliberately wrong (0):
    the report must recompute drops from top1."""
    config = RunConfig(name=name, model="tiny-llama", forget="code", retain="prose", group=group, scorer=scorer,
                       steps=len(forget_top1) - 1, fraction=0.02)
    rows = [{"step": step, "fraction_pruned": 0.02 * step, "units_pruned": 4 * step, "role": role,
             "dataset": dataset, "top1": top1, "perplexity": ppl}
            for step, (f, r) in enumerate(zip(forget_top1, retain_top1))
            for role, dataset, top1, ppl in (("forget", "code", f, 3.0 * (step + 1)), ("retain", "prose", r, 20.0 + step))]
    record = PrunedRecord(group, 4, 50, [{"step": s, "pruned": {"0": [s, 10 + s], "3": [20 + s, 30 + s]}}
                                         for s in range(1, len(forget_top1))])
    return write_run(path, config, rows, record)


FORGET = [0.60, 0.45, 0.24, 0.06]  # relative drops 0, 25, 60, 90 %   absolute 0, 15, 36, 54 points
RETAIN = [0.40, 0.38, 0.36, 0.20]  # relative drops 0,  5, 10, 50 %   absolute 0,  2,  4, 20 points


@pytest.fixture
def run(tmp_path, write_run):
    return make_run(write_run, tmp_path / "sel", "selective-abs", FORGET, RETAIN)


def test_summary_matches_hand_computation(run):
    s = summarize(run)
    assert s["base_top1_forget"] == pytest.approx(0.60)
    assert s["base_top1_retain"] == pytest.approx(0.40)
    # relative differences 0, 20, 50, 40: the max is at step 2
    assert s["max_rel_diff"] == pytest.approx(50.0)
    assert s["max_rel_diff_step"] == 2
    # absolute differences 0, 13, 32, 34: the max is at step 3
    assert s["max_abs_diff"] == pytest.approx(34.0)
    assert s["max_abs_diff_step"] == 3
    # trapezoids of width 0.02: (0+20)/2 + (20+50)/2 + (50+40)/2 = 90, times 0.02
    assert s["area_rel"] == pytest.approx(1.8)
    # forget reaches 50% at step 2 (60%), 80% at step 3 (90%)
    assert s["retain_drop_at_forget_50"] == pytest.approx(10.0)
    assert s["retain_drop_at_forget_80"] == pytest.approx(50.0)
    assert s["final_perplexity_forget"] == pytest.approx(12.0)
    assert s["final_perplexity_retain"] == pytest.approx(23.0)
    assert (s["forget_dataset"], s["retain_dataset"], s["last_step"]) == ("code", "prose", 3)


def test_threshold_never_reached_is_none(tmp_path, write_run):
    s = summarize(make_run(write_run, tmp_path / "rnd", "random", [0.6, 0.55, 0.5], [0.4, 0.37, 0.33]))
    assert s["retain_drop_at_forget_50"] is None
    assert s["retain_drop_at_forget_80"] is None


def test_forget_drop_at_the_retain_budget_is_interpolated_where_retain_crosses_it(tmp_path, write_run):
    # retain drops 0, 5, 15, 25 %: over 10% first at step 2, so interpolate steps 1 and 2 at
    # t = (10 - 5) / (15 - 5) = 0.5. forget drops 0, 25, 60, 90 %: 25 + 0.5 x (60 - 25) = 42.5;
    # fraction pruned 0.02 + 0.5 x 0.02 = 0.03
    s = summarize(make_run(write_run, tmp_path / "cross", "crossing", FORGET, [0.40, 0.38, 0.34, 0.30]))
    assert s["retain_budget"] == 10.0
    assert s["forget_drop_at_retain_budget"] == pytest.approx(42.5)
    assert s["fraction_at_retain_budget"] == pytest.approx(0.03)
    assert s["retain_budget_crossing"] == [1, 2]
    page = write_report([tmp_path / "cross"], tmp_path / "out").read_text()
    assert "<b>42.5%</b>" in page and "steps 1&ndash;2" in page


def test_a_retain_drop_that_stays_within_the_budget_gives_the_last_step(tmp_path, write_run):
    # retain drops 0, 2.5, 5 %: never over 10%; forget drops 0, 8.33, 16.67 %
    s = summarize(make_run(write_run, tmp_path / "mild", "mild", [0.6, 0.55, 0.5], [0.4, 0.39, 0.38]))
    assert s["forget_drop_at_retain_budget"] == pytest.approx(100 / 6)
    assert s["fraction_at_retain_budget"] == pytest.approx(0.04)
    assert s["retain_budget_crossing"] is None
    assert "budget not reached" in write_report([tmp_path / "mild"], tmp_path / "out").read_text()


def test_report_is_self_contained_and_overlays_runs(run, tmp_path, write_run):
    other = make_run(write_run, tmp_path / "rnd", "random-baseline", [0.6, 0.55, 0.5, 0.4], [0.4, 0.37, 0.33, 0.27],
                     scorer="random")
    out = tmp_path / "report"
    page_path = write_report([run, other], out)
    assert page_path == out / "report.html"

    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 5  # three overlay plots + one heatmap per run
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)
    page = page_path.read_text()
    assert page.count('src="data:image/png;base64,') == len(pngs) == page.count("<img")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", page, re.I)
    assert "<link" not in page and "<script" not in page and "url(" not in page and "@import" not in page

    assert "selective-abs" in page and "random-baseline" in page
    assert "<b>50.0%</b>" in page and "34.0 pts" in page and "1.80" in page
    assert "60.0%" in page and "40.0%" in page  # base accuracies

    summaries = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summaries] == ["selective-abs", "random-baseline"]
    assert summaries[0]["summary"] == summarize(run)


def test_duplicate_names_get_distinct_labels(run, tmp_path, write_run):
    twin = make_run(write_run, tmp_path / "twin", "selective-abs", FORGET, RETAIN)
    write_report([run, twin], tmp_path / "out")
    summaries = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summaries[0]["name"] != summaries[1]["name"]


@pytest.mark.parametrize("missing", ["metrics.csv", "pruned.json", "config.toml"])
def test_missing_file_is_a_user_error_naming_it(run, tmp_path, missing):
    (run / missing).unlink()
    with pytest.raises(UserError, match=re.escape(missing)):
        write_report([run], tmp_path / "out")


def test_bad_metrics_are_user_errors(run):
    (run / "metrics.csv").write_text("step,role,top1\n0,forget,0.5\n")
    with pytest.raises(UserError, match="lacks the column"):
        summarize(run)
    (run / "metrics.csv").write_text(",".join(COLUMNS) + "\n1,0.02,4,forget,code,1000,0.5,0.9,1,3,0.5,0.9,1,3,0,0\n")
    with pytest.raises(UserError, match="step-0"):
        summarize(run)


def test_no_runs_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        write_report([], tmp_path)


def test_run_with_only_the_unpruned_step_still_reports(tmp_path, write_run):
    run = make_run(write_run, tmp_path / "new", "just-started", [0.6], [0.4])
    s = summarize(run)
    assert (s["max_rel_diff"], s["area_rel"], s["last_step"]) == (0.0, 0.0, 0)
    assert write_report([run], tmp_path / "out").is_file()
