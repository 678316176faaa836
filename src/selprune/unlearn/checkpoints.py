"""The files of an unlearning folder beyond a run's: each learning rate's training, and the folder's result.

    RUN/lr-LR/metrics.csv                   that learning rate's rows (rundir.COLUMNS), one per checkpoint and dataset
    RUN/lr-LR/state/progress.json           its commit point: the last checkpoint, the kept one, the checksums
    RUN/lr-LR/state/weights-STEP.safetensors   the trained weights at the last and at the kept checkpoint
    RUN/lr-LR/state/optimizer-STEP.pt       the optimiser's state at the last checkpoint
    RUN/state/result.json                   written last: which learning rate and checkpoint the folder keeps

A checkpoint's files are written first and progress.json last, each atomically; files of a checkpoint that
was not committed are ignored and later replaced. Resume trusts nothing: every committed file must hash to
what progress.json recorded, or the folder is refused with a line that names the file.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from .. import atomic
from ..errors import UserError
from ..csvfiles import read_csv
from ..rundir import COLUMNS, RunFolder, metrics_text

FORMAT = 1


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Committed:
    """One learning rate's training as far as it was committed."""

    step: int  # the last checkpoint (0: only the original model was evaluated)
    kept: int  # the checkpoint it keeps
    rows: list[dict]
    stopped: str | None  # why it ended before --steps, if it did
    weights: dict[str, torch.Tensor] | None  # the trained weights at `step` (None at step 0)
    optimizer: dict | None


class Checkpoints:
    """RUN/lr-LR/: one learning rate's metrics and committed checkpoint."""

    def __init__(self, root: Path, lr: float):
        self.lr = lr
        self.path = Path(root) / f"lr-{lr:g}"
        self.metrics_path = self.path / "metrics.csv"
        self.state = self.path / "state"
        self.progress_path = self.state / "progress.json"

    def weights_path(self, step: int) -> Path:
        return self.state / f"weights-{step}.safetensors"

    def optimizer_path(self, step: int) -> Path:
        return self.state / f"optimizer-{step}.pt"

    def commit(self, step: int, kept: int, rows: list[dict], weights: dict | None, optimizer: dict | None,
               stopped: str | None) -> None:
        """Write a checkpoint: its weights and optimiser state, the metrics, then progress.json (the commit)."""
        self.state.mkdir(parents=True, exist_ok=True)
        files = {self.metrics_path: metrics_text(rows).encode()}
        if weights is not None:
            buffer = io.BytesIO()
            torch.save(optimizer, buffer)
            files[self.weights_path(step)] = save_tensors({k: v.detach().cpu().contiguous() for k, v in weights.items()})
            files[self.optimizer_path(step)] = buffer.getvalue()
        for path, data in files.items():
            atomic.write_bytes(path, data)
        sums = {self._name(path): sha256(data) for path, data in files.items()}
        if kept not in (0, step):  # the kept checkpoint's weights stay, with the checksum they were committed with
            kept_name = self._name(self.weights_path(kept))
            sums[kept_name] = self._progress()["sha256"][kept_name]
        progress = {"format": FORMAT, "completed_step": step, "kept_step": kept, "stopped": stopped, "sha256": sums}
        atomic.write_text(self.progress_path, json.dumps(progress))
        for stale in self.state.glob("*-*.*"):  # the checkpoints no longer named
            if self._name(stale) not in sums:
                stale.unlink()

    def committed(self) -> Committed | None:
        """What was committed, verified; None when nothing was."""
        if not self.progress_path.is_file():
            return None
        progress = self._progress()
        step = progress["completed_step"]
        rows = [r for r in read_csv(self.metrics_path, COLUMNS) if r["step"].isdigit() and int(r["step"]) <= step]
        if sha256(metrics_text(rows).encode()) != progress["sha256"]["metrics.csv"]:
            raise self._damaged(self.metrics_path, f"differs from what checkpoint {step} committed")
        weights = optimizer = None
        for name, checksum in progress["sha256"].items():
            if name != "metrics.csv" and sha256(self._read(self.path / name)) != checksum:
                raise self._damaged(self.path / name, f"differs from what checkpoint {step} committed")
        if step:
            weights = load_tensors(self._read(self.weights_path(step)))
            optimizer = torch.load(io.BytesIO(self._read(self.optimizer_path(step))), weights_only=True)
        return Committed(step, progress["kept_step"], rows, progress["stopped"], weights, optimizer)

    def kept_weights(self, kept: int) -> dict[str, torch.Tensor] | None:
        """The trained weights at the kept checkpoint (checked by `committed`); None for the original model."""
        return load_tensors(self._read(self.weights_path(kept))) if kept else None

    def _name(self, path: Path) -> str:
        """A file's name in progress.json: its path inside RUN/lr-LR/."""
        return path.relative_to(self.path).as_posix()

    def _progress(self) -> dict:
        try:
            data = json.loads(self.progress_path.read_text())
            ok = (data["format"] == FORMAT and isinstance(data["completed_step"], int)
                  and isinstance(data["kept_step"], int) and 0 <= data["kept_step"] <= data["completed_step"]
                  and isinstance(data["sha256"], dict) and "metrics.csv" in data["sha256"])
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise self._damaged(self.progress_path, "is not a progress record selprune wrote")
        return data

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise self._damaged(path, "is missing") from None

    @staticmethod
    def _damaged(path: Path, what: str) -> UserError:
        return UserError(f"cannot resume: {path} {what}; nothing was changed. Unlearning is deterministic: redo it "
                         "in a new folder with --output")


