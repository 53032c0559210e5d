"""sync's pure parts: sources, mount handling, the rsync command, its statistics."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2vimage.core.errors import InputError
from p2vimage.sync.source import Source, bwlimit_bytes, parse_source
from p2vimage.sync.stage import (
    SEED_PROFILE,
    SourceAccess,
    SyncOptions,
    changed_paths,
    mount_excludes,
    parse_facts,
    parse_stats,
    rsync_argv,
    unreadable,
)

MOUNTS = [
    {"device": "/dev/sda1", "mountpoint": "/", "type": "ext3"},
    {"device": "proc", "mountpoint": "/proc", "type": "proc"},
    {"device": "sysfs", "mountpoint": "/sys", "type": "sysfs"},
    {"device": "udev", "mountpoint": "/dev", "type": "tmpfs"},
    {"device": "devpts", "mountpoint": "/dev/pts", "type": "devpts"},
    {"device": "/dev/sda2", "mountpoint": "/boot", "type": "ext3"},
    {"device": "/dev/sda5", "mountpoint": "/var", "type": "ext3"},
    {"device": "/dev/mapper/vg-home", "mountpoint": "/home", "type": "xfs"},
    {"device": "nfs1:/backup", "mountpoint": "/srv/backup", "type": "nfs"},
    {"device": "tmpfs", "mountpoint": "/lib/init/rw", "type": "tmpfs"},
]


def test_parse_source() -> None:
    assert parse_source("ssh://root@ns1.example.org:2222/") == Source(
        "ns1.example.org", "root", 2222, "/")
    assert parse_source("ssh://ns1") == Source("ns1", None, None, "/")
    assert parse_source("ssh://[2001:db8::1]/srv/root") == Source(
        "2001:db8::1", None, None, "/srv/root")
    for bad in ("ssh://", "ssh://-oProxyCommand=x/", "ftp://host/", "/nonexistent/dir"):
        with pytest.raises(InputError):
            parse_source(bad)


@pytest.mark.parametrize("bad,word", [
    ("ssh://ns1:99999/", "99999"), ("ssh://ns1:65536/", "65536"), ("ssh://ns1:0/", "port 0"),
    ("ssh://root@/", "ssh://root@/"), ("ssh://@ns1/", "ssh://@ns1/"),
    ("ssh://root@ns1@x/", "ssh://root@ns1@x/"), ("ssh://ns 1/", "ssh://ns 1/"),
])
def test_bad_ssh_sources(bad: str, word: str) -> None:
    """These went on to ssh, which failed to connect (exit 3 instead of 2)."""
    with pytest.raises(InputError) as exc:
        parse_source(bad)
    assert word in exc.value.message


@pytest.mark.parametrize("text,nbytes", [
    ("20m", 20 << 20), ("1.5M", 3 << 19), ("500", 500 << 10), ("100k", 100 << 10),
    ("2MB", 2_000_000), ("2MiB", 2 << 20), ("512b", 512), ("0", 0), (".5m", 1 << 19),
    ("1k+1", 1025),
])
def test_bwlimit_as_rsync_reads_it(text: str, nbytes: int) -> None:
    assert bwlimit_bytes(text) == nbytes


@pytest.mark.parametrize("bad", ["lots", "", "20x", "1b", "0.1", "-5", "5 m", "k"])
def test_bwlimit_rsync_refuses(bad: str) -> None:
    with pytest.raises(InputError):
        bwlimit_bytes(bad)


def test_local_mounts_are_crossed_pseudo_ones_excluded() -> None:
    excludes, crossed = mount_excludes({"mounts": MOUNTS}, "/")
    assert excludes == ["/dev/*", "/dev/pts/*", "/lib/init/rw/*", "/proc/*", "/srv/backup/*",
                        "/sys/*"]
    assert [c["mountpoint"] for c in crossed] == ["/", "/boot", "/var", "/home"]


def test_mounts_under_a_source_path() -> None:
    mounts = [{"device": "/dev/sdb1", "mountpoint": "/srv/root", "type": "ext4"},
              {"device": "proc", "mountpoint": "/srv/root/proc", "type": "proc"},
              {"device": "proc", "mountpoint": "/proc", "type": "proc"}]
    excludes, crossed = mount_excludes({"mounts": mounts}, "/srv/root")
    assert excludes == ["/proc/*"]
    assert crossed == [{"mountpoint": "/", "type": "ext4", "device": "/dev/sdb1"}]


def test_rsync_argv_over_ssh() -> None:
    opts = SyncOptions(Source("ns1", "root", 2222, "/"), Path("/stage/ns1"), bwlimit="10m",
                       access=SourceAccess(identity=Path("/keys/id"),
                                           ssh_options=("ProxyJump=gw",),
                                           rsync_path="sudo -n rsync"))
    argv = rsync_argv(opts, {"rsync_version": [3, 0, 3]}, ["/proc/*"])
    assert "--rsync-path=sudo -n rsync" in argv
    assert argv[:6] == ["rsync", "-aHS", "--numeric-ids", "--delete", "--delete-excluded",
                        "--modify-window=-1"]
    assert "-AX" in argv and "--bwlimit=10m" in argv
    assert [a for a in argv if a.startswith("--exclude=")] == [
        "--exclude=/proc/*", "--exclude=/sys/*", "--exclude=/dev/pts/*", "--exclude=/run/*",
        "--exclude=/proc/*", *(f"--exclude={p}" for p in SEED_PROFILE)]
    assert argv[-3:] == ["ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -p 2222 -i /keys/id"
                         " -o IdentitiesOnly=yes -o ProxyJump=gw", "root@ns1:/", "/stage/ns1/"]


def test_old_rsync_gets_no_acls_or_xattrs() -> None:
    opts = SyncOptions(Source(None, None, None, "/srv/tree"), Path("/stage"))
    argv = rsync_argv(opts, {"rsync_version": [2, 6, 9]}, [])
    assert "-AX" not in argv and "-e" not in argv
    assert argv[-2:] == ["/srv/tree/", "/stage/"]


def test_stats_and_unreadable() -> None:
    out = ("Number of files: 14,852 (reg: 11,891, dir: 1,963)\n"
           "Number of regular files transferred: 118\nNumber of deleted files: 3\n"
           "Total file size: 704,123,456 bytes\nTotal transferred file size: 7,041,234 bytes\n"
           "Total bytes sent: 1,234\nTotal bytes received: 7,100,000\n")
    assert parse_stats(out) == {"files": 14852, "files_transferred": 118, "deleted": 3,
                                "total_size": 704123456, "bytes_transferred": 7041234,
                                "bytes_sent": 1234, "bytes_received": 7100000}
    err = ('rsync: [sender] send_files failed to open "/etc/shadow": Permission denied (13)\n'
           'rsync: [sender] opendir "/root/private" failed: Permission denied (13)\n')
    assert unreadable(err) == ["/etc/shadow", "/root/private"]


def test_changed_paths_from_itemized_output(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d/f").write_text("x")
    os.link(tmp_path / "d/f", tmp_path / "d/g => h")  # a name with the arrow in it
    os.symlink("a -> b", tmp_path / "l -> x")
    (tmp_path / "new\nline").write_text("y")
    out = (b"created directory st\n"
           b"cd+++++++++ ./\n"
           b"\r   1,024 100%  progress\r>f+++++++++ d/f\n"
           b"hf+++++++++ d/g => h => d/f\n"
           b"cL+++++++++ l -> x -> a -> b\n"
           b">f+++++++++ new\\#012line\n"
           b"*deleting   gone/\n"
           b".d..t...... d/\n"
           b"Number of files: 5\n")
    assert changed_paths(out, tmp_path) == [b".", b"d/f", b"d/g => h", b"l -> x",
                                            b"new\nline", b"gone", b"d"]


def test_facts_from_the_probe() -> None:
    out = ("/dev/sda1 / ext3 rw 0 0\nproc /proc proc rw 0 0\n/dev/sda5 /var ext3 rw 0 0\n@@@\n"
           "2.6.26-2-vserver-686\n@@@\nrsync  version 3.0.3  protocol version 30\n@@@\n"
           "Filesystem 1024-blocks Used Available Capacity Mounted on\n"
           "/dev/sda1 960504 412116 499596 46% /\n/dev/sda5 4806904 2100004 2462712 47% /var\n")
    facts = parse_facts(out)
    assert facts["kernel"] == "2.6.26-2-vserver-686"
    assert facts["rsync_version"] == [3, 0, 3]
    assert facts["mounts"][2] == {"device": "/dev/sda5", "mountpoint": "/var", "type": "ext3",
                                  "size_kib": 4806904, "used_kib": 2100004}
    assert "size_kib" not in facts["mounts"][1]  # df -P lists no pseudo filesystem here
