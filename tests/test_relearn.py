"""The relearning attack on tiny models: it trains, it keeps pruned ff weights at zero, it resumes, it refuses."""

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import Crash, one_error_line

from selprune import run as run_module
from selprune.arch import NeuronGroup
from selprune.cli import main
from selprune.errors import UserError
from selprune.models import load_model
from selprune.pruning import apply, still_zero
from selprune.relearn import attack as attack_module
from selprune.relearn import (
    COLUMNS,
    Relearn,
    RelearnConfig,
    evaluation_points,
    relearn,
    summarize_relearn,
)
from selprune.evaluate import top1_standard_error
from selprune.relearn.results import chunks_of, lr_text, relearn_folders, share_difference, share_text
from selprune.relearn.section import _relearn_table
from selprune.relearn.settings import ADDED_COLUMNS
from selprune.csvfiles import read_csv
from selprune.rundir import RunFolder

SMALL = dict(max_steps=4, batch_size=2, chunk_len=16, relearn_tokens=96, eval_tokens=64, lr=(3e-3,), device="cpu",
             compile=False)


@pytest.fixture(scope="module")
def pruned_runs(tiny_config, tmp_path_factory):
    """An ff run and an attn-value run of the tiny Llama, 2 steps each (the first data, more documents)."""
    root = tmp_path_factory.mktemp("relearn")
    out = {}
    for group in ("ff", "attn-value"):
        out[group] = run_module.run(tiny_config(root / group, group=group, steps=2, score_tokens=200,
                                                eval_tokens=150), quiet=True)
    return out


@pytest.fixture
def ff_run(pruned_runs, tmp_path):
    return shutil.copytree(pruned_runs["ff"], tmp_path / "ff")


def results(folder, name="relearn"):
    return read_csv(folder / name / "relearn.csv", COLUMNS)


def test_the_run_folder_names_its_relearning_analyses_as_earlier_versions_did(tmp_path):
    """RUN/relearn/relearn.csv and RUN/relearn-NAME/relearn.csv; no other folder, and none without results."""
    for name in ("relearn", "relearn-b", "relearn-a", "relearned", "relearn-empty"):
        (tmp_path / name).mkdir()
        if name != "relearn-empty":
            (tmp_path / name / "progress.json").write_text("{}")
    (tmp_path / "relearn-file").write_text("")
    found = relearn_folders(tmp_path)
    assert [a.csv_path for a in found] == [tmp_path / n / "relearn.csv" for n in ("relearn", "relearn-a", "relearn-b")]
    for name, folder in (("", "relearn"), ("a", "relearn-a")):
        results = RelearnConfig(run=str(tmp_path), name=name).results_folder()
        assert (results.path, results.csv_path) == (tmp_path / folder, tmp_path / folder / "relearn.csv")


def test_evaluation_points_double():
    assert evaluation_points(64) == [0, 1, 2, 4, 8, 16, 32, 64]
    assert evaluation_points(6) == [0, 1, 2, 4, 6]


def test_a_fine_tuning_step_changes_the_weights_and_lowers_the_loss(tiny_llama, tiny_batch):
    model, _ = load_model(str(tiny_llama), dtype="float32")
    model.requires_grad_(True).train()
    ids, mask = tiny_batch(batch=2, length=12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    labels = ids.masked_fill(mask == 0, -100)
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.detach().item())
    assert losses[-1] < losses[0]
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_the_attack_writes_curves_for_every_model_and_ff_weights_stay_zero(ff_run):
    relearn(RelearnConfig(run=str(ff_run), attack=("forget", "retain"), **SMALL), quiet=True)
    rows = results(ff_run)
    models = {r["model"] for r in rows}
    assert models == {"pruned", "base", "random"}
    assert len(rows) == 2 * 3 * len(evaluation_points(4))
    final = {(r["attack"], r["model"]): r for r in rows if r["step"] == "4"}
    assert final[("forget", "pruned")]["pruned_zero"] == "True"  # zero in- and out-weights get zero gradients
    assert final[("forget", "base")]["pruned_zero"] == ""
    start = {r["model"]: float(r["forget_loss"]) for r in rows if r["step"] == "0" and r["attack"] == "forget"}
    assert start["base"] != start["pruned"], "the attack starts from the pruned model"
    assert "Relearning: removed or hidden?" in (ff_run / "report.html").read_text()
    trained = [r for r in rows if r["train_loss"]]
    assert trained and all(float(r["train_loss"]) > 0 for r in trained)


