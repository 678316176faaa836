"""The two kinds of run a sweep makes, a pruning run (selprune run) and an unlearning (selprune unlearn): how far
a folder of each got, what is left of it in tokens, and how it is run. Both leave a folder of a run's shape, so
that the summary and the comparisons read them alike."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import RunConfig
from ..errors import OutOfMemory, UserError
from ..rundir import RESUMABLE_CHANGES, RunFolder
from ..scorers import SCORERS
from ..unlearn.checkpoints import Checkpoints, read_result
from ..unlearn.runner import RESUMABLE_CHANGES as UNLEARNING_RESUMABLE
from ..unlearn.settings import UnlearnConfig
from ..unlearn.start import start_of
from .grid import Planned

PRUNING_ONLY = ("fraction_pruned", "fraction_at_retain_budget", "area_rel")  # no meaning for an unlearning: "—"
FAILURES = (UserError, OutOfMemory)  # what fails one run (bad input found late, out of memory), not the sweep


@dataclass
class Progress:
    """How far a run's folder got."""

    state: str  # new, partial or finished (complete, or ended by a stop criterion)
    where: str  # the steps committed, for the console ("step 3 of 8"); "" before any was
    tokens: int  # the tokens it still passes through the model
    stopped: bool = False  # a stop criterion ended it early

    def describe(self) -> str:
        """The dry run's words for it."""
        if self.state == "finished":
            return self.where + (" (stopped early)" if self.stopped else "")
        return f"{self.where} done, {self.tokens:,} tokens left" if self.where else f"{self.tokens:,} tokens"


def progress(run: Planned) -> Progress:
    """A run's progress. A folder made with other settings than the grid gives it is refused, never mixed or
    skipped; a partial one is checked as resuming it will check it, so a damaged one is refused now."""
    return (_unlearning_progress if run.unlearning else _pruning_progress)(run)


def execute(run: Planned, resume: bool, quiet: bool) -> Path:
    if run.unlearning:
        from ..unlearn import unlearn

        return unlearn(run.config, resume=resume, quiet=quiet)
    from ..run import run as run_one

    return run_one(run.config, resume=resume, quiet=quiet)


@dataclass
class Pending:
    """A run the sweep still has to run: its console prefix ("[2/8] code-vs-prose-ff-abs") and how far it got."""

    prefix: str
    run: Planned
    now: Progress

    def doing(self) -> str:
        """The console's words for what is about to happen: "resuming after step 3 (1,200 tokens)"."""
        now = self.now
        doing = f"resuming after {now.where}" if now.where else "resuming" if now.state == "partial" else "starting"
        return f"{doing} ({now.tokens:,} tokens)"


@dataclass
class Done:
    """A run that finished: its wall time in this session, the tokens it read and the machine it ran on."""

    seconds: float
    tokens: int
    host: str


def finish(run: Planned, quiet: bool, now: Progress | None = None) -> Done | Exception:
    """Run what is left of `run`, resumed if its folder got partway (`now`: how far, else read from the folder
    now). A run that fails returns its error, so that the sweep goes on with the others."""
    start = time.perf_counter()
    try:
        now = now or progress(run)
        execute(run, resume=now.state == "partial", quiet=quiet)
    except FAILURES as exc:
        return exc
    return Done(time.perf_counter() - start, now.tokens, platform.node())


def timed_as(run: Planned) -> str:
    """What a run's time per token is estimated from: earlier pruning runs ("run"), or unlearnings of its method."""
    return run.config.method if run.unlearning else "run"


def tokens_left(config: RunConfig, done: int) -> int:
    """Tokens the run still reads: every step from 0 on evaluates each dataset (forget, retain, watched); every
    step from 1 on scores forget and retain, unless the scorer reads no activations (random); and the tokens
    --harden and --heal fine-tune on. A stop criterion (or --eval-precision) can end the run sooner."""
    steps = config.steps - max(done, 0)
    evaluations = steps + (1 if done < 0 else 0)
    scoring = 2 * config.score_tokens * steps if SCORERS[config.scorer].sums else 0
    return evaluations * (2 + len(config.watch)) * config.eval_tokens + scoring + trained_tokens(config, done)


def trained_tokens(config: RunConfig, done: int) -> int:
    """The tokens a run still fine-tunes on after step `done`: --harden before each step from the second,
    --heal after every step."""
    later = range(max(done, 0) + 1, config.steps + 1)
    hardened = sum(step >= 2 for step in later)
    return (hardened * config.harden * config.harden_batch_size * config.harden_chunk_len
            + len(later) * config.heal * config.heal_batch_size * config.chunk_len)


def unlearning_tokens_left(config: UnlearnConfig, done: dict[float, tuple[int, bool]]) -> int:
    """Tokens an unlearning still reads. done: {learning rate: (its last committed step, whether it stopped)}
    for those that committed one. Each step draws a batch from forget, retain (and --distill-data); each
    checkpoint (every --eval-every steps, and the last) evaluates forget and retain; step 0 is evaluated once
    for all learning rates (twice from a pruned start, whose original model gives the drops' base)."""
    total, every = config.total_steps, config.eval_every
    per_step = config.batch_size * config.chunk_len * (3 if config.distill_data else 2)
    tokens = 0 if done else (2 if config.from_run else 1) * 2 * config.eval_tokens
    for lr in config.learning_rates:
        step, stopped = done.get(lr, (0, False))
        if not stopped and step < total:
            checkpoints = total // every - step // every + (1 if total % every else 0)
            tokens += (total - step) * per_step + checkpoints * 2 * config.eval_tokens
    return tokens


def _refuse_changed(folder: RunFolder, config, resumable) -> None:
    changed = folder.changed_settings(config, resumable)
    if changed:
        raise UserError(f"{folder} holds a run with other settings ({', '.join(changed)}) than the grid gives it: "
                        "move it away, or give the sweep another --output")


def _pruning_progress(run: Planned) -> Progress:
    folder, config = run.folder, run.config
    if not folder.config_path.is_file():
        return Progress("new", "", tokens_left(config, -1))
    _refuse_changed(folder, config, RESUMABLE_CHANGES)
    done = folder.completed_step()
    stopped = folder.stopped() is not None
    where = f"step {done} of {config.steps}" if done >= 0 else ""
    if stopped or done >= config.steps:
        return Progress("finished", where, 0, stopped)
    if done >= 0:
        folder.check_readable(config)
    return Progress("partial", where, tokens_left(config, done))


def _unlearning_progress(run: Planned) -> Progress:
    folder, config = run.folder, run.config
    if not folder.config_path.is_file():
        return Progress("new", "", unlearning_tokens_left(config, {}))
    start = start_of(config)  # config.toml records --from's run by its absolute path, as the unlearning does
    _refuse_changed(folder, replace(config, from_run=start.spec) if start else config, UNLEARNING_RESUMABLE)
    total = config.total_steps
    result = read_result(folder.path)
    if result is not None:
        where = f"step {result['completed_step']} of {total}, lr {result['lr']:g} kept at step {result['kept_step']}"
        return Progress("finished", where, 0, result["stopped"] is not None)
    done = {}
    for lr in config.learning_rates:
        committed = Checkpoints(folder.path, lr).committed()  # verified, as resuming verifies it
        if committed is not None:
            done[lr] = (committed.step, committed.stopped is not None)
    where = ", ".join(f"step {step} of {total}" + (f" at lr {lr:g}" if len(config.learning_rates) > 1 else "")
                      for lr, (step, _) in done.items())
    return Progress("partial", where, unlearning_tokens_left(config, done))
