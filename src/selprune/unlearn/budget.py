"""The retain budget of an unlearning: how much retain accuracy it may cost, and which checkpoint it keeps.

Comparisons need matched damage: an unlearning that forgets more by also breaking more of the retain data
has not done better. `--max-retain-drop P` keeps the last checkpoint within P; `--match RUN[:STEP]` takes P
from a pruning run of the same model and data, and keeps the checkpoint within it that forgets most. Where the
retain drop rises with training that is the one closest to P from below; where it stays flat (NPO's retain term
can hold it within noise of 0 for the whole training) the closest would be whichever checkpoint the noise put
highest, however little it forgot.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..rundir import RunFolder
from .settings import UnlearnConfig

# what must agree with the --match run, so that both train or score on, and are judged on, the same text
SAME_DATA = ("model", "forget", "retain", "chunk_len", "score_tokens", "eval_tokens", "seed")


@dataclass(frozen=True)
class Budget:
    limit: float  # the largest retain top-1 drop allowed, in percent of the original accuracy
    most_forgetting: bool  # keep the checkpoint within the limit that forgets most (--match), else the last one
    source: str  # where the limit comes from, for the console

    def keeps(self, forget_drop: float, kept_forget_drop: float) -> bool:
        """Whether a checkpoint within the budget, with this forget drop, replaces the one kept so far."""
        return forget_drop >= kept_forget_drop if self.most_forgetting else True


def budget_of(config: UnlearnConfig) -> Budget | None:
    """The budget the settings give, None for none; a --match run is read and checked here, before any work."""
    if config.max_retain_drop is not None:
        return Budget(config.max_retain_drop, False, f"--max-retain-drop {config.max_retain_drop:g}")
    if not config.match:
        return None
    folder, at = pruning_run(config.match, "--match", config)
    metrics = folder.metrics()
    steps = [int(s) for s in metrics["step"]]
    if at not in steps:
        raise UserError(f"--match {config.match}: the run has steps {steps[0]} to {steps[-1]}, not {at}")
    limit = float(metrics["retain"]["drop_rel"][steps.index(at)])
    if not limit >= 0:
        raise UserError(f"--match {config.match}: the run's retain drop at step {at} is {limit:.2f}%, so there is no "
                        "damage to match; choose a later step")
    return Budget(limit, True, f"--match {folder.path} at step {at}")


def run_and_step(spec: str) -> tuple[str, int | None]:
    """RUN[:STEP] as (RUN, STEP), STEP None when not given."""
    path, _, step = spec.rpartition(":")
    return (path, int(step)) if path and step.isdigit() else (spec, None)


def pruning_run(spec: str, option: str, config: UnlearnConfig) -> tuple[RunFolder, int]:
    """The pruning run that `option` RUN[:STEP] names and its step (default: its kept step), refused unless it is
    a pruning run of the unlearning's model and data, so that both train or score on, and are judged on, the
    same text."""
    path, step = run_and_step(spec)
    folder = RunFolder(path)
    if not folder.config_path.is_file():
        raise UserError(f"{option} {path} is not a selprune run folder (no config.toml): give a pruning run's folder")
    run = folder.read_config()
    if isinstance(run, UnlearnConfig):
        raise UserError(f"{option} {path} is an unlearning folder: give a pruning run (selprune run)")
    differ = [key for key in SAME_DATA if getattr(run, key) != getattr(config, key)]
    if differ:
        theirs = ", ".join(f"{key} {getattr(run, key)!r}" for key in differ)
        raise UserError(f"{option} {path} was made with another model or data ({theirs}; here "
                        f"{', '.join(repr(getattr(config, key)) for key in differ)}): give a run of the same model "
                        "and data, or give those settings")
    return folder, folder.kept_step() if step is None else step
