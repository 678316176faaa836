"""Turn one dataset spec string into a list of documents.

A spec is a built-in name, a text file, a folder, a glob, a .jsonl file or
`hf:NAME[:CONFIG][:SPLIT]`, optionally followed by filters on its documents:
`SPEC#lang!=python`, `SPEC#path=*.py,lang=python` (see FILTER_KEYS). Everything
the user can get wrong raises UserError with one line that says what to change.

The scoring and evaluation parts of a dataset never share a document, so a user's
document longer than PIECE_CHARS is cut into pieces (a single large file would
otherwise feed only one part). The built-in corpora are used as shipped: they were
built from documents of at most PIECE_CHARS characters.
"""

from __future__ import annotations

import fnmatch
import functools
import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import UserError

SPEC_FORMS = ("a text file, a folder, a glob such as 'src/**/*.py', a .jsonl file with a 'text' field, "
              "or hf:NAME[:CONFIG][:SPLIT]")
GLOB_CHARS = "*?["
PIECE_CHARS = 24_000  # longest document or piece, as in the built-in corpora (scripts/build_corpora.py)


# A document's language where its source says so: the built-ins' manifest, a .jsonl line's "language" field,
# else a file's suffix (code only: a suffix says little about a natural language).
SUFFIX_LANGUAGES = {".py": "Python", ".pyi": "Python", ".rs": "Rust", ".go": "Go", ".js": "JavaScript",
                    ".mjs": "JavaScript", ".ts": "TypeScript", ".c": "C", ".cc": "C++", ".cpp": "C++",
                    ".cxx": "C++", ".hpp": "C++", ".java": "Java", ".rb": "Ruby", ".sh": "Shell"}
FILTER_KEYS = {"lang": "the document's language (case-insensitive)", "path": "a glob on the document's path or id"}


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    language: str = ""  # "" where unknown


@dataclass(frozen=True)
class Filter:
    """One condition on a dataset's documents: key (lang or path), = (keep matches) or != (drop them)."""

    key: str
    keep: bool
    value: str

    def admits(self, doc: Document) -> bool:
        if self.key == "lang":
            match = doc.language.casefold() == self.value.casefold()
        else:
            match = fnmatch.fnmatchcase(doc.id, self.value)
        return match == self.keep

    def __str__(self) -> str:
        return f"{self.key}{'=' if self.keep else '!='}{self.value}"


def parse_spec(spec: str) -> tuple[str, list[Filter]]:
    """(the dataset, its filters) of `SPEC#KEY=VALUE,KEY!=VALUE`; a spec without '#' has no filters."""
    base, mark, text = spec.partition("#")
    if not mark:
        return spec, []
    filters = []
    for part in text.split(","):
        key, op, value = part.partition("!=") if "!=" in part else part.partition("=")
        if key.strip() not in FILTER_KEYS or not op or not value.strip():
            forms = "; ".join(f"{k}=VALUE or {k}!=VALUE: {about}" for k, about in FILTER_KEYS.items())
            raise UserError(f"dataset filter {part!r} in {spec!r} is not one of: {forms} (join several with ',')")
        filters.append(Filter(key.strip(), op == "=", value.strip()))
    if not base:
        raise UserError(f"{spec!r} has filters but no dataset before the '#': e.g. code#lang!=python")
    return base, filters


@functools.lru_cache(maxsize=1)
def _manifest() -> dict:
    return json.loads(_builtin_dir().joinpath("MANIFEST.json").read_text(encoding="utf-8"))


def _builtin_dir():
    return resources.files("selprune.data").joinpath("builtin")


def list_builtin() -> list[dict]:
    """One summary per shipped dataset, for `selprune list datasets`."""
    return [
        {
            "name": name,
            "documents": entry["documents"],
            "characters": entry["characters"],
            "languages": list(entry["languages"]),
            "licences": sorted({source["licence"] for source in entry["sources"]}),
            "description": entry["description"],
        }
        for name, entry in sorted(_manifest().items())
    ]


def load_documents(spec: str, *, max_chars: int | None = None,
                   max_documents: int | None = None) -> list[Document]:
    """Documents of `spec` (long ones in pieces, see split_text); reading stops once `max_chars` characters
    or `max_documents` documents and pieces are taken."""
    base, filters = parse_spec(spec)
    docs = list(_limit(_documents(base, filters), max_chars, max_documents))
    if not docs and filters:
        languages = sorted({d.language for d in _documents(base, []) if d.language})
        raise UserError(f"no document of {base!r} passes {','.join(map(str, filters))} (its languages: "
                        f"{', '.join(languages) or 'unknown'}); change the filter")
    if not docs:
        raise UserError(f"dataset {spec!r} has no documents with text; give it non-empty text")
    return docs


def _documents(spec: str, filters: list[Filter]) -> Iterator[Document]:
    """Filtered before they are cut in pieces, so that a path filter sees the file's own path."""
    docs = _builtin_documents(spec) if spec in _manifest() else _user_documents(spec)
    docs = (d for d in docs if all(f.admits(d) for f in filters))
    return docs if spec in _manifest() else _in_pieces(docs)


