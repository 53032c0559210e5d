"""The command line: a click group and its verbs. Parse, call a stage, print, map errors."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from p2vimage import __version__, pipeline
from p2vimage.build import refresh as refreshmod
from p2vimage.build import stage as image
from p2vimage.build import verify
from p2vimage.cli import batch as cli_batch
from p2vimage.cli import cloud as cli_cloud
from p2vimage.cli import cutover as cli_cutover
from p2vimage.cli.options import (
    FORCE,
    OUTPUT,
    Settings,
    as_json,
    build_options,
    cloud_options,
    convert_options,
    emit,
    enum_option,
    smoke_options,
    ssh_source_options,
    sync_selection_options,
)
from p2vimage.cloud.options import CloudSettings
from p2vimage.convert import stage as convert
from p2vimage.convert.options import ConvertOptions, ConvertSettings
from p2vimage.core import log as logmod
from p2vimage.core.errors import Interrupted, P2VError
from p2vimage.core.units import human
from p2vimage.host import doctor
from p2vimage.smoke import stage as smoke
from p2vimage.smoke.options import SmokeOptions, SmokeSettings
from p2vimage.sync import stage as sync
from p2vimage.sync.source import parse_source


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show every command run and tracebacks.")
@click.option("--json", "json_mode", is_flag=True,
              help="Results (and errors) as JSON on stdout; logs stay on stderr.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress.")
@click.option("-v", "--verbose", is_flag=True, help="Show every command run.")
@click.option("-x", "--trace", is_flag=True,
              help="Trace every libguestfs call (as the virt tools' -x).")
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False),
              help="Per-host work directory (state, stamps, reports).")
@click.version_option(__version__, prog_name="p2vimage")
@click.pass_context
def cli(ctx: click.Context, debug: bool, json_mode: bool, quiet: bool, verbose: bool,
        trace: bool, workdir: Path | None) -> None:
    """Move legacy Linux servers into OpenStack images.

    The global options (--json, --debug, -q, -v, -x, --workdir) may also follow the verb."""
    if quiet and (verbose or debug):
        raise click.UsageError("-q cannot go with -v or --debug")
    if trace:
        os.environ["LIBGUESTFS_TRACE"] = "1"  # read by every libguestfs handle made later
    logmod.setup(debug=debug, json_mode=json_mode, quiet=quiet, verbose=verbose)
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
    try:
        doctor.verdict(report)
    except P2VError as exc:
        if settings.json:  # one JSON document: the error, carrying the whole report
            exc.report = report
            raise
        emit(settings, report, doctor.lines(report))
        raise
    emit(settings, report, doctor.lines(report))


@cli.command("build")
@click.argument("source", type=click.Path(path_type=Path))
@OUTPUT
@build_options
@FORCE
@click.option("--refresh", is_flag=True, help="Update the existing image in place from SOURCE "
              "(after another sync pass) and convert again only if the fixups' inputs changed.")
@enum_option("--refresh-method", values=refreshmod.RefreshMethod,
             default=refreshmod.RefreshMethod.AUTO.value, show_default=True,
             help="loop: rsync into the loop-mounted image (root, moves "
             "only the delta); rebuild: mke2fs -d again, same UUID, then convert again.")
@click.option("--full-scan", is_flag=True, help="With --refresh: compare the whole tree, not "
              "just the paths sync recorded as changed (if SOURCE was changed by other means).")
@click.option("--allow-other-source", is_flag=True, help="With --refresh: accept a SOURCE "
              "other than the tree the image was made from (its contents replace the image's).")
@click.pass_obj
def build_cmd(settings: Settings, source: Path, output: Path, build_settings: image.BuildSettings,
              force: bool, refresh: bool, refresh_method: refreshmod.RefreshMethod,
              full_scan: bool, allow_other_source: bool) -> None:
    """Make a raw disk image (msdos label, one bootable partition) from SOURCE tree."""
    if refresh:
        if build_settings != image.BuildSettings() or force:
            raise click.UsageError("--refresh keeps the image's size and filesystem: drop "
                                   "--size, --fs, --fs-features and --force")
        result = refreshmod.refresh(refreshmod.RefreshOptions(
            source=source, image=output, method=refresh_method,
            workdir=settings.workdir, full_scan=full_scan,
            allow_other_source=allow_other_source))
        emit(settings, result, refreshmod.lines(result))
        return
    if full_scan or allow_other_source:
        raise click.UsageError("--full-scan and --allow-other-source go with --refresh")
    opts = image.BuildOptions(source=source, output=output, settings=build_settings,
                              force=force, sync_workdir=settings.workdir)
    report = image.build(opts)
    emit(settings, report, [
        f"image: {report['image']} ({human(int(str(report['size_bytes'])))}, "
        f"{report['filesystem']}, {report['inodes']} inodes, {report['seconds']} s)"])


@cli.command("convert")
@click.argument("image_path", metavar="IMAGE", type=click.Path(path_type=Path))
@convert_options
@click.option("--dry-run", is_flag=True, help="Show the diffs and actions; write nothing.")
@click.pass_obj
def convert_cmd(settings: Settings, image_path: Path, convert_settings: ConvertSettings,
                dry_run: bool) -> None:
    """Make IMAGE boot as a KVM guest, offline (fstab, bootloader, initrd, console, NICs)."""
    opts = ConvertOptions(image=image_path, settings=convert_settings, dry_run=dry_run)
    report = convert.convert(opts)
    emit(settings, report, convert.lines(report))


@cli.command("smoke")
@click.argument("image_path", metavar="IMAGE", type=click.Path(path_type=Path))
@smoke_options
@click.option("--report-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where report.json, junit.xml and the console log go (IMAGE.smoke/).")
@click.pass_obj
def smoke_cmd(settings: Settings, image_path: Path, smoke_settings: SmokeSettings,
              report_dir: Path | None) -> None:
    """Boot IMAGE under qemu (never modified), watch its console, probe its services."""
    opts = SmokeOptions(image=image_path, report_dir=report_dir, settings=smoke_settings)
    report = smoke.smoke(opts)
    emit(settings, report, smoke.lines(report))
    if report["verdict"] != "pass":
        raise smoke.failure_error(report)


@cli.command("run")
@click.argument("source")
@OUTPUT
@click.option("--staging", type=click.Path(path_type=Path, file_okay=False),
              help="With an ssh:// SOURCE: the staging tree the sync stage fills.")
@ssh_source_options
@sync_selection_options
@click.option("--from", "first", type=click.Choice(pipeline.STAGES), default=None,
              help="First stage to run (default: sync for an ssh:// SOURCE, else build).")
@click.option("--until", "last", type=click.Choice(pipeline.STAGES), default="smoke",
              show_default=True, help="Last stage to run.")
@click.option("--resume", is_flag=True, help="Skip stages whose stamp shows them done.")
@FORCE
@build_options
@convert_options
@smoke_options
@cloud_options
@click.pass_obj
def run_cmd(settings: Settings, source: str, output: Path, staging: Path | None,
            source_access: sync.SourceAccess, excludes: tuple[str, ...], bwlimit: str | None,
            first: str | None, last: str, resume: bool, force: bool,
            build_settings: image.BuildSettings,
            convert_settings: ConvertSettings, smoke_settings: SmokeSettings,
            cloud_settings: CloudSettings) -> None:
    """The pipeline: SOURCE (a tree, or ssh://[user@]host[:port]/ synced into --staging first)
    → built, converted, smoke-tested image; with --until upload, volume or boot, then a
    Glance image, a Cinder volume and a test server, made once per host and run."""
    sync_opts = None
    if source.startswith("ssh://"):
        if staging is None:
            raise click.UsageError("an ssh:// SOURCE needs --staging DIR for the synced tree")
        sync_opts = sync.SyncOptions(source=parse_source(source), staging=staging,
                                     excludes=excludes, bwlimit=bwlimit, access=source_access)
        tree = staging
    else:
        tree = Path(source)
    opts = pipeline.RunOptions(
        source=tree, image=output, workdir=settings.workdir, first=first, last=last,
        sync=sync_opts, resume=resume, force=force, build=build_settings,
        convert=convert_settings, smoke=smoke_settings, cloud=cloud_settings)
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
def sync_cmd(settings: Settings, source: str, staging: Path, excludes: tuple[str, ...],
             profile: str, final: bool, bwlimit: str | None,
             source_access: sync.SourceAccess) -> None:
    """Copy SOURCE (ssh://[user@]host[:port]/[path] or a directory) into STAGING with rsync."""
    base = sync.SEED_PROFILE if profile == "seed" else ()
    opts = sync.SyncOptions(
        source=parse_source(source), staging=staging, workdir=settings.workdir,
        excludes=(*base, *excludes), final=final, bwlimit=bwlimit, access=source_access)
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
cli_batch.register(cli)


GLOBAL_FLAGS = ("--debug", "--json", "-q", "--quiet", "-v", "--verbose", "-x", "--trace")
TERMINATED = 143  # 128 + SIGTERM, as shells report a process ended by it
_signals = {"term": False}


def _on_sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    _signals["term"] = True
    raise KeyboardInterrupt


def global_first(args: list[str]) -> list[str]:
    """The command line with the global options moved before the verb, wherever they were
    written (``verify A B --json`` as ``--json verify A B``); nothing after ``--`` moves."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        if arg in GLOBAL_FLAGS:
            front.append(arg)
        elif arg == "--workdir" and i + 1 < len(args):
            front += args[i:i + 2]
            i += 1
        elif arg.startswith("--workdir="):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


def _fail(exc: BaseException | None, line: str, code: int, debug: bool, json_mode: bool,
          hint: str | None = None) -> NoReturn:
    """Report the error: one line on stderr (after the traceback under --debug) and, under
    --json, a JSON object on stdout (error, hint, exit code, the partial report if any);
    exit with ``code``. Call it from an except block."""
    if debug:
        traceback.print_exc()
    if _signals["term"] and code == Interrupted.exit_code:
        code = TERMINATED
    line = " ".join(line.split())
    click.echo(line, err=True)
    if json_mode:
        message = exc.message if isinstance(exc, P2VError) else line.removeprefix("error: ")
        document: dict[str, Any] = {"error": message, "hint": hint, "exit_code": code}
        report = getattr(exc, "report", None)
        if report is not None:
            document["report"] = report
        click.echo(as_json(document))
    sys.exit(code)


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point: run the CLI, print errors as one line (and as JSON under --json), exit
    with the documented code (the same with --debug, which adds the traceback)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    args = global_first(list(argv if argv is not None else sys.argv[1:]))
    debug = "--debug" in args[:args.index("--")] if "--" in args else "--debug" in args
    json_mode = "--json" in (args[:args.index("--")] if "--" in args else args)
    try:
        cli.main(args=args, prog_name="p2vimage", standalone_mode=False)
    except P2VError as exc:
        _fail(exc, exc.one_line(), exc.exit_code, debug, json_mode, exc.hint)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare group: its help, no error
        click.echo(exc.ctx.get_help())
        sys.exit(0)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "p2vimage"
        hint = f"see '{command} --help'"
        _fail(exc, f"error: {exc.format_message()} (hint: {hint})", 2, False, json_mode, hint)
    except (click.Abort, KeyboardInterrupt) as exc:  # click turns KeyboardInterrupt into Abort
        hint = "run the same command again to start over"
        _fail(exc, f"error: interrupted; partial outputs were removed (hint: {hint})",
              Interrupted.exit_code, debug, json_mode, hint)
    except click.ClickException as exc:
        hint = "rerun with --debug for details"
        _fail(exc, f"error: {exc.format_message()} (hint: {hint})", exc.exit_code, debug,
              json_mode, hint)
    except Exception as exc:  # a bug or an unforeseen failure: still one line
        hint = "rerun with --debug for the traceback, and report it"
        _fail(exc, f"error: unexpected {type(exc).__name__}: {exc} (hint: {hint})", 1, debug,
              json_mode, hint)
    sys.exit(0)
