"""Tokenize documents into fixed-length chunks: an evaluation, a scoring, a relearn and a hardening part.

Scores that decide what to prune, the accuracy that judges the result, the data of a relearning attack and
the data that `run --harden` trains its throwaway copies on must not see the same text, so the parts never
share a document. They are filled in that order from one seeded shuffle, so adding a later part leaves the
earlier ones as they were. Budgets are exact token counts, so runs with the same settings are comparable.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..errors import UserError
from .sources import PIECE_CHARS, Document


@dataclass
class Chunks:
    input_ids: torch.LongTensor  # [n, L]
    attention_mask: torch.LongTensor  # [n, L]; 1 = real token, 0 = padding (last chunk only)
    doc_ids: list[str]  # documents that contributed, in order

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


@dataclass
class Splits:
    score: Chunks | None  # None for a dataset that is only evaluated
    eval: Chunks
    relearn: Chunks | None = None  # only when asked for: the data of a relearning attack
    harden: Chunks | None = None  # only when asked for: the data of --harden's attacks, after the relearn part


def make_splits(documents: Sequence[Document], tokenizer, *, chunk_len: int = 512, score_tokens: int = 100_000,
                eval_tokens: int = 100_000, seed: int = 0, name: str = "dataset", relearn_tokens: int = 0,
                relearn_chunk_len: int | None = None, relearn_option: str = "--relearn-tokens",
                harden_tokens: int = 0, harden_chunk_len: int | None = None,
                later: Sequence[Document] = ()) -> Splits:
    """Shuffle documents with `seed`, fill the evaluation budget first, then scoring, relearning, hardening.

    `relearn_option` is the flag that sets relearn_tokens, for the message when the dataset is too small.
    `later`: documents read after `documents` (a streamed dataset read further), shuffled on their own and
    used after all of them, so that they never change the earlier parts.
    """
    if chunk_len < 2:
        raise UserError(f"--chunk-len must be at least 2 tokens, got {chunk_len}")
    if eval_tokens <= 0 or score_tokens < 0:  # score_tokens = 0: a dataset that is only evaluated
        option, value = ("--eval-tokens", eval_tokens) if eval_tokens <= 0 else ("--score-tokens", score_tokens)
        raise UserError(f"{option} must be a positive number of tokens, got {value}")
    separator = _separator_id(tokenizer)
    generator, order, after = random.Random(seed), list(documents), list(later)
    generator.shuffle(order)
    generator.shuffle(after)
    order += after
    stream = _tokenized(order, tokenizer, separator)
    budgets = {"evaluation": eval_tokens, "scoring": score_tokens, "relearning": relearn_tokens,
               "hardening": harden_tokens}
    lengths = {"relearning": relearn_chunk_len or chunk_len, "hardening": harden_chunk_len or chunk_len}
    parts, used = {}, []
    for part, budget in budgets.items():
        if budget <= 0:
            continue
        ids, doc_ids, doc_tokens = _fill(stream, budget)
        used.append(doc_tokens)
        if len(ids) < budget:  # the stream is spent: `used` counts every token of the dataset
            raise _too_few_tokens(name, len(order), used, {k: v for k, v in budgets.items() if v > 0},
                                  relearn_option)
        parts[part] = _pack(ids, doc_ids, lengths.get(part, chunk_len), _pad_id(tokenizer, separator))
    return Splits(score=parts.get("scoring"), eval=parts["evaluation"], relearn=parts.get("relearning"),
                  harden=parts.get("hardening"))


def _separator_id(tokenizer) -> int:
    """Documents are joined by EOS (or SEP for encoder tokenizers) so the model sees the boundary."""
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return token_id
    raise UserError("the tokenizer has neither an EOS nor a SEP token to separate documents; use another model")


def _pad_id(tokenizer, separator: int) -> int:
    return next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, separator) if i is not None)


def _tokenized(documents: Iterable[Document], tokenizer, separator: int) -> Iterator[tuple[str, list[int]]]:
    """Documents tokenized lazily, one at a time, each followed by the separator."""
    for doc in documents:
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        if ids:
            yield doc.id, list(ids) + [separator]


def _fill(stream: Iterator[tuple[str, list[int]]], budget: int) -> tuple[list[int], list[str], int]:
    """Whole documents until `budget` tokens; the rest of the last one is dropped, never shared.

    Returns the tokens, the ids of the documents used and how many tokens those documents had.
    """
    ids: list[int] = []
    doc_ids: list[str] = []
    used = 0
    for doc_id, doc_tokens in stream:
        doc_ids.append(doc_id)
        used += len(doc_tokens)
        ids.extend(doc_tokens[: budget - len(ids)])
        if len(ids) == budget:
            break
    return ids, doc_ids, used


def _too_few_tokens(name: str, documents: int, used: list[int], budgets: dict[str, int],
                    relearn_option: str) -> UserError:
    """Each part takes whole documents, so a dataset can hold more tokens than asked and still be too small."""
    total, parts = sum(used), list(budgets)
    asked = " + ".join(f"{budget} {part}" for part, budget in budgets.items())
    before = " and ".join(f"the {part} part's documents took {n}" for part, n in zip(parts, used[:-1]))
    options = {"evaluation": "--eval-tokens", "scoring": "--score-tokens", "relearning": relearn_option,
               "hardening": "--harden-tokens"}
    flags = dict.fromkeys(options[p] for p in parts)
    return UserError(
        f"dataset {name!r} has {total} tokens in all, in {documents} documents (or pieces of at most "
        f"{PIECE_CHARS} characters), too few for {asked} tokens from separate documents: "
        f"{before}, leaving {total - sum(used[:-1])} for {parts[len(used) - 1]}; use smaller "
        f"{'/'.join(flags)} or more data"
    )


def _pack(ids: list[int], doc_ids: list[str], chunk_len: int, pad_id: int) -> Chunks:
    """Rows of exactly `chunk_len`; only the last is padded, with mask 0 on the padding."""
    rows = -(-len(ids) // chunk_len)
    input_ids = torch.full((rows * chunk_len,), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(rows * chunk_len, dtype=torch.long)
    input_ids[: len(ids)] = torch.tensor(ids, dtype=torch.long)
    attention_mask[: len(ids)] = 1
    return Chunks(input_ids.view(rows, chunk_len), attention_mask.view(rows, chunk_len), doc_ids)


def mask_for_mlm(chunks: Chunks, tokenizer, *, seed: int = 0,
                 prob: float = 0.15) -> tuple[torch.LongTensor, torch.LongTensor]:
    """BERT's masking for masked-LM evaluation: of the chosen tokens 80% [MASK], 10% random, 10% kept.

    Returns (masked input_ids, labels) with labels -100 where nothing is predicted. Seeded so that
    every evaluation of a run masks the same positions; padding and special tokens are never chosen.
    """
    if tokenizer.mask_token_id is None:
        raise UserError("the tokenizer has no mask token, so masked-LM evaluation is impossible; "
                        "use a masked language model's tokenizer")
    generator = torch.Generator().manual_seed(seed)
    ids = chunks.input_ids
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids, dtype=torch.long))
    eligible = chunks.attention_mask.bool() & ~special
    chosen = (torch.rand(ids.shape, generator=generator) < prob) & eligible
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    action = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(len(tokenizer), ids.shape, generator=generator)
    masked = torch.where(chosen & (action < 0.8), torch.full_like(ids, tokenizer.mask_token_id), ids)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
    return masked, labels
