"""Model loading refuses bad input in one line: broken files, devices, device maps, an unreachable hub.
Only tiny models saved by the tests are loaded; nothing is downloaded."""

import errno
import random
import shutil
import socket
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers as tf

from selprune import models
from selprune.arch import ARCHITECTURES
from selprune.errors import UserError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty selprune cache, for GGUF conversions."""
    monkeypatch.setenv("SELPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def cached_models(cache):
    return sorted(p.name for p in (cache / "models").glob("*")) if (cache / "models").exists() else []


# ---------------------------------------------------------------- broken files


GARBAGE_GGUF = {
    "random": random.Random(0).randbytes(4096),
    "after-magic": b"GGUF\3\0\0\0" + random.Random(1).randbytes(4096),
    "no-metadata": b"GGUF\3" + bytes(19),  # version 3, no tensors, no keys
    "empty": b"",
}


@pytest.mark.parametrize("content", GARBAGE_GGUF.values(), ids=GARBAGE_GGUF.keys())
def test_garbage_gguf_is_a_user_error(tmp_path, cache, content):
    (tmp_path / "junk.gguf").write_bytes(content)
    for load in (models.load_config, models.load_model):
        with pytest.raises(UserError, match=r"junk\.gguf is not a valid GGUF file.*: download it again") as error:
            load(str(tmp_path / "junk.gguf"))
        assert "\n" not in str(error.value)
    assert cached_models(cache) == []


def test_failed_conversion_leaves_no_cache_folder(tmp_path, cache, monkeypatch, tiny_llama):
    """Saving the conversion fails (disk full): the OSError stands (exit status 4), and no folder is left."""
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    model, tokenizer = models.load_model(str(tiny_llama))
    monkeypatch.setattr(tf.AutoModelForCausalLM, "from_pretrained", lambda *args, **kwargs: model)
    monkeypatch.setattr(tf.AutoTokenizer, "from_pretrained", lambda *args, **kwargs: tokenizer)

    def disk_full(folder, **kwargs):
        (folder / "tokenizer.json").write_text("{")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tokenizer, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        models.local_folder(str(tmp_path / "model.gguf"))
    assert cached_models(cache) == []


@pytest.fixture
def copy_of(tiny_llama, tmp_path):
    """Factory: a copy of the tiny Llama folder, to break."""
    return lambda: shutil.copytree(tiny_llama, tmp_path / "model")


@pytest.mark.parametrize("corrupt", ["text", "truncated"])
def test_corrupt_safetensors_names_the_file(copy_of, corrupt):
    folder = copy_of()
    weights = folder / "model.safetensors"
    weights.write_bytes(b"not weights at all\n" if corrupt == "text" else weights.read_bytes()[:1000])
    with pytest.raises(UserError, match=r"model\.safetensors is not a valid safetensors file \(.*\): download"):
        models.load_model(str(folder))


def test_pytorch_checkpoints_are_checked_too(copy_of):
    folder = copy_of()
    model, _ = models.load_model(str(folder))
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    again, _ = models.load_model(str(folder))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    (folder / "pytorch_model.bin").write_text("hello")
    with pytest.raises(UserError, match=r"pytorch_model\.bin is not a PyTorch checkpoint"):
        models.load_model(str(folder))


def test_config_that_is_not_json(copy_of):
    folder = copy_of()
    (folder / "config.json").write_text('{"model_type": "llama",,}')
    for load in (models.load_config, models.load_model):
        with pytest.raises(UserError, match=r"config\.json is not valid JSON \(.*line 1 column 24.*\): fix it"):
            load(str(folder))


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe" + random.Random(2).randbytes(100), r"tokenizer\.json is not valid JSON \(.*\): fix it"),
    (b'{"added_tokens": [], "model": {"type": "BPE", "vocab": 3}}',
     r"cannot load the tokenizer of model .*\(.*expected a map.*\): download or save the model again"),
], ids=["bytes", "wrong-fields"])
def test_broken_tokenizer_file(copy_of, content, message):
    folder = copy_of()
    (folder / "tokenizer.json").write_bytes(content)
    with pytest.raises(UserError, match=message):
        models.load_model(str(folder))


# ---------------------------------------------------------------- devices


@pytest.mark.parametrize("device", ["meta", "mps", "xla", "gpu", "cuda:x"])
def test_devices_selprune_cannot_compute_on(device):
    with pytest.raises(UserError, match=rf"cannot compute on device '{device}': use auto, cpu, cuda or cuda:N"):
        models.resolve_device(device)


def test_cuda_index_must_be_a_visible_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert models.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(UserError, match=r"'cuda:7' asked for but only 2 CUDA GPU\(s\) are visible: use one of "
                                        r"cuda:0, cuda:1"):
        models.resolve_device("cuda:7")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU is visible: use --device cpu"):
        models.resolve_device("cuda")


def test_device_maps_accelerate_accepts_or_none(tiny_llama):
    for device_map in [*models.DEVICE_MAPS, "", {"": "cpu"}]:
        model, _ = models.load_model(str(tiny_llama), device_map=device_map)
        assert {p.device.type for p in model.parameters()} == {"cpu"}


@pytest.mark.parametrize("device_map, message", [
    ("foo", "unknown device map 'foo': use auto, balanced, balanced_low_0, sequential, or \"\" for none"),
    ("cpu", r"unknown device map 'cpu'.*\(to choose one device, use --device\)"),
    ({"": "disk"}, "cannot compute on device 'disk'"),
    ({"model.layers": "meta"}, "cannot compute on device 'meta'"),
])
def test_other_device_maps_are_refused(tiny_llama, device_map, message):
    with pytest.raises(UserError, match=message):
        models.load_model(str(tiny_llama), device_map=device_map)


# ---------------------------------------------------------------- the hub


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, no offline setting, no proxy, and a network that fails any connection."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://huggingface.co")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    probes = []

    def unreachable(address, *args, **kwargs):
        probes.append(address)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    huggingface_hub.utils.build_hf_headers()  # its once-a-process best-effort call home, out of the way
    probes.clear()
    return probes


OFFLINE = ("cannot reach the Hugging Face hub to download 'someone/some-model' (offline): use a local folder, "
           "a .gguf file or an installed alias (selprune list models)")


@pytest.mark.parametrize("why", ["HF_HUB_OFFLINE", "unreachable"])
def test_unreachable_hub_fails_fast_in_one_line(no_hub, monkeypatch, capfd, why):
    if why == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    for load in (models.load_config, models.load_model):
        with pytest.raises(UserError) as error:
            load("someone/some-model")
        assert str(error.value) == OFFLINE
    assert time.monotonic() - start < 10
    assert no_hub == ([] if why == "HF_HUB_OFFLINE" else [("huggingface.co", 443)] * 2)
    assert "Retrying" not in capfd.readouterr().err


def test_hub_id_in_the_local_cache_loads_without_the_network(no_hub, tiny_llama):
    """The hub's cache layout: models--ORG--NAME/snapshots/COMMIT/ and refs/main naming the commit."""
    repo = Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--someone--tiny-llama"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_llama, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model, tokenizer = models.load_model("someone/tiny-llama")
    assert model.config.model_type == "llama" and len(tokenizer) > 0
    assert no_hub == []


# ---------------------------------------------------------------- context length


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_context_length_is_the_longest_input_the_model_takes(tiny_model, model_type):
    model = tiny_model(model_type)
    length = models.context_length(model.config)
    assert length == (62 if model_type == "roberta" else 64)  # conftest: 64 positions; RoBERTa skips pad + 1
    with torch.no_grad():
        model(input_ids=torch.full((1, length), 5))
        if model_type in ("roberta", "bert", "gpt2", "gptj", "opt"):  # learned positions: one more fails
            with pytest.raises((IndexError, RuntimeError)):
                model(input_ids=torch.full((1, length + 1), 5))


def test_context_length_of_a_config_without_one():
    assert models.context_length(tf.PretrainedConfig()) is None
