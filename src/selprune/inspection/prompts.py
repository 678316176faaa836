"""Prompts from held-out text: prefixes of a run's evaluation documents, and Python function headers.

Every prompt comes from documents the run never scored on (for the text prompts, its evaluation split; for
the Python check, which needs many documented functions, any document outside the scoring split), so what
a model writes after it shows what the model can do, not what selection saw. Picks are spread evenly over
the documents and need no seed.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..data import Document

CODE_SUFFIXES = {".py", ".c", ".h", ".cc", ".cpp", ".hpp", ".go", ".rs", ".js", ".ts", ".java", ".rb", ".sh"}
MAX_HEADER_TOKENS = 192  # a long docstring would dominate the cost of generating a short body


@dataclass
class PromptSet:
    """Prompts of one kind from one source: `kind` says which checks judge them (checks.Check.kinds)."""

    name: str  # forget, retain or python
    dataset: str  # where the prompts come from, as the user named it
    kind: str  # text, code or python (function bodies)
    prompts: list[list[int]]  # token ids
    new_tokens: int


def suffix(doc: Document) -> str:
    """A document's file suffix, which tells source files apart, built-in or a user's (pieces of a long file
    keep it: ID#N)."""
    return PurePosixPath(doc.id.split("#")[0]).suffix


def _spread(items: list, count: int) -> list[int]:
    """Indices of `count` items spread evenly over the list (all of them when there are fewer)."""
    n = len(items)
    return list(range(n)) if n <= count else [(2 * i + 1) * n // (2 * count) for i in range(count)]


def text_prompts(documents: list[Document], tokenizer, count: int, length: int) -> list[list[int]]:
    """`count` prompts of exactly `length` tokens, each starting at a non-blank line of a document."""
    starts = [(doc, offset) for doc in documents for offset in _line_starts(doc.text)]
    prompts, used = [], set()
    for first in _spread(starts, count):
        for i in range(first, len(starts)):  # a start too near its document's end gives way to the next one
            doc, offset = starts[i]
            ids = tokenizer(doc.text[offset:offset + 16 * length], add_special_tokens=False)["input_ids"]
            if i not in used and len(ids) >= length:
                used.add(i)
                prompts.append(list(ids[:length]))
                break
    return prompts


def _line_starts(text: str) -> list[int]:
    starts, offset = [], 0
    for line in text.splitlines(keepends=True):
        if line.strip():
            starts.append(offset)
        offset += len(line)
    return starts


def function_prompts(documents: list[Document], tokenizer, count: int, body_tokens: int,
                     max_header: int = MAX_HEADER_TOKENS) -> list[list[int]]:
    """Headers (def line to docstring, at most max_header tokens) of `count` documented functions whose own
    body fits in body_tokens and is more than `pass`, dedented to column 0.

    A header stops at the docstring's closing quotes, before the line break. The tokenizer joins a line
    break with the next line's indent, so a prompt ending in a bare line break tells the model that the
    next line is not indented: the embedded model then left all 8 of 8 bodies empty, and wrote 7 without it.
    """
    def tokens(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    headers = []
    for doc in documents:
        for header, body in _documented_functions(doc.text):
            if body.strip() not in ("", "pass", "...") and len(tokens(body)) <= body_tokens:
                ids = tokens(header)
                if len(ids) <= max_header:
                    headers.append(list(ids))
    return [headers[i] for i in _spread(headers, count)]


def _documented_functions(source: str) -> list[tuple[str, str]]:
    """(header, body) of every function with a docstring, in source order; [] for text that does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines(keepends=True)
    found = []
    for node in sorted(ast.walk(tree), key=lambda n: getattr(n, "lineno", 0)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(node) is not None:
            docstring_end = node.body[0].end_lineno
            header = textwrap.dedent("".join(lines[node.lineno - 1:docstring_end])).rstrip()
            if header.startswith(("def ", "async def ")):  # not a docstring that dedents below its def
                body = "".join(lines[docstring_end:node.end_lineno])
                found.append((header, body))
    return found
