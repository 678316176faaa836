"""--adaptive-scoring on tiny runs: it stops once the selection settles and reads every block when it does not,
metrics.csv's score_tokens says what each step read, a resumed run equals an uninterrupted one, a folder made
before score_tokens stays readable and resumable, and bad settings are refused with one line."""

import pytest
import torch
from conftest import crash_in_step_2, crashed_before, one_error_line, read_metrics
from transformers import AutoTokenizer

from selprune import adaptive
from selprune import run as run_module
from selprune.adaptive import Settled, block_slices, overlap
from selprune.data import run_splits
from selprune.rundir import COLUMNS, RunFolder

CHUNK_LEN = 32  # the tiny runs' (conftest TINY_RUN): one block per chunk below


@pytest.fixture
def one_chunk_blocks(monkeypatch):
    monkeypatch.setattr(adaptive, "BLOCK_TOKENS", CHUNK_LEN)


def scoring_tokens(out) -> dict[str, int]:
    """The scoring tokens per dataset of a run's data (what a fixed-budget step reads)."""
    config = RunFolder(out).read_config()
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    return {role: int(run_splits(config, tokenizer, spec, role=role).score.attention_mask.sum())
            for role, spec in (("forget", config.forget), ("retain", config.retain))}


def spy_on_statistics(monkeypatch, out) -> dict[tuple[int, str], int]:
    """{(step, role): tokens} that Run.statistics reads, the step being the one after the last committed."""
    read, real = {}, run_module.Run.statistics

    def spy(self, d, neurons, chunks=slice(None)):
        key = (RunFolder(out).completed_step() + 1, d.role)
        read[key] = read.get(key, 0) + int(d.score_mask[chunks].sum())
        return real(self, d, neurons, chunks)

    monkeypatch.setattr(run_module.Run, "statistics", spy)
    return read


def recorded(out) -> dict[tuple[int, str], int]:
    return {(int(r["step"]), r["role"]): int(r["score_tokens"]) for r in read_metrics(out)}


def test_blocks_cover_the_chunks_in_order():
    mask = torch.ones(10, 512)
    assert block_slices(mask, 2048) == [slice(0, 4), slice(4, 8), slice(8, 12)]
    assert block_slices(mask, 100) == [slice(i, i + 1) for i in range(10)]  # at least one chunk a block


def test_the_rule_waits_for_its_streak_and_its_floor_and_always_stops_at_the_last_block():
    a, b = torch.zeros(20, dtype=torch.bool), torch.zeros(20, dtype=torch.bool)
    a[:10], b[1:11] = True, True  # b shares 9 of a's 10
    assert overlap(a, b) == 0.9
    rule = Settled(0.9, times=2, floor=0.5)
    assert [rule.after(sel, k, 8) for k, sel in enumerate([a, a, a, a, a], start=1)] == [False] * 3 + [True] * 2
    rule = Settled(0.95, times=1)
    assert [rule.after(sel, k, 4) for k, sel in enumerate([a, b, a, b], start=1)] == [False] * 3 + [True]


def test_a_settled_selection_stops_before_the_ceiling(tiny_config, tmp_path, monkeypatch, one_chunk_blocks):
    """Importances that ignore the sums give the same selection after every block: the step stops early, and
    metrics.csv records the tokens its statistics read (0 for step 0, which scores nothing)."""
    fixed = torch.rand(2, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    monkeypatch.setattr(run_module.Run, "importance", lambda self, stats, neurons: fixed.clone())
    out = tmp_path / "settled"
    read = spy_on_statistics(monkeypatch, out)
    run_module.run(tiny_config(out, adaptive_scoring=True), quiet=True)
    full, tokens = scoring_tokens(out), recorded(out)
    assert all(tokens[0, role] == 0 for role in full)
    for step in (1, 2, 3):
        for role in full:
            assert tokens[step, role] == read[step, role] < full[role]


def test_a_selection_that_keeps_changing_reads_every_block(tiny_config, tmp_path, monkeypatch, one_chunk_blocks):
    generator = torch.Generator().manual_seed(0)
    monkeypatch.setattr(run_module.Run, "importance",
                        lambda self, stats, neurons: torch.rand(2, 24, generator=generator, dtype=torch.float64))
    out = tmp_path / "unsettled"
    read = spy_on_statistics(monkeypatch, out)
    run_module.run(tiny_config(out, adaptive_scoring=True), quiet=True)
    full, tokens = scoring_tokens(out), recorded(out)
    assert all(tokens[step, role] == read[step, role] == full[role] for step in (1, 2, 3) for role in full)


def test_a_fixed_budget_records_its_whole_scoring_split(finished_run):
    full, tokens = scoring_tokens(finished_run), recorded(finished_run)
    assert tokens == {(step, role): full[role] if step else 0 for step in range(4) for role in full}


def test_an_adaptive_run_resumed_after_a_crash_equals_an_uninterrupted_one(tiny_config, tmp_path, monkeypatch,
                                                                          one_chunk_blocks):
    whole = run_module.run(tiny_config(tmp_path / "whole", adaptive_scoring=True), quiet=True)
    config = tiny_config(tmp_path / "crashed", adaptive_scoring=True)
    crash_in_step_2(monkeypatch, config)
    monkeypatch.setattr(adaptive, "BLOCK_TOKENS", CHUNK_LEN)  # crash_in_step_2 undid every patch
    run_module.run(config, resume=True, quiet=True)
    for name in ("metrics.csv", "pruned.json"):
        assert (config.output_dir / name).read_text() == (whole / name).read_text(), name
    assert len({int(r["score_tokens"]) for r in read_metrics(whole)}) > 2, "some step stopped early, and not all alike"


def test_a_folder_made_before_score_tokens_resumes_in_its_own_columns(finished_run, tiny_config, tmp_path,
                                                                      monkeypatch):
    out = tmp_path / "older"
    config = tiny_config(out)
    crashed_before(monkeypatch, config, "top1_se", "score_tokens", "top1_drop_abs_se")  # none existed then
    run_module.run(config, resume=True, quiet=True)
    assert (out / "metrics.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    assert read_metrics(out) == [{k: r[k] for k in COLUMNS} for r in read_metrics(finished_run)]


def test_the_console_line_says_what_each_step_scored(tiny_config, tmp_path, capsys):
    run_module.run(tiny_config(tmp_path / "run", steps=1), quiet=False)
    full = scoring_tokens(tmp_path / "run")
    out = capsys.readouterr()
    assert f"scored {full['forget']:,}/{full['retain']:,} tokens" in out.out + out.err


@pytest.mark.parametrize("argv, phrase", [
    (["--adaptive-scoring", "--scorer", "random"], "the random scorer reads none"),
    (["--adaptive-scoring", "--score-tokens", "0"], "--score-tokens must be at least 1"),
])
def test_bad_settings_are_refused_in_one_line(capsys, tmp_path, argv, phrase):
    one_error_line(capsys, ["run", "--output", str(tmp_path / "run"), *argv], phrase)


def test_a_config_file_with_a_wrong_type_is_refused_in_one_line(capsys, tmp_path):
    (tmp_path / "c.toml").write_text('adaptive_scoring = "yes"\n')
    one_error_line(capsys, ["run", "--config", str(tmp_path / "c.toml")], "adaptive_scoring", "true or false")
