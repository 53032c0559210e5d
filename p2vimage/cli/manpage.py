"""Man pages made from the click commands themselves, so they say what ``--help`` says.

One page per command: ``p2vimage(1)`` (the global options, every verb with its one-line
summary, exit status, environment) and ``p2vimage-VERB(1)`` for each verb, groups and their
verbs alike (``p2vimage-cutover(1)``, ``p2vimage-cutover-run(1)``). The wheel build
(setup.py) writes them into the wheel's ``share/man/man1``; in a checkout,
``python -m p2vimage.cli.manpage DIR`` writes them for ``man -l DIR/p2vimage.1``.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from p2vimage import __version__
from p2vimage.core import errors

PROG = "p2vimage"


def escape(text: str) -> str:
    """``text`` as groff input: backslashes and hyphens escaped, a leading ``.`` or ``'``
    made literal, anything outside ASCII as a ``\\[uXXXX]`` glyph (no preconv needed)."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line
                     for line in text.split("\n"))


def _paragraphs(help_text: str) -> list[str]:
    """click's help text as groff paragraphs (``\\b`` blocks kept as they are written)."""
    text = inspect.cleandoc(help_text).split("\f")[0]
    out = []
    for block in text.split("\n\n"):
        if block.startswith("\b\n"):
            out.append(".nf\n" + escape(block[2:]) + "\n.fi")
        elif block.strip():
            out.append(escape(" ".join(block.split())))
    return out


def walk(cmd: click.Command, ctx: click.Context) -> Iterator[tuple[click.Command,
                                                                   click.Context]]:
    """``cmd`` and every command under it, each with its context (for its full name)."""
    yield cmd, ctx
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from walk(sub, click.Context(sub, info_name=name, parent=ctx,
                                                  **sub.context_settings))


def page_name(ctx: click.Context) -> str:
    """The page's name: the command path with hyphens (``p2vimage-cloud-cleanup``)."""
    return ctx.command_path.replace(" ", "-")


def _options(cmd: click.Command, ctx: click.Context) -> list[str]:
    lines = []
    for param in cmd.get_params(ctx):
        if not isinstance(param, click.Option):
            continue  # arguments are in the synopsis; click gives them no help
        record = param.get_help_record(ctx)
        if record is None:
            continue
        term, help_text = record
        term = escape(term).replace("|", "|\\:")  # a long choice list may break after a |
        lines += [".TP", f"\\fB{term}\\fR", escape(" ".join(help_text.split()))]
    return lines


def _exit_status() -> list[str]:
    """From the error classes: each exit code with the first line of its docstring."""
    codes: dict[int, list[str]] = {0: ["Success."]}
    for cls in sorted(errors.P2VError.__subclasses__(), key=lambda c: c.exit_code):
        codes.setdefault(cls.exit_code, []).append((cls.__doc__ or cls.__name__).split("\n")[0])
    codes.setdefault(2, []).append("A usage error (unknown option, missing argument).")
    lines = []
    for code in sorted(codes):
        lines += [".TP", f"\\fB{code}\\fR", escape(" ".join(codes[code]))]
    return lines


def _environment(root: click.Command, ctx: click.Context) -> list[str]:
    """The variables options read (``envvar``), and the completion protocol's."""
    users: dict[tuple[str, str], list[str]] = {}
    for cmd, sub in walk(root, ctx):
        for param in cmd.params:
            envvars = getattr(param, "envvar", None) or ()
            for var in [envvars] if isinstance(envvars, str) else envvars:
                users.setdefault((var, "/".join(param.opts)), []).append(
                    sub.command_path.partition(" ")[2] or PROG)
    seen = {var: f"The default of {opt} ({', '.join(sorted(verbs))})."
            for (var, opt), verbs in users.items()}
    seen["_P2VIMAGE_COMPLETE"] = ("Shell completion: bash_source, zsh_source or fish_source "
                                  "prints the completion script for that shell.")
    lines = []
    for var, text in sorted(seen.items()):
        lines += [".TP", f"\\fB{escape(var)}\\fR", escape(text)]
    return lines


def page(cmd: click.Command, ctx: click.Context, root: click.Command,
         root_ctx: click.Context) -> str:
    """The groff source of the page of ``cmd``."""
    name = page_name(ctx)
    summary = cmd.get_short_help_str(limit=200)
    lines = [f'.TH "{escape(name.upper())}" "1" "" "{PROG} {__version__}" "{PROG} manual"',
             ".nh", ".ad l", ".SH NAME", f"{escape(name)} \\- {escape(summary)}",
             ".SH SYNOPSIS", f"\\fB{escape(ctx.command_path)}\\fR "
             + escape(" ".join(cmd.collect_usage_pieces(ctx)))]
    paragraphs = _paragraphs(cmd.help or "")
    if paragraphs != [escape(summary)]:
        lines += [".SH DESCRIPTION"]
        for i, para in enumerate(paragraphs):
            lines += ([] if i == 0 else [".PP"]) + [para]
    options = _options(cmd, ctx)
    if options:
        lines += [".SH OPTIONS", *options]
    subs = [(c, s) for c, s in walk(cmd, ctx) if c is not cmd]
    if subs:
        lines += [".SH COMMANDS"]
        for sub, sub_ctx in subs:
            lines += [".TP", f"\\fB{escape(sub_ctx.command_path)}\\fR",
                      escape(sub.get_short_help_str(limit=200))
                      + f" See \\fB{escape(page_name(sub_ctx))}\\fR(1)."]
    if cmd is root:
        lines += [".SH EXIT STATUS", *_exit_status(),
                  ".PP", "Errors are one line: \\fBerror: WHAT (hint: WHAT TO DO)\\fR.",
                  ".SH ENVIRONMENT", *_environment(root, root_ctx)]
    see = [] if cmd is root else [f"\\fB{PROG}\\fR(1)"]
    if ctx.parent is not None and ctx.parent.parent is not None:
        see.append(f"\\fB{escape(page_name(ctx.parent))}\\fR(1)")
    see.append("the README.md of p2vimage")
    lines += [".SH SEE ALSO", ", ".join(see)]
    return "\n".join(lines) + "\n"


def pages(root: click.Command) -> dict[str, str]:
    """Every page: file name (``p2vimage-build.1``) → groff source."""
    root_ctx = click.Context(root, info_name=PROG, **root.context_settings)
    return {page_name(ctx) + ".1": page(cmd, ctx, root, root_ctx)
            for cmd, ctx in walk(root, root_ctx)}


def write(directory: Path) -> list[Path]:
    """Write every page into ``directory``; returns the files written."""
    from p2vimage.cli.main import cli

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in pages(cli).items():
        path = directory / filename
        path.write_text(text, encoding="ascii")
        written.append(path)
    return written


if __name__ == "__main__":
    for out in write(Path(sys.argv[1] if len(sys.argv) > 1 else "man")):
        print(out)
