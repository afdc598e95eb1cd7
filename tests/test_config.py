"""A bad run configuration fails before any work starts, naming the field and what is allowed."""

from __future__ import annotations

import pytest

from saekit._runtime.errors import ConfigValueError
from saekit.app.cli import main
from saekit.app.config import RunConfig, describe_config

BAD = {
    "unknown field": ("[train]\nstepz = 10\n", "unknown field(s) ['stepz']"),
    "unknown section": ("[trian]\nsteps = 10\n", "unknown field(s) ['trian']"),
    "wrong type": ('[train]\nsteps = "many"\n', "steps must be an integer >= 1, got 'many'"),
    "bad literal": ('[train]\nprecision = "fp8"\n', "precision must be one of 'auto', 'float32', 'bfloat16'"),
    "negative coefficient": ('[sae]\narch = "relu"\nl1_coefficient = -1.0\n', "l1_coefficient must be a number >= 0"),
    "k larger than d_sae": (
        '[sae]\narch = "topk"\nexpansion = 1\nk = 1000\n',
        "k must be an integer in [1, d_sae=576]",
    ),
    "missing corpus": (
        '[corpus]\npath = "/no/such/texts"\n',
        "[corpus]: path: the corpus '/no/such/texts' does not exist",
    ),
    "unknown architecture": ('[sae]\narch = "relux"\n', "is not an architecture saekit knows (did you mean 'relu'?)"),
    "bad hook": ('[model]\nhook = "layers.15.resid_middle"\n', "[model]: hook: unknown hook point"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_fails_before_any_work(tmp_path, capsys, case):
    text, message = BAD[case]
    config = tmp_path / "run.toml"
    config.write_text(text)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert not out.exists()  # nothing was started


def test_command_line_flags_override_and_are_validated(tmp_path, capsys):
    assert main(["run", "--train.steps", "-5", "--out", str(tmp_path / "r")]) == 2
    assert "argument --train.steps: must be an integer >= 1, got '-5'" in capsys.readouterr().err
    config = RunConfig().with_overrides({"train.steps": 7, "sae.arch": "gated"})
    assert config.train.steps == 7 and config.sae.arch == "gated"
    with pytest.raises(ConfigValueError, match="no such config field"):
        RunConfig().with_overrides({"nonsense.steps": 1})


def test_yaml_and_toml_read_the_same(tmp_path):
    (tmp_path / "a.toml").write_text('[sae]\narch = "jumprelu"\ntarget_l0 = 20\n[train]\nsteps = 50\n')
    (tmp_path / "a.yaml").write_text("sae:\n  arch: jumprelu\n  target_l0: 20\ntrain:\n  steps: 50\n")
    assert RunConfig.from_file(tmp_path / "a.toml") == RunConfig.from_file(tmp_path / "a.yaml")


def test_every_field_is_documented_and_the_defaults_file_reads_back(tmp_path):
    text = describe_config()
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            # every field line is preceded by its documentation
            previous = text.splitlines()[text.splitlines().index(line) - 1]
            assert previous.startswith("# ") and len(previous) > 4, line
    (tmp_path / "defaults.toml").write_text(text)
    assert RunConfig.from_file(tmp_path / "defaults.toml") == RunConfig()


def test_help_of_every_subcommand(capsys):
    for command in ["demo", "run", "harvest", "train", "evaluate", "report", "sweep", "compare", "convert", "config"]:
        assert main([command, "--help"]) == 0
        assert "usage: saekit " + command in capsys.readouterr().out
