"""The CSV files that selprune writes (a run's metrics.csv, an analysis's table, RUN/inspect/'s tables, a
sweep's summary.csv): written so that rows read back and written again give the same bytes, which is what
their checksums rely on, and read back only if they have every column."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .errors import UserError


def csv_text(rows: list[dict], columns) -> str:
    """A CSV's exact bytes: floats as repr (round-trips), strings as read, so re-writing read rows is exact."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(float(v)) if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def read_csv(path: Path, columns) -> list[dict[str, str]]:
    """A CSV that selprune wrote, as rows of strings with every column present; anything else is refused."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path} is not a CSV file selprune wrote ({exc}): regenerate it with selprune") from None
    if missing:
        raise UserError(f"{path} lacks the column(s) {', '.join(missing)}: regenerate it with selprune")
    for line, row in enumerate(rows, start=2):
        if None in row or any(row[c] is None for c in columns):
            raise UserError(f"{path} line {line} does not have {len(columns)} fields: the file is damaged")
    return rows
