"""The oldest transformers that pyproject.toml allows runs the tiny-model tests: the floor is tested, not hoped.

The floor's wheels come from PyPI into a folder put first on PYTHONPATH (so nothing else changes). Where
PyPI cannot be reached the test is skipped. torch's floor (2.5, for torch.OutOfMemoryError) is declared
but not installed here: PyPI's Linux torch wheels are multi-GB CUDA builds.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
# transformers 4.56 requires huggingface-hub < 1.0 and tokenizers 0.22.x; these are its newest matches.
COMPANIONS = {"4.56": ["huggingface-hub==0.34.4", "tokenizers==0.22.0"]}
TESTS = ["tests/test_arch.py", "tests/test_run.py", "tests/test_evaluate.py", "tests/test_rundir.py"]

pytestmark = pytest.mark.slow


def declared_floor(package: str) -> str:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in dependencies if re.match(rf"{package}\s*>=", d))
    return spec.split(">=")[1].split(",")[0].strip()


def test_the_tiny_model_tests_pass_on_the_transformers_floor(tmp_path):
    floor = declared_floor("transformers")
    version = ".".join(floor.split(".")[:2])
    assert version in COMPANIONS, f"name the companion packages of transformers {floor} in COMPANIONS"
    target = tmp_path / "floor"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              "--no-deps", "--target", str(target), f"transformers=={floor}", *COMPANIONS[version]],
                             capture_output=True, text=True, timeout=600)
    if install.returncode != 0:
        pytest.skip(f"cannot install transformers {floor} from PyPI: {install.stderr.strip().splitlines()[-1:]}")
    env = {**os.environ, "PYTHONPATH": str(target)}
    check = subprocess.run([sys.executable, "-c", "import transformers; print(transformers.__version__)"],
                           capture_output=True, text=True, env=env, cwd=ROOT)
    assert Version(check.stdout.strip()) == Version(floor), check.stderr
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *TESTS],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)
    assert tests.returncode == 0, tests.stdout[-3000:]
