"""The command line: listings, and bad input as one clear line with exit status 2."""

import json
import platform

import pytest

from selprune import __version__
from selprune.allocator import keep_freed_memory
from selprune.arch import ARCHITECTURES
from selprune.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_list_architectures_and_models(capsys):
    code, out, _ = run_cli(capsys, "list", "architectures")
    assert code == 0
    for model_type in ARCHITECTURES:
        assert model_type in out
    code, out, _ = run_cli(capsys, "list", "models")
    assert code == 0 and "smollm2-135m" in out and "gemma3-270m" in out


def test_list_datasets(capsys):
    code, out, _ = run_cli(capsys, "list", "datasets")
    assert code == 0
    for name in ("prose", "code", "python", "german", "english"):
        assert name in out


def one_error_line(code, err, *phrases):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selprune: error:"), err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.mark.parametrize("args, phrases", [
    (["--model", "no-such-model"], ["unknown model 'no-such-model'", "smollm2-135m"]),
    (["--model", "/no/such/folder"], ["/no/such/folder"]),
    (["--model", "/no/such/file.gguf"], ["does not exist"]),
    (["--dtype", "float8"], ["unknown dtype 'float8'"]),
    (["--fraction", "0"], ["outside (0, 1]"]),
    (["--fraction", "1.5"], ["outside (0, 1]"]),
    (["--steps", "60", "--fraction", "0.02"], ["60 steps x 0.02"]),
    (["--group", "attn-value", "--scorer", "freq"], ["freq scorer"]),
    (["--forget", "prose", "--retain", "prose"], ["both 'prose'"]),
    (["--forget", "/no/such/data.txt"], ["/no/such/data.txt"]),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, args, phrases):
    code, _, err = run_cli(capsys, "run", "--output", str(tmp_path / "run"), *args)
    one_error_line(code, err, *phrases)


def test_unsupported_architecture(capsys, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}))
    code, _, err = run_cli(capsys, "run", "--model", str(folder), "--output", str(tmp_path / "run"))
    one_error_line(code, err, "unsupported architecture 'mamba'", "llama")


def test_existing_output_folder_is_not_overwritten(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("finished work\n")
    code, _, err = run_cli(capsys, "run", "--output", str(out))
    one_error_line(code, err, "already exists", "--resume")
    assert (out / "metrics.csv").read_text() == "finished work\n"


def test_resume_of_nothing(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--resume", "--output", str(tmp_path / "none"))
    one_error_line(code, err, "nothing to resume")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_allocator_tuning_takes_on_glibc():
    """`selprune run` keeps freed CPU memory mapped (bench/allocator.py: no page faults per forward)."""
    assert keep_freed_memory()
