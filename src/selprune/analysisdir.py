"""The files of an analysis of a run's pruned model, in a subfolder of the run that RunFolder names after the
analysis's kind (RUN/relearn/, or RUN/relearn-NAME/ with --name):

    settings.toml    the analysis's settings, naming the run as ".." so that the run folder can move
    KIND.csv         one row per finished unit of work, the caller's columns (relearn.csv); columns added in a
                     later version are written only where the first row has them, so an older folder resumes
                     with the columns it was made with
    progress.json    the finished units ("done") and the CSV's checksum: the commit point

Every file is replaced atomically; progress.json is written last, so an interrupted analysis resumes at its
last finished unit and ends with the same CSV.
"""

from __future__ import annotations

import dataclasses
import json

from . import atomic
from .errors import UserError
from .csvfiles import csv_text, read_csv
from .rundir import RunFolder, sha256_text


class AnalysisFolder:
    """A subfolder of a run for an analysis of its pruned model, e.g. RUN/relearn/: its settings, and a CSV that
    grows one finished unit of work (a "key") at a time. progress.json lists the finished keys with the
    CSV's checksum, so an interrupted analysis resumes where it stopped and ends with the same CSV.
    """

    def __init__(self, run: RunFolder, kind: str, columns: tuple[str, ...], name: str = "",
                 added: tuple[str, ...] = ()):
        self.run, self.columns, self.added = run, columns, added
        self.path = run.analysis_path(kind, name)
        self.settings_path = self.path / "settings.toml"
        self.csv_path = self.path / f"{kind}.csv"
        self.progress_path = self.path / "progress.json"

    @classmethod
    def with_results(cls, run: RunFolder, kind: str, columns: tuple[str, ...],
                     added: tuple[str, ...] = ()) -> list[AnalysisFolder]:
        """The run's analyses of a kind that have committed results, in file-name order."""
        found = (cls(run, kind, columns, name, added) for name in run.analysis_names(kind))
        return [analysis for analysis in found if analysis.progress_path.is_file()]

    def start(self, settings, resume: bool) -> None:
        """Check that a new analysis has the folder to itself, or that a resumed one keeps its settings.

        Nothing is written until the first unit of work is committed, so a failed start leaves nothing behind.
        """
        exists = self.progress_path.is_file()
        if exists and not resume:
            raise UserError(f"{self.path} already holds results: add --resume to continue it, or give --name to "
                            "keep both")
        if resume and not exists:
            raise UserError(f"nothing to resume in {self.path}: start it without --resume")
        if exists:
            saved, given = type(settings).from_toml(self.settings_path).to_dict(), settings.to_dict()
            growing = getattr(settings, "EXTENDABLE", ())  # lists a resume may add to: each entry is its own work
            changed = sorted(k for k in set(saved) | set(given) if k != "run" and saved.get(k) != given.get(k)
                             and not (k in growing and _extends(given.get(k), saved.get(k))))
            if changed:
                kept = "".join(f" (a resume may add {key} entries after the saved ones, in their order: "
                               f"{', '.join(map(str, saved[key]))})" for key in changed if key in growing and saved.get(key))
                raise UserError(f"cannot resume {self.path} with different settings ({', '.join(changed)}): resume "
                                f"with the same settings{kept}, or give --name to start another")
        self.settings = settings

    def committed(self) -> tuple[list[dict], list[str]]:
        """The rows and keys finished so far, verified against progress.json's checksum."""
        if not self.progress_path.is_file():
            return [], []
        try:
            progress = json.loads(self.progress_path.read_text())
            done, checksum = list(progress["done"]), progress["sha256"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            raise UserError(f"cannot resume: {self.progress_path} is not a progress record selprune wrote; "
                            f"delete {self.path} to start the analysis again") from None
        rows = self.rows()
        if sha256_text(self._text(rows)) != checksum:
            raise UserError(f"cannot resume: {self.csv_path} differs from what was committed; delete {self.path} "
                            "to start the analysis again")
        return rows, done

    def commit(self, rows: list[dict], done: list[str]) -> None:
        """Write the rows and keys finished so far. The settings name the run as "..", the folder above this
        one, so that the run folder can move and its analyses still resume (the run is not compared on resume)."""
        self.path.mkdir(exist_ok=True)
        atomic.write_text(self.settings_path, dataclasses.replace(self.settings, run="..").to_toml())
        text = self._text(rows)
        atomic.write_text(self.csv_path, text)
        atomic.write_text(self.progress_path, json.dumps({"done": done, "sha256": sha256_text(text)}))

    def rows(self) -> list[dict[str, str]]:
        """The CSV's rows as written (every required column, and the added ones it was made with)."""
        return read_csv(self.csv_path, self.columns) if self.csv_path.is_file() else []

    def _text(self, rows: list[dict]) -> str:
        """The CSV's bytes: the required columns, and the added ones that its first row has (all for a new one)."""
        columns = [*self.columns, *(c for c in self.added if not rows or c in rows[0])]
        return csv_text([{k: row[k] for k in columns} for row in rows], columns)


def _extends(given, saved) -> bool:
    """Whether the list given on resume is the saved one with entries added at its end."""
    return saved is not None and given is not None and tuple(given[:len(saved)]) == tuple(saved)
