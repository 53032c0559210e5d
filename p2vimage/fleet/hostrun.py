"""One fleet host as ``p2vimage run`` sees it: where its files go under the batch directory,
the :class:`pipeline.RunOptions` its options make, the ``run`` command line of one stage, and
which stages its stamps show done.

The per-host unit of a batch is the ``run`` command itself, one stage at a time
(``run SOURCE -o IMAGE --from S --until S --resume``): the pipeline's own stamps decide what
is done, and a stage the pipeline learns (the cloud ones) is run the same way. The options
are mapped once here, as ``run``'s command line; :func:`run_options` gives what that command
line makes of them (a unit test parses the command line with the real CLI and compares).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from p2vimage import pipeline
from p2vimage.build.stage import BuildSettings
from p2vimage.cloud.options import CloudSettings, DiskFormat
from p2vimage.convert.options import (
    BootloaderChoice,
    ConvertSettings,
    InitramfsMethod,
    RootDevice,
)
from p2vimage.core.errors import InputError
from p2vimage.disk.state import state_path
from p2vimage.fleet.inventory import FleetHost
from p2vimage.host import run as runmod
from p2vimage.smoke.options import Probe, ProbeKind, SmokeSettings
from p2vimage.sync import stage as syncmod
from p2vimage.sync.source import Source

# Where each host's files go, under BATCH_DIR/hosts/NAME/ (unless the inventory says).
HOSTS = "hosts"


@dataclasses.dataclass(frozen=True)
class HostPaths:
    """A host's files: its folder, the image, the staging tree, the stamps (work) and the
    logs of each stage (LOGS/STAGE.log: stderr, LOGS/STAGE.json: the result)."""

    root: Path
    image: Path
    staging: Path
    work: Path
    logs: Path

    def log(self, stage: str) -> Path:
        return self.logs / f"{stage}.log"

    def result(self, stage: str) -> Path:
        return self.logs / f"{stage}.json"

    @property
    def cutover(self) -> Path:
        """The cutover journal's folder."""
        return self.root / "cutover"


def default_batch_dir(inventory: Path) -> Path:
    """INVENTORY.batch beside the inventory (a file or a folder)."""
    path = inventory.absolute()
    return path.with_name(path.name + ".batch")


def paths(host: FleetHost, batch_dir: Path) -> HostPaths:
    """Where ``host``'s files are (the inventory's p2v_image and p2v_staging win)."""
    root = batch_dir.absolute() / HOSTS / host.name
    opts = host.options
    return HostPaths(root=root, image=opts.image or root / f"{host.name}.raw",
                     staging=opts.staging or root / "staging", work=root / "work",
                     logs=root / "logs")


def runnable(host: FleetHost, until: str | None = None) -> tuple[str, ...]:
    """The host's stages that ``run`` does, in order, up to ``until`` (its other stages are
    not run by this version)."""
    chosen = [s for s in host.options.run_stages if s in pipeline.STAGES]
    if until is not None:
        chosen = [s for s in chosen if pipeline.STAGES.index(s) <= pipeline.STAGES.index(until)]
    return tuple(chosen)


def unavailable(host: FleetHost) -> tuple[str, ...]:  # (none since run has the cloud stages)
    """The host's stages that ``run`` does not do (yet)."""
    return tuple(s for s in host.options.run_stages if s not in pipeline.STAGES)


def source_text(source: Source) -> str:
    """A source as ``run`` takes it: ssh://[user@]host[:port]/path, or the local path."""
    if not source.remote:
        return source.path
    host = f"[{source.host}]" if source.host and ":" in source.host else source.host
    user = f"{source.user}@" if source.user else ""
    port = f":{source.port}" if source.port else ""
    return f"ssh://{user}{host}{port}{source.path}"


def probe_text(probe: Probe) -> str:
    """A probe as ``--probe`` takes it (parse_probe gives ``probe`` back)."""
    match probe.kind:
        case ProbeKind.HTTP:
            text = f"http:{probe.port}:{probe.path}:{probe.status}:{probe.expect}"
        case ProbeKind.SSH:
            text = f"ssh:{probe.command}" + (f":{probe.expect}" if probe.expect else "")
        case _:
            text = f"tcp:{probe.port}" + (f":{probe.expect}" if probe.expect else "")
    return text + (f"@{probe.address}" if probe.address else "")


