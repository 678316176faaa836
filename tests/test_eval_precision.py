"""--eval-precision, top1_se and top1_drop_abs_se: the standard error of top-1 across chunks, and of a drop across
the same chunks evaluated twice, equal a naive ratio estimator's, a stated precision stops at the first chunk
prefix that meets it (with the metrics of that prefix), step 0 decides how many chunks every later step and a
resume read, 0 changes nothing, old folders without top1_se or top1_drop_abs_se still resume and report, and bad
values are refused with one line."""

import inspect
import json
import math

import pytest
import torch
from conftest import VOCAB, crash_in_step_2, crashed_before, one_error_line, read_metrics, save_tiny_model

from selprune import run as run_module
from selprune.errors import UserError
from selprune.evaluate import MIN_CHUNKS, drop_standard_error, evaluate_causal, evaluate_masked
from selprune.report import write_report
from selprune.rundir import summarize


def naive_se(counts: list[tuple[int, int]]) -> float:
    """The ratio estimator's standard error of sum(hits) / sum(positions) over chunks (positions, hits), written
    out: chunks that predict nothing do not count."""
    counts = [(n, c) for n, c in counts if n]
    k = len(counts)
    mean_n = sum(n for n, _ in counts) / k
    ratio = sum(c for _, c in counts) / sum(n for n, _ in counts)
    variance = sum((c - ratio * n) ** 2 for n, c in counts) / (k - 1)
    return math.sqrt(variance / k) / mean_n


def per_chunk(evaluate, tensors) -> list[tuple[int, int]]:
    """(positions, top-1 hits) of each chunk, evaluated alone."""
    counts = []
    for i in range(len(tensors[0])):
        m, _ = evaluate(*(t[i:i + 1] for t in tensors))
        counts.append((m.tokens, round(m.top1 * m.tokens) if m.tokens else 0))
    return counts


def partly_greedy(model, chunks: int = 20, length: int = 16, seed: int = 0):
    """Chunks of random tokens, each continued greedily from a random position on: the model's top-1 is right on
    the greedy part, so the hit rate differs from chunk to chunk; the last chunk is padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (chunks, length), generator=g)
    for i in range(chunks):
        for t in range(int(torch.randint(2, length, (1,), generator=g)), length):
            ids[i, t] = model(input_ids=ids[i:i + 1, :t]).logits[0, -1].argmax()
    mask = torch.ones_like(ids)
    mask[-1, -5:] = 0
    return ids, mask


def causal_setup(tiny_model):
    model = tiny_model("llama")
    ids, mask = partly_greedy(model)
    evaluate = lambda *tensors, **kw: evaluate_causal(model, *tensors, **{"batch_size": 3, "skip_ids": ids[:0], **kw})
    return evaluate, (ids, mask), model


def masked_setup(tiny_model):
    """A masked LM whose labels are its own top-1 at a varying share of each chunk's masked positions."""
    model = tiny_model("bert")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (20, 16), generator=g)
    chosen = torch.rand(ids.shape, generator=g) < 0.4
    ids[chosen] = 4
    mask = torch.ones_like(ids)
    predicted = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
    right = torch.rand(ids.shape, generator=g) < torch.rand(len(ids), 1, generator=g)
    labels = torch.where(chosen, torch.where(right, predicted, torch.randint(5, VOCAB, ids.shape, generator=g)), -100)
    evaluate = lambda *tensors, **kw: evaluate_masked(model, *tensors, **{"batch_size": 3, "skip_ids": ids[:0], **kw})
    return evaluate, (ids, labels, mask), model


SETUPS = {"causal": causal_setup, "masked": masked_setup}  # each -> (evaluate, its tensors, the model)


@pytest.mark.parametrize("objective", SETUPS)
def test_the_standard_error_is_a_ratio_estimators_across_chunks(objective, tiny_model):
    evaluate, tensors, _ = SETUPS[objective](tiny_model)
    counts = per_chunk(evaluate, tensors)
    assert len({c / n for n, c in counts if n}) > 3, "the check needs hit rates that differ between chunks"
    m, _ = evaluate(*tensors)
    assert m.chunks == len(counts) and m.tokens == sum(n for n, _ in counts)
    assert m.top1 == sum(c for _, c in counts) / m.tokens
    assert m.top1_se == pytest.approx(naive_se(counts), rel=1e-12) and m.top1_se > 0
    one, _ = evaluate(*(t[:1] for t in tensors))
    assert math.isnan(one.top1_se)  # one chunk has no spread to measure


