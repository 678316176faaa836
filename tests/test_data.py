"""Data layer: shipped corpora, spec loaders, token splits and MLM masking (no network needed)."""

import gzip
import itertools
import json
import sys
import types
from importlib import resources

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from selprune.data import (
    PIECE_CHARS,
    Document,
    list_builtin,
    load_documents,
    make_splits,
    mask_for_mlm,
    run_documents,
    run_splits,
    sources,
    split_text,
)
from selprune.data.splits import HF_CHARS_PER_TOKEN
from selprune.errors import UserError

BUILTIN = resources.files("selprune.data").joinpath("builtin")
MANIFEST = json.loads(BUILTIN.joinpath("MANIFEST.json").read_text(encoding="utf-8"))
NAMES = ["prose", "code", "python", "german", "english"]


@pytest.fixture(scope="module")
def prose():
    return load_documents("prose")


@pytest.fixture(scope="module")
def tokenizer(prose):
    """A byte-level BPE trained in memory on some prose: a real fast tokenizer without a download."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<pad>", "<eos>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator([d.text for d in prose[:20]], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<pad>",
                                   mask_token="<mask>", model_max_length=10**9)


def small_docs(n=40, words=60):
    return [Document(f"d{i}", " ".join(f"word{(i * 7 + j) % 50} of text" for j in range(words)))
            for i in range(n)]


# ---------------------------------------------------------------- built-in corpora


@pytest.mark.parametrize("name", NAMES)
def test_builtin_loads_with_manifest_sizes(name):
    docs = load_documents(name)
    entry = MANIFEST[name]
    assert len(docs) == entry["documents"]
    assert sum(len(d.text) for d in docs) == entry["characters"]
    assert 1_200_000 <= sum(len(d.text.encode()) for d in docs) <= 3_200_000
    assert len({d.id for d in docs}) == len(docs)
    assert len({" ".join(d.text.lower().split()) for d in docs}) == len(docs), "duplicate documents"
    assert min(len(d.text) for d in docs) >= 200
    assert max(len(d.text) for d in docs) <= PIECE_CHARS, "shipped whole: none may need cutting into pieces"
    assert all(d.id.split("/", 1)[0] in {s["name"] for s in entry["sources"]} for d in docs)


def test_code_has_seven_languages_and_little_python():
    language = {s["name"]: s["language"] for s in MANIFEST["code"]["sources"]}
    chars = {}
    for doc in load_documents("code"):
        lang = language[doc.id.split("/", 1)[0]]
        chars[lang] = chars.get(lang, 0) + len(doc.text)
    assert sorted(chars) == MANIFEST["code"]["languages"] == ["C", "C++", "Go", "JavaScript", "Python", "Rust",
                                                              "TypeScript"]
    assert chars["Python"] <= 0.2 * sum(chars.values())


def test_german_and_english_are_the_same_pages():
    pages = {name: {d.id.split("/", 1)[1] for d in load_documents(name)} for name in ("german", "english")}
    assert pages["german"] == pages["english"]


def test_manifest_records_provenance_and_licences():
    total = 0
    for name in NAMES:
        entry = MANIFEST[name]
        total += BUILTIN.joinpath(f"{name}.jsonl.gz").stat().st_size
        for source in entry["sources"]:
            assert source["licence"] and source["version"] and source["documents"] > 0
            assert source["registry"] in {"pypi", "debian", "npm"}
            assert len(source["sha256"]) == 64
    assert total < 25_000_000
    listed = {d["name"]: d for d in list_builtin()}
    assert set(listed) == set(NAMES)
    assert all(d["licences"] and d["languages"] and d["description"] for d in listed.values())


def test_builtin_files_are_deterministic_gzip():
    raw = BUILTIN.joinpath("python.jsonl.gz").read_bytes()
    assert raw[4:8] == b"\0\0\0\0", "gzip mtime must be 0 for byte-identical rebuilds"
    ids = [json.loads(line)["id"] for line in gzip.decompress(raw).decode().splitlines()]
    assert ids == sorted(ids)


# ---------------------------------------------------------------- splits


def rows(chunks):
    return {tuple(r) for r in chunks.input_ids.tolist()}


def test_splits_are_disjoint_exact_and_padded_last(prose, tokenizer):
    splits = make_splits(prose, tokenizer, chunk_len=64, score_tokens=3000, eval_tokens=2000, seed=1)
    assert splits.score.tokens == 3000 and splits.eval.tokens == 2000
    assert not set(splits.score.doc_ids) & set(splits.eval.doc_ids)
    assert not rows(splits.score) & rows(splits.eval)
    for part in (splits.score, splits.eval):
        assert part.input_ids.shape[1] == 64 and part.input_ids.dtype == torch.long
        assert part.attention_mask[:-1].all(), "only the last chunk may be padded"
        assert (part.input_ids[part.attention_mask == 0] == tokenizer.pad_token_id).all()


def test_the_relearn_and_hardening_splits_are_disjoint_and_leave_the_others_as_they_were(prose, tokenizer):
    two = make_splits(prose, tokenizer, chunk_len=64, score_tokens=3000, eval_tokens=2000, seed=1)
    three = make_splits(prose, tokenizer, chunk_len=64, score_tokens=3000, eval_tokens=2000, seed=1,
                        relearn_tokens=1500, relearn_chunk_len=32)
    four = make_splits(prose, tokenizer, chunk_len=64, score_tokens=3000, eval_tokens=2000, seed=1,
                       relearn_tokens=1500, relearn_chunk_len=32, harden_tokens=700, harden_chunk_len=16)
    assert two.relearn is None and three.relearn.tokens == 1500 and three.relearn.input_ids.shape[1] == 32
    assert three.harden is None and four.harden.tokens == 700 and four.harden.input_ids.shape[1] == 16
    for part in ("score", "eval"):
        assert torch.equal(getattr(two, part).input_ids, getattr(three, part).input_ids)
    for part in ("score", "eval", "relearn"):
        assert torch.equal(getattr(three, part).input_ids, getattr(four, part).input_ids)
    docs = [set(part.doc_ids) for part in (four.eval, four.score, four.relearn, four.harden)]
    assert all(not (a & b) for a, b in itertools.combinations(docs, 2))
    with pytest.raises(UserError, match=r"too few for 2000 evaluation \+ 3000 scoring \+ 1500 relearning \+ \d+ "
                                        r"hardening .*--relearn-tokens/--harden-tokens or more"):
        make_splits(prose, tokenizer, chunk_len=64, score_tokens=3000, eval_tokens=2000, relearn_tokens=1500,
                    harden_tokens=10**9)
    with pytest.raises(UserError, match=r"too few for 2000 evaluation \+ 3000 scoring \+ \d+ relearning .*"
                                        r"--relearn-tokens"):
        make_splits(prose, tokenizer, chunk_len=64, score_tokens=3000, eval_tokens=2000, relearn_tokens=10**9)


def test_splits_follow_the_seed(prose, tokenizer):
    def split(seed):
        return make_splits(prose, tokenizer, chunk_len=32, score_tokens=500, eval_tokens=500, seed=seed)

    a, b, c = split(0), split(0), split(1)
    assert torch.equal(a.score.input_ids, b.score.input_ids) and a.eval.doc_ids == b.eval.doc_ids
    assert not torch.equal(a.score.input_ids, c.score.input_ids)


def test_too_few_tokens_says_how_many(tokenizer):
    docs = small_docs(3, 20)
    sizes = [len(tokenizer(d.text, add_special_tokens=False)["input_ids"]) + 1 for d in docs]
    have = sum(sizes)
    with pytest.raises(UserError) as error:
        make_splits(docs, tokenizer, chunk_len=16, score_tokens=have, eval_tokens=10, name="tiny")
    message = str(error.value)
    assert f"'tiny' has {have} tokens in all, in 3 documents (or pieces of at most {PIECE_CHARS} " in message
    assert f"too few for 10 evaluation + {have} scoring tokens" in message
    assert message.endswith("use smaller --eval-tokens/--score-tokens or more data")


def test_too_few_tokens_says_what_whole_documents_left(tokenizer):
    """More tokens than asked, but the evaluation part's whole document leaves too few for scoring."""
    text = small_docs(1, 40)[0].text
    each = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
    docs = [Document("a", text), Document("b", text)]
    assert 2 * each > 10 + (each + 1)
    with pytest.raises(UserError) as error:
        make_splits(docs, tokenizer, chunk_len=16, score_tokens=each + 1, eval_tokens=10)
    assert f"has {2 * each} tokens in all, in 2 documents" in str(error.value)
    assert f"took {each}, leaving {each} for scoring" in str(error.value)


