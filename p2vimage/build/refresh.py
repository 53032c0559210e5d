"""``build --refresh``: bring an image made by ``build`` (and maybe ``convert``) up to date
with its staging tree after another sync pass, without starting over.

Two ways, chosen by measurement (BENCHMARKS.md, "final pass"):

``loop`` (root): rsync the staging tree into the loop-mounted filesystem, so the cost follows
    what changed. Paths ``convert`` rewrote are left alone unless their original changed in the
    staging tree; then the new original is copied in and ``convert`` runs again, and only the
    fixups with something to do change anything (convert is idempotent).
``rebuild`` (no root needed): ``mke2fs -d`` again into a new image with the same size, UUID
    and label, then ``convert`` again with the options it last ran with. Its cost follows the
    size of the tree plus one appliance launch.

While it works the image's state says ``dirty``; an interrupted refresh is redone in full by
the next one, and nothing downstream takes a dirty image for a good one.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from p2vimage.build import stage as image
from p2vimage.convert import fixups
from p2vimage.convert import stage as convertmod
from p2vimage.convert.options import ConvertOptions, ConvertSettings
from p2vimage.core.errors import InputError, StageError
from p2vimage.core.log import step
from p2vimage.core.output import lock_or_refuse
from p2vimage.disk import e2fs, loopmount
from p2vimage.disk import state as imagestate
from p2vimage.host import run as runmod
from p2vimage.sync import stage as syncmod


class RefreshMethod(enum.StrEnum):
    """``--refresh-method``: how the image takes in the staging tree's changes."""

    AUTO = "auto"  # loop when this process can loop-mount, else rebuild
    LOOP = "loop"
    REBUILD = "rebuild"


@dataclasses.dataclass(frozen=True)
class RefreshOptions:
    """Settings of one refresh."""

    source: Path
    image: Path
    method: RefreshMethod = RefreshMethod.AUTO
    workdir: Path | None = None  # the sync work dir (its change lists), as for sync
    full_scan: bool = False  # compare the whole tree even when change lists are complete
    allow_other_source: bool = False  # refresh from a tree other than the one built from


def choose_method(requested: RefreshMethod) -> RefreshMethod:
    """``loop`` when this process can loop-mount (it moves only the delta), else ``rebuild``."""
    if requested != RefreshMethod.AUTO:
        return requested
    return RefreshMethod.LOOP if loopmount.possible() else RefreshMethod.REBUILD


def rsync_argv(source: Path, mnt: Path, keeps_ns: bool, protect: bool) -> list[str]:
    """The rsync from the staging tree into the mounted image.

    ``protect`` leaves convert's rewrites (and what it created) in place. Without nanoseconds
    in the image's inodes, times are compared to the second, or every file would differ.
    """
    argv = ["rsync", "-aHAXS", "--numeric-ids", "--delete", "--stats",
            "--filter=P /lost+found"]
    if keeps_ns:
        argv.append("--modify-window=-1")
    if protect:
        argv += [f"--exclude=/{pattern}" for pattern in fixups.writes()]
    return [*argv, f"{os.fspath(source)}/", f"{os.fspath(mnt)}/"]


def delta(opts: RefreshOptions, state: dict[str, Any]) -> list[bytes] | None:
    """The paths changed by the sync passes since the image was built or refreshed, or None
    when they are not all known (a pass failed or lacks its list, the state is dirty):
    then the whole tree is compared."""
    absorbed = state.get("synced_passes")
    history = syncmod.passes(opts.source, opts.workdir)
    if opts.full_scan or state.get("dirty") or absorbed is None or not history \
            or absorbed > len(history):
        return None
    work = syncmod.work_dir(opts.source, opts.workdir)
    found: dict[bytes, None] = {}
    for entry in history[absorbed:]:
        listing = work / "changes" / str(entry.get("changes", ""))
        if entry.get("rsync_exit") not in (0, 24) or not listing.is_file():
            return None
        found.update(dict.fromkeys(p for p in listing.read_bytes().split(b"\0") if p))
    return list(found)


def _reachable(source: Path, rel: bytes) -> bool:
    """Whether rsync can name ``rel``: it exists, or its parent is still a directory. (Under a
    directory that was deleted or became a file, the ancestor's own entry does the work.)"""
    path = os.fsencode(source) + b"/" + rel
    return os.path.lexists(path) or os.path.isdir(os.path.dirname(path))