def write_result(root: Path, lr: float, kept: int, rows: list[dict], stopped: str | None) -> None:
    """RUN/metrics.csv (the kept learning rate's rows), then RUN/state/result.json: the folder is finished."""
    folder, text = RunFolder(root), metrics_text(rows)
    atomic.write_text(folder.metrics_path, text)
    folder.result_path.parent.mkdir(exist_ok=True)
    result = {"format": FORMAT, "lr": lr, "kept_step": kept, "completed_step": int(rows[-1]["step"]),
              "stopped": stopped, "sha256": {"metrics.csv": sha256(text.encode())}}
    atomic.write_text(folder.result_path, json.dumps(result))


def read_result(root: Path) -> dict | None:
    """The finished folder's record (lr, kept_step, ...), verified against metrics.csv; None if unfinished."""
    folder = RunFolder(root)
    path = folder.result_path
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
        text = metrics_text(read_csv(folder.metrics_path, COLUMNS))
        steps = [result[key] for key in ("kept_step", "completed_step")]
        ok = (result["format"] == FORMAT and isinstance(result["lr"], float) and result["lr"] > 0
              and all(isinstance(s, int) and not isinstance(s, bool) for s in steps) and 0 <= steps[0] <= steps[1]
              and result["sha256"]["metrics.csv"] == sha256(text.encode()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise UserError(f"{path} or the metrics.csv beside it is not what selprune unlearn wrote: redo the unlearning "
                        "in a new folder with --output")
    return result


@torch.no_grad()
def load_unlearned(model, folder: Path) -> None:
    """Put the weights an unlearning saved in folder (its RUN/model/) into `model`, a copy of the same original
    model: the recipe that rebuilds exactly the unlearned model without loading a second one."""
    saved = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        saved.update(load_tensors(path.read_bytes()))
    parameters = dict(model.named_parameters())
    foreign = sorted(set(saved) - set(parameters))
    if not saved or foreign:
        raise UserError(f"{folder} does not hold this model's weights ({', '.join(foreign[:3]) or 'none found'}): "
                        "give an unlearning folder of the same model")
    reshaped = [f"{name} {tuple(value.shape)}, the model's {tuple(parameters[name].shape)}"
                for name, value in sorted(saved.items()) if value.shape != parameters[name].shape]
    if reshaped:
        raise UserError(f"{folder} holds weights of another shape than this model's ({'; '.join(reshaped[:3])}): "
                        "give an unlearning folder of the same model")
    for name, value in saved.items():
        parameters[name].copy_(value)
