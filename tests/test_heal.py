"""selprune run --heal on tiny models: retain fine-tuning after each pruning step keeps the pruned units at exactly
zero and repairs the retain loss; --heal 0 is a plain run; a crashed healed run resumes to the same files; the
recipe rebuilds the healed model exactly, for the steps whose weights the run kept; bad input is one line."""

import dataclasses
import itertools
import shutil

import pytest
import torch
from conftest import build_tiny_batch, crash_in_step_2, one_error_line, read_metrics

from selprune import distributed
from selprune import run as run_module
from selprune.arch import neuron_group
from selprune.errors import UserError
from selprune.models import load_model
from selprune.pruning import apply, still_zero
from selprune.recipe import recipe_of
from selprune.relearn import Relearn, RelearnConfig, relearn
from selprune.rundir import RunFolder

# a high learning rate, so that 3 steps on the tiny model move it enough to see
HEAL = dict(heal=3, heal_lr=1e-2, heal_batch_size=2)
COMPARED = ("metrics.csv", "pruned.json")


def files(folder, *more) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in (*COMPARED, *more)}


def logits(model):
    ids, mask = build_tiny_batch(length=12)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def original(folder):
    return load_model(RunFolder(folder).read_config().model, dtype="float32", device="cpu")[0].eval()


@pytest.fixture(scope="module")
def healed(tiny_config, tmp_path_factory):
    """A finished healed run, and its Run object (which holds the model it pruned and healed)."""
    run = run_module.Run(tiny_config(tmp_path_factory.mktemp("healed") / "run", **HEAL), quiet=True)
    run.execute()
    return run


@pytest.mark.parametrize("group", ["ff", "attn-preout"])
def test_the_pruned_units_stay_zero_and_the_rest_is_trained(group, healed, tiny_config, tiny_llama, tmp_path):
    """attn-preout zeroes only the output projection's inputs, whose gradients are not 0 (the values still flow):
    only the hooks keep them at zero. A pruned ff neuron's whole path is zeroed, and its gradients vanish."""
    run = healed if group == "ff" else run_module.Run(tiny_config(tmp_path / "run", group=group, steps=2, **HEAL),
                                                      quiet=True)
    if run is not healed:
        run.execute()
    mask = RunFolder(run.folder.path).record().mask()
    assert still_zero(run.neurons, mask) and still_zero(run.healer.neurons, mask)
    pruned_only, _ = load_model(str(tiny_llama), dtype="float32")
    apply(neuron_group(pruned_only, group), mask)
    moved = [k for k, v in run.model.state_dict().items() if not torch.equal(v, pruned_only.state_dict()[k])]
    assert moved, "healing changed nothing"
    assert all(p.grad is None for p in run.model.parameters())


def test_healing_repairs_the_retain_loss(healed, finished_run):
    """Step 1 prunes the same units as a plain run (nothing was healed before it is scored); healed after it,
    the model predicts the retain data better than the plain run's step 1."""
    ours, theirs = (RunFolder(folder).record() for folder in (healed.folder.path, finished_run))
    assert torch.equal(ours.mask_of(1), theirs.mask_of(1))
    loss = [{r["role"]: float(r["loss"]) for r in read_metrics(folder) if r["step"] == "1"}
            for folder in (healed.folder.path, finished_run)]
    assert loss[0]["retain"] < loss[1]["retain"]


def test_heal_0_is_a_plain_run(finished_run, tiny_config, tmp_path):
    off = run_module.run(tiny_config(tmp_path / "off", heal=0, heal_batch_size=1000), quiet=True)
    assert files(off) == files(finished_run)
    assert not (off / "healed").exists()
    assert "healed" not in "".join(RunFolder(off).progress_path.read_text())


