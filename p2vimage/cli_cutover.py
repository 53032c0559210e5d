"""The cutover verbs (registered on the main click group by cli.py)."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add the cutover verbs to GROUP."""
