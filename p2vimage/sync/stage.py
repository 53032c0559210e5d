"""``sync``: copy a live legacy root filesystem into a local staging tree with rsync over the
system OpenSSH client; repeatable, so the final pass after services stop moves only the delta.

rsync runs with archive mode, hard links, ACLs, xattrs, sparse files, numeric ids and
``--delete``. It does not stop at mount points: the remote ``/proc/mounts`` says which mounts
are local disk filesystems (crossed, so seven partitions land in one tree) and which are
pseudo or network filesystems (their contents excluded, the mount point kept). The user's own
``~/.ssh/config`` applies (aliases, ports, identities, jump hosts); host keys are verified.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from p2vimage.core.errors import InputError, PreconditionError, StageError
from p2vimage.core.log import log, progress, step
from p2vimage.guest import record as guestrecord
from p2vimage.host import run as runmod
from p2vimage.host import ssh
from p2vimage.sync.source import Source, bwlimit_bytes, check_apart

LOCAL_FS = {"ext2", "ext3", "ext4", "xfs", "reiserfs", "jfs", "btrfs", "vfat", "msdos",
            "ufs", "reiser4", "f2fs", "zfs", "nilfs2", "hfsplus", "ocfs2", "minix", "ext4dev"}
# The seed's excludes (its rsync line), minus what convert needs (/etc/fstab, /boot/grub,
# the udev rules are copied and rewritten there).
SEED_PROFILE = ("/srv/backup/*", "/var/cache/*", "/var/lib/backuppc/*", "/var/tmp/*")
ALWAYS = ("/proc/*", "/sys/*", "/dev/pts/*", "/run/*")
# One itemized line per changed path: 11 item characters, a space, the name (control
# characters escaped as \#ooo), then " -> TARGET" for symlinks, " => TARGET" for hard links.
OUT_FORMAT = "%i %n%L"
_ITEM = re.compile(rb"^(?:\*deleting  |[<>ch.][fdLDS][ .+?a-zA-Z]{9}) ")
_ESCAPE = re.compile(rb"\\#([0-7]{3})")
_STAT = {"files": r"Number of files: ([\d,]+)",
         "files_transferred": r"Number of regular files transferred: ([\d,]+)",
         "deleted": r"Number of deleted files: ([\d,]+)",
         "bytes_transferred": r"Total transferred file size: ([\d,]+)",
         "bytes_sent": r"Total bytes sent: ([\d,]+)",
         "bytes_received": r"Total bytes received: ([\d,]+)",
         "total_size": r"Total file size: ([\d,]+)"}


@dataclasses.dataclass(frozen=True)
class SourceAccess:
    """How an ssh:// source is reached and read (the same for ``sync`` and ``run``)."""

    identity: Path | None = None
    ssh_config: Path | None = None  # instead of ~/.ssh/config (ssh -F)
    rsync_path: str | None = None  # the remote rsync command, e.g. "sudo rsync"
    ssh_options: tuple[str, ...] = ()
    accept_new_host_key: bool = False


@dataclasses.dataclass(frozen=True)
class SyncOptions:
    """Settings of one sync pass."""

    source: Source
    staging: Path
    workdir: Path | None = None
    excludes: tuple[str, ...] = SEED_PROFILE
    final: bool = False
    bwlimit: str | None = None
    access: SourceAccess = dataclasses.field(default_factory=SourceAccess)
    timeout: int = 600  # rsync's I/O timeout: a cut connection fails instead of hanging

    @property
    def work(self) -> Path:
        """Where the source facts and the pass history are recorded."""
        return work_dir(self.staging, self.workdir)