def test_the_folder_keeps_the_last_steps_healed_weights_checksummed(healed):
    folder = RunFolder(healed.folder.path)
    assert [p.name for p in (folder.path / "healed").iterdir()] == ["step-3"] and folder.healed_steps() == [3]
    weights = folder.healed.path(3) / "model.safetensors"
    damaged = bytearray(weights.read_bytes())
    damaged[-1] ^= 1
    copy = RunFolder(shutil.copytree(folder.path, folder.path.parent / "damaged"))
    (copy.healed.path(3) / "model.safetensors").write_bytes(bytes(damaged))
    with pytest.raises(UserError, match="step-3/model.safetensors is missing or differs from what step 3 committed"):
        run_module.run(dataclasses.replace(healed.config, output=str(copy.path)), resume=True, quiet=True)


def test_resume_after_a_crash_equals_an_uninterrupted_healed_run(tiny_config, save_tiny, tmp_path, monkeypatch):
    """On a GPT-2, whose dropout draws from torch's global generator while the copy trains: each step's healing
    must be seeded by itself, and start from the committed step's float32 weights, for a resumed run to match."""
    gpt2 = str(save_tiny("gpt2", tmp_path / "gpt2"))
    whole = run_module.run(tiny_config(tmp_path / "whole", model=gpt2, **HEAL), quiet=True)
    config = tiny_config(tmp_path / "crashed", model=gpt2, **HEAL)
    crash_in_step_2(monkeypatch, config)  # after step 1's healing was committed
    assert RunFolder(config.output_dir).healed_steps() == [1]
    torch.manual_seed(12345)  # the global generator as a new process would not leave it
    run_module.run(config, resume=True, quiet=True)
    weights = "healed/step-3/model.safetensors"
    assert files(config.output_dir, weights) == files(whole, weights)
    assert [p.name for p in (config.output_dir / "healed").iterdir()] == ["step-3"]


def test_the_recipe_rebuilds_the_healed_model_for_relearn_and_inspect(healed):
    """relearn builds the model from the original, inspect applies it in place: both are the run's model."""
    recipe = recipe_of(healed.folder.path)
    assert (recipe.step, recipe.weights) == (3, healed.folder.healed.path(3))
    base = original(healed.folder.path)
    assert torch.equal(logits(recipe.build(base)), logits(healed.model.eval()))
    assert torch.equal(logits(recipe.apply(original(healed.folder.path))), logits(healed.model))
    analysis = Relearn(RelearnConfig(run=str(healed.folder.path), device="cpu"), quiet=True)
    analysis.run.unlock()
    assert torch.equal(logits(analysis.recipe.build(base)), logits(healed.model))
    with pytest.raises(UserError, match="has the healed weights of step 3 only .*, not 2"):
        recipe_of(healed.folder.path, 2)


def test_the_attack_says_that_its_random_control_is_not_healed(healed, tmp_path, capsys):
    folder = shutil.copytree(healed.folder.path, tmp_path / "healed")
    relearn(RelearnConfig(run=str(folder), max_steps=1, batch_size=2, chunk_len=16, relearn_tokens=32, eval_tokens=32,
                          device="cpu", compile=False))
    assert "the random control prunes the original model and is not healed" in capsys.readouterr().out


def test_a_run_stopped_a_step_late_keeps_and_saves_the_kept_steps_healed_model(tiny_config, tmp_path, monkeypatch):
    """A retain drop over budget at step 2 keeps step 1: its healed weights stay beside step 2's (for resume),
    and --save-model saves step 1's healed model, as the recipe rebuilds it."""
    monkeypatch.setattr(run_module.Run, "_stop", lambda self, step, rows: {"kept_step": 1, "reason": "test"}
                        if step == 2 else None)
    run = run_module.run(tiny_config(tmp_path / "run", save_model=True, **HEAL), quiet=True)
    folder = RunFolder(run)
    assert sorted(p.name for p in (run / "healed").iterdir()) == ["step-1", "step-2"]
    assert folder.healed_steps() == [1, 2] and recipe_of(run).step == 1
    saved = load_model(str(folder.model_path), dtype="float32", device="cpu")[0].eval()
    rebuilt = recipe_of(run).build(original(run))
    assert torch.equal(logits(saved), logits(rebuilt))
    assert not torch.equal(logits(rebuilt), logits(recipe_of(run).pruned_as(recipe_of(run).mask).build(original(run))))


