"""selprune inspect: generation of a pruned model, the capability checks, the logit lens, refusals, and a
whole inspection of a tiny run (files, report, lock, determinism); one integration test on the embedded model."""

import copy
import csv
import dataclasses
import json
import shutil

import pytest
import torch
from conftest import build_tiny_tokenizer, one_error_line, save_tiny_model
from tokenizers import decoders
from transformers import AutoTokenizer

from selprune.arch import ARCHITECTURES, NeuronGroup
from selprune.config import PRESETS, RunConfig
from selprune.inspection import InspectConfig, inspect_run
from selprune.inspection.checks import (
    PythonBody,
    PythonParses,
    Repetition,
    SameLanguage,
    python_verdict,
)
from selprune.inspection.generate import Decoding, generate
from selprune.inspection.lens import lens_top1, verdict
from selprune.pruning import PrunedRecord, apply
from selprune.run import run
from selprune.rundir import RunFolder

CAUSAL = sorted(name for name, arch in ARCHITECTURES.items() if not arch.masked_lm)


def pruned_copy(model, group, fraction=0.3, seed=0):
    """(pruned copy, the mask it prunes, the group on the unpruned model)."""
    neurons = NeuronGroup(model, group)
    mask = torch.rand(neurons.layers, neurons.units_per_layer, generator=torch.Generator().manual_seed(seed)) < fraction
    pruned = copy.deepcopy(model)
    apply(NeuronGroup(pruned, group), mask)
    return pruned, mask, neurons


@pytest.mark.parametrize("model_type, group", [("llama", "ff"), ("gpt2", "attn-value"), ("opt", "attn-head")])
def test_generation_of_the_pruned_model_equals_the_masked_base_model(model_type, group, tiny_model, tiny_batch):
    model = tiny_model(model_type)
    pruned, mask, neurons = pruned_copy(model, group)
    ids, _ = tiny_batch(batch=3, length=9)
    prompts = [ids[0].tolist(), ids[1, :5].tolist(), ids[2, :7].tolist()]  # unequal: padded on the left
    keep = (~mask).repeat_interleave(neurons.dims_per_unit, dim=1).float()

    def masked(layer, z):
        return z * keep[layer].to(z.dtype)

    for decoding in (Decoding("greedy"), Decoding("sampled", 0.7, seed=3)):
        want = generate(pruned, prompts, 12, pad_id=0, eos_id=2, decoding=decoding)
        handles = neurons.add_hooks(masked, edit=True)
        try:
            got = generate(model, prompts, 12, pad_id=0, eos_id=2, decoding=decoding)
        finally:
            for h in handles:
                h.remove()
        assert got == want, decoding
        assert all(len(row) == 12 for row in got)
    with torch.no_grad():  # the pruning matters: the unmasked model predicts otherwise
        assert not torch.equal(model(input_ids=ids).logits, pruned(input_ids=ids).logits)


HEADER = 'def add(a, b):\n    """Return the sum of a and b."""'  # a prompt ends at the docstring's quotes


@pytest.mark.parametrize("continuation, expected", [
    ("\n    return a + b\n\n\ndef other():\n", "ok"),  # the function ends at the next def
    ("  # add\n    total = a + b\n    return total\n", "ok"),  # the docstring's line goes on to its line break
    ("\n    if a:\n        return a + b\n    for x in", "ok"),  # the partial last line is dropped
    ("\n    if a:\n        return (a +", "cut"),  # valid so far, cut by the length
    ("\n    return (a +\n            b", "cut"),
    ("\n    return a +* b\n", "syntax error"),
    ("\n    The sum of a and b is returned.\n", "syntax error"),
    ("\n\nThe end.", "empty"),
    ("\n    pass\n", "empty"),
    (" and more", "empty"),  # ran out on the docstring's line
])
def test_python_verdicts(continuation, expected):
    assert python_verdict(HEADER, continuation) == expected


def test_python_check_accepts_a_valid_function_and_rejects_a_broken_one():
    valid, broken, empty = "\n    return a + b\n", "\n    return (a + b\n\nx = 1)]\n", "\n    pass\n"
    parses = PythonParses()([HEADER] * 3, [valid, broken, empty])
    assert parses.verdicts == ["ok", "syntax error", "empty"] and parses.value == pytest.approx(2 / 3)
    body = PythonBody()([HEADER] * 3, [valid, broken, empty])
    assert body.verdicts == [True, False, False] and body.value == pytest.approx(1 / 3)


