"""selprune unlearn on tiny models: each method's loss against a naive reference, its step, the folder it
leaves (resume, matched budgets, report), relearn's attack on it, and the refusals."""

import copy
import dataclasses
import json
import shutil

import pytest
import torch
from conftest import Crash, build_tiny_batch, build_tiny_model, one_error_line

from selprune import run as run_module
from selprune.errors import UserError
from selprune.relearn import COLUMNS as RELEARN_COLUMNS
from selprune.models import load_model
from selprune.relearn import Relearn, RelearnConfig, relearn, summarize_relearn
from selprune.csvfiles import read_csv
from selprune.rundir import COLUMNS, EVAL_COLUMNS, RunFolder
from selprune.unlearn import METHODS, UnlearnConfig, unlearn
from selprune.unlearn import runner as runner_module
from selprune.unlearn.methods import Context, steering_vector

SETTINGS = UnlearnConfig(retain_weight=0.5, npo_beta=0.3, rmu_alpha=2.0, rmu_coefficient=3.0, rmu_layer=0)


# -- naive references, written out position by position -----------------------------------------------------


def naive_sequence_nll(model, ids, mask):
    """Each sequence's summed -log p(next token), over the positions whose next token is real."""
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    totals = []
    for b in range(ids.shape[0]):
        total = 0.0
        for t in range(ids.shape[1] - 1):
            if mask[b, t + 1]:
                total = total - logp[b, t, ids[b, t + 1]]
        totals.append(total)
    return torch.stack(totals)


def naive_mean_nll(model, ids, mask):
    return naive_sequence_nll(model, ids, mask).sum() / mask[:, 1:].sum()


def naive_layer_mse(model, layer, batch, target):
    """Mean of (hidden unit - target)^2 over the real tokens' hidden units, after block `layer`."""
    hidden = model(input_ids=batch[0], attention_mask=batch[1], output_hidden_states=True).hidden_states[layer + 1]
    total, count = 0.0, 0
    for b in range(hidden.shape[0]):
        for t in range(hidden.shape[1]):
            if batch[1][b, t]:
                goal = target if target.dim() == 1 else target[b, t]
                total = total + ((hidden[b, t] - goal) ** 2).sum()
                count += hidden.shape[2]
    return total / count


def naive_rmu(model, reference, forget, retain, s):
    control = steering_vector(model.config.hidden_size, s.rmu_coefficient, s.seed)
    with torch.no_grad():
        held = reference(input_ids=retain[0], attention_mask=retain[1], output_hidden_states=True).hidden_states[1]
    return naive_layer_mse(model, 0, forget, control) + s.rmu_alpha * naive_layer_mse(model, 0, retain, held)


