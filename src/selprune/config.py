"""Settings as dataclasses that document and check themselves; RunConfig is everything that decides a run.

Each field's metadata holds its help text and choices, so the command line (cli.py) makes one flag per
field. Values from TOML files are type-checked against the annotations. TOML in, TOML out: every run
folder keeps its config.toml. Precedence: defaults (the paper's protocol) < preset < config file < flags.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from .arch import GROUP_TABLE, GROUPS, group_parts
from .data.sources import parse_spec
from .errors import UserError
from .finetune import BATCH_SIZE, CHUNK_LEN, LR, TOKENS
from .scorers import SCORERS as SCORER_TABLE
from .scorers import help_text as scorer_help

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCORERS = tuple(SCORER_TABLE)
SELECTIONS = ("global", "per-layer")
# eps of a union of groups, and of the scorers whose scale is not the activations' (attr, wanda), relative to
# the median retain importance: the default ff eps (1e-3) is about 1% of the median abs importance of
# SmolLM2-135M's ff neurons on prose (0.107), so these keep it
RELATIVE_EPS = 1e-2
DTYPES = ("auto", "float32", "bfloat16", "float16")
TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def flag(key: str) -> str:
    """The command-line flag of a RunConfig field: --chunk-len for chunk_len."""
    return "--" + key.replace("_", "-")


def setting(default, text: str, choices: tuple[str, ...] | None = None):
    """A field that documents itself: the command line shows `text` as its help and offers `choices`."""
    return dataclasses.field(default=default, metadata={"help": text, "choices": choices})


def safe_name(raw: str) -> str:
    """raw with every run of characters that are unsafe in a folder name replaced by one '_'; a filter's '!='
    becomes '_not_', so that code#lang!=python and code#lang=python stay apart."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw.replace("!=", " not "))


class Settings:
    """Shared by the settings dataclasses: typed construction from dicts and TOML, and TOML out."""

    @classmethod
    def field_types(cls) -> dict[str, tuple[type, ...]]:
        """Each field's accepted types, from its annotation: (int,) for steps, (float, NoneType) for eps,
        (tuple, float) for a tuple[float, ...] of several values."""
        names = {f.name for f in dataclasses.fields(cls)}
        return {key: (tuple, typing.get_args(hint)[0]) if typing.get_origin(hint) is tuple
                else typing.get_args(hint) or (hint,)
                for key, hint in typing.get_type_hints(cls).items() if key in names}

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
                if v is not None}

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, base=None, source: str = "settings"):
        """base (or the defaults) with data's settings; `source` names where data came from, for messages."""
        types = cls.field_types()
        unknown = sorted(set(data) - set(types))
        if unknown:
            raise UserError(f"{source}: unknown key(s) {', '.join(unknown)}: valid keys are "
                            f"{', '.join(sorted(types))}")
        checked = {key: _typed(key, value, types[key], source) for key, value in data.items()}
        return dataclasses.replace(base or cls(), **checked)

    @classmethod
    def from_toml(cls, path: str | Path, base=None):
        data = read_toml(path, "config file", "such as a run folder's config.toml")
        return cls.from_dict(data, base, source=f"config file {path}")

    def check_at_least(self, minimum: int, *keys: str) -> None:
        for key in keys:
            if getattr(self, key) < minimum:
                raise UserError(f"{flag(key)} must be at least {minimum}, got {getattr(self, key)}")

    def check_finite(self) -> None:
        """Every float setting, alone or in a tuple (relearn's --lr), is a finite number."""
        for key, value in dataclasses.asdict(self).items():
            for number in value if isinstance(value, tuple) else (value,):
                if isinstance(number, float) and not math.isfinite(number):
                    raise UserError(f"{flag(key)} is {number}: give a finite number")