GERMAN = ["Wählen Sie im Menü Format den Befehl Zeichen, um die Schriftart der markierten Zeichen zu ändern.",
          "Die Tabelle wird automatisch neu berechnet, wenn Sie den Wert in einer Zelle ändern.",
          "Klicken Sie auf die Schaltfläche, um das Dialogfeld zu schließen und die Änderungen zu speichern."]
ENGLISH = ["Choose Format - Character to change the font of the selected characters.",
           "The spreadsheet is recalculated automatically when you change the value in a cell.",
           "Click the button to close the dialog and save the changes you made."]


def test_language_check_tells_german_from_english():
    check = SameLanguage()
    prompts = GERMAN + ENGLISH
    same = check(prompts, GERMAN[1:] + GERMAN[:1] + ENGLISH[1:] + ENGLISH[:1])
    assert same.verdicts == ["de"] * 3 + ["en"] * 3 and same.value == 1.0
    swapped = check(prompts, ENGLISH + GERMAN)
    assert swapped.verdicts == ["en"] * 3 + ["de"] * 3 and swapped.value == 0.0
    assert check(prompts[:1], ["   "]).value == 0.0  # nothing written is no language


def test_repetition_check_flags_a_loop():
    check = Repetition(build_tiny_tokenizer())
    result = check(["x"] * 2, ["the the the the the the the the the the", "the quick brown fox jumps over a dog"])
    assert result.verdicts == [True, False] and result.value == 0.5


@pytest.mark.parametrize("model_type", CAUSAL)
def test_logit_lens_at_the_last_layer_is_the_models_own_top1(model_type, tiny_model, tiny_batch):
    """Texts the model half wrote itself, so that its own top-1 is far from 0 and 1 and a miswired lens shows."""
    model = tiny_model(model_type)
    ids, _ = tiny_batch(batch=2, length=6)
    written = generate(model, ids.tolist(), 10, pad_id=0, eos_id=2)
    ids = torch.cat([ids, torch.tensor(written)], dim=1)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    top1, positions = lens_top1(model, ids, mask, batch_size=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    valid = (mask[:, :-1] * mask[:, 1:]).bool()
    own = (logits[:, :-1].argmax(-1) == ids[:, 1:])[valid]
    assert positions == int(valid.sum()) and len(top1) == NeuronGroup(model, "ff").layers
    assert 0.3 < own.float().mean() < 1
    assert top1[-1] == int(own.sum()) / positions


def test_lens_verdicts():
    base = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.7]
    assert verdict(base, [0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.3, 0.1])[0] == "hidden"
    assert verdict(base, [0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05])[0] == "removed"
    assert verdict(base, [v * 0.9 for v in base])[0] == "kept"


# ---------------------------------------------------------------- a whole inspection of a tiny run

PYTHON_DOC = '''def lt(a, b):
    """a < b <b>"""
    return a < b


class Box:
    def size(self):
        """Count."""
        return self.n

    def empty(self):
        """No."""
        pass
'''


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_config):
    """A 3-step run of a tiny Llama whose tokenizer decodes back to text (the shared one has no decoder)."""
    root = tmp_path_factory.mktemp("inspect")
    (root / "py").mkdir()
    (root / "py" / "box.py").write_text(PYTHON_DOC)
    model = save_tiny_model("llama", root / "model")
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.backend_tokenizer.decoder = decoders.ByteLevel()
    tokenizer.save_pretrained(model)
    folder = run(tiny_config(root / "run", model=str(model)), quiet=True)
    return folder, root / "py"