@pytest.mark.parametrize("kwargs", [{"chunk_len": 1}, {"score_tokens": 0}, {"eval_tokens": -5}])
def test_bad_split_settings(tokenizer, kwargs):
    with pytest.raises(UserError):
        make_splits(small_docs(), tokenizer, **kwargs)


class SepOnly:
    """A tokenizer with a SEP token but neither EOS nor pad, as some encoders have."""

    eos_token_id = pad_token_id = None
    sep_token_id = 7

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, text, **kwargs):
        return self.inner(text, **kwargs)


def test_separator_falls_back_to_sep_and_is_required(tokenizer):
    sep_only = SepOnly(tokenizer)
    splits = make_splits(small_docs(), sep_only, chunk_len=16, score_tokens=100, eval_tokens=50)
    assert 7 in splits.eval.input_ids.flatten().tolist()
    assert (splits.eval.input_ids[splits.eval.attention_mask == 0] == 7).all()
    sep_only.sep_token_id = None
    with pytest.raises(UserError, match="neither an EOS nor a SEP"):
        make_splits(small_docs(), sep_only, chunk_len=16, score_tokens=100, eval_tokens=50)


# ---------------------------------------------------------------- masking


def test_mask_for_mlm_is_seeded_and_spares_padding(prose, tokenizer):
    chunks = make_splits(prose, tokenizer, chunk_len=100, score_tokens=100, eval_tokens=20_050).eval
    masked, labels = mask_for_mlm(chunks, tokenizer, seed=3)
    again, _ = mask_for_mlm(chunks, tokenizer, seed=3)
    other, _ = mask_for_mlm(chunks, tokenizer, seed=4)
    assert torch.equal(masked, again) and not torch.equal(masked, other)
    chosen = labels != -100
    assert 0.13 < chosen.sum() / chunks.tokens < 0.17
    assert torch.equal(labels[chosen], chunks.input_ids[chosen])
    pad = chunks.attention_mask == 0
    assert pad.any() and not chosen[pad].any() and torch.equal(masked[pad], chunks.input_ids[pad])
    assert not chosen[chunks.input_ids == tokenizer.eos_token_id].any()
    share_masked = (masked[chosen] == tokenizer.mask_token_id).float().mean()
    assert 0.75 < share_masked < 0.85
    assert torch.equal(masked[~chosen], chunks.input_ids[~chosen])


