"""The neuron groups on a tiny model of every supported architecture: activations, and zeroing = masking."""

import copy
import dataclasses

import pytest
import torch
from transformers.activations import ACT2FN
from transformers.pytorch_utils import Conv1D

from selprune.arch import (
    ARCHITECTURES,
    GROUP_TABLE,
    GROUPS,
    NeuronGroup,
    architecture_of,
    group_parts,
    neuron_group,
    text_config,
)
from selprune.errors import UserError
from selprune.pruning import apply, zero

TYPES = sorted(ARCHITECTURES)


def test_every_architecture_has_a_tiny_model(tiny_model):
    for model_type in TYPES:
        assert tiny_model(model_type).config.model_type == model_type


def capture(model, group, ids, mask):
    neurons = NeuronGroup(model, group)
    seen = {}
    handles = neurons.add_hooks(lambda layer, z: seen.__setitem__(layer, z.detach().clone()))
    try:
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    return neurons, seen, out


@pytest.mark.parametrize("like", ["ff", "attn-value"])
def test_a_group_is_one_entry_of_the_table(like, tiny_model, tiny_batch, monkeypatch):
    """An entry registered in GROUP_TABLE alone is a group: one that repeats a group's reading point under
    another name reads that group's activations and names its weights (phi3: fused gate_up and qkv)."""
    monkeypatch.setitem(GROUP_TABLE, "copy", dataclasses.replace(GROUP_TABLE[like], name="copy"))
    model = tiny_model("phi3")
    ids, mask = tiny_batch()
    (ours, seen, _), (theirs, expected, _) = capture(model, "copy", ids, mask), capture(model, like, ids, mask)
    assert (ours.width, ours.units_per_layer) == (theirs.width, theirs.units_per_layer)
    for layer in expected:
        torch.testing.assert_close(seen[layer], expected[layer])
    units = [0, theirs.units_per_layer - 1]
    assert [(m, side, i.tolist()) for m, side, i in ours.weights_of(1, units)] == \
        [(m, side, i.tolist()) for m, side, i in theirs.weights_of(1, units)]


def linear(module, x):
    if isinstance(module, Conv1D):
        return x @ module.weight + module.bias
    return torch.nn.functional.linear(x, module.weight, module.bias)


def activation_fn(config):
    config = text_config(config)
    for key in ("hidden_activation", "hidden_act", "activation_function"):
        name = getattr(config, key, None)
        if name:
            return ACT2FN[name]
    raise AssertionError("no activation in config")


