"""Whole runs on tiny models: outputs, saved model, resume after a crash, masked LMs."""

import dataclasses
import hashlib
import json
import shutil

import pytest
import tomli_w
import torch
from conftest import Crash, crash_in_step_2, read_metrics
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from selprune import models
from selprune import run as run_module
from selprune.arch import NeuronGroup
from selprune.config import RunConfig
from selprune.errors import UserError
from selprune.models import load_model
from selprune.pruning import apply
from selprune.rundir import RunFolder

STEPS = 3  # as conftest's tiny_config


def test_run_folder_has_every_output(finished_run):
    for name in ("config.toml", "metrics.csv", "pruned.json", "report.html", "state/progress.json",
                 "model/config.json"):
        assert (finished_run / name).is_file(), name
    rows = read_metrics(finished_run)
    assert [(int(r["step"]), r["role"]) for r in rows] == [(s, role) for s in range(STEPS + 1)
                                                           for role in ("forget", "retain")]
    assert RunConfig.from_toml(finished_run / "config.toml").steps == STEPS


def test_each_step_prunes_exactly_the_budget_and_never_twice(finished_run):
    record = RunFolder(finished_run).record()
    total = record.layers * record.units_per_layer
    seen = set()
    for entry in record.steps:
        units = {(int(layer), u) for layer, us in entry["pruned"].items() for u in us}
        assert len(units) == round(0.1 * total)
        assert not units & seen
        seen |= units
    rows = read_metrics(finished_run)
    assert int(rows[-1]["units_pruned"]) == len(seen)


def test_saved_model_reloads_with_plain_transformers_to_identical_logits(finished_run, tiny_llama):
    reloaded = AutoModelForCausalLM.from_pretrained(finished_run / "model").eval()
    model, _ = load_model(str(tiny_llama), dtype="float32")
    record = RunFolder(finished_run).record()
    apply(NeuronGroup(model, "ff"), record.mask())
    ids = torch.randint(5, 90, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)
        base, _ = load_model(str(tiny_llama), dtype="float32")
        assert not torch.equal(base(ids).logits, model(ids).logits)


