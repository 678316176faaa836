"""The iterative loop: data -> model -> (statistics -> scores -> pruning -> evaluation) x steps -> report.

Every step ends in a commit of the run folder (rundir.py), so a killed run resumes from its last
completed step with the same result.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import atomic, distributed
from .adaptive import block_slices, settled_rule
from .arch import NeuronGroup, architecture_of, neuron_group
from .batching import auto_batch_size
from .config import RunConfig
from .console import Console
from .data import Chunks, mask_for_mlm, run_documents, run_splits
from .errors import UserError
from .evaluate import Metrics, evaluate_causal, evaluate_masked, frequent_tokens, top1_text
from .finetune import require_one_batch, train_steps
from .heal import Healer
from .models import absolute_spec, context_length, load_model, model_fingerprint
from .pruning import PrunedRecord, apply, step_budget
from .ranks import Head
from .rundir import RUN_COLUMNS, RunFolder, summarize
from .scorers import SCORERS, importance
from .selection import scores, select, step_seed
from .stats import Stats, collect
from .unlearn.checkpoints import load_unlearned


@dataclass
class Dataset:
    """One dataset of the run (forget, retain, or watched): its scoring chunks, evaluation chunks, skip tokens."""

    role: str
    spec: str
    score_ids: torch.Tensor
    score_mask: torch.Tensor
    eval_ids: torch.Tensor
    eval_mask: torch.Tensor
    eval_labels: torch.Tensor | None  # masked LMs only
    skip_ids: torch.Tensor
    attack: Chunks | None = None  # with --harden, the forget dataset's hardening split: the attack's data
    score_labels: torch.Tensor | None = None  # a masked LM scored by attr: score_ids are then masked too

    @property
    def scoring(self) -> Chunks:
        """The scoring chunks as fine-tuning data: --heal trains on the retain dataset's."""
        return Chunks(self.score_ids, self.score_mask, [])


