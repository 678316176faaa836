"""selprune run --harden on tiny models: the attack runs on a copy, changes what later steps prune, never trains
the model itself, resumes exactly, and refuses what it cannot do."""

import itertools
from pathlib import Path

import pytest
import torch
from conftest import crash_in_step_2, one_error_line, read_metrics

from selprune import run as run_module
from selprune.arch import neuron_group
from selprune.config import RunConfig
from selprune.errors import UserError
from selprune.models import load_model
from selprune.pruning import apply, still_zero
from selprune.relearn import Relearn, RelearnConfig
from selprune.rundir import RunFolder

# a high learning rate, so that 4 steps on the tiny model move it enough to change the selection
HARDEN = dict(harden=4, harden_lr=1e-2, harden_batch_size=2, harden_chunk_len=16, harden_tokens=96, harden_holdout=96)
COMPARED = ("metrics.csv", "pruned.json")


def files(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in COMPARED}


@pytest.fixture(scope="module")
def hardened(tiny_config, tmp_path_factory):
    """A finished hardened run, and its Run object (which holds the model it pruned)."""
    run = run_module.Run(tiny_config(tmp_path_factory.mktemp("hardened") / "run", **HARDEN), quiet=True)
    run.execute()
    return run


def test_the_model_changes_only_by_zeroing(hardened, tiny_llama):
    """The attack trains a copy: the run's model is the base model with the recorded units zeroed, exactly."""
    expected, _ = load_model(str(tiny_llama), dtype="float32")
    apply(neuron_group(expected, "ff"), RunFolder(hardened.folder.path).record().mask())
    got, want = hardened.model.state_dict(), expected.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert all(p.grad is None for p in hardened.model.parameters())


def test_harden_0_is_a_plain_run(finished_run, tiny_config, tmp_path):
    """With --harden 0 the attack's settings do nothing, not even split the data (10**9 tokens would not fit)."""
    off = run_module.run(tiny_config(tmp_path / "off", harden=0, harden_batch_size=1000,
                                     harden_tokens=10**9), quiet=True)
    assert files(off) == files(finished_run)


def test_hardening_changes_what_steps_2_and_later_prune(finished_run, hardened):
    """Step 1 has nothing to relearn and is the plain run's; the attacked copies change the later selections."""
    ours, theirs = (RunFolder(folder).record() for folder in (hardened.folder.path, finished_run))
    assert torch.equal(ours.mask_of(1), theirs.mask_of(1))
    assert not torch.equal(ours.mask_of(2), theirs.mask_of(2))
    rows = [read_metrics(folder) for folder in (hardened.folder.path, finished_run)]
    assert [r for r in rows[0] if r["step"] in ("0", "1")] == [r for r in rows[1] if r["step"] in ("0", "1")]


def test_the_attacked_copy_relearns_through_the_surviving_units(hardened, tiny_config, tmp_path):
    """The copy's pruned ff weights stay exactly zero (no gradient reaches them), its other weights move, and its
    loss on the forget data falls; the run's model is untouched."""
    run = run_module.Run(tiny_config(tmp_path / "run", **HARDEN), quiet=True)
    run.load()
    mask = RunFolder(hardened.folder.path).record().mask((1,))
    apply(run.neurons, mask)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    copy = run.attacked(2)
    assert still_zero(copy, mask)
    moved = [k for k, v in copy.model.state_dict().items() if not torch.equal(v, before[k])]
    assert moved, "the attack changed nothing"
    forget = run.data[0]

    def loss(model):
        with torch.no_grad():
            return model(input_ids=forget.eval_ids, attention_mask=forget.eval_mask,
                         labels=forget.eval_ids.masked_fill(forget.eval_mask == 0, -100)).loss.item()

    assert loss(copy.model) < loss(run.model)
    assert all(torch.equal(v, before[k]) for k, v in run.model.state_dict().items())
    assert all(p.grad is None for p in run.model.parameters())


def test_the_attack_settings_are_recorded_and_a_resume_may_not_change_them(hardened, tiny_config):
    config = hardened.config
    assert RunFolder(config.output_dir).read_config() == config
    for key in HARDEN:
        changed = {**HARDEN, key: HARDEN[key] * 2}
        with pytest.raises(UserError, match=f"different settings \\({key}\\)"):
            run_module.run(tiny_config(config.output_dir, **changed), resume=True, quiet=True)
    assert RunConfig(harden=4).run_name == f"{RunConfig().run_name}-harden4"  # apart from the plain run


