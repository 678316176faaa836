"""The one owner of a run folder's files: where each lives, how it is written, read and verified.

    RUN/config.toml            every setting (RunConfig); `selprune run --config` repeats the run
    RUN/metrics.csv            one row per step and dataset, the columns in RUN_COLUMNS (a folder made before
                               score_tokens, top1_se or top1_drop_abs_se keeps the columns it has, also when
                               resumed)
    RUN/pruned.json            per step and layer, the units that step pruned
    RUN/state/progress.json    the commit point: the last completed step and checksums of what it committed,
                               and the model's fingerprint (models.model_fingerprint), checked by every
                               command that loads the model again; with --eval-precision, the evaluation
                               chunks of each dataset that step 0 decided on, which every later step reads;
                               step 0's positions and top-1 hits per chunk, which each later drop's
                               standard error pairs with its own (base_chunks)
    RUN/report.html, *.png, summary.json    the report (report.py)
    RUN/model/                 the pruned model, with --save-model
    RUN/healed/step-K/         with --heal: the healed weights after step K, part of its commit: healed.py
    RUN/inspect/               what the pruned model can still do (selprune inspect): inspectdir.py
    RUN/lr-LR/, RUN/state/     an unlearning's (selprune unlearn) own files: unlearn/checkpoints.py
    RUN/state/model.json       an unlearning's model fingerprint, written at its first commit
    RUN/relearn/               an analysis of the pruned model (selprune relearn), RUN/relearn-NAME/ with
                               --name: analysisdir.py
    RUN/.lock                  held by the process running in the folder: folderlock.py

Every file is replaced atomically. A step is committed when progress.json names it, written last. Files
written after that commit belong to a step that did not finish, and resume drops them. Resume does not
trust the files: the committed part of metrics.csv and pruned.json must hash to the checksums that
progress.json recorded, and agree with the config and the model. A damaged, truncated or foreign file is
refused with a line that names it, never silently repaired.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from . import atomic
from .config import RunConfig, read_toml
from .csvfiles import csv_text, read_csv
from .errors import UserError
from .evaluate import drop_standard_error
from .folderlock import LOCK, FolderLock
from .healed import HealedWeights
from .models import absolute_spec, same_model
from .pruning import PrunedRecord, step_budget
from .summary import ROLES, metric_series, summary_of
from .unlearn.settings import UnlearnConfig

COLUMNS = ("step", "fraction_pruned", "units_pruned", "role", "dataset", "tokens", "top1", "top10", "loss",
           "perplexity", "top1_skip", "top10_skip", "loss_skip", "perplexity_skip", "top1_drop_rel",
           "top1_drop_abs")  # every metrics.csv has these: reading one requires them
# an evaluation's row adds, beside top1, its standard error across the chunks read (evaluate.top1_standard_error),
# and that of top1_drop_abs, in points, the chunks paired with the base's (evaluate.drop_standard_error)
EVAL_COLUMNS = (*COLUMNS[:COLUMNS.index("top1") + 1], "top1_se", *COLUMNS[COLUMNS.index("top1") + 1:],
                "top1_drop_abs_se")
# a pruning run's metrics.csv adds the scoring tokens per dataset that each step's statistics read (0: none)
RUN_COLUMNS = (*EVAL_COLUMNS, "score_tokens")
RELEARN = "relearn"  # the kind of analysis that selprune relearn writes: RUN/relearn/, RUN/relearn-NAME/
FORMAT = 2  # of progress.json; a folder made by another format is refused on resume
# Settings that may change between a run and its resumption without changing its result.
RESUMABLE_CHANGES = {"batch_size", "save_model", "device", "device_map", "output", "compile"}


def sha256_text(text: str) -> str:
    """The SHA-256 of a file's text, as a commit record holds it."""
    return hashlib.sha256(text.encode()).hexdigest()


def _int(text: str) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _settings_digest(settings: dict) -> str:
    """A checksum of the settings that decide a run's result (not those that may change on resume).

    Taken of the settings as config.toml holds them, not as a RunConfig fills them in: a setting added to
    selprune after a run was made is missing from its config.toml, and must not make the run unresumable.
    """
    kept = {k: v for k, v in settings.items() if k not in RESUMABLE_CHANGES}
    return sha256_text(json.dumps(kept, sort_keys=True))


