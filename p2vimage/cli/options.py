"""What every verb shares: the global settings, how results are printed, option types and
the option groups declared once and used by every verb that takes them.

A group decorator (``build_options``, ``convert_options``, ``smoke_options``,
``ssh_source_options``) adds its options to a verb and hands the verb one typed settings
object instead of the raw values: the conversion (enum choices included) happens here, once.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from p2vimage.build.stage import BuildSettings
from p2vimage.convert.options import (
    BootloaderChoice,
    ConvertSettings,
    InitramfsMethod,
    RootDevice,
)
from p2vimage.core.errors import P2VError
from p2vimage.core.units import parse_size
from p2vimage.smoke.options import Phase, Probe, SmokeSettings, parse_probe, parse_timeout
from p2vimage.sync.stage import SEED_PROFILE, SourceAccess

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


@dataclasses.dataclass(frozen=True)
class Settings:
    """Global options shared by every verb."""

    debug: bool
    json: bool
    workdir: Path | None


SCHEMA_VERSION = 1  # of every JSON document p2vimage prints; raised when a field changes


def as_json(data: dict[str, Any]) -> str:
    """A JSON document as p2vimage prints it (with its schema_version)."""
    return json.dumps({"schema_version": SCHEMA_VERSION, **data}, indent=2, sort_keys=True,
                      default=str)


def emit(settings: Settings, data: dict[str, Any], human_lines: list[str]) -> None:
    """Print a result: JSON on stdout under --json, else the human lines."""
    if settings.json:
        click.echo(as_json(data))
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
                ctx: click.Context | None) -> Probe:
        if isinstance(value, Probe):
            return value
        try:
            return parse_probe(str(value))
        except P2VError as exc:
            self.fail(exc.message, param, ctx)


class TimeoutType(click.ParamType):  # type: ignore[type-arg]
    """A phase timeout: login=300."""

    name = "timeout"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[Phase, float]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_timeout(str(value))
        except P2VError as exc:
            self.fail(f"{exc.message}: use {'|'.join(Phase)}=SECONDS", param, ctx)


def enum_option(*decls: str, values: type[enum.StrEnum], **attrs: Any) -> Decorator:
    """An option choosing one of an enum's values (its help lists them, a default is given
    as a value); the verb gets the enum member, or None when the option is left out."""
    def to_enum(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        return None if value is None else values(value)

    return click.option(*decls, type=click.Choice([member.value for member in values]),
                        callback=to_enum, **attrs)


def _added(options: tuple[Decorator, ...], f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(options):
        f = option(f)
    return f


# Options more than one verb takes, declared once.
OUTPUT = click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
                      help="The raw disk image to make.")
FORCE = click.option("--force", is_flag=True, help="Replace an existing image.")

BUILD: tuple[Decorator, ...] = (
    click.option("--size", type=SizeType(), help="Image size (default: tree + headroom)."),
    click.option("--fs", "fstype", type=click.Choice(["ext2", "ext3", "ext4"]),
                 help="Filesystem type (default: chosen from the guest)."),
    click.option("--fs-features", help="Comma list of mke2fs features to add (name) or drop "
                 "(^name) on top of the choice."),
)


def build_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The image's options (build and run), handed over as ``build_settings``."""
    @functools.wraps(f)
    def verb(*args: Any, size: int | None, fstype: str | None, fs_features: str | None,
             **kwargs: Any) -> Any:
        return f(*args, build_settings=BuildSettings(size=size, fstype=fstype,
                                                     fs_features=fs_features), **kwargs)

    return _added(BUILD, verb)


CONVERT: tuple[Decorator, ...] = (
    enum_option("--bootloader", values=BootloaderChoice, default=BootloaderChoice.AUTO.value,
                show_default=True, help="auto: the guest's GRUB 2, else extlinux."),
    enum_option("--root-device", values=RootDevice, default=RootDevice.UUID.value,
                show_default=True, help="How fstab and the bootloader name the root."),
    click.option("--swap-file", type=SizeType(), default=None,
                 help="Replace swap partitions with a swap file of this size."),
    click.option("--disable-hardware-services", is_flag=True,
                 help="Disable mdadm, smartd, lm-sensors, hwclock and vserver services."),
    enum_option("--initramfs-method", values=InitramfsMethod,
                default=InitramfsMethod.AUTO.value, show_default=True,
                help="Where a missing-virtio initrd is rebuilt (chroot needs root)."),
)


