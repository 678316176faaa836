"""The grid file of `selprune sweep`: the runs it makes and the comparisons it asks for, every run's settings
checked before anything runs.

A grid file (sweeps/paper.toml holds the seed paper's experiments):

    [settings]             # any setting of a run or an unlearning, shared by every run that has it
    steps = 8
    [grid]                 # lists: every combination of their values is one run
    pairs = [["code", "prose"], ["python", "code"]]    # forget and retain, together
    seed = [0, 1]                                       # any setting's key
    variants = [{group = "ff", scorer = "abs"}, {group = "attn-value", scorer = "abs"},   # listed, not a product
                {method = "npo", lr = [1e-5, 3e-5], steps = 80}]    # with a method: an unlearning
    [[compare]]            # an overlay report of the runs these variants select, for each pair and seed
    name = "groups"
    variants = [{group = "ff"}, {group = "attn-value"}, {method = "npo"}]

A variant with a `method` is an unlearning (selprune unlearn, UnlearnConfig), the others are pruning runs
(selprune run, RunConfig); a variant refuses the other kind's settings. [settings] and the [grid] lists give
each run the settings its kind has, so an unlearning shares the pruning runs' data settings (the same text)
and ignores, say, their fraction. Each run's folder is named from its pair and the grid's values of the
settings its kind has (code-vs-prose-seed0-ff-abs, code-vs-prose-seed0-npo-lr1e-05_3e-05-steps80).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig, flag, read_toml, safe_name
from ..errors import UserError
from ..rundir import RunFolder
from ..unlearn.methods import METHODS
from ..unlearn.settings import UnlearnConfig

SECTIONS = ("compare", "grid", "settings")
COMPARE_KEYS = ("name", "variants")
GRID_LISTS = ("pairs", "variants")  # the [grid] keys that are not settings
BY_THE_SWEEP = ("name", "output")  # each run's folder is the sweep's to choose
KINDS = {RunConfig: "pruning runs", UnlearnConfig: "unlearnings"}  # an unlearning is a variant with a method


@dataclass
class Planned:
    """One run of the grid: its folder's name, its settings, and the values of the grid's keys that made it."""

    name: str
    config: RunConfig | UnlearnConfig
    values: dict  # only the keys that name runs of its kind

    @property
    def unlearning(self) -> bool:
        return isinstance(self.config, UnlearnConfig)

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.config.output_dir)

    @property
    def pair(self) -> str:
        return run_name(self.config, ())

    @property
    def label(self) -> str:
        """The run within its pair, for tables: "ff abs"."""
        return " ".join(_part(key, value) for key, value in self.values.items()) or "run"


@dataclass
class Compare:
    """A [[compare]]: the runs its variants select are overlaid in one report for each pair."""

    name: str
    selectors: list[dict]

    def groups(self, runs: list[Planned], keys: list[str]) -> dict[str, list[Planned]]:
        """{pair, with the values of the other keys that every run has and that vary (seed0): the runs to
        overlay, selector by selector}."""
        named = {key for selector in self.selectors for key in selector}
        rest = [key for key in keys if key not in named and all(key in run.values for run in runs)
                and len({run.values[key] for run in runs}) > 1]
        groups: dict[str, list[Planned]] = {}
        for selector in self.selectors:
            for run in runs:
                if _matches(run, selector):
                    group = groups.setdefault(run_name(run.config, rest), [])
                    if run not in group:
                        group.append(run)
        return groups


@dataclass
class Sweep:
    grid: Path
    folder: Path
    keys: list[str]  # the grid's keys that name runs (forget and retain name every run), in the file's order
    runs: list[Planned]
    compares: list[Compare]

    @property
    def name(self) -> str:
        """What the markers of a results file call this sweep: the grid file's name."""
        return self.grid.stem

    def pairs(self) -> dict[str, list[Planned]]:
        pairs: dict[str, list[Planned]] = {}
        for run in self.runs:
            pairs.setdefault(run.pair, []).append(run)
        return pairs

    def comparisons(self) -> dict[str, dict[str, list[Planned]]]:
        """{pair (with the values no selector names): {comparison: the runs to overlay}}, in the file's order."""
        out: dict[str, dict[str, list[Planned]]] = {}
        for compare in self.compares:
            for group, runs in compare.groups(self.runs, self.keys).items():
                out.setdefault(group, {})[compare.name] = runs
        return out


def run_name(config: RunConfig, keys) -> str:
    """A run's folder name: its pair, then its values of `keys` (code-vs-prose-ff-abs)."""
    parts = [f"{config.forget}-vs-{config.retain}", *(_part(key, getattr(config, key)) for key in keys)]
    return safe_name("-".join(parts))


