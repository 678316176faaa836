"""RUN/inspect/: what `selprune inspect` found the run's models can still do.

    settings.toml       the inspection's settings
    generations.jsonl   the prompts, and each model's continuations
    checks.csv          a check's number per prompt set, decoding and step (COLUMNS)
    lens.csv            the logit lens's top-1 per step, dataset and layer (COLUMNS)

An inspection is redone as a whole, not resumed: each file is replaced atomically, and the report reads
whatever the last one wrote.
"""

from __future__ import annotations

import json

from . import atomic
from .csvfiles import csv_text, read_csv
from .errors import UserError
from .rundir import RunFolder

COLUMNS = {"checks.csv": ("set", "dataset", "decoding", "step", "check", "about", "value", "samples"),
           "lens.csv": ("step", "role", "dataset", "layer", "top1", "positions")}


class InspectFolder:
    """A run's RUN/inspect/: written by selprune inspect (holding the run's lock), read by the report."""

    def __init__(self, run: RunFolder):
        self.path = run.path / "inspect"

    def write(self, settings: str, records: list[dict], tables: dict[str, list[dict]]) -> None:
        """The settings (TOML), the generations (JSON lines) and the tables of COLUMNS, each replaced atomically."""
        self.path.mkdir(exist_ok=True)
        files = {"generations.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                 **{name: csv_text(rows, COLUMNS[name]) for name, rows in tables.items()},
                 "settings.toml": settings}
        for name, text in files.items():
            atomic.write_text(self.path / name, text)

    def table(self, name: str) -> list[dict[str, str]]:
        """checks.csv or lens.csv as rows of strings; [] when the run was never inspected."""
        path = self.path / name
        return read_csv(path, COLUMNS[name]) if path.is_file() else []

    def records(self) -> list[dict]:
        """generations.jsonl; [] when the run was never inspected."""
        path = self.path / "generations.jsonl"
        if not path.is_file():
            return []
        try:
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (UnicodeDecodeError, ValueError) as exc:
            raise UserError(f"{path} is not a file selprune inspect wrote ({exc}): run selprune inspect again") from None