def check_options(opts: SyncOptions) -> None:
    """Refuse bad input before anything connects, is written or is recorded: the staging
    path, a local source that overlaps it, the rate, the ssh identity and config files."""
    if opts.staging.exists() and not opts.staging.is_dir():
        raise InputError(f"staging {opts.staging} is not a directory",
                         hint="give a directory for the staging tree")
    if not opts.staging.parent.is_dir():
        raise InputError(f"directory {opts.staging.parent} does not exist",
                         hint="create it first")
    if not opts.source.remote:
        check_apart(opts.source, opts.staging)
    if opts.bwlimit:
        bwlimit_bytes(opts.bwlimit)
    access = opts.access
    for option, path in (("--identity", access.identity), ("--ssh-config", access.ssh_config)):
        if path is not None and not path.is_file():
            raise InputError(f"{option} {path} is not a file", hint="give an existing file")


def _check_ssh(opts: SyncOptions) -> None:
    """Have ssh read its options and config without connecting (``ssh -G``): a bad
    ``--ssh-option`` or config line is refused before anything starts."""
    proc = runmod.run([*ssh_argv(opts), "-G", _target(opts.source)], check=False, timeout=30,
                      what="ssh -G")
    if proc.returncode != 0:
        raise InputError(f"ssh refuses the options for {opts.source.host}: "
                         f"{runmod.last_line(proc.stderr)}",
                         hint="check --ssh-option, --ssh-config and the ssh config file")


def _target(source: Source) -> str:
    return f"{source.user + '@' if source.user else ''}{source.host}"


def work_dir(staging: Path, workdir: Path | None) -> Path:
    """The sync work dir of ``staging``: ``--workdir``, else ``STAGING.sync`` beside it."""
    return workdir or staging.with_name(staging.name + ".sync")


def passes(staging: Path, workdir: Path | None) -> list[dict[str, Any]]:
    """The sync passes recorded for ``staging`` (empty when it was not made by sync)."""
    try:
        data = json.loads((work_dir(staging, workdir) / "passes.json").read_text())
    except (FileNotFoundError, ValueError):
        return []
    return data if isinstance(data, list) else []


def _unescape(name: bytes) -> bytes:
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), name)


def _split_link(rest: bytes, arrow: bytes, fits: Callable[[bytes, bytes], bool]
                ) -> tuple[bytes, bytes | None]:
    """Split "NAME ARROW TARGET" where either may contain the arrow: the split that matches
    the staging tree wins."""
    start = rest.find(arrow)
    while start >= 0:
        name, target = _unescape(rest[:start]), _unescape(rest[start + len(arrow):])
        if fits(name, target):
            return name, target
        start = rest.find(arrow, start + 1)
    return _unescape(rest), None


def changed_paths(stdout: bytes, staging: Path) -> list[bytes]:
    """The paths an rsync pass created, changed or deleted (relative, no trailing slash),
    from its ``--out-format`` lines. Hard-link partners are listed too, so that copying the
    listed paths alone links them again."""
    root = os.fsencode(staging)

    def same_inode(name: bytes, target: bytes) -> bool:
        try:
            return os.path.samefile(root + b"/" + name, root + b"/" + target)
        except OSError:
            return False

    def link_to(name: bytes, target: bytes) -> bool:
        try:
            return os.readlink(root + b"/" + name) == target
        except OSError:
            return False

    found: dict[bytes, None] = {}
    for line in stdout.split(b"\n"):
        line = line.rsplit(b"\r", 1)[-1]
        if not _ITEM.match(line):
            continue
        item, rest = line[:11], line[12:]
        names: list[bytes | None]
        if item.startswith(b"h"):
            names = list(_split_link(rest, b" => ", same_inode))
        elif item[1:2] == b"L" and not item.startswith(b"*"):
            names = [_split_link(rest, b" -> ", link_to)[0]]
        else:
            names = [_unescape(rest)]
        for name in names:
            if name is not None:
                name = name.rstrip(b"/") or b"."
                found[name] = None
    return list(found)


def ssh_target(opts: SyncOptions) -> ssh.SshTarget:
    """How the source host is reached (its ssh options, never the staging side)."""
    assert opts.source.host is not None
    return ssh.SshTarget(host=opts.source.host, user=opts.source.user, port=opts.source.port,
                         identity=opts.access.identity, config=opts.access.ssh_config,
                         options=opts.access.ssh_options,
                         accept_new_host_key=opts.access.accept_new_host_key)


