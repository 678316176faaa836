"""Shared fixtures: tiny random-initialised models (one per supported architecture), built from configs
with no download, a tiny tokenizer, two small datasets of different text for whole runs, one finished run
and the reader of a run's metrics."""

from pathlib import Path

import pytest
import torch
import transformers as tf

from selprune.arch import ARCHITECTURES
from selprune.config import RunConfig
from selprune.rundir import COLUMNS, RunFolder

VOCAB = 96
_IDS = dict(bos_token_id=1, eos_token_id=2)
_COMMON = dict(**_IDS, vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=24, max_position_embeddings=64)
_GQA = dict(_COMMON, num_key_value_heads=2)

CONFIGS = {
    "opt": lambda: tf.OPTConfig(**_IDS, vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, ffn_dim=24,
                                num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=16),
    "gpt2": lambda: tf.GPT2Config(**_IDS, vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=4, n_positions=64, n_inner=24),
    "gpt_neox": lambda: tf.GPTNeoXConfig(**_COMMON),
    "gptj": lambda: tf.GPTJConfig(**_IDS, vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=4, n_positions=64,
                                  rotary_dim=4, n_inner=24),
    "llama": lambda: tf.LlamaConfig(**_GQA),
    "mistral": lambda: tf.MistralConfig(**_GQA),
    "qwen2": lambda: tf.Qwen2Config(**_GQA),
    "qwen3": lambda: tf.Qwen3Config(**_GQA, head_dim=8),
    "gemma": lambda: tf.GemmaConfig(**_GQA, head_dim=8),
    "gemma2": lambda: tf.Gemma2Config(**_GQA, head_dim=8),
    "gemma3_text": lambda: tf.Gemma3TextConfig(**_GQA, head_dim=8, sliding_window=4),
    # the multimodal wrapper: the language model sits one level down, its numbers in text_config
    "gemma3": lambda: tf.Gemma3Config(
        text_config=dict(_GQA, head_dim=8, sliding_window=4),
        vision_config=dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4, image_token_index=VOCAB - 1, boi_token_index=VOCAB - 2, eoi_token_index=VOCAB - 3),
    "phi": lambda: tf.PhiConfig(**_COMMON),
    "phi3": lambda: tf.Phi3Config(**_GQA, pad_token_id=0),
    "roberta": lambda: tf.RobertaConfig(**_COMMON, pad_token_id=1, type_vocab_size=1),
    "bert": lambda: tf.BertConfig(**_COMMON, pad_token_id=0),
}
MODEL_TYPES = sorted(ARCHITECTURES)  # every supported architecture is tested: conftest must know each
TEXT = ("the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs! "
        "def f(x): return x + 1 # a tiny function\nfor i in range(10): print(i, f(i))\n") * 4


def build_tiny_model(model_type: str, seed: int = 0, attn: str = "eager"):
    """A tiny fp32 model in eval mode; dropout off so outputs are deterministic."""
    config = CONFIGS[model_type]()
    config._attn_implementation = attn
    torch.manual_seed(seed)
    auto = tf.AutoModelForMaskedLM if ARCHITECTURES[model_type].masked_lm else tf.AutoModelForCausalLM
    return auto.from_config(config).eval().requires_grad_(False)


def build_tiny_batch(seed: int = 0, batch: int = 2, length: int = 10):
    """Random token ids (not the special ids 0-2) with right padding in the last row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, -3:] = 0
    return ids, mask


def build_tiny_tokenizer():
    """A BPE tokenizer trained in memory on TEXT, small enough for VOCAB ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=sorted(set(TEXT)))
    tok.train_from_iterator([TEXT], trainer)
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                      eos_token="</s>", unk_token="<unk>", mask_token="<mask>")


def save_tiny_model(model_type: str, folder, seed: int = 0):
    """A tiny model + tokenizer saved as a Hugging Face folder, loadable by selprune by path."""
    model = build_tiny_model(model_type, seed, attn="sdpa")
    tok = build_tiny_tokenizer()
    assert len(tok) <= VOCAB
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_model():
    """Factory: tiny_model(model_type, seed=0, attn="eager")."""
    return build_tiny_model


@pytest.fixture
def tiny_batch():
    """Factory: tiny_batch(seed=0, batch=2, length=10) -> (ids, mask)."""
    return build_tiny_batch