def _part(key: str, value) -> str:
    """A value in a run's name: a word as it is (ff), a number or switch with its key (seed1, no-compile)."""
    word = flag(key)[2:]
    if value is None:
        return f"{word}-default"
    if isinstance(value, bool):
        return word if value else f"no-{word}"
    if isinstance(value, (int, float)):
        return f"{word}{value!r}"
    if isinstance(value, tuple):
        return f"{word}-{'+'.join(map(str, value)) or 'none'}"
    return value


def load(grid, output=None) -> Sweep:
    """The sweep a grid file describes, every run's settings checked (RunConfig.validate): nothing is run."""
    path = Path(grid)
    where = f"grid file {path}"
    data = read_toml(path, "grid file", "such as sweeps/paper.toml")
    _known(data, SECTIONS, where)
    settings, grid_lists, entries = data.get("settings", {}), data.get("grid", {}), data.get("compare", [])
    if not (isinstance(settings, dict) and isinstance(grid_lists, dict)):
        raise UserError(f"{where}: settings and grid should be tables, [settings] and [grid]")
    if not (isinstance(entries, list) and all(isinstance(entry, dict) for entry in entries)):
        raise UserError(f"{where}: compare should be tables, each headed [[compare]]")
    if "method" in settings:
        raise UserError(f'{where} [settings]: method makes a variant an unlearning, so it goes in a variant: '
                        '[grid] variants = [{method = "npo"}]')
    shared = _typed(settings, f"{where} [settings]")
    bases = {kind: kind.from_dict({k: v for k, v in shared.items() if k in kind.field_types()}) for kind in KINDS}
    axes, keys, by_kind = _axes(grid_lists, f"{where} [grid]")
    if not axes:
        raise UserError(f"{where} names no run: give [grid] lists, e.g. pairs = [[\"code\", \"prose\"]] (sweeps/"
                        "paper.toml shows the format)")
    folder = Path(output) if output else Path("runs", "sweeps", path.stem)
    runs: list[Planned] = []
    for combination in itertools.product(*axes):
        values = {k: v for point in combination for k, v in point.items()}
        kind = UnlearnConfig if "method" in values else RunConfig
        given = {k: v for k, v in values.items() if k in kind.field_types()}
        config = dataclasses.replace(bases[kind], **given)
        name = run_name(config, by_kind[kind])
        config = dataclasses.replace(config, output=str(folder / name))
        if len(given) < len(values) and any(run.config == config for run in runs):
            continue  # a list of the other kind's setting repeats this run, which does not have it
        try:
            config.validate()
        except UserError as exc:
            raise UserError(f"{where}: run {name}: {exc}") from None
        runs.append(Planned(name, config, {key: getattr(config, key) for key in by_kind[kind]}))
    twice = [name for name, count in Counter(run.name for run in runs).items() if count > 1]
    if twice:
        raise UserError(f"{where}: several runs would share the folder {twice[0]}: give them different values")
    _all_used(shared, grid_lists, {type(run.config) for run in runs}, where)
    return Sweep(path, folder, keys, runs, _compares(entries, runs, keys, where))


def _all_used(shared: dict, grid_lists: dict, kinds: set, where: str) -> None:
    """Refuse a setting that no run of the grid has: an unlearning's in a grid of pruning runs, or the reverse."""
    for key in [*shared, *(key for key in grid_lists if key not in GRID_LISTS)]:
        if not any(key in kind.field_types() for kind in kinds):
            owner = next(name for kind, name in KINDS.items() if key in kind.field_types())
            raise UserError(f"{where}: {key} is a setting of {owner}, and the grid makes none: drop it, or add a "
                            "variant of that kind")


def _known(data: dict, valid, where: str) -> None:
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}: valid keys are {', '.join(valid)}")


def _toml(value) -> str:
    return json.dumps(value, default=str)


def _typed(values: dict, where: str, kind=None) -> dict:
    """values, type-checked as the settings of `kind`, or of the kind that has each key (a pruning run's, else
    an unlearning's); a whole number where a number goes becomes a float."""
    taken = sorted(set(values) & set(BY_THE_SWEEP))
    if taken:
        raise UserError(f"{where}: {', '.join(taken)} cannot be set in a grid file: the sweep names each run's "
                        "folder after its settings (give the sweep's folder with --output)")
    typed = {}
    for key, value in values.items():
        owner = kind or next((k for k in KINDS if key in k.field_types()), RunConfig)  # none: RunConfig says so
        if key not in owner.field_types() and any(key in k.field_types() for k in KINDS):
            raise UserError(f"{where}: {_other_kind(key, owner)}")
        typed[key] = getattr(owner.from_dict({key: value}, source=where), key)
    return typed