@pytest.mark.parametrize("objective", SETUPS)
def test_a_drops_standard_error_pairs_the_chunks_of_two_evaluations(objective, tiny_model):
    """Each chunk's hits before and after a change of the model, as the evaluation counts them, and the ratio
    estimator's standard error over their differences; evaluations of other chunks are refused."""
    evaluate, tensors, model = SETUPS[objective](tiny_model)
    before, counts = evaluate(*tensors)[0], per_chunk(evaluate, tensors)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=g))
    after, changed = evaluate(*tensors)[0], per_chunk(evaluate, tensors)
    assert before.per_chunk.tolist() == [list(c) for c in counts]
    assert after.per_chunk.tolist() == [list(c) for c in changed]
    differences = [(n, h - h_after) for (n, h), (_, h_after) in zip(counts, changed)]
    assert len({d for _, d in differences}) > 2, "the check needs a change that differs from chunk to chunk"
    se = drop_standard_error(before.per_chunk, after.per_chunk)
    assert se == pytest.approx(naive_se(differences), rel=1e-12) and se > 0
    assert drop_standard_error(before.per_chunk, before.per_chunk) == 0
    with pytest.raises(ValueError, match="same chunks"):
        drop_standard_error(before.per_chunk[1:], after.per_chunk[:-1])


@pytest.mark.parametrize("objective", SETUPS)
def test_a_stated_precision_stops_at_the_first_prefix_that_meets_it(objective, tiny_model):
    """The chunks read are the fewest (at least MIN_CHUNKS) whose standard error is within the precision, and the
    metrics are those of evaluating exactly that prefix; a precision never met reads every chunk."""
    evaluate, tensors, _ = SETUPS[objective](tiny_model)
    counts = per_chunk(evaluate, tensors)
    se = {k: 100 * naive_se(counts[:k]) for k in range(MIN_CHUNKS, len(counts) + 1)}
    # a prefix inside a batch of 3, before the end, more precise than every shorter one: its precision stops there
    first = next(k for k in se if MIN_CHUNKS < k < len(counts) and k % 3 and se[k] < min(se[j] for j in se if j < k))
    precision = se[first]
    m, _ = evaluate(*tensors, precision=precision)
    prefix, _ = evaluate(*(t[:first] for t in tensors))
    assert m.chunks == prefix.chunks == first and m == prefix
    never, _ = evaluate(*tensors, precision=min(se.values()) / 2)
    assert never == evaluate(*tensors)[0] and never.chunks == len(counts)


def test_without_a_precision_a_run_is_a_run_without_the_setting(finished_run, tiny_config, tmp_path):
    out = run_module.run(tiny_config(tmp_path / "zero", eval_precision=0.0), quiet=True)
    assert (out / "metrics.csv").read_text() == (finished_run / "metrics.csv").read_text()
    rows = read_metrics(out)
    assert all(0 < float(r["top1_se"]) < 1 for r in rows)  # every row says how precise its top-1 is
    assert "eval_chunks" not in json.loads((out / "state" / "progress.json").read_text())


@pytest.fixture(scope="module")
def more_data(tmp_path_factory):
    """Datasets with room for an evaluation of many chunks."""
    from conftest import write_datasets

    return write_datasets(tmp_path_factory.mktemp("more"), documents=24)


def many_chunks(tiny_config, more_data, out, **overrides):
    """A tiny run whose evaluation has about 40 chunks of 16 tokens per dataset."""
    return tiny_config(out, forget=str(more_data / "forget"), retain=str(more_data / "retain"), chunk_len=16,
                       eval_tokens=640, **overrides)


def tokens_by_step(out) -> dict[str, set[int]]:
    by_role = {}
    for r in read_metrics(out):
        by_role.setdefault(r["role"], set()).add(int(r["tokens"]))
    return by_role


def test_a_loose_precision_reads_fewer_chunks_at_step_0_and_as_many_at_every_step(tiny_config, more_data, tmp_path,
                                                                                capsys):
    fixed = run_module.run(many_chunks(tiny_config, more_data, tmp_path / "fixed"), quiet=True)
    loose = run_module.run(many_chunks(tiny_config, more_data, tmp_path / "loose", eval_precision=50.0), quiet=False)
    everything, some = tokens_by_step(fixed), tokens_by_step(loose)
    assert all(len(tokens) == 1 for tokens in (*everything.values(), *some.values()))  # the same tokens every step
    assert all(max(some[role]) < max(everything[role]) for role in ("forget", "retain"))
    chunks = json.loads((loose / "state" / "progress.json").read_text())["eval_chunks"]
    assert sorted(chunks.values()) == [MIN_CHUNKS, MIN_CHUNKS]  # 50 points: met as soon as it may stop
    assert " ±" in capsys.readouterr().out


