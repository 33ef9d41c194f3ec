"""Every ``--help`` wraps to the terminal: at a wide terminal no sentence of a command's help,
of an option's help or of a subcommand's summary is broken before the line is full (a
docstring's own line breaks, e.g. "our Soft MoE" / "against ...", would be)."""

import pytest
import typer
from typer.testing import CliRunner

from harness.cli import app

WIDTH = 200
RIGHT = WIDTH - 2  # a panel's text ends before " │"; text outside panels before the last column


def walk(command, path=()):
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from walk(sub, (*path, name))


COMMANDS = list(walk(typer.main.get_command(app)))


def paragraphs(command) -> list[str]:
    """The paragraphs its ``--help`` shows: its help, its parameters' and, for a group, each
    subcommand's first paragraph, each with its whitespace collapsed."""
    texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
    texts += [(sub.help or "").split("\n\n")[0]
              for sub in getattr(command, "commands", {}).values()]
    return [" ".join(p.split()) for text in texts for p in text.split("\n\n") if p.strip()]


def text_of(line: str) -> str:
    return line.strip().strip("│╭╮╰╯─").strip()


def breaks(paragraph: str, lines: list[str]) -> list[tuple[str, str]] | None:
    """Where ``paragraph`` is rendered in ``lines``: each line break in it as (the line up to
    the break, the next word), or None if it is not rendered whole."""
    for i, line in enumerate(lines):
        start = line.find(paragraph[:25])
        if start < 0:
            continue
        shown, found = line[start:].rstrip(" │"), []
        for j in range(i + 1, len(lines) + 1):
            if shown.startswith(paragraph):  # whole (a "[default: ...]" may follow)
                return found
            if not paragraph.startswith(shown) or j == len(lines):
                break
            found.append((lines[j - 1].rstrip(" │"), paragraph[len(shown):].split()[0]))
            shown += " " + text_of(lines[j])
    return None


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) or "moe-harness"
                                                         for p, _ in COMMANDS])
def test_help_wraps_only_where_the_line_is_full(path, command):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(WIDTH)})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(map(len, lines)) <= WIDTH
    for paragraph in paragraphs(command):
        found = breaks(paragraph, lines)
        assert found is not None, f"not shown whole: {paragraph!r}\n{result.output}"
        for line, word in found:
            assert len(line) + 1 + len(word) > RIGHT, (
                f"broken before the line is full: {line.strip(' │')!r} / {word!r}")