@dataclass
class RunConfig(Settings):
    model: str = setting("smollm2-135m", "alias, Hugging Face id, local folder or .gguf")
    forget: str = setting("code", "dataset to forget: built-in name, file, folder[/glob], .jsonl or "
                           "hf:NAME[:CONFIG][:SPLIT]")
    retain: str = setting("prose", "dataset to retain, in the same forms as --forget")
    group: str = setting("ff", f"which units to prune: {', '.join(GROUPS)}, or several joined by '+' (e.g. "
                         "ff+attn-preout) to rank them in one budget")
    scorer: str = setting("abs", scorer_help(), SCORERS)
    steps: int = setting(50, "pruning steps")
    fraction: float = setting(0.02, "fraction of all the group's units pruned per step")
    max_retain_drop: float | None = setting(None, "stop the run when a step's retain top-1 drop (percent of "
                                            "the unpruned accuracy) exceeds this; the run's result, and the "
                                            "model --save-model saves, is the step before")
    target_forget_drop: float | None = setting(None, "stop the run at the first step whose forget top-1 drop "
                                               "(percent of the unpruned accuracy) reaches this")
    score_tokens: int = setting(100_000, "scoring tokens per dataset; with --adaptive-scoring, the most a step reads")
    adaptive_scoring: bool = setting(False, "score each step on as few of the --score-tokens as its selection "
                                     "needs: collect the statistics in blocks and stop once the selection has "
                                     "settled (docs/METHOD.md, \"Adaptive scoring\"); metrics.csv's score_tokens "
                                     "says how many each step read")
    eval_tokens: int = setting(100_000, "evaluation tokens per dataset; with --eval-precision, the most one reads")
    eval_precision: float = setting(0.0, "evaluate each dataset only until its top-1 is known to this standard error, "
                                    "in points (e.g. 0.5), estimated across chunks: the unpruned model decides how "
                                    "many chunks, and every step reads as many (docs/METHOD.md, \"Evaluation to a "
                                    "stated precision\"); 0: all --eval-tokens")
    chunk_len: int = setting(512, "tokens per chunk")
    watch: tuple[str, ...] = setting((), "more datasets to evaluate at every step, neither forgotten nor "
                                     "retained, to see what else the pruning damages")
    selection: str = setting("global", "rank units across all layers (global), or prune the same "
                              "fraction in every layer", SELECTIONS)
    eps: float | None = setting(None, "score = I(forget) / (I(retain) + eps); default 1e-3 for ff, "
                                 "1e-4 for attention groups, and 1e-2 relative (see --eps-relative) for a union "
                                 "of groups and for the attr and wanda scorers")
    eps_relative: bool = setting(False, "eps is a multiple of the median retain importance, which makes "
                                  "the score independent of the importance's scale")
    skip_top_tokens: int = setting(50, "the skip metrics ignore this many of the dataset's most frequent targets")
    harden: int = setting(0, "resist relearning: before scoring each pruning step from the second on, fine-tune "
                          "a throwaway copy of the model for this many steps on forget data (selprune relearn's "
                          "forget attack, on documents that attack does not use) and score the units on the "
                          "attacked copy, so that the units the attack recruits are pruned too; the model itself "
                          "is never trained. Memory: the copy is a second model, trained in float32 with AdamW "
                          "(about 16 bytes a parameter more, plus a training batch's activations). 0: off")
    harden_lr: float = setting(LR, "learning rate of --harden's attack (AdamW, no weight decay)")
    harden_batch_size: int = setting(BATCH_SIZE, "chunks per fine-tuning step of --harden's attack")
    harden_chunk_len: int = setting(CHUNK_LEN, "tokens per chunk of --harden's attack data")
    harden_tokens: int = setting(TOKENS, "tokens of --harden's attack data, from forget documents that scoring, "
                                 "evaluation and the --harden-holdout never see")
    harden_holdout: int = setting(TOKENS, "forget tokens kept out of --harden's data, the first after scoring "
                                  "and evaluation: the data of selprune relearn's forget attack (up to its "
                                  "--relearn-tokens, same default), so that attack finds the capability with "
                                  "text the hardening never trained on")
    heal: int = setting(0, "heal between pruning steps: after each step, fine-tune the model for this many steps "
                        "on the retain dataset's scoring chunks with every pruned unit held at exactly zero, so "
                        "the retain damage is repaired before the next step is scored and evaluated. Memory: a "
                        "float32 copy of the model with AdamW (about 16 bytes a parameter more); disk: the "
                        "healed float32 weights of the last and the kept step in RUN/healed/. 0: off")
    heal_lr: float = setting(LR, "learning rate of --heal's fine-tuning (AdamW, no weight decay)")
    heal_batch_size: int = setting(BATCH_SIZE, "chunks (of --chunk-len tokens) per fine-tuning step of --heal")
    seed: int = setting(0, "seed for the splits, the masking, the random scorer, --harden's attack and --heal's "
                        "batches")
    batch_size: int = setting(0, "chunks per batch; 0 = automatic")
    compile: bool = setting(True, "fuse the statistics and the evaluation's rank counts with torch.compile; "
                             "off: eager PyTorch, with no time spent compiling")
    dtype: str = setting("auto", "auto = bfloat16 where the hardware computes it natively, else float32", DTYPES)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    device_map: str = setting("", "auto: shard a model too large for one device (accelerate)")
    trust_remote_code: bool = setting(False, "allow model code from the hub")
    save_model: bool = setting(False, "save the pruned model (Hugging Face format) in RUN/model")
    name: str = setting("", "run name, a plain folder name (default: from the datasets, group and scorer)")
    output: str = setting("", "run folder (default: runs/NAME)")

    @property
    def eps_value(self) -> float:
        if self.eps is not None:
            return self.eps
        if "+" in self.group or SCORER_TABLE[self.scorer].relative_eps:
            return RELATIVE_EPS
        return GROUP_TABLE[self.group].eps

    @property
    def relative_eps(self) -> bool:
        """A union of groups compares scores across them: each part's eps scales with its own retain median.
        So does the eps of a scorer whose importance is not in the activations' units (scorers.py)."""
        return self.eps_relative or "+" in self.group or SCORER_TABLE[self.scorer].relative_eps

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        hardened = f"-harden{self.harden}" if self.harden else ""  # apart from the plain run of the same pair
        healed = f"-heal{self.heal}" if self.heal else ""
        return safe_name(f"{self.forget}-vs-{self.retain}-{self.group}-{self.scorer}{hardened}{healed}")

    @property
    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path("runs") / self.run_name

    def validate(self) -> None:
        """Refuse settings that cannot make a meaningful run, before any expensive work."""
        self.check_finite()
        parts = group_parts(self.group)
        if self.scorer not in SCORER_TABLE:
            raise UserError(f"unknown scorer {self.scorer!r}: use one of {', '.join(SCORER_TABLE)}")
        if not set(parts) <= set(SCORER_TABLE[self.scorer].groups):
            raise UserError(SCORER_TABLE[self.scorer].refusal)
        if self.selection not in SELECTIONS:
            raise UserError(f"unknown selection {self.selection!r}: use global or per-layer")
        if not 0 < self.fraction <= 1:
            raise UserError(f"fraction {self.fraction} is outside (0, 1]: e.g. --fraction 0.02 prunes 2% per step")
        self.check_at_least(1, "steps", "score_tokens", "eval_tokens")
        self.check_at_least(2, "chunk_len", "harden_chunk_len")
        self.check_at_least(0, "harden", "heal", "harden_holdout")
        self.check_at_least(1, "harden_batch_size", "harden_tokens", "heal_batch_size")
        for option in ("harden", "heal"):
            self._check_fine_tuning(option)
        if self.harden:
            self._check_harden()
        if self.adaptive_scoring and not SCORER_TABLE[self.scorer].sums:
            raise UserError(f"--adaptive-scoring reads the statistics in blocks until the selection settles, and the "
                            f"{self.scorer} scorer reads none: drop --adaptive-scoring, or use another --scorer")
        if self.eval_precision < 0:
            raise UserError(f"--eval-precision {self.eval_precision:g} is negative: give the standard error of top-1 "
                            "to evaluate to, in points (e.g. 0.5), or 0 to read all --eval-tokens")
        if self.steps * self.fraction > 1 + 1e-9:
            raise UserError(f"{self.steps} steps x {self.fraction} = {self.steps * self.fraction:g} > 1: "
                            "there are not that many neurons; lower --steps or --fraction")
        for key in ("max_retain_drop", "target_forget_drop"):
            value = getattr(self, key)
            if value is not None and not 0 < value <= 100:
                raise UserError(f"{flag(key)} {value:g} is outside (0, 100]: it is a drop in percent of the "
                                "unpruned accuracy, e.g. 10")
        for spec in (self.forget, self.retain, *self.watch):
            parse_spec(spec)  # a malformed filter is refused before any data or model is loaded
        if self.forget == self.retain:
            raise UserError(f"forget and retain are both {self.forget!r}: pruning needs two different datasets")
        for spec in self.watch:
            if spec in (self.forget, self.retain) or self.watch.count(spec) > 1:
                raise UserError(f"--watch {spec!r} is already the forget or retain dataset, or watched twice: "
                                "watch other datasets")
        if self.batch_size < 0:
            raise UserError(f"batch-size must be 0 (automatic) or positive, got {self.batch_size}")
        if self.dtype not in DTYPES:
            raise UserError(f"unknown dtype {self.dtype!r}: use {', '.join(DTYPES)}")
        if self.eps is not None and self.eps <= 0:
            raise UserError(f"eps must be positive, got {self.eps}")
        if self.skip_top_tokens < 0:
            raise UserError(f"skip-top-tokens must be 0 (skip nothing) or positive, got {self.skip_top_tokens}")
        if self.name and not _is_plain_folder_name(self.name):
            raise UserError(f"--name {self.name!r} is not a plain folder name: use letters, digits, '-', '_' and "
                            "'.', without '/', '\\', '..' or a leading '.' (the run goes to runs/NAME)")

    def _check_harden(self) -> None:
        """--harden changes what scoring measures, from step 2 on: refuse runs where it would change nothing."""
        if self.steps < 2:
            raise UserError("--harden attacks the model before pruning steps 2 and later (before step 1 nothing is "
                            "pruned yet), so a 1-step run would not change: use --steps 2 or more, or drop --harden")
        if not SCORER_TABLE[self.scorer].sums:
            raise UserError(f"--harden changes the activations that scores rest on, and the {self.scorer} scorer "
                            "uses none: drop --harden, or use another --scorer")

    def _check_fine_tuning(self, option: str) -> None:
        """--harden or --heal (`option`), which fine-tune a float32 copy of the model: a positive learning rate,
        given only with the option, and no --device-map. A masked LM is refused once the model is loaded (run.py)."""
        lr = getattr(self, f"{option}_lr")
        if lr <= 0:
            raise UserError(f"--{option}-lr must be positive, got {lr}")
        if not getattr(self, option) and lr != LR:
            raise UserError(f"--{option}-lr {lr:g} is the learning rate of --{option}'s fine-tuning, and --{option} "
                            f"is off: give --{option} K too, or drop --{option}-lr")
        if getattr(self, option) and self.device_map:
            raise UserError(f"--{option} trains a float32 copy of the whole model on one device, which --device-map "
                            "cannot shard: drop one of the two")


