"""The real embedded model (SmolLM2-135M, installed by scripts/setup.sh): it loads, caches, and predicts."""

import pytest
import torch

from selprune import models
from selprune.data import load_documents, make_splits
from selprune.evaluate import evaluate_causal

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded():
    if models.ALIASES["smollm2-135m"].gguf_path() is None:
        pytest.fail("the embedded model is not installed: run scripts/setup.sh")
    return models.load_model("smollm2-135m")


def test_second_load_comes_from_the_cache(embedded, monkeypatch):
    def no_conversion(*args):
        raise AssertionError("converted the GGUF again instead of reading the cache")

    monkeypatch.setattr(models, "_convert_gguf", no_conversion)
    source = models.local_folder("smollm2-135m")
    assert source.gguf_file is None and (models._cache_root() / "models") in models.Path(source.location).parents
    model, _ = models.load_model("smollm2-135m")
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30


@pytest.mark.parametrize("dataset, floor", [("prose", 0.25), ("python", 0.45)])
def test_predicts_english_and_python_well_above_chance(embedded, dataset, floor):
    """Measured here: top-1 about 0.36 on prose and 0.6 on Python (DATA_SOURCES.md); chance is 1/49152."""
    model, tokenizer = embedded
    splits = make_splits(load_documents(dataset), tokenizer, chunk_len=256, score_tokens=256,
                         eval_tokens=2048, seed=0)
    metrics, _ = evaluate_causal(model, splits.eval.input_ids, splits.eval.attention_mask, 4,
                                 torch.empty(0, dtype=torch.long))
    assert metrics.top1 > floor, metrics
    assert metrics.perplexity < 60, metrics
