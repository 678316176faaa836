"""Datasets for unlearning: built-in corpora and user files as documents, then token chunks, then a run's splits."""

from .chunks import Chunks, Splits, make_splits, mask_for_mlm
from .sources import PIECE_CHARS, Document, list_builtin, load_documents, split_text
from .splits import RunDocuments, read_documents, run_documents, run_splits

__all__ = ["PIECE_CHARS", "Chunks", "Document", "RunDocuments", "Splits", "list_builtin", "load_documents",
           "make_splits", "mask_for_mlm", "read_documents", "run_documents", "run_splits", "split_text"]