def ssh_argv(opts: SyncOptions) -> list[str]:
    """The ssh command to the source (the user's ~/.ssh/config applies; host keys checked)."""
    return ssh.argv(ssh_target(opts))


_PROBE = ("cat /proc/mounts; echo @@@; uname -r; echo @@@; "
          "($P2V_RSYNC --version 2>/dev/null || echo none) | head -n 1; echo @@@; "
          "df -P -k 2>/dev/null; true")
_PROGRESS = re.compile(rb"^\s*([\d,]+)\s+\d+%[^(]*"
                       rb"(?:\(xfr#(\d+), (?:to|ir)-chk=(\d+)/(\d+)\))?\s*$")


def _ssh_error(opts: SyncOptions, stderr: str, code: int) -> Exception:
    return ssh.error(opts.source.host or "localhost", stderr, code)


def remote_facts(opts: SyncOptions) -> dict[str, Any]:
    """Mounts (with sizes), running kernel and rsync version of the source (over ssh, or
    locally). What the guest is (its bootloader, …) is read from the staging tree after the
    pass, by the guest record's reader (``staging_facts``)."""
    script = f"P2V_RSYNC={shlex.quote(opts.access.rsync_path or 'rsync')}; {_PROBE}"
    if opts.source.remote:
        proc = runmod.run([*ssh_argv(opts), _target(opts.source), "sh", "-c",
                           shlex.quote(script)],
                          check=False, timeout=120, what="ssh")
        if proc.returncode != 0:
            raise _ssh_error(opts, proc.stderr, proc.returncode)
        out = proc.stdout
    else:
        proc = runmod.run(["sh", "-c", script], timeout=60)
        out = proc.stdout
    return parse_facts(out)


def parse_facts(out: str) -> dict[str, Any]:
    """The probe's output (see ``_PROBE``) as the facts recorded in ``source.json``."""
    mounts_text, kernel, rsync, df = [*out.split("@@@\n"), "", "", ""][:4]
    sizes = {}
    for line in df.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 6 and fields[1].isdigit() and fields[2].isdigit():
            sizes[" ".join(fields[5:])] = {"size_kib": int(fields[1]),
                                           "used_kib": int(fields[2])}
    mounts = []
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            point = fields[1].replace("\\040", " ").replace("\\011", "\t")
            mounts.append({"device": fields[0], "mountpoint": point, "type": fields[2],
                           **sizes.get(point, {})})
    version = re.search(r"version\s+(\d+)\.(\d+)\.(\d+)", rsync)
    return {"mounts": mounts, "kernel": kernel.strip(), "rsync": rsync.strip(),
            "rsync_version": [int(x) for x in version.groups()] if version else None}


def staging_facts(staging: Path) -> dict[str, Any]:
    """The guest record of the staging tree (the same reader build and convert use), for
    ``source.json``: its bootloader, and the whole record under ``guest``."""
    record = guestrecord.from_tree(staging)
    return {"bootloader": str(record.bootloader), "guest": record.to_json()}


def mount_excludes(facts: dict[str, Any], root: str) -> tuple[list[str], list[dict[str, str]]]:
    """Excludes for the pseudo/network mounts under ``root``; the local mounts crossed."""
    root = root.rstrip("/") or "/"
    excludes, crossed = [], []
    for m in facts["mounts"]:
        point = m["mountpoint"]
        if point != root and not point.startswith(root.rstrip("/") + "/"):
            continue
        rel = "/" + point[len(root):].lstrip("/") if root != "/" else point
        if m["type"] in LOCAL_FS:
            crossed.append({"mountpoint": rel, "type": m["type"], "device": m["device"]})
        elif rel != "/":
            excludes.append(rel.rstrip("/") + "/*")
    return sorted(set(excludes)), crossed