class Run(Console):
    """State of one run; `execute` drives it. The public entry point is `run(config)`."""

    def __init__(self, config: RunConfig, resume: bool = False, quiet: bool = False):
        config.validate()
        distributed.init_from_env()
        config = self.config = replace(config, model=absolute_spec(config.model))  # the same from any directory
        self.folder = RunFolder(config.output_dir)
        self.main = distributed.is_main()
        if self.main:  # the folder is held by rank 0 for the whole run
            if resume:
                self.folder.open_for_resume(config)
            else:
                self.folder.create()
        distributed.barrier()
        self.quiet = quiet or not self.main
        self.log(f"selprune: forget={config.forget} retain={config.retain} model={config.model} "
                 f"group={config.group} scorer={config.scorer} -> {self.folder}")

    def _bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, unit="tok", leave=False, disable=True if self.quiet else None)

    # -- set-up --------------------------------------------------------------------------------

    def load(self) -> None:
        c = self.config
        sides = [("forget", c.forget), ("retain", c.retain), *(("watch", spec) for spec in c.watch)]
        docs = {spec: run_documents(c, spec, role=role) for role, spec in sides}  # bad data fails before the model
        self.model, self.tokenizer = self._load_model()
        longest = context_length(self.model.config)
        for option, length in (("--chunk-len", c.chunk_len), ("--harden-chunk-len", c.harden and c.harden_chunk_len)):
            # the second is 0, so never too long, when --harden is off
            if longest is not None and length > longest:
                raise UserError(f"{option} {length} is longer than the model's context of {longest} tokens: "
                                f"use {option} {longest} or less")
        self.masked_lm = architecture_of(self.model.config).masked_lm
        for option, on in (("--harden", c.harden), ("--heal", c.heal)):
            if on and self.masked_lm:
                raise UserError(f"{option} fine-tunes the model as a causal language model, and {c.model} is a "
                                f"masked LM: drop {option}")
        self.head = Head(self.model)  # its band constants, once per run: pruning never touches the head
        self.neurons = neuron_group(self.model, c.group)
        self._check_budget()
        self.device = next(self.model.parameters()).device
        self.batch_size = c.batch_size or auto_batch_size(self.model, c.chunk_len, self.device)
        self.evaluated = [self._dataset(role, spec, docs[spec]) for role, spec in sides]
        self.data = self.evaluated[:2]  # forget and retain: what scoring measures
        n = self.neurons
        self.log(f"model: {type(self.model).__name__} {self.model.dtype} on {self.device}; "
                 f"{n.layers} layers x {n.units_per_layer} {c.group} units = {n.total_units}; "
                 f"{c.score_tokens} scoring + {c.eval_tokens} evaluation tokens per dataset")
        if c.harden:
            require_one_batch(f"--harden's attack data ({c.forget})", self.data[0].attack, c.harden_batch_size,
                              "--harden-tokens", "--harden-batch-size")
            self.log(f"harden: before scoring steps 2 to {c.steps}, {c.harden} fine-tuning steps of a copy of the "
                     f"model on {c.harden_batch_size} x {c.harden_chunk_len} tokens of {c.forget} (lr {c.harden_lr:g}); "
                     f"cost: about {hardening_cost(c):.1f}x the plain run's forward passes")
        self.healer = self._healer()

    def _healer(self) -> Healer | None:
        """With --heal, the master copy that heals the model after each step; refused where it cannot train."""
        c = self.config
        if not c.heal:
            return None
        if distributed.world() > 1:
            raise UserError("--heal trains one copy of the model in one process, and this run is distributed: run it "
                            "in one process, or drop --heal")
        retain = self.data[1].scoring
        require_one_batch(f"--heal's data (the scoring chunks of {c.retain})", retain, c.heal_batch_size,
                          "--score-tokens", "--heal-batch-size")
        self.log(f"heal: after each pruning step, {c.heal} fine-tuning steps of a float32 copy of the model on "
                 f"{c.heal_batch_size} x {c.chunk_len} tokens of {c.retain} (lr {c.heal_lr:g}), the pruned units "
                 f"held at zero; cost: about {healing_cost(c):.1f}x the plain run's forward passes")
        return Healer(self.model, c, retain)

    def _load_model(self):
        c = self.config
        model, tokenizer = load_model(c.model, dtype=c.dtype, device=c.device, trust_remote_code=c.trust_remote_code,
                                      device_map=c.device_map or None)
        self.folder.check_model(c.model, model_fingerprint(model))  # recorded by a new run's first commit
        return model, tokenizer

    def _check_budget(self) -> None:
        """Refuse a fraction that prunes nothing per step, or that would run out of units before the end."""
        c, n = self.config, self.neurons
        pool = n.units_per_layer if c.selection == "per-layer" else n.total_units
        per_step = self.units_per_step() // (n.layers if c.selection == "per-layer" else 1)
        where = "of a layer's" if c.selection == "per-layer" else "of the"
        if per_step == 0:
            raise UserError(f"--fraction {c.fraction} prunes 0 {where} {pool} {c.group} units per step: use at "
                            f"least --fraction {1 / pool:.3g}")
        if per_step * (c.steps - 1) >= pool:  # the last step may take fewer (step_budget), but not none
            raise UserError(f"{c.steps} steps x {per_step} {where} {pool} {c.group} units per step is more than "
                            f"there are: use at most --steps {-(-pool // per_step)}, or a smaller --fraction")

    def _dataset(self, role: str, spec: str, docs) -> Dataset:
        c = self.config
        splits = run_splits(c, self.tokenizer, spec, role=role, documents=docs)
        labels, eval_ids = None, splits.eval.input_ids
        if self.masked_lm:
            eval_ids, labels = mask_for_mlm(splits.eval, self.tokenizer, seed=c.seed)
        scored = splits.score or splits.eval  # a watched dataset's frequent tokens come from its evaluation chunks
        skip = frequent_tokens(scored.input_ids, scored.attention_mask, c.skip_top_tokens)
        score_ids, score_labels = scored.input_ids, None
        if self.masked_lm and "attribution" in SCORERS[c.scorer].sums:  # attr's loss: masked tokens, as evaluated
            score_ids, score_labels = mask_for_mlm(scored, self.tokenizer, seed=c.seed)
        return Dataset(role, spec, score_ids, scored.attention_mask, eval_ids, splits.eval.attention_mask,
                       labels, skip, splits.harden, score_labels)

    # -- one step's parts ----------------------------------------------------------------------

    def evaluate(self, d: Dataset) -> Metrics:
        """The metrics of d's evaluation chunks. With --eval-precision, the unpruned model reads them until its
        top-1 is known to that precision, and every later step, resumed or not, reads as many
        (RunFolder.eval_chunks): each drop compares the same tokens."""
        c, decided = self.config, self.folder.eval_chunks.get(d.spec)
        chunks, precision = slice(decided), 0.0 if decided else c.eval_precision  # slice(None): all of them
        what = f"{c.model} on {d.spec}"
        with self._bar(int(d.eval_mask[chunks].sum()), f"eval {d.role}") as bar:
            if self.masked_lm:
                m, self.batch_size = evaluate_masked(self.model, d.eval_ids[chunks], d.eval_labels[chunks],
                                                     d.eval_mask[chunks], self.batch_size, d.skip_ids, bar,
                                                     c.compile, self.head, what, precision=precision)
            else:
                m, self.batch_size = evaluate_causal(self.model, d.eval_ids[chunks], d.eval_mask[chunks],
                                                     self.batch_size, d.skip_ids, bar, c.compile, self.head, what,
                                                     precision=precision)
        if precision:
            self.folder.eval_chunks[d.spec] = m.chunks
        return m

    def statistics(self, d: Dataset, neurons: NeuronGroup, chunks: slice = slice(None)) -> Stats:
        """The sums of one group on one dataset's scoring chunks (or a block of them), under the current pruning."""
        mask, labels = d.score_mask[chunks], None if d.score_labels is None else d.score_labels[chunks]
        with self._bar(int(mask.sum()), f"stats {d.role}") as bar:
            stats, self.batch_size = collect(neurons.model, neurons, d.score_ids[chunks], mask, self.batch_size,
                                             bar, SCORERS[self.config.scorer].sums, fused=self.config.compile,
                                             labels=labels)
        return stats

    def importance(self, stats: Stats, neurons: NeuronGroup) -> torch.Tensor:
        """Per-unit importance of one group from its sums."""
        norms = neurons.out_norms() if SCORERS[self.config.scorer].weights else None
        return importance(stats, self.config.scorer, neurons.dims_per_unit, norms)

    def measure(self, d: Dataset, neurons: NeuronGroup) -> torch.Tensor:
        """Per-unit importance of one group on one dataset's scoring chunks, under the current pruning."""
        return self.importance(self.statistics(d, neurons), neurons)

    def combined(self, forget: list[torch.Tensor], retain: list[torch.Tensor]) -> torch.Tensor:
        """The scores of every unit from each part's importances: a union of groups scores each part on its own
        and sets them side by side."""
        c = self.config
        return torch.cat([scores(f, r, c.eps_value, c.relative_eps) for f, r in zip(forget, retain)], dim=1)

    def step_scores(self, step: int, neurons=None) -> torch.Tensor:
        """Scores of every unit.

        `neurons`: the units to measure, by default the model's; with --harden, an attacked copy's (`attacked`).
        """
        c, draw = self.config, SCORERS[self.config.scorer].draw
        if draw is not None:
            return draw((self.neurons.layers, self.neurons.units_per_layer), c.seed, step)
        forget, retain = ([self.measure(d, part) for part in (neurons or self.neurons).parts] for d in self.data)
        return self.combined(forget, retain)

    def hardened(self, step: int) -> bool:
        """--harden scores steps 2 and later on an attacked copy of the model."""
        return bool(self.config.harden) and step > 1

    def pruning_scores(self, step: int) -> torch.Tensor:
        """This step's scores; with --harden, from step 2 on, measured on an attacked copy that is then dropped."""
        if not self.hardened(step):
            return self.step_scores(step)
        return self.step_scores(step, self.attacked(step))  # the copy is freed with its group, on return

    def choose(self, step: int, pruned: torch.Tensor, budget: int) -> tuple[torch.Tensor, dict[str, int]]:
        """The units this step prunes, and the scoring tokens per dataset role that its statistics read."""
        c = self.config
        pick = partial(select, pruned=pruned, count=budget, per_layer=c.selection == "per-layer")
        if c.adaptive_scoring:
            return self.settled_selection(step, pick)
        read = SCORERS[c.scorer].sums  # a drawing scorer reads no tokens
        return pick(self.pruning_scores(step)), {d.role: int(d.score_mask.sum()) if read else 0 for d in self.data}

    def settled_selection(self, step: int, pick) -> tuple[torch.Tensor, dict[str, int]]:
        """--adaptive-scoring: the statistics in blocks, the selection `pick` makes from the sums after each block,
        until it settles (adaptive.py) or the scoring chunks run out."""
        neurons = self.attacked(step) if self.hardened(step) else self.neurons
        blocks = {d.role: block_slices(d.score_mask) for d in self.data}
        sums: dict[tuple[str, int], Stats] = {}
        read = dict.fromkeys(blocks, 0)
        last = max(len(b) for b in blocks.values())
        rule = settled_rule()
        for k in range(last):
            for d in self.data:
                if k < len(blocks[d.role]):
                    read[d.role] += int(d.score_mask[blocks[d.role][k]].sum())
                    for i, part in enumerate(neurons.parts):
                        stats = self.statistics(d, part, blocks[d.role][k])
                        if k:
                            sums[d.role, i].add(stats)
                        else:
                            sums[d.role, i] = stats
            forget, retain = ([self.importance(sums[d.role, i], part) for i, part in enumerate(neurons.parts)]
                              for d in self.data)
            new = pick(self.combined(forget, retain))
            if rule.after(new, k + 1, last):  # always true at the last block
                break
        return new, read

    def attacked(self, step: int):
        """The units of a copy of the model as pruned so far, after --harden steps of the relearning attack
        (selprune relearn's forget attack: float32 weights, AdamW, bf16 compute where the run computes in
        bf16), then cast back to the run's dtype for scoring. The units the attack recruits to bring the
        forget data back fire on it there, so scoring finds them. The model itself never sees a gradient.

        Seeded by (seed, step), so each step draws other batches and a resumed run draws the same ones.
        """
        c = self.config
        model = copy.deepcopy(self.model).float().requires_grad_(True).train()
        train_steps(model, self.data[0].attack, c.harden, c.harden_lr, c.harden_batch_size, step_seed(c.seed, step),
                    bf16=self.model.dtype == torch.bfloat16)
        return neuron_group(model.requires_grad_(False).eval().to(self.model.dtype), c.group)

    def units_per_step(self) -> int:
        c, n = self.config, self.neurons
        if c.selection == "per-layer":
            return round(c.fraction * n.units_per_layer) * n.layers
        return round(c.fraction * n.total_units)

    # -- the loop ------------------------------------------------------------------------------

    def execute(self) -> Path:
        self.load()
        c, n = self.config, self.neurons
        done, record, rows = self.folder.committed(c, n.layers, n.units_per_layer, self.units_per_step(),
                                                   tuple(d.role for d in self.evaluated))
        pruned = record.mask()
        apply(n, pruned)
        if self.healer and done > 0:  # the healed weights of the last committed step, verified by committed()
            self.healer.load(self.folder.healed.path(done))
        stop = self.folder.stopped()
        if done < 0:
            t0 = time.perf_counter()
            rows = [self._row(0, 0, d, self.evaluate(d), None) for d in self.evaluated]
            self._commit(0, record, rows)
            self._print_step(0, rows, time.perf_counter() - t0)
        elif stop:
            self.log(f"run stopped early at step {done} ({stop['reason']}); nothing to redo")
        elif done >= c.steps:
            self.log("run already complete; nothing to redo")
        else:
            self.log(f"resuming after step {done} of {c.steps}")
        base = {(r["role"], r["dataset"]): float(r["top1"]) for r in rows if int(r["step"]) == 0}
        for step in range(max(done, 0) + 1, (done if stop else c.steps) + 1):
            t0 = time.perf_counter()
            budget = step_budget(self.units_per_step(), n.total_units, step)
            new, scored = self.choose(step, pruned, budget)
            apply(n, new)
            pruned |= new
            record.add(step, new)
            if self.healer:
                self.healer.heal(step, pruned)
            count = int(pruned.sum())
            rows += [self._row(step, count, d, self.evaluate(d), base[d.role, d.spec], scored.get(d.role, 0))
                     for d in self.evaluated]
            stop = self._stop(step, rows[-len(self.evaluated):])
            self._commit(step, record, rows, stop)
            self._print_step(step, rows[-len(self.evaluated):], time.perf_counter() - t0)
            if stop:
                self.log(f"stopped early: {stop['reason']}")
                break
        self.record, self.stop = record, stop
        del n  # finish may load the model again (_kept_model): nothing here may keep this one alive
        self.finish()
        return self.folder.path

    def _row(self, step: int, count: int, d: Dataset, m: Metrics, base: float | None, scored: int = 0) -> dict:
        """One metrics.csv row; `scored`: the scoring tokens of this dataset that the step's statistics read.
        Step 0 (`base` None) keeps its hits per chunk, which pair every later drop's standard error with it."""
        if base is None:
            base, self.folder.base_chunks[d.spec] = m.top1, m.per_chunk.tolist()
        row = {"step": step, "fraction_pruned": count / self.neurons.total_units, "units_pruned": count,
               "role": d.role, "dataset": d.spec, **m.as_dict(),
               "top1_drop_rel": 100 * (base - m.top1) / base if base else float("nan"),
               "top1_drop_abs": 100 * (base - m.top1), "score_tokens": scored,
               "top1_drop_abs_se": self.folder.drop_error(d.spec, m.per_chunk)}
        return {k: row[k] for k in RUN_COLUMNS}

    def _stop(self, step: int, rows: list[dict]) -> dict | None:
        """The stop record (rundir's commit) if this step's forget and retain rows meet a stop criterion.

        A retain drop over --max-retain-drop is recorded, so the user sees it, but the run keeps the step
        before, the last within budget. A forget drop at --target-forget-drop keeps this step.
        """
        c = self.config
        forget, retain = rows[0]["top1_drop_rel"], rows[1]["top1_drop_rel"]
        if c.max_retain_drop is not None and retain > c.max_retain_drop:
            return {"kept_step": step - 1, "reason": f"retain drop {retain:.1f}% > --max-retain-drop "
                    f"{c.max_retain_drop:g}, so the run keeps step {step - 1}"}
        if c.target_forget_drop is not None and forget >= c.target_forget_drop:
            return {"kept_step": step, "reason": f"forget drop {forget:.1f}% reached --target-forget-drop "
                    f"{c.target_forget_drop:g}"}
        return None

    def _commit(self, step: int, record: PrunedRecord, rows: list[dict], stop: dict | None = None) -> None:
        if self.main:
            healed = self.healer.weights() if self.healer and step else None
            self.folder.commit(step, self.config, record, rows, stop, healed)

    def _print_step(self, step: int, rows: list[dict], seconds: float) -> None:
        f, r, *watched = rows
        others = "".join(f"  {w['dataset']} {top1_text(w)} (drop {w['top1_drop_rel']:5.1f}%)" for w in watched)
        scored = f"scored {f['score_tokens']:,}/{r['score_tokens']:,} tokens, " if step else ""
        self.log(f"step {step:3d}/{self.config.steps}  pruned {100 * f['fraction_pruned']:5.1f}%  "
                 f"forget top1 {top1_text(f)} (drop {f['top1_drop_rel']:5.1f}%)  "
                 f"retain top1 {top1_text(r)} (drop {r['top1_drop_rel']:5.1f}%)  "
                 f"ppl {f['perplexity']:.1f}/{r['perplexity']:.1f}{others}  [{scored}{seconds:.1f} s]")

    def finish(self) -> None:
        if not self.main:
            return
        from .report import write_report

        report = write_report([self.folder.path], self.folder.path)
        self.log(f"report: {report}")
        self.log(_headline(summarize(self.folder.path)))
        if self.config.save_model:
            self.save_model()
        self.folder.unlock()

    def save_model(self) -> None:
        """The pruned model and tokenizer in Hugging Face format, moved into place when complete."""
        target = self.folder.model_path
        with atomic.staged_folder(target) as tmp:
            self._kept_model().save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
        self.log(f"pruned model: {target}")

    def _kept_model(self):
        """The model after the step the run kept. A run that --max-retain-drop stopped has pruned one step
        more, and zeroed weights cannot be restored: load the model again and prune only the kept steps."""
        if self.stop and self.stop["kept_step"] < len(self.record.steps):  # record: steps 1 to the last
            self.model = self.neurons = self.head = self.healer = None  # free its memory before loading again
            self.model, _ = self._load_model()
            kept = range(1, self.stop["kept_step"] + 1)
            if self.config.heal and kept:
                load_unlearned(self.model, self.folder.healed.path(kept[-1]))
            apply(neuron_group(self.model, self.config.group), self.record.mask(kept))
        return self.model


