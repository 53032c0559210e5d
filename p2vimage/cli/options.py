"""What every verb shares: the global settings, how results are printed, option types and
the option groups declared once and used by every verb that takes them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from p2vimage.core.errors import P2VError
from p2vimage.core.units import parse_size
from p2vimage.smoke import stage as smoke


@dataclasses.dataclass(frozen=True)
class Settings:
    """Global options shared by every verb."""

    debug: bool
    json: bool
    workdir: Path | None


def emit(settings: Settings, data: dict[str, Any], human_lines: list[str]) -> None:
    """Print a result: JSON on stdout under --json, else the human lines."""
    if settings.json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        for line in human_lines:
            click.echo(line)


class SizeType(click.ParamType):  # type: ignore[type-arg]
    """A size option: 4G, 800M, 1073741824."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except P2VError as exc:
            self.fail(exc.message, param, ctx)


class ProbeType(click.ParamType):  # type: ignore[type-arg]
    """A probe: tcp:22:SSH-2.0, http:80:/:200:TEXT, ssh:COMMAND:TEXT."""

    name = "probe"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> smoke.Probe:
        if isinstance(value, smoke.Probe):
            return value
        try:
            return smoke.parse_probe(str(value))
        except P2VError as exc:
            self.fail(exc.message, param, ctx)


def ssh_source_options(f: Any) -> Any:
    """How to reach and read an ssh:// source (for sync, and run's sync stage); the parameter
    names are SyncOptions fields."""
    for option in reversed((
        click.option("--identity", type=click.Path(path_type=Path, dir_okay=False),
                     help="ssh identity file."),
        click.option("--ssh-option", "ssh_options", multiple=True, metavar="OPTION",
                     help="An ssh -o option (e.g. ProxyJump=gw). Repeatable."),
        click.option("--ssh-config", type=click.Path(path_type=Path, dir_okay=False,
                                                     exists=True),
                     help="An ssh config file to use instead of ~/.ssh/config (ssh -F)."),
        click.option("--rsync-path", help="The rsync command on the source, e.g. 'sudo "
                     "rsync' when logging in as a user who needs sudo to read everything."),
        click.option("--accept-new-host-key", is_flag=True,
                     help="Trust the host key of a host never seen before (a changed key is "
                     "still refused)."))):
        f = option(f)
    return f