def _other_kind(key: str, kind) -> str:
    """Why a variant of one kind cannot have this setting of the other."""
    if kind is UnlearnConfig:
        return (f"{key} is a setting of pruning runs, not of an unlearning (a variant with a method): drop it from "
                "this variant, or give it in a variant without method")
    return (f"{key} is a setting of unlearnings: add a method (method = \"npo\", or {', '.join(METHODS)}) to make "
            f"this variant an unlearning, or drop {key}")


def _axes(grid: dict, where: str) -> tuple[list[list[dict]], list[str], dict]:
    """Each of the grid's lists as the settings its values give, the keys that name runs, and those that name
    the runs of each kind: the lists' keys that the kind has, and the keys of its variants."""
    settings = {key for kind in KINDS for key in kind.field_types()}
    axes, given_by, by_kind = [], {}, {kind: set() for kind in KINDS}
    for key, values in grid.items():
        if key not in GRID_LISTS and key not in settings:
            raise UserError(f"{where}: unknown key {key}: use pairs, variants or a setting's key "
                            f"({', '.join(sorted(settings))})")
        if key == "method":
            raise UserError(f'{where}: method cannot be a list: give each unlearning as a variant, e.g. variants = '
                            '[{method = "npo"}, {method = "ga"}]')
        if not isinstance(values, list):
            raise UserError(f"{where}: {key} = {_toml(values)} should be a list of values, e.g. "
                            f"{key} = [{_toml(values)}]")
        if not values:
            raise UserError(f"{where}: {key} is an empty list: give at least one value, or leave {key} out")
        if key == "pairs":
            points = [_pair(value, where) for value in values]
        elif key == "variants":
            points = [_variant(value, where) for value in values]
        else:
            points = [_typed({key: value}, where) for value in values]
        for point in points:
            for kind in KINDS:
                if key != "variants" or (kind is UnlearnConfig) == ("method" in point):
                    by_kind[kind] |= {k for k in point if k in kind.field_types()}
        for setting in dict.fromkeys(k for point in points for k in point):
            if setting in given_by:
                raise UserError(f"{where}: {setting} is given by both {given_by[setting]} and {key}: give it in "
                                "one place")
            given_by[setting] = key
        axes.append(points)
    keys = [key for key in given_by if key not in ("forget", "retain")]
    return axes, keys, {kind: [key for key in keys if key in named] for kind, named in by_kind.items()}


def _pair(value, where: str) -> dict:
    if not (isinstance(value, list) and len(value) == 2):
        raise UserError(f'{where}: pairs: {_toml(value)} should be [forget, retain], e.g. ["code", "prose"]')
    return _typed({"forget": value[0], "retain": value[1]}, f"{where} pairs")


def _variant(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f'{where}: variants: {_toml(value)} should be a table of settings, e.g. '
                        '{group = "ff", scorer = "abs"}')
    return _typed(value, f"{where} variants", UnlearnConfig if "method" in value else RunConfig)


def _matches(run: Planned, selector: dict) -> bool:
    return all(key in run.values and run.values[key] == value for key, value in selector.items())


def _compares(entries: list[dict], runs: list[Planned], keys: list[str], where: str) -> list[Compare]:
    compares: list[Compare] = []
    for entry in entries:
        _known(entry, COMPARE_KEYS, f"{where} [[compare]]")
        name, selectors = entry.get("name"), entry.get("variants")
        if not isinstance(name, str) or not name or safe_name(name) != name or name.startswith("."):
            raise UserError(f"{where} [[compare]]: name = {_toml(name)} should be a plain folder name: letters, "
                            "digits, '-', '_' and '.'")
        if any(compare.name == name for compare in compares):
            raise UserError(f"{where}: two [[compare]] are named {name}: give each its own name")
        here = f"{where} [[compare]] {name}"
        if not (isinstance(selectors, list) and selectors and all(isinstance(s, dict) and s for s in selectors)):
            raise UserError(f'{here}: variants should be a list of tables that select runs, e.g. '
                            '[{scorer = "abs"}, {scorer = "random"}]')
        typed = []
        for selector in selectors:
            other = sorted(set(selector) - set(keys))
            if other:
                raise UserError(f"{here}: {', '.join(other)} is not a key the grid varies (it varies "
                                f"{', '.join(keys) or 'nothing but the pairs'})")
            typed.append(_typed(selector, here))
            if not any(_matches(run, typed[-1]) for run in runs):
                described = ", ".join(f"{key} = {_toml(value)}" for key, value in selector.items())
                raise UserError(f"{here}: no run of the grid has {described}: compare variants the grid makes")
        compares.append(Compare(name, typed))
    return compares