def delta_argv(source: Path, mnt: Path, keeps_ns: bool, listing: Path) -> list[str]:
    """rsync of the listed paths only: missing ones are deleted, a directory that became a
    file is replaced, the parents' times are set (implied directories)."""
    argv = ["rsync", "-aHAXS", "--numeric-ids", "--from0", f"--files-from={listing}",
            "--delete-missing-args", "--force", "--stats"]
    if keeps_ns:
        argv.append("--modify-window=-1")
    return [*argv, f"{os.fspath(source)}/", f"{os.fspath(mnt)}/"]


def _restore(source: Path, mnt: Path, paths: list[str]) -> None:
    """Copy the staging tree's originals of ``paths`` over convert's versions (or remove them
    when the staging tree no longer has them)."""
    present = [p for p in paths if os.path.lexists(source / p)]
    for rel in paths:
        if rel in present:
            continue
        target = mnt / rel
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif os.path.lexists(target):
            target.unlink()
    if present:
        with tempfile.NamedTemporaryFile("wb", prefix="p2vimage-restore-") as listing:
            listing.write(b"".join(os.fsencode(p) + b"\0" for p in present))
            listing.flush()
            runmod.run(["rsync", "-aHAXS", "-r", "--numeric-ids", "--from0",
                        f"--files-from={listing.name}", f"{os.fspath(source)}/",
                        f"{os.fspath(mnt)}/"], what="rsync of the changed originals")


def _loop(opts: RefreshOptions, state: dict[str, Any], restore: list[str],
          changed: list[bytes] | None, tmp: Path) -> dict[str, int]:
    protect = bool(state.get("convert"))
    keeps_ns = bool(state.get("keeps_nanoseconds"))
    with loopmount.mounted(opts.image) as mnt:
        if changed is None:
            argv = rsync_argv(opts.source, mnt, keeps_ns, protect)
        else:  # convert's paths are handled by the restore below, as with the full scan
            listing = tmp / "changed.lst"
            listing.write_bytes(b"".join(
                p + b"\0" for p in changed
                if not (protect and fixups.rewritten(os.fsdecode(p)))
                and _reachable(opts.source, p)))
            argv = delta_argv(opts.source, mnt, keeps_ns, listing)
        proc = runmod.run(argv, check=False, what="rsync into the image")
        if proc.returncode != 0:
            full = "No space left on device" in proc.stderr
            raise StageError(
                f"{'the image is full: ' if full else ''}rsync into {opts.image} failed "
                f"(exit {proc.returncode}): {runmod.last_line(proc.stderr)}",
                hint="build a larger image with 'p2vimage build --force --size …'" if full
                else "run the refresh again; it redoes what is missing")
        if protect and restore:
            _restore(opts.source, mnt, restore)
        runmod.run(["sync", "-f", os.fspath(mnt)], what="sync")
    return syncmod.parse_stats(proc.stdout)


def _rebuild(opts: RefreshOptions, state: dict[str, Any]) -> dict[str, int]:
    uuid, label = e2fs.superblock_ids(opts.image, e2fs.find_partition(opts.image))
    size = opts.image.stat().st_size
    try:
        report = image.build(image.BuildOptions(source=opts.source, output=opts.image,
                                                settings=image.BuildSettings(size=size),
                                                force=True, uuid=uuid, label=label,
                                                sync_workdir=opts.workdir))
    except InputError as exc:
        if "too small" in exc.message or "does not fit" in exc.message:
            raise InputError(f"the staging tree {opts.source} no longer fits in "
                             f"{opts.image} ({size >> 20} MiB)",
                             hint="build a new, larger image with 'p2vimage build --force'"
                             ) from None
        raise
    # build wrote a fresh state; keep what convert ran with until it has run again
    imagestate.update(opts.image, dirty=True, convert=state.get("convert"))
    return {"files": int(str(report["inodes"])),
            "bytes_transferred": int(str(report["data_bytes"]))}


def _converted(image: Path, state: dict[str, Any]) -> ConvertSettings | None:
    """The settings convert last ran with on ``image``, or None when it has not run."""
    recorded = state.get("convert")
    if not recorded:
        return None
    try:
        return ConvertSettings.from_record(recorded)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"the state file {imagestate.state_path(image)} records convert "
                         f"settings p2vimage does not know ({exc})",
                         hint="convert the image again with 'p2vimage convert'") from None


