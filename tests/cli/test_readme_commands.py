"""The README's shell commands name real commands and options: each ``patchscopes ...`` line of its ``bash``
blocks parses (without running) as written, after the one activation line."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from patchscopes.cli import app

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> list[str]:
    """The ``patchscopes`` command lines of the README's bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("patchscopes"):
                commands.append(line)
    return commands


def test_the_readme_activates_the_environment_first():
    text = README.read_text(encoding="utf-8")
    assert text.index("source .venv/bin/activate") < text.index("patchscopes inspect")
    assert len(readme_commands()) >= 6


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_parses(line):
    args = shlex.split(line.replace("$PATCHSCOPES_DATA_DIR", "data"))[1:]
    command = typer.main.get_command(app)
    while hasattr(command, "commands") and args:
        name = args.pop(0)
        assert name in command.commands, f"no command {name!r} in {line!r}"
        command = command.commands[name]
    # Unknown options, missing required ones and values of the wrong type raise here; the command does not run.
    command.make_context(command.name, args)
