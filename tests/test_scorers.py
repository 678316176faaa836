"""The scorer table, and the two scorers beyond the paper: attr (attribution) and wanda, on tiny models."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from transformers import AutoTokenizer
from transformers.pytorch_utils import Conv1D

from selprune import config as config_module
from selprune import run as run_module
from selprune.arch import ARCHITECTURES, GROUPS, NeuronGroup, architecture_of
from selprune.config import RunConfig
from selprune.errors import UserError
from selprune.rundir import RunFolder
from selprune.scorers import SCORERS, Scorer, importance
from selprune.stats import MOMENTS, SUMS, attributions, collect

METHOD = Path(__file__).parents[1] / "docs" / "METHOD.md"
TYPES = sorted(ARCHITECTURES)


# -- the table -----------------------------------------------------------------------------------------


def test_choices_and_sums_derive_from_the_table():
    assert config_module.SCORERS == tuple(SCORERS)
    for s in SCORERS.values():
        assert set(s.sums) <= set(SUMS) and set(s.groups) <= set(GROUPS), s.name
        assert s.formula in RunConfig.__dataclass_fields__["scorer"].metadata["help"]


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_every_scorer_is_documented_in_method_md_with_its_formula(name):
    s = SCORERS[name]
    groups = "all" if s.groups == GROUPS else ", ".join(f"`{g}`" for g in s.groups)
    row = f"| `{s.name}` | {s.needs} | `{s.formula}` | {groups} |"
    assert row in METHOD.read_text(encoding="utf-8"), f"docs/METHOD.md lacks the row {row}"


@pytest.mark.parametrize("scorer, group", [(s, g) for s in SCORERS for g in GROUPS if g not in SCORERS[s].groups])
def test_a_scorer_outside_its_groups_is_refused_with_its_one_line(scorer, group):
    with pytest.raises(UserError) as refused:
        RunConfig(scorer=scorer, group=group).validate()
    assert str(refused.value) == SCORERS[scorer].refusal
    assert f"the {scorer} scorer" in str(refused.value) and "use" in str(refused.value)


@pytest.mark.parametrize("scorer, group", [(s, g) for s in SCORERS for g in GROUPS if g in SCORERS[s].groups])
def test_a_scorer_inside_its_groups_is_accepted(scorer, group):
    RunConfig(scorer=scorer, group=group).validate()


def test_attr_and_wanda_default_to_a_relative_eps():
    """Their scale is not the activations' (docs/METHOD.md, "Score"): 1e-2 x the median retain importance."""
    for name in SCORERS:
        config = RunConfig(scorer=name)
        relative = name in ("attr", "wanda")
        assert config.relative_eps == relative and config.eps_value == (1e-2 if relative else 1e-3), name
    assert RunConfig(scorer="attr", eps=0.5).eps_value == 0.5 and RunConfig(scorer="attr", eps=0.5).relative_eps


def test_a_scorer_is_one_entry_of_the_table(tiny_config, tmp_path, monkeypatch):
    """Registering a scorer in SCORERS, and nowhere else, makes it a scorer of whole runs: the checks, the sums
    a scoring pass collects and the importance come from the entry (docs/METHOD.md, "Adding a scorer")."""
    calls, collected = [], []

    def mean_abs(stats, out_norms):  # abs under another name: a run with it must prune what abs prunes
        calls.append(stats.count)
        return stats.sum_abs / stats.count

    def spy(model, neurons, ids, mask, batch_size, progress, moments, **kwargs):
        collected.append(moments)
        return real(model, neurons, ids, mask, batch_size, progress, moments, **kwargs)

    real = run_module.collect
    monkeypatch.setattr(run_module, "collect", spy)
    monkeypatch.setitem(SCORERS, "toy", Scorer("toy", "mean_t abs(z_ti)", mean_abs, sums=("sum_abs",)))
    toy = RunFolder(run_module.run(tiny_config(tmp_path / "toy", scorer="toy", steps=2), quiet=True)).record()
    assert collected == [("sum_abs",)] * 4 and len(calls) == 4  # forget and retain, two steps
    plain = RunFolder(run_module.run(tiny_config(tmp_path / "abs", scorer="abs", steps=2), quiet=True)).record()
    assert toy.steps == plain.steps and sum(len(units) for units in toy.steps[0]["pruned"].values()) > 0


# -- attr ----------------------------------------------------------------------------------------------


def summed_loss(model, ids, mask, labels=None) -> float:
    """The loss attr differentiates, computed independently: the model's own logits, summed cross-entropy
    over the predicted positions (each real next token, or a masked LM's labels)."""
    logits = model(input_ids=ids, attention_mask=mask).logits
    if labels is None:
        valid = (mask[:, :-1] * mask[:, 1:]).bool()
        return float(F.cross_entropy(logits[:, :-1][valid], ids[:, 1:][valid], reduction="sum"))
    chosen = labels != -100
    return float(F.cross_entropy(logits[chosen], labels[chosen], reduction="sum"))


