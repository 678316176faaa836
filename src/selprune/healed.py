"""RUN/healed/: the weights of a `selprune run --heal`, one folder per step (healed/step-K/model.safetensors).

They are part of a step's commit: RunFolder.commit writes them before progress.json, which names each file
(by its path inside the run) with its checksum. A step's weights are kept while the commit names them: those
of the last committed step, and of the kept one when a stop criterion kept the step before.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

from . import atomic
from .errors import UserError

FOLDER, FILE = "healed", "model.safetensors"


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in pieces (healed weights are as large as the model)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for piece in iter(lambda: f.read(1 << 24), b""):
            digest.update(piece)
    return digest.hexdigest()


class HealedWeights:
    """The healed weights in a run folder, and the checksums by which its commits name them."""

    def __init__(self, run_path: Path):
        self.run_path = run_path
        self.root = run_path / FOLDER

    def path(self, step: int) -> Path:
        """The folder of the weights after `step` (a folder of safetensors, as recipe.py reads it)."""
        return self.root / f"step-{step}"

    def name(self, step: int) -> str:
        """The key of the weights after `step` among a commit's checksums."""
        return f"{FOLDER}/step-{step}/{FILE}"

    def write(self, step: int, weights: bytes, kept: int, committed: Callable[[], dict[str, str]]) -> dict[str, str]:
        """Write this step's weights; their checksums to commit, with the kept step's if that is another step
        (read from the step before's checksums, `committed()`, only then)."""
        path = self.run_path / self.name(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, weights)
        sums = {self.name(step): hashlib.sha256(weights).hexdigest()}
        if kept not in (0, step):  # committed by the step before, and still needed: the model the run keeps
            sums[self.name(kept)] = committed()[self.name(kept)]
        return sums

    def drop_except(self, sums: dict[str, str]) -> None:
        """Remove the weights that the commit's checksums no longer name (older steps, uncommitted leftovers)."""
        for folder in self.root.iterdir():
            if f"{FOLDER}/{folder.name}/{FILE}" not in sums:
                shutil.rmtree(folder)

    def steps(self, sums: dict[str, str], last: int) -> list[int]:
        """The steps up to `last` whose weights the commit's checksums name."""
        return [step for step in range(1, last + 1) if self.name(step) in sums]

    def verify(self, sums: dict[str, str], done: int, heal: bool, record: Path) -> None:
        """Every weights file the commit (`record`, up to step `done`) names hashes to its checksum, and a --heal
        run has its last step's."""
        if heal and done > 0 and self.name(done) not in sums:
            raise UserError(f"{record} names no healed weights for step {done} of a --heal run")
        for name, checksum in sums.items():
            if name.startswith(f"{FOLDER}/"):
                path = self.run_path / name
                if not path.is_file() or file_sha256(path) != checksum:
                    raise UserError(f"{path} is missing or differs from what step {done} committed")