def split_text(text: str, limit: int = PIECE_CHARS) -> list[str]:
    """Consecutive pieces of at most `limit` characters that join back into `text`. Each is cut after the last
    blank line in its second half, else the last line end there, else at `limit`."""
    pieces = []
    while len(text) > limit:
        head = text[:limit]
        ends = (head.rfind(mark) + len(mark) for mark in ("\n\n", "\n"))
        cut = next((end for end in ends if end > limit // 2), limit)
        pieces.append(text[:cut])
        text = text[cut:]
    return [*pieces, text]


def _in_pieces(docs: Iterable[Document]) -> Iterator[Document]:
    """Documents longer than PIECE_CHARS become their pieces, with ids `ID#1`, `ID#2`, ..."""
    for doc in docs:
        pieces = split_text(doc.text)
        if len(pieces) == 1:
            yield doc
        else:
            yield from (Document(f"{doc.id}#{number}", piece, doc.language)
                        for number, piece in enumerate(pieces, start=1))


def _user_documents(spec: str) -> Iterator[Document]:
    if spec.startswith("hf:"):
        return _hf_documents(spec)
    if any(char in spec for char in GLOB_CHARS):
        return _glob_documents(spec)
    path = Path(spec)
    if path.is_dir():
        return _folder_documents(path)
    if path.is_file():
        return _jsonl_documents(path) if path.suffix == ".jsonl" else iter([_read_single_file(path)])
    names = ", ".join(sorted(_manifest()))
    raise UserError(f"dataset {spec!r} is neither a built-in ({names}) nor an existing file or folder; "
                    f"use a built-in, {SPEC_FORMS}")


def _limit(docs: Iterable[Document], max_chars: int | None, max_documents: int | None) -> Iterator[Document]:
    """Pass documents through until either limit is reached, so streaming sources stop early."""
    chars = 0
    for count, doc in enumerate(docs):
        if (max_documents is not None and count >= max_documents) or (max_chars is not None and chars >= max_chars):
            return
        chars += len(doc.text)
        yield doc


def _builtin_documents(name: str) -> Iterator[Document]:
    """A built-in's documents; an id starts with its source's name, which gives the language."""
    languages = {source["name"]: source["language"] for source in _manifest()[name]["sources"]}
    with _builtin_dir().joinpath(f"{name}.jsonl.gz").open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            yield Document(record["id"], record["text"], languages.get(record["id"].split("/", 1)[0], ""))


def _read_text(path: Path) -> str:
    """UTF-8 text of a file; binary and other encodings are refused with the file named."""
    data = path.read_bytes()
    if b"\0" in data:
        raise UserError(f"{path} is a binary file, not text; remove it or select text files with a glob")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}); convert it to UTF-8 or leave it out") from None


def _read_single_file(path: Path) -> Document:
    text = _read_text(path)
    if not text.strip():
        raise UserError(f"{path} is empty; give a file with text")
    return Document(str(path), text, SUFFIX_LANGUAGES.get(path.suffix, ""))


def _files_as_documents(paths: Iterable[Path], base: Path) -> Iterator[Document]:
    """Each non-empty file is one document, its id the path under `base`."""
    for path in paths:
        text = _read_text(path)
        if text.strip():
            yield Document(path.relative_to(base).as_posix(), text, SUFFIX_LANGUAGES.get(path.suffix, ""))


def _folder_documents(folder: Path) -> Iterator[Document]:
    """Every file below `folder`, hidden ones (.git and the like) excluded."""
    paths = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not paths:
        raise UserError(f"folder {folder} has no files; give a folder with text files")
    return _files_as_documents(paths, folder)


def _glob_documents(spec: str) -> Iterator[Document]:
    """`base/pattern`: the base is the leading part without glob characters."""
    parts = Path(spec).parts
    split = next(i for i, part in enumerate(parts) if any(c in part for c in GLOB_CHARS))
    base = Path(*parts[:split]) if split else Path(".")
    pattern = str(Path(*parts[split:]))
    paths = sorted(p for p in base.glob(pattern) if p.is_file())
    if not paths:
        raise UserError(f"glob {spec!r} matches no file; check the pattern (use ** for subfolders)")
    return _files_as_documents(paths, base)


def _jsonl_documents(path: Path) -> Iterator[Document]:
    """One document per line's `text`; the id is the line's `id` field or its line number."""
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {number} is not valid JSON ({exc.msg}); fix or remove it") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UserError(f"{path} line {number} has no string field 'text'; each line needs one")
        if record["text"].strip():
            language = record.get("language")
            yield Document(str(record.get("id", number)), record["text"], language if isinstance(language, str) else "")


def _parse_hf(spec: str) -> tuple[str, str | None, str]:
    parts = spec[len("hf:"):].split(":")
    if not parts[0] or len(parts) > 3:
        raise UserError(f"{spec!r} is not of the form hf:NAME[:CONFIG][:SPLIT]")
    name, config, split = (parts + [None, None])[:3]
    return name, config or None, split or "train"


def _load_hf_dataset(name: str, config: str | None, split: str):
    """A streaming Hugging Face dataset (only imported here: `datasets` is optional)."""
    try:
        import datasets
    except ImportError:
        raise UserError("hf: datasets need the optional 'datasets' library: pip install datasets") from None
    return datasets.load_dataset(name, config, split=split, streaming=True)


def _hf_documents(spec: str) -> Iterator[Document]:
    """Rows' `text` field, streamed; loading or network failures become one-line UserErrors."""
    name, config, split = _parse_hf(spec)
    try:
        for number, row in enumerate(_load_hf_dataset(name, config, split)):
            if "text" not in row:
                raise UserError(f"Hugging Face dataset {name!r} has no 'text' field (fields: "
                                f"{', '.join(sorted(row))}); use a dataset with a 'text' column")
            if isinstance(row["text"], str) and row["text"].strip():
                yield Document(f"{name}/{split}/{number}", row["text"])
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the optional library or the network
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot load Hugging Face dataset {name!r} (split {split!r}): {reason}") from None