def tiny_settings(folder, python, **overrides):
    settings = dict(run=str(folder), step=(1, 3), prompts=2, prefix_tokens=8, new_tokens=8, functions=2,
                    body_tokens=24, python=str(python), lens_tokens=64, sample=True)
    return InspectConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def inspected(tiny_run):
    folder, python = tiny_run
    out = inspect_run(tiny_settings(folder, python), quiet=True)
    return folder, out


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_inspection_writes_its_files(inspected):
    folder, out = inspected
    assert out == folder / "inspect"
    assert {p.name for p in out.iterdir()} == {"settings.toml", "generations.jsonl", "checks.csv", "lens.csv"}
    assert InspectConfig.from_toml(out / "settings.toml").step == (1, 3)
    checks = read_csv(out / "checks.csv")
    assert {(r["set"], int(r["step"]), r["decoding"]) for r in checks} == {
        (s, k, d) for s in ("forget", "retain", "python") for k in (0, 1, 3) for d in ("greedy", "sampled")}
    names = {r["set"]: set() for r in checks}
    for r in checks:
        names[r["set"]].add(r["check"])
    assert names["python"] == {"python parses", "python body", "base perplexity", "repetitive"}
    assert names["retain"] >= {"base perplexity", "repetitive"} and "python parses" not in names["retain"]
    lens = read_csv(out / "lens.csv")
    assert {(int(r["step"]), r["role"], int(r["layer"])) for r in lens} == {
        (k, role, layer) for k in (0, 1, 3) for role in ("forget", "retain") for layer in (1, 2)}
    assert all(0 < int(r["positions"]) <= 64 for r in lens)
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 3 * (2 + 2 + 2)  # decodings x steps x (forget + retain + python prompts)
    python = [r for r in records if r["set"] == "python" and r["step"] == 0]
    assert {r["prompt"].split("(")[0] for r in python} == {"def lt", "def size"}  # `pass` bodies are no prompt
    assert all(r["verdicts"]["python parses"] in ("ok", "cut", "empty", "syntax error") for r in python)


def test_watched_datasets_are_inspected_like_forget_and_retain(tiny_run, tmp_path, make_datasets):
    """--watch adds a dataset the run never saw: its prompts, checks and lens, with the chunks a watching run
    would have evaluated (so the lens's last block is the run's own top-1 on them)."""
    folder, python = shutil.copytree(tiny_run[0], tmp_path / "run"), tiny_run[1]
    other = str(make_datasets(tmp_path / "other", documents=8) / "forget")
    out = inspect_run(tiny_settings(folder, python, step=(3,), sample=False, functions=0, lens_tokens=0,
                                    watch=(other,)), quiet=True)
    checks = read_csv(out / "checks.csv")
    assert {(r["set"], r["dataset"]) for r in checks} >= {(f"watch {other}", other)}
    lens = read_csv(out / "lens.csv")
    watched = {int(r["step"]): float(r["top1"]) for r in lens if r["role"] == "watch" and r["layer"] == "2"}
    assert set(watched) == {0, 3}
    config = RunConfig.from_toml(folder / "config.toml")
    seen = run(dataclasses.replace(config, watch=(other,), output=str(tmp_path / "watching")), quiet=True)
    metrics = RunFolder(seen).metrics()["watch"][other]
    assert metrics["top1"][0] == pytest.approx(watched[0], abs=1e-6)
    assert metrics["top1"][3] == pytest.approx(watched[3], abs=1e-6)
    page = (folder / "report.html").read_text()
    assert f"watch ({other})" in page or other in page
    with pytest.raises(Exception, match="always inspected"):
        inspect_run(tiny_settings(folder, python, watch=(config.forget,)), quiet=True)


def test_report_shows_the_inspection_escaped(inspected):
    folder, _ = inspected
    page = (folder / "report.html").read_text()
    assert "What the model can still do after pruning or unlearning" in page and "after step 3" in page
    # the tiny tokenizer knows neither " nor <, so the prompt reads back as <unk> marks: text to escape
    assert "def lt(a, b):" in page and "&lt;unk&gt;" in page and "<unk>" not in page
    assert list(folder.glob("inspect-lens-1-*.png"))


def test_inspection_is_deterministic_and_releases_the_lock(inspected, tiny_run, tmp_path):
    folder, out = inspected
    again = tmp_path / "again"
    again.mkdir()
    before = {name: (out / name).read_text() for name in ("generations.jsonl", "checks.csv", "lens.csv")}
    inspect_run(tiny_settings(folder, tiny_run[1]), quiet=True)
    assert {name: (out / name).read_text() for name in before} == before
    lock = RunFolder(folder)
    lock.lock()
    lock.unlock()


def test_inspecting_a_busy_run_is_refused(inspected, tiny_run):
    folder, _ = inspected
    holder = RunFolder(folder)
    holder.lock()
    try:
        with pytest.raises(Exception, match="in use by another selprune process"):
            inspect_run(tiny_settings(folder, tiny_run[1]), quiet=True)
    finally:
        holder.unlock()


# ---------------------------------------------------------------- refusals: one line, exit 2



