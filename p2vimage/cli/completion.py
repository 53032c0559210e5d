"""Shell completion: click's own protocol (``_P2VIMAGE_COMPLETE=bash_source p2vimage``), the
scripts the wheel installs, and the completion of values that are not files.

The scripts only hand the words back to p2vimage, so they never go stale: what completes is
whatever the installed commands declare. ``--os-cloud`` completes with the cloud names of
clouds.yaml, read with openstacksdk's loader.
"""

from __future__ import annotations

import logging

import click
from click.shell_completion import CompletionItem, get_completion_class

PROG = "p2vimage"
COMPLETE_VAR = "_P2VIMAGE_COMPLETE"
# shell: where a package's completion script goes under the installation prefix, its name
SCRIPTS: dict[str, tuple[str, str]] = {
    "bash": ("share/bash-completion/completions", PROG),
    "zsh": ("share/zsh/site-functions", f"_{PROG}"),
    "fish": ("share/fish/vendor_completions.d", f"{PROG}.fish"),
}


def script(cli: click.Command, shell: str) -> str:
    """The completion script for ``shell`` (what ``COMPLETE_VAR=SHELL_source p2vimage``
    prints)."""
    cls = get_completion_class(shell)
    if cls is None:
        raise ValueError(f"click has no completion for {shell}")
    return cls(cli, {}, PROG, COMPLETE_VAR).source()


def cloud_names(ctx: click.Context, param: click.Parameter,
                incomplete: str) -> list[CompletionItem]:
    """``--os-cloud``: the clouds of clouds.yaml starting with ``incomplete``. Quiet: a
    broken file completes nothing rather than printing into the user's command line."""
    from p2vimage.cloud import connect  # openstacksdk: only when this option completes

    logging.disable(logging.CRITICAL)
    try:
        names = connect.cloud_names()
    finally:
        logging.disable(logging.NOTSET)
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]
