"""Where the prunable neurons live, per architecture, as data; and one view that serves them all.

A neuron group is read at one point of every block (the input of a projection, or some outputs of a
projection), and its weights sit around that point (docs/METHOD.md, "Neuron groups"):

    ff           input of the down-projection: its column there, its rows in the in/gate projections
    attn-value   output dims of the value projection: those rows (and bias entries)
    attn-preout  input of the attention output projection: that column
    attn-head    a whole head of pre-out dims: all of its columns

Each group is one entry of GROUP_TABLE, which says where it is read and so where its weights are;
`NeuronGroup.weights_of` names those weights; pruning.py zeroes them. Several groups joined by `+`
(`ff+attn-preout`) are pruned in one budget: `GroupUnion` sets their units side by side in each layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .errors import UserError


@dataclass(frozen=True)
class Group:
    """What a group's unit is, where it is read and where its weights are; settings and reports derive from it.

    A group is read at one projection of every block (`at`, a field of Architecture): at its input, where
    the unit's weights are that projection's columns (and the rows of the `feeders` that produce the input),
    or at some of its output dims, where they are the rows that produce them.
    """

    name: str
    unit: str  # what one unit is, for help texts and docs
    units_word: str  # what a report calls them
    eps: float  # default eps of the score: well below typical importances, so it only tames silent units
    activation: bool  # read after an activation function (z > 0 means something: the freq scorer)
    at: str  # the Architecture field naming the projection where the group is read
    reads_input: bool = True  # False: the group is output dims of `at` (the value dims of a maybe fused qkv)
    feeders: str | None = None  # the Architecture field naming the projections that produce the input (rows)
    whole_heads: bool = False  # a unit is a head's head_dim dims, not one dim

    def width(self, view: NeuronGroup) -> int:
        """Activation dims per block."""
        if self.reads_input:
            return _in_features(_get(view.blocks[0], getattr(view.arch, self.at)))
        return view.kv_heads * view.head_dim

    def add_hook(self, view: NeuronGroup, layer: int, fn, edit: bool):
        module = _get(view.blocks[layer], getattr(view.arch, self.at))
        if self.reads_input:
            return module.register_forward_pre_hook(_input_hook(fn, layer, edit))
        return module.register_forward_hook(_output_hook(fn, layer, view.output_rows(self.at), edit))

    def weights_of(self, view: NeuronGroup, layer: int,
                   dims: torch.Tensor) -> list[tuple[nn.Module, str, torch.Tensor]]:
        """(projection, side, indices) holding the given activation dims of one layer (NeuronGroup.weights_of)."""
        block = view.blocks[layer]
        if not self.reads_input:
            rows = view.output_rows(self.at)
            return [(_get(block, getattr(view.arch, self.at)), "out", dims if rows is None else rows[dims])]
        weights = [(_get(block, getattr(view.arch, self.at)), "in", dims)]
        for path in getattr(view.arch, self.feeders) if self.feeders else ():
            rows = view.rows(path.partition(":")[2] or None)
            weights.append((_get(block, path), "out", rows[dims].reshape(-1)))
        return weights


GROUP_TABLE: dict[str, Group] = {g.name: g for g in (
    Group("ff", "one feed-forward mid-layer neuron", "neurons", 1e-3, True, "ff_out", feeders="ff_in"),
    Group("attn-value", "one output dim of the value projection", "neurons", 1e-4, False, "value",
          reads_input=False),
    Group("attn-preout", "one input dim of the attention output projection", "neurons", 1e-4, False, "out"),
    Group("attn-head", "a whole attention head (head_dim pre-out dims)", "heads", 1e-4, False, "out",
          whole_heads=True),
)}
GROUPS = tuple(GROUP_TABLE)
# Groups that share units: a head is made of pre-out dims, so one budget cannot hold both.
OVERLAPPING = {frozenset(("attn-preout", "attn-head"))}


def group_parts(name: str) -> list[str]:
    """The groups of `name` ("ff" or "ff+attn-preout"), checked: known, each once, not overlapping."""
    parts = name.split("+")
    unknown = [p for p in parts if p not in GROUP_TABLE]
    if unknown:
        where = f" in {name!r}" if len(parts) > 1 else ""
        raise UserError(f"unknown group {unknown[0]!r}{where}: use one of {', '.join(GROUPS)}, or several "
                        "joined by '+', e.g. ff+attn-preout")
    if len(set(parts)) < len(parts):
        raise UserError(f"group {name!r} names a group twice: name each once")
    for pair in OVERLAPPING:
        if pair <= set(parts):
            raise UserError(f"group {name!r} joins {' and '.join(sorted(pair))}, whose units overlap (a head is "
                            "made of pre-out dims): join only one of them")
    return parts


@dataclass(frozen=True)
class Architecture:
    """Module paths relative to one block. `name:layout` marks a fused projection (see _fused_rows)."""

    layers: tuple[str, ...]  # candidate paths to the list of blocks, from the top model
    ff_in: tuple[str, ...]  # projections feeding the ff mid-layer (rows zeroed)
    ff_out: str  # down-projection: its input is the ff neuron
    value: str  # value projection, maybe fused with q and k
    out: str  # attention output projection: its input is the pre-out neuron
    # modules between the last block and the head, applied in order (a logit lens decodes every block's
    # output through them); relative to the module that holds the blocks; one that is None in a model is skipped
    final: tuple[str, ...] = ()
    masked_lm: bool = False


_LLAMA = Architecture(("model.layers", "model.language_model.layers"),
                      ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj",
                      "self_attn.v_proj", "self_attn.o_proj", ("norm",))
_BERT = dict(ff_in=("intermediate.dense",), ff_out="output.dense", value="attention.self.value",
             out="attention.output.dense", masked_lm=True)

ARCHITECTURES: dict[str, Architecture] = {
    "opt": Architecture(("model.decoder.layers",), ("fc1",), "fc2",
                        "self_attn.v_proj", "self_attn.out_proj", ("final_layer_norm", "project_out")),
    "gpt2": Architecture(("transformer.h",), ("mlp.c_fc",), "mlp.c_proj",
                         "attn.c_attn:qkv", "attn.c_proj", ("ln_f",)),
    "gpt_neox": Architecture(("gpt_neox.layers",), ("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h",
                             "attention.query_key_value:qkv_per_head", "attention.dense", ("final_layer_norm",)),
    "gptj": Architecture(("transformer.h",), ("mlp.fc_in",), "mlp.fc_out",
                         "attn.v_proj", "attn.out_proj", ("ln_f",)),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    "gemma3_text": _LLAMA,
    "gemma3": _LLAMA,
    "phi": Architecture(("model.layers",), ("mlp.fc1",), "mlp.fc2",
                        "self_attn.v_proj", "self_attn.dense", ("final_layernorm",)),
    "phi3": Architecture(("model.layers",), ("mlp.gate_up_proj:gate_up",), "mlp.down_proj",
                         "self_attn.qkv_proj:qkv", "self_attn.o_proj", ("norm",)),
    "roberta": Architecture(("roberta.encoder.layer",), **_BERT),
    "bert": Architecture(("bert.encoder.layer",), **_BERT),
}


def text_config(config):
    """Multimodal wrappers (gemma3) keep the language model's numbers in a sub-config."""
    return getattr(config, "text_config", None) or config


