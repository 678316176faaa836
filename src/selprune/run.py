"""The iterative loop: data -> model -> (statistics -> scores -> pruning -> evaluation) x steps -> report.

Every step ends with atomic writes of pruned.json, metrics.csv and state/progress.json (the commit
point), so a killed run resumes from its last completed step with the same result.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import atomic, distributed
from .arch import NeuronGroup, architecture_of
from .batching import auto_batch_size
from .config import RunConfig
from .data import load_documents, make_splits, mask_for_mlm
from .errors import UserError
from .evaluate import Head, Metrics, evaluate_causal, evaluate_masked, frequent_tokens
from .models import load_model
from .pruning import PrunedRecord, apply
from .scoring import importance, random_scores, scores, select
from .stats import NEEDS, collect

COLUMNS = ["step", "fraction_pruned", "neurons_pruned", "role", "dataset", "tokens", "top1", "top10",
           "loss", "perplexity", "top1_skip", "top10_skip", "loss_skip", "perplexity_skip",
           "top1_drop_rel", "top1_drop_abs"]
# Settings that may change between a run and its resumption without changing its result.
RESUMABLE_CHANGES = {"batch_size", "save_model", "device", "device_map", "output", "compile"}


@dataclass
class Dataset:
    """One side (forget or retain): its scoring chunks, evaluation chunks and skip tokens."""

    role: str
    spec: str
    score_ids: torch.Tensor
    score_mask: torch.Tensor
    eval_ids: torch.Tensor
    eval_mask: torch.Tensor
    eval_labels: torch.Tensor | None  # masked LMs only
    skip_ids: torch.Tensor


class Run:
    """State of one run; `execute` drives it. The public entry point is `run(config)`."""

    def __init__(self, config: RunConfig, resume: bool = False, quiet: bool = False):
        config.validate()
        distributed.init_from_env()
        self.out = config.output_dir
        self.config = _resume_config(self.out, config) if resume else config
        if not resume and distributed.is_main():
            _claim_output(self.out)
        distributed.barrier()
        self.main = distributed.is_main()
        self.quiet = quiet or not self.main
        self.log(f"selprune: forget={self.config.forget} retain={self.config.retain} "
                 f"model={self.config.model} group={self.config.group} scorer={self.config.scorer} -> {self.out}")

    def log(self, line: str) -> None:
        if not self.quiet:
            print(line, flush=True)

    def _bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, unit="tok", leave=False, disable=True if self.quiet else None)

    # -- set-up --------------------------------------------------------------------------------

    def load(self) -> None:
        c = self.config
        docs = {role: _documents(spec, c) for role, spec in (("forget", c.forget), ("retain", c.retain))}
        self.model, self.tokenizer = load_model(c.model, dtype=c.dtype, device=c.device,
                                                trust_remote_code=c.trust_remote_code,
                                                device_map=c.device_map or None)
        self.masked_lm = architecture_of(self.model.config).masked_lm
        self.head = None if self.masked_lm else Head(self.model)  # its band constants, once per run
        self.view = NeuronGroup(self.model, c.group)
        self.device = next(self.model.parameters()).device
        self.batch_size = c.batch_size or auto_batch_size(self.model, c.chunk_len, self.device)
        self.data = [self._dataset(role, spec, docs[role]) for role, spec in
                     (("forget", c.forget), ("retain", c.retain))]
        self.log(f"model: {type(self.model).__name__} {self.model.dtype} on {self.device}; "
                 f"{self.view.layers} layers x {self.view.size} {c.group} units = {self.view.total}; "
                 f"{c.score_tokens} scoring + {c.eval_tokens} evaluation tokens per dataset")

    def _dataset(self, role: str, spec: str, docs) -> Dataset:
        c = self.config
        splits = make_splits(docs, self.tokenizer, chunk_len=c.chunk_len, score_tokens=c.score_tokens,
                             eval_tokens=c.eval_tokens, seed=c.seed, name=spec)
        labels, eval_ids = None, splits.eval.input_ids
        if self.masked_lm:
            eval_ids, labels = mask_for_mlm(splits.eval, self.tokenizer, seed=c.seed)
        skip = frequent_tokens(splits.score.input_ids, splits.score.attention_mask, c.skip_top_tokens)
        return Dataset(role, spec, splits.score.input_ids, splits.score.attention_mask, eval_ids,
                       splits.eval.attention_mask, labels, skip)

    # -- one step's parts ----------------------------------------------------------------------

    def evaluate(self, d: Dataset) -> Metrics:
        with self._bar(int(d.eval_mask.sum()), f"eval {d.role}") as bar:
            if self.masked_lm:
                m, self.batch_size = evaluate_masked(self.model, d.eval_ids, d.eval_labels, d.eval_mask,
                                                     self.batch_size, d.skip_ids, bar)
            else:
                m, self.batch_size = evaluate_causal(self.model, d.eval_ids, d.eval_mask, self.batch_size,
                                                     d.skip_ids, bar, self.config.compile, self.head)
        return m

    def importance(self, d: Dataset) -> torch.Tensor:
        with self._bar(int(d.score_mask.sum()), f"stats {d.role}") as bar:
            stats, self.batch_size = collect(self.model, self.view, d.score_ids, d.score_mask,
                                             self.batch_size, bar, NEEDS[self.config.scorer],
                                             fused=self.config.compile)
        return importance(stats, self.config.scorer, self.view.unit)

    def score(self, step: int) -> torch.Tensor:
        c = self.config
        if c.scorer == "random":
            return random_scores((self.view.layers, self.view.size), c.seed, step)
        forget, retain = (self.importance(d) for d in self.data)
        return scores(forget, retain, c.eps_value, c.eps_relative)

    def units_per_step(self) -> int:
        c, v = self.config, self.view
        if c.selection == "per-layer":
            return round(c.fraction * v.size) * v.layers
        return round(c.fraction * v.total)

    # -- the loop ------------------------------------------------------------------------------

    def execute(self) -> Path:
        self.load()
        c = self.config
        if self.main:
            atomic.write_text(self.out / "config.toml", c.to_toml())
        done = _completed_step(self.out)
        record = _load_record(self.out, self.view, done)
        rows = _load_rows(self.out, done)
        apply(self.view, record.mask())
        if done >= 0:
            self.log(f"resuming after step {done} of {c.steps}")
        if done < 0:
            t0 = time.perf_counter()
            rows = [self._row(0, 0, d, self.evaluate(d), None) for d in self.data]
            self._commit(0, record, rows)
            self._print_step(0, rows, time.perf_counter() - t0)
        base = {r["role"]: float(r["top1"]) for r in rows if int(r["step"]) == 0}
        pruned = record.mask()
        for step in range(max(done, 0) + 1, c.steps + 1):
            t0 = time.perf_counter()
            new = select(self.score(step), pruned, self.units_per_step(), c.selection == "per-layer")
            apply(self.view, new)
            pruned |= new
            record.add(step, new)
            n = int(pruned.sum())
            rows += [self._row(step, n, d, self.evaluate(d), base[d.role]) for d in self.data]
            self._commit(step, record, rows)
            self._print_step(step, rows[-2:], time.perf_counter() - t0)
        if done >= c.steps:
            self.log("run already complete; nothing to redo")
        self.finish()
        return self.out

    def _row(self, step: int, n: int, d: Dataset, m: Metrics, base: float | None) -> dict:
        base = m.top1 if base is None else base
        row = {"step": step, "fraction_pruned": n / self.view.total, "neurons_pruned": n, "role": d.role,
               "dataset": d.spec, **m.as_dict(),
               "top1_drop_rel": 100 * (base - m.top1) / base if base else float("nan"),
               "top1_drop_abs": 100 * (base - m.top1)}
        return {k: row[k] for k in COLUMNS}

    def _commit(self, step: int, record: PrunedRecord, rows: list[dict]) -> None:
        if not self.main:
            return
        atomic.write_text(self.out / "pruned.json", json.dumps(record.to_json()))
        atomic.write_text(self.out / "metrics.csv", _csv(rows))
        (self.out / "state").mkdir(exist_ok=True)
        atomic.write_text(self.out / "state" / "progress.json", json.dumps({"completed_step": step}))

    def _print_step(self, step: int, rows: list[dict], seconds: float) -> None:
        f, r = rows
        self.log(f"step {step:3d}/{self.config.steps}  pruned {100 * f['fraction_pruned']:5.1f}%  "
                 f"forget top1 {f['top1']:.3f} (drop {f['top1_drop_rel']:5.1f}%)  "
                 f"retain top1 {r['top1']:.3f} (drop {r['top1_drop_rel']:5.1f}%)  "
                 f"ppl {f['perplexity']:.1f}/{r['perplexity']:.1f}  [{seconds:.1f} s]")

    def finish(self) -> None:
        if not self.main:
            return
        from .report import write_report

        report = write_report([self.out], self.out)
        self.log(f"report: {report}")
        if self.config.save_model:
            self.save_model()

    def save_model(self) -> None:
        """The pruned model and tokenizer in Hugging Face format, moved into place when complete."""
        target = self.out / "model"
        tmp = self.out / f".model.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        atomic.replace_dir(tmp, target)
        self.log(f"pruned model: {target}")


def run(config: RunConfig, resume: bool = False, quiet: bool = False) -> Path:
    """Run selective pruning as the config says; returns the run folder."""
    return Run(config, resume, quiet).execute()


def _documents(spec: str, c: RunConfig):
    """Streamed hub datasets stop after ample text for the budgets (~4 characters a token, x4)."""
    limit = 16 * (c.score_tokens + c.eval_tokens) if spec.startswith("hf:") else None
    return load_documents(spec, max_chars=limit)


# -- run-folder helpers ------------------------------------------------------------------------

def _claim_output(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output folder {out} already exists: add --resume to continue it, "
                        "or choose another with --output or --name")
    out.mkdir(parents=True, exist_ok=True)


def _resume_config(out: Path, config: RunConfig) -> RunConfig:
    saved_path = out / "config.toml"
    if not saved_path.is_file():
        raise UserError(f"nothing to resume in {out}: it has no config.toml; start it without --resume")
    saved = RunConfig.from_toml(saved_path)
    given, kept = config.to_dict(), saved.to_dict()
    changed = sorted(k for k in set(given) | set(kept)
                     if k not in RESUMABLE_CHANGES and given.get(k) != kept.get(k))
    if changed:
        raise UserError(f"cannot resume {out} with different settings ({', '.join(changed)}): "
                        "resume with the same settings, or start a new run with --output")
    return config


def _completed_step(out: Path) -> int:
    path = out / "state" / "progress.json"
    return json.loads(path.read_text())["completed_step"] if path.is_file() else -1


def _load_record(out: Path, view: NeuronGroup, done: int) -> PrunedRecord:
    path = out / "pruned.json"
    if done < 1 or not path.is_file():
        return PrunedRecord.for_view(view)
    record = PrunedRecord.from_json(json.loads(path.read_text()))
    record.truncate(done)
    return record


def _load_rows(out: Path, done: int) -> list[dict]:
    path = out / "metrics.csv"
    if done < 0 or not path.is_file():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= done]


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()
