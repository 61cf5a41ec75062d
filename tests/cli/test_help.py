"""``--help`` of every command reads well at 80 columns, and the shared option declarations behave as the
per-command ones did (names, defaults, refusals)."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from patchscopes.cli import app
from patchscopes.cli.options import Runtime, runtime_options

runner = CliRunner()
ENV = {"COLUMNS": "80", "HF_HUB_OFFLINE": "1"}


def command_paths() -> list[list[str]]:
    """Every command, as the words that name it (``[]`` is the top level, ``["eval"]`` its group)."""
    paths: list[list[str]] = [[]]

    def walk(cmd, prefix):
        for name, sub in getattr(cmd, "commands", {}).items():
            paths.append([*prefix, name])
            walk(sub, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return paths


COMMANDS = command_paths()


def test_every_command_is_listed():
    names = {" ".join(p) for p in COMMANDS}
    assert {"inspect", "models", "fit-lens", "fit-map", "eval", "eval next-token", "eval attributes",
            "eval entities", "eval cross-model", "eval multihop"} <= names


@pytest.mark.parametrize("words", COMMANDS, ids=lambda p: " ".join(p) or "patchscopes")
def test_help_fits_80_columns_without_noise(words):
    result = runner.invoke(app, [*words, "--help"], env=ENV)
    assert result.exit_code == 0, result.output
    text = result.output
    long = [line for line in text.splitlines() if len(line) > 80]
    assert not long, long
    # typer's type labels, range notes, parenthesised defaults and braces around arguments are noise.
    for noise in ("<bool>", "<str>", "<int", "<float", "<path>", "x>=", "<=x", "[default: (", "{PROMPT}",
                  "{prompt}"):
        assert noise not in text, noise
    usage = text.splitlines()[0]
    assert usage.startswith("Usage: patchscopes") and "{" not in usage
    # Command lists show whole summaries, never a sentence cut with "...".
    assert "..." not in text.replace("COMMAND [ARGS]...", "")
    assert "-h, --help" in text


@pytest.mark.parametrize("words", [p for p in COMMANDS if p and p != ["eval"]], ids=" ".join)
def test_examples_are_whole_commands(words):
    """Each example starts a line with `patchscopes`, and a command that goes on ends its line with `\\`."""
    text = runner.invoke(app, [*words, "--help"], env=ENV).output
    if "Examples:" not in text:
        return
    block = text.split("Examples:")[1].split("\n\n", 2)[1]
    lines = block.splitlines()
    assert lines[0].strip().startswith("patchscopes " + " ".join(words))
    for line, after in zip(lines, [*lines[1:], None]):
        if after is not None and not after.strip().startswith("patchscopes "):
            assert line.endswith("\\"), line


def test_inspect_usage_names_the_prompt():
    text = runner.invoke(app, ["inspect", "--help"], env=ENV).output
    assert text.splitlines()[0] == "Usage: patchscopes inspect [OPTIONS] PROMPT"
    assert re.search(r"^  PROMPT +The source prompt", text, re.M)


def test_hidden_arguments_stay_out_of_usage():
    text = runner.invoke(app, ["eval", "attributes", "--help"], env=ENV).output
    assert text.splitlines()[0] == "Usage: patchscopes eval attributes [OPTIONS]"


@pytest.mark.parametrize(("args", "fragment"), [
    (["eval", "next-token", "--text", "x.txt", "--samples", "0"], "must be at least 1, got 0"),
    (["eval", "next-token", "--text", "x.txt", "--eval-fraction", "1.5"], "must be at most 1.0, got 1.5"),
    (["fit-map", "-a", "x", "-b", "y", "--text", "t", "-l", "0", "-t", "0", "--samples", "1"], "at least 2"),
    (["inspect", "hello", "--top-k", "0"], "must be at least 1"),
])
def test_numbers_out_of_range_are_refused(args, fragment):
    result = runner.invoke(app, args, env={**ENV, "COLUMNS": "200"})
    assert result.exit_code == 2
    assert fragment in result.output


@pytest.mark.parametrize(("args", "fragment"), [
    (["inspect", "hello", "--engine", "fast"], "unknown engine 'fast'"),
    (["inspect", "hello", "--threads", "0"], "--threads must be at least 1"),
    (["eval", "entities", "-e", "e.json", "--device", "nowhere"], "unknown device 'nowhere'"),
])
def test_runtime_options_are_checked_before_anything_runs(args, fragment):
    result = runner.invoke(app, args, env={**ENV, "COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert fragment in result.output


def test_runtime_options_hand_one_runtime_to_the_command():
    seen = []
    demo = typer.Typer()

    @demo.command()
    @runtime_options(engine=False)
    def run(name: str = "x", *, runtime: Runtime) -> None:
        seen.append((name, runtime))

    result = runner.invoke(demo, ["--name", "y", "--device", "cpu", "--threads", "2"])
    assert result.exit_code == 0, result.output
    assert seen == [("y", Runtime(device="cpu", dtype=None, threads=2))]
    assert "--engine" not in runner.invoke(demo, ["--help"]).output