def convert_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The conversion's options (convert and run), handed over as ``convert_settings``."""
    @functools.wraps(f)
    def verb(*args: Any, bootloader: BootloaderChoice, root_device: RootDevice,
             swap_file: int | None, disable_hardware_services: bool,
             initramfs_method: InitramfsMethod, **kwargs: Any) -> Any:
        settings = ConvertSettings(
            bootloader=bootloader, root_device=root_device, swap_file_mib=(swap_file or 0) >> 20,
            disable_hardware=disable_hardware_services, initramfs_method=initramfs_method)
        return f(*args, convert_settings=settings, **kwargs)

    return _added(CONVERT, verb)


SMOKE: tuple[Decorator, ...] = (
    click.option("--probe", "probes", type=ProbeType(), multiple=True,
                 help="tcp:PORT[:BANNER], http:PORT[:PATH[:STATUS[:TEXT]]] or ssh:CMD[:TEXT], "
                 "optionally @ADDRESS (default: the guest's first address). Repeatable."),
    click.option("--no-default-probe", is_flag=True,
                 help="Do not probe ssh's SSH-2.0 banner."),
    click.option("--login-regex", default=SmokeSettings.login_regex, show_default=True,
                 help="What the console shows when the guest is up (a regular expression)."),
    click.option("--timeout", "timeouts", type=TimeoutType(), multiple=True,
                 metavar="PHASE=SECONDS",
                 help="Phase timeouts: bootloader, kernel, login, probes. Repeatable."),
)


def smoke_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The smoke test's options (smoke and run), handed over as ``smoke_settings``."""
    @functools.wraps(f)
    def verb(*args: Any, probes: tuple[Probe, ...], no_default_probe: bool, login_regex: str,
             timeouts: tuple[tuple[Phase, float], ...], **kwargs: Any) -> Any:
        settings = SmokeSettings(probes=probes, default_probe=not no_default_probe,
                                 login_regex=login_regex).with_timeouts(dict(timeouts))
        return f(*args, smoke_settings=settings, **kwargs)

    return _added(SMOKE, verb)


SSH_SOURCE: tuple[Decorator, ...] = (
    click.option("--identity", type=click.Path(path_type=Path, dir_okay=False, exists=True),
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
                 "still refused)."),
)


def ssh_source_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """How to reach and read an ssh:// source (sync, and run's sync stage), handed over as
    ``source_access``."""
    @functools.wraps(f)
    def verb(*args: Any, identity: Path | None, ssh_options: tuple[str, ...],
             ssh_config: Path | None, rsync_path: str | None, accept_new_host_key: bool,
             **kwargs: Any) -> Any:
        access = SourceAccess(identity=identity, ssh_config=ssh_config, rsync_path=rsync_path,
                              ssh_options=ssh_options, accept_new_host_key=accept_new_host_key)
        return f(*args, source_access=access, **kwargs)

    return _added(SSH_SOURCE, verb)


SYNC_SELECTION: tuple[Decorator, ...] = (
    click.option("--exclude", "excludes", multiple=True,
                 help="rsync exclude pattern, on top of the profile. Repeatable."),
    click.option("--profile", type=click.Choice(["seed", "none"]), default="seed",
                 show_default=True, help="seed: the seed's excludes (/srv/backup, /var/cache, "
                 "/var/lib/backuppc, /var/tmp)."),
    click.option("--bwlimit", help="rsync --bwlimit (e.g. 20m)."),
)


def sync_selection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """What a sync pass copies and how fast (run's sync stage), handed over as ``excludes``
    (the profile's and the extra patterns) and ``bwlimit``."""
    @functools.wraps(f)
    def verb(*args: Any, excludes: tuple[str, ...], profile: str, **kwargs: Any) -> Any:
        base = SEED_PROFILE if profile == "seed" else ()
        return f(*args, excludes=(*base, *excludes), **kwargs)

    return _added(SYNC_SELECTION, verb)
