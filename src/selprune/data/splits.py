"""A run's splits of one dataset, from its settings: the single place where run, relearn, inspect and unlearn
get the documents that a run scored on, evaluated on and held out.

The splits depend on the exact list of documents, because one seeded shuffle orders them. Streamed `hf:`
datasets are read only as far as the budgets need (HF_CHARS_PER_TOKEN characters a token), so that limit is
computed here from the run's settings alone. A relearning attack reads further for its own tokens: those
documents come after the run's, shuffled on their own, so the run's splits stay exactly as they were.
"""

from __future__ import annotations

from dataclasses import dataclass

from .chunks import Splits, make_splits
from .sources import Document, load_documents

HF_CHARS_PER_TOKEN = 16  # ~4 characters a token, x4: ample text for a budget without streaming a whole dataset
ROLES = ("forget", "retain", "watch")


@dataclass(frozen=True)
class RunDocuments:
    """A dataset's documents as a run reads them, and those read past the run's limit for a relearn split."""

    run: list[Document]
    later: list[Document]


def read_documents(spec: str, tokens: int) -> list[Document]:
    """Documents of `spec`; a streamed `hf:` dataset stops once it has ample text for `tokens` tokens."""
    return load_documents(spec, max_chars=_hf_chars(spec, tokens))


def run_documents(settings, spec: str, *, role: str = "forget", relearn_tokens: int = 0) -> RunDocuments:
    """The documents of `spec` that a run with `settings` reads, and for a relearning attack of
    `relearn_tokens` tokens those read after them."""
    own = _run_tokens(settings, role)
    docs = read_documents(spec, own + relearn_tokens)
    limit = _hf_chars(spec, own)
    taken = len(docs) if limit is None else _documents_within(docs, limit)
    return RunDocuments(docs[:taken], docs[taken:])


def run_splits(settings, tokenizer, spec: str, *, role: str = "forget", relearn_tokens: int = 0,
               relearn_chunk_len: int | None = None, documents: RunDocuments | None = None) -> Splits:
    """The splits of `spec` that a run with `settings` made (a watched dataset has no scoring split).

    Without relearn_tokens, the run's own parts: with --harden on the forget data, its held-out relearn
    part and its hardening part too. With relearn_tokens, a relearning attack's: its relearn part starts where
    the run's does. `settings` needs chunk_len, score_tokens, eval_tokens and seed; the --harden fields are
    read where it has them. `documents`: what run_documents gave for the same arguments, read earlier.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    docs = run_documents(settings, spec, role=role, relearn_tokens=relearn_tokens) if documents is None else documents
    hardening = _hardening(settings, role) and not relearn_tokens
    return make_splits(docs.run, tokenizer, later=docs.later, chunk_len=settings.chunk_len, seed=settings.seed,
                       score_tokens=0 if role == "watch" else settings.score_tokens,
                       eval_tokens=settings.eval_tokens, name=spec,
                       relearn_tokens=relearn_tokens or (settings.harden_holdout if hardening else 0),
                       relearn_chunk_len=relearn_chunk_len,
                       relearn_option="--relearn-tokens" if relearn_tokens else "--harden-holdout",
                       harden_tokens=settings.harden_tokens if hardening else 0,
                       harden_chunk_len=getattr(settings, "harden_chunk_len", None))


def _hardening(settings, role: str) -> bool:
    """--harden trains on the forget data only."""
    return bool(getattr(settings, "harden", 0)) and role == "forget"


def _run_tokens(settings, role: str) -> int:
    """The tokens a run takes from one dataset (the scoring budget counts for a watched one too, as it always
    has, so that the document list of older runs stays the same)."""
    tokens = settings.score_tokens + settings.eval_tokens
    if _hardening(settings, role):
        tokens += settings.harden_holdout + settings.harden_tokens
    return tokens


def _hf_chars(spec: str, tokens: int) -> int | None:
    return HF_CHARS_PER_TOKEN * tokens if spec.startswith("hf:") else None


def _documents_within(docs: list[Document], max_chars: int) -> int:
    """How many of `docs` load_documents keeps under `max_chars`: it stops before a document once the
    documents before it reach the limit."""
    chars = 0
    for count, doc in enumerate(docs):
        if chars >= max_chars:
            return count
        chars += len(doc.text)
    return len(docs)