def scaled_loss(model, neurons, layer, dim, factor, position=None, **batch) -> float:
    """The summed loss with activation dim `dim` of `layer` multiplied by `factor` (at one flat position, or all)."""
    def edit(at, z):
        if at != layer:
            return z
        scale = torch.ones_like(z)
        flat = scale.view(-1, z.shape[-1])
        flat[slice(None) if position is None else position, dim] = factor
        return z * scale

    handles = neurons.add_hooks(edit, edit=True)
    try:
        return summed_loss(model, **batch)
    finally:
        for h in handles:
            h.remove()


def float64_case(model_type, tiny_model, tiny_batch):
    model = tiny_model(model_type).double()
    ids, mask = tiny_batch(batch=2, length=10)
    labels = None
    if architecture_of(model.config).masked_lm:  # predict a seeded third of the real positions
        chosen = (torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) < 0.35) & mask.bool()
        labels = ids.masked_fill(~chosen, -100)
    return model, {"ids": ids, "mask": mask, "labels": labels}


class Float64(TorchFunctionMode):
    """Keeps a float64 model in float64: transformers computes norms, rotary tables and eager softmax in
    float32 even there, whose rounding (~1e-8 of the loss) would swamp a finite difference."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = {k: torch.float64 if v is torch.float32 else v for k, v in (kwargs or {}).items()}
        args = tuple(torch.float64 if a is torch.float32 else a for a in args)
        return (torch.Tensor.double if func is torch.Tensor.float else func)(*args, **kwargs)


@pytest.mark.parametrize("group", ["ff", "attn-value", "attn-preout"])
@pytest.mark.parametrize("model_type", TYPES)
def test_attribution_is_the_first_order_loss_change_of_zeroing(model_type, group, tiny_model, tiny_batch):
    """sum_t z g = dL/d(scale of the neuron) at 1, by central finite differences in float64: for whole
    neurons of the first layer (so the paths through the later layer count: cutting them changes the largest
    of these sums by 0.2% to 68%) and of the last, and at single positions, whose |.| attr averages."""
    model, batch = float64_case(model_type, tiny_model, tiny_batch)
    neurons = NeuronGroup(model, group)
    eps = 1e-4  # truncation error ~eps^2, rounding ~1e-16 x L / eps ~1e-10

    def check(estimate, layer, dim, position=None):
        up, down = (scaled_loss(model, neurons, layer, dim, 1 + s * eps, position, **batch) for s in (1, -1))
        torch.testing.assert_close((up - down) / (2 * eps), float(estimate), rtol=1e-5, atol=1e-10)

    with Float64():
        zg = attributions(model, neurons, **batch)
        assert len(zg) == neurons.layers and zg[0].shape[-1] == neurons.width
        total = [z.reshape(-1, neurons.width).sum(0) for z in zg]
        for layer in (0, neurons.layers - 1):
            strongest = int(total[layer].abs().argmax())
            assert abs(float(total[layer][strongest])) > 1e-4  # far above the rounding: the check compares something
            check(total[layer][strongest], layer, strongest)
        check(total[0][0], 0, 0)
        flat = zg[0].reshape(-1, neurons.width)
        for position in flat.abs().amax(1).topk(2).indices.tolist():
            dim = int(flat[position].abs().argmax())
            check(flat[position, dim], 0, dim, position)


@pytest.mark.parametrize("model_type, group", [("llama", "attn-head"), ("gpt2", "ff"), ("bert", "attn-value")])
def test_attr_importance_is_the_mean_absolute_attribution_over_real_positions(model_type, group, tiny_model,
                                                                              tiny_batch):
    model, batch = float64_case(model_type, tiny_model, tiny_batch)
    neurons = NeuronGroup(model, group)
    ids, mask, labels = batch["ids"], batch["mask"], batch["labels"]
    stats, _ = collect(model, neurons, ids, mask, batch_size=1, moments=SCORERS["attr"].sums, labels=labels)
    zg = torch.stack(attributions(model, neurons, **batch))  # [layers, batch, length, width], one batch of 2
    real = zg.reshape(neurons.layers, -1, neurons.width)[:, mask.reshape(-1).bool()]
    per_dim = real.abs().mean(1)
    expected = per_dim.reshape(neurons.layers, neurons.units_per_layer, neurons.dims_per_unit).mean(-1)
    # each batch is summed in float32 (stats.py), hence the float32 tolerance
    torch.testing.assert_close(importance(stats, "attr", neurons.dims_per_unit), expected, rtol=1e-6, atol=1e-12)
    assert stats.count == int(mask.sum())


def test_the_attribution_pass_also_collects_the_activation_moments(tiny_model, tiny_batch):
    model = tiny_model("gpt_neox")
    neurons = NeuronGroup(model, "attn-value")  # a fused qkv projection: the gate edits some of its outputs
    ids, mask = tiny_batch(batch=3)
    plain, _ = collect(model, neurons, ids, mask, batch_size=2)
    both, _ = collect(model, neurons, ids, mask, batch_size=2, moments=SUMS)
    assert set(both.moments()) == set(SUMS)
    for m in MOMENTS:
        torch.testing.assert_close(both.moments()[m], plain.moments()[m])


def test_collecting_attr_leaves_the_model_as_it_was(tiny_model, tiny_batch):
    model = tiny_model("llama").requires_grad_(True)  # even a model whose weights could take gradients
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids, mask = tiny_batch()
    stats, _ = collect(model, NeuronGroup(model, "ff"), ids, mask, batch_size=1, moments=SCORERS["attr"].sums)
    assert float(stats.attribution.sum()) > 0
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.is_grad_enabled()  # the caller's grad mode is as it was


def test_attr_runs_in_bf16(tiny_model, tiny_batch):
    """The run's dtype: a bf16 forward and backward, float32 sums; within bf16's rounding (8 bits, 0.4%) of
    the float32 attribution (measured: a median of 0.3%)."""
    ids, mask = tiny_batch()
    got = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny_model("llama").to(dtype)
        stats, _ = collect(model, NeuronGroup(model, "ff"), ids, mask, batch_size=2, moments=SCORERS["attr"].sums)
        got[dtype] = importance(stats, "attr").reshape(-1)
    exact, rounded = got[torch.float32], got[torch.bfloat16]
    assert float(((rounded - exact).abs() / exact).median()) < 0.01
    assert torch.corrcoef(torch.stack([exact, rounded]))[0, 1] > 0.999


# -- wanda ---------------------------------------------------------------------------------------------


def reading_weight(model, group, layer) -> torch.Tensor:
    """[out, width]: the projection that reads the group's activations, as a plain matrix."""
    arch = architecture_of(model.config)
    module = NeuronGroup(model, group).blocks[layer].get_submodule(arch.ff_out if group == "ff" else arch.out)
    return module.weight.T if isinstance(module, Conv1D) else module.weight