def _headline(s: dict) -> str:
    """The summary's two headline numbers as a console line."""
    crossing = s["retain_budget_crossing"]
    where = (f"interpolated between steps {crossing[0]} and {crossing[1]}" if crossing
             else "not reached: the last step's")
    return (f"max forget - retain drop {s['max_rel_diff']:.1f}% at step {s['max_rel_diff_step']}; forget drop "
            f"{s['forget_drop_at_retain_budget']:.1f}% at retain drop <= {s['retain_budget']:g}% ({where}, "
            f"{100 * s['fraction_at_retain_budget']:.1f}% pruned)")


def hardening_cost(c: RunConfig) -> float:
    """The forward passes of a hardened run over the plain run's: --harden fine-tunes before steps 2 to S."""
    return _over_plain(replace(c, heal=0))


def healing_cost(c: RunConfig) -> float:
    """The forward passes of a healed run over the plain run's: --heal fine-tunes after every step."""
    return _over_plain(replace(c, harden=0))


def _over_plain(c: RunConfig) -> float:
    """The run's forward passes over those of the same run without fine-tuning (sweep.tokens_left): each token
    fine-tuned on costs about 3 (forward and backward)."""
    from .sweep.kinds import tokens_left, trained_tokens

    plain = tokens_left(replace(c, harden=0, heal=0), -1)
    return (plain + 3 * trained_tokens(c, -1)) / plain


def run(config: RunConfig, resume: bool = False, quiet: bool = False) -> Path:
    """Run selective pruning as the config says; returns the run folder."""
    return Run(config, resume, quiet).execute()
