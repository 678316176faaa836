"""selprune: remove a capability from a language model by selective pruning."""

__version__ = "0.2.0"