def spy_on_precisions(monkeypatch) -> list[float]:
    """The precision of every evaluation a run makes from here on."""
    seen, real = [], run_module.evaluate_causal

    def spy(*args, **kw):
        seen.append(inspect.signature(real).bind(*args, **kw).arguments.get("precision", 0.0))
        return real(*args, **kw)

    monkeypatch.setattr(run_module, "evaluate_causal", spy)
    return seen


def test_a_precise_run_resumed_after_a_crash_equals_an_uninterrupted_one(tiny_config, more_data, tmp_path,
                                                                        monkeypatch):
    """The resumed steps read the chunks that step 0 decided on, without deciding again."""
    whole = run_module.run(many_chunks(tiny_config, more_data, tmp_path / "whole", eval_precision=0.3), quiet=True)
    config = many_chunks(tiny_config, more_data, tmp_path / "crashed", eval_precision=0.3)
    crash_in_step_2(monkeypatch, config)
    precisions = spy_on_precisions(monkeypatch)
    run_module.run(config, resume=True, quiet=True)
    assert precisions and set(precisions) == {0.0}
    for name in ("metrics.csv", "pruned.json"):
        assert (config.output_dir / name).read_text() == (whole / name).read_text(), name
    assert json.loads((whole / "state" / "progress.json").read_text())["eval_chunks"] == \
        json.loads((config.output_dir / "state" / "progress.json").read_text())["eval_chunks"]


def test_a_lost_chunk_record_is_refused_on_resume(tiny_config, more_data, tmp_path, monkeypatch):
    config = many_chunks(tiny_config, more_data, tmp_path / "crashed", eval_precision=50.0)
    crash_in_step_2(monkeypatch, config)
    path = config.output_dir / "state" / "progress.json"
    progress = json.loads(path.read_text())
    del progress["eval_chunks"]
    path.write_text(json.dumps(progress))
    with pytest.raises(UserError, match="evaluation chunks"):
        run_module.run(config, resume=True, quiet=True)


def spy_on_evaluations(monkeypatch, module) -> list:
    """The Metrics of every evaluate_causal that `module` makes from here on, in order."""
    seen, real = [], module.evaluate_causal

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        seen.append(result[0])
        return result

    monkeypatch.setattr(module, "evaluate_causal", spy)
    return seen


def check_drops_pair_with_step_0(rows: list[dict], seen: list) -> dict[str, list]:
    """Each row's top1_drop_abs_se is the naive standard error of its chunks' hits taken from step 0's, given
    the Metrics of the evaluations that made the rows, one each, in order; returns step 0's counts."""
    assert len(seen) == len(rows)
    base = {r["dataset"]: m.per_chunk.tolist() for r, m in zip(rows, seen) if r["step"] == "0"}
    for r, m in zip(rows, seen):
        differences = [(n, hits - now) for (n, hits), (_, now) in zip(base[r["dataset"]], m.per_chunk.tolist())]
        assert float(r["top1_drop_abs_se"]) == pytest.approx(100 * naive_se(differences), rel=1e-9, abs=1e-12)
    assert any(float(r["top1_drop_abs_se"]) > 0 for r in rows)
    return base


@pytest.fixture(scope="module")
def ff_led_llama(tmp_path_factory):
    """A tiny Llama whose feed-forward outputs outweigh the rest of its residual stream, so that pruning ff units
    changes which tokens it hits (the plain tiny Llama's hits survive 90% of them pruned)."""
    from transformers import AutoModelForCausalLM

    folder = save_tiny_model("llama", tmp_path_factory.mktemp("ff-led") / "llama")
    model = AutoModelForCausalLM.from_pretrained(folder)
    for layer in model.model.layers:
        layer.mlp.down_proj.weight.data.mul_(30)
    model.save_pretrained(folder)
    return folder


def test_every_drop_has_the_standard_error_of_its_chunks_paired_with_step_0s(ff_led_llama, tiny_config, more_data,
                                                                          tmp_path, monkeypatch):
    seen = spy_on_evaluations(monkeypatch, run_module)
    out = run_module.run(many_chunks(tiny_config, more_data, tmp_path / "run", model=str(ff_led_llama)), quiet=True)
    base = check_drops_pair_with_step_0(read_metrics(out), seen)
    assert json.loads((out / "state" / "progress.json").read_text())["base_chunks"] == base
    s = summarize(out)  # the report gives the largest difference with its error
    assert s["max_abs_diff_se"] > 0
    assert f"pts <small>±{s['max_abs_diff_se']:.1f}</small>" in write_report([out], tmp_path / "report").read_text()