def naive_forward_kl(model, reference, ids, mask):
    """Mean over real positions of sum_v p_teacher(v) * (log p_teacher(v) - log p_student(v))."""
    with torch.no_grad():
        teacher = torch.softmax(reference(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    student = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    total, count = 0.0, 0
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            if mask[b, t]:
                total = total + (teacher[b, t] * (teacher[b, t].log() - student[b, t])).sum()
                count += 1
    return total / count


NAIVE = {
    "ga": lambda model, reference, f, r, s: -naive_mean_nll(model, *f),
    "graddiff": lambda model, reference, f, r, s: -naive_mean_nll(model, *f) + s.retain_weight * naive_mean_nll(model, *r),
    "npo": lambda model, reference, f, r, s: (
        -(2 / s.npo_beta) * torch.log(torch.sigmoid(
            s.npo_beta * (naive_sequence_nll(model, *f) - naive_sequence_nll(reference, *f).detach()))).mean()
        + s.retain_weight * naive_mean_nll(model, *r)),
    "rmu": naive_rmu,
    "distill": lambda model, reference, f, r, s: naive_forward_kl(model, reference, *r),
}


def method_setup(name):
    model = build_tiny_model("llama", seed=0).train()
    reference = build_tiny_model("llama", seed=1)  # another model, so that the frozen terms are not trivially 0
    context = Context(SETTINGS, reference if METHODS[name].reference else None,
                      steering_vector(model.config.hidden_size, SETTINGS.rmu_coefficient, SETTINGS.seed))
    return model, reference, context, build_tiny_batch(seed=1, batch=3), build_tiny_batch(seed=2, batch=3)


def test_every_method_has_a_naive_reference_here():
    assert set(NAIVE) == set(METHODS)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_methods_loss_equals_its_naive_reference(name):
    model, reference, context, forget, retain = method_setup(name)
    got = METHODS[name].loss(model, forget, retain, context)
    expected = NAIVE[name](model, reference, forget, retain, SETTINGS)
    assert torch.isfinite(got) and got.item() != 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_one_step_moves_only_the_trained_weights_and_lowers_the_loss(name):
    model, reference, context, forget, retain = method_setup(name)
    trained = dict(METHODS[name].trained(model, SETTINGS))
    for parameter_name, parameter in model.named_parameters():
        parameter.requires_grad_(parameter_name in trained)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    loss = METHODS[name].loss(model, forget, retain, context)
    loss.backward()
    torch.optim.SGD(trained.values(), lr=1e-2).step()
    after = METHODS[name].loss(model, forget, retain, context)
    assert after < loss
    moved = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert moved and moved <= set(trained)


def test_rmu_trains_the_down_projections_of_the_layers_up_to_its_own():
    model = build_tiny_model("llama")
    assert [n for n, _ in METHODS["rmu"].trained(model, UnlearnConfig(rmu_layer=1, rmu_layers=3))] == [
        "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    assert [n for n, _ in METHODS["rmu"].trained(model, UnlearnConfig())] == ["model.layers.0.mlp.down_proj.weight"]


def distill_setup(noise):
    """A teacher, and its UNDO student as the runner makes it: a copy of the teacher, noised by `noise`."""
    teacher = build_tiny_model("llama", seed=0)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    settings = dataclasses.replace(SETTINGS, method="distill", noise=noise)
    METHODS["distill"].init(student, settings)
    return teacher, student, Context(settings, teacher), build_tiny_batch(seed=2, batch=3)


def test_distill_with_no_noise_starts_as_the_teacher_with_a_kl_of_zero():
    teacher, student, context, retain = distill_setup(0.0)
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters()))
    assert METHODS["distill"].loss(student, retain, retain, context).item() == 0.0


def test_the_distilled_students_loss_falls():
    teacher, student, context, retain = distill_setup(0.5)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(8):
        loss = METHODS["distill"].loss(student, retain, retain, context)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[0] > 0 and losses[-1] < 0.5 * losses[0]


def test_the_student_mixes_the_teacher_with_a_scaled_fresh_draw_by_the_noise():
    teacher, half, _, _ = distill_setup(0.5)
    _, fresh, _, _ = distill_setup(1.0)
    for (name, t), h, f in zip(teacher.named_parameters(), half.parameters(), fresh.parameters()):
        if t.dim() == 1:  # vectors (norms) shrink toward 0
            assert torch.equal(f, torch.zeros_like(f)), name
        else:  # matrices: a Xavier-uniform draw, times noise_scale
            bound = SETTINGS.noise_scale * (6 / sum(t.shape)) ** 0.5
            assert 0 < f.abs().max() <= bound and f.std() > bound / 4, name
        torch.testing.assert_close(h, 0.5 * t + 0.5 * f, msg=name)


def test_distill_tokens_set_the_steps_over_retain_and_distill_data_together():
    plain = UnlearnConfig(method="distill", batch_size=4, chunk_len=32, steps=5)
    assert plain.total_steps == 5
    assert dataclasses.replace(plain, distill_tokens=1000).total_steps == 8  # ceil(1000 / (4 x 32))
    assert dataclasses.replace(plain, distill_tokens=1000, distill_data="code").total_steps == 4


@pytest.mark.parametrize("name", ["graddiff", "npo"])
def test_a_retain_term_leaves_the_retain_loss_lower_than_gradient_ascent(name):
    losses = {}
    for method in ("ga", name):
        model, reference, context, forget, retain = method_setup(method)
        model.requires_grad_(True)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(5):
            METHODS[method].loss(model, forget, retain, context).backward()
            optimizer.step()
            optimizer.zero_grad()
        with torch.no_grad():
            losses[method] = naive_mean_nll(model, *retain).item()
    assert losses[name] < losses["ga"]


# -- the folder ---------------------------------------------------------------------------------------------

TINY = dict(steps=4, eval_every=2, batch_size=2, chunk_len=32, score_tokens=300, eval_tokens=200, skip_top_tokens=5,
            dtype="float32", compile=False, device="cpu")


@pytest.fixture(scope="module")
def tiny_unlearn(tiny_llama, tiny_data):
    """Factory: tiny_unlearn(out, **overrides) -> an UnlearnConfig of a 4-step graddiff on the tiny Llama."""
    def make(out, **overrides) -> UnlearnConfig:
        settings = dict(TINY, model=str(tiny_llama), forget=str(tiny_data / "forget"), retain=str(tiny_data / "retain"),
                        method="graddiff", lr=(1e-3, 3e-2), output=str(out))
        return UnlearnConfig(**{**settings, **overrides})
    return make


@pytest.fixture(scope="module")
def unlearned(tiny_unlearn, tmp_path_factory):
    return unlearn(tiny_unlearn(tmp_path_factory.mktemp("unlearn") / "graddiff"), quiet=True)


def test_the_folder_has_a_runs_shape_and_the_kept_model(unlearned, tiny_unlearn):
    folder = RunFolder(unlearned)
    assert folder.read_config() == tiny_unlearn(unlearned)
    rows = folder.rows()
    assert [(r["step"], r["role"]) for r in rows] == [(s, role) for s in "024" for role in ("forget", "retain")]
    assert {r["fraction_pruned"] for r in rows} == {"0.0"} and {r["units_pruned"] for r in rows} == {"0"}
    for lr in ("0.001", "0.03"):
        assert (unlearned / f"lr-{lr}" / "metrics.csv").is_file()
    assert rows == read_csv(unlearned / "lr-0.03" / "metrics.csv", COLUMNS)  # the larger lr forgets more here
    assert (unlearned / "model" / "model.safetensors").is_file() and (unlearned / "report.html").is_file()
    assert "unlearn: graddiff" in (unlearned / "report.html").read_text()


def test_the_saved_model_is_the_kept_checkpoint(unlearned):
    from selprune.models import load_model

    model, _ = load_model(str(unlearned / "model"), dtype="float32", device="cpu")
    ids, mask = build_tiny_batch()
    base, _ = load_model(str(RunFolder(unlearned).read_config().model), dtype="float32", device="cpu")
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert changed  # 4 steps at lr 3e-2 moved it
    assert torch.isfinite(model(input_ids=ids, attention_mask=mask).logits).all()


def crash_at_step_4_then_resume(config, monkeypatch, crashed_as_expected=lambda: True) -> None:
    """Unlearn with `config` until its step-4 evaluation crashes, check `crashed_as_expected()`, then resume."""
    real = runner_module.Unlearning.evaluate

    def crash_at_step_4(self, model, step, base):
        if step == 4 and self.config.output == config.output:
            raise Crash()
        return real(self, model, step, base)

    monkeypatch.setattr(runner_module.Unlearning, "evaluate", crash_at_step_4)
    with pytest.raises(Crash):
        unlearn(config, quiet=True)
    monkeypatch.undo()
    assert crashed_as_expected()
    unlearn(config, resume=True, quiet=True)


def test_resume_after_a_crash_gives_identical_files(unlearned, tiny_unlearn, tmp_path, monkeypatch):
    config = tiny_unlearn(tmp_path / "crashed")
    crash_at_step_4_then_resume(config, monkeypatch, lambda: not (tmp_path / "crashed" / "metrics.csv").exists())
    for name in ("metrics.csv", "model/model.safetensors", "lr-0.001/metrics.csv", "lr-0.03/metrics.csv"):
        assert (tmp_path / "crashed" / name).read_bytes() == (unlearned / name).read_bytes(), name


def test_a_finished_unlearning_killed_before_its_report_writes_it_on_resume(unlearned, tiny_unlearn, tmp_path):
    folder = tmp_path / "killed"
    shutil.copytree(unlearned, folder)
    (folder / "report.html").unlink()  # as a kill between state/result.json and the report leaves it
    unlearn(tiny_unlearn(folder), resume=True, quiet=True)
    assert "unlearn: graddiff" in (folder / "report.html").read_text()
    assert (folder / "metrics.csv").read_bytes() == (unlearned / "metrics.csv").read_bytes()


def test_a_damaged_checkpoint_is_refused_on_resume(unlearned, tmp_path):
    copy = shutil.copytree(unlearned, tmp_path / "copy")
    (copy / "state" / "result.json").unlink()
    weights = next((copy / "lr-0.03" / "state").glob("weights-*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(UserError, match="differs from what checkpoint"):
        unlearn(dataclasses.replace(RunFolder(copy).read_config(), output=str(copy)), resume=True, quiet=True)


def scripted(monkeypatch, retain_drops: dict[int, float], forget_drops: dict[int, float] | None = None):
    """Evaluations that report the given retain drop at each step, and the given forget drop (default 2x it)."""
    def evaluate(self, model, step, base):
        retain = retain_drops.get(step, 0.0)
        drops = {"forget": (forget_drops or {}).get(step, 2 * retain), "retain": retain}
        return [{k: {"step": step, "fraction_pruned": 0.0, "units_pruned": 0, "role": role,
                     "dataset": getattr(self.config, role), "top1": 0.5 * (1 - drops[role] / 100),
                     "top1_drop_rel": drops[role]}.get(k, 1.0) for k in EVAL_COLUMNS} for role in ("forget", "retain")]
    monkeypatch.setattr(runner_module.Unlearning, "evaluate", evaluate)


FLAT = {2: 1.9, 4: 1.5, 6: 12.0, 8: 1.0}, {2: 12.8, 4: 20.0, 6: 50.0, 8: 30.0}  # retain held flat, as NPO's can


@pytest.mark.parametrize("budget, drops, kept", [({"max_retain_drop": 5.0}, None, 4), ({"match": "RUN"}, None, 2),
                                                 ({"match": "RUN"}, FLAT, 4)])
def test_the_budget_keeps_the_last_or_the_most_forgetting_checkpoint_within_it(budget, drops, kept, tiny_unlearn,
                                                                               tiny_config, tmp_path, monkeypatch,
                                                                               write_run):
    from selprune.pruning import PrunedRecord

    if "match" in budget:  # a pruning run of the same model and data, with a retain drop of 5% at its last step
        run_config = tiny_config(tmp_path / "run", chunk_len=32, score_tokens=300, eval_tokens=200)
        run_config = type(run_config)(**{**run_config.__dict__, "model": tiny_unlearn(tmp_path).model})
        rows = [{"step": s, "role": role, "dataset": getattr(run_config, role), "fraction_pruned": 0.1 * s,
                 "top1": 0.5 * (1 - (5.0 * s if role == "retain" else 0) / 100), "perplexity": 2.0}
                for s in (0, 1) for role in ("forget", "retain")]
        record = PrunedRecord("ff", 2, 24, [{"step": 1, "pruned": {"0": [1]}}])
        budget = {"match": str(write_run(tmp_path / "run", run_config, rows, record))}
    scripted(monkeypatch, *(drops or ({2: 4.0, 4: 3.0, 6: 12.0, 8: 1.0},)))
    out = unlearn(tiny_unlearn(tmp_path / "u", steps=8, lr=(1e-3,), **budget), quiet=True)
    steps = sorted({int(r["step"]) for r in RunFolder(out).rows()})
    assert steps == [0, 2, 4, 6]  # stopped after the first checkpoint past the budget
    assert json.loads((out / "state" / "result.json").read_text())["kept_step"] == kept


def test_a_method_that_repairs_trains_on_past_the_budget_and_keeps_a_checkpoint_within_it(tiny_unlearn, tmp_path,
                                                                                        monkeypatch):
    """distill's noised student starts far past the retain budget and comes back within it: a checkpoint past
    the budget must not stop its training, as it stops a method that damages as it goes."""
    scripted(monkeypatch, {2: 30.0, 4: 12.0, 6: 8.0, 8: 4.0}, {2: 90.0, 4: 80.0, 6: 70.0, 8: 60.0})
    out = unlearn(tiny_unlearn(tmp_path / "u", method="distill", steps=8, lr=(1e-3,), max_retain_drop=10.0),
                  quiet=True)
    assert sorted({int(r["step"]) for r in RunFolder(out).rows()}) == [0, 2, 4, 6, 8]
    assert json.loads((out / "state" / "result.json").read_text())["kept_step"] == 8


# -- relearn attacks it ---------------------------------------------------------------------------------------

SMALL = dict(max_steps=2, batch_size=2, chunk_len=16, relearn_tokens=96, eval_tokens=64, lr=(3e-3,), device="cpu",
             random_control=False)


def test_unlearn_and_relearn_evaluate_in_bf16_as_a_pruning_run_loads_the_model(unlearned, tiny_unlearn, tiny_llama,
                                                                              tmp_path):
    """Both train float32 weights and evaluate a bf16 model where the hardware has bf16; it must compute as the
    pruning run's model, loaded in bf16, does. A `.to(bf16)` copy of the float32 model casts the rotary
    embedding's frequencies too, and its logits differ (the real model's code top-1 moved by 7 of 8,176 tokens);
    the error grows with the position, so the batch is long."""
    ids, mask = build_tiny_batch(length=60)

    def logits(model):
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits

    expected = logits(load_model(str(tiny_llama), dtype="bfloat16", device="cpu")[0])
    unlearning = runner_module.Unlearning(tiny_unlearn(tmp_path / "unlearn", device="cpu"), quiet=True)
    unlearning.folder.unlock()
    unlearning.load()
    unlearning.eval_dtype = torch.bfloat16
    assert torch.equal(logits(unlearning._evaluation_copy(unlearning.base)), expected)
    analysis = Relearn(RelearnConfig(run=str(unlearned), name="bf16", **SMALL), quiet=True)
    analysis.run.unlock()
    analysis.load()
    analysis.bf16 = True
    assert torch.equal(logits(analysis._evaluation_model(analysis.base)), expected)


def test_relearn_attacks_an_unlearning_folder_beside_a_pruning_run(unlearned, tiny_config, tiny_unlearn, tmp_path):
    run = run_module.run(tiny_config(tmp_path / "run", steps=1, chunk_len=32, score_tokens=300, eval_tokens=200),
                         quiet=True)
    relearn(RelearnConfig(run=str(run), control=(str(unlearned),), **SMALL), quiet=True)
    rows = read_csv(run / "relearn" / "relearn.csv", RELEARN_COLUMNS)
    label = f"{unlearned.name}@4"
    assert {r["model"] for r in rows} == {"pruned", "base", label}
    start = {r["model"]: r for r in rows if r["step"] == "0"}
    assert start[label]["forget_loss"] != start["base"]["forget_loss"]  # the unlearned weights are attacked
    assert {r["pruned_zero"] for r in rows if r["model"] == label} == {""}
    summary = {s["model"]: s for s in summarize_relearn(rows)}
    assert summary[label]["pruned_zero"] is None
    page = (run / "report.html").read_text()
    row = page[page.index(f"<td>{label}</td>"):]
    assert "Anamnesis index" in page and row[:row.index("</tr>")].endswith("<td>&mdash;</td>")  # no pruned weights


def test_the_anamnesis_index_counts_the_steps_until_forget_is_back_within_10_percent():
    def rows(model, curve):
        return [{"attack": "forget", "model": model, "lr": "0.001", "step": str(s), "forget_top1": str(v),
                 "forget_loss": "1.0", "retain_top1": "0.5", "retain_loss": "1.0", "train_loss": "", "pruned_zero": ""}
                for s, v in curve]
    table = (rows("base", [(0, 0.50), (1, 0.50), (2, 0.52), (4, 0.52)]) + rows("slow", [(0, 0.1), (1, 0.2), (2, 0.3),
             (4, 0.44)]) + rows("fast", [(0, 0.1), (1, 0.46), (2, 0.5), (4, 0.5)]))
    summary = {s["model"]: s for s in summarize_relearn(table)}
    assert summary["fast"]["anamnesis"] == 1  # 0.46 >= 0.9 x 0.50
    assert summary["slow"]["anamnesis"] is None and summary["slow"]["steps"][-1] == 4  # 0.44 < 0.45: "> 4"
    assert summary["base"]["anamnesis"] == 0


# -- refusals -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, phrase", [
    (["--method", "forget-harder"], "invalid choice"),
    (["--lr", "0"], "learning rates must be positive"),
    (["--lr", "1e-5", "nan"], "give a finite number"),
    (["--lr", "inf"], "give a finite number"),
    (["--lr=-1e-5"], "learning rates must be positive"),
    (["--retain", ""], "--method npo trains on --retain data"),
    (["--max-retain-drop", "150"], "outside (0, 100]"),
    (["--max-retain-drop", "5", "--match", "x"], "not both"),
    (["--match", "MISSING"], "not a selprune run folder"),
    (["--noise", "0.5"], "--noise is a setting of --method distill, not npo"),
    (["--distill-tokens", "4096"], "--distill-tokens is a setting of --method distill"),
    (["--method", "distill", "--noise", "1.5"], "must be in [0, 1]"),
    (["--method", "distill", "--noise", "nan"], "give a finite number"),
    (["--method", "distill", "--distill-data", "prose"], "is the retain data"),
    (["--method", "distill", "--distill-tokens=-1"], "--distill-tokens must be at least 0"),
])
def test_bad_input_ends_with_one_line_and_writes_nothing(argv, phrase, capsys, tmp_path):
    out = tmp_path / "out"
    one_error_line(capsys, ["unlearn", "--output", str(out), *argv], phrase)
    assert not out.exists()


def same_data_flags(config: UnlearnConfig) -> list[str]:
    """The flags that give an unlearning config's model, data, split settings and output."""
    return [f"--{k.replace('_', '-')}={v}" for k, v in config.to_dict().items()
            if k in ("model", "forget", "retain", "output", "chunk_len", "score_tokens", "eval_tokens")]


@pytest.mark.parametrize("option", ["--match", "--from"])
@pytest.mark.parametrize("other", [{"model": "smollm2-360m"}, {"forget": "code"}, {"eval_tokens": 100}])
def test_match_of_a_run_of_another_model_or_data_is_refused(other, option, tiny_config, tiny_unlearn, write_run, tmp_path,
                                                            capsys):
    from selprune.pruning import PrunedRecord

    mine = tiny_unlearn(tmp_path / "out")
    config = tiny_config(tmp_path / "run", chunk_len=32, score_tokens=300, eval_tokens=200)
    config = type(config)(**{**config.__dict__, "model": mine.model, **other})
    rows = [{"step": 0, "role": role, "dataset": getattr(config, role), "fraction_pruned": 0.0, "top1": 0.5,
             "perplexity": 2.0} for role in ("forget", "retain")]
    run = write_run(tmp_path / "run", config, rows, PrunedRecord("ff", 2, 24))
    argv = ["unlearn", option, str(run), "--no-compile"] + same_data_flags(mine)
    one_error_line(capsys, argv, "another model or data", next(iter(other)))
    assert not (tmp_path / "out").exists()


# -- from a pruned model (--from) -----------------------------------------------------------------------------


def test_held_units_stay_exactly_zero_under_adamw_and_move_without_the_hold():
    from selprune.arch import neuron_group
    from selprune.finetune import hold_at_zero
    from selprune.pruning import apply, still_zero

    ids, mask = build_tiny_batch(seed=3, batch=3)
    for group in ("attn-preout", "attn-value"):  # units whose weights the loss's gradient reaches
        held = {}
        for hold in (True, False):
            model = build_tiny_model("llama", seed=0).train().requires_grad_(True)
            neurons = neuron_group(model, group)
            pruned = torch.zeros(neurons.layers, neurons.units_per_layer, dtype=torch.bool)
            pruned[:, ::3] = True
            apply(neurons, pruned)
            if hold:
                hold_at_zero(neurons, pruned)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
            for _ in range(3):
                model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            held[hold] = still_zero(neurons, pruned)
        assert held == {True: True, False: False}, group


@pytest.fixture(scope="module")
def pruned_run(tiny_config, tmp_path_factory):
    """A finished 2-step pruning run of attention pre-out dims, whose weights a gradient moves unless held."""
    return run_module.run(tiny_config(tmp_path_factory.mktemp("pruned") / "run", group="attn-preout", steps=2),
                          quiet=True)


@pytest.fixture(scope="module")
def from_pruned(pruned_run, tiny_unlearn, tmp_path_factory):
    out = tmp_path_factory.mktemp("from") / "ga"
    return unlearn(tiny_unlearn(out, method="ga", lr=(3e-2,), from_run=f"{pruned_run}:1"), quiet=True)


def test_from_a_pruned_run_keeps_its_units_at_zero_and_records_mask_and_weights(pruned_run, from_pruned):
    from selprune.arch import neuron_group
    from selprune.models import load_model
    from selprune.pruning import still_zero
    from selprune.recipe import recipe_of

    assert RunFolder(from_pruned).read_config().from_run == f"{pruned_run.resolve()}:1"
    mask = RunFolder(pruned_run).record().mask(range(1, 2))
    recipe = recipe_of(from_pruned)
    assert recipe.group == "attn-preout" and torch.equal(recipe.mask, mask)
    assert recipe.weights == RunFolder(from_pruned).model_path
    saved, _ = load_model(str(from_pruned / "model"), dtype="float32", device="cpu")
    original, _ = load_model(recipe.model, dtype="float32", device="cpu")
    assert still_zero(neuron_group(saved, "attn-preout"), mask)
    rebuilt = recipe.build(original)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.parameters(), saved.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(recipe_of(pruned_run, 1).build(original).parameters(),
                                                     saved.parameters()))  # it trained


