"""The pieces every report section is drawn with: a figure, its PNG, the PNG as an HTML figure, a number.

report.py and the analyses' sections (relearn, inspection, sweep's summary) use these, so every plot has
the same size and resolution and every missing number reads the same.
"""

from __future__ import annotations

import base64
import html
import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def figure(width: float = 7.0, height: float = 5.0) -> Figure:
    """A figure drawn off-screen (no display, no pyplot state)."""
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def figure_html(data: bytes, caption: str) -> str:
    """A PNG inlined in the page, so a report is one self-contained file."""
    encoded = base64.b64encode(data).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def number(value, spec: str, unit: str = "") -> str:
    """value formatted with spec and unit; a dash where there is none (None, NaN, infinite)."""
    return "—" if value is None or not math.isfinite(value) else f"{value:{spec}}{unit}"
