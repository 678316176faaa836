"""Tiny random-initialised models, one per supported architecture, built from configs (no download)."""

import torch
import transformers as tf

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
    "gemma": lambda: tf.GemmaConfig(**_GQA, head_dim=8),
    "gemma2": lambda: tf.Gemma2Config(**_GQA, head_dim=8),
    "gemma3_text": lambda: tf.Gemma3TextConfig(**_GQA, head_dim=8, sliding_window=4),
    "phi": lambda: tf.PhiConfig(**_COMMON),
    "phi3": lambda: tf.Phi3Config(**_GQA, pad_token_id=0),
    "roberta": lambda: tf.RobertaConfig(**_COMMON, pad_token_id=1, type_vocab_size=1),
    "bert": lambda: tf.BertConfig(**_COMMON, pad_token_id=0),
}
MASKED = {"roberta", "bert"}


def tiny_model(model_type: str, seed: int = 0, attn: str = "eager"):
    """A tiny fp32 model in eval mode; dropout off so outputs are deterministic."""
    config = CONFIGS[model_type]()
    config._attn_implementation = attn
    torch.manual_seed(seed)
    auto = tf.AutoModelForMaskedLM if model_type in MASKED else tf.AutoModelForCausalLM
    model = auto.from_config(config)
    return model.eval().requires_grad_(False)


def tiny_batch(seed: int = 0, batch: int = 2, length: int = 10):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, -3:] = 0  # right padding in the last row
    return ids, mask


TEXT = ("the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs! "
        "def f(x): return x + 1 # a tiny function\nfor i in range(10): print(i, f(i))\n") * 4


def tiny_tokenizer():
    """A BPE tokenizer trained in memory on TEXT, small enough for VOCAB ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=sorted(set(TEXT)))
    tok.train_from_iterator([TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>", mask_token="<mask>")


def save_tiny(model_type: str, folder, seed: int = 0):
    """A tiny model + tokenizer saved as a Hugging Face folder, loadable by selprune by path."""
    model = tiny_model(model_type, seed, attn="sdpa")
    tok = tiny_tokenizer()
    assert len(tok) <= VOCAB
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