def _positions(counts) -> int | None:
    """The positions a recorded [[positions, hits] per chunk] covers; None where it is not such a record."""
    pairs = isinstance(counts, list) and counts and all(
        isinstance(c, list) and len(c) == 2 and all(type(n) is int for n in c) and 0 <= c[1] <= c[0] for c in counts)
    return sum(n for n, _ in counts) if pairs else None


def metrics_text(rows: list[dict]) -> str:
    """A metrics.csv's bytes, in the columns its first row has, in RUN_COLUMNS' order: all of them for a run,
    EVAL_COLUMNS for an unlearning, and for a folder made before score_tokens, top1_se or top1_drop_abs_se the
    columns it was made with, which its resumed steps then keep."""
    columns = [c for c in RUN_COLUMNS if c in rows[0]] if rows else COLUMNS
    return csv_text([{k: row[k] for k in columns} for row in rows], columns)


def pruned_text(record: PrunedRecord) -> str:
    return json.dumps(record.to_json())


class RunFolder:
    """A run folder on disk. Create or open it (taking its lock) before writing; reading needs no lock."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock = FolderLock(self.path)
        self.model_record = None  # the fingerprint that commit() records, once check_model has one
        # {dataset: evaluation chunks} that step 0 of an --eval-precision run decided on; commit() records it,
        # committed() reads it back
        self.eval_chunks: dict[str, int] = {}
        # {dataset: [[positions, top-1 hits] per chunk]} of step 0's evaluation, which each later drop's standard
        # error pairs with (evaluate.drop_standard_error); commit() records it, committed() reads it back
        self.base_chunks: dict[str, list[list[int]]] = {}
        self.healed = HealedWeights(self.path)  # RUN/healed/ of a --heal run

    config_path = property(lambda self: self.path / "config.toml")
    metrics_path = property(lambda self: self.path / "metrics.csv")
    pruned_path = property(lambda self: self.path / "pruned.json")
    progress_path = property(lambda self: self.path / "state" / "progress.json")
    model_path = property(lambda self: self.path / "model")
    # an unlearning's model fingerprint (a run keeps its own in progress.json)
    fingerprint_path = property(lambda self: self.path / "state" / "model.json")
    # an unlearning's record that it finished (unlearn/checkpoints.py writes it last)
    result_path = property(lambda self: self.path / "state" / "result.json")

    def __str__(self) -> str:
        return str(self.path)

    # -- holding the folder --------------------------------------------------------------------

    def lock(self) -> None:
        """Hold the folder for this process's lifetime (folderlock.py)."""
        self._lock.acquire()

    def unlock(self) -> None:
        self._lock.release()

    def create(self) -> None:
        """Lock a new run's folder; refuse one that holds any other run's files (an empty one is reused)."""
        self.lock()
        if any(p.name != LOCK for p in self.path.iterdir()):
            self.unlock()
            raise UserError(f"output folder {self.path} already exists: add --resume to continue it, or give "
                            "a new --output (or --name) to start another run, e.g. to repeat it from its "
                            "config.toml")

    def open_for_resume(self, given: RunConfig | UnlearnConfig, resumable=RESUMABLE_CHANGES) -> RunConfig:
        """Lock an existing run's folder and check that `given` may continue it (`resumable`: the settings that
        may change, a run's by default); returns the config to use."""
        if not self.config_path.is_file():
            if self.path.is_dir() and any(p.name != LOCK for p in self.path.iterdir()):
                raise UserError(f"cannot resume {self.path}: it holds a run's files but no config.toml (or not as a "
                                "file), so its settings are lost; start again in a new folder with --output")
            raise UserError(f"nothing to resume in {self.path}: no step was finished; start it without --resume")
        self.lock()
        changed = self.changed_settings(given, resumable)
        if changed:
            self.unlock()
            raise UserError(f"cannot resume {self.path} with different settings ({', '.join(changed)}): "
                            "resume with the same settings, or start a new run with --output")
        return given

    # -- config ----------------------------------------------------------------------------------

    def read_config(self) -> RunConfig | UnlearnConfig:
        """The settings that made the folder: a pruning run's, or an unlearning's (only those have a `method`)."""
        data = read_toml(self._require(self.config_path), "config file", "such as a run folder's config.toml")
        kind = UnlearnConfig if "method" in data else RunConfig
        return kind.from_dict(data, source=f"config file {self.config_path}")

    def changed_settings(self, given: RunConfig | UnlearnConfig, resumable=RESUMABLE_CHANGES) -> list[str]:
        """The settings that decide the result (all but `resumable`, a run's by default) and differ between
        config.toml and `given`: a run may be continued with `given` only when there are none."""
        saved, kept = self.read_config().to_dict(), given.to_dict()
        for settings in (saved, kept):  # a folder made before models were recorded by absolute path says ./m
            settings["model"] = absolute_spec(settings["model"])
        return sorted(k for k in set(saved) | set(kept) if k not in resumable and saved.get(k) != kept.get(k))

    # -- the model ---------------------------------------------------------------------------------

    def check_model(self, spec: str, fingerprint: dict) -> None:
        """Refuse a model that is not the one the run was made with (another model now at its path); a run
        with nothing committed yet records this one at its first commit, an unlearning at its own (record_model).
        A folder from before fingerprints has none to check."""
        recorded, source = self._recorded_model()
        if recorded is None:
            self.model_record = None if self.progress_path.is_file() else fingerprint
            return
        try:
            same = same_model(recorded, fingerprint)
        except (KeyError, TypeError):
            raise self._damaged(source, "has a model fingerprint that selprune did not write") from None
        if not same:
            raise UserError(f"model {spec} is not the model {self.path} was made with (its weights differ): give "
                            "the run's own model at that path, or start a new run with this one")
        self.model_record = recorded

    def record_model(self) -> None:
        """An unlearning's first commit: the fingerprint that check_model saw, in state/model.json."""
        self.fingerprint_path.parent.mkdir(exist_ok=True)
        atomic.write_text(self.fingerprint_path, json.dumps(self.model_record))

    def _recorded_model(self) -> tuple[dict | None, Path]:
        """The fingerprint recorded (None: none) and the file that holds it: a run's progress.json, an
        unlearning's state/model.json."""
        if self.progress_path.is_file():
            return self._progress().get("model"), self.progress_path
        if not self.fingerprint_path.is_file():
            return None, self.fingerprint_path
        try:
            return json.loads(self.fingerprint_path.read_text()), self.fingerprint_path
        except (OSError, UnicodeDecodeError, ValueError):
            raise self._damaged(self.fingerprint_path, "is not a model fingerprint that selprune wrote") from None

    # -- the commit ------------------------------------------------------------------------------

    def commit(self, step: int, config: RunConfig, record: PrunedRecord, rows: list[dict],
               stop: dict | None = None, healed: bytes | None = None) -> None:
        """Write a completed step: the files first, then progress.json with their checksums (the commit).

        `stop` ({"kept_step": k, "reason": text}) ends the run at this step. It is part of the same commit,
        so a resumed run knows it stopped; its model is the one after step k (this step, or the one before).
        `healed`: with --heal, the healed weights after this step (a safetensors file's bytes).
        """
        metrics, pruned = metrics_text(rows), pruned_text(record)
        atomic.write_text(self.config_path, config.to_toml())
        atomic.write_text(self.pruned_path, pruned)
        atomic.write_text(self.metrics_path, metrics)
        self.progress_path.parent.mkdir(exist_ok=True)
        progress = {"format": FORMAT, "completed_step": step,
                    "sha256": {"metrics.csv": sha256_text(metrics), "pruned.json": sha256_text(pruned),
                               "config.toml": _settings_digest(config.to_dict())}}
        if stop is not None:
            progress["stopped"] = stop
        if self.model_record is not None:
            progress["model"] = self.model_record
        if self.eval_chunks:
            progress["eval_chunks"] = self.eval_chunks
        if self.base_chunks:
            progress["base_chunks"] = self.base_chunks
        if healed is not None:
            kept = step if stop is None else stop["kept_step"]
            progress["sha256"].update(self.healed.write(step, healed, kept, self._committed_sums))
        atomic.write_text(self.progress_path, json.dumps(progress))
        if healed is not None:
            self.healed.drop_except(progress["sha256"])

    def _committed_sums(self) -> dict[str, str]:
        """The checksums of the last commit ({} before the first)."""
        return self._progress()["sha256"] if self.progress_path.is_file() else {}

    def healed_steps(self) -> list[int]:
        """The steps whose healed weights the last commit holds (none for a run without --heal)."""
        return self.healed.steps(self._committed_sums(), self.completed_step())

    def _verify_healed(self, progress: dict, config: RunConfig) -> None:
        self.healed.verify(progress["sha256"], progress["completed_step"], config.heal, self.progress_path)

    def completed_step(self) -> int:
        """The last committed step, -1 before step 0 is committed."""
        return -1 if not self.progress_path.is_file() else self._progress()["completed_step"]

    def kept_step(self) -> int:
        """The last step whose pruning the run keeps: the completed one, or the one a stop criterion kept."""
        stop = self.stopped()
        return self.completed_step() if stop is None else stop["kept_step"]

    def stopped(self) -> dict | None:
        """The stop record of a run that a stop criterion ended early ({"kept_step", "reason"}), else None."""
        return None if not self.progress_path.is_file() else self._progress().get("stopped")

    def _progress(self) -> dict:
        path = self.progress_path
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            data = None
        if isinstance(data, dict) and data.get("format") not in (None, FORMAT):
            raise self._damaged(path, f"was written by another version of selprune (format {data['format']}, "
                                f"this one reads {FORMAT}): rerun the run with this version")
        try:
            step, sums = data["completed_step"], data["sha256"]
            ok = (data.get("format") == FORMAT and isinstance(step, int) and not isinstance(step, bool)
                  and step >= 0 and isinstance(sums, dict) and all(isinstance(sums.get(name), str)
                                                                   for name in ("metrics.csv", "pruned.json",
                                                                                "config.toml")))
            stop = data.get("stopped")
            if stop is not None:
                kept = stop["kept_step"]
                ok = ok and (isinstance(kept, int) and not isinstance(kept, bool) and 0 <= kept <= step
                             and isinstance(stop["reason"], str))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise self._damaged(path, "is not a progress record selprune wrote")
        return data

    def committed(self, config: RunConfig, layers: int, units_per_layer: int, units_per_step: int,
                  roles: tuple[str, ...]) -> tuple[int, PrunedRecord, list[dict]]:
        """What earlier sessions committed, verified: (last step, pruned record, metrics rows).

        Nothing committed yet: (-1, an empty record, []). Uncommitted leftovers of an interrupted step
        are dropped; anything else that disagrees with progress.json, the config or the model is refused.
        """
        empty = PrunedRecord(config.group, layers, units_per_layer)
        try:
            if not self.progress_path.is_file():
                self._refuse_orphans()
                return -1, empty, []
            progress = self._progress()
            done = progress["completed_step"]
            if done > config.steps:
                raise self._damaged(self.progress_path, f"says step {done} of a {config.steps}-step run was completed")
            self._verify_settings(progress)
            record = self._verified_record(done, progress["sha256"]["pruned.json"], empty, units_per_step)
            rows = self._verified_rows(done, progress["sha256"]["metrics.csv"], record, config, roles)
            self._verify_healed(progress, config)
            self.eval_chunks = self._verified_eval_chunks(progress, config)
            self.base_chunks = self._verified_base_chunks(progress, rows)
        except UserError as exc:
            raise self._cannot_resume(exc) from None
        return done, record, rows

    def check_readable(self, config: RunConfig) -> None:
        """What `sweep --dry-run` checks of a partial run without loading its model: committed()'s checks that
        need no model (progress.json, config.toml, pruned.json as read, metrics.csv, healed weights), with its
        message."""
        try:
            progress = self._progress()
            self._verify_settings(progress)
            record = self.committed_record(config)
            rows = self._verified_rows(progress["completed_step"], progress["sha256"]["metrics.csv"], record, config,
                                       ROLES + ("watch",) * len(config.watch))
            self._verified_eval_chunks(progress, config)
            self._verified_base_chunks(progress, rows)
        except UserError as exc:
            raise self._cannot_resume(exc) from None

    def committed_record(self, config: RunConfig) -> PrunedRecord:
        """pruned.json as the last commit made it, checked with the healed weights that commit names: what the
        run's model is rebuilt from (`unlearn --from`), so a file changed since is refused, never rebuilt."""
        progress = self._progress()
        done = progress["completed_step"]
        record = self.record()
        record.truncate(done)
        if sha256_text(pruned_text(record)) != progress["sha256"]["pruned.json"]:
            raise self._damaged(self.pruned_path, f"differs from what step {done} committed")
        self._verify_healed(progress, config)
        return record

    def _verify_settings(self, progress: dict) -> None:
        written = read_toml(self.config_path, "config file", "such as a run folder's config.toml")
        if _settings_digest(written) != progress["sha256"]["config.toml"]:
            raise self._damaged(self.config_path, "has other settings than the ones its steps were made with")

    def _verified_eval_chunks(self, progress: dict, config: RunConfig) -> dict[str, int]:
        """The evaluation chunks per dataset that step 0 decided on: one count for each with --eval-precision,
        none without."""
        chunks = progress.get("eval_chunks", {})
        datasets = {config.forget, config.retain, *config.watch} if config.eval_precision else set()
        if not (isinstance(chunks, dict) and set(chunks) == datasets
                and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in chunks.values())):
            raise self._damaged(self.progress_path, "does not record the evaluation chunks of each dataset that step 0 "
                                f"decided on with --eval-precision {config.eval_precision:g}")
        return chunks

    def _verified_base_chunks(self, progress: dict, rows: list[dict]) -> dict[str, list[list[int]]]:
        """Step 0's [positions, hits] per chunk of each dataset, as many positions as its step-0 row has tokens;
        none in a folder made before top1_drop_abs_se (its resumed steps keep its columns)."""
        if "top1_drop_abs_se" not in rows[0]:
            return {}
        chunks = progress.get("base_chunks")
        tokens = {r["dataset"]: _int(r["tokens"]) for r in rows if r["step"] == "0"}
        if not (isinstance(chunks, dict) and set(chunks) == set(tokens)
                and all(_positions(counts) == tokens[dataset] for dataset, counts in chunks.items())):
            raise self._damaged(self.progress_path, "does not record step 0's top-1 hits in each evaluation chunk, "
                                "which the standard error of every later drop needs")
        return chunks

    def drop_error(self, dataset: str, now: torch.Tensor) -> float:
        """The standard error (points) of the drop of an evaluation of `dataset` that counted `now` [chunks,
        (positions, hits)], paired with step 0's chunks (base_chunks); NaN in a folder made before
        top1_drop_abs_se. Chunks of other sizes than step 0's are refused: the data changed since, or the record."""
        base = self.base_chunks.get(dataset)
        if base is None:
            return float("nan")
        try:
            return 100 * drop_standard_error(torch.tensor(base), now)
        except ValueError:  # the positions of the chunks differ
            raise self._cannot_resume(self._damaged(
                self.progress_path, f"records other evaluation chunks of {dataset} at step 0 than this session "
                "read (the data changed since step 0, or the file is damaged)")) from None

    def _cannot_resume(self, exc: UserError) -> UserError:
        return UserError(f"cannot resume: {exc}; nothing was changed. Runs are deterministic: redo this one "
                         f"in a new folder with `selprune run --config {self.config_path} --output NEW`")

    def _refuse_orphans(self) -> None:
        """Without progress.json nothing was committed, so there can be no metrics past step 0."""
        if self.metrics_path.is_file():
            steps = {int(r["step"]) for r in self.rows() if r["step"].isdigit()}
            if any(s > 0 for s in steps):
                raise self._damaged(self.progress_path, f"is missing, but metrics.csv has steps up to {max(steps)}")

    def _verified_record(self, done: int, checksum: str, empty: PrunedRecord, per_step: int) -> PrunedRecord:
        record = self.record()
        record.truncate(done)
        if (record.group, record.layers, record.units_per_layer) != (empty.group, empty.layers, empty.units_per_layer):
            raise self._damaged(self.pruned_path, f"is for {record.layers} layers x {record.units_per_layer} "
                                f"{record.group} units, the model has {empty.layers} x {empty.units_per_layer} "
                                f"{empty.group} units")
        steps = [s["step"] for s in record.steps]
        if steps != list(range(1, done + 1)):
            raise self._damaged(self.pruned_path, f"has steps {steps}, progress.json says 1 to {done} were completed")
        counts = [int(record.mask_of(s).sum()) for s in steps]
        expected = [step_budget(per_step, empty.layers * empty.units_per_layer, s) for s in steps]
        if counts != expected or int(record.mask().sum()) != sum(counts):
            raise self._damaged(self.pruned_path, f"prunes {counts} units per step; this run prunes {per_step} "
                                "distinct units a step")
        if sha256_text(pruned_text(record)) != checksum:
            raise self._damaged(self.pruned_path, f"differs from what step {done} committed")
        return record

    def _verified_rows(self, done: int, checksum: str, record: PrunedRecord, config: RunConfig,
                       roles: tuple[str, ...]) -> list[dict]:
        rows = [r for r in self.rows() if _int(r["step"]) is not None and _int(r["step"]) <= done]
        expected = [(s, role) for s in range(done + 1) for role in roles]
        if [(_int(r["step"]), r["role"]) for r in rows] != expected or sha256_text(metrics_text(rows)) != checksum:
            raise self._damaged(self.metrics_path, f"differs from what step {done} committed (a row is missing, "
                                "cut or changed)")
        pruned = np.cumsum([0] + [int(record.mask_of(s["step"]).sum()) for s in record.steps])
        specs = {"forget": config.forget, "retain": config.retain}
        for r in rows:
            if _int(r["units_pruned"]) != pruned[int(r["step"])] or r["dataset"] != specs.get(r["role"], r["dataset"]):
                raise self._damaged(self.metrics_path, f"step {r['step']} ({r['role']}) disagrees with pruned.json "
                                    "or config.toml")
        return rows

    @staticmethod
    def _damaged(path: Path, what: str) -> UserError:
        return UserError(f"{path} {what}")

    # -- reading ---------------------------------------------------------------------------------

    def _require(self, path: Path) -> Path:
        if not self.path.is_dir():
            raise UserError(f"{self.path} is not a folder: give a selprune run folder")
        if not path.is_file():
            raise UserError(f"{path} not found: give a selprune run folder (config.toml, metrics.csv, pruned.json)")
        return path

    def rows(self) -> list[dict[str, str]]:
        """metrics.csv's rows as strings, in file order, with every column of COLUMNS present (score_tokens,
        top1_se and top1_drop_abs_se only in a folder made since each was added)."""
        return read_csv(self._require(self.metrics_path), COLUMNS)

    def record(self) -> PrunedRecord:
        """pruned.json, checked for shape: steps of layer -> unit indices inside the group."""
        path = self._require(self.pruned_path)
        try:
            record = PrunedRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
            record.mask()  # indices out of range or of the wrong type fail here
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError) as exc:
            raise UserError(f"{path} is malformed ({type(exc).__name__}: {exc}): regenerate it with selprune") from None
        return record

    def metrics(self) -> dict:
        """metrics.csv as arrays over its steps, with the accuracy drops (summary.metric_series)."""
        return metric_series(self.rows(), self.metrics_path)

    # -- analyses: RUN/KIND/ and RUN/KIND-NAME/ (analysisdir.py) -----------------------------------

    def analysis_path(self, kind: str, name: str = "") -> Path:
        """The folder of an analysis of this run: RUN/KIND/, or RUN/KIND-NAME/ to keep several of a kind."""
        return self.path / (f"{kind}-{name}" if name else kind)

    def analysis_names(self, kind: str) -> list[str]:
        """The names of this run's analysis folders of a kind, in file-name order ("" for RUN/KIND/)."""
        folders = sorted(p.name for p in self.path.glob(f"{kind}*") if p.is_dir())
        return [f[len(kind) + 1:] for f in folders if f == kind or f.startswith(f"{kind}-")]


def summarize(run_dir) -> dict:
    """The headline numbers of the run in `run_dir` (summary.summary_of)."""
    return summary_of(RunFolder(run_dir).metrics())