def _flag(args: list[str], name: str, value: object) -> None:
    if value is not None:
        args += [name, os.fspath(value) if isinstance(value, Path) else str(value)]


def run_args(host: FleetHost, where: HostPaths) -> list[str]:
    """``run``'s arguments for the host (no stage slice): source, image, staging, the ssh and
    sync options, then the build, convert and smoke options that differ from the default."""
    opts = host.options
    if opts.source is None:
        raise InputError(f"host {host.name}: p2v_source: missing (the build stage needs it)",
                         hint="set p2v_source")
    args = ["run", source_text(opts.source), "-o", os.fspath(where.image)]
    if opts.source.remote:
        args += ["--staging", os.fspath(where.staging)]
        _flag(args, "--identity", opts.identity)
        _flag(args, "--ssh-config", opts.ssh_config)
        _flag(args, "--rsync-path", opts.rsync_path)
        for option in opts.ssh_options:
            args += ["--ssh-option", option]
        if opts.accept_new_host_key:
            args.append("--accept-new-host-key")
        args += ["--profile", opts.sync_profile]
        for pattern in opts.excludes:
            args += ["--exclude", pattern]
        _flag(args, "--bwlimit", opts.bwlimit)
    _flag(args, "--size", opts.size)
    _flag(args, "--fs", opts.filesystem)
    _flag(args, "--fs-features", opts.fs_features)
    args += ["--bootloader", opts.bootloader, "--root-device", opts.root_device,
             "--initramfs-method", opts.initramfs_method]
    _flag(args, "--swap-file", opts.swap_file)
    if opts.disable_hardware_services:
        args.append("--disable-hardware-services")
    for probe in opts.probes:
        args += ["--probe", probe_text(probe)]
    if not opts.default_probe:
        args.append("--no-default-probe")
    cloud = cloud_settings(host)  # the cloud stages' options, when the host has them
    _flag(args, "--os-cloud", cloud.cloud)
    args += ["--source-host", str(cloud.host), "--disk-format", cloud.disk_format.value]
    _flag(args, "--image-name", cloud.image_name)
    _flag(args, "--volume-size", cloud.volume_size_gb)
    _flag(args, "--volume-type", cloud.volume_type)
    _flag(args, "--az", cloud.availability_zone)
    _flag(args, "--flavor", cloud.flavor)
    _flag(args, "--network", cloud.network)
    _flag(args, "--key", cloud.key)
    for group in cloud.security_groups:
        args += ["--security-group", group]
    return args


def cloud_settings(host: FleetHost) -> CloudSettings:
    """The host's cloud stage settings; its mark is the inventory's host name (so reruns and
    cleanups find what the batch made for it)."""
    opts = host.options
    return CloudSettings(
        cloud=opts.cloud, host=host.name, image_name=opts.image_name,
        disk_format=DiskFormat(opts.disk_format), volume_size_gb=opts.volume_size,
        volume_type=opts.volume_type, availability_zone=opts.availability_zone,
        flavor=opts.flavor, network=opts.network, key=opts.key,
        security_groups=opts.security_groups)


def stage_argv(host: FleetHost, where: HostPaths, stage: str) -> list[str]:
    """The child process that runs one stage of the host: ``python -m p2vimage --json
    --workdir WORK run … --from STAGE --until STAGE --resume``."""
    return [sys.executable, "-m", "p2vimage", "--json", "--workdir", os.fspath(where.work),
            *run_args(host, where), "--from", stage, "--until", stage, "--resume"]