def rsync_argv(opts: SyncOptions, facts: dict[str, Any], excludes: list[str]) -> list[str]:
    """The rsync command for one pass."""
    version = facts.get("rsync_version") or [0, 0, 0]
    full = version >= [3, 0, 0]  # ACL and xattr support both ends
    # --modify-window=-1: compare nanoseconds. A file or directory changed within the same
    # second as the previous pass would otherwise look unchanged (seen in a test).
    argv = ["rsync", "-aHS", "--numeric-ids", "--delete", "--delete-excluded",
            "--modify-window=-1", f"--timeout={opts.timeout}", "--stats", "--info=progress2",
            "-8", f"--out-format={OUT_FORMAT}"]
    if full:
        argv += ["-AX"]
    if opts.bwlimit:
        argv.append(f"--bwlimit={opts.bwlimit}")
    if opts.access.rsync_path and opts.source.remote:
        argv.append(f"--rsync-path={opts.access.rsync_path}")
    for pattern in (*ALWAYS, *excludes, *opts.excludes):
        argv.append(f"--exclude={pattern}")
    if opts.source.remote:
        argv += ["-e", shlex.join(ssh_argv(opts))]
    argv += [opts.source.rsync_spec(), os.fspath(opts.staging) + "/"]
    return argv


def parse_stats(text: str) -> dict[str, int]:
    """The numbers of rsync --stats."""
    stats = {}
    for key, pattern in _STAT.items():
        m = re.search(pattern, text)
        if m:
            stats[key] = int(m.group(1).replace(",", ""))
    return stats


def unreadable(stderr: str) -> list[str]:
    """Files rsync could not read on the source (never silently lost: they are listed)."""
    found = re.findall(r'(?:send_files failed to open|opendir|readlink_stat|read errors mapping)'
                       r' "([^"]+)"', stderr)
    return list(dict.fromkeys(found))


def _rsync_with_progress(argv: list[str]) -> runmod.Completed[bytes]:
    """Run rsync, showing its --info=progress2 figures (bytes, files) as a progress bar."""
    proc = runmod.popen(argv)
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None and stderr is not None
    chunks: list[bytes] = []
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(stderr.read()), daemon=True)
    reader.start()
    try:
        with progress(None, "rsync") as bar:
            pending = b""
            while True:
                data = os.read(stdout.fileno(), 65536)
                if not data:
                    break
                chunks.append(data)
                pending += data
                *lines, pending = re.split(rb"[\r\n]", pending)
                for line in lines:
                    m = _PROGRESS.match(line)
                    if m:
                        bar.n = int(m.group(1).replace(b",", b""))
                        if m.group(4):
                            bar.set_postfix_str(f"{int(m.group(4)) - int(m.group(3))}/"
                                                f"{int(m.group(4))} files", refresh=False)
                        bar.refresh()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join()
    return runmod.Completed(argv, proc.returncode, b"".join(chunks), b"".join(errors))


@contextlib.contextmanager
def shared_connection(opts: SyncOptions) -> Iterator[SyncOptions]:
    """``opts`` with one ssh connection shared by the probe and rsync (a handshake costs
    ~0.25 s here, a quarter of a final pass with nothing to copy); closed on the way out."""
    if not opts.source.remote:
        yield opts
        return
    with tempfile.TemporaryDirectory(prefix="p2v-ssh-", dir="/tmp") as ctl:
        shared = dataclasses.replace(opts, access=dataclasses.replace(opts.access, ssh_options=(
            *opts.access.ssh_options, "ControlMaster=auto", f"ControlPath={ctl}/%C",
            "ControlPersist=60")))
        try:
            yield shared
        finally:
            runmod.run([*ssh_argv(shared), "-O", "exit", _target(opts.source)], check=False,
                       timeout=10)


