"""The settings of a relearning attack, their checks, and where its results go (RUN/relearn/, or
RUN/relearn-NAME/ with --name) with the columns of their CSV."""

from __future__ import annotations

from dataclasses import dataclass

from ..analysisdir import AnalysisFolder
from ..config import RunConfig, Settings, setting
from ..errors import UserError
from ..finetune import BATCH_SIZE, CHUNK_LEN, LR, TOKENS
from ..rundir import RELEARN, RunFolder

COLUMNS = ("attack", "model", "lr", "step", "forget_top1", "forget_loss", "retain_top1", "retain_loss",
           "train_loss", "pruned_zero")  # every relearn.csv has these: reading one requires them
# and, added later, each top-1's standard error across the evaluation's chunks, and the forget chunks' own
# "positions:hits" (space-separated, the same chunks in every row), which pair any two rows' forget top-1s: the
# recovered share's standard error (results.py). A folder made before them keeps the columns it has.
ADDED_COLUMNS = ("forget_top1_se", "retain_top1_se", "forget_chunks")
DEFAULT_LR = {"adamw": LR, "lora": 5e-5}  # LoRA's from Che et al. 2025 (rank 16, alpha 32)
OPTIMIZERS = ("adamw", "lora")


@dataclass
class RelearnConfig(Settings):
    run: str = setting("", "the folder whose model is attacked: a pruning run, or an unlearning folder (selprune "
                       "unlearn), attacked at the checkpoint it kept")
    step: int = setting(0, "attack the model after this pruning step (0: the run's last step; an unlearning folder "
                        "has one step, its kept checkpoint)")
    attack: tuple[str, ...] = setting(("forget",), "what to fine-tune on: forget (the forget dataset's relearn "
                                      "split), retain (the retain dataset's), other:SPEC (any dataset)")
    optimizer: str = setting("adamw", "adamw: full fine-tuning; lora: low-rank adapters (needs peft)", OPTIMIZERS)
    lr: tuple[float, ...] = setting((), "learning rates to try; at each evaluation point a model keeps the "
                                    "one that recovered most by then (default 1e-4 for adamw, 5e-5 for lora)")
    max_steps: int = setting(64, "fine-tuning steps; evaluated at 0, 1, 2, 4, 8, ... and the last")
    batch_size: int = setting(BATCH_SIZE, "chunks per fine-tuning step")
    chunk_len: int = setting(CHUNK_LEN, "tokens per fine-tuning chunk")
    relearn_tokens: int = setting(TOKENS, "tokens of attack data per dataset, from documents that the run's "
                                  "scoring and evaluation never saw")
    eval_tokens: int = setting(4_096, "evaluation tokens per dataset at each point (the start of the run's "
                               "evaluation chunks)")
    control: tuple[str, ...] = setting((), "other run folders to attack the same way: RUN or RUN:STEP, or "
                                       "unlearning folders (selprune unlearn), attacked at the checkpoint they "
                                       "kept; --resume may add more after the saved ones")
    random_control: bool = setting(True, "also attack a random pruning of as many units of the same group (a "
                                   "pruning run only: an unlearning folder pruned no units)")
    reinit_pruned: bool = setting(False, "a stronger attack: give the pruned weights small random values first, "
                                  "so that fine-tuning can use them")
    lora_rank: int = setting(16, "LoRA rank")
    lora_alpha: int = setting(32, "LoRA alpha")
    dtype: str = setting("auto", "auto: float32 weights with bfloat16 compute where the hardware has it; float32",
                         ("auto", "float32"))
    compile: bool = setting(RunConfig.compile, "fuse the evaluation's rank counts with torch.compile, as runs "
                            "do; off: eager PyTorch, with no time spent compiling")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    seed: int = setting(0, "seed for the data order, the random control and re-initialisation")
    name: str = setting("", "results go to RUN/relearn, or RUN/relearn-NAME to keep several")

    # --resume may add controls after the saved ones: each model's attack is seeded alike and stands on its own
    EXTENDABLE = ("control",)

    @property
    def learning_rates(self) -> tuple[float, ...]:
        return self.lr or (DEFAULT_LR[self.optimizer],)

    def results_folder(self) -> AnalysisFolder:
        """Where the results go: the run's relearning analysis of this name."""
        return AnalysisFolder(RunFolder(self.run), RELEARN, COLUMNS, self.name, ADDED_COLUMNS)

    def validate(self) -> None:
        self.check_finite()
        self.check_at_least(1, "max_steps", "batch_size", "relearn_tokens", "eval_tokens", "lora_rank", "lora_alpha")
        self.check_at_least(2, "chunk_len")
        if self.step < 0:
            raise UserError(f"--step must be a pruning step of the run (0 for its last), got {self.step}")
        if any(lr <= 0 for lr in self.learning_rates):
            raise UserError(f"learning rates must be positive, got {', '.join(map(str, self.learning_rates))}")
        for attack in self.attack:
            if attack not in ("forget", "retain") and not (attack.startswith("other:") and attack[6:]):
                raise UserError(f"unknown attack {attack!r}: use forget, retain or other:SPEC")
        if len(set(self.attack)) < len(self.attack):
            raise UserError("an attack is named twice in --attack")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}: use adamw or lora")
        if self.name and ("/" in self.name or self.name.startswith(".")):
            raise UserError(f"--name {self.name!r} must be a plain name: the results go to RUN/relearn-NAME")