@pytest.fixture
def save_tiny():
    """Factory: save_tiny(model_type, folder, seed=0) -> folder."""
    return save_tiny_model


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A saved tiny Llama (selprune loads it by path), shared by the whole session: never modify it."""
    return save_tiny_model("llama", tmp_path_factory.mktemp("llama"))


def write_datasets(root, documents: int = 6):
    """Two small 'datasets' of different text, a few documents each, as folders root/forget, root/retain."""
    for name, text in (("forget", TEXT[:160]), ("retain", TEXT[160:])):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(documents):
            (folder / f"doc{i}.txt").write_text(text * 3 + f" {i}")
    return root


@pytest.fixture
def make_datasets():
    """Factory: make_datasets(root, documents=6) -> root with forget/ and retain/ folders."""
    return write_datasets


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    return write_datasets(tmp_path_factory.mktemp("data"))


TINY_RUN = dict(steps=3, fraction=0.1, score_tokens=300, eval_tokens=200, chunk_len=32, batch_size=3,
                dtype="float32", skip_top_tokens=5, compile=False)


@pytest.fixture(scope="session")
def tiny_config(tiny_llama, tiny_data):
    """Factory: tiny_config(out, **overrides) -> a RunConfig of a 3-step run on the tiny Llama."""
    def make(out, **overrides) -> RunConfig:
        settings = dict(TINY_RUN, model=str(tiny_llama), forget=str(tiny_data / "forget"),
                        retain=str(tiny_data / "retain"), output=str(out))
        return RunConfig(**{**settings, **overrides})
    return make


@pytest.fixture(scope="session")
def finished_run(tiny_config, tmp_path_factory) -> Path:
    """A finished run at TINY_RUN's settings, its pruned model saved, shared by the whole session: never modify
    it (copy it first, as shutil.copytree(finished_run, tmp_path / "run"))."""
    from selprune.run import run

    return run(tiny_config(tmp_path_factory.mktemp("finished") / "run", save_model=True), quiet=True)


def read_metrics(folder) -> list[dict[str, str]]:
    """A run folder's metrics.csv, as rows of strings in file order."""
    return RunFolder(folder).rows()


def write_run_folder(path, config: RunConfig, rows: list[dict], record) -> Path:
    """A run folder written the way a run writes it (rundir), from partial metrics rows: each row needs
    step, role, dataset, fraction_pruned, top1 and perplexity; the other columns get plain values."""
    filled = []
    for row in rows:
        plain = {"units_pruned": 0, "tokens": 1000, "top10": 0.9, "loss": 1.0, "top1_skip": row["top1"],
                 "top10_skip": 0.9, "loss_skip": 1.0, "perplexity_skip": row["perplexity"],
                 "top1_drop_rel": 0.0, "top1_drop_abs": 0.0}
        filled.append({k: {**plain, **row}[k] for k in COLUMNS})
    folder = RunFolder(path)
    folder.path.mkdir(parents=True)
    folder.commit(max(r["step"] for r in rows), config, record, filled)
    return folder.path


TINY_UNLEARN = dict(method="graddiff", lr=(3e-2,), steps=4, eval_every=2, batch_size=2, score_tokens=300,
                    eval_tokens=200, chunk_len=32, skip_top_tokens=5, dtype="float32", compile=False, device="cpu")


@pytest.fixture(scope="session")
def make_unlearning(tiny_llama, tiny_data):
    """Factory: make_unlearning(out, **overrides) -> a finished 4-step graddiff unlearning folder of the tiny
    Llama, on the data of a tiny_config run with chunk_len=32, score_tokens=300, eval_tokens=200."""
    from selprune.unlearn import UnlearnConfig, unlearn

    def make(out, **overrides) -> Path:
        settings = dict(TINY_UNLEARN, model=str(tiny_llama), forget=str(tiny_data / "forget"),
                        retain=str(tiny_data / "retain"), output=str(out))
        return unlearn(UnlearnConfig(**{**settings, **overrides}), quiet=True)
    return make


@pytest.fixture(scope="session")
def write_run():
    """Factory: write_run(path, config, rows, record) -> path (see write_run_folder)."""
    return write_run_folder


def one_error_line(capsys, argv, *phrases) -> str:
    """`selprune ARGV` refuses with exit status 2 and one line that starts "selprune: error:" and says each
    phrase (argparse's refusals too); returns the line."""
    from selprune.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("selprune: error:"), (code, err)
    for phrase in phrases:
        assert phrase in err[0], err[0]
    return err[0]

class Crash(Exception):
    """The failure that a test injects to stand for a crash."""


def crash_in_step_2(monkeypatch, config: RunConfig) -> None:
    """Run `config` and crash it while it selects step 2's units, after step 1 was committed."""
    from selprune import run as run_module

    real = run_module.select

    def flaky(*args, **kw):
        if RunFolder(config.output_dir).completed_step() == 1:
            raise Crash()
        return real(*args, **kw)

    monkeypatch.setattr(run_module, "select", flaky)
    with pytest.raises(Crash):
        run_module.run(config, quiet=True)
    monkeypatch.undo()
    assert RunFolder(config.output_dir).completed_step() == 1


def crashed_before(monkeypatch, config: RunConfig, *columns: str) -> None:
    """Run `config` into a crash after step 1 (crash_in_step_2), then take `columns` out of its metrics.csv,
    checksum included (and progress.json's record of what they need): the folder as a selprune from before those
    columns would have left it."""
    import hashlib
    import json

    crash_in_step_2(monkeypatch, config)
    folder = RunFolder(config.output_dir)
    lines = [line.split(",") for line in folder.metrics_path.read_text().splitlines()]
    newer = [lines[0].index(column) for column in columns]
    older = "".join(",".join(v for i, v in enumerate(line) if i not in newer) + "\n" for line in lines)
    folder.metrics_path.write_text(older)
    progress = json.loads(folder.progress_path.read_text())
    progress["sha256"]["metrics.csv"] = hashlib.sha256(older.encode()).hexdigest()
    if "top1_drop_abs_se" in columns:  # its record came with it
        del progress["base_chunks"]
    folder.progress_path.write_text(json.dumps(progress))