def test_heal_says_what_it_costs_before_it_starts(capsys, tiny_config, tmp_path):
    config = tiny_config(tmp_path / "run", **HEAL)
    run_module.Run(config).load()
    out = capsys.readouterr().out
    assert f"about {run_module.healing_cost(config):.1f}x the plain run's forward passes" in out, out
    # 3 steps x 3 fine-tuning steps of 2 x 32 tokens, 3 passes each, over 4 evaluations x 2 x 200 + 3 x 2 x 300
    assert run_module.healing_cost(config) == pytest.approx((3400 + 3 * 3 * 3 * 64) / 3400)


def test_a_sweep_counts_the_tokens_heal_and_harden_fine_tune_on(tiny_config, tmp_path):
    """--dry-run's tokens left: a healed or hardened run reads more than the plain one, by what it trains on."""
    from selprune.sweep import tokens_left

    healed = tiny_config(tmp_path / "run", **HEAL)  # 3 steps, chunks of 32
    plain = dataclasses.replace(healed, heal=0)
    assert tokens_left(healed, -1) - tokens_left(plain, -1) == 3 * 3 * 2 * 32  # after steps 1, 2 and 3
    assert tokens_left(healed, 1) - tokens_left(plain, 1) == 2 * 3 * 2 * 32  # after steps 2 and 3
    hardened = dataclasses.replace(plain, harden=5, harden_batch_size=2, harden_chunk_len=16)
    assert tokens_left(hardened, -1) - tokens_left(plain, -1) == 2 * 5 * 2 * 16  # before steps 2 and 3
    assert tokens_left(hardened, 2) - tokens_left(plain, 2) == 5 * 2 * 16  # before step 3


def test_bad_input_is_one_line_exit_2(capsys, tiny_llama, tiny_data, save_tiny, tmp_path, monkeypatch):
    outputs = (tmp_path / f"run{i}" for i in itertools.count())
    roberta = save_tiny("roberta", tmp_path / "roberta")
    capsys.readouterr()  # what saving it printed

    def argv(model=tiny_llama, **settings):
        flags = dict(model=model, forget=tiny_data / "forget", retain=tiny_data / "retain", steps=2, fraction=0.1,
                     score_tokens=300, eval_tokens=200, chunk_len=32, dtype="float32", output=next(outputs))
        flags.update(settings)
        return ["run", "--no-compile", *(str(a) for k, v in flags.items() for a in ("--" + k.replace("_", "-"), v))]

    one_error_line(capsys, argv(heal=-1), "--heal must be at least 0")
    one_error_line(capsys, argv(heal=2, heal_batch_size=0), "--heal-batch-size must be at least 1")
    one_error_line(capsys, argv(heal=2, heal_lr=0), "--heal-lr must be positive")
    one_error_line(capsys, argv(heal=2, heal_lr="nan"), "--heal-lr is nan", "finite")
    one_error_line(capsys, argv(heal_lr=1e-3), "--heal-lr 0.001", "--heal is off", "give --heal K too")
    one_error_line(capsys, argv(heal=2, device_map="auto"), "--device-map cannot shard")
    one_error_line(capsys, argv(heal=2, heal_batch_size=100), "--heal's data", "fewer than one batch of 100",
                   "raise --score-tokens or lower --heal-batch-size")
    one_error_line(capsys, argv(model=roberta, heal=2), "is a masked LM: drop --heal")
    monkeypatch.setattr(distributed, "world", lambda: 2)
    one_error_line(capsys, argv(heal=2), "this run is distributed", "drop --heal")
