"""Where an unlearning starts: the original model, or a finished pruning run's model (`--from RUN[:STEP]`).

"Prune, then make the rest forget too": the methods train the pruned model with the pruned units held at
exactly zero (finetune.hold_at_zero), so the folder's model is the run's mask plus the trained weights, and
recipe.recipe_of rebuilds it as both. Drops stay relative to the original model's accuracy, as the run's are,
so a pruned start begins with the run's drops at step 0 and both are read on one scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..recipe import Recipe, recipe_of
from .budget import pruning_run
from .settings import UnlearnConfig


@dataclass(frozen=True)
class Start:
    spec: str  # RUN:STEP with RUN absolute, as config.toml records it
    recipe: Recipe  # the run's model after STEP: the original with the run's mask up to STEP

    @property
    def units(self) -> int:
        return int(self.recipe.mask.sum())

    @property
    def fraction(self) -> float:
        return self.units / self.recipe.mask.numel()

    def describe(self) -> str:
        return (f"step 0 is {self.spec}'s model ({self.units} {self.recipe.group} units pruned, "
                f"{100 * self.fraction:.1f}%); drops are relative to the original model's accuracy")


def start_of(config: UnlearnConfig) -> Start | None:
    """The pruned start that --from names, checked before anything is loaded or written; None without --from."""
    if not config.from_run:
        return None
    folder, step = pruning_run(config.from_run, "--from", config)
    if step == 0:
        raise UserError(f"--from {config.from_run}: step 0 is the original model, which unlearning starts from "
                        "without --from: drop --from, or give a pruning step from 1")
    run = folder.read_config()
    if folder.stopped() is None and folder.completed_step() < run.steps:
        raise UserError(f"--from {folder.path} is a pruning run that has not finished (step "
                        f"{max(folder.completed_step(), 0)} of {run.steps}): finish it with selprune run --resume "
                        f"--output {folder.path}, then start from it")
    try:
        folder.committed_record(run)  # a pruned.json or healed weights changed since their commit: another model
    except UserError as exc:
        raise UserError(f"--from {folder.path}: {exc}; redo the run, or start from another") from None
    recipe = recipe_of(folder, step)  # refuses a step whose model the run does not keep
    return Start(f"{folder.path.resolve()}:{recipe.step}", recipe)