@pytest.mark.parametrize("damage, phrase", [("lost", "top-1 hits in each evaluation chunk"),
                                            ("another count", "top-1 hits in each evaluation chunk"),
                                            ("chunks swapped", "other evaluation chunks of")])
def test_a_damaged_base_chunk_record_is_refused_on_resume(tiny_config, tmp_path, monkeypatch, damage, phrase):
    """Also chunks of other sizes than the resumed evaluation reads (as after a change of the data): one line,
    before anything is written."""
    config = tiny_config(tmp_path / "crashed")
    crash_in_step_2(monkeypatch, config)
    path = config.output_dir / "state" / "progress.json"
    progress = json.loads(path.read_text())
    chunks = progress["base_chunks"][config.forget]
    if damage == "lost":
        del progress["base_chunks"]
    elif damage == "another count":
        chunks[0][0] += 1
    else:
        assert chunks[0][0] != chunks[-1][0], "the check needs chunks of different sizes"
        chunks[0], chunks[-1] = chunks[-1], chunks[0]
    path.write_text(json.dumps(progress))
    before = {p: p.read_bytes() for p in config.output_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(UserError, match=phrase):
        run_module.run(config, resume=True, quiet=True)
    assert {p: p.read_bytes() for p in config.output_dir.rglob("*") if p.is_file() and p.name != ".lock"} == before


@pytest.mark.parametrize("value, phrase", [("-1", "is negative"), ("nan", "give a finite number"),
                                           ("inf", "give a finite number")])
def test_bad_precisions_are_refused_in_one_line(capsys, tmp_path, value, phrase):
    one_error_line(capsys, ["run", "--output", str(tmp_path / "run"), "--eval-precision", value], "--eval-precision",
                   phrase)


def test_a_folder_made_before_top1_se_resumes_in_its_columns_and_reports(finished_run, tiny_config, tmp_path,
                                                                        monkeypatch):
    out = tmp_path / "older"
    config = tiny_config(out)
    crashed_before(monkeypatch, config, "top1_se", "top1_drop_abs_se")  # neither existed then
    run_module.run(config, resume=True, quiet=True)
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "top1_se" not in header and "top1_drop_abs_se" not in header
    assert read_metrics(out) == [{k: r[k] for k in header} for r in read_metrics(finished_run)]
    assert summarize(out)["base_top1_forget_se"] is None
    write_report([out, finished_run], tmp_path / "compare")  # an old folder beside a new one


def test_a_folder_made_before_top1_drop_abs_se_resumes_in_its_columns_and_reports(finished_run, tiny_config, tmp_path,
                                                                                monkeypatch):
    out = tmp_path / "older"
    config = tiny_config(out)
    crashed_before(monkeypatch, config, "top1_drop_abs_se")
    run_module.run(config, resume=True, quiet=True)
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "top1_se" in header and "top1_drop_abs_se" not in header
    assert read_metrics(out) == [{k: r[k] for k in header} for r in read_metrics(finished_run)]
    assert summarize(out)["max_abs_diff_se"] is None
    write_report([out, finished_run], tmp_path / "compare")


def test_the_report_shows_the_base_accuracys_precision(finished_run, tmp_path):
    s = summarize(finished_run)
    assert 0 < s["base_top1_forget_se"] < 1 and 0 < s["base_top1_retain_se"] < 1
    page = write_report([finished_run], tmp_path / "report").read_text()
    assert f"±{100 * s['base_top1_forget_se']:.1f}" in page


def test_an_unlearning_records_top1s_standard_error(make_unlearning, tmp_path):
    out = make_unlearning(tmp_path / "unlearned")
    for folder in (out, out / "lr-0.03"):
        assert all(float(r["top1_se"]) > 0 for r in read_metrics(folder))


def test_an_unlearnings_drops_pair_their_chunks_with_step_0s(make_unlearning, tmp_path, monkeypatch):
    from selprune.unlearn import runner

    seen = spy_on_evaluations(monkeypatch, runner)
    out = make_unlearning(tmp_path / "unlearned", lr=(0.03,))
    check_drops_pair_with_step_0(read_metrics(out / "lr-0.03"), seen)