# ---------------------------------------------------------------- loaders


def test_file_folder_glob_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("alpha text", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("print('b')", encoding="utf-8")
    (tmp_path / "sub" / "c.txt").write_text("gamma", encoding="utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "index").write_bytes(b"\0\1binary")
    lines = [{"text": "first"}, {"id": "x", "text": "second"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n\n", encoding="utf-8")

    assert load_documents(str(tmp_path / "a.txt")) == [Document(str(tmp_path / "a.txt"), "alpha text")]
    assert [d.id for d in load_documents(str(tmp_path / "sub"))] == ["b.py", "c.txt"]
    assert [d.id for d in load_documents(str(tmp_path))] == ["a.txt", "d.jsonl", "sub/b.py", "sub/c.txt"]
    assert [d.id for d in load_documents(str(tmp_path / "**" / "*.txt"))] == ["a.txt", "sub/c.txt"]
    assert [d.text for d in load_documents(str(tmp_path / "sub" / "*.py"))] == ["print('b')"]
    assert load_documents(str(tmp_path / "d.jsonl")) == [Document("1", "first"), Document("x", "second")]


def test_filters_by_language_and_path(tmp_path):
    """Built-ins know each document's language from their manifest, files from their suffix, .jsonl lines from
    a "language" field; paths are globs on the document id, tested before a long file is cut in pieces."""
    code = load_documents("code")
    no_python = load_documents("code#lang!=python")
    assert {d.id for d in no_python} == {d.id for d in code if not d.id.startswith("idlelib/")}
    assert {d.language for d in load_documents("code#lang=Python")} == {"Python"}
    assert all(d.id.startswith("go/") for d in load_documents("code#path=go/*,lang=go"))
    (tmp_path / "a.py").write_text("x = 1\n" * 20_000, encoding="utf-8")  # long: it comes in pieces
    (tmp_path / "b.rs").write_text("fn main() {}", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "Hallo", "language": "German"}) + "\n", encoding="utf-8")
    python = load_documents(f"{tmp_path}#path=*.py")
    assert len(python) > 1 and all(d.id.startswith("a.py#") and d.language == "Python" for d in python)
    assert [d.id for d in load_documents(f"{tmp_path}#lang!=python,path!=*.jsonl")] == ["b.rs"]
    assert load_documents(f"{tmp_path / 'c.jsonl'}#lang=german") == [Document("1", "Hallo", "German")]
    with pytest.raises(UserError, match="no document of 'code' passes lang=cobol.*its languages: C, C"):
        load_documents("code#lang=cobol")
    for spec in ("code#lang", "code#size=3", "code#lang=", "#lang=python"):
        with pytest.raises(UserError, match="filter|no dataset before"):
            load_documents(spec)


def test_filtered_runs_are_named_apart():
    from selprune.config import RunConfig

    names = {RunConfig(forget="python", retain=spec).run_name for spec in ("code", "code#lang=python",
                                                                           "code#lang!=python")}
    assert len(names) == 3


def lines_text(paragraph: str, line: str, paragraphs: int = 80) -> str:
    """About 4 x PIECE_CHARS of distinct lines, `line` between lines and `paragraph` between paragraphs."""
    return paragraph.join(line.join(f"p{p} l{i} " + "words " * 40 for i in range(5)) for p in range(paragraphs))


@pytest.mark.parametrize("paragraph, line, cut_after", [("\n\n", "\n", "\n\n"), (" ", "\n", "\n"), (" ", " ", "")],
                         ids=["blank-lines", "lines", "hard"])
def test_split_text_cuts_at_paragraphs_then_lines_then_anywhere(paragraph, line, cut_after):
    text = lines_text(paragraph, line)
    pieces = split_text(text)
    assert "".join(pieces) == text, "the pieces are the whole text, in order"
    assert len(pieces) > 3 and all(PIECE_CHARS // 2 < len(piece) <= PIECE_CHARS for piece in pieces[:-1])
    assert 0 < len(pieces[-1]) <= PIECE_CHARS
    for piece in pieces[:-1]:
        assert piece.endswith(cut_after) if cut_after else len(piece) == PIECE_CHARS
    assert split_text("short\n\ntext") == ["short\n\ntext"]


def test_long_user_documents_come_in_pieces(tmp_path, monkeypatch):
    text = lines_text("\n\n", "\n")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "book.txt").write_text(text, encoding="utf-8")
    (tmp_path / "texts" / "short.txt").write_text("a short one", encoding="utf-8")
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "x", "text": text}) + "\n", encoding="utf-8")
    book = load_documents(str(tmp_path / "texts" / "book.txt"))
    assert [d.id for d in book] == [f"{tmp_path / 'texts' / 'book.txt'}#{n}" for n in range(1, len(book) + 1)]
    assert "".join(d.text for d in book) == text and all(len(d.text) <= PIECE_CHARS for d in book)
    folder = load_documents(str(tmp_path / "texts"))
    assert [d.id for d in folder] == [f"book.txt#{n}" for n in range(1, len(book) + 1)] + ["short.txt"]
    assert load_documents(str(tmp_path / "texts" / "*.txt")) == folder
    assert [d.id for d in load_documents(str(tmp_path / "d.jsonl"))] == [f"x#{n}" for n in range(1, len(book) + 1)]
    monkeypatch.setattr(sources, "_load_hf_dataset", lambda *args: [{"text": text}])
    assert load_documents("hf:org/corpus")[-1].id == f"org/corpus/train/0#{len(book)}"


