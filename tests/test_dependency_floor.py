"""The floors that pyproject.toml declares are true: the oldest transformers it allows runs the tiny-model tests
(tested, not hoped), the oldest setuptools it builds with reads its fields, and the oldest Python runs every module.

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
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10, which requires-python allows, has no tomllib
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
# transformers 4.56 requires huggingface-hub < 1.0 and tokenizers 0.22.x; these are its newest matches.
COMPANIONS = {"4.56": ["huggingface-hub==0.34.4", "tokenizers==0.22.0"]}
TESTS = ["tests/test_arch.py", "tests/test_run.py", "tests/test_evaluate.py", "tests/test_rundir.py"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FIRST_PYTHON_WITH_TOMLLIB = Version("3.11")
FIRST_SETUPTOOLS_WITH_LICENSE_EXPRESSIONS = Version("77")  # PEP 639: license = "SPDX expression"


def declared_floor(package: str, requirements: list[str] = PYPROJECT["project"]["dependencies"]) -> str:
    spec = next(d for d in requirements if re.match(rf"{package}\s*>=", d))
    return spec.split(">=")[1].split(",")[0].strip()


def test_the_build_floor_reads_a_licence_expression():
    if isinstance(PYPROJECT["project"].get("license"), str):
        floor = Version(declared_floor("setuptools", PYPROJECT["build-system"]["requires"]))
        assert floor >= FIRST_SETUPTOOLS_WITH_LICENSE_EXPRESSIONS, "raise the build-system's setuptools floor"


def test_every_module_imports_on_the_oldest_python_allowed():
    """tomllib came with Python 3.11: below it, a module that imports it needs the tomli fallback."""
    if Version(PYPROJECT["project"]["requires-python"].lstrip(">=")) >= FIRST_PYTHON_WITH_TOMLLIB:
        return
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        text = path.read_text(encoding="utf-8")
        if re.search(r"^\s*import tomllib", text, re.M):
            assert "import tomli as tomllib" in text, f"{path.relative_to(ROOT)} needs tomli on Python 3.10"


@pytest.mark.slow
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
