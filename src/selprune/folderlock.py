"""FOLDER/.lock: one selprune process at a time in a folder (a run's, an unlearning's, a sweep's). The process
holds an flock on the file, and writes its pid there for a second one's message; the OS frees it on exit."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import UserError

LOCK = ".lock"


class FolderLock:
    """The lock of a folder, held from acquire() until release() or the process's end."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._handle = None

    def acquire(self) -> None:
        """Hold the folder (made if missing): a second selprune refuses instead of mixing files."""
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"output {self.folder} is a file, not a folder: choose another --output")
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / LOCK, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise UserError(f"{self.folder} is in use by another selprune process (pid {holder}): wait for it "
                            "to finish, or choose another --output") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing releases the flock
            self._handle = None
