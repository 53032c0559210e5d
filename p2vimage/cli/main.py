"""The command line: a click group and its verbs. Parse, call a stage, print, map errors."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from p2vimage import __version__, pipeline
from p2vimage.build import refresh as refreshmod
from p2vimage.build import stage as image
from p2vimage.build import verify
from p2vimage.cli import cloud as cli_cloud
from p2vimage.cli import cutover as cli_cutover
from p2vimage.cli.options import ProbeType, Settings, SizeType, emit, ssh_source_options
from p2vimage.convert import stage as convert
from p2vimage.core import log as logmod
from p2vimage.core.errors import Interrupted, P2VError
from p2vimage.core.units import human
from p2vimage.host import doctor
from p2vimage.smoke import stage as smoke
from p2vimage.sync import stage as sync


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show every command run and tracebacks.")
@click.option("--json", "json_mode", is_flag=True, help="Results as JSON on stdout.")
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False),
              help="Per-host work directory (state, stamps, reports).")
@click.version_option(__version__, prog_name="p2vimage")
@click.pass_context
def cli(ctx: click.Context, debug: bool, json_mode: bool, workdir: Path | None) -> None:
    """Move legacy Linux servers into OpenStack images."""
    logmod.setup(debug=debug, json_mode=json_mode)
    ctx.obj = Settings(debug=debug, json=json_mode, workdir=workdir)


@cli.command("doctor")
@click.option("--refresh", is_flag=True, help="Probe the accelerators again (ignore cache).")
@click.option("--verb", "verbs", multiple=True, type=click.Choice(doctor.VERB_NAMES),
              help="Check only this verb (repeatable); demo, bench and tests only this way.")
@click.pass_obj
def doctor_cmd(settings: Settings, refresh: bool, verbs: tuple[str, ...]) -> None:
    """Which verbs this host can run, what each miss needs installed, and the accelerator
    that really works. Exit 3 when a checked verb cannot run."""
    report = doctor.check(refresh=refresh, verbs=verbs)
    emit(settings, report, doctor.lines(report))
    doctor.verdict(report)


@cli.command("build")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The raw disk image to write.")
@click.option("--size", type=SizeType(), help="Image size (default: tree + headroom).")
@click.option("--fs", "fstype", type=click.Choice(["ext2", "ext3", "ext4"]),
              help="Filesystem type (default: chosen from the guest).")
@click.option("--fs-features", help="Comma list of mke2fs features to add (name) or drop "
              "(^name) on top of the choice.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--refresh", is_flag=True, help="Update the existing image in place from SOURCE "
              "(after another sync pass) and convert again only if the fixups' inputs changed.")
@click.option("--refresh-method", type=click.Choice(refreshmod.METHODS), default="auto",
              show_default=True, help="loop: rsync into the loop-mounted image (root, moves "
              "only the delta); rebuild: mke2fs -d again, same UUID, then convert again.")
@click.option("--full-scan", is_flag=True, help="With --refresh: compare the whole tree, not "
              "just the paths sync recorded as changed (if SOURCE was changed by other means).")
@click.pass_obj
def build_cmd(settings: Settings, source: Path, output: Path, size: int | None,
              fstype: str | None, fs_features: str | None, force: bool, refresh: bool,
              refresh_method: str, full_scan: bool) -> None:
    """Make a raw disk image (msdos label, one bootable partition) from SOURCE tree."""
    if refresh:
        if size or fstype or fs_features or force:
            raise click.UsageError("--refresh keeps the image's size and filesystem: drop "
                                   "--size, --fs, --fs-features and --force")
        result = refreshmod.refresh(refreshmod.RefreshOptions(
            source=source, image=output, method=refresh_method, workdir=settings.workdir,
            full_scan=full_scan))
        emit(settings, result, refreshmod.lines(result))
        return
    opts = image.BuildOptions(source=source, output=output, size=size, fstype=fstype,
                              fs_features=fs_features, force=force,
                              sync_workdir=settings.workdir)
    report = image.build(opts)
    emit(settings, report, [
        f"image: {report['image']} ({human(int(str(report['size_bytes'])))}, "
        f"{report['filesystem']}, {report['inodes']} inodes, {report['seconds']} s)"])


@cli.command("convert")
@click.argument("image_path", metavar="IMAGE", type=click.Path(path_type=Path))
@click.option("--bootloader", type=click.Choice(["auto", "extlinux", "grub2"]), default="auto",
              show_default=True, help="auto: the guest's GRUB 2, else extlinux.")
@click.option("--root-device", type=click.Choice(["uuid", "vda1"]), default="uuid",
              show_default=True, help="How fstab and the bootloader name the root.")
@click.option("--dry-run", is_flag=True, help="Show the diffs and actions; write nothing.")
@click.option("--swap-file", "swap_file", type=SizeType(), default=None,
              help="Replace swap partitions with a swap file of this size.")
@click.option("--disable-hardware-services", is_flag=True,
              help="Disable mdadm, smartd, lm-sensors, hwclock and vserver services.")
@click.option("--initramfs-method", type=click.Choice(["auto", "chroot", "appliance"]),
              default="auto", show_default=True,
              help="Where a missing-virtio initrd is rebuilt (chroot needs root).")
@click.pass_obj
def convert_cmd(settings: Settings, image_path: Path, bootloader: str, root_device: str,
                dry_run: bool, swap_file: int | None, disable_hardware_services: bool,
                initramfs_method: str) -> None:
    """Make IMAGE boot as a KVM guest, offline (fstab, bootloader, initrd, console, NICs)."""
    opts = convert.ConvertOptions(
        image=image_path, bootloader=bootloader, root_device=root_device, dry_run=dry_run,
        swap_file_mib=(swap_file or 0) >> 20, disable_hardware=disable_hardware_services,
        initramfs_method=initramfs_method)
    report = convert.convert(opts)
    emit(settings, report, convert.lines(report))


@cli.command("smoke")
@click.argument("image_path", metavar="IMAGE", type=click.Path(path_type=Path))
@click.option("--probe", "probes", type=ProbeType(), multiple=True,
              help="tcp:PORT[:BANNER], http:PORT[:PATH[:STATUS[:TEXT]]] or ssh:CMD[:TEXT], "
              "optionally @ADDRESS (default: the guest's first address). Repeatable.")
@click.option("--no-default-probe", is_flag=True, help="Do not probe ssh's SSH-2.0 banner.")
@click.option("--report-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where report.json, junit.xml and the console log go (IMAGE.smoke/).")
@click.option("--login-regex", default=r"login:\s*$", show_default=True)
@click.option("--timeout", "timeouts", multiple=True, metavar="PHASE=SECONDS",
              help="Phase timeouts: bootloader, kernel, login, probes. Repeatable.")
@click.pass_obj
def smoke_cmd(settings: Settings, image_path: Path, probes: tuple[smoke.Probe, ...],
              no_default_probe: bool, report_dir: Path | None, login_regex: str,
              timeouts: tuple[str, ...]) -> None:
    """Boot IMAGE under qemu (never modified), watch its console, probe its services."""
    limits: dict[str, float] = {}
    for item in timeouts:
        phase, _, value = item.partition("=")
        if phase not in ("bootloader", "kernel", "login", "probes") or not value.replace(
                ".", "", 1).isdigit():
            raise click.UsageError(f"bad --timeout {item!r}: use bootloader|kernel|login|"
                                   "probes=SECONDS")
        limits[{"probes": "probe"}.get(phase, phase) + "_timeout"] = float(value)
    opts = smoke.SmokeOptions(image=image_path, report_dir=report_dir, probes=probes,
                              default_probe=not no_default_probe, login_regex=login_regex,
                              **limits)  # type: ignore[arg-type]
    report = smoke.smoke(opts)
    emit(settings, report, smoke.lines(report))
    if report["verdict"] != "pass":
        raise smoke.failure_error(report)


@cli.command("run")
@click.argument("source")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The image to make.")
@click.option("--staging", type=click.Path(path_type=Path, file_okay=False),
              help="With an ssh:// SOURCE: the staging tree the sync stage fills.")
@ssh_source_options
@click.option("--from", "first", type=click.Choice(pipeline.STAGES), default=None,
              help="First stage to run (default: sync for an ssh:// SOURCE, else build).")
@click.option("--until", "last", type=click.Choice(pipeline.STAGES), default="smoke",
              show_default=True, help="Last stage to run.")
@click.option("--resume", is_flag=True, help="Skip stages whose stamp shows them done.")
@click.option("--force", is_flag=True, help="Replace an existing image.")
@click.option("--size", type=SizeType(), help="Image size (default: tree + headroom).")
@click.option("--bootloader", type=click.Choice(["auto", "extlinux", "grub2"]), default="auto")
@click.option("--root-device", type=click.Choice(["uuid", "vda1"]), default="uuid")
@click.option("--probe", "probes", type=ProbeType(), multiple=True,
              help="Smoke probes (see 'smoke --help'). Repeatable.")
@click.pass_obj
def run_cmd(settings: Settings, /, source: str, output: Path, staging: Path | None,
            first: str | None, last: str, resume: bool, force: bool, size: int | None,
            bootloader: str, root_device: str, probes: tuple[smoke.Probe, ...],
            **ssh: Any) -> None:
    """The pipeline: SOURCE (a tree, or ssh://[user@]host[:port]/ synced into --staging first)
    → built, converted, smoke-tested image."""
    sync_opts = None
    if source.startswith("ssh://"):
        if staging is None:
            raise click.UsageError("an ssh:// SOURCE needs --staging DIR for the synced tree")
        sync_opts = sync.SyncOptions(source=sync.parse_source(source), staging=staging, **ssh)
        tree = staging
    else:
        tree = Path(source)
    opts = pipeline.RunOptions(
        source=tree, image=output, workdir=settings.workdir, first=first, last=last,
        sync=sync_opts,
        resume=resume, force=force, build={"size": size} if size else {},
        convert={"bootloader": bootloader, "root_device": root_device},
        smoke={"probes": probes} if probes else {})
    results = pipeline.run(opts)
    emit(settings, results, pipeline.lines(results))


@cli.command("demo")
@click.pass_obj
def demo_cmd(settings: Settings) -> None:
    """The built-in example: a bullseye i386 legacy host through build, convert and smoke."""
    workdir = settings.workdir or Path("/var/tmp/p2vimage-demo")
    results = pipeline.demo(workdir)
    emit(settings, results, pipeline.lines(results))


@cli.command("sync")
@click.argument("source")
@click.argument("staging", type=click.Path(path_type=Path, file_okay=False))
@click.option("--exclude", "excludes", multiple=True,
              help="rsync exclude pattern, on top of the profile. Repeatable.")
@click.option("--profile", type=click.Choice(["seed", "none"]), default="seed",
              show_default=True, help="seed: the seed's excludes (/srv/backup, /var/cache, "
              "/var/lib/backuppc, /var/tmp).")
@click.option("--final", is_flag=True, help="The last pass, after services stopped.")
@click.option("--bwlimit", help="rsync --bwlimit (e.g. 20m).")
@ssh_source_options
@click.pass_obj
def sync_cmd(settings: Settings, /, source: str, staging: Path, excludes: tuple[str, ...],
             profile: str, final: bool, bwlimit: str | None, **ssh: Any) -> None:
    """Copy SOURCE (ssh://[user@]host[:port]/[path] or a directory) into STAGING with rsync."""
    base = sync.SEED_PROFILE if profile == "seed" else ()
    opts = sync.SyncOptions(
        source=sync.parse_source(source), staging=staging, workdir=settings.workdir,
        excludes=(*base, *excludes), final=final, bwlimit=bwlimit, **ssh)
    report = sync.sync(opts)
    stats = report["stats"]
    emit(settings, report, [
        f"{'final ' if final else ''}sync: {stats.get('files', 0)} entries, "
        f"{stats.get('files_transferred', 0)} files sent, {stats.get('deleted', 0)} deleted, "
        f"{stats.get('bytes_received', 0) + stats.get('bytes_sent', 0)} bytes moved in "
        f"{report['seconds']} s",
        *(f"  crossed mount {m['mountpoint']} ({m['type']})" for m in report["crossed_mounts"]),
        *(f"  not synced (lost): {f}" for f in report["lost_features"])])


@cli.command("verify")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("image_path", metavar="IMAGE", type=click.Path(path_type=Path))
@click.option("--strict", is_flag=True,
              help="Count paths that convert rewrites as differences too.")
@click.option("--max-shown", default=50, show_default=True,
              help="Differences printed (all of them with --json).")
@click.pass_obj
def verify_cmd(settings: Settings, source: Path, image_path: Path, strict: bool,
               max_shown: int) -> None:
    """Compare SOURCE tree with the filesystem in IMAGE; exit 1 on any difference."""
    result = verify.verify(source, image_path, strict=strict)
    emit(settings, result.as_dict(), result.lines(max_shown))
    if result.differences:
        sys.exit(1)


# Verb families that live in their own modules register themselves on the group.
cli_cloud.register(cli)
cli_cutover.register(cli)


def _on_sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point: run the CLI, print errors as one line, exit with the documented code."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="p2vimage", standalone_mode=False)
    except P2VError as exc:
        if debug:
            raise
        click.echo(exc.one_line(), err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "p2vimage"
        click.echo(f"error: {exc.format_message()} (hint: see '{command} --help')", err=True)
        sys.exit(2)
    except (click.Abort, KeyboardInterrupt):  # click turns KeyboardInterrupt into Abort
        if debug:
            raise
        click.echo("error: interrupted; partial outputs were removed (hint: run the same "
                   "command again to start over)", err=True)
        sys.exit(Interrupted.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(0)