def test_from_a_pruned_run_starts_with_drops_relative_to_the_original(pruned_run, tiny_unlearn, tmp_path,
                                                                       monkeypatch):
    real = runner_module.evaluate_causal

    def zeros_cost_accuracy(model, *args, **kwargs):  # top-1 0.5 for the original, less the more of it is 0
        metrics, batch = real(model, *args, **kwargs)
        weights = torch.cat([p.flatten() for n, p in model.named_parameters() if "o_proj" in n])
        return dataclasses.replace(metrics, top1=0.5 * (1 - (weights == 0).float().mean().item())), batch

    monkeypatch.setattr(runner_module, "evaluate_causal", zeros_cost_accuracy)
    out = unlearn(tiny_unlearn(tmp_path / "u", method="ga", lr=(1e-3,), steps=2, from_run=f"{pruned_run}:1"),
                  quiet=True)
    run_step_1 = {r["role"]: r for r in RunFolder(pruned_run).rows() if r["step"] == "1"}
    rows = RunFolder(out).rows()
    assert [r["step"] for r in rows] == ["0", "0", "2", "2"]
    for row in rows:
        pruned = run_step_1[row["role"]]
        assert (row["units_pruned"], row["fraction_pruned"]) == (pruned["units_pruned"], pruned["fraction_pruned"])
        top1 = float(row["top1"])
        assert top1 < 0.5 and float(row["top1_drop_rel"]) == pytest.approx(100 * (0.5 - top1) / 0.5, rel=1e-9)


