"""Datasets for unlearning: built-in corpora and user files as documents, then token chunks."""

from .chunks import Chunks, Splits, make_splits, mask_for_mlm
from .sources import PIECE_CHARS, Document, list_builtin, load_documents, split_text

__all__ = ["PIECE_CHARS", "Chunks", "Document", "Splits", "list_builtin", "load_documents", "make_splits",
           "mask_for_mlm", "split_text"]
