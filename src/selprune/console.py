"""What a command tells the person watching it: one line at a time, or nothing with --quiet."""

from __future__ import annotations


class Console:
    """Mixed into each command (run, relearn, inspect, unlearn): `log` prints a line at once (not buffered, so
    a long step shows when it starts), unless `quiet` (--quiet, or a process other than the first)."""

    quiet: bool = False

    def log(self, line: str) -> None:
        if not self.quiet:
            print(line, flush=True)
