"""The ``p2v_`` host variables of a fleet inventory, declared once: :class:`HostOptions` has one
typed field per key, and each field's metadata holds the parser of its value and its help
(README's table and the refusal of unknown keys derive from the same fields).

Values arrive as Ansible merged them (group and host variables, with Ansible's precedence) and
are read here into frozen, typed options, or refused with one line naming the key and the
problem. Relative paths are taken from the inventory's folder. Values are never templated: a
``{{ … }}`` is refused rather than taken literally.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from p2vimage import pipeline
from p2vimage.core.errors import InputError
from p2vimage.core.units import parse_size
from p2vimage.cutover import spec as specmod
from p2vimage.smoke import options as smoke
from p2vimage.sync import source as sync

PREFIX = "p2v_"
# The stages a fleet host goes through, in order: the pipeline's (the cloud's included).
STAGES = pipeline.STAGES
# What a stage cannot do without (checked before anything runs).
NEEDS = {"sync": ("source",), "build": ("source",), "boot": ("flavor", "network")}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")
_SSH_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9]*=[^\n\r\0]*")
_BWLIMIT = re.compile(r"\d+(?:\.\d+)?[bBkKmMgGtTpP]?")


class Bad(Exception):
    """A value that cannot be used: what is wrong, and what to do."""

    def __init__(self, problem: str, hint: str = "fix the value in the inventory") -> None:
        super().__init__(problem)
        self.problem, self.hint = problem, hint


@dataclasses.dataclass(frozen=True)
class Context:
    """Where values are read: relative paths start at ``base``; cutover specs are cached by
    path (one file read once however many hosts name it)."""

    base: Path
    where: str  # "inventory X: host H" for messages
    specs: dict[Path, specmod.Spec] = dataclasses.field(default_factory=dict)


Parser = Callable[[Any, Context], Any]
T = TypeVar("T")


def _key(parse: Parser, help_text: str, default: T) -> T:
    field: T = dataclasses.field(default=default, metadata={"parse": parse, "help": help_text})
    return field


def _text(value: Any, ctx: Context) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # a numeric id (flavor 42) is a name too
    if not isinstance(value, str):
        raise Bad(f"{value!r} is not a string")
    if not value.strip():
        raise Bad("is empty")
    if any(c in value for c in "\0\n\r"):
        raise Bad(f"control characters in {value!r}")
    if "{{" in value or "{%" in value:
        raise Bad(f"{value!r} is a template; p2vimage does not expand templates",
                  hint="write the value itself")
    return value


def _name(value: Any, ctx: Context) -> str:
    text = _text(value, ctx)
    if not _NAME.fullmatch(text):
        raise Bad(f"{text!r} is not a name", hint="letters, digits, '.', '_' and '-' only")
    return text


def _choice(*choices: str) -> Parser:
    def parse(value: Any, ctx: Context) -> str:
        text = _text(value, ctx)
        if text not in choices:
            raise Bad(f"{text!r} is not one of {', '.join(choices)}")
        return text
    return parse


def _bool(value: Any, ctx: Context) -> bool:
    if not isinstance(value, bool):
        raise Bad(f"{value!r} is not true or false")
    return value


def _path(value: Any, ctx: Context) -> Path:
    return ctx.base / _text(value, ctx)


def _size(value: Any, ctx: Context) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if not isinstance(value, str):
        raise Bad(f"cannot read {value!r} as a size", hint="write it like 4G, 800M or 1.5G")
    try:
        return parse_size(value)
    except InputError as exc:
        raise Bad(f"cannot read {value!r} as a size",
                  hint=exc.hint or "write it like 4G") from exc


def _gib(value: Any, ctx: Context) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise Bad(f"{value!r} is not a whole number of GiB (1 or more)")
    return value


def _list(item: Parser) -> Parser:
    def parse(value: Any, ctx: Context) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise Bad(f"{value!r} is not a list", hint="write a YAML list, e.g. [a, b]")
        return tuple(item(v, ctx) for v in value)
    return parse


def _pattern(regex: re.Pattern[str], what: str) -> Parser:
    def parse(value: Any, ctx: Context) -> str:
        text = _text(value, ctx)
        if not regex.fullmatch(text):
            raise Bad(f"{text!r} is not {what}")
        return text
    return parse


def _probe(value: Any, ctx: Context) -> smoke.Probe:
    try:
        return smoke.parse_probe(_text(value, ctx))
    except InputError as exc:
        raise Bad(exc.message, hint=exc.hint or "see 'p2vimage smoke --help'") from exc


def _source(value: Any, ctx: Context) -> sync.Source:
    text = _text(value, ctx)
    if "://" not in text:
        text = str(ctx.base / text)
    try:
        return sync.parse_source(text)
    except InputError as exc:
        raise Bad(exc.message, hint=exc.hint or "write it as ssh://[user@]host[:port]/") from exc


def _stages(value: Any, ctx: Context) -> tuple[str, ...]:
    names = _list(_text)(value, ctx)
    for name in names:
        if name not in STAGES:
            raise Bad(f"unknown stage {name!r}", hint=f"stages: {', '.join(STAGES)}")
    if not names:
        raise Bad("is empty", hint=f"name the stages to run, from {', '.join(STAGES)}")
    if list(names) != sorted(set(names), key=STAGES.index):
        raise Bad(f"{list(names)} repeats a stage or is out of order",
                  hint=f"stages run in this order: {', '.join(STAGES)}")
    return tuple(names)


def _cutover(value: Any, ctx: Context) -> specmod.Spec:
    """A spec file (path), or the spec written inline as a table."""
    try:
        if isinstance(value, Mapping):
            raw = json.dumps(value, sort_keys=True).encode()
            return specmod.from_dict(value, ctx.base, raw, where=f"{ctx.where}: p2v_cutover")
        path = _path(value, ctx)
        if path not in ctx.specs:
            ctx.specs[path] = specmod.load(path)
        return ctx.specs[path]
    except InputError as exc:
        # the spec's own errors already name the file (or the host and key) and the key
        raise InputError(exc.message if exc.message.startswith(ctx.where)
                         else f"{ctx.where}: p2v_cutover: {exc.message}", hint=exc.hint) from exc


@dataclasses.dataclass(frozen=True)
class HostOptions:
    """Everything one host of a fleet is moved with: ``p2v_NAME`` sets field NAME. ``None``
    means the batch decides (a path under its work directory, the verb's default)."""

    # sync
    source: sync.Source | None = _key(
        _source, "The legacy server, ssh://[user@]host[:port]/[path] (or a local tree); "
        "needed by the sync and build stages.", None)
    staging: Path | None = _key(_path, "The staging tree sync fills and build reads.", None)
    excludes: tuple[str, ...] = _key(
        _list(_text), "rsync exclude patterns, on top of the seed profile's.", ())
    sync_profile: str = _key(_choice("seed", "none"), "seed: the seed's excludes "
                             "(/srv/backup, /var/cache, /var/lib/backuppc, /var/tmp).", "seed")
    bwlimit: str | None = _key(_pattern(_BWLIMIT, "an rsync --bwlimit (e.g. 20m)"),
                               "rsync --bwlimit (e.g. 20m).", None)
    identity: Path | None = _key(_path, "ssh identity file.", None)
    ssh_config: Path | None = _key(_path, "An ssh config file instead of ~/.ssh/config.", None)
    ssh_options: tuple[str, ...] = _key(
        _list(_pattern(_SSH_OPTION, "an ssh -o Key=value option")),
        "ssh -o options (e.g. [ProxyJump=gw]).", ())
    rsync_path: str | None = _key(_text, "The rsync command on the source (e.g. sudo rsync).",
                                  None)
    accept_new_host_key: bool = _key(_bool, "Trust the key of a host never seen before.", False)
    # build
    image: Path | None = _key(_path, "The raw disk image to make.", None)
    size: int | None = _key(_size, "Image size (4G, 800M; default: tree + headroom).", None)
    filesystem: str | None = _key(_choice("ext2", "ext3", "ext4"),
                                  "ext2, ext3 or ext4 (default: chosen from the guest).", None)
    fs_features: str | None = _key(_text, "mke2fs features to add (name) or drop (^name).",
                                   None)
    # convert
    bootloader: str = _key(_choice("auto", "extlinux", "grub2"),
                           "auto (the guest's GRUB 2, else extlinux), extlinux or grub2.", "auto")
    root_device: str = _key(_choice("uuid", "vda1"),
                            "How fstab and the bootloader name the root: uuid or vda1.", "uuid")
    swap_file: int | None = _key(_size, "Replace swap partitions with a swap file this big.",
                                 None)
    disable_hardware_services: bool = _key(
        _bool, "Disable mdadm, smartd, lm-sensors, hwclock and vserver services.", False)
    initramfs_method: str = _key(_choice("auto", "chroot", "appliance"),
                                 "Where a missing-virtio initrd is rebuilt.", "auto")
    # smoke
    probes: tuple[smoke.Probe, ...] = _key(
        _list(_probe), "Smoke probes, e.g. [tcp:25:220, 'http:80:/:200:Welcome'].", ())
    default_probe: bool = _key(_bool, "Probe ssh's SSH-2.0 banner too.", True)
    # upload, volume, boot
    cloud: str | None = _key(_text, "The cloud's entry in clouds.yaml (default $OS_CLOUD).",
                             None)
    image_name: str | None = _key(_text, "The Glance image name.", None)
    disk_format: str = _key(_choice("qcow2", "raw"), "What is uploaded: qcow2 or raw.", "qcow2")
    volume_type: str | None = _key(_text, "Cinder volume type.", None)
    volume_size: int | None = _key(_gib, "Volume size in GiB (default: the image's).", None)
    availability_zone: str | None = _key(_text, "Volume and compute availability zone.", None)
    flavor: str | None = _key(_text, "Nova flavor (needed by the boot stage).", None)
    network: str | None = _key(_text, "The server's network, or none (needed by the boot "
                               "stage).", None)
    key: str | None = _key(_text, "Nova key pair.", None)
    security_groups: tuple[str, ...] = _key(_list(_text), "Security groups.", ())
    # cutover and scheduling
    cutover: specmod.Spec | None = _key(
        _cutover, "The cutover spec: a TOML file, or the same tables written inline.", None)
    stages: tuple[str, ...] | None = _key(
        _stages, f"The stages to run, in order, from {', '.join(STAGES)} (default: all that "
        "apply; sync only for an ssh:// source).", None)
    conversion_host: str | None = _key(_name, "Pin the host to this conversion host.", None)

    @property
    def run_stages(self) -> tuple[str, ...]:
        """The stages this host goes through: its own list, else every one that applies."""
        if self.stages is not None:
            return self.stages
        remote = self.source is not None and self.source.remote
        return STAGES if remote else STAGES[1:]


KEYS: dict[str, dataclasses.Field[Any]] = {
    PREFIX + f.name: f for f in dataclasses.fields(HostOptions)}


def closest(key: str) -> str | None:
    """The known key most like ``key`` (a typo's likely meaning)."""
    match = difflib.get_close_matches(key, KEYS, n=1, cutoff=0.6)
    return match[0] if match else None


def parse(variables: Mapping[str, Any], ctx: Context) -> HostOptions:
    """The options in a host's merged variables (only ``p2v_*`` ones are read). Raises
    InputError, one line: where, key, problem."""
    values: dict[str, Any] = {}
    for key in sorted(k for k in variables if k.startswith(PREFIX)):
        field = KEYS.get(key)
        if field is None:
            guess = closest(key)
            raise InputError(f"{ctx.where}: {key}: unknown key",
                             hint=f"did you mean {guess}?" if guess else
                             "see the fleet section of README.md for the p2v_ keys")
        value = variables[key]
        if value is None:  # `p2v_x:` with nothing after it: the default
            continue
        try:
            values[field.name] = field.metadata["parse"](value, ctx)
        except Bad as exc:
            raise InputError(f"{ctx.where}: {key}: {exc.problem}", hint=exc.hint) from exc
    opts = HostOptions(**values)
    for stage in opts.run_stages:
        for name in NEEDS.get(stage, ()):
            if getattr(opts, name) is None:
                raise InputError(f"{ctx.where}: {PREFIX}{name}: missing (the {stage} stage "
                                 "needs it)", hint=f"set {PREFIX}{name}, or leave {stage} out "
                                 f"of {PREFIX}stages")
    if "sync" in opts.run_stages and not (opts.source and opts.source.remote):
        raise InputError(f"{ctx.where}: {PREFIX}source: the sync stage needs an ssh:// source",
                         hint=f"write ssh://[user@]host/, or leave sync out of {PREFIX}stages")
    return opts
