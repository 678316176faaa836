"""`selprune inspect`: what a folder's model writes, original and after chosen steps, what the checks say of
it, and where in the layers its predictions fail (the logit lens).

The model, tokenizer and data splits are rebuilt from the folder's config.toml exactly as the run (or the
unlearning) built them, so the prompts come from its held-out evaluation documents. Each step's model is made
from the original one in place by the folder's recipe (recipe.py): a pruning run's steps one after another,
an unlearning folder's kept checkpoint, its only step. The fluency check then needs the original model once
more, so it is loaded again rather than kept as a second copy in memory.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..arch import architecture_of
from ..batching import auto_batch_size
from ..console import Console
from ..data import Document, load_documents, run_documents, run_splits
from ..errors import UserError
from ..inspectdir import InspectFolder
from ..models import context_length, load_config, load_model, model_fingerprint
from ..ranks import Head
from ..recipe import Recipe, model_steps, recipe_of, steps_text
from ..report import write_report
from ..rundir import RunFolder
from .checks import Check, builtin_checks, language_identifier
from .generate import GREEDY, Decoding, generate
from .lens import lens_top1
from .prompts import (
    CODE_SUFFIXES,
    MAX_HEADER_TOKENS,
    PromptSet,
    function_prompts,
    suffix,
    text_prompts,
)
from .settings import InspectConfig


@dataclass
class Side:
    """One of the run's datasets: its documents, which of them were scored on, and its evaluation chunks."""

    role: str
    spec: str
    documents: list[Document]
    held_out: list[Document]  # the evaluation documents
    scored: list[Document]
    eval_ids: torch.Tensor
    eval_mask: torch.Tensor


def inspect_run(config: InspectConfig, extra_checks: Sequence[Check] = (), quiet: bool = False) -> Path:
    """Inspect the run (or unlearning) in config.run; returns RUN/inspect/. Holds the folder's lock while it
    works."""
    config.validate()
    language_identifier()  # an optional package: refuse now rather than after the generation
    folder = RunFolder(config.run)
    run_config = folder.read_config()
    available = model_steps(folder)
    recipes = [recipe_of(folder, step) for step in config.steps(available, steps_text(folder, available))]
    model_config = load_config(run_config.model, run_config.trust_remote_code)
    if architecture_of(model_config).masked_lm:
        raise UserError(f"{run_config.model} is a masked LM ({model_config.model_type}): selprune inspect generates "
                        "text and reads the residual stream through the head, which needs a causal LM")
    inspected = InspectFolder(folder)
    folder.lock()
    try:
        inspected.write(*Inspection(config, run_config, recipes, quiet).execute(extra_checks))
        report = write_report([folder.path], folder.path)
    finally:
        folder.unlock()
    if not quiet:
        print(f"report: {report}", flush=True)
    return inspected.path


