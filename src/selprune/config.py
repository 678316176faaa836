"""One RunConfig: everything that decides a run. TOML in, TOML out (saved in every run folder).

Precedence: defaults (the paper's protocol) < preset < config file < command-line flags.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from .errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCORERS = ("abs", "freq", "rms", "std", "random")
SELECTIONS = ("global", "per-layer")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class RunConfig:
    model: str = "smollm2-135m"
    forget: str = "code"
    retain: str = "prose"
    group: str = "ff"  # ff | attn-value | attn-preout | attn-head
    scorer: str = "abs"
    steps: int = 50
    fraction: float = 0.02  # of all the group's neurons, per step
    score_tokens: int = 100_000  # per dataset
    eval_tokens: int = 100_000  # per dataset
    chunk_len: int = 512
    selection: str = "global"
    eps: float | None = None  # None: 1e-3 for ff, 1e-4 for attention groups
    eps_relative: bool = False  # eps x median retain importance, for scale-free scoring
    skip_top_tokens: int = 50  # the "skip" metrics ignore the dataset's most frequent targets
    seed: int = 0
    batch_size: int = 0  # chunks per batch; 0 = automatic
    compile: bool = True  # fuse the statistics and evaluation reductions with torch.compile (else eager)
    dtype: str = "auto"
    device: str = "auto"
    device_map: str = ""  # "auto": shard a model too large for one device with accelerate
    trust_remote_code: bool = False
    save_model: bool = False
    name: str = ""  # default: derived from the datasets, group and scorer
    output: str = ""  # default: runs/<name>

    @property
    def eps_value(self) -> float:
        if self.eps is not None:
            return self.eps
        return 1e-3 if self.group == "ff" else 1e-4

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        raw = f"{self.forget}-vs-{self.retain}-{self.group}-{self.scorer}"
        return re.sub(r"[^A-Za-z0-9._-]+", "_", raw)

    @property
    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path("runs") / self.run_name

    def validate(self) -> None:
        """Refuse settings that cannot make a meaningful run, before any expensive work."""
        from .arch import GROUPS

        if self.group not in GROUPS:
            raise UserError(f"unknown group {self.group!r}: use one of {', '.join(GROUPS)}")
        if self.scorer not in SCORERS:
            raise UserError(f"unknown scorer {self.scorer!r}: use one of {', '.join(SCORERS)}")
        if self.scorer == "freq" and self.group != "ff":
            raise UserError("the freq scorer needs an activation function, which attention neurons lack: "
                            "use --scorer abs, rms or std for attention groups")
        if self.selection not in SELECTIONS:
            raise UserError(f"unknown selection {self.selection!r}: use global or per-layer")
        if not 0 < self.fraction <= 1:
            raise UserError(f"fraction {self.fraction} is outside (0, 1]: e.g. --fraction 0.02 prunes 2% per step")
        if self.steps < 1:
            raise UserError(f"steps must be at least 1, got {self.steps}")
        if self.steps * self.fraction > 1 + 1e-9:
            raise UserError(f"{self.steps} steps x {self.fraction} = {self.steps * self.fraction:g} > 1: "
                            "there are not that many neurons; lower --steps or --fraction")
        if self.forget == self.retain:
            raise UserError(f"forget and retain are both {self.forget!r}: pruning needs two different datasets")
        for key in ("score_tokens", "eval_tokens"):
            if getattr(self, key) < 1:
                raise UserError(f"{key.replace('_', '-')} must be positive, got {getattr(self, key)}")
        if self.chunk_len < 2:
            raise UserError(f"chunk-len must be at least 2, got {self.chunk_len}")
        if self.batch_size < 0:
            raise UserError(f"batch-size must be 0 (automatic) or positive, got {self.batch_size}")
        if self.dtype not in DTYPES:
            raise UserError(f"unknown dtype {self.dtype!r}: use {', '.join(DTYPES)}")
        if self.eps is not None and self.eps <= 0:
            raise UserError(f"eps must be positive, got {self.eps}")

    # -- TOML --------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        return {k: v for k, v in data.items() if v is not None}

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, base: RunConfig | None = None) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"unknown config key(s) {', '.join(unknown)}: valid keys are {', '.join(sorted(names))}")
        return dataclasses.replace(base or cls(), **data)

    @classmethod
    def from_toml(cls, path: str | Path, base: RunConfig | None = None) -> RunConfig:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"config file {path} is not valid TOML: {exc}") from None
        return cls.from_dict(data, base)


# Presets: small named departures from the paper's protocol.
PRESETS: dict[str, dict] = {
    "paper": {"chunk_len": 1024},
    "demo": {"steps": 10, "fraction": 0.02, "score_tokens": 16_384, "eval_tokens": 16_384},
    "tiny": {"compile": False, "steps": 2, "fraction": 0.05, "score_tokens": 2_048, "eval_tokens": 1_024, "chunk_len": 256},
}


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return RunConfig.from_dict(PRESETS[name])