def sync(opts: SyncOptions) -> dict[str, Any]:
    """One pass; returns its report and records it (and the source facts) in the work dir.
    Bad input is refused (InputError) before anything connects or is written."""
    check_options(opts)
    runmod.require_tools(["rsync", "ssh"] if opts.source.remote else ["rsync"])
    if opts.source.remote:
        _check_ssh(opts)
    with shared_connection(opts) as shared:
        return _sync(shared)


def _sync(opts: SyncOptions) -> dict[str, Any]:
    with step(f"Reading the source's mounts and versions ({opts.source.host or 'local'})"):
        facts = remote_facts(opts)
    if facts["rsync"] == "none":
        raise PreconditionError(f"{opts.source.host} has no rsync",
                                hint="install rsync on the legacy host")
    lost = []
    if facts.get("rsync_version") is None or facts["rsync_version"] < [3, 0, 0]:
        lost = ["POSIX ACLs", "extended attributes (xattrs, file capabilities)"]
        log.warning("warning: the source's rsync (%s) predates 3.0: syncing without %s",
                    facts["rsync"], " and ".join(lost))
    excludes, crossed = mount_excludes(facts, opts.source.path)
    opts.staging.mkdir(mode=0o755, exist_ok=True)
    argv = rsync_argv(opts, facts, excludes)
    started = time.monotonic()
    with step(f"rsync {'final ' if opts.final else ''}pass from {opts.source.rsync_spec()}"):
        raw = _rsync_with_progress(argv)
    seconds = round(time.monotonic() - started, 2)
    stdout, stderr = raw.stdout.decode("utf-8", "replace"), raw.stderr.decode("utf-8", "replace")
    stats = parse_stats(stdout)
    missing = unreadable(stderr)
    report = {"source": opts.source.rsync_spec(), "staging": os.fspath(opts.staging),
              "final": opts.final, "seconds": seconds, "stats": stats,
              "excluded": [*ALWAYS, *excludes, *opts.excludes], "crossed_mounts": crossed,
              "unreadable": missing, "lost_features": lost, "rsync_exit": raw.returncode,
              "facts": {"kernel": facts["kernel"], "rsync": facts["rsync"]}}
    _record(opts, {**facts, **staging_facts(opts.staging)}, report,
            changed_paths(raw.stdout, opts.staging))
    if raw.returncode in (0, 24):  # 24: files vanished while copying a live system
        return report
    if raw.returncode == 23 and missing:
        raise StageError(f"{len(missing)} files could not be read on the source: "
                         f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}",
                         hint=f"fix their permissions or exclude them; the full list is in "
                              f"{opts.work / 'passes.json'}")
    if raw.returncode in (12, 30, 35, 255) or "connection" in stderr.lower():
        raise StageError(f"the connection to {opts.source.host or 'the source'} was lost "
                         f"during the sync ({runmod.last_line(stderr)})",
                         hint="run the same sync again: it continues where it stopped")
    raise StageError(f"rsync failed (exit {raw.returncode}): {runmod.last_line(stderr)}",
                     hint="run with --debug to see the command")


def _record(opts: SyncOptions, facts: dict[str, Any], report: dict[str, Any],
            changes: list[bytes]) -> None:
    """Add the pass to ``passes.json`` and its changed paths to ``changes/N.lst`` (NUL
    separated): ``build --refresh`` copies just those into the image."""
    opts.work.mkdir(parents=True, exist_ok=True)
    (opts.work / "source.json").write_text(json.dumps(facts, indent=2) + "\n")
    history_path = opts.work / "passes.json"
    try:
        history = json.loads(history_path.read_text())
    except (FileNotFoundError, ValueError):
        history = []
    listing = opts.work / "changes" / f"{len(history)}.lst"
    listing.parent.mkdir(exist_ok=True)
    listing.write_bytes(b"".join(p + b"\0" for p in changes))
    report["changed_paths"] = len(changes)
    history.append({"time": time.time(), "changes": listing.name, **report})
    tmp = history_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(history, indent=2) + "\n")
    tmp.replace(history_path)