def test_refusals(capsys, tiny_run, tmp_path):
    folder = str(tiny_run[0])
    assert "not a folder" in one_error_line(capsys, ["inspect", str(tmp_path / "nowhere")])
    assert "--step 4" in one_error_line(capsys, ["inspect", folder, "--step", "4"])
    assert "always shown" in one_error_line(capsys, ["inspect", folder, "--step", "0"])
    assert "invalid int value: 'two'" in one_error_line(capsys, ["inspect", folder, "--step", "two"])
    assert "--prefix-tokens must be at least 1" in one_error_line(capsys, ["inspect", folder,
                                                                           "--prefix-tokens", "0"])
    assert "--temperature must be positive" in one_error_line(capsys, ["inspect", folder, "--temperature", "0"])
    assert "context of 64 tokens" in one_error_line(capsys, ["inspect", folder, "--prefix-tokens", "40",
                                                             "--new-tokens", "30"])
    assert "--body-tokens 64" in one_error_line(capsys, ["inspect", folder, "--body-tokens", "64"])


def test_masked_lms_are_refused(capsys, save_tiny, write_run, tmp_path):
    bert = save_tiny("bert", tmp_path / "bert")
    config = RunConfig(model=str(bert), forget="code", retain="prose", steps=1, fraction=0.1)
    rows = [{"step": s, "role": role, "dataset": spec, "fraction_pruned": 0.1 * s, "top1": 0.5, "perplexity": 9.0,
             "units_pruned": 2 * s} for s in (0, 1) for role, spec in (("forget", "code"), ("retain", "prose"))]
    record = PrunedRecord("ff", 2, 24, [{"step": 1, "pruned": {"0": [1, 2]}}])
    folder = write_run(tmp_path / "bert-run", config, rows, record)
    assert "masked LM (bert)" in one_error_line(capsys, ["inspect", str(folder)])
    assert not (folder / "inspect").exists()


# ---------------------------------------------------------------- the embedded model


@pytest.mark.slow
def test_pruning_code_breaks_python_and_keeps_english(tmp_path):
    """Code vs prose on the embedded model, small: one step of 5% of the ff neurons (preset tiny), then 8
    functions of the built-in python set (a 48-token body each) and 4 prose prompts (24 new tokens).

    Measured here (greedy, unpruned -> step 1 -> step 2 of the same run): Python functions that parse
    1.0 -> 0.625 -> 0.75, with a body 1.0 -> 0.125 -> 0.0; the unpruned model's median perplexity of the
    prose continuations 4.31 -> 4.36 -> 14.0 (step 2, 10% of the neurons, costs prose 43% of its top-1).
    Step 1 is the selective one, so the test takes it and allows the prose perplexity 1.5x.
    """
    config = RunConfig.from_dict(dict(PRESETS["tiny"], steps=1, output=str(tmp_path / "run")))
    folder = run(config, quiet=True)
    out = inspect_run(InspectConfig(run=str(folder), prompts=4, new_tokens=24, functions=8, body_tokens=48,
                                    python="python", lens=False), quiet=True)
    value = {(r["set"], r["check"], int(r["step"])): float(r["value"]) for r in read_csv(out / "checks.csv")}
    assert value["python", "python parses", 1] < value["python", "python parses", 0], value
    assert value["python", "python body", 1] <= value["python", "python body", 0] / 2, value
    assert value["retain", "base perplexity", 1] < 1.5 * value["retain", "base perplexity", 0], value


def test_an_inspection_holds_one_model_at_a_time(tiny_run, tmp_path, monkeypatch):
    import gc
    import weakref

    from selprune.inspection.session import Inspection

    folder = shutil.copytree(tiny_run[0], tmp_path / "run")
    loaded, alive_at_load = [], []
    real = Inspection.load_model

    def load(self):
        gc.collect()
        alive_at_load.append([ref() is not None for ref in loaded])
        model, tokenizer = real(self)
        loaded.append(weakref.ref(model))
        return model, tokenizer

    monkeypatch.setattr(Inspection, "load_model", load)
    inspect_run(tiny_settings(folder, tiny_run[1], step=(1,), sample=False, functions=0), quiet=True)
    assert alive_at_load == [[], [False]]  # the unpruned model for the checks finds the pruned one gone


