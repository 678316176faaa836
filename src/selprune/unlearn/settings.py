"""UnlearnConfig: everything that decides an unlearning, in the shape of a run's settings.

The data settings have a pruning run's names and defaults (chunk_len, score_tokens, eval_tokens, seed, ...), so
that an unlearning with the same values trains on the run's scoring split and is judged on its evaluation split.
Its config.toml is told apart from a run's by the `method` key (rundir.RunFolder.read_config).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig, Settings, flag, safe_name, setting
from ..data.sources import parse_spec
from ..errors import UserError
from .methods import METHODS, UNDO_NOISE_SCALE, WMDP_DEPTH, WMDP_LAYER

RUN = RunConfig()  # the data settings' defaults are a run's


@dataclass
class UnlearnConfig(Settings):
    model: str = setting(RUN.model, "alias, Hugging Face id, local folder or .gguf")
    forget: str = setting(RUN.forget, "dataset to forget (its scoring split is trained on), in the forms of "
                          "selprune run --forget")
    retain: str = setting(RUN.retain, "dataset to retain: evaluated at every checkpoint, and trained on by the "
                          "methods with a retain term")
    method: str = setting("npo", "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()), tuple(METHODS))
    lr: tuple[float, ...] = setting((), "learning rates, each trained on its own (RUN/lr-LR/); the folder keeps the "
                                    "one that forgets most within the retain budget (default: the method's "
                                    "reference value, 1e-5 for ga, graddiff and npo, 5e-5 for rmu)")
    steps: int = setting(80, "optimiser steps (AdamW, no weight decay); the WMDP code's 80 batches")
    eval_every: int = setting(10, "evaluate forget and retain, and save a checkpoint, every this many steps")
    batch_size: int = setting(4, "chunks of --chunk-len tokens per step, from each of forget and retain")
    max_retain_drop: float | None = setting(None, "keep the last checkpoint whose retain top-1 drop (percent of "
                                            "the original accuracy) is within this, and stop after the first "
                                            "past it")
    match: str = setting("", "RUN[:STEP]: a pruning run of the same model and data; the retain budget is its retain "
                         "drop at STEP (default its kept step), and the kept checkpoint is the one within it that "
                         "forgets most")
    from_run: str = setting("", "RUN[:STEP] (also --from): start from a finished pruning run's model after STEP "
                            "(default its kept step) instead of the original; its pruned units stay exactly zero, "
                            "and drops stay relative to the original model's accuracy")
    noise: float = setting(0.3, "distill: the student starts as (1 - NOISE) x the teacher's weights + NOISE x a fresh "
                           "initialisation (UNDO's alpha; 0: the teacher itself, 1: a fresh model)")
    noise_scale: float = setting(UNDO_NOISE_SCALE, "distill: the fresh initialisation is Xavier-uniform matrices "
                                 "times this, and zero vectors (UNDO's beta)")
    distill_data: str = setting("", "distill: more text, in the forms of --forget, whose scoring split is distilled "
                                "on beside the retain data's (a batch of each a step)")
    distill_tokens: int = setting(0, "distill: training tokens in all, retain and --distill-data together; it sets "
                                  "the steps in place of --steps (0: --steps steps)")
    npo_beta: float = setting(0.1, "NPO's inverse temperature beta (OpenUnlearning's default)")
    retain_weight: float = setting(1.0, "weight of the retain loss in graddiff and npo (OpenUnlearning's alpha)")
    rmu_layer: int | None = setting(None, "RMU's layer (from 0); default: the WMDP code's layer "
                                    f"{WMDP_LAYER} of {WMDP_DEPTH}, scaled to the model's depth")
    rmu_layers: int = setting(3, "RMU trains the MLP down-projections of this many layers ending at its layer "
                              "(the WMDP code's 5, 6, 7)")
    rmu_coefficient: float = setting(20.0, "length of RMU's random target direction (the WMDP code's steering "
                                     "coefficient; it published 6.5 for Zephyr-7B)")
    rmu_alpha: float = setting(100.0, "weight of RMU's retain term (the WMDP code's alpha; 1200 for Zephyr-7B)")
    score_tokens: int = setting(RUN.score_tokens, "training tokens per dataset: a pruning run's scoring split")
    eval_tokens: int = setting(RUN.eval_tokens, "evaluation tokens per dataset: a pruning run's evaluation split")
    chunk_len: int = setting(RUN.chunk_len, "tokens per chunk")
    skip_top_tokens: int = setting(RUN.skip_top_tokens, "the skip metrics ignore this many of the dataset's most "
                                   "frequent targets")
    seed: int = setting(RUN.seed, "seed for the splits, the batch order and RMU's direction")
    compile: bool = setting(RUN.compile, "fuse the evaluation's rank counts with torch.compile")
    dtype: str = setting(RUN.dtype, "auto: float32 weights trained with bfloat16 compute, and evaluated in "
                         "bfloat16, where the hardware computes it natively; else float32", ("auto", "float32"))
    device: str = setting(RUN.device, "auto, cpu, cuda or cuda:N")
    trust_remote_code: bool = setting(False, "allow model code from the hub")
    name: str = setting("", "folder name (default: from the datasets and the method)")
    output: str = setting("", "unlearning folder (default: runs/NAME)")

    @property
    def learning_rates(self) -> tuple[float, ...]:
        return self.lr or (METHODS[self.method].lr,)

    @property
    def total_steps(self) -> int:
        """Optimiser steps: --steps, or as many as --distill-tokens takes."""
        if not self.distill_tokens:
            return self.steps
        per_step = self.batch_size * self.chunk_len * (2 if self.distill_data else 1)
        return -(-self.distill_tokens // per_step)

    @property
    def run_name(self) -> str:
        return self.name or safe_name(f"{self.forget}-vs-{self.retain}-unlearn-{self.method}")

    @property
    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path("runs") / self.run_name

    def validate(self) -> None:
        """Refuse what cannot make a meaningful unlearning, before anything is loaded or written."""
        self.check_finite()
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        if any(lr <= 0 for lr in self.learning_rates):
            raise UserError(f"--lr {' '.join(map(str, self.learning_rates))}: learning rates must be positive, "
                            "e.g. 1e-5")
        if len(set(self.learning_rates)) < len(self.learning_rates):
            raise UserError("a learning rate is given twice in --lr")
        self.check_at_least(1, "steps", "eval_every", "batch_size", "score_tokens", "eval_tokens", "rmu_layers")
        self.check_at_least(2, "chunk_len")
        self.check_at_least(0, "skip_top_tokens")
        for key in ("npo_beta", "rmu_coefficient"):
            if getattr(self, key) <= 0:
                raise UserError(f"{flag(key)} must be positive, got {getattr(self, key)}")
        for key in ("retain_weight", "rmu_alpha"):
            if getattr(self, key) < 0:
                raise UserError(f"{flag(key)} must be 0 or more, got {getattr(self, key)}")
        if self.rmu_layer is not None and self.rmu_layer < 0:
            raise UserError(f"--rmu-layer must be a layer number from 0, got {self.rmu_layer}")
        if not self.retain:
            what = "trains on" if METHODS[self.method].retain else "evaluates at every checkpoint"
            raise UserError(f"--method {self.method} {what} --retain data: give --retain")
        for spec in (self.forget, self.retain):
            parse_spec(spec)
        if self.forget == self.retain:
            raise UserError(f"forget and retain are both {self.forget!r}: unlearning needs two different datasets")
        self._check_distill()
        if self.max_retain_drop is not None and not 0 < self.max_retain_drop <= 100:
            raise UserError(f"--max-retain-drop {self.max_retain_drop:g} is outside (0, 100]: it is a drop in percent "
                            "of the original accuracy, e.g. 10")
        if self.max_retain_drop is not None and self.match:
            raise UserError("--match sets the retain budget from a pruning run: give it or --max-retain-drop, not both")
        if self.dtype not in ("auto", "float32"):
            raise UserError(f"--dtype {self.dtype!r}: unlearning trains float32 weights; use auto or float32")
        if self.from_run and ":" in self.from_run and not self.from_run.rpartition(":")[2].isdigit():
            raise UserError(f"--from {self.from_run}: give RUN or RUN:STEP, STEP a pruning step number")
        if self.name and (any(c in self.name for c in "/\\") or ".." in self.name or self.name.startswith(".")):
            raise UserError(f"--name {self.name!r} is not a plain folder name: the folder goes to runs/NAME")

    def _check_distill(self) -> None:
        """distill's settings: in range, and given only to distill."""
        if not 0 <= self.noise <= 1 or not 0 <= self.noise_scale <= 1:
            raise UserError(f"--noise {self.noise:g} and --noise-scale {self.noise_scale:g} must be in [0, 1]: "
                            "--noise 0 distils into the teacher's own weights, 1 into a fresh model")
        self.check_at_least(0, "distill_tokens")
        defaults = UnlearnConfig()
        given = [key for key in ("noise", "noise_scale", "distill_data", "distill_tokens")
                 if getattr(self, key) != getattr(defaults, key)]
        if self.method != "distill" and given:
            raise UserError(f"{flag(given[0])} is a setting of --method distill, not {self.method}: give --method "
                            f"distill, or drop {flag(given[0])}")
        if self.distill_data:
            parse_spec(self.distill_data)
            if self.distill_data == self.retain:
                raise UserError(f"--distill-data {self.distill_data!r} is the retain data, which distill trains on "
                                "anyway: give other text, or drop it")