def read_toml(path: str | Path, what: str, example: str) -> dict:
    """A TOML file's tables, or one line that says what is wrong with it; `what` names the file in that line
    ("config file"), `example` says which file to give instead of a folder."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder: give a TOML file, {example}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist: check the path") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#x}): "
                        "save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{what} {path} is not valid TOML: {exc}") from None


def _typed(key: str, value, types: tuple[type, ...], source: str):
    """value, if the field `key` accepts its type. An int is also a number (fraction = 1 means 1.0), but a bool
    is not an integer, though Python says it is: `steps = true` is a mistake."""
    if types[0] is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{source}: {key} = {json.dumps(value, default=str)} should be a list of "
                            f"{TYPE_NAMES[types[1]].split(' ', 1)[1]}s")
        return tuple(_typed(key, item, (types[1],), source) for item in value)
    if float in types and type(value) is int:
        return float(value)
    if isinstance(value, types) and (bool in types or not isinstance(value, bool)):
        return value
    expected = " or ".join(TYPE_NAMES[t] for t in types if t in TYPE_NAMES)
    raise UserError(f"{source}: {key} = {json.dumps(value, default=str)} should be {expected}")


def _is_plain_folder_name(name: str) -> bool:
    """True if `name` names one folder inside its parent: not a path, not hidden, not '..', not blank."""
    return bool(name.strip()) and not any(part in name for part in ("/", "\\", "..")) and not name.startswith(".")


# Presets: small named departures from the paper's protocol.
PRESETS: dict[str, dict] = {
    "paper": {"chunk_len": 1024},
    "demo": {"steps": 10, "fraction": 0.02, "score_tokens": 16_384, "eval_tokens": 16_384},
    "tiny": {"compile": False, "steps": 2, "fraction": 0.05, "score_tokens": 2_048, "eval_tokens": 1_024, "chunk_len": 256},
}


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return RunConfig.from_dict(PRESETS[name], source=f"preset {name}")
