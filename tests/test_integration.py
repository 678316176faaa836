"""Real selectivity on the embedded model (SmolLM2-135M) with the real built-in corpora, small budget.

Measured here (preset tiny: 2 steps x 5% of ff neurons, 2,048 scoring + 1,024 evaluation tokens,
chunks of 256, bf16 on a 2-core CPU), relative top-1 drops forget(code) / retain(prose):
  abs,    seed 0: step 1 49.7% / 4.7%,  step 2 95.3% / 43.2%   -> max difference +52.1
  abs,    seed 1: step 1 34.7% / 6.3%,  step 2 76.2% / 24.4%   -> max difference +51.8
  random, seed 0: step 1 11.7% / 12.3%, step 2 20.9% / 23.6%   -> max difference -0.6
The thresholds below leave wide margins under those numbers.
"""

import pytest
from conftest import read_metrics

from selprune.config import preset
from selprune.relearn import COLUMNS, RelearnConfig, relearn, summarize_relearn
from selprune.run import run
from selprune.csvfiles import read_csv

pytestmark = pytest.mark.slow


def drops(out):
    by_step = {}
    for r in read_metrics(out):
        by_step.setdefault(int(r["step"]), {})[r["role"]] = float(r["top1_drop_rel"])
    return by_step


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("integration")
    result = {}
    for scorer in ("abs", "random"):
        config = preset("tiny")
        config.scorer, config.output = scorer, str(root / scorer)
        result[scorer] = run(config, quiet=True)
    return result


@pytest.fixture(scope="module")
def runs(folders):
    return {scorer: drops(folder) for scorer, folder in folders.items()}


def test_pruning_for_code_hurts_code_far_more_than_prose(runs):
    step1 = runs["abs"][1]
    assert step1["forget"] > 25, step1
    assert step1["forget"] > 3 * max(step1["retain"], 1), step1
    best = max(d["forget"] - d["retain"] for d in runs["abs"].values())
    assert best > 25, runs["abs"]


def test_selective_pruning_beats_random_pruning_at_the_same_budget(runs):
    assert runs["abs"][1]["forget"] > runs["random"][1]["forget"] + 15, runs
    random_best = max(d["forget"] - d["retain"] for d in runs["random"].values())
    assert random_best < 10, runs["random"]


def test_fine_tuning_on_forget_data_brings_some_forget_accuracy_back(folders):
    """The relearning attack on the abs run after step 1 (5% of ff units): 4 AdamW steps of 4 x 256 tokens of
    held-out code. Measured here: see the numbers in the assertion message of a failing run; the check only
    asks that forget accuracy rises above the pruned model's, and that pruned ff weights stay zero."""
    config = RelearnConfig(run=str(folders["abs"]), step=1, max_steps=4, eval_tokens=1024, random_control=False)
    relearn(config, quiet=True)
    every = read_csv(folders["abs"] / "relearn" / "relearn.csv", COLUMNS)
    rows = [r for r in every if r["model"] == "pruned"]
    forget = {int(r["step"]): float(r["forget_top1"]) for r in rows}
    assert forget[4] > forget[0] + 0.01, forget
    assert rows[-1]["pruned_zero"] == "True"
    pruned = next(s for s in summarize_relearn(every) if s["model"] == "pruned")
    share, se = pruned["recovered"][-1], pruned["recovered_se"][-1]  # paired over the 2 evaluation chunks
    assert share > 0 and 0 < se < 1, (share, se)
