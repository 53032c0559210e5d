"""The documentation agrees with the commands: the man pages (made from the click tree) and
README.md name every verb and every option that ``--help`` shows."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from p2vimage.cli import manpage
from p2vimage.cli.main import cli
from tests.conftest import REPO


def commands() -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command under the group, by its words after ``p2vimage`` (the group: ())."""
    ctx = click.Context(cli, info_name="p2vimage", **cli.context_settings)
    for cmd, sub in manpage.walk(cli, ctx):
        yield tuple(sub.command_path.split()[1:]), cmd


def long_options(cmd: click.Command) -> list[str]:
    """The long options a user is shown (hidden, deprecated aliases are not documented)."""
    return [o for p in cmd.params if isinstance(p, click.Option) and not p.hidden
            for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]


def test_walk_finds_every_verb() -> None:
    verbs = {" ".join(path) for path, _ in commands()}
    assert {"", "build", "upload", "cloud", "cloud cleanup", "cutover", "cutover run",
            "write-volume"} <= verbs
    assert len(verbs) == 1 + sum(  # hidden commands (batch's per-host helper) are not shown
        1 + (sum(not s.hidden for s in c.commands.values()) if isinstance(c, click.Group)
             else 0) for c in cli.commands.values() if not c.hidden)


def test_man_pages_name_every_verb_and_option() -> None:
    pages = manpage.pages(cli)
    top = pages["p2vimage.1"]
    for path, cmd in commands():
        name = "-".join(("p2vimage", *path)) + ".1"
        assert name in pages, name
        if path:  # the main page lists every verb, with its own page
            assert f"\\fB{manpage.escape(' '.join(('p2vimage', *path)))}\\fR" in top, path
            assert f"\\fB{manpage.escape(name[:-2])}\\fR(1)" in top, path
        for option in long_options(cmd):
            assert manpage.escape(option) in pages[name], (name, option)
        assert f'.TH "{manpage.escape(name[:-2].upper())}" "1"' in pages[name]
    assert len(pages) == len(list(commands()))
    for code in ("0", "1", "2", "3", "130"):
        assert f".TP\n\\fB{code}\\fR\n" in top


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff (groff-base) not installed")
def test_man_pages_render_without_warnings(tmp_path: Path) -> None:
    for page in manpage.write(tmp_path):
        proc = subprocess.run(["groff", "-man", "-ww", "-z", "-Tutf8", str(page)],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0 and proc.stderr == "", (page.name, proc.stderr)
        assert page.read_bytes().isascii()
    text = subprocess.run(["groff", "-man", "-Tutf8", str(tmp_path / "p2vimage-run.1")],
                          capture_output=True, text=True, check=True).stdout
    assert "→" in text  # non-ASCII help survives as a glyph


def test_escape() -> None:
    assert manpage.escape("--os-cloud") == "\\-\\-os\\-cloud"
    assert manpage.escape(".hidden\n'quoted") == "\\&.hidden\n\\&'quoted"
    assert manpage.escape("a\\b →") == "a\\eb \\[u2192]"


def readme_sections() -> list[tuple[str, str]]:
    """README.md as (heading, heading + body) for every ## and ### heading."""
    parts = re.split(r"(?m)^(#{2,3} .*)$", (REPO / "README.md").read_text())
    return [(parts[i], parts[i] + parts[i + 1]) for i in range(1, len(parts), 2)]


def test_readme_documents_every_verb_and_option() -> None:
    """Each verb appears as a command line (``p2vimage [OPTIONS…] VERB``), and each of its
    long options in a section about it: one whose heading names the verb, or that shows
    ``p2vimage VERB`` or ``**VERB**``. The group's own options may appear anywhere."""
    readme = (REPO / "README.md").read_text()
    sections = readme_sections()
    missing = []
    for path, cmd in commands():
        if path:
            verb = " ".join(path)
            if not re.search(r"p2vimage(?: \[[^\]]*\])* " + re.escape(verb) + r"\b", readme):
                missing.append(f"verb {verb!r}")
            top = path[0]
            text = "".join(body for head, body in sections
                           if re.search(rf"\b{re.escape(top)}\b", head)
                           or f"p2vimage {top}" in body or f"**{top}**" in body)
        else:
            text = readme
        for option in long_options(cmd):
            if not re.search(re.escape(option) + r"(?![\w-])", text):
                missing.append(f"{' '.join(('p2vimage', *path))} {option}")
    assert not missing, "README.md does not mention: " + ", ".join(missing)
