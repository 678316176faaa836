"""Show what the pruned model can still do: side-by-side generations, capability checks on them, and the
logit lens. `inspect_run` writes RUN/inspect/ and the run's report; `report_section` is its part of any
report (report.ANALYSES)."""

from .checks import Check, CheckResult
from .section import report_section
from .session import inspect_run
from .settings import InspectConfig

__all__ = ["Check", "CheckResult", "InspectConfig", "inspect_run", "report_section"]