def architecture_of(config) -> Architecture:
    model_type = config.model_type
    if model_type not in ARCHITECTURES:
        raise UserError(
            f"unsupported architecture {model_type!r}: selprune supports "
            f"{', '.join(sorted(ARCHITECTURES))} (see `selprune list architectures`)"
        )
    return ARCHITECTURES[model_type]


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(path, list) of the model's blocks: the first of the architecture's candidate paths it has."""
    arch = architecture_of(model.config)
    for path in arch.layers:
        try:
            return path, model.get_submodule(path)
        except AttributeError:
            continue
    raise UserError(f"{model.config.model_type} model has none of {arch.layers}: "
                    "is it a base model without the language-model head?")


def decoder(model: nn.Module) -> nn.Module:
    """The module that holds a causal LM's blocks: embeddings to final norm, returning last_hidden_state.

    Not `model.base_model`: in a multimodal wrapper that can be the whole model (gemma3 on transformers
    4.56 returns the language-model output there, without the hidden states)."""
    path, _ = find_blocks(model)
    return model.get_submodule(path.rpartition(".")[0])


def _get(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path.split(":")[0])


def _input_dim(module: nn.Module) -> int:
    """The weight dim that indexes a projection's inputs: GPT-2's Conv1D stores [in, out], a Linear [out, in]."""
    return 0 if isinstance(module, Conv1D) else 1


def _in_features(module: nn.Module) -> int:
    return module.weight.shape[_input_dim(module)]


def _fused_rows(layout: str | None, n: int, heads: int, kv_heads: int, head_dim: int) -> torch.Tensor:
    """Rows of a (maybe fused) projection that belong to each of its n neurons: [n, rows per neuron]."""
    k = torch.arange(n)
    if layout is None:
        return k[:, None]
    if layout == "gate_up":  # [gate | up], each n wide
        return torch.stack([k, n + k], dim=1)
    if layout == "qkv":  # [q (heads*hd) | k (kv*hd) | v (kv*hd)]; n = kv*hd value dims
        return (heads * head_dim + kv_heads * head_dim + k)[:, None]
    if layout == "qkv_per_head":  # per head [q | k | v], head_dim each
        return (k // head_dim * 3 * head_dim + 2 * head_dim + k % head_dim)[:, None]
    raise ValueError(f"unknown fused layout {layout!r}")


class NeuronGroup:
    """One neuron group of one loaded model: read its activations, say where its weights are.

    Activations are `width` numbers per block. A unit (what is scored and pruned) is `dims_per_unit` of
    them: 1 for neurons, head_dim for whole heads; `units_per_layer` = width // dims_per_unit.
    """

    def __init__(self, model: nn.Module, group: str):
        if group not in GROUP_TABLE:
            raise UserError(f"unknown neuron group {group!r}: use one of {', '.join(GROUP_TABLE)}")
        self.model, self.group = model, group
        self.arch = architecture_of(model.config)
        cfg = text_config(model.config)
        self.blocks = find_blocks(model)[1]
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = _in_features(_get(self.blocks[0], self.arch.out)) // self.heads
        self.kind = GROUP_TABLE[group]
        self.width = self.kind.width(self)
        self.dims_per_unit = self.head_dim if self.kind.whole_heads else 1
        self.units_per_layer = self.width // self.dims_per_unit
        self.layers = len(self.blocks)

    @property
    def total_units(self) -> int:
        return self.layers * self.units_per_layer

    @property
    def parts(self) -> list[NeuronGroup]:
        """The groups scored one by one: just this one (a GroupUnion has several)."""
        return [self]

    # -- reading activations -------------------------------------------------------------------

    def rows(self, layout: str | None) -> torch.Tensor:
        """Rows of a projection with this `layout` (see _fused_rows) that belong to each unit dim: [width, rows]."""
        return _fused_rows(layout, self.width, self.heads, self.kv_heads, self.head_dim)

    def output_rows(self, field: str) -> torch.Tensor | None:
        """Output dims of the projection `field` (of Architecture) that are this group's; None when unfused."""
        layout = getattr(self.arch, field).partition(":")[2] or None
        return None if layout is None else self.rows(layout)[:, 0]

    def add_hooks(self, fn, edit: bool = False) -> list:
        """Call fn(layer, z) with z = [..., width] activations at every block; returns handles.

        With edit=True, fn returns a replacement z (used to mask activations in tests and checks).
        """
        return [self.kind.add_hook(self, layer, fn, edit) for layer in range(len(self.blocks))]

    # -- where a unit's weights are ------------------------------------------------------------

    def expand(self, units) -> torch.Tensor:
        """Activation dims covered by the given units (identity except for whole heads)."""
        units = torch.as_tensor(units, dtype=torch.long).reshape(-1)
        return (units[:, None] * self.dims_per_unit + torch.arange(self.dims_per_unit)).reshape(-1)

    def weights_of(self, layer: int, units) -> list[tuple[nn.Module, str, torch.Tensor]]:
        """(projection, side, indices) holding the given units of one layer: side "in" = the weights that
        read those dims (columns), "out" = the weights and bias entries that produce them (rows)."""
        return self.kind.weights_of(self, layer, self.expand(units))

    @torch.no_grad()
    def out_norms(self) -> torch.Tensor:
        """[layers, width] float64: the L2 norm of the weights that read each activation dim (its column in
        the projection that takes it as input; the wanda scorer). Value dims have none: attention reads them."""
        norms = torch.zeros(self.layers, self.width, dtype=torch.float64)
        for layer in range(self.layers):
            readers = [(m, dims) for m, side, dims in self.weights_of(layer, range(self.units_per_layer))
                       if side == "in"]
            if not readers:
                raise ValueError(f"no projection reads the {self.group} group's units")
            for module, dims in readers:
                columns = module.weight.double().square().sum(1 - _input_dim(module))
                norms[layer] += columns.cpu()[dims]
        return norms.sqrt()


