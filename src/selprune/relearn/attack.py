"""The relearning attack: is what pruning removed gone, or only hidden?

Fine-tune a run's pruned model (or an unlearning folder's model) on a little data that scoring and evaluation
never saw, and measure how much of the lost forget accuracy comes back, next to the same attack on controls:
the unpruned model (its forget accuracy is the ceiling), a random pruning of as many units of the same group
(the paper's baseline), and any other runs or unlearnings. At each evaluation point a model keeps the learning
rate that recovered most by then: the attacker's best. Every model is rebuilt from the original one by its
recipe (recipe.py).

Plain fine-tuning cannot revive a pruned ff unit: pruning zeroes all of its in- and out-weights, so its
activation is 0 and so is the gradient that reaches it, and every gradient of its weights is a product
with one of the two. Attention groups zero one side only (value rows, or output-projection columns), so
their weights do get gradients and can come back. `reinit_pruned` gives the capacity back on purpose
(small random weights): a stronger attack.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..arch import NeuronGroup, architecture_of
from ..batching import auto_batch_size
from ..config import RunConfig
from ..console import Console
from ..data import make_splits, read_documents, run_splits
from ..errors import UserError
from ..evaluate import evaluate_causal
from ..finetune import fine_tuning, load_trained_weights, require_one_batch
from ..models import cpu_has_bf16, load_model, model_fingerprint, resolve_device
from ..pruning import pruned_parts, still_zero
from ..ranks import Head
from ..recipe import Recipe, recipe_of
from ..rundir import RunFolder
from ..selection import random_scores, select
from ..unlearn.budget import SAME_DATA, run_and_step
from ..unlearn.settings import UnlearnConfig
from .results import chunks_text, headline, summarize_relearn
from .settings import RelearnConfig


def evaluation_points(max_steps: int) -> list[int]:
    """0, 1, 2, 4, 8, ... up to max_steps, and max_steps itself."""
    return sorted({0, max_steps} | {2 ** k for k in range(int(math.log2(max_steps)) + 1)})


@dataclass
class Contender:
    """A model to attack: its label in the results, and the recipe that rebuilds it from the original model."""

    label: str
    recipe: Recipe


class Relearn(Console):
    """One relearning analysis of one run; `execute` drives it. The public entry point is `relearn(config)`."""

    def __init__(self, config: RelearnConfig, resume: bool = False, quiet: bool = False):
        config.validate()
        self.config, self.quiet = config, quiet
        self.run = RunFolder(config.run)
        self.recipe = recipe_of(self.run, config.step)
        self.run_config = self.run.read_config()
        self.unlearning = isinstance(self.run_config, UnlearnConfig)
        self.step = self.recipe.step
        if not resume:  # the step itself, not 0 for "the last": the run may go on, and its last step with it
            config = self.config = dataclasses.replace(config, step=self.step)
        if not self.unlearning and self.run.stopped() is None and self.run.kept_step() < self.run_config.steps:
            self.log(f"relearn: {config.run} is unfinished ({self.run.kept_step()} of {self.run_config.steps} steps "
                     f"done): attacking step {self.step}, which --resume keeps attacking after the run finishes")
        if self.unlearning and config.random_control:
            self.log(f"relearn: no random control: {config.run} is an unlearning folder, which pruned no units for "
                     "a random pruning to match")
        self.controls = [self._control_run(spec) for spec in config.control]
        self._refuse_seen_data()
        self.run.lock()
        self.results = config.results_folder()
        try:
            self.results.start(config, resume)
        except UserError:
            self.run.unlock()
            raise

    # -- set-up --------------------------------------------------------------------------------

    def load(self) -> None:
        c, rc = self.config, self.run_config
        self.base, self.tokenizer = load_model(rc.model, dtype="float32", device=c.device,
                                               trust_remote_code=rc.trust_remote_code)
        fingerprint = model_fingerprint(self.base)
        for folder, config in [(self.run, rc), *((other, config) for other, config, _ in self.controls)]:
            folder.check_model(config.model, fingerprint)  # each attacked pruning was made on this model
        if architecture_of(self.base.config).masked_lm:
            raise UserError("relearning fine-tunes a causal language model; masked LMs are not supported")
        self.device = resolve_device(c.device)
        self.bf16 = c.dtype == "auto" and (cpu_has_bf16() if self.device.type == "cpu"
                                           else torch.cuda.is_bf16_supported())
        self.eval_batch = auto_batch_size(self.base, rc.chunk_len, self.device)
        self.eval_model = None  # made at the first point that needs it (_evaluation_model)
        forget, retain = (self._splits(spec) for spec in (rc.forget, rc.retain))
        self.evaluation = {"forget": self._first_tokens(forget.eval), "retain": self._first_tokens(retain.eval)}
        self.attacks = {}
        for attack in c.attack:
            if attack in ("forget", "retain"):
                self.attacks[attack] = (forget if attack == "forget" else retain).relearn
            else:
                spec = attack[len("other:"):]
                self.attacks[attack] = (self._splits(spec).relearn if spec in (rc.forget, rc.retain)
                                        else self._other(spec))
        for attack, chunks in self.attacks.items():
            require_one_batch(f"attack {attack!r}", chunks, c.batch_size, "--relearn-tokens", "--batch-size")
        self.contenders = self._contenders()

    def _splits(self, spec: str):
        """The run's own evaluation and scoring splits, and the relearn split from the documents after them."""
        rc, c = self.run_config, self.config
        role = "forget" if spec == rc.forget else "retain"
        return run_splits(rc, self.tokenizer, spec, role=role, relearn_tokens=c.relearn_tokens,
                          relearn_chunk_len=c.chunk_len)

    def _other(self, spec: str):
        """A dataset the run did not use: its first relearn_tokens, in seeded order (it never judged the run)."""
        c, unused = self.config, 1  # the token of each part before the relearn split, which make_splits requires
        splits = make_splits(read_documents(spec, 2 * unused + c.relearn_tokens), self.tokenizer, chunk_len=c.chunk_len,
                             score_tokens=unused, eval_tokens=unused, seed=c.seed, name=spec,
                             relearn_tokens=c.relearn_tokens)
        return splits.relearn

    def _first_tokens(self, chunks) -> tuple[torch.Tensor, torch.Tensor]:
        rows = min(len(chunks.input_ids), -(-self.config.eval_tokens // chunks.input_ids.shape[1]))
        return chunks.input_ids[:rows], chunks.attention_mask[:rows]

    def _contenders(self) -> list[Contender]:
        c, main = self.config, self.recipe
        found = [Contender("unlearned" if self.unlearning else "pruned", main), Contender("base", main.original)]
        if c.random_control and not self.unlearning:
            scores = random_scores(tuple(main.mask.shape), c.seed, 0)
            random_mask = select(scores, torch.zeros_like(main.mask), int(main.mask.sum()),
                                 self.run_config.selection == "per-layer")
            found.append(Contender("random", main.pruned_as(random_mask)))
        for other, config, recipe in self.controls:
            found.append(Contender(f"{config.name or other.path.name}@{recipe.step}", recipe))
        return found

    def _control_run(self, spec: str) -> tuple[RunFolder, RunConfig | UnlearnConfig, Recipe]:
        """A --control PATH[:STEP], checked: its folder, its settings and the recipe of the model attacked (an
        unlearning's at the checkpoint it kept, the one it saved)."""
        path, step = run_and_step(spec)
        other = RunFolder(path)
        if not other.config_path.is_file():
            raise UserError(f"control {path} is not a selprune run folder (no config.toml)")
        config = other.read_config()
        if config.model != self.run_config.model:
            raise UserError(f"control {path} changed model {config.model!r}, this run {self.run_config.model!r}: "
                            "a control must start from the same model")
        recipe = recipe_of(other, step or 0)
        if isinstance(config, UnlearnConfig):
            self._refuse_other_data(other, config)
        return other, config, recipe

    def _refuse_other_data(self, other: RunFolder, config: UnlearnConfig) -> None:
        """An unlearning control trained on its scoring split: with the run's data settings, never on the
        attack's data."""
        differ = [key for key in SAME_DATA if getattr(config, key) != getattr(self.run_config, key)]
        if differ:
            raise UserError(f"control {other.path} unlearned with other {', '.join(differ)} than this run, so it may "
                            "have trained on the attack's documents: attack it beside a run of the same data settings")

    def _refuse_seen_data(self) -> None:
        """A hardened run trained its throwaway copies on the forget documents after its --harden-holdout
        tokens of the relearn split; an attack with more relearn tokens would train on them again."""
        c, rc = self.config, self.run_config
        specs = {rc.forget if a == "forget" else rc.retain if a == "retain" else a[len("other:"):] for a in c.attack}
        for config in (x for x in [rc, *(control for _, control, _ in self.controls)] if isinstance(x, RunConfig)):
            if config.harden and config.forget in specs and c.relearn_tokens > config.harden_holdout:
                raise UserError(f"a run attacked here was hardened (--harden) on {config.forget} documents after "
                                f"the first {config.harden_holdout} relearn tokens, and --relearn-tokens "
                                f"{c.relearn_tokens} would attack with them too: use --relearn-tokens "
                                f"{config.harden_holdout} or fewer (more --max-steps repeat them), or other data")

    # -- the attack ----------------------------------------------------------------------------

    def execute(self) -> Path:
        try:
            self.load()
            rows, done = self.results.committed()
            c = self.config
            where = f"at the checkpoint it kept (step {self.step})" if self.unlearning else f"after step {self.step}"
            self.log(f"relearn: {self.run.path} {where}; attacks {', '.join(c.attack)}; models "
                     f"{', '.join(x.label for x in self.contenders)}; {c.optimizer} lr {c.learning_rates}; "
                     f"{c.max_steps} steps of {c.batch_size} x {c.chunk_len} tokens -> {self.results.path}")
            if any(x.label == "random" for x in self.contenders) and getattr(self.run_config, "heal", 0):
                self.log("relearn: the random control prunes the original model and is not healed, unlike this "
                         "run (--heal): the two differ in that training too")
            for attack, contender, lr in itertools.product(c.attack, self.contenders, c.learning_rates):
                key = f"{attack}|{contender.label}|{lr!r}"
                if key in done:
                    continue
                t0 = time.perf_counter()
                rows = rows + self.attack(attack, contender, lr)
                done = done + [key]
                self.results.commit(rows, done)
                last = rows[-1]
                first = rows[-len(self.points)]
                self.log(f"{attack:>10s} {contender.label:>10s} lr {lr:g}: forget top1 {first['forget_top1']:.3f} -> "
                         f"{last['forget_top1']:.3f}, retain {last['retain_top1']:.3f}  "
                         f"[{time.perf_counter() - t0:.0f} s]")
            for line in headline(summarize_relearn(rows)):
                self.log(line)
            from ..report import write_report

            self.log(f"report: {write_report([self.run.path], self.run.path)}")
        finally:
            self.run.unlock()
        return self.results.path

    @property
    def points(self) -> list[int]:
        return evaluation_points(self.config.max_steps)

    def attack(self, attack: str, contender: Contender, lr: float) -> list[dict]:
        """Fine-tune one model on one attack's data with one learning rate; rows at the evaluation points."""
        c = self.config
        torch.manual_seed(c.seed)
        recipe = contender.recipe
        model = recipe.build(self.base)
        if c.reinit_pruned and recipe.mask is not None:
            reinitialise(recipe.neurons(model), recipe.mask, c.seed)
        evaluated = self._evaluation_model(model)  # before LoRA wraps the model's layers
        trained = self._trainable(model)
        training = fine_tuning(trained, self.attacks[attack], lr, c.batch_size, c.seed, self.bf16)
        rows, losses = [], []
        for step in range(c.max_steps + 1):
            if step in self.points:
                rows.append(self._row(attack, contender, lr, step, self._evaluable(trained, evaluated), losses))
                trained.train()
                losses = []
            if step < c.max_steps:
                losses.append(next(training))
        return rows

    def _trainable(self, model):
        """The model with gradients on what the attacker trains: every weight, or LoRA adapters."""
        if self.config.optimizer == "adamw":
            return model.requires_grad_(True).train()
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise UserError("--optimizer lora needs the optional peft package: pip install 'selprune[lora]'") from None
        lora = LoraConfig(r=self.config.lora_rank, lora_alpha=self.config.lora_alpha, lora_dropout=0.0,
                          target_modules="all-linear")
        return get_peft_model(model, lora).train()

    def _row(self, attack, contender, lr, step, evaluated, losses) -> dict:
        """Forget and retain accuracy of the evaluated model (exact ranks) and the mean training loss since
        the last row."""
        head, metrics = Head(evaluated), {}  # the band constants once per point, not once per dataset
        no_skip = torch.empty(0, dtype=torch.long)
        for role, (ids, mask) in self.evaluation.items():
            m, self.eval_batch = evaluate_causal(evaluated, ids, mask, self.eval_batch, no_skip,
                                                 fused=self.config.compile, head=head,
                                                 what=f"the {contender.label} model after {step} steps of the "
                                                 f"{attack} attack at lr {lr:g}, on {role} data")
            metrics[f"{role}_top1"], metrics[f"{role}_loss"], metrics[f"{role}_top1_se"] = m.top1, m.loss, m.top1_se
            if role == "forget":
                metrics["forget_chunks"] = chunks_text(m.per_chunk)
        recipe = contender.recipe
        zero = "" if recipe.mask is None or step != self.config.max_steps else \
            str(still_zero(recipe.neurons(evaluated), recipe.mask))
        return {"attack": attack, "model": contender.label, "lr": lr, "step": step, **metrics,
                "train_loss": float(np.mean(losses)) if losses else "", "pruned_zero": zero}

    def _evaluation_model(self, model):
        """Where the attack's points are evaluated: None for the float32 model itself, when it computes in
        float32 and trains every weight; else one model for every attack, in bf16 where training computes in
        bf16 (fast, and the run itself was evaluated so), loaded once as the run loaded it (a cast copy would
        differ: `.to(bf16)` casts a rotary embedding's float32 frequencies too). It takes the attacked model's
        weights now (LoRA's points overwrite only the adapted layers) and the trained ones at each point."""
        if not (self.bf16 or self.config.optimizer == "lora"):
            return None
        if self.eval_model is None:
            rc = self.run_config
            self.eval_model = load_model(rc.model, dtype="bfloat16" if self.bf16 else "float32",
                                         device=self.config.device, trust_remote_code=rc.trust_remote_code)[0]
        load_trained_weights(self.eval_model, model)
        return self.eval_model

    def _evaluable(self, trained, evaluated):
        """The model as evaluated now: the evaluation model holding the trained weights (LoRA adapters merged),
        or the float32 model itself."""
        if evaluated is None:
            return trained.eval()
        load_trained_weights(evaluated, trained)
        return evaluated


@torch.no_grad()
def reinitialise(neurons: NeuronGroup, mask: torch.Tensor, seed: int) -> None:
    """Give pruned weights small random values (a tenth of their tensor's spread), so that they can learn."""
    generator = torch.Generator().manual_seed(seed)
    for tensor, dim, index in pruned_parts(neurons, mask):
        shape = list(tensor.shape)
        shape[dim] = len(index)
        values = torch.randn(shape, generator=generator) * 0.1 * float(tensor.float().std())
        tensor.index_copy_(dim, index, values.to(tensor.dtype).to(tensor.device))


def relearn(config: RelearnConfig, resume: bool = False, quiet: bool = False) -> Path:
    """Attack a run's pruned model as the config says; returns the results folder (RUN/relearn)."""
    return Relearn(config, resume, quiet).execute()