class Inspection(Console):
    """One inspection: the model rebuilt at each step, its generations and lens, then the checks."""

    def __init__(self, config: InspectConfig, run_config, recipes: list[Recipe], quiet: bool):
        self.config, self.run_config, self.recipes, self.quiet = config, run_config, recipes, quiet
        self.steps = [recipe.step for recipe in recipes]
        self.decodings = [GREEDY] + ([Decoding("sampled", config.temperature, config.seed)] if config.sample else [])

    def load_model(self):
        c = self.run_config
        model, tokenizer = load_model(c.model, dtype=c.dtype, device=c.device, trust_remote_code=c.trust_remote_code,
                                      device_map=getattr(c, "device_map", "") or None)  # an unlearning has none
        RunFolder(self.config.run).check_model(c.model, model_fingerprint(model))
        return model, tokenizer

    def execute(self, extra_checks: Sequence[Check]) -> tuple[str, list[dict], dict[str, list[dict]]]:
        """(settings TOML, generation records, tables) for InspectFolder.write."""
        c, rc = self.config, self.run_config
        model, self.tokenizer = self.load_model()
        self.model_config = model.config
        for recipe in self.recipes:
            if recipe.mask is not None:
                recipe.neurons(model)  # a model of another shape is refused before anything is generated
        self._check_lengths(model)
        sides = [self._side(role, spec) for role, spec in self._datasets()]
        sets = self._prompt_sets(sides)
        self.log(f"inspect: {rc.model}, steps {', '.join(map(str, self.steps))} against the original model; "
                 + "; ".join(f"{s.name} ({s.dataset}, {s.kind}): {len(s.prompts)} prompts" for s in sets))
        batch = auto_batch_size(model, rc.chunk_len, next(model.parameters()).device)
        generations, lens_rows = {}, []
        for recipe in [self.recipes[0].original, *self.recipes]:
            step = recipe.step
            recipe.apply(model)  # in place: each recipe is of a later step of the same folder
            head = Head(model)  # an unlearning's saved weights change the head too
            t0 = time.perf_counter()
            for s in sets:
                for d in self.decodings:
                    generations[s.name, d.name, step] = generate(model, s.prompts, s.new_tokens,
                                                                 self.pad_id, self.tokenizer.eos_token_id, d)
            t1 = time.perf_counter()
            if c.lens:
                lens_rows += self._lens(model, head, batch, sides, step)
            self.log(f"step {step}: generation {t1 - t0:.1f} s, logit lens {time.perf_counter() - t1:.1f} s")
        del model, head  # every reference, so the original copy below is the only model in memory
        t0 = time.perf_counter()
        base, _ = self.load_model()
        checks = builtin_checks(base, self.tokenizer) + list(extra_checks)
        records, check_rows = self._judge(sets, generations, checks)
        self.log(f"checks: {time.perf_counter() - t0:.1f} s")
        settings = dataclasses.replace(c, step=tuple(self.steps))
        return settings.to_toml(), records, {"checks.csv": check_rows, "lens.csv": lens_rows}

    @property
    def pad_id(self) -> int:
        t = self.tokenizer
        return next(i for i in (t.pad_token_id, t.eos_token_id, 0) if i is not None)

    def _check_lengths(self, model) -> None:
        c, longest = self.config, context_length(model.config)
        if longest is None:
            return
        if c.prefix_tokens + c.new_tokens > longest:
            raise UserError(f"--prefix-tokens {c.prefix_tokens} + --new-tokens {c.new_tokens} is longer than the "
                            f"model's context of {longest} tokens: shorten them")
        if c.functions and c.body_tokens >= longest:
            raise UserError(f"--body-tokens {c.body_tokens} leaves no room for a function's header in the model's "
                            f"context of {longest} tokens: shorten it, or use --functions 0")

    # -- prompts -------------------------------------------------------------------------------

    def _datasets(self) -> list[tuple[str, str]]:
        """(role, spec): forget, retain, the run's watched datasets, then those --watch adds."""
        rc = self.run_config
        for spec in self.config.watch:
            if spec in (rc.forget, rc.retain):
                raise UserError(f"--watch {spec!r} is the run's {'forget' if spec == rc.forget else 'retain'} "
                                "dataset, which is always inspected: watch other datasets")
        watched = dict.fromkeys((*getattr(rc, "watch", ()), *self.config.watch))  # an unlearning watches none
        return [("forget", rc.forget), ("retain", rc.retain), *(("watch", spec) for spec in watched)]

    def _side(self, role: str, spec: str) -> Side:
        """The dataset's splits as the run made them (a watched one has no scoring split, as in the run)."""
        rc = self.run_config
        documents = run_documents(rc, spec, role=role)
        splits = run_splits(rc, self.tokenizer, spec, role=role, documents=documents)
        docs = documents.run
        held, scored = set(splits.eval.doc_ids), set(splits.score.doc_ids if splits.score else ())
        ids, mask = splits.eval.input_ids, splits.eval.attention_mask
        if self.config.lens_tokens:  # the first lens_tokens real tokens of the evaluation chunks
            mask = mask * (mask.flatten().cumsum(0) <= self.config.lens_tokens).view_as(mask)
            ids, mask = ids[mask.any(1)], mask[mask.any(1)]
        return Side(role, spec, docs, [d for d in docs if d.id in held], [d for d in docs if d.id in scored], ids, mask)

    def _prompt_sets(self, sides: list[Side]) -> list[PromptSet]:
        c = self.config
        sets = []
        for side in sides:
            code = sum(suffix(d) in CODE_SUFFIXES for d in side.held_out)
            kind = "code" if 2 * code > len(side.held_out) else "text"
            prompts = text_prompts(side.held_out, self.tokenizer, c.prompts, c.prefix_tokens)
            if not prompts:
                raise UserError(f"the held-out documents of {side.spec!r} have no line with {c.prefix_tokens} "
                                "tokens after it: use a smaller --prefix-tokens")
            name = side.role if side.role != "watch" else f"watch {side.spec}"
            sets.append(PromptSet(name, side.spec, kind, prompts, c.new_tokens))
        if c.functions:
            name, docs = self._python_documents(sides)
            longest = context_length(self.model_config)
            room = MAX_HEADER_TOKENS if longest is None else min(MAX_HEADER_TOKENS, longest - c.body_tokens)
            prompts = function_prompts(docs, self.tokenizer, c.functions, c.body_tokens, room)
            if prompts:
                sets.append(PromptSet("python", name, "python", prompts, c.body_tokens))
            else:
                self.log(f"no Python check: {name} has no documented function whose body fits in --body-tokens "
                         f"{c.body_tokens}")
        return sets

    def _python_documents(self, sides: list[Side]) -> tuple[str, list[Document]]:
        """Python documents the run never scored on. auto: the .py files of its datasets (held out from
        scoring: the evaluation part and what the budgets left unused), else the built-in python set."""
        spec = self.config.python
        scored = {d.text for side in sides for d in side.scored}
        if spec == "auto":
            files = [d for side in sides for d in side.documents if suffix(d) == ".py" and d.text not in scored]
            if files:
                return f"unscored .py files of {'+'.join(side.spec for side in sides)}", files
            spec = "python"
        docs = next((side.documents for side in sides if side.spec == spec), None) or load_documents(spec)
        return spec, [d for d in docs if d.text not in scored]

    # -- measuring -----------------------------------------------------------------------------

    def _lens(self, model, head: Head, batch: int, sides: list[Side], step: int) -> list[dict]:
        rows = []
        for side in sides:
            top1, positions = lens_top1(model, side.eval_ids, side.eval_mask, batch, head, self.run_config.compile)
            rows += [{"step": step, "role": side.role, "dataset": side.spec, "layer": layer + 1, "top1": value,
                      "positions": positions} for layer, value in enumerate(top1)]
        return rows

    def _judge(self, sets: list[PromptSet], generations: dict, checks: list[Check]) -> tuple[list[dict], list[dict]]:
        """Every applicable check on every continuation: (generations.jsonl records, checks.csv rows)."""
        decode = self.tokenizer.decode
        records, rows = [], []
        for s in sets:
            prompts = [decode(p) for p in s.prompts]
            for (name, decoding, step), ids in generations.items():
                if name != s.name:
                    continue
                texts = [decode(t) for t in ids]
                verdicts = [{} for _ in texts]
                for check in (k for k in checks if s.kind in k.kinds):
                    result = check(prompts, texts)
                    rows.append({"set": s.name, "dataset": s.dataset, "decoding": decoding, "step": step,
                                 "check": check.name, "about": check.about, "value": float(result.value),
                                 "samples": len(texts)})
                    for verdict, v in zip(verdicts, result.verdicts):
                        verdict[check.name] = v
                records += [{"set": s.name, "dataset": s.dataset, "kind": s.kind, "decoding": decoding, "step": step,
                             "index": i, "prompt": p, "continuation": t, "verdicts": v}
                            for i, (p, t, v) in enumerate(zip(prompts, texts, verdicts))]
        return records, rows