class GroupUnion:
    """Several groups pruned in one budget: a layer's units are the first part's, then the next part's, ...

    Each part keeps its own statistics (run.py scores the parts one by one and sets the scores side by side);
    masks and records see one [layers, units_per_layer] table, and weights_of hands each unit to its part.
    """

    def __init__(self, model: nn.Module, group: str):
        self.group = group
        self.parts = [NeuronGroup(model, name) for name in group_parts(group)]
        self.layers = self.parts[0].layers
        self.units_per_layer = sum(part.units_per_layer for part in self.parts)
        self.offsets = [sum(p.units_per_layer for p in self.parts[:i]) for i in range(len(self.parts) + 1)]

    @property
    def total_units(self) -> int:
        return self.layers * self.units_per_layer

    def weights_of(self, layer: int, units) -> list[tuple[nn.Module, str, torch.Tensor]]:
        units = torch.as_tensor(units, dtype=torch.long).reshape(-1)
        weights = []
        for part, start, stop in zip(self.parts, self.offsets, self.offsets[1:]):
            mine = units[(units >= start) & (units < stop)] - start
            if len(mine):
                weights += part.weights_of(layer, mine)
        return weights


def neuron_group(model: nn.Module, group: str) -> NeuronGroup | GroupUnion:
    """The units of `group` in `model`: one group, or a union of groups joined by '+'."""
    return GroupUnion(model, group) if "+" in group else NeuronGroup(model, group)


