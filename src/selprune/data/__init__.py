"""Datasets for unlearning: built-in corpora and user files as documents, then token chunks."""

from .chunks import Chunks, Splits, make_splits, mask_for_mlm
from .sources import Document, list_builtin, load_documents

__all__ = ["Document", "load_documents", "list_builtin", "Chunks", "Splits", "make_splits", "mask_for_mlm"]
