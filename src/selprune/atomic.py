"""Writes that never leave a half-written file: write beside the target, then rename over it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk: leave the old file and no half-written one
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # write() and fsync() fail naming no file: name the one being written
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno or 0), str(path)) from exc
        raise
    except BaseException:  # a kill signal: the same
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder into place, replacing an older one."""
    old = target.with_name(f".{target.name}.old{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A fresh folder beside `target` to write into: when the block ends, it replaces `target` whole; when the
    block fails, it is removed and `target` stays as it was. So `target` is never half-written."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process of the same id
    try:
        yield tmp
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only there when writing failed