def _input_hook(fn, layer, edit):
    def hook(module, args):
        z = args[0]
        if not edit:
            fn(layer, z)
            return None
        return (fn(layer, z),) + tuple(args[1:])
    return hook


def _output_hook(fn, layer, rows, edit):
    def hook(module, args, out):
        rows_dev = None if rows is None else rows.to(out.device)
        z = out if rows_dev is None else out.index_select(-1, rows_dev)
        if not edit:
            fn(layer, z)
            return None
        new = fn(layer, z)
        if rows_dev is None:
            return new
        out = out.clone()
        out[..., rows_dev] = new
        return out
    return hook


class ResidualStream:
    """The residual stream after every block, and the way into the head: what a logit lens reads.

    `to_head` applies the architecture's `final` modules (the final norm, and OPT's projection where it
    has one), so decoding the last block's output gives exactly what the model itself feeds its head.
    """

    def __init__(self, model: nn.Module):
        arch = architecture_of(model.config)
        if arch.masked_lm:
            raise UserError(f"{model.config.model_type} is a masked LM: reading the residual stream through the "
                            "head needs a causal LM")
        _, self.blocks = find_blocks(model)
        holder = decoder(model)
        self.final = [m for m in (_optional(holder, name) for name in arch.final) if m is not None]

    def add_hooks(self, fn) -> list:
        """Call fn(layer, hidden) with every block's output [..., hidden size]; returns handles."""
        def hook(layer):
            return lambda module, args, out: fn(layer, out[0] if isinstance(out, tuple) else out)
        return [block.register_forward_hook(hook(layer)) for layer, block in enumerate(self.blocks)]

    def to_head(self, hidden: torch.Tensor) -> torch.Tensor:
        for module in self.final:
            hidden = module(hidden)
        return hidden


def _optional(root: nn.Module, path: str) -> nn.Module | None:
    """The module at path, or None where the model sets it to None (OPT without a final norm or projection).
    A name the model lacks altogether is an error in the table, not an option."""
    for name in path.split("."):
        root = getattr(root, name)
        if root is None:
            return None
    return root
