"""sync from a real OpenSSH server on 127.0.0.1 (its own host key, an authorised test key):
two passes with changes between them, then build + verify show the image equals the source;
bad hosts, keys and remotes give one clear line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, needs_root, p2v
from tests.rig.sshd import Sshd, free_port, start_sshd
from tests.treesums import sha256_tree

pytestmark = [needs_root]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    proc, server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    proc.kill()
    proc.wait()


def change_source(root: Path) -> None:
    """Add, modify, delete, rename, split and join hard links, change xattrs and modes,
    replace a directory by a file."""
    hard = root / "srv/hard"
    (root / "srv/added.txt").write_text("new on the second pass\n")
    (hard / "xattr/file").write_text("modified content\n")
    (hard / "misc/empty-file").unlink()
    os.rename(hard / "names/café", hard / "names/renamed café")
    three = hard / "other/three-3"  # split from its hard-link group
    data = three.read_bytes()
    three.unlink()
    three.write_bytes(data)
    os.link(hard / "links/two-a", hard / "other/joined")  # join an existing group
    subprocess.run(["setfattr", "-n", "user.comment", "-v", "changed", str(hard / "xattr/file")],
                   check=True)
    (hard / "modes/setuid").chmod(0o755)
    # same size, same second, other bytes: only a nanosecond comparison sees the change
    orphan = hard / "owners/orphan"
    st = os.stat(orphan)
    orphan.write_bytes(orphan.read_bytes().upper())
    os.utime(orphan, ns=(st.st_atime_ns, st.st_mtime_ns + 500))
    shutil.rmtree(hard / "symlinks")
    (hard / "symlinks").write_text("a directory replaced by a file\n")
    shutil.rmtree(root / "srv/old-tree")  # a whole directory tree deleted


@pytest.mark.parametrize("method", ["loop", "loop-full-scan", "rebuild"])
def test_two_passes_then_refresh_and_verify(sshd: Sshd, hard_tree: Path, tmp_path: Path,
                                            copy_tree: Callable[..., Path], method: str) -> None:
    """loop: only the paths the final pass changed are copied in (sync's change list);
    loop-full-scan: the whole tree compared; rebuild: mke2fs -d again, same UUID."""
    source = copy_tree(hard_tree, "source")
    (source / "srv/old-tree/sub").mkdir(parents=True)
    (source / "srv/old-tree/sub/file").write_text("deleted before the final pass\n")
    staging = tmp_path / "staging"
    work = tmp_path / "work"
    img = tmp_path / "a.img"
    first = p2v("--json", "--workdir", work, "sync", sshd.url(source), staging, *sshd.args())
    assert first.returncode == 0, first.stderr[-2000:]
    one = json.loads(first.stdout)
    assert one["stats"]["files_transferred"] > 15 and one["unreadable"] == []
    assert p2v("--workdir", work, "build", staging, "-o", img).returncode == 0
    result = json.loads(p2v("--json", "verify", "--strict", source, img).stdout)
    assert result["differences"] == []
    uuid = json.loads(img.with_name("a.img.state.json").read_text())["uuid"]
    change_source(source)
    final = p2v("--json", "--workdir", work, "sync", sshd.url(source), staging, "--final",
                *sshd.args())
    assert final.returncode == 0, final.stderr[-2000:]
    two = json.loads(final.stdout)
    assert two["final"] is True
    assert 0 < two["stats"]["files_transferred"] < 10  # only the delta moves
    before = json.loads(p2v("--json", "verify", source, img).stdout)
    assert len(before["differences"]) >= 8  # the image is out of date before the refresh
    refreshed = p2v("--json", "--workdir", work, "build", staging, "-o", img, "--refresh",
                    "--refresh-method", method.split("-")[0],
                    *(["--full-scan"] if method == "loop-full-scan" else []))
    assert refreshed.returncode == 0, refreshed.stderr[-2000:]
    report = json.loads(refreshed.stdout)
    assert report["method"] == method.split("-")[0] and report["converted_again"] is False
    assert report["scope"] == ("delta" if method == "loop" else "full")
    if method.startswith("loop"):  # only the delta was written
        assert 0 < report["stats"]["files_transferred"] < 10
    if method == "loop":
        assert 0 < report["delta_paths"] < 40
    result = json.loads(p2v("--json", "verify", "--strict", source, img).stdout)
    assert result["differences"] == []
    state = json.loads(img.with_name("a.img.state.json").read_text())
    assert state["uuid"] == uuid and state["dirty"] is False
    passes = json.loads((work / "passes.json").read_text())
    assert [p["final"] for p in passes] == [False, True]
    assert json.loads((work / "source.json").read_text())["rsync_version"][0] >= 3


def test_unknown_host_key_is_refused(sshd: Sshd, hard_tree: Path, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    proc = p2v("sync", sshd.url(hard_tree), tmp_path / "s", "--identity", sshd.key,
               "--ssh-option", f"UserKnownHostsFile={empty}")
    assert_one_line_error(proc, 3, "host key", "127.0.0.1")
    assert not (tmp_path / "s").exists()


def test_refused_login(sshd: Sshd, hard_tree: Path, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(tmp_path / "other")], check=True)
    proc = p2v("sync", sshd.url(hard_tree), tmp_path / "s", "--identity", tmp_path / "other",
               "--ssh-option", f"UserKnownHostsFile={sshd.known_hosts}")
    assert_one_line_error(proc, 3, "refused")


def test_unreachable_host(hard_tree: Path, tmp_path: Path) -> None:
    proc = p2v("sync", f"ssh://root@127.0.0.1:{free_port()}/", tmp_path / "s")
    assert_one_line_error(proc, 3, "cannot reach", "127.0.0.1")


def test_remote_without_rsync(hard_tree: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "cat", "uname", "head"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or tool)
    proc, server = start_sshd(tmp_path / "sshd", extra=f"SetEnv PATH={bin_dir}\n")
    try:
        result = p2v("sync", server.url(hard_tree), tmp_path / "s", *server.args())
        assert_one_line_error(result, 3, "has no rsync")
    finally:
        proc.kill()
        proc.wait()


def _world_readable_dir(tmp_path: Path) -> Path:
    """A directory the unprivileged remote user can reach (pytest's tmp dirs are 0700)."""
    top = Path(tempfile.mkdtemp(prefix="p2vimage-src-", dir="/var/tmp"))
    top.chmod(0o755)
    return top


def test_unreadable_remote_files_are_listed_not_lost(hard_tree: Path, tmp_path: Path) -> None:
    # The remote side runs as nobody: root-only files there cannot be read.
    top = _world_readable_dir(tmp_path)
    try:
        source = top / "root"
        subprocess.run(["cp", "-a", str(hard_tree), str(source)], check=True)
        source.chmod(0o755)
        secret = source / "etc/shadow-like"
        secret.write_text("root only\n")
        secret.chmod(0o600)
        private = source / "root-only-dir"
        private.mkdir(mode=0o700)
        (private / "inside").write_text("x\n")
        proc, server = start_sshd(tmp_path / "sshd", extra=(
            "ForceCommand setpriv --reuid=65534 --regid=65534 --clear-groups "
            "sh -c \"$SSH_ORIGINAL_COMMAND\"\n"))
        try:
            staging = tmp_path / "staging"
            result = p2v("--workdir", tmp_path / "work", "sync", server.url(source), staging,
                         *server.args())
        finally:
            proc.kill()
            proc.wait()
        assert_one_line_error(result, 1, "could not be read", "shadow-like")
        passes = json.loads((tmp_path / "work/passes.json").read_text())
        listed = passes[-1]["unreadable"]
        assert any("shadow-like" in p for p in listed)
        assert any("root-only-dir" in p for p in listed)
        # everything readable arrived
        assert (staging / "etc/fstab").read_text() == (source / "etc/fstab").read_text()
        assert (staging / "srv/ns-mtime").exists()
    finally:
        shutil.rmtree(top)


def _session_pids(sshd_pid: int) -> list[int]:
    """The per-connection sshd processes forked by the listener."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == sshd_pid:
            found.append(int(stat_file.parent.name))
    return found


def test_connection_cut_mid_sync_then_rerun_completes(hard_tree: Path, tmp_path: Path,
                                                      copy_tree: Callable[..., Path]) -> None:
    source = copy_tree(hard_tree, "source")
    with open(source / "srv/big.bin", "wb") as f:
        f.write(os.urandom(24 << 20))
    staging = tmp_path / "staging"
    proc, server = start_sshd(tmp_path / "sshd")
    try:
        argv = [sys.executable, "-m", "p2vimage", "sync", server.url(source), str(staging),
                "--bwlimit", "2m", *map(str, server.args())]
        runner = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        deadline = time.monotonic() + 60
        while not list(staging.glob("srv/.big.bin.*")):  # the transfer is under way
            assert runner.poll() is None and time.monotonic() < deadline, runner.stderr
            time.sleep(0.1)
        for pid in _session_pids(proc.pid):
            os.kill(pid, signal.SIGKILL)
        out, err = runner.communicate(timeout=120)
        assert_one_line_error(subprocess.CompletedProcess(argv, runner.returncode, out, err),
                              1, "connection", "lost", "127.0.0.1")
    finally:
        proc.kill()
        proc.wait()
    proc, server = start_sshd(tmp_path / "sshd2")
    try:
        again = p2v("sync", server.url(source), staging, *server.args())
        assert again.returncode == 0, again.stderr[-2000:]
    finally:
        proc.kill()
        proc.wait()
    assert p2v("build", staging, "-o", tmp_path / "a.img").returncode == 0
    result = json.loads(p2v("--json", "verify", "--strict", source, tmp_path / "a.img").stdout)
    assert result["differences"] == []  # no partial file, nothing missing


def test_ssh_config_alias_and_jump_host(sshd: Sshd, hard_tree: Path, tmp_path: Path) -> None:
    # The user's ssh config decides: a host alias with its port, user, key and known_hosts,
    # and a second alias reached through a jump host (here the same sshd).
    config = tmp_path / "ssh_config"
    common = (f"  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n"
              f"  IdentityFile {sshd.key}\n  IdentitiesOnly yes\n"
              f"  UserKnownHostsFile {sshd.known_hosts}\n")
    config.write_text(f"Host legacy-alias\n{common}"
                      f"Host behind-gateway\n{common}  ProxyJump legacy-alias\n")
    for alias in ("legacy-alias", "behind-gateway"):
        staging = tmp_path / alias
        proc = p2v("--json", "sync", f"ssh://{alias}{hard_tree}", staging,
                   "--ssh-config", config)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (staging / "etc/fstab").read_text() == (hard_tree / "etc/fstab").read_text()
    # without the config the alias means nothing: one clear line
    proc = p2v("sync", f"ssh://legacy-alias{hard_tree}", tmp_path / "none")
    assert_one_line_error(proc, 3, "legacy-alias")


def _two_trees(top: Path) -> None:
    """staging/ holding a source tree and a neighbour file; src/ beside it; symlinks to both."""
    for root in (top / "staging/src", top / "src"):
        (root / "etc").mkdir(parents=True)
        (root / "etc/fstab").write_text("/dev/sda1 / ext3 defaults 0 1\n")
        (root / "data.bin").write_bytes(os.urandom(4096))
    (top / "staging/other").write_text("something else kept in staging\n")
    (top / "link").symlink_to(top / "staging")
    (top / "link-to-src").symlink_to(top / "src")


@pytest.mark.parametrize("source,staging,words", [
    ("staging/src", "staging", ["inside the staging"]),
    ("staging/src/..", "staging", ["same directory"]),
    ("link/src", "staging", ["inside the staging"]),           # through a symlink
    ("staging/src", "link", ["inside the staging"]),
    ("src", "src/staging", ["inside the source"]),
    ("src", "link-to-src/staging", ["inside the source"]),
    ("src", "src", ["same directory"]),
    ("src", "staging/../src", ["same directory"]),
])
def test_overlapping_local_source_and_staging_are_refused(
        tmp_path: Path, source: str, staging: str, words: list[str]) -> None:
    """rsync --delete into a staging tree holding the source deleted the source and everything
    else in the staging tree: overlapping paths are refused, and nothing changes."""
    _two_trees(tmp_path)
    before = sha256_tree(tmp_path)
    proc = p2v("sync", f"{tmp_path}/{source}", f"{tmp_path}/{staging}")
    assert_one_line_error(proc, 2, *words)
    assert sha256_tree(tmp_path) == before


@pytest.mark.parametrize("args,words", [
    (["LOCAL", "--bwlimit", "lots"], ["--bwlimit", "lots"]),
    (["LOCAL", "--bwlimit", "1b"], ["--bwlimit", "1b"]),
    (["ssh://root@127.0.0.1:99999/"], ["99999"]),
    (["ssh://root@127.0.0.1:0/"], ["port 0"]),
    (["ssh://root@/"], ["ssh://root@/"]),
    (["CLOSED", "--identity", "MISSING"], ["--identity", "MISSING"]),
    (["CLOSED", "--ssh-option", "NoSuchOption=yes"], ["nosuchoption"]),
    (["CLOSED", "--ssh-config", "MISSING"], ["--ssh-config"]),  # click's check (before too)
])
def test_bad_sync_input_is_refused_before_connecting(tmp_path: Path, args: list[str],
                                                      words: list[str]) -> None:
    """Exit 2 naming the value; nothing connects, no staging tree, no pass recorded."""
    (tmp_path / "local/etc").mkdir(parents=True)
    (tmp_path / "local/etc/fstab").write_text("/dev/sda1 / ext3 defaults 0 1\n")
    subs = {"LOCAL": str(tmp_path / "local"), "MISSING": str(tmp_path / "missing"),
            "CLOSED": f"ssh://root@127.0.0.1:{free_port()}/"}
    argv = [subs.get(a, a) for a in args]
    before = sha256_tree(tmp_path)
    proc = p2v("--workdir", tmp_path / "work", "sync", argv[0], tmp_path / "staging", *argv[1:])
    assert_one_line_error(proc, 2, *(subs.get(w, w) for w in words))
    assert sha256_tree(tmp_path) == before  # no staging, no work dir, no passes.json
