"""The cloud verbs (registered on the main click group by cli.py)."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add the cloud verbs to GROUP."""
