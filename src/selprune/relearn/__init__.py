"""The relearning attack on a run's pruned (or an unlearning's) model: does what it forgot come back?
`relearn` writes RUN/relearn/ (RUN/relearn-NAME/) and the run's report; `report_section` is its part of any
report (report.ANALYSES)."""

from .attack import Relearn, evaluation_points, relearn
from .results import summarize_relearn
from .section import report_section
from .settings import COLUMNS, RelearnConfig

__all__ = ["COLUMNS", "Relearn", "RelearnConfig", "evaluation_points", "relearn", "report_section",
           "summarize_relearn"]
