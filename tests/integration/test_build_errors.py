"""Bad input and faults during build: one clear line, the documented exit code, and nothing
at the output path; after an interrupt a rerun succeeds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import P2VIMAGE, REPO, assert_one_line_error, needs_root, p2v
from tests.treesums import sha256_tree

MiB = 1 << 20


def small_tree(root: Path, data_mib: int = 1) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("legacy\n")
    chunk = os.urandom(MiB)
    with open(root / "data.bin", "wb") as f:
        for _ in range(data_mib):
            f.write(chunk)
    return root


def nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not out.with_name(f".{out.name}.partial").exists()


def test_missing_source(tmp_path: Path) -> None:
    out = tmp_path / "x.img"
    assert_one_line_error(p2v("build", tmp_path / "nope", "-o", out), 2, "does not exist")
    nothing_written(out)


def test_source_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "x.img"
    assert_one_line_error(p2v("build", tmp_path / "file", "-o", out), 2, "not a directory")
    nothing_written(out)


def test_output_exists_without_force(tmp_path: Path) -> None:
    tree = small_tree(tmp_path / "t")
    out = tmp_path / "x.img"
    out.write_text("precious")
    assert_one_line_error(p2v("build", tree, "-o", out), 2, "already exists", "--force")
    assert out.read_text() == "precious"
    assert p2v("build", tree, "-o", out, "--force").returncode == 0
    assert out.stat().st_size > 1 << 20


def test_output_directory_missing(tmp_path: Path) -> None:
    tree = small_tree(tmp_path / "t")
    out = tmp_path / "no/such/dir/x.img"
    assert_one_line_error(p2v("build", tree, "-o", out), 2, "does not exist")
    assert not out.parent.exists()


def test_size_too_small(tmp_path: Path) -> None:
    tree = small_tree(tmp_path / "t", data_mib=40)
    out = tmp_path / "x.img"
    assert_one_line_error(p2v("build", tree, "-o", out, "--size", "20M"), 2, "too small",
                          "--size")
    nothing_written(out)


@needs_root
def test_unreadable_file_in_source() -> None:
    # Root reads everything, so this runs the build as 'nobody' (build never needs root).
    top = Path("/tmp") / f"p2v-unreadable-{os.getpid()}"
    try:
        tree = small_tree(top / "tree")
        secret = tree / "etc/shadow"
        secret.write_text("root:x:...\n")
        secret.chmod(0o600)
        out_dir = top / "out"
        out_dir.mkdir()
        for path in (top, tree, tree / "etc", out_dir):
            path.chmod(0o777 if path == out_dir else 0o755)
        (tree / "data.bin").chmod(0o644)
        (tree / "etc/hostname").chmod(0o644)
        out = out_dir / "x.img"
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *P2VIMAGE,
             "build", str(tree), "-o", str(out)],
            capture_output=True, text=True, cwd=REPO, check=False,
            env={**os.environ, "P2VIMAGE_CACHE": str(out_dir / "cache"), "HOME": str(out_dir)})
        assert_one_line_error(proc, 2, "cannot read", "etc/shadow")
        nothing_written(out)
    finally:
        subprocess.run(["rm", "-rf", str(top)], check=False)


def mount_tmpfs(mnt: Path, size: str) -> None:
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                   check=True)


@needs_root
def test_no_space_left_found_before_writing(tmp_path: Path) -> None:
    tree = small_tree(tmp_path / "t", data_mib=64)
    mount_tmpfs(tmp_path / "tiny", "48m")
    try:
        out = tmp_path / "tiny/x.img"
        assert_one_line_error(p2v("build", tree, "-o", out), 3, "not enough space")
        nothing_written(out)
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "tiny")], check=False)


@needs_root
def test_no_space_left_while_writing(big_tree: Path, tmp_path: Path) -> None:
    """The space goes while mke2fs writes (another writer fills the filesystem)."""
    mnt = tmp_path / "small"
    mount_tmpfs(mnt, "800m")
    try:
        out = mnt / "x.img"
        partial = out.with_name(f".{out.name}.partial")
        proc = subprocess.Popen([*P2VIMAGE, "build", str(big_tree), "-o", str(out)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        wait_for_populate(proc, partial)
        subprocess.run(["fallocate", "-l", "300M", str(mnt / "filler")], check=True)
        stdout, stderr = proc.communicate(timeout=120)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        assert_one_line_error(result, 3, "no space left", str(mnt))
        nothing_written(out)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def wait_for_populate(proc: subprocess.Popen[str], partial: Path) -> None:
    """Return once mke2fs is writing data into the partial image."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if partial.exists() and partial.stat().st_blocks * 512 > 8 * MiB:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    pytest.fail("populate never started")


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_tree(tmp_path_factory.mktemp("big") / "t", data_mib=700)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupt_during_populate_then_rerun(big_tree: Path, tmp_path: Path,
                                              sig: signal.Signals) -> None:
    out = tmp_path / "x.img"
    partial = out.with_name(f".{out.name}.partial")
    proc = subprocess.Popen([*P2VIMAGE, "build", str(big_tree), "-o", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_populate(proc, partial)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert not out.exists()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == (143 if sig == signal.SIGTERM else 130), err
        assert err.strip().splitlines()[-1].startswith("error: interrupted")
        assert "Traceback" not in err
        assert not partial.exists()
    deadline = time.monotonic() + 10  # the death signal is delivered at once; a loaded
    while subprocess.run(["pgrep", "-f", f"mke2fs.*{partial}"],  # host reaps it later
                         check=False).returncode != 1:
        assert time.monotonic() < deadline, "mke2fs left running"
        time.sleep(0.2)
    rerun = p2v("build", big_tree, "-o", out)
    assert rerun.returncode == 0, rerun.stderr
    assert out.exists() and not partial.exists()


def _stale(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.parametrize("how", ["mke2fs-fails", "SIGTERM", "SIGINT", "SIGKILL"])
def test_failed_force_rebuild_keeps_old_image_and_state(big_tree: Path, tmp_path: Path,
                                                        how: str) -> None:
    """A build --force that fails midway leaves the old image and its state file as they were
    (the state used to be deleted first, so the old image could no longer be refreshed)."""
    out = tmp_path / "x.img"
    assert p2v("build", small_tree(tmp_path / "old"), "-o", out).returncode == 0
    before = sha256_tree(tmp_path)
    assert "x.img.state.json" in before
    if how == "mke2fs-fails":  # 64bit without extents: mke2fs refuses once it starts
        proc = p2v("build", big_tree, "-o", out, "--force", "--fs", "ext3", "--fs-features",
                   "64bit")
        assert_one_line_error(proc, 1, "mke2fs")
    else:
        sig = getattr(signal, how)
        child = subprocess.Popen([*P2VIMAGE, "build", str(big_tree), "-o", str(out), "--force"],
                                 cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        wait_for_populate(child, out.with_name(f".{out.name}.partial"))
        child.send_signal(sig)
        _, err = child.communicate(timeout=60)
        assert child.returncode == {signal.SIGKILL: -sig, signal.SIGTERM: 143}.get(sig, 130), err
    after = sha256_tree(tmp_path)
    for name in ("x.img", "x.img.state.json"):
        assert after[name] == before[name], name
    if how != "SIGKILL":  # a killed run leaves its partial files for the next run
        assert _stale(out) == []
        assert after == before


@pytest.mark.parametrize("inside", ["tree/x.img", "tree/sub/x.img", "link/x.img",
                                    "tree/sub/../x.img"])
def test_output_inside_the_source_is_refused(tmp_path: Path, inside: str) -> None:
    """No --size could fit an image that mke2fs -d copies into itself: refused up front."""
    tree = small_tree(tmp_path / "tree")
    (tree / "sub").mkdir()
    (tmp_path / "link").symlink_to(tree)
    before = sha256_tree(tmp_path)
    proc = p2v("build", tree, "-o", tmp_path / inside)
    assert_one_line_error(proc, 2, "inside the source")
    assert "Scanning" not in proc.stderr
    assert sha256_tree(tmp_path) == before


@pytest.mark.parametrize("features,word", [
    ("frobnicate", "'frobnicate'"),
    ("has_journal,^frobnicate", "'frobnicate'"),
    ("gdt_csum", "'gdt_csum'"),  # known to libe2p, refused by mke2fs
    ("has journal", "'has journal'"),
])
def test_unknown_fs_feature_is_refused_before_the_scan(tmp_path: Path, features: str,
                                                       word: str) -> None:
    tree = small_tree(tmp_path / "tree")
    before = sha256_tree(tmp_path)
    proc = p2v("build", tree, "-o", tmp_path / "x.img", "--fs-features", features)
    assert_one_line_error(proc, 2, "--fs-features", word)
    assert "Scanning" not in proc.stderr
    assert sha256_tree(tmp_path) == before


def test_size_beyond_the_msdos_label_is_refused(tmp_path: Path) -> None:
    tree = small_tree(tmp_path / "tree")
    before = sha256_tree(tmp_path)
    proc = p2v("build", tree, "-o", tmp_path / "x.img", "--size", "20T")
    assert_one_line_error(proc, 2, "20.0 TiB", "2.0 TiB", "msdos")
    assert sha256_tree(tmp_path) == before


@needs_root
def test_size_beyond_the_output_filesystem_file_limit(tmp_path: Path) -> None:
    """ext2 with 1 KiB blocks holds files up to 16 GiB: one line naming the size and that limit
    (it was a traceback from truncate's EFBIG); an older image there stays as it was."""
    tree = small_tree(tmp_path / "tree")
    fs, mnt = tmp_path / "fs.ext2", tmp_path / "mnt"
    subprocess.run(["truncate", "-s", "96M", str(fs)], check=True)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-b", "1024", str(fs)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(fs), str(mnt)], check=True)
    try:
        out = mnt / "x.img"
        assert p2v("build", tree, "-o", out).returncode == 0
        before = sha256_tree(mnt)
        proc = p2v("build", tree, "-o", out, "--size", "20G", "--force")
        assert_one_line_error(proc, 3, "20.0 GiB", "at most 16.", str(mnt))
        assert sha256_tree(mnt) == before
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _refresh_setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    built, other = small_tree(tmp_path / "built"), small_tree(tmp_path / "other")
    (other / "etc/hostname").write_text("another host entirely\n")
    img = tmp_path / "x.img"
    assert p2v("build", built, "-o", img).returncode == 0
    return built, other, img


def _recreate(tree: Path) -> None:
    aside = tree.with_name("aside")
    tree.rename(aside)
    subprocess.run(["cp", "-a", str(aside), str(tree)], check=True)
    subprocess.run(["rm", "-rf", str(aside)], check=True)


@pytest.mark.parametrize("case", ["other-tree", "recreated", "state-without-source"])
def test_refresh_from_another_tree_is_refused(tmp_path: Path, case: str) -> None:
    """build OTHER -o IMAGE --refresh replaced the image's whole OS with another tree."""
    built, other, img = _refresh_setup(tmp_path)
    source, words = other, ["not the tree", "was built from", str(built)]
    if case == "recreated":
        _recreate(built)
        source, words = built, ["new directory"]
    elif case == "state-without-source":
        state_file = img.with_name("x.img.state.json")
        state = json.loads(state_file.read_text())
        del state["source"], state["source_id"]
        state_file.write_text(json.dumps(state))
        source, words = built, ["does not record"]
    before = sha256_tree(tmp_path)
    proc = p2v("build", source, "-o", img, "--refresh", "--refresh-method", "rebuild")
    assert_one_line_error(proc, 2, "--allow-other-source", *words)
    assert sha256_tree(tmp_path) == before


@pytest.mark.parametrize("case", ["moved", "allowed"])
def test_refresh_from_the_same_directory_moved_or_when_allowed(tmp_path: Path,
                                                               case: str) -> None:
    built, other, img = _refresh_setup(tmp_path)
    if case == "moved":  # the same directory under another name
        source, extra = built.rename(tmp_path / "moved"), []
    else:
        source, extra = other, ["--allow-other-source"]
    proc = p2v("build", source, "-o", img, "--refresh", "--refresh-method", "rebuild", *extra)
    assert proc.returncode == 0, proc.stderr
    state = json.loads(img.with_name("x.img.state.json").read_text())
    assert state["source"] == str(source)  # the next refresh needs no option
    assert p2v("build", source, "-o", img, "--refresh", "--refresh-method",
               "rebuild").returncode == 0
    assert json.loads(p2v("--json", "verify", source, img).stdout)["differences"] == []