@pytest.mark.parametrize("model_type", ["gemma3", "llama"])
def test_statistics_and_the_lens_never_run_the_whole_model(model_type, tiny_model, tiny_batch):
    """On the transformers floor, gemma3's `base_model` is the whole multimodal model, head included: the
    instance is made to answer so here, and the statistics and the lens run only the decoder."""
    from selprune.arch import neuron_group
    from selprune.stats import collect

    model = tiny_model(model_type)
    embeddings = model.get_input_embeddings()  # found through base_model, so kept as it was
    model.__class__ = type("AsOnTheFloor", (type(model),), {"base_model": property(lambda self: self),
                                                            "get_input_embeddings": lambda self: embeddings})
    ids, mask = tiny_batch()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))  # the whole model, output layer and all
    stats, _ = collect(model, neuron_group(model, "ff"), ids, mask, 2)
    top1, _ = lens_top1(model, ids, mask, 2)
    assert calls == [] and stats.count == mask.sum() and len(top1) == 2


# ---------------------------------------------------------------- an unlearning folder


@pytest.fixture(scope="module")
def inspected_unlearning(tiny_run, make_unlearning, tmp_path_factory):
    """The tiny run's model unlearned on the run's data, inspected at the checkpoint it kept (step 4)."""
    folder = make_unlearning(tmp_path_factory.mktemp("inspect-unlearned") / "graddiff",
                             model=str(tiny_run[0].parent / "model"))
    return folder, inspect_run(tiny_settings(folder, tiny_run[1], step=(), sample=False, lens_tokens=0), quiet=True)


def test_an_unlearning_folder_is_inspected_at_its_kept_checkpoint(inspected_unlearning, inspected):
    folder, out = inspected_unlearning
    assert InspectConfig.from_toml(out / "settings.toml").step == (4,)
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    by_step = {step: {(r["set"], r["index"]): r["continuation"] for r in records if r["step"] == step}
               for step in (0, 4)}
    assert {r["step"] for r in records} == {0, 4} and by_step[0].keys() == by_step[4].keys()
    assert by_step[0] != by_step[4], "the unlearned model writes what the original writes"
    run_records = [json.loads(line) for line in (inspected[1] / "generations.jsonl").read_text().splitlines()]
    assert by_step[0] == {(r["set"], r["index"]): r["continuation"] for r in run_records  # the same original
                          if r["step"] == 0 and r["decoding"] == "greedy"}
    lens = {(int(r["step"]), r["role"]): float(r["top1"]) for r in read_csv(out / "lens.csv") if r["layer"] == "2"}
    metrics = RunFolder(folder).metrics()
    for role in ("forget", "retain"):  # the last block's lens is the kept model's own top-1, as the unlearning measured
        assert lens[4, role] == pytest.approx(metrics[role]["top1"][-1], abs=1e-6)
        assert lens[0, role] == pytest.approx(metrics[role]["top1"][0], abs=1e-6)
    assert "after step 4" in (folder / "report.html").read_text()


def test_inspect_refuses_a_step_an_unlearning_did_not_keep(inspected_unlearning, capsys):
    line = one_error_line(capsys, ["inspect", str(inspected_unlearning[0]), "--step", "2"], "--step 2")
    assert "one model, the checkpoint it kept at step 4" in line


def test_a_report_overlays_a_pruning_run_and_an_unlearning_with_their_analyses(inspected, inspected_unlearning,
                                                                                 tmp_path):
    from selprune.relearn import RelearnConfig, relearn
    from selprune.report import write_report

    (run_folder, _), (unlearned, _) = inspected, inspected_unlearning
    relearn(RelearnConfig(run=str(unlearned), max_steps=2, batch_size=2, chunk_len=16, relearn_tokens=96,
                          eval_tokens=64, lr=(3e-3,), device="cpu"), quiet=True)
    page = write_report([run_folder, unlearned], tmp_path / "overlay").read_text()
    assert "unlearn: graddiff" in page
    relearned = page[page.index("Relearning: removed or hidden?"):page.index("What the model can still do")]
    assert "<td>unlearned</td>" in relearned and "the checkpoint it kept, step 4" in relearned
    inspections = page[page.index("What the model can still do"):]
    for label in (run_folder.name, unlearned.name):
        assert f"</span>{label}</h3>" in inspections
    assert "after step 3" in inspections and "after step 4" in inspections
    assert len(list((tmp_path / "overlay").glob("inspect-lens-*.png"))) == 2
    assert len(list((tmp_path / "overlay").glob("neurons-*.png"))) == 1  # the unlearning pruned nothing
