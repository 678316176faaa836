"""`selprune sweep GRID.toml`: a grid of ordinary runs that continues where it stopped, then its summary.

    grid.py     the grid file: its runs and comparisons, every setting checked before anything runs
    kinds.py    pruning runs and unlearnings: how far a folder got, what is left of it, how to run it
    runner.py   running it: the dry run's plan, the missing runs and their timings, the summary
    on_ray.py   --ray: each run as a task on a Ray cluster, ray imported only then
    tables.py   the summary's tables, and the marked tables of a results file (--results) with their plots
"""

from .grid import load
from .kinds import tokens_left
from .runner import sweep

__all__ = ["load", "sweep", "tokens_left"]
