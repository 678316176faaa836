"""The unlearning loop: data -> model -> for each learning rate (steps of the method, a checkpoint every
--eval-every) -> the kept result -> model and report.

Each learning rate trains its own copy of the original model in RUN/lr-LR/ (checkpoints.py) and keeps one
checkpoint under the retain budget (budget.py); the folder keeps the learning rate whose kept checkpoint
forgets most: the defender's best, as relearn's attacker keeps the learning rate that recovers most.
Training computes in bfloat16 on float32 weights where the hardware has bfloat16 (as the relearning attack
does); evaluation runs on a copy in the dtype a pruning run evaluates in, on the run's evaluation split.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .. import atomic
from ..arch import architecture_of, text_config
from ..batching import auto_batch_size
from ..console import Console
from ..data import run_splits
from ..errors import UserError
from ..evaluate import drop_standard_error, evaluate_causal, frequent_tokens, top1_text
from ..finetune import batches, hold_at_zero, load_trained_weights, require_one_batch
from ..models import load_model, model_fingerprint, resolve_device, resolve_dtype
from ..ranks import Head
from ..rundir import EVAL_COLUMNS, RunFolder
from ..selection import step_seed
from .budget import Budget, budget_of
from .checkpoints import Checkpoints, Committed, read_result, write_result
from .methods import METHODS, Context, steering_vector
from .settings import UnlearnConfig
from .start import start_of

RESUMABLE_CHANGES = {"device", "output", "compile"}  # settings that do not change the result


@dataclass
class Outcome:
    """One learning rate's finished training."""

    lr: float
    rows: list[dict]
    kept: int
    stopped: str | None

    def drop(self, role: str, step: int | None = None) -> float:
        step = self.kept if step is None else step
        return next(float(r["top1_drop_rel"]) for r in self.rows if int(r["step"]) == step and r["role"] == role)