def run_options(host: FleetHost, where: HostPaths) -> pipeline.RunOptions:
    """What ``run`` makes of :func:`run_args` (with ``--resume``): the options whose stamps
    tell which stages are done."""
    opts = host.options
    if opts.source is None:
        raise InputError(f"host {host.name}: p2v_source: missing (the build stage needs it)",
                         hint="set p2v_source")
    sync = None
    tree = Path(opts.source.path)
    if opts.source.remote:
        base = syncmod.SEED_PROFILE if opts.sync_profile == "seed" else ()
        access = syncmod.SourceAccess(
            identity=opts.identity, ssh_config=opts.ssh_config, rsync_path=opts.rsync_path,
            ssh_options=opts.ssh_options, accept_new_host_key=opts.accept_new_host_key)
        sync = syncmod.SyncOptions(source=opts.source, staging=where.staging,
                                   excludes=(*base, *opts.excludes), bwlimit=opts.bwlimit,
                                   access=access)
        tree = where.staging
    convert = ConvertSettings(
        bootloader=BootloaderChoice(opts.bootloader), root_device=RootDevice(opts.root_device),
        swap_file_mib=(opts.swap_file or 0) >> 20,
        disable_hardware=opts.disable_hardware_services,
        initramfs_method=InitramfsMethod(opts.initramfs_method))
    return pipeline.RunOptions(
        source=tree, image=where.image, workdir=where.work, sync=sync, resume=True,
        build=BuildSettings(size=opts.size, fstype=opts.filesystem,
                            fs_features=opts.fs_features),
        convert=convert,
        smoke=SmokeSettings(probes=opts.probes, default_probe=opts.default_probe),
        cloud=cloud_settings(host))


def built_copy(where: HostPaths) -> Path:
    """The copy of the built image kept while convert changes the image in place."""
    return where.image.with_name(where.image.name + ".built")


def done(host: FleetHost, where: HostPaths) -> dict[str, dict[str, Any]]:
    """The host's stages its stamps show done (stage → stamp), by the pipeline's rule —
    over the built image's copy when convert was stopped half-way (see keep_built)."""
    if host.options.source is None:
        return {}
    opts = run_options(host, where)
    found = pipeline.finished(opts)
    copy = built_copy(where)
    if "convert" not in found and copy.exists():
        kept = pipeline.finished(dataclasses.replace(opts, image=copy))
        if len(kept) > len(found):
            return kept
    return found


def keep_built(where: HostPaths) -> None:
    """Before convert: copy the built image (sparse, its mtime kept) and its state file, so
    that a convert stopped half-way (the runner killed) is redone from the built image
    instead of building again (restore_built). Cheap next to a conversion (a reflink
    where the filesystem has them)."""
    copy = built_copy(where)
    tmp = copy.with_name(f".{copy.name}.partial")
    if state_path(where.image).exists():
        shutil.copy2(state_path(where.image), state_path(copy))
    runmod.run(["cp", "--sparse=always", "--reflink=auto", "--preserve=timestamps",
                where.image, tmp], what="copy of the built image")
    tmp.replace(copy)


def drop_built(where: HostPaths) -> None:
    """After convert passed: the copy is not needed any more."""
    built_copy(where).unlink(missing_ok=True)
    state_path(built_copy(where)).unlink(missing_ok=True)


def restore_built(host: FleetHost, where: HostPaths) -> bool:
    """Put the built image's copy back in place when the stamps show the image was changed
    by an unfinished convert and the copy is the built image. Returns whether it did."""
    if host.options.source is None or not built_copy(where).exists():
        return False
    opts = run_options(host, where)
    if len(done(host, where)) <= len(pipeline.finished(opts)):
        return False
    copy = built_copy(where)
    if state_path(copy).exists():
        state_path(copy).replace(state_path(where.image))
    copy.replace(where.image)
    return True


def check_apart(hosts: Iterable[FleetHost], batch_dir: Path) -> None:
    """Refuse two hosts that would write the same image or staging tree. Raises
    InputError."""
    seen: dict[Path, str] = {}
    for host in hosts:
        where = paths(host, batch_dir)
        mine = [where.image]
        if host.options.source is not None and host.options.source.remote:
            mine.append(where.staging)
        for path in mine:
            other = seen.setdefault(path, host.name)
            if other != host.name:
                raise InputError(f"hosts {other} and {host.name} would both write {path}",
                                 hint="give each host its own p2v_image and p2v_staging")
