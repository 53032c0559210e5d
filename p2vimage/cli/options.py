"""What every verb shares: the global settings, how results are printed, option types and
the option groups declared once and used by every verb that takes them.

A group decorator (``build_options``, ``convert_options``, ``smoke_options``,
``cloud_options``, ``ssh_source_options``) adds its options to a verb and hands the verb one
typed settings object instead of the raw values: the conversion (enum choices included)
happens here, once.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from p2vimage.build.stage import BuildSettings
from p2vimage.cloud.options import CloudSettings, Compression, DiskFormat
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

FC = TypeVar("FC", bound=Callable[..., Any])

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


FORMATS = ("json", "value", "table")
_FORMAT_KEY = "p2vimage.format"


def format_options(primary: str | None, fields: tuple[str, ...]) -> Callable[[FC], FC]:
    """``-f json|value|table`` and ``-c FIELD`` as the openstack CLI has them, so
    ``ID=$(p2vimage upload … -f value -c id)`` works. ``id`` is the ``primary`` field; a
    column that is not one of ``fields`` is a usage error before anything runs."""
    known = ("id", *fields) if primary else fields

    def decorate(f: FC) -> FC:
        @functools.wraps(f)
        def verb(*args: Any, output_format: str | None, columns: tuple[str, ...],
                 **kwargs: Any) -> Any:
            unknown = [c for c in columns if c not in known]
            if unknown:
                raise click.UsageError(f"no column {unknown[0]!r}: the fields are "
                                       f"{', '.join(known)}")
            click.get_current_context().meta[_FORMAT_KEY] = (output_format, columns, primary)
            return f(*args, **kwargs)

        verb = click.option("-c", "--column", "columns", multiple=True, metavar="FIELD",
                            help=f"Only this field (repeatable): {', '.join(known)}.")(verb)
        return click.option("-f", "--format", "output_format", type=click.Choice(FORMATS),
                            help="Print the result as json, value (one per line: "
                            "ID=$(… -f value -c id)) or a table.")(verb)  # type: ignore[return-value]

    return decorate


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    return "" if value is None else json.dumps(value, sort_keys=True, default=str)


def formatted(data: dict[str, Any], fmt: str, columns: tuple[str, ...],
              primary: str | None) -> str:
    """``data`` as ``-f FMT -c COLUMN…`` prints it."""
    full = {"id": data.get(primary), **data} if primary else dict(data)
    chosen = {c: full.get(c) for c in columns} if columns else full
    if fmt == "json":
        return as_json(chosen)
    if fmt == "value":
        return "\n".join(_cell(v) for v in chosen.values())
    rows = [("Field", "Value"), *((k, _cell(v)) for k, v in chosen.items())]
    wide = [max(len(r[i]) for r in rows) for i in (0, 1)]
    rule = f"+-{'-' * wide[0]}-+-{'-' * wide[1]}-+"
    lines = [f"| {a:<{wide[0]}} | {b:<{wide[1]}} |" for a, b in rows]
    return "\n".join([rule, lines[0], rule, *lines[1:], rule])


def emit(settings: Settings, data: dict[str, Any], human_lines: list[str]) -> None:
    """Print a result: as ``-f``/``-c`` ask where the verb has them, JSON on stdout under
    --json, else the human lines."""
    ctx = click.get_current_context(silent=True)
    fmt, columns, primary = ctx.meta.get(_FORMAT_KEY, (None, (), None)) if ctx else (
        None, (), None)
    if fmt or columns:
        click.echo(formatted(data, fmt or ("json" if settings.json else "value"), columns,
                             primary))
    elif settings.json:
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




CLOUD: tuple[Decorator, ...] = (
    click.option("--os-cloud", "os_cloud", envvar="OS_CLOUD", metavar="NAME",
                 help="The cloud's entry in clouds.yaml (default $OS_CLOUD; without either, "
                 "the OS_* variables)."),
    click.option("--source-host", metavar="HOST",
                 help="The p2vimage:host mark of what the cloud stages make (default: the "
                 "ssh:// source's host, else the image's name)."),
    click.option("--image-name", metavar="NAME",
                 help="The Glance image name (default: the host mark)."),
    enum_option("--disk-format", values=DiskFormat, default=DiskFormat.QCOW2.value,
                show_default=True, help="What is uploaded (raw sends every byte of the disk)."),
    enum_option("--compression", values=Compression, default=None,
                help="qcow2 cluster compression (default zstd; zlib for clouds whose qemu is "
                "older than 5.1; raw is never compressed)."),
    click.option("--volume-size", type=click.IntRange(min=1), metavar="GB",
                 help="Volume size in GiB (default: the image's virtual size, rounded up)."),
    click.option("--volume-type", metavar="NAME", help="Cinder volume type."),
    click.option("--az", metavar="ZONE",
                 help="The availability zone of the volume and the test server."),
    click.option("--flavor", metavar="ID|NAME",
                 help="The test server's Nova flavor (needed by the boot stage)."),
    click.option("--network", metavar="ID|NAME|none",
                 help="The test server's network, or 'none' for no NIC (needed by the boot "
                 "stage)."),
    click.option("--key", metavar="NAME", help="Nova key pair of the test server."),
    click.option("--security-group", "security_groups", multiple=True, metavar="NAME",
                 help="Security group of the test server. Repeatable."),
)


def cloud_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The cloud stages' options (upload → volume → boot in run), handed over as
    ``cloud_settings``."""
    @functools.wraps(f)
    def verb(*args: Any, os_cloud: str | None, source_host: str | None,
             image_name: str | None, disk_format: DiskFormat, compression: Compression | None,
             volume_size: int | None, volume_type: str | None, az: str | None,
             flavor: str | None, network: str | None, key: str | None,
             security_groups: tuple[str, ...], **kwargs: Any) -> Any:
        settings = CloudSettings(
            cloud=os_cloud, host=source_host, image_name=image_name, disk_format=disk_format,
            compression=compression, volume_size_gb=volume_size, volume_type=volume_type,
            availability_zone=az, flavor=flavor, network=network, key=key,
            security_groups=security_groups)
        return f(*args, cloud_settings=settings, **kwargs)

    return _added(CLOUD, verb)


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