def test_one_long_file_gives_disjoint_splits(tmp_path, prose, tokenizer):
    """A single file used to be one document, which only one of the two parts could take."""
    path = tmp_path / "book.txt"
    path.write_text("\n\n".join(d.text for d in prose[:12]), encoding="utf-8")
    docs = load_documents(str(path))
    assert len(docs) >= 3
    splits = make_splits(docs, tokenizer, chunk_len=64, score_tokens=3000, eval_tokens=3000)
    assert splits.score.tokens == splits.eval.tokens == 3000
    assert not set(splits.score.doc_ids) & set(splits.eval.doc_ids)
    assert not rows(splits.score) & rows(splits.eval)


def test_limits_stop_reading(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.txt").write_text("x" * 100, encoding="utf-8")
    assert len(load_documents(str(tmp_path), max_documents=2)) == 2
    assert len(load_documents(str(tmp_path), max_chars=150)) == 2


def bad_inputs(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "binary.bin").write_bytes(b"\x89PNG\0\0data")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n', encoding="utf-8")
    (tmp_path / "notext.jsonl").write_text('{"body": "ok"}\n', encoding="utf-8")
    return {
        "missing.txt": "neither a built-in",
        "nonsense-name": "prose.*hf:NAME",
        "empty.txt": "empty",
        "empty_dir": "no files",
        "binary.bin": "binary.bin is a binary file",
        "latin1.txt": "latin1.txt is not UTF-8",
        "*.nothing": "matches no file",
        "bad.jsonl": "line 2 is not valid JSON",
        "notext.jsonl": "no string field 'text'",
    }


def test_bad_inputs_are_user_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spec, message in bad_inputs(tmp_path).items():
        with pytest.raises(UserError, match=message):
            load_documents(spec)


# ---------------------------------------------------------------- Hugging Face


def test_hf_streams_from_the_dataset_loader(monkeypatch):
    calls = []

    def fake_load(name, config, split):
        calls.append((name, config, split))
        return ({"text": f"row {i}", "label": i} for i in range(10**9))  # endless stream

    monkeypatch.setattr(sources, "_load_hf_dataset", fake_load)
    docs = load_documents("hf:org/corpus", max_documents=3)
    assert [d.text for d in docs] == ["row 0", "row 1", "row 2"]
    assert docs[0].id == "org/corpus/train/0"
    load_documents("hf:org/corpus:en:validation", max_chars=10)
    assert calls == [("org/corpus", None, "train"), ("org/corpus", "en", "validation")]


def test_hf_without_datasets_library(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(UserError, match="pip install datasets"):
        load_documents("hf:org/corpus")


def test_hf_offline_and_wrong_fields(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/corpus' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(UserError, match=r"'org/corpus'.*Couldn't reach") as error:
        load_documents("hf:org/corpus", max_chars=1000)
    assert "\n" not in str(error.value)
    monkeypatch.setattr(sources, "_load_hf_dataset", lambda *a: [{"content": "x"}])
    with pytest.raises(UserError, match="no 'text' field"):
        load_documents("hf:org/corpus")


# ---------------------------------------------------------------- a run's splits, for every command


class CountedStream:
    """A fake streamed Hugging Face dataset of `size` records per name that counts the records read."""

    def __init__(self, size: int = 2000):
        self.size, self.read = size, 0

    def __call__(self, name, config, split):
        for i in range(self.size):
            self.read += 1
            yield {"text": document_text(name, i)}


def document_text(name: str, i: int) -> str:
    from conftest import TEXT

    words = TEXT.split()
    return " ".join(words[(i * 7 + k + len(name)) % len(words)] for k in range(14)) + f" {i}"


def write_source(kind: str, root, name: str) -> str:
    """A dataset spec of `kind` (file, folder, hf) with 60 documents of its own text (hf: fake, endless)."""
    if kind == "hf":
        return f"hf:org/{name}"
    if kind == "file":
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": i, "text": document_text(name, i)}) + "\n" for i in range(60)))
        return str(path)
    (root / name).mkdir()
    for i in range(60):
        (root / name / f"{i}.txt").write_text(document_text(name, i))
    return str(root / name)


@pytest.mark.parametrize("kind", ["file", "folder", "hf"])
def test_run_relearn_and_inspect_see_the_same_documents_in_each_split(kind, tiny_config, tmp_path, monkeypatch):
    from selprune import run as run_module
    from selprune.data import chunks
    from selprune.inspection.session import Inspection
    from selprune.inspection.settings import InspectConfig
    from selprune.recipe import recipe_of
    from selprune.relearn import Relearn, RelearnConfig
    from selprune.rundir import RunFolder

    stream = CountedStream()
    monkeypatch.setattr(sources, "_load_hf_dataset", stream)
    made = []

    class Recorded(chunks.Splits):
        def __post_init__(self):
            made.append(self)

    monkeypatch.setattr(chunks, "Splits", Recorded)
    forget, retain = (write_source(kind, tmp_path, name) for name in ("forget", "retain"))
    folder = run_module.run(tiny_config(tmp_path / "run", forget=forget, retain=retain, steps=1), quiet=True)
    ran, made[:] = made[:2], []
    run_read, stream.read = stream.read, 0

    relearning = Relearn(RelearnConfig(run=str(folder), relearn_tokens=96, chunk_len=16, eval_tokens=64,
                                       random_control=False, device="cpu"), quiet=True)
    try:
        relearning.load()
    finally:
        relearning.run.unlock()
    relearned, made[:] = made[:2], []
    if kind == "hf":  # the run's documents and a little more for the attack, not the whole dataset
        assert run_read < stream.size and run_read < stream.read < 2 * run_read
    run_folder = RunFolder(folder)
    inspection = Inspection(InspectConfig(run=str(folder)), run_folder.read_config(), [recipe_of(folder, 1)], True)
    inspection.tokenizer = relearning.tokenizer
    inspected = [inspection._side(role, spec) for role, spec in (("forget", forget), ("retain", retain))]

    for run_splits, relearn_splits, side in zip(ran, relearned, inspected):
        assert relearn_splits.eval.doc_ids == run_splits.eval.doc_ids == made.pop(0).eval.doc_ids
        assert relearn_splits.score.doc_ids == run_splits.score.doc_ids
        assert {d.id for d in side.held_out} == set(run_splits.eval.doc_ids)
        assert {d.id for d in side.scored} == set(run_splits.score.doc_ids)
        assert not set(relearn_splits.relearn.doc_ids) & set(run_splits.eval.doc_ids + run_splits.score.doc_ids)


def test_the_hf_read_limit_counts_the_harden_budgets_and_the_relearn_tokens(monkeypatch, tokenizer):
    monkeypatch.setattr(sources, "_load_hf_dataset", CountedStream())
    plain = types.SimpleNamespace(chunk_len=16, score_tokens=100, eval_tokens=100, seed=0)  # no --harden fields
    hardened = types.SimpleNamespace(**vars(plain), harden=2, harden_holdout=50, harden_tokens=200, harden_chunk_len=8)

    def read_until(docs, tokens):  # the documents reach 16 characters a token, the last one only just
        chars = [len(d.text) for d in docs]
        return sum(chars[:-1]) < HF_CHARS_PER_TOKEN * tokens <= sum(chars)

    alone = run_documents(plain, "hf:org/x")
    assert read_until(alone.run, 200) and not alone.later
    hard = run_documents(hardened, "hf:org/x")
    assert read_until(hard.run, 450) and not hard.later
    assert run_documents(hardened, "hf:org/x", role="retain") == alone  # --harden trains on the forget data only
    attack = run_documents(hardened, "hf:org/x", relearn_tokens=30)
    assert attack.run == hard.run and read_until(attack.run + attack.later, 480)
    splits = run_splits(hardened, tokenizer, "hf:org/x")
    assert splits.relearn.tokens == 50 and splits.harden.tokens == 200 and splits.harden.input_ids.shape[1] == 8
    relearn = run_splits(hardened, tokenizer, "hf:org/x", relearn_tokens=30, relearn_chunk_len=4)
    assert relearn.harden is None and relearn.relearn.input_ids.shape[1] == 4
    assert relearn.relearn.doc_ids[0] == splits.relearn.doc_ids[0] and relearn.eval.doc_ids == splits.eval.doc_ids
    assert run_splits(plain, tokenizer, "hf:org/x", role="watch").score is None
