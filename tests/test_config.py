"""RunConfig: config files are type-checked against the fields, and settings that cannot work are refused."""

import pytest

from selprune.config import PRESETS, RunConfig, preset
from selprune.errors import UserError


def write_config(tmp_path, text: str):
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


def refusal(make, *phrases) -> str:
    """The one-line message of the UserError that make() raises; it must hold every phrase."""
    with pytest.raises(UserError) as exc:
        make()
    message = str(exc.value)
    assert "\n" not in message
    for phrase in phrases:
        assert phrase in message, message
    return message


@pytest.mark.parametrize("line, key, expected", [
    ('save_model = "no"', "save_model", "true or false"),
    ('steps = "ten"', "steps", "an integer"),
    ('fraction = "0.05"', "fraction", "a number"),
    ("forget = 5", "forget", "a string"),
    ("steps = true", "steps", "an integer"),  # a bool is an int to Python, not to a config file
    ("eps = [0.001]", "eps", "a number"),
])
def test_a_value_of_the_wrong_type_names_the_key_the_type_and_the_file(tmp_path, line, key, expected):
    path = write_config(tmp_path, line + "\n")
    refusal(lambda: RunConfig.from_toml(path), f"{key} = ", expected, str(path))


def test_an_integer_is_a_number(tmp_path):
    config = RunConfig.from_toml(write_config(tmp_path, "fraction = 1\neps = 1\nsteps = 1\n"))
    assert config.fraction == 1.0 and isinstance(config.fraction, float)
    assert config.eps == 1.0 and isinstance(config.eps, float)
    config.validate()


def test_unknown_keys_name_the_file(tmp_path):
    path = write_config(tmp_path, "stepz = 3\n")
    refusal(lambda: RunConfig.from_toml(path), "stepz", str(path), "valid keys")


def test_a_config_folder_is_refused(tmp_path):
    refusal(lambda: RunConfig.from_toml(tmp_path), str(tmp_path), "is a folder")


def test_a_config_file_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('forget = "Müller"\n'.encode("latin-1"))
    refusal(lambda: RunConfig.from_toml(path), str(path), "not UTF-8", "save it as UTF-8")


def test_a_missing_config_file_is_refused(tmp_path):
    refusal(lambda: RunConfig.from_toml(tmp_path / "none.toml"), "none.toml", "does not exist")


def test_a_saved_config_reads_back_the_same():
    config = RunConfig(forget="python", eps=1e-4, eps_relative=True, compile=False, name="x")
    assert RunConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid(name):
    preset(name).validate()


@pytest.mark.parametrize("settings, phrase", [
    ({"eps": float("nan")}, "--eps is nan"),
    ({"eps": float("inf")}, "--eps is inf"),
    ({"eps": -float("inf")}, "--eps is -inf"),
    ({"fraction": float("nan")}, "--fraction is nan"),
    ({"fraction": float("inf")}, "--fraction is inf"),
    ({"skip_top_tokens": -1}, "skip-top-tokens"),
])
def test_settings_that_cannot_work_are_refused(settings, phrase):
    refusal(RunConfig(**settings).validate, phrase)


@pytest.mark.parametrize("name", ["../escape", "a/b", "a\\b", "..", ".", ".hidden", "  ", "a..b", "/abs"])
def test_a_name_must_be_a_plain_folder_name(name):
    refusal(RunConfig(name=name).validate, "--name", "plain folder name")


@pytest.mark.parametrize("name", ["my-run", "v1.2_b", "code vs prose"])
def test_plain_names_are_accepted(name):
    config = RunConfig(name=name)
    config.validate()
    assert config.output_dir.parent.name == "runs"
