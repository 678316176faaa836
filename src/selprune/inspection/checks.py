"""Capability checks on generated text, behind one small interface.

A check judges the continuations of the prompt sets whose kind it names (text, code, python) and returns
one number and one verdict per sample. To add one, subclass Check and pass an instance to
`inspect_run(config, extra_checks=[...])`.

The language identifier is py3langid: its model (4.6 MB, 97 languages) ships inside the package and it
needs nothing but numpy, so it works offline. On 570 snippets of the built-in german and english sets it
was right on all of them at 0.05 ms each, restricted to the two languages, and on 98% (8 words) to 99.6%
(20 words) over all 97. lingua-language-detector was as accurate, but its wheel is 96 MB and it took
1 to 24 ms a snippet.
"""

from __future__ import annotations

import ast
import codeop
import math
import statistics
import warnings
from dataclasses import dataclass

import torch

from ..errors import UserError
from .generate import one_cpu_thread

REPEATING = 0.5  # distinct-2 below this: at least half of the continuation's token pairs are repeats


@dataclass
class CheckResult:
    value: float  # the check's number for one model on one prompt set
    verdicts: list  # one JSON value per sample


class Check:
    """Judges continuations of prompts. `name` heads its column, `about` says what the number means."""

    name = "check"
    about = ""
    kinds: tuple[str, ...] = ("text", "code", "python")

    def __call__(self, prompts: list[str], continuations: list[str]) -> CheckResult:
        raise NotImplementedError


def _share(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else float("nan")


# ---------------------------------------------------------------- Python


def function_text(header: str, continuation: str) -> tuple[str, list[str], bool]:
    """(the completed function, its body lines, whether it ended) from a header and what a model wrote.

    The header ends at its docstring's closing quotes; what the model writes up to its first line break
    still belongs to that line. The function ends at the first line at the def's level (column 0). Without
    one, the continuation ran out first, and its last, maybe partial, line is dropped.
    """
    rest, newline, after = continuation.partition("\n")
    head = header + rest + newline if newline else header
    lines = after.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.strip() and not line[0].isspace():
            return head + "".join(lines[:i]), lines[:i], True
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]
    return head + "".join(lines), lines, False


def python_verdict(header: str, continuation: str) -> str:
    """ok (ast.parse accepts it), cut (valid Python so far, cut by the length), empty (no body but the
    docstring, or only pass / ...; it may parse) or syntax error."""
    text, body, ended = function_text(header, continuation)
    statements = [s for s in (line.strip() for line in body) if s and not s.startswith("#")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a model's invalid escape sequences are its own business
        try:
            ast.parse(text)
            verdict = "ok"
        except (SyntaxError, ValueError):
            verdict = "cut" if not ended and _incomplete(text) else "syntax error"
    if verdict != "syntax error" and all(s in ("pass", "...") for s in statements):
        return "empty"
    return verdict


def _incomplete(text: str) -> bool:
    """True if text is a valid beginning of Python that more lines would complete."""
    try:
        return codeop.compile_command(text, symbol="exec") is None
    except (SyntaxError, ValueError, OverflowError):
        return False


class PythonParses(Check):
    name = "python parses"
    about = "share of completed functions that ast.parse accepts (a body cut by the length counts if valid so far)"
    kinds = ("python",)

    def __call__(self, prompts, continuations):
        verdicts = [python_verdict(p, c) for p, c in zip(prompts, continuations)]
        return CheckResult(_share(v != "syntax error" for v in verdicts), verdicts)


class PythonBody(Check):
    name = "python body"
    about = "share of completed functions that parse and have a body (not empty, not a bare pass)"
    kinds = ("python",)

    def __call__(self, prompts, continuations):
        verdicts = [python_verdict(p, c) in ("ok", "cut") for p, c in zip(prompts, continuations)]
        return CheckResult(_share(verdicts), verdicts)


# ---------------------------------------------------------------- natural language


def language_identifier():
    """py3langid's classify, or one line that says how to install it (the optional extra `inspect`)."""
    try:
        import py3langid
    except ImportError:
        raise UserError("selprune inspect needs the language identifier py3langid: pip install "
                        "'selprune[inspect]'") from None
    return py3langid.classify


class SameLanguage(Check):
    name = "same language"
    about = "share of continuations identified (py3langid, 97 languages) as the prompt's language"
    kinds = ("text",)

    def __call__(self, prompts, continuations):
        classify = language_identifier()
        verdicts = [classify(c)[0] if c.strip() else "" for c in continuations]
        expected = [classify(p)[0] for p in prompts]
        return CheckResult(_share(v == e for v, e in zip(verdicts, expected)), verdicts)


# ---------------------------------------------------------------- fluency, for every dataset


class Fluency(Check):
    """The base model's perplexity of each continuation after its prompt: low = fluent, whatever it says."""

    name = "base perplexity"
    about = "median perplexity of the continuations under the unpruned model (low = fluent)"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    @torch.no_grad()
    def __call__(self, prompts, continuations):
        with one_cpu_thread(next(self.model.parameters()).device):  # one short text at a time, as in decoding
            verdicts = [self.perplexity(p, c) for p, c in zip(prompts, continuations)]
        finite = [v for v in verdicts if not math.isnan(v)]
        return CheckResult(statistics.median(finite) if finite else float("nan"), verdicts)

    def perplexity(self, prompt: str, continuation: str) -> float:
        encode = self.tokenizer
        context = encode(prompt, add_special_tokens=False)["input_ids"]
        new = encode(continuation, add_special_tokens=False)["input_ids"]
        if not new:
            return float("nan")
        device = next(self.model.parameters()).device
        ids = torch.tensor([context + new], device=device)
        logits = self.model(input_ids=ids, use_cache=False).logits[0, len(context) - 1:-1].float()
        loss = torch.nn.functional.cross_entropy(logits, ids[0, len(context):]).item()
        return math.exp(min(loss, 700))


class Repetition(Check):
    name = "repetitive"
    about = f"share of continuations that repeat themselves (distinct-2 of tokens below {REPEATING})"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, prompts, continuations):
        verdicts = [self.distinct2(c) < REPEATING for c in continuations]
        return CheckResult(_share(verdicts), verdicts)

    def distinct2(self, text: str) -> float:
        """Distinct token pairs over all pairs: 1 when no pair recurs, near 0 for a loop."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        pairs = list(zip(ids, ids[1:]))
        return len(set(pairs)) / len(pairs) if pairs else 0.0


def builtin_checks(base_model, tokenizer) -> list[Check]:
    """The checks every inspection runs; Fluency needs the unpruned model."""
    return [PythonParses(), PythonBody(), SameLanguage(), Fluency(base_model, tokenizer), Repetition(tokenizer)]