def test_resume_from_a_pruned_run_gives_identical_files(from_pruned, tiny_unlearn, pruned_run, tmp_path,
                                                        monkeypatch):
    config = tiny_unlearn(tmp_path / "crashed", method="ga", lr=(3e-2,), from_run=f"{pruned_run}:1")
    crash_at_step_4_then_resume(config, monkeypatch)
    for name in ("metrics.csv", "model/model.safetensors"):
        assert (tmp_path / "crashed" / name).read_bytes() == (from_pruned / name).read_bytes(), name
    assert RunFolder(tmp_path / "crashed").read_config().from_run == RunFolder(from_pruned).read_config().from_run


def test_distill_from_a_pruned_run_keeps_its_units_at_zero(pruned_run, tiny_unlearn, tmp_path):
    from selprune.arch import neuron_group
    from selprune.models import load_model
    from selprune.pruning import still_zero

    out = unlearn(tiny_unlearn(tmp_path / "distill", method="distill", noise=0.5, lr=(1e-2,), steps=2,
                               distill_data=str(tiny_unlearn(tmp_path).forget), from_run=str(pruned_run)),
                  quiet=True)
    saved, _ = load_model(str(out / "model"), dtype="float32", device="cpu")
    assert still_zero(neuron_group(saved, "attn-preout"), RunFolder(pruned_run).record().mask())
    assert json.loads((out / "state" / "result.json").read_text())["kept_step"] == 2


