"""The command line: listings, flags made from RunConfig, and every failure as one clear line with its
exit status (errors.py)."""

import dataclasses
import errno
import json
import os
import platform
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import one_error_line

from selprune import __version__
from selprune.allocator import keep_freed_memory
from selprune.arch import ARCHITECTURES
from selprune.cli import build_parser, config_from_args, main
from selprune.config import RunConfig, flag
from selprune.errors import OutOfMemory


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


@pytest.mark.parametrize("args, phrases", [
    (["--model", "no-such-model"], ["unknown model 'no-such-model'", "smollm2-135m"]),
    (["--model", "/no/such/folder"], ["/no/such/folder"]),
    (["--model", "/no/such/file.gguf"], ["does not exist"]),
    (["--fraction", "0"], ["outside (0, 1]"]),
    (["--fraction", "1.5"], ["outside (0, 1]"]),
    (["--steps", "60", "--fraction", "0.02"], ["60 steps x 0.02"]),
    (["--group", "attn-value", "--scorer", "freq"], ["freq scorer"]),
    (["--group", "ff+attn-value", "--scorer", "freq"], ["freq scorer"]),
    (["--group", "heads"], ["unknown group 'heads'", "attn-head"]),
    (["--group", "ff+mlp"], ["unknown group 'mlp' in 'ff+mlp'", "joined by '+'"]),
    (["--group", "ff+ff"], ["names a group twice"]),
    (["--group", "attn-preout+attn-head"], ["overlap"]),
    (["--forget", "code#lang"], ["dataset filter 'lang'", "lang!=VALUE"]),
    (["--retain", "code#colour=red"], ["dataset filter 'colour=red'"]),
    (["--forget", "prose", "--retain", "prose"], ["both 'prose'"]),
    (["--forget", "/no/such/data.txt"], ["/no/such/data.txt"]),
    (["--eps", "nan"], ["--eps is nan"]),
    (["--eps", "inf"], ["--eps is inf"]),
    (["--fraction", "nan"], ["--fraction is nan"]),
    (["--skip-top-tokens", "-1"], ["skip-top-tokens", "-1"]),
    (["--max-retain-drop", "0"], ["--max-retain-drop 0 is outside (0, 100]"]),
    (["--max-retain-drop", "-5"], ["--max-retain-drop -5 is outside (0, 100]"]),
    (["--max-retain-drop", "101"], ["--max-retain-drop 101 is outside (0, 100]"]),
    (["--max-retain-drop", "nan"], ["--max-retain-drop is nan"]),
    (["--target-forget-drop", "0"], ["--target-forget-drop 0 is outside (0, 100]"]),
    (["--target-forget-drop", "101"], ["--target-forget-drop 101 is outside (0, 100]"]),
    (["--target-forget-drop", "nan"], ["--target-forget-drop is nan"]),
    (["--name", "../escape"], ["'../escape' is not a plain folder name"]),
    (["--name", "a/b"], ["'a/b' is not a plain folder name"]),
    (["--name", ".hidden"], ["'.hidden' is not a plain folder name"]),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, args, phrases):
    one_error_line(capsys, ["run", "--output", str(tmp_path / "run"), *args], *phrases)


def test_unsupported_architecture(capsys, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}))
    one_error_line(capsys, ["run", "--model", str(folder), "--output", str(tmp_path / "run")],
                   "unsupported architecture 'mamba'", "llama")