def test_relearn_attacks_a_hardened_run_with_text_the_hardening_never_saw(hardened, finished_run, capsys):
    """--harden trains on the forget documents after its holdout; selprune relearn's forget attack takes the
    holdout's, and an attack with more tokens than the holdout (on the run or on a control) is refused."""
    attack = dict(chunk_len=16, batch_size=2, eval_tokens=64, device="cpu")
    analysis = Relearn(RelearnConfig(run=str(hardened.folder.path), relearn_tokens=96, **attack), quiet=True)
    try:
        analysis.load()
    finally:
        analysis.run.unlock()
    assert analysis.attacks["forget"].tokens == 96
    assert not set(analysis.attacks["forget"].doc_ids) & set(hardened.data[0].attack.doc_ids)
    for run, control in ((hardened.folder.path, ()), (finished_run, (f"{hardened.folder.path}:2",))):
        argv = ["relearn", str(run), "--relearn-tokens", "97", *(a for c in control for a in ("--control", c)),
                "--name", "more"] + [a for k, v in attack.items() for a in ("--" + k.replace("_", "-"), str(v))]
        one_error_line(capsys, argv, "hardened (--harden)", "--relearn-tokens 96 or fewer")
        assert not (Path(run) / "relearn-more").exists()


def test_resume_after_a_crash_equals_an_uninterrupted_hardened_run(tiny_config, save_tiny, tmp_path, monkeypatch):
    """On a GPT-2, whose dropout draws from torch's global generator while the copy trains: each step's attack
    must be seeded by itself for a resumed run to match."""
    gpt2 = str(save_tiny("gpt2", tmp_path / "gpt2"))
    whole = run_module.run(tiny_config(tmp_path / "whole", model=gpt2, **HARDEN), quiet=True)
    config = tiny_config(tmp_path / "crashed", model=gpt2, **HARDEN)
    crash_in_step_2(monkeypatch, config)  # after step 2's attack, before its selection
    torch.manual_seed(12345)  # the global generator as a new process would not leave it
    run_module.run(config, resume=True, quiet=True)
    assert files(config.output_dir) == files(whole)


def test_bad_input_is_one_line_exit_2(capsys, tiny_llama, tiny_data, save_tiny, tmp_path):
    outputs = (tmp_path / f"run{i}" for i in itertools.count())
    roberta = save_tiny("roberta", tmp_path / "roberta")
    capsys.readouterr()  # what saving it printed

    def argv(model=tiny_llama, **settings):
        flags = dict(model=model, forget=tiny_data / "forget", retain=tiny_data / "retain", steps=2, fraction=0.1,
                     score_tokens=300, eval_tokens=200, chunk_len=32, dtype="float32", output=next(outputs),
                     harden_chunk_len=16, harden_tokens=96, harden_batch_size=2, harden_holdout=96)
        flags.update(settings)
        return ["run", "--no-compile", *(str(a) for k, v in flags.items() for a in ("--" + k.replace("_", "-"), v))]

    one_error_line(capsys, argv(harden=-1), "--harden must be at least 0")
    one_error_line(capsys, argv(harden=2, harden_lr=0), "--harden-lr must be positive")
    one_error_line(capsys, argv(harden=2, harden_lr=-1e-4), "--harden-lr must be positive")
    one_error_line(capsys, argv(harden=2, steps=1), "a 1-step run would not change")
    one_error_line(capsys, argv(harden=2, scorer="random"), "the random scorer uses none")
    one_error_line(capsys, argv(model=roberta, harden=2), "masked LM")
    one_error_line(capsys, argv(harden=2, harden_tokens=10**6), "too few for", "--harden-tokens")
    one_error_line(capsys, argv(harden=2, harden_holdout=10**6), "too few for", "--harden-holdout")
    one_error_line(capsys, argv(harden=2, harden_holdout=-1), "--harden-holdout must be at least 0")
    one_error_line(capsys, argv(harden=2, harden_batch_size=50), "fewer than one batch of 50", "--harden-batch-size")
    one_error_line(capsys, argv(harden=2, harden_chunk_len=65), "--harden-chunk-len 65 is longer than the model's")
    assert not list(tmp_path.glob("run*/metrics.csv"))