def test_each_row_records_the_forget_chunks_that_pair_it_with_every_other(ff_run):
    relearn(RelearnConfig(run=str(ff_run), **SMALL), quiet=True)
    rows = read_csv(ff_run / "relearn" / "relearn.csv", COLUMNS + ADDED_COLUMNS)
    chunks = [chunks_of(r["forget_chunks"]) for r in rows]
    assert len(chunks[0]) >= 2 and all(torch.equal(c[:, 0], chunks[0][:, 0]) for c in chunks)  # the same chunks
    for row, c in zip(rows, chunks):
        assert c[:, 1].sum() / c[:, 0].sum() == pytest.approx(float(row["forget_top1"]), abs=1e-12)
        assert float(row["forget_top1_se"]) == pytest.approx(top1_standard_error(c))
        assert 0 <= float(row["retain_top1_se"]) < 1  # a number, not empty or NaN
    for s in summarize_relearn(rows):  # an error wherever there is a share (a random tiny model may have none)
        assert [se is None for se in s["recovered_se"]] == [share is None for share in s["recovered"]]


def test_the_table_script_pairs_shares_and_refuses_what_it_cannot_read_in_one_line(ff_run):
    relearn(RelearnConfig(run=str(ff_run), **SMALL), quiet=True)
    script = [sys.executable, str(Path(__file__).resolve().parents[1] / "scripts" / "relearn_table.py"),
              str(ff_run / "relearn"), "--at", "4"]
    done = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "minus random's share (points)" in done.stdout, done.stderr
    done = subprocess.run([*script, "--against", "nobody"], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (2, "relearn_table.py: --against nobody: the forget attack has no such "
                                                 "model (it has base, pruned, random)\n")
    csv = ff_run / "relearn" / "relearn.csv"
    csv.write_text(csv.read_text().replace(" ", "-", 1))  # one chunk record that is not positions:hits pairs
    done = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "not as positions:hits pairs" in done.stderr


def test_an_analysis_made_before_the_chunks_resumes_with_its_own_columns(pruned_runs, tmp_path):
    """A relearn.csv without the added columns (an older version's) is read, reported and resumed as it is."""
    whole = shutil.copytree(pruned_runs["ff"], tmp_path / "whole")
    relearn(RelearnConfig(run=str(whole), random_control=False, **SMALL), quiet=True)
    old = shutil.copytree(pruned_runs["ff"], tmp_path / "old")
    relearn(RelearnConfig(run=str(old), random_control=False, **SMALL), quiet=True)
    folder = RelearnConfig(run=str(old), **SMALL).results_folder()
    folder.settings = RelearnConfig.from_toml(folder.settings_path)
    rows, done = folder.committed()
    stripped = [{k: r[k] for k in COLUMNS} for r in rows]
    folder.added = ()
    folder.commit(stripped[:len(evaluation_points(4))], done[:1])  # as an older version left it, one model short
    assert main(["relearn", str(old), "--resume", "--quiet"]) == 0
    text = (old / "relearn" / "relearn.csv").read_text()
    assert text.splitlines()[0] == ",".join(COLUMNS)
    assert read_csv(old / "relearn" / "relearn.csv", COLUMNS) == [{k: r[k] for k in COLUMNS} for r in results(whole)]
    assert all(s["recovered_se"] == [None] * len(s["steps"]) for s in summarize_relearn(results(old)))
    assert "Relearning: removed or hidden?" in (old / "report.html").read_text()


def test_reinit_pruned_gives_the_weights_back(ff_run):
    relearn(RelearnConfig(run=str(ff_run), reinit_pruned=True, random_control=False, name="reinit", **SMALL),
            quiet=True)
    final = [r for r in results(ff_run, "relearn-reinit") if r["model"] == "pruned" and r["step"] == "4"]
    assert final[0]["pruned_zero"] == "False"


def test_attention_value_weights_come_back_under_fine_tuning(pruned_runs, tmp_path):
    """Pruning a value unit zeroes its value-projection row only; the output projection still reads it."""
    run = shutil.copytree(pruned_runs["attn-value"], tmp_path / "value")
    relearn(RelearnConfig(run=str(run), random_control=False, **SMALL), quiet=True)
    final = [r for r in results(run) if r["model"] == "pruned" and r["step"] == "4"]
    assert final[0]["pruned_zero"] == "False"


def test_pruned_ff_weights_have_zero_gradients(pruned_runs, tiny_llama, tiny_batch):
    model, _ = load_model(str(tiny_llama), dtype="float32")
    neurons = NeuronGroup(model, "ff")
    mask = RunFolder(pruned_runs["ff"]).record().mask()
    apply(neurons, mask)
    model.requires_grad_(True)
    ids, mask_ = tiny_batch(batch=2, length=12)
    model(input_ids=ids, attention_mask=mask_, labels=ids).loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad  # a large plain gradient step
    assert still_zero(neurons, mask)


def test_resume_after_a_crash_gives_the_same_csv(pruned_runs, tmp_path, monkeypatch):
    whole = shutil.copytree(pruned_runs["ff"], tmp_path / "whole")
    relearn(RelearnConfig(run=str(whole), **SMALL), quiet=True)
    crashed = shutil.copytree(pruned_runs["ff"], tmp_path / "crashed")
    real, calls = Relearn.attack, {"n": 0}

    def flaky(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Crash()
        return real(self, *args)

    monkeypatch.setattr(Relearn, "attack", flaky)
    with pytest.raises(Crash):
        relearn(RelearnConfig(run=str(crashed), **SMALL), quiet=True)
    monkeypatch.undo()
    assert len(results(crashed)) == len(evaluation_points(4))  # the first model's rows were committed
    assert main(["relearn", str(crashed), "--resume", "--quiet"]) == 0  # the saved settings: no flags to repeat
    assert (crashed / "relearn" / "relearn.csv").read_text() == (whole / "relearn" / "relearn.csv").read_text()


def test_a_second_attack_in_the_same_folder_needs_resume_or_a_name(ff_run):
    relearn(RelearnConfig(run=str(ff_run), random_control=False, **SMALL), quiet=True)
    with pytest.raises(UserError, match="already holds results.*--resume.*--name"):
        relearn(RelearnConfig(run=str(ff_run), random_control=False, **SMALL), quiet=True)
    with pytest.raises(UserError, match="different settings.*max_steps"):
        relearn(RelearnConfig(run=str(ff_run), random_control=False, **{**SMALL, "max_steps": 2}), resume=True,
                quiet=True)


def test_bad_input_is_one_line_exit_2(capsys, ff_run, tmp_path):
    small = ["--max-steps", "2", "--batch-size", "2", "--chunk-len", "16", "--relearn-tokens", "96", "--device", "cpu"]
    one_error_line(capsys, ["relearn", str(tmp_path / "nothing")], "not a selprune run folder")
    one_error_line(capsys, ["relearn", str(ff_run), "--step", "9", *small], "has pruning steps 1 to 2, not 9")
    one_error_line(capsys, ["relearn", str(ff_run), "--lr", "0", *small], "learning rates must be positive")
    one_error_line(capsys, ["relearn", str(ff_run), "--lr=-1e-4", *small], "learning rates must be positive")
    one_error_line(capsys, ["relearn", str(ff_run), "--attack", "everything", *small], "unknown attack")
    one_error_line(capsys, ["relearn", str(ff_run), *small[:-2], "--relearn-tokens", "100000", "--device", "cpu"],
                   "too few for", "--relearn-tokens")
    one_error_line(capsys, ["relearn", str(ff_run), "--batch-size", "50", "--chunk-len", "16", "--relearn-tokens",
                            "96", "--device", "cpu"], "fewer than one batch of 50")
    assert not (ff_run / "relearn" / "progress.json").exists()


def test_summary_numbers_by_hand():
    def row(model, step, forget, lr=1e-4, zero=""):
        return {"attack": "forget", "model": model, "lr": str(lr), "step": str(step), "forget_top1": str(forget),
                "forget_loss": "1", "retain_top1": "0.3", "retain_loss": "2", "train_loss": "", "pruned_zero": zero}

    rows = [row("base", 0, 0.6), row("base", 2, 0.62),
            row("pruned", 0, 0.2), row("pruned", 1, 0.3), row("pruned", 2, 0.45, zero="True"),
            row("pruned", 0, 0.2, lr=1e-3), row("pruned", 1, 0.25, lr=1e-3), row("pruned", 2, 0.3, lr=1e-3, zero="True"),
            row("crossing", 0, 0.2), row("crossing", 1, 0.3), row("crossing", 2, 0.5),
            row("crossing", 0, 0.2, lr=1e-3), row("crossing", 1, 0.4, lr=1e-3), row("crossing", 2, 0.42, lr=1e-3)]
    summary = {s["model"]: s for s in summarize_relearn(rows)}
    pruned = summary["pruned"]
    assert pruned["lrs"] == [1e-4, 1e-4, 1e-4] and lr_text(pruned) == "0.0001"  # the rate that recovers most
    crossing = summary["crossing"]  # the high rate is the attacker's best after 1 step, the low one after 2
    assert crossing["recovered"] == pytest.approx([0.0, 0.5, 0.75])
    assert crossing["lrs"][1:] == [1e-3, 1e-4] and lr_text(crossing) == "0.001 then 0.0001"
    assert crossing["steps_to_50"] == 1
    assert pruned["gap"] == pytest.approx(0.4)
    assert pruned["recovered"] == pytest.approx([0.0, 0.25, 0.625])
    assert (pruned["steps_to_50"], pruned["steps_to_90"], pruned["pruned_zero"]) == (2, None, True)
    assert summary["base"]["gap"] is None and summary["base"]["recovered"] == [None, None]
    assert pruned["recovered_se"] == [None, None, None]  # rows that do not record their chunks


def chunk_row(model, step, hits):
    """A relearn.csv row of the forget attack whose forget top-1 is `hits` over 3 chunks of 10 positions."""
    return {"attack": "forget", "model": model, "lr": "0.0001", "step": str(step), "forget_top1": repr(sum(hits) / 30),
            "forget_loss": "1", "retain_top1": "0.3", "retain_loss": "2", "train_loss": "", "pruned_zero": "",
            "forget_top1_se": "", "retain_top1_se": "", "forget_chunks": " ".join(f"10:{h}" for h in hits)}


def test_two_shares_differ_with_an_error_paired_on_the_same_chunks():
    """Beside the pruned model of the test below (share 0.4, influence per chunk 0.6, -0.6, 0 over 15), a random
    one regains 1, 1, 0 of 2, 1, 1 hits (share 0.5; influence 0, 0.5, -0.5 over 4): the difference -0.1 has
    influences 0.04, -0.165, 0.125 and SE^2 = 3/2 x 0.04445."""
    rows = [chunk_row("base", 0, [8, 6, 7]), chunk_row("pruned", 0, [2, 2, 2]), chunk_row("pruned", 4, [5, 3, 4]),
            chunk_row("random", 0, [6, 5, 6]), chunk_row("random", 4, [7, 6, 6]), chunk_row("still", 0, [2, 2, 2]),
            chunk_row("still", 4, [2, 2, 2])]
    s = {x["model"]: x for x in summarize_relearn(rows)}
    difference, se = share_difference(s["pruned"], s["random"], 4)
    assert (difference, se) == pytest.approx((-0.1, (1.5 * 0.04445) ** 0.5))
    assert share_difference(s["pruned"], s["pruned"], 4) == pytest.approx((0.0, 0.0))  # the same share
    assert share_difference(s["pruned"], s["still"], 4) == pytest.approx((0.4, s["pruned"]["recovered_se"][1]))
    assert share_difference(s["pruned"], s["random"], 2) is None  # no point at step 2
    assert share_difference(s["pruned"], s["base"], 4) is None  # the unpruned model has no share
    table = _relearn_table(list(s.values()))  # the report's column of each share minus the random control's
    assert "<td>-10 &plusmn;26</td>" in table and "<td>+40 &plusmn;7</td>" not in table
    assert table.count("<td>-50 &plusmn;") == 1  # the model that regained nothing, against random's 0.5


def test_the_recovered_share_s_standard_error_by_hand():
    """Three chunks of 10 positions: the unpruned model hits 8, 6, 7, the pruned one 2, 2, 2 before the attack
    and 5, 3, 4 after: share 6 / 15 = 0.4, residuals 3 - 0.4 x 6 = 0.6, -0.6 and 0, so SE^2 = 3/2 x 0.72 / 15^2."""
    rows = [chunk_row("base", 0, [8, 6, 7]), chunk_row("pruned", 0, [2, 2, 2]), chunk_row("pruned", 4, [5, 3, 4])]
    pruned = next(s for s in summarize_relearn(rows) if s["model"] == "pruned")
    assert pruned["recovered"] == pytest.approx([0.0, 0.4])
    assert pruned["recovered_se"] == pytest.approx([0.0, (1.5 * 0.72) ** 0.5 / 15])
    assert share_text(pruned, 1) == "40% ±7"
    rows[2]["forget_chunks"] = "10:5 11:3 10:4"
    with pytest.raises(UserError, match="different chunks.*damaged"):
        summarize_relearn(rows)
    for damaged in ("10-5 10:3 10:4", "10 3 4", "10:5:1 10:3:1 10:4:1", "10:5 10:3 10:4:1"):
        rows[2]["forget_chunks"] = damaged
        with pytest.raises(UserError, match="not as positions:hits pairs"):
            summarize_relearn(rows)


def test_lora_trains_adapters_and_the_merged_weights_revive(ff_run):
    """LoRA adds a low-rank update to every linear layer: merged, it reaches the pruned weights too."""
    pytest.importorskip("peft")
    relearn(RelearnConfig(run=str(ff_run), optimizer="lora", random_control=False, name="lora",
                          **{**SMALL, "lr": (1e-2,)}), quiet=True)
    rows = results(ff_run, "relearn-lora")
    pruned = [r for r in rows if r["model"] == "pruned"]
    assert pruned[-1]["pruned_zero"] == "False"
    assert float(pruned[-1]["forget_loss"]) != float(pruned[0]["forget_loss"]), "the adapters learned nothing"


def test_other_data_and_another_run_as_control(pruned_runs, tmp_path, make_datasets):
    """other:SPEC fine-tunes on any dataset; --control attacks another run's pruning the same way."""
    run = shutil.copytree(pruned_runs["ff"], tmp_path / "ff")
    other = make_datasets(tmp_path / "other", documents=8) / "retain"
    control = f"{pruned_runs['attn-value']}:1"
    relearn(RelearnConfig(run=str(run), attack=(f"other:{other}",), control=(control,), random_control=False,
                          **SMALL), quiet=True)
    rows = results(run)
    assert {r["attack"] for r in rows} == {f"other:{other}"}
    assert {r["model"] for r in rows} == {"pruned", "base", "attn-value@1"}
    final = {r["model"]: r for r in rows if r["step"] == "4"}
    assert final["attn-value@1"]["pruned_zero"] == "False" and final["pruned"]["pruned_zero"] == "True"


def test_resume_may_add_controls_after_the_saved_ones(pruned_runs, tmp_path):
    """A control added on --resume is attacked and the others are not redone: the CSV is one call's."""
    control, small = f"{pruned_runs['attn-value']}:1", dict(random_control=False, **SMALL)
    whole = shutil.copytree(pruned_runs["ff"], tmp_path / "whole")
    relearn(RelearnConfig(run=str(whole), control=(control,), **small), quiet=True)
    grown = shutil.copytree(pruned_runs["ff"], tmp_path / "grown")
    relearn(RelearnConfig(run=str(grown), **small), quiet=True)
    attacked = []
    real = Relearn.attack

    def counted(self, attack, contender, lr):
        attacked.append(contender.label)
        return real(self, attack, contender, lr)

    Relearn.attack = counted
    try:
        assert main(["relearn", str(grown), "--resume", "--control", control, "--quiet"]) == 0
    finally:
        Relearn.attack = real
    assert attacked == ["attn-value@1"]
    assert (grown / "relearn" / "relearn.csv").read_text() == (whole / "relearn" / "relearn.csv").read_text()
    with pytest.raises(UserError, match="different settings.*control"):  # a saved control cannot be dropped
        relearn(RelearnConfig(run=str(grown), step=2, **small), resume=True, quiet=True)
    new = f"{pruned_runs['attn-value']}:2"
    saved_first = re.escape(f"add control entries after the saved ones, in their order: {control})")
    with pytest.raises(UserError, match=saved_first):
        relearn(RelearnConfig(run=str(grown), control=(new, control), **small), resume=True, quiet=True)


def test_resume_accepts_the_run_path_spelled_differently(pruned_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(pruned_runs["ff"], tmp_path / "runs" / "x")
    small = ["--max-steps", "1", "--batch-size", "2", "--chunk-len", "16", "--relearn-tokens", "96", "--eval-tokens",
             "64", "--device", "cpu", "--no-random-control", "--quiet"]
    assert main(["relearn", "runs/x", *small]) == 0
    for spelling in ("./runs/x", str(tmp_path / "runs" / "x"), "runs/../runs/x/"):
        assert main(["relearn", spelling, "--resume", "--quiet"]) == 0


def test_an_unlearning_folder_is_attacked_at_its_kept_checkpoint(make_unlearning, pruned_runs, tmp_path, capsys):
    """As the main RUN: its kept model beside the original one and a pruning run; no random control (it pruned
    no units), and a step it did not keep is refused."""
    unlearned = make_unlearning(tmp_path / "graddiff")
    relearn(RelearnConfig(run=str(unlearned), control=(str(pruned_runs["ff"]),), **SMALL))
    out = capsys.readouterr().out
    assert "no random control" in out and "at the checkpoint it kept (step 4)" in out
    assert RelearnConfig.from_toml(unlearned / "relearn" / "settings.toml").step == 4
    rows = results(unlearned)
    assert {r["model"] for r in rows} == {"unlearned", "base", "ff@2"}
    start = {r["model"]: r for r in rows if r["step"] == "0"}
    assert start["unlearned"]["forget_loss"] != start["base"]["forget_loss"]  # the kept weights are attacked
    assert {r["pruned_zero"] for r in rows if r["model"] == "unlearned"} == {""}
    assert {r["pruned_zero"] for r in rows if r["model"] == "ff@2" and r["step"] == "4"} == {"True"}
    page = (unlearned / "report.html").read_text()
    assert "Relearning: removed or hidden?" in page and "the unlearned model (the checkpoint it kept, step 4)" in page
    small = ["--max-steps", "1", "--batch-size", "2", "--chunk-len", "16", "--relearn-tokens", "96", "--device", "cpu"]
    one_error_line(capsys, ["relearn", str(unlearned), "--step", "2", "--name", "x", *small],
                   "one model, the checkpoint it kept at step 4, not 2")
    assert not (unlearned / "relearn-x").exists()


def fresh_copy_per_point(self, trained, evaluated):
    """How each point was evaluated before issue 24: a new copy of the trained model, its LoRA adapters
    merged by peft, its weights cast to the evaluation dtype (where the model itself was evaluated, a float32
    copy is the same numbers). Only the weights: a model loaded in bf16, as the evaluation model is, keeps its
    rotary frequencies in float32, and logits a bf16 ulp apart show in a float32 loss."""
    copied = copy.deepcopy(trained)
    if hasattr(copied, "merge_and_unload"):
        copied = copied.merge_and_unload()
    for weight in copied.parameters():
        weight.data = weight.data.to(torch.bfloat16 if self.bf16 else torch.float32)
    return copied.eval().requires_grad_(False)


@pytest.mark.parametrize("optimizer", ["adamw", "lora"])
@pytest.mark.parametrize("dtype", ["auto", "float32"])  # bf16 evaluation; float32 only
def test_every_evaluation_point_gives_the_rows_of_a_fresh_copy(optimizer, dtype, pruned_runs, tmp_path, monkeypatch):
    """The evaluation model made once per attack and overwritten in place evaluates exactly as a copy per point."""
    if optimizer == "lora":
        pytest.importorskip("peft")
    monkeypatch.setattr(attack_module, "cpu_has_bf16", lambda: True)  # the bf16 evaluation, on any CPU
    settings = dict(SMALL, optimizer=optimizer, dtype=dtype, random_control=False)
    in_place = shutil.copytree(pruned_runs["ff"], tmp_path / "in-place")
    relearn(RelearnConfig(run=str(in_place), **settings), quiet=True)
    monkeypatch.setattr(Relearn, "_evaluable", fresh_copy_per_point)
    copied = shutil.copytree(pruned_runs["ff"], tmp_path / "copied")
    relearn(RelearnConfig(run=str(copied), **settings), quiet=True)
    rows = results(in_place)
    assert len({r["forget_loss"] for r in rows if r["model"] == "pruned"}) == len(evaluation_points(4)), \
        "every point must see other weights, or a stale copy would pass"
    assert rows == results(copied)


def test_an_attack_evaluates_one_model_in_place_compiled_as_runs_are(ff_run, monkeypatch):
    """No copy of the model per point or per attacked model: every point evaluates the same bf16 model, loaded
    once, with the compiled rank counts (`fused`) that runs use."""
    seen, real = [], attack_module.evaluate_causal

    def spy(model, *args, fused=False, **kwargs):
        seen.append((model, fused))
        return real(model, *args, **kwargs)  # eagerly: compiling is tested in test_evaluate

    monkeypatch.setattr(attack_module, "evaluate_causal", spy)
    monkeypatch.setattr(attack_module, "cpu_has_bf16", lambda: True)
    relearn(RelearnConfig(run=str(ff_run), random_control=False, **dict(SMALL, compile=True)), quiet=True)
    per_model = 2 * len(evaluation_points(4))  # forget and retain data at every point
    assert len(seen) == 2 * per_model  # the pruned model and the base model
    models = [model for model, _ in seen]
    assert all(model is models[0] for model in models) and models[0].dtype == torch.bfloat16
    assert all(fused for _, fused in seen)
