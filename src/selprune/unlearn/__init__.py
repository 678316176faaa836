"""`selprune unlearn`: the fine-tuning unlearning methods of the field (gradient ascent, gradient difference,
NPO, RMU) on the same model, data splits and evaluation as a pruning run, in a folder of a run's shape, so
that report and relearn compare them with pruning under the same measures and the same attack."""

from __future__ import annotations

from pathlib import Path

from .methods import METHODS, Method
from .settings import UnlearnConfig

__all__ = ["METHODS", "Method", "UnlearnConfig", "unlearn"]


def unlearn(config: UnlearnConfig, resume: bool = False, quiet: bool = False) -> Path:
    """Unlearn as the config says; returns the unlearning folder."""
    from .runner import Unlearning  # the runner writes run folders (rundir), which read this package's settings

    return Unlearning(config, resume, quiet).execute()