@pytest.mark.parametrize("crash_at", ["select", "metrics"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(finished_run, tiny_config, tmp_path, monkeypatch, crash_at):
    out = tmp_path / "crashed"
    config = tiny_config(out, save_model=True)
    if crash_at == "select":  # killed while scoring step 2
        crash_in_step_2(monkeypatch, config)
    else:  # killed between writing pruned.json and metrics.csv of step 2
        real, calls = run_module.atomic.write_text, {"n": 0}

        def flaky(path, text):
            if path.name == "metrics.csv":
                calls["n"] += 1
                if calls["n"] == 3:
                    raise Crash()
            return real(path, text)

        monkeypatch.setattr(run_module.atomic, "write_text", flaky)
        with pytest.raises(Crash):
            run_module.run(config, quiet=True)
        monkeypatch.undo()
    run_module.run(config, resume=True, quiet=True)
    for name in ("metrics.csv", "pruned.json"):
        assert (out / name).read_text() == (finished_run / name).read_text(), name
    resumed, whole = (load_file(d / "model" / "model.safetensors") for d in (out, finished_run))
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)


def test_a_run_made_before_a_setting_existed_resumes_and_an_edited_config_is_refused(finished_run, tiny_config,
                                                                                       tmp_path, monkeypatch):
    """An older selprune wrote config.toml without a setting added since (here harden_holdout, at its default)
    and took progress.json's checksum of that file's settings: the run resumes to the uninterrupted result.
    A config.toml whose settings changed after its steps were committed is refused."""
    out = tmp_path / "older"
    config = tiny_config(out)
    crash_in_step_2(monkeypatch, config)
    older = {k: v for k, v in config.to_dict().items() if k != "harden_holdout"}
    progress = json.loads((out / "state" / "progress.json").read_text())

    def write(settings):
        (out / "config.toml").write_text(tomli_w.dumps(settings))
        kept = {k: v for k, v in settings.items() if k not in ("batch_size", "save_model", "device", "device_map",
                                                               "output", "compile")}
        progress["sha256"]["config.toml"] = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()
        (out / "state" / "progress.json").write_text(json.dumps(progress))

    write(older)
    edited = (out / "config.toml").read_text().replace("seed = 0", "seed = 1")
    (out / "config.toml").write_text(edited)
    with pytest.raises(UserError, match="has other settings than the ones its steps were made with"):
        run_module.run(tiny_config(out, seed=1), resume=True, quiet=True)
    write(older)
    run_module.run(config, resume=True, quiet=True)
    for name in ("metrics.csv", "pruned.json"):
        assert (out / name).read_text() == (finished_run / name).read_text(), name


def test_finished_run_is_not_redone(finished_run, tiny_config, tmp_path, monkeypatch):
    def fail(*args, **kw):
        raise AssertionError("a finished run pruned again")

    monkeypatch.setattr(run_module, "select", fail)
    copy = shutil.copytree(finished_run, tmp_path / "copy")
    run_module.run(tiny_config(copy, save_model=True), resume=True, quiet=True)
    assert (copy / "metrics.csv").read_text() == (finished_run / "metrics.csv").read_text()


def test_resume_with_other_settings_is_refused(finished_run, tiny_config):
    with pytest.raises(UserError, match="different settings.*steps"):
        run_module.run(tiny_config(finished_run, steps=2), resume=True, quiet=True)


@pytest.mark.parametrize("group", ["attn-value", "attn-head"])
def test_attention_groups_and_random_scorer_run(tiny_config, tmp_path, group):
    out = run_module.run(tiny_config(tmp_path / group, group=group, scorer="random", steps=2),
                         quiet=True)
    assert len(read_metrics(out)) == 6


def test_a_union_of_groups_prunes_one_budget_with_scores_comparable_across_parts(tiny_config, tmp_path,
                                                                                 monkeypatch):
    """ff+attn-preout: each step prunes exactly fraction x (ff + pre-out units); each part's score is its own
    forget / (retain + eps x its median retain importance), so neither part wins by its scale alone."""
    config = tiny_config(tmp_path / "union", group="ff+attn-preout", steps=2)
    seen = {}
    real = run_module.Run.step_scores

    def spy(self, step):
        seen[step] = (real(self, step), [[self.measure(d, part) for d in self.data] for part in self.neurons.parts])
        return seen[step][0]

    monkeypatch.setattr(run_module.Run, "step_scores", spy)
    out = run_module.run(config, quiet=True)
    record = RunFolder(out).record()
    assert record.group == "ff+attn-preout"
    for entry in record.steps:
        units = [(int(layer), u) for layer, us in entry["pruned"].items() for u in us]
        assert len(units) == round(0.1 * record.layers * record.units_per_layer)
    score, parts = seen[1]
    expected = []
    for forget, retain in parts:
        expected.append(forget / (retain + 1e-2 * float(retain.median())))
    torch.testing.assert_close(score, torch.cat(expected, dim=1).to(score.dtype))
    assert score.shape == (record.layers, record.units_per_layer)


def test_the_last_step_takes_what_rounding_left(tiny_config, tmp_path):
    """7 steps of 1/7 of the tiny Llama's 48 ff units round to 7 a step, one more than there are: the last
    step prunes the 6 left (the paper's 50 x 2% on SmolLM2 is the same case), and a resume accepts it."""
    config = tiny_config(tmp_path / "all", steps=7, fraction=1 / 7)
    out = run_module.run(config, quiet=True)
    record = RunFolder(out).record()
    assert [int(record.mask_of(s).sum()) for s in range(1, 8)] == [7] * 6 + [6]
    assert bool(record.mask().all())
    run_module.run(config, resume=True, quiet=True)  # verifies the record: "already complete", not damaged
    with pytest.raises(UserError, match="31 steps x 2 of the 48 ff units.*use at most --steps 24"):
        run_module.run(tiny_config(tmp_path / "over", steps=31, fraction=0.0313), quiet=True)  # 1.5 rounds to 2


def test_masked_lm_run(tiny_config, tmp_path, save_tiny):
    folder = save_tiny("roberta", tmp_path / "roberta")
    out = run_module.run(tiny_config(tmp_path / "mlm", model=str(folder), steps=1), quiet=True)
    rows = read_metrics(out)
    assert len(rows) == 4 and all(0 <= float(r["top1"]) <= 1 for r in rows)


def test_device_map_auto_gives_the_same_run(finished_run, tiny_config, tmp_path):
    """accelerate's device_map="auto" (how big models are sharded) places this tiny one on the CPU."""
    out = run_module.run(tiny_config(tmp_path / "mapped", device_map="auto"), quiet=True)
    assert (out / "pruned.json").read_text() == (finished_run / "pruned.json").read_text()
    assert read_metrics(out) == read_metrics(finished_run)


def test_offloaded_weights_are_refused(tiny_llama):
    """accelerate reloads offloaded weights for every forward: zeroing them would silently prune nothing."""
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    with pytest.raises(UserError, match="cannot compute on device 'disk'"):
        load_model(str(tiny_llama), device_map=device_map)
    model, _ = load_model(str(tiny_llama))
    model.model.layers[1].mlp.down_proj.to("meta")  # what an offloading strategy leaves in the module
    with pytest.raises(UserError, match="offloaded .* model.layers.1.mlp.down_proj"):
        models._refuse_offloading(model, str(tiny_llama))


@pytest.mark.parametrize("settings, message", [
    (dict(fraction=0.005), r"prunes 0 of the 48 ff units per step: use at least --fraction 0.0208"),
    (dict(group="attn-head", selection="per-layer", fraction=0.1), r"prunes 0 of a layer's 4 attn-head units"),
    (dict(group="attn-value", selection="per-layer", fraction=0.19, steps=5),
     r"5 steps x 2 of a layer's 8 attn-value units .* at most --steps 4"),
])
def test_a_fraction_that_prunes_nothing_or_too_much_is_refused(tiny_config, tmp_path, settings, message):
    with pytest.raises(UserError, match=message):
        run_module.run(tiny_config(tmp_path / "run", **settings), quiet=True)


def test_a_chunk_longer_than_the_context_is_refused(tiny_config, tmp_path):
    with pytest.raises(UserError, match="--chunk-len 65 is longer than the model's context of 64 tokens"):
        run_module.run(tiny_config(tmp_path / "run", chunk_len=65), quiet=True)


def test_watched_datasets_are_evaluated_every_step_and_reported(tiny_config, tiny_data, tmp_path, make_datasets):
    other = make_datasets(tmp_path / "other", documents=4)
    out = run_module.run(tiny_config(tmp_path / "run", steps=2, watch=(str(other / "forget"),)), quiet=True)
    rows = read_metrics(out)
    assert [(r["step"], r["role"]) for r in rows] == [(str(s), role) for s in range(3)
                                                      for role in ("forget", "retain", "watch")]
    summary = RunFolder(out).metrics()
    assert list(summary["watch"]) == [str(other / "forget")]
    assert "Collateral damage" in (out / "report.html").read_text()
    resumed = run_module.run(tiny_config(tmp_path / "run", steps=2, watch=(str(other / "forget"),)), resume=True,
                             quiet=True)
    assert read_metrics(resumed) == rows
    with pytest.raises(UserError, match="is already the forget or retain dataset"):
        run_module.run(tiny_config(tmp_path / "again", watch=(str(tiny_data / "retain"),)), quiet=True)


# Top-1 accuracies by role and step for the stop criteria: the tiny random model's drops all stay at 0.
# Relative drops: forget 0, 20, 40, 60 %; retain 0, 5, 15, 30 %.
SCRIPTED = {"forget": [0.5, 0.4, 0.3, 0.2], "retain": [0.4, 0.38, 0.34, 0.28]}


@pytest.fixture
def scripted(monkeypatch):
    """Each evaluation reports SCRIPTED's accuracy for the step it evaluates (a fresh run evaluates each
    role once a step, in order)."""
    real, evaluated = run_module.Run.evaluate, {"forget": 0, "retain": 0}

    def evaluate(self, d):
        step = evaluated[d.role]
        evaluated[d.role] += 1
        return dataclasses.replace(real(self, d), top1=SCRIPTED[d.role][step])

    monkeypatch.setattr(run_module.Run, "evaluate", evaluate)


def stop_record(out):
    return json.loads((out / "state" / "progress.json").read_text()).get("stopped")


def logits_with_steps(tiny_llama, record, steps, ids):
    model, _ = load_model(str(tiny_llama), dtype="float32")
    apply(NeuronGroup(model, "ff"), record.mask(steps))
    with torch.no_grad():
        return model(ids).logits


def test_max_retain_drop_stops_at_the_first_step_over_it_and_keeps_the_one_before(
        scripted, tiny_config, tiny_llama, tmp_path, monkeypatch, capsys):
    out = tmp_path / "budget"
    config = tiny_config(out, max_retain_drop=10.0, save_model=True)
    run_module.run(config, quiet=True)
    assert [(int(r["step"]), r["role"]) for r in read_metrics(out)] == [(s, role) for s in range(3)
                                                                        for role in ("forget", "retain")]
    stop = stop_record(out)
    assert stop["kept_step"] == 1 and "retain drop 15.0% > --max-retain-drop 10" in stop["reason"]
    record = RunFolder(out).record()
    ids = torch.randint(5, 90, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        saved = AutoModelForCausalLM.from_pretrained(out / "model").eval()(ids).logits
    assert torch.equal(saved, logits_with_steps(tiny_llama, record, (1,), ids))
    assert not torch.equal(saved, logits_with_steps(tiny_llama, record, (1, 2), ids))

    def fail(*args, **kw):
        raise AssertionError("a stopped run pruned again")

    monkeypatch.setattr(run_module, "select", fail)
    kept = ("metrics.csv", "pruned.json", "config.toml", "state/progress.json", "model/model.safetensors")
    before = {name: (out / name).read_bytes() for name in kept}
    capsys.readouterr()
    run_module.run(config, resume=True)
    assert "run stopped early at step 2 (retain drop 15.0%" in capsys.readouterr().out
    assert {name: (out / name).read_bytes() for name in kept} == before


def test_target_forget_drop_stops_at_the_step_that_reaches_it(scripted, tiny_config, tmp_path, capsys):
    out = run_module.run(tiny_config(tmp_path / "target", target_forget_drop=40.0))
    assert max(int(r["step"]) for r in read_metrics(out)) == 2
    assert stop_record(out)["kept_step"] == 2
    # retain drops 5% and 15% at steps 1 and 2: halfway, where forget drops 20% and 40%
    assert ("forget drop 30.0% at retain drop <= 10% (interpolated between steps 1 and 2, 15.6% pruned)"
            in capsys.readouterr().out)


def test_the_kept_model_is_loaded_only_once_the_pruned_one_is_freed(scripted, tiny_config, tmp_path, monkeypatch):
    import gc
    import weakref

    loaded, alive_at_load = [], []

    def load(*args, **kwargs):
        gc.collect()
        alive_at_load.append([ref() is not None for ref in loaded])
        model, tokenizer = load_model(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model, tokenizer

    monkeypatch.setattr(run_module, "load_model", load)
    run_module.run(tiny_config(tmp_path / "budget", max_retain_drop=10.0, save_model=True), quiet=True)
    assert alive_at_load == [[], [False]]  # the second load, for the kept step, finds the first model gone