@pytest.mark.parametrize("group", ["ff", "attn-preout", "attn-head"])
@pytest.mark.parametrize("model_type", ["llama", "gpt2", "opt", "bert"])
def test_wanda_equals_a_naive_computation(model_type, group, tiny_model, tiny_batch):
    """Wanda's per-weight score |W_ji| ||X_i|| (X: the activations over the real positions, here taken
    as rms), aggregated over a unit's columns by the Frobenius norm, per sqrt(dims) so a head and a dim
    share a scale."""
    model = tiny_model(model_type)
    neurons = NeuronGroup(model, group)
    ids, mask = tiny_batch(batch=3)
    seen = {}
    handles = neurons.add_hooks(lambda layer, z: seen.__setitem__(layer, z.detach().double()))
    model.base_model(input_ids=ids, attention_mask=mask)
    for h in handles:
        h.remove()
    stats, _ = collect(model, neurons, ids, mask, batch_size=2, moments=SCORERS["wanda"].sums)
    got = importance(stats, "wanda", neurons.dims_per_unit, neurons.out_norms())
    for layer in range(neurons.layers):
        x = seen[layer].reshape(-1, neurons.width)[mask.reshape(-1).bool()]
        score = reading_weight(model, group, layer).double().abs() * x.square().mean(0).sqrt()[None, :]
        for unit in range(neurons.units_per_layer):
            cols = score[:, unit * neurons.dims_per_unit:(unit + 1) * neurons.dims_per_unit]
            torch.testing.assert_close(float(got[layer, unit]),
                                       float(torch.linalg.norm(cols) / neurons.dims_per_unit ** 0.5), rtol=1e-5,
                                       atol=1e-9)


def test_value_neurons_have_no_reading_projection(tiny_model):
    with pytest.raises(ValueError, match="no projection reads"):
        NeuronGroup(tiny_model("llama"), "attn-value").out_norms()


# -- whole runs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scorer, group", [("attr", "ff"), ("attr", "attn-value"), ("wanda", "attn-head")])
def test_runs_with_the_new_scorers_prune_their_budget(scorer, group, tiny_config, tmp_path):
    out = run_module.run(tiny_config(tmp_path / scorer, scorer=scorer, group=group, steps=2), quiet=True)
    record = RunFolder(out).record()
    assert [sum(map(len, entry["pruned"].values())) for entry in record.steps] == \
        [round(0.1 * record.layers * record.units_per_layer)] * 2


def test_a_masked_lm_scores_attr_on_masked_chunks(tiny_config, tmp_path, save_tiny, monkeypatch):
    """attr's loss is the masked-token loss, as in evaluation: the scoring chunks are masked, with labels."""
    seen = []
    real = run_module.collect

    def spy(model, neurons, ids, mask, *args, **kwargs):
        seen.append((ids, kwargs["labels"]))
        return real(model, neurons, ids, mask, *args, **kwargs)

    monkeypatch.setattr(run_module, "collect", spy)
    folder = save_tiny("roberta", tmp_path / "roberta")
    run_module.run(tiny_config(tmp_path / "mlm", model=str(folder), scorer="attr", steps=1), quiet=True)
    mask_id = AutoTokenizer.from_pretrained(folder).mask_token_id
    assert len(seen) == 2  # forget and retain
    for ids, labels in seen:
        chosen = labels != -100
        assert chosen.any() and (ids[chosen] == mask_id).any() and not (ids[~chosen] == mask_id).any()