def test_distill_from_a_healed_run_starts_from_its_weights_noised(tiny_config, tiny_unlearn, tmp_path):
    """A healed run's model is its mask over saved weights: rebuilding it after the noise would undo the noise and
    make the student the teacher. Only the mask is applied again."""
    from selprune.arch import neuron_group
    from selprune.pruning import still_zero

    healed = run_module.run(tiny_config(tmp_path / "healed", group="attn-preout", steps=2, heal=3, heal_lr=1e-2,
                                        heal_batch_size=2), quiet=True)
    distill = runner_module.Unlearning(tiny_unlearn(tmp_path / "d", method="distill", noise=0.5, from_run=str(healed)),
                                       quiet=True)
    distill.load()
    student, teacher = distill.trainable_copy(), dict(distill.base.named_parameters())
    assert all(not torch.equal(p, teacher[name]) for name, p in student.named_parameters())
    assert still_zero(neuron_group(student, "attn-preout"), RunFolder(healed).record().mask())
    distill.folder.unlock()


@pytest.mark.parametrize("spec, phrase", [
    ("MISSING", "not a selprune run folder"),
    ("UNLEARNED", "is an unlearning folder"),
    ("RUN:5", "pruning steps 1 to 2, not 5"),
    ("RUN:0", "step 0 is the original model"),
    ("RUN:x", "give RUN or RUN:STEP"),
])
def test_from_a_folder_that_is_not_a_pruning_run_or_step_is_refused(spec, phrase, pruned_run, unlearned, capsys,
                                                                   tiny_unlearn, tmp_path):
    mine = tiny_unlearn(tmp_path / "out")
    spec = spec.replace("UNLEARNED", str(unlearned)).replace("RUN", str(pruned_run))
    argv = ["unlearn", "--from", spec, "--no-compile"] + same_data_flags(mine)
    one_error_line(capsys, argv, phrase)
    assert not (tmp_path / "out").exists()


def test_from_a_run_that_has_not_finished_is_refused(tiny_config, tiny_unlearn, write_run, tmp_path, capsys):
    from selprune.pruning import PrunedRecord

    mine = tiny_unlearn(tmp_path / "out")
    config = tiny_config(tmp_path / "run", chunk_len=32, score_tokens=300, eval_tokens=200, model=mine.model)
    rows = [{"step": s, "role": role, "dataset": getattr(config, role), "fraction_pruned": 0.1 * s, "top1": 0.5,
             "perplexity": 2.0} for s in (0, 1) for role in ("forget", "retain")]
    run = write_run(tmp_path / "run", config, rows, PrunedRecord("ff", 2, 24, [{"step": 1, "pruned": {"0": [1]}}]))
    with pytest.raises(UserError, match="has not finished"):
        unlearn(dataclasses.replace(mine, from_run=str(run)), quiet=True)
    assert not (tmp_path / "out").exists()