class Unlearning(Console):
    """State of one unlearning; `execute` drives it. The public entry point is selprune.unlearn.unlearn."""

    def __init__(self, config: UnlearnConfig, resume: bool = False, quiet: bool = False):
        config.validate()
        self.start = start_of(config)
        if self.start:  # recorded as RUN:STEP, RUN absolute, so that any directory rebuilds the same model
            config = replace(config, from_run=self.start.spec)
        self.config, self.quiet = config, quiet
        self.method = METHODS[config.method]
        self.budget: Budget | None = budget_of(config)
        self.folder = RunFolder(config.output_dir)
        if resume:
            self.folder.open_for_resume(config, RESUMABLE_CHANGES)
        else:
            self.folder.create()

    # -- set-up --------------------------------------------------------------------------------

    def load(self) -> None:
        c = self.config
        self.base, self.tokenizer = load_model(c.model, dtype="float32", device=c.device,
                                               trust_remote_code=c.trust_remote_code)
        if architecture_of(self.base.config).masked_lm:
            raise UserError(f"{c.model} is a masked LM, and the unlearning methods train a causal language model")
        self.folder.check_model(c.model, model_fingerprint(self.base))  # recorded at the folder's first commit
        self.device = resolve_device(c.device)
        self.eval_dtype = resolve_dtype(c.dtype, self.device)  # what a pruning run with these settings evaluates in
        self.bf16 = self.eval_dtype == torch.bfloat16
        self.evaluation_model = None  # the model in eval_dtype, made at the first evaluation (_evaluation_copy)
        self.eval_batch = auto_batch_size(self.base, c.chunk_len, self.device)
        self.data = {role: run_splits(c, self.tokenizer, spec, role=role)
                     for role, spec in (("forget", c.forget), ("retain", c.retain))}
        self.training = {role: splits.score for role, splits in self.data.items()}  # what the steps draw from
        if c.distill_data:
            self.training["distill"] = run_splits(c, self.tokenizer, c.distill_data, role="retain").score
        for role, chunks in self.training.items():
            require_one_batch(f"the {role} data's scoring split", chunks, c.batch_size, "--score-tokens",
                              "--batch-size")
        self.skip = {role: frequent_tokens(s.score.input_ids, s.score.attention_mask, c.skip_top_tokens)
                     for role, s in self.data.items()}
        self.paired: dict[str, torch.Tensor] = {}  # per role, the hits per chunk of the evaluation drops start from
        self.original = None  # the original model's top-1 per role, when the unlearning starts from a pruned one
        if self.start:
            self.original = {r["role"]: r["top1"] for r in self.evaluate(self.base, 0, None)}
            self.start.recipe.apply(self.base)  # from here on, the starting model: the teacher, NPO's reference
        control = steering_vector(text_config(self.base.config).hidden_size, c.rmu_coefficient, c.seed)
        self.context = Context(c, self.base if self.method.reference else None, control.to(self.device))
        self._base_rows: list[dict] | None = None
        self.log(f"unlearn: {c.method} on forget={c.forget} retain={c.retain} model={c.model}, lr "
                 f"{', '.join(f'{lr:g}' for lr in c.learning_rates)}, {c.total_steps} steps of {c.batch_size} x {c.chunk_len} "
                 f"tokens{f', budget: retain drop <= {self.budget.limit:.2f}% ({self.budget.source})' if self.budget else ''}"
                 f" -> {self.folder.path}")
        if self.start:
            self.log(self.start.describe())

    # -- evaluation ----------------------------------------------------------------------------

    def evaluate(self, model, step: int, base: dict[str, float] | None) -> list[dict]:
        """The forget and retain rows of one checkpoint, measured as a pruning run measures its steps. Without a
        `base`, this evaluation is the one that later drops are measured from, their chunks paired with its."""
        evaluated = model if self.eval_dtype == torch.float32 else self._evaluation_copy(model)
        evaluated.eval()
        head, rows = Head(evaluated), []
        for role, splits in self.data.items():
            m, self.eval_batch = evaluate_causal(evaluated, splits.eval.input_ids, splits.eval.attention_mask,
                                                 self.eval_batch, self.skip[role], fused=self.config.compile,
                                                 head=head, what=f"the model after {step} {self.config.method} steps "
                                                 f"on {role} data")
            if base is None:
                self.paired[role] = m.per_chunk
            start = m.top1 if base is None else base[role]
            row = {"step": step, "fraction_pruned": self.start.fraction if self.start else 0.0,
                   "units_pruned": self.start.units if self.start else 0, "role": role,
                   "dataset": getattr(self.config, role), **m.as_dict(),
                   "top1_drop_rel": 100 * (start - m.top1) / start if start else float("nan"),
                   "top1_drop_abs": 100 * (start - m.top1),
                   "top1_drop_abs_se": 100 * drop_standard_error(self.paired[role], m.per_chunk)}
            rows.append({k: row[k] for k in EVAL_COLUMNS})
        return rows

    def _evaluation_copy(self, model):
        """The model in the evaluation dtype, loaded once as a pruning run loads it (a cast copy would differ:
        `.to(bf16)` casts a rotary embedding's float32 frequencies too), its weights overwritten at each
        checkpoint."""
        if self.evaluation_model is None:
            c = self.config
            self.evaluation_model = load_model(c.model, dtype=str(self.eval_dtype).removeprefix("torch."),
                                               device=c.device, trust_remote_code=c.trust_remote_code)[0]
        load_trained_weights(self.evaluation_model, model)
        return self.evaluation_model

    def base_rows(self) -> list[dict]:
        """Step 0: the starting model (the original, or --from's pruned one), evaluated once for every learning
        rate, its drops relative to the original's accuracy."""
        if self._base_rows is None:
            self._base_rows = self.evaluate(self.base, 0, self.original)
        return self._base_rows

    # -- training ------------------------------------------------------------------------------

    def train(self, lr: float) -> Outcome:
        """One learning rate, from its last committed checkpoint to its end (--steps, or past the budget)."""
        c, steps = self.config, self.config.total_steps
        checkpoints = Checkpoints(self.folder.path, lr)
        done = checkpoints.committed()
        if done is None:
            if not self.folder.config_path.is_file():  # the first commit of the folder: its settings, then its model
                atomic.write_text(self.folder.config_path, c.to_toml())
            if not self.folder.fingerprint_path.is_file():  # also after a kill between the two
                self.folder.record_model()
            done = Committed(0, 0, self.base_rows(), None, None, None)
            checkpoints.commit(0, 0, done.rows, None, None, None)
        if done.stopped or done.step >= steps:
            return Outcome(lr, done.rows, done.kept, done.stopped)
        if done.step:
            self.log(f"lr {lr:g}: resuming after step {done.step} of {steps}")
        model, trained, optimizer = self.trainer(lr)
        if done.weights is not None:
            with torch.no_grad():
                for name, value in done.weights.items():
                    trained[name].copy_(value)
            optimizer.load_state_dict(done.optimizer)
        order = {role: batches(len(chunks.input_ids), c.batch_size, c.seed + i)
                 for i, (role, chunks) in enumerate(self.training.items())}
        for _ in range(done.step):  # the batches that the committed steps drew
            for draws in order.values():
                next(draws)
        # step 0 again when resuming: its hits per chunk pair every drop (self.paired); it is what was committed
        base = self.original or {r["role"]: float(r["top1"]) for r in self.base_rows()}
        rows, kept, stopped, t0 = list(done.rows), done.kept, None, time.perf_counter()
        for step in range(done.step + 1, steps + 1):
            torch.manual_seed(step_seed(c.seed, step))  # dropout, in the models that have it
            loss = self.step(model, optimizer, {role: next(draws) for role, draws in order.items()})
            if step % c.eval_every and step != steps:
                continue
            new = self.evaluate(model, step, base)
            rows += new
            kept, stopped = self._keep(step, new, kept, Outcome(lr, rows, kept, None))
            checkpoints.commit(step, kept, rows, trained, optimizer.state_dict(), stopped)
            model.train()
            self._print(lr, step, new, loss.item(), time.perf_counter() - t0)
            t0 = time.perf_counter()
            if stopped:
                self.log(f"lr {lr:g}: stopped: {stopped}")
                break
        return Outcome(lr, rows, kept, stopped)

    def trainable_copy(self):
        """The model a learning rate trains: a copy of the starting model, started as the method says (distill's
        noised student), with --from's pruned units zero again (only the mask: a healed run's saved weights would
        undo the noise)."""
        model = copy.deepcopy(self.base).train()
        if self.method.init:
            self.method.init(model, self.config)
            if self.start:
                self.start.recipe.prune(model)
        return model

    def trainer(self, lr: float):
        """(model, {name: the parameters the method trains}, AdamW without weight decay) for one learning rate;
        --from's pruned units held at zero."""
        model = self.trainable_copy()
        trained = dict(self.method.trained(model, self.config))
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in trained)
        if self.start:
            hold_at_zero(self.start.recipe.neurons(model), self.start.recipe.mask)
        return model, trained, torch.optim.AdamW(list(trained.values()), lr=lr, weight_decay=0.0)

    def step(self, model, optimizer, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        """One optimiser step of the method on the batches of these rows of each training split; its loss."""
        batch = {role: self._batch(role, index) for role, index in rows.items()}
        retain = joined(batch["retain"], batch.get("distill"))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.method.loss(model, batch["forget"], retain, self.context)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def _batch(self, role: str, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chunks = self.training[role]
        return chunks.input_ids[index].to(self.device), chunks.attention_mask[index].to(self.device)

    def _keep(self, step: int, rows: list[dict], kept: int, so_far: Outcome) -> tuple[int, str | None]:
        """The checkpoint kept after this one, and why training stops here (None: it goes on)."""
        retain = float(rows[1]["top1_drop_rel"])
        if self.budget is None:
            return step, None
        if retain > self.budget.limit:
            if self.method.repairs:
                return kept, None
            return kept, (f"retain drop {retain:.2f}% > {self.budget.limit:.2f}% ({self.budget.source}), so it keeps "
                          f"step {kept}")
        forget = float(rows[0]["top1_drop_rel"])
        return (step if self.budget.keeps(forget, so_far.drop("forget")) else kept), None

    def _print(self, lr: float, step: int, rows: list[dict], loss: float, seconds: float) -> None:
        f, r = rows
        self.log(f"lr {lr:g} step {step:4d}/{self.config.total_steps}  loss {loss:.4f}  forget top1 {top1_text(f)} "
                 f"(drop {f['top1_drop_rel']:5.1f}%)  retain top1 {top1_text(r)} (drop {r['top1_drop_rel']:5.1f}%)  "
                 f"[{seconds:.1f} s]")

    # -- the loop ------------------------------------------------------------------------------

    def execute(self) -> Path:
        try:
            finished = read_result(self.folder.path)
            if finished is not None:  # its report again: a kill may have come between result.json and the report
                self.log(f"{self.folder.path}: already complete (kept lr {finished['lr']:g}, step "
                         f"{finished['kept_step']}); report: {self.write_report()}")
                return self.folder.path
            self.load()
            outcomes = [self.train(lr) for lr in self.config.learning_rates]
            best = max(outcomes, key=lambda o: o.drop("forget"))  # the first of equals: the order given
            if self.method.repairs and self.budget and best.kept == 0:
                self.log(f"no {self.config.method} checkpoint came within the retain budget, so the folder keeps step 0, "
                         "the starting model: train longer (--steps, --distill-tokens) or at another --lr")
            self.save_model(best)
            write_result(self.folder.path, best.lr, best.kept, best.rows, best.stopped)
            self.log(f"report: {self.write_report()}")
            self.log(f"kept: lr {best.lr:g} at step {best.kept}: forget drop {best.drop('forget'):.1f}%, retain drop "
                     f"{best.drop('retain'):.1f}%" + (f" (the largest forget drop of lr "
                     f"{', '.join(f'{o.lr:g}' for o in outcomes)} within the budget)" if len(outcomes) > 1 else ""))
        finally:
            self.folder.unlock()
        return self.folder.path

    def write_report(self) -> Path:
        from ..report import write_report  # the report reads unlearning folders (rundir), which read these settings

        return write_report([self.folder.path], self.folder.path)

    def save_model(self, best: Outcome) -> None:
        """RUN/model/: the original model with the kept checkpoint's weights (float32, safetensors) and its
        tokenizer, moved into place when complete."""
        model = copy.deepcopy(self.base)
        weights = Checkpoints(self.folder.path, best.lr).kept_weights(best.kept)
        if weights is not None:
            with torch.no_grad():
                parameters = dict(model.named_parameters())
                for name, value in weights.items():
                    parameters[name].copy_(value)
        target = self.folder.model_path
        with atomic.staged_folder(target) as tmp:
            model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
        self.log(f"unlearned model: {target}")


def joined(batch, more):
    """One batch of the chunks of both (the same length), or `batch` when there is no second."""
    return batch if more is None else tuple(torch.cat(pair) for pair in zip(batch, more))