def test_existing_output_folder_is_not_overwritten(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("finished work\n")
    one_error_line(capsys, ["run", "--output", str(out)], "already exists", "--resume")
    assert (out / "metrics.csv").read_text() == "finished work\n"


def test_resume_of_nothing(capsys, tmp_path):
    one_error_line(capsys, ["run", "--resume", "--output", str(tmp_path / "none")], "nothing to resume")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_allocator_tuning_takes_on_glibc():
    """`selprune run` keeps freed CPU memory mapped (bench/allocator.py: no page faults per forward)."""
    assert keep_freed_memory()


# -- flags made from RunConfig -----------------------------------------------------------------------


def off_flag(key: str) -> str:
    return "--no-" + flag(key)[2:]


def other_value(field: dataclasses.Field) -> list[str]:
    """Command-line words that set `field` to something other than its default."""
    kind = RunConfig.field_types()[field.name][0]
    if kind is bool:
        return [off_flag(field.name) if field.default else flag(field.name)]
    choices = field.metadata["choices"]
    if kind is tuple:
        return [flag(field.name), "one", "two"]
    value = choices[-1] if choices else {int: "7", float: "0.25", str: "other"}[kind]
    return [flag(field.name), value]


@pytest.mark.parametrize("field", dataclasses.fields(RunConfig), ids=lambda f: f.name)
def test_every_config_field_has_a_flag(field):
    config = config_from_args(build_parser().parse_args(["run", *other_value(field)]))
    assert getattr(config, field.name) != field.default
    assert dataclasses.replace(config, **{field.name: field.default}) == RunConfig()


@pytest.mark.parametrize("key", [key for key, types in RunConfig.field_types().items() if types == (bool,)])
def test_every_bool_has_an_on_and_an_off_flag(key):
    on, off = flag(key), off_flag(key)
    assert getattr(config_from_args(build_parser().parse_args(["run", off, on])), key) is True
    assert getattr(config_from_args(build_parser().parse_args(["run", on, off])), key) is False


def test_help_shows_every_flag_and_no_measured_numbers(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for field in dataclasses.fields(RunConfig):
        assert flag(field.name) in out
    assert not re.search(r"~ ?\d|\d ?(s|min|%)\b", out), out


@pytest.mark.parametrize("argv, phrase", [
    (["--dtype", "float8"], "invalid choice: 'float8'"),
    (["--scorer", "magic"], "invalid choice: 'magic'"),
    (["--steps", "ten"], "invalid int value: 'ten'"),
])
def test_argument_errors_are_one_line_exit_2(capsys, argv, phrase):
    one_error_line(capsys, ["run", *argv], phrase)


@pytest.fixture
def runs(monkeypatch, tmp_path):
    """The configs selprune.run.run is called with; it records them instead of loading a model."""
    calls = []

    def record(config, resume=False, quiet=False):
        calls.append(config)
        return config.output_dir

    monkeypatch.setattr("selprune.run.run", record)
    monkeypatch.chdir(tmp_path)
    return calls


@pytest.mark.parametrize("argv, expected", [
    ([], False),
    (["--compile"], True),
    (["--no-compile", "--compile"], True),
    (["--compile", "--no-compile"], False),
])
def test_a_flag_turns_compile_back_on_over_a_config_file(capsys, tmp_path, runs, argv, expected):
    (tmp_path / "c.toml").write_text("compile = false\nsteps = 5\n")
    assert run_cli(capsys, "run", "--config", str(tmp_path / "c.toml"), *argv)[0] == 0
    assert runs[-1].compile is expected and runs[-1].steps == 5


def test_precedence_defaults_preset_file_flags(capsys, tmp_path, runs):
    (tmp_path / "c.toml").write_text("steps = 5\nsave_model = true\n")
    code, _, _ = run_cli(capsys, "run", "--preset", "tiny", "--config", str(tmp_path / "c.toml"),
                         "--no-save-model", "--chunk-len", "64")
    config = runs[-1]
    assert code == 0
    assert (config.compile, config.score_tokens) == (False, 2_048)  # preset
    assert config.steps == 5  # file over preset
    assert (config.save_model, config.chunk_len) == (False, 64)  # flags over file and preset
    assert config.model == RunConfig().model  # default


@pytest.mark.parametrize("content, phrase", [
    (None, "is a folder"),
    ('forget = "Müller"\n'.encode("latin-1"), "not UTF-8"),
    (b'steps = "ten"\n', 'steps = "ten" should be an integer'),
    (b'save_model = "no"\n', 'save_model = "no" should be true or false'),
])
def test_a_bad_config_file_is_one_line_exit_2(capsys, tmp_path, content, phrase):
    path = tmp_path / "c.toml"
    path.mkdir() if content is None else path.write_bytes(content)
    one_error_line(capsys, ["run", "--config", str(path), "--output", str(tmp_path / "run")], str(path),
                   phrase)


def test_a_missing_config_file_is_one_line_exit_2(capsys, tmp_path):
    one_error_line(capsys, ["run", "--config", str(tmp_path / "none.toml")], "none.toml", "does not exist")


# -- report: never into another run's folder ---------------------------------------------------------


def fake_run(path):
    """Enough of a run folder to be one: config.toml, metrics.csv and the run's own report."""
    path.mkdir(parents=True)
    (path / "config.toml").write_text(f'name = "{path.name}"\n')
    (path / "metrics.csv").write_text("step,role,dataset,fraction_pruned,top1,perplexity\n")
    (path / "report.html").write_text("own report")
    return path


@pytest.fixture
def reports(monkeypatch, tmp_path):
    """The folders write_report is asked to write into; it records them instead of plotting."""
    calls = []

    def record(run_dirs, out_dir):
        calls.append(Path(out_dir))
        return Path(out_dir) / "report.html"

    monkeypatch.setattr("selprune.report.write_report", record)
    monkeypatch.chdir(tmp_path)
    return calls


def test_one_run_is_reported_in_its_own_folder(capsys, tmp_path, reports):
    run = fake_run(tmp_path / "runs" / "a")
    assert run_cli(capsys, "report", str(run))[0] == 0
    assert run_cli(capsys, "report", str(run), "-o", str(run))[0] == 0
    assert reports == [run, run]


def test_several_runs_go_to_a_compare_folder_by_default(capsys, tmp_path, reports):
    a, b = fake_run(tmp_path / "runs" / "a"), fake_run(tmp_path / "elsewhere" / "b c")
    code, out, _ = run_cli(capsys, "report", str(a), str(b) + "/")
    assert code == 0
    assert reports == [Path("runs", "compare", "a+b_c")]
    assert str(reports[0]) in out
    assert (a / "report.html").read_text() == "own report"


def test_a_long_comparison_keeps_a_legal_folder_name(capsys, tmp_path, reports):
    folders = [str(fake_run(tmp_path / f"{'x' * 200}{i}")) for i in range(6)]
    assert run_cli(capsys, "report", *folders)[0] == 0
    name = reports[0].name
    assert len(name) < 255 and name.endswith("+3-more"), name


@pytest.mark.parametrize("args", [["a", "b", "-o", "a"], ["a", "b", "-o", "b"], ["a", "-o", "b"]])
def test_a_report_never_goes_into_another_run_folder(capsys, tmp_path, reports, args):
    fake_run(tmp_path / "a"), fake_run(tmp_path / "b")
    one_error_line(capsys, ["report", *args], "is a run folder")
    assert reports == []


# -- exit statuses -----------------------------------------------------------------------------------


def run_raising(monkeypatch, tmp_path, exc):
    """selprune.run.run fails with exc, as a run would after its config is checked."""
    def fail(config, resume=False, quiet=False):
        raise exc

    monkeypatch.setattr("selprune.run.run", fail)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("exc, phrases", [
    (OutOfMemory("out of memory with one chunk per batch: use a shorter --chunk-len"), ["--chunk-len"]),
    (MemoryError(), ["--batch-size", "--chunk-len", "--dtype bfloat16"]),
    (torch.OutOfMemoryError("CUDA out of memory"), ["--batch-size", "--chunk-len", "--dtype bfloat16"]),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 bytes"), ["--batch-size"]),
])
def test_out_of_memory_exits_3_naming_what_to_lower(capsys, monkeypatch, tmp_path, exc, phrases):
    run_raising(monkeypatch, tmp_path, exc)
    code, _, err = run_cli(capsys, "run")
    assert code == 3
    assert err.count("\n") == 1 and err.startswith("selprune: error: out of memory"), err
    for phrase in phrases:
        assert phrase in err


@pytest.mark.parametrize("number, cause", [
    (errno.ENOSPC, "the disk is full"),
    (errno.EDQUOT, "quota"),
    (errno.EACCES, "permission denied"),
    (errno.EROFS, "read-only"),
    (errno.EIO, "input/output error"),
    (errno.ESTALE, os.strerror(errno.ESTALE)),
])
def test_a_failing_environment_exits_4_naming_the_path(capsys, monkeypatch, tmp_path, number, cause):
    run_raising(monkeypatch, tmp_path, OSError(number, os.strerror(number), "runs/x/metrics.csv"))
    code, _, err = run_cli(capsys, "run")
    assert code == 4
    assert err.count("\n") == 1 and err.startswith("selprune: error: runs/x/metrics.csv: "), err
    assert cause in err


def test_ctrl_c_exits_130(capsys, monkeypatch, tmp_path):
    run_raising(monkeypatch, tmp_path, KeyboardInterrupt())
    code, _, err = run_cli(capsys, "run")
    assert code == 130 and err == "selprune: interrupted; finished steps are saved (continue with --resume)\n"


def test_an_interrupted_command_says_how_to_go_on(capsys, monkeypatch, tmp_path):
    """A sweep goes on by running it again, an inspection has written nothing; a run resumes (above)."""
    monkeypatch.chdir(tmp_path)
    for command, target, argv, words in (
            ("sweep", "selprune.sweep.sweep", ["grid.toml"], "run the same command again"),
            ("inspect", "selprune.inspection.inspect_run", ["RUN"], "nothing was written")):
        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt()

        monkeypatch.setattr(target, interrupted)
        code, _, err = run_cli(capsys, command, *argv)
        assert code == 130 and err.startswith("selprune: interrupted;") and words in err, err


def test_sigterm_exits_143_and_the_handler_is_restored(capsys, monkeypatch, tmp_path):
    def terminated(config, resume=False, quiet=False):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the signal interrupts this

    monkeypatch.setattr("selprune.run.run", terminated)
    monkeypatch.chdir(tmp_path)
    before = signal.getsignal(signal.SIGTERM)
    code, _, err = run_cli(capsys, "run")
    assert code == 143 and err.startswith("selprune: terminated;") and "--resume" in err
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_bug_exits_1_with_its_traceback_and_a_line_saying_so(capsys, monkeypatch, tmp_path):
    run_raising(monkeypatch, tmp_path, RuntimeError("unexpected state"))
    code, _, err = run_cli(capsys, "run")
    lines = err.strip().splitlines()
    assert code == 1
    assert lines[0] == "Traceback (most recent call last):" and "RuntimeError: unexpected state" in err
    assert lines[-1] == "selprune: internal error: this is a bug; please report it with the traceback above"


def test_a_list_flag_given_twice_keeps_both_values():
    """`--control A --control B` is `--control A B`: the second may not silently replace the first."""
    parser = build_parser()
    twice = parser.parse_args(["relearn", "run", "--control", "a", "--control", "b:2", "--attack", "forget",
                               "--attack", "retain"])
    once = parser.parse_args(["relearn", "run", "--control", "a", "b:2", "--attack", "forget", "retain"])
    assert twice.control == once.control == ["a", "b:2"] and twice.attack == once.attack == ["forget", "retain"]
    assert parser.parse_args(["run", "--watch", "german", "--watch", "english"]).watch == ["german", "english"]
    assert parser.parse_args(["relearn", "run"]).control is None  # unset: the settings' default