def refresh(opts: RefreshOptions) -> dict[str, Any]:
    """Refresh ``opts.image`` from ``opts.source``; return the report. Raises P2VError."""
    image.check_source(opts.source)
    image.check_outside(opts.source, opts.image)
    if not opts.image.is_file():
        raise InputError(f"image {opts.image} does not exist",
                         hint="build it first with 'p2vimage build' (without --refresh)")
    e2fs.find_partition(opts.image)
    state = imagestate.load(opts.image)
    if state is None:
        raise InputError(f"{opts.image} has no p2vimage state "
                         f"({imagestate.state_path(opts.image).name})",
                         hint="refresh works on images made by 'p2vimage build'; build it "
                              "again with --force")
    other = imagestate.same_source(state, opts.source)
    if other is not None:
        if not opts.allow_other_source:
            raise InputError(f"{opts.source} is not the tree {opts.image} was made from: "
                             f"{other}",
                             hint="refresh from that tree, or add --allow-other-source to "
                                  f"replace the image's contents with {opts.source}")
        # the sync change lists of another tree say nothing about this image
        opts = dataclasses.replace(opts, full_scan=True)
    converted = _converted(opts.image, state)  # refused before anything changes
    method = choose_method(opts.method)
    loop = method == RefreshMethod.LOOP
    runmod.require_tools(["rsync", "losetup", "mount"] if loop else image.TOOLS)
    started = time.monotonic()
    fd = os.open(opts.image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        lock_or_refuse(fd, f"another p2vimage run is using {opts.image}",
                       "wait for it to finish")
        old = state.get("inputs") or {}
        new = fixups.input_digest(opts.source)
        # after an interrupted refresh, nothing about the image is known: redo everything
        changes = sorted(old.keys() | new.keys()) if state.get("dirty") else \
            fixups.changed(old, new)
        restore = [p for p in changes if fixups.rewritten(p)]
        synced = len(syncmod.passes(opts.source, opts.workdir))
        changed = delta(opts, state) if loop else None
        imagestate.update(opts.image, dirty=True)
        how = "the whole tree" if changed is None else f"{len(changed)} changed paths"
        with step(f"Refreshing {opts.image} from {opts.source} ({method}, {how})"), \
                tempfile.TemporaryDirectory(prefix="p2vimage-refresh-") as tmp:
            stats = _loop(opts, state, restore, changed, Path(tmp)) if loop \
                else _rebuild(opts, state)
        copied = round(time.monotonic() - started, 2)
        convert_report = None
        if converted and (changes or method == RefreshMethod.REBUILD):
            with step(f"Converting again ({len(changes)} fixup inputs changed)"):
                convert_report = convertmod.convert(ConvertOptions(
                    image=opts.image, settings=converted))
        imagestate.update(opts.image, dirty=False, inputs=new, refreshed=time.time(),
                          synced_passes=synced, **imagestate.source_identity(opts.source))
    finally:
        os.close(fd)
    return {
        "image": os.fspath(opts.image), "source": os.fspath(opts.source), "method": method.value,
        "scope": "full" if changed is None else "delta",
        "delta_paths": None if changed is None else len(changed),
        "stats": stats, "changed_inputs": changes, "restored": restore,
        "converted_again": convert_report is not None,
        "fixups_changed": [f["name"] for f in (convert_report or {}).get("fixups", [])
                           if f["changed"] or f["actions"]],
        "seconds": {"copy": copied, "total": round(time.monotonic() - started, 2)},
    }


def lines(report: dict[str, Any]) -> list[str]:
    """The human summary of a refresh."""
    stats = report["stats"]
    out = [f"refreshed {report['image']} ({report['method']}): "
           f"{stats.get('files_transferred', stats.get('files', 0))} files, "
           f"{stats.get('bytes_transferred', 0)} bytes in {report['seconds']['total']} s"]
    if report["converted_again"]:
        names = ", ".join(report["fixups_changed"]) or "no fixup had anything to do"
        out.append(f"  converted again ({len(report['changed_inputs'])} fixup inputs changed;"
                   f" {names})")
    elif report["changed_inputs"]:
        out.append(f"  {len(report['changed_inputs'])} fixup inputs changed (image not converted)")
    return out
