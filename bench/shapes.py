"""Random-initialised OPT models at the paper's sizes, built from their configs (nothing is downloaded).

Speed and memory do not depend on the weights' values or on the text, so benchmarks of large shapes
run on these and on random token ids.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, OPTConfig

SHAPES = {  # facebook/opt-* configs: hidden, layers, heads, ffn
    "1.3b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, ffn_dim=8192),
    "6.7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, ffn_dim=16384),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=256),
}
VOCAB = 50272


def opt_model(shape: str, device, dtype=torch.bfloat16, attn: str = "sdpa"):
    config = OPTConfig(vocab_size=VOCAB, max_position_embeddings=2048,
                       word_embed_proj_dim=SHAPES[shape]["hidden_size"], **SHAPES[shape])
    config._attn_implementation = attn
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


def random_chunks(n_chunks: int, chunk_len: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n_chunks, chunk_len), generator=torch.Generator().manual_seed(seed))