@pytest.mark.parametrize("model_type", TYPES)
def test_ff_activations_equal_manual_mid_layer(model_type, tiny_model, tiny_batch):
    model = tiny_model(model_type)
    ids, mask = tiny_batch()
    arch = architecture_of(model.config)
    inputs = {}
    first_in = arch.ff_in[0].split(":")[0]
    neurons = NeuronGroup(model, "ff")
    hooks = [neurons.blocks[i].get_submodule(first_in).register_forward_pre_hook(
        lambda m, a, i=i: inputs.__setitem__(i, a[0])) for i in range(neurons.layers)]
    _, seen, _ = capture(model, "ff", ids, mask)
    for h in hooks:
        h.remove()
    act = activation_fn(model.config)
    for layer in range(neurons.layers):
        block = neurons.blocks[layer]
        x = inputs[layer]
        if len(arch.ff_in) == 2:  # separate gate and up
            gate, up = (linear(block.get_submodule(p), x) for p in arch.ff_in)
            manual = act(gate) * up
        elif arch.ff_in[0].endswith(":gate_up"):
            gate, up = linear(block.get_submodule(first_in), x).chunk(2, dim=-1)
            manual = act(gate) * up
        else:
            manual = act(linear(block.get_submodule(first_in), x))
        assert seen[layer].shape[-1] == neurons.units_per_layer
        torch.testing.assert_close(seen[layer], manual, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", TYPES)
def test_preout_is_attention_times_value(model_type, tiny_model, tiny_batch):
    """Pre-out dims = sum over keys of attention weights x value dims of the head's KV head."""
    model = tiny_model(model_type)
    ids, mask = tiny_batch()
    neurons, values, out = capture(model, "attn-value", ids, mask)
    _, preout, _ = capture(model, "attn-preout", ids, mask)
    B, T = ids.shape
    hd, H, KV = neurons.head_dim, neurons.heads, neurons.kv_heads
    for layer in range(neurons.layers):
        attn = out.attentions[layer]  # [B, H, T, T]
        v = values[layer].reshape(B, T, KV, hd).repeat_interleave(H // KV, dim=2)  # [B, T, H, hd]
        manual = torch.einsum("bhts,bshd->bthd", attn, v).reshape(B, T, H * hd)
        torch.testing.assert_close(preout[layer], manual, rtol=1e-4, atol=1e-5)


def masked_logits(model, group, layer, units, ids, mask):
    neurons = NeuronGroup(model, group)
    dims = neurons.expand(torch.tensor(units))

    def zero_dims(at, z):
        if at != layer:
            return z
        z = z.clone()
        z[..., dims] = 0
        return z

    handles = neurons.add_hooks(zero_dims, edit=True)
    try:
        return model(input_ids=ids, attention_mask=mask).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("model_type", TYPES)
def test_zeroing_weights_equals_masking_activations(model_type, group, tiny_model, tiny_batch):
    model = tiny_model(model_type)
    ids, mask = tiny_batch()
    neurons = NeuronGroup(model, group)
    units = [0, neurons.units_per_layer // 2 + 1, neurons.units_per_layer - 1]
    base = model(input_ids=ids, attention_mask=mask).logits
    expected = masked_logits(model, group, 1, units, ids, mask)
    assert not torch.allclose(base, expected, atol=1e-6), "masking must change the output"

    pruned = copy.deepcopy(model)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    zero(NeuronGroup(pruned, group), 1, torch.tensor(units))
    got = pruned(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    # Only weights of layer 1 changed; other neurons' activations in that layer are untouched.
    changed = {k for k, v in pruned.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".1." in k for k in changed), changed
    _, seen_before, _ = capture(model, group, ids, mask)
    _, seen_after, _ = capture(pruned, group, ids, mask)
    keep = torch.ones(neurons.width, dtype=torch.bool)
    keep[neurons.expand(torch.tensor(units))] = False
    torch.testing.assert_close(seen_after[1][..., keep], seen_before[1][..., keep], rtol=1e-5, atol=1e-5)
    if group in ("ff", "attn-value"):  # the neuron itself is silenced at its source
        assert seen_after[1][..., ~keep].abs().max() == 0


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_a_union_of_groups_zeroes_each_unit_in_its_own_part(model_type, tiny_model, tiny_batch):
    """ff+attn-value: units 0.. are ff neurons, then value neurons; zeroing a union mask equals zeroing each
    part's share of it with that part alone."""
    model = tiny_model(model_type)
    union = neuron_group(model, "ff+attn-value")
    ff, value = union.parts
    assert union.units_per_layer == ff.units_per_layer + value.units_per_layer
    mask = torch.zeros(union.layers, union.units_per_layer, dtype=torch.bool)
    mask[1, [0, ff.units_per_layer - 1, ff.units_per_layer, union.units_per_layer - 1]] = True
    by_union, by_parts = copy.deepcopy(model), copy.deepcopy(model)
    apply(neuron_group(by_union, "ff+attn-value"), mask)
    apply(NeuronGroup(by_parts, "ff"), mask[:, :ff.units_per_layer])
    apply(NeuronGroup(by_parts, "attn-value"), mask[:, ff.units_per_layer:])
    for (name, a), b in zip(by_union.state_dict().items(), by_parts.state_dict().values()):
        assert torch.equal(a, b), name
    ids, attention = tiny_batch()
    assert not torch.allclose(by_union(input_ids=ids, attention_mask=attention).logits,
                              model(input_ids=ids, attention_mask=attention).logits)


@pytest.mark.parametrize("name, message", [("ff+mlp", "unknown group 'mlp'"), ("ff+ff", "names a group twice"),
                                           ("attn-head+attn-preout", "overlap")])
def test_bad_unions_are_refused(name, message):
    with pytest.raises(UserError, match=message):
        group_parts(name)


def test_unknown_group_and_architecture(tiny_model):
    model = tiny_model("llama")
    with pytest.raises(UserError, match="unknown neuron group"):
        NeuronGroup(model, "mlp")
    model.config.model_type = "mamba"
    with pytest.raises(UserError, match="unsupported architecture 'mamba'.*llama"):
        NeuronGroup(model, "ff")


def test_masked_lms_are_marked():
    assert {t for t, a in ARCHITECTURES.items() if a.masked_lm} == {"roberta", "bert"}
