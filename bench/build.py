"""Benchmark ``p2vimage build`` against baselines run alternately in the same process.

Baselines on the same tree: ``cp -a`` + sync (the physical limit of copying the bytes),
``virt-make-fs`` (the libguestfs tool), and loop mount + ``rsync -aHAXS`` (needs root).
Prints medians and ratios; verifies the last p2vimage image is faithful.

    sudo .venv/bin/python -m bench.build [--tree DIR] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.common import P2VIMAGE, REPO, alternate, report, sh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tree", type=Path, help="source tree (default: bookworm fixture)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tree = args.tree
    if tree is None:
        from p2vimage.demo.examples import ensure_fixture

        tree = ensure_fixture("bookworm-amd64")
    from p2vimage.host import accel

    env = {**os.environ, **accel.detect().guestfs_env()}
    work = Path(tempfile.mkdtemp(prefix="p2vimage-bench-", dir="/var/tmp"))
    image = work / "p2vimage.img"
    size_mib = json.loads(subprocess.run(
        [*P2VIMAGE, "--json", "build", tree, "-o", image], cwd=REPO, check=True,
        capture_output=True, text=True).stdout)["size_bytes"] // (1 << 20)
    mnt = work / "mnt"

    def cp_a() -> None:
        sh(["cp", "-a", tree, work / "copy"])
        sh(["sync"])

    def p2v_build() -> None:
        sh([*P2VIMAGE, "build", tree, "-o", image, "--force"], stderr=subprocess.DEVNULL)

    def virt_make_fs() -> None:
        sh(["virt-make-fs", "--partition=mbr", "--type=ext4", f"--size={size_mib}M",
            "--format=raw", tree, work / "vmf.img"], env=env)
        sh(["sync"])

    def loop_rsync() -> None:
        disk = work / "loop.img"
        with open(disk, "wb") as f:
            f.truncate(size_mib << 20)
        sh(["sfdisk", "-q", disk], input=b"start=2048, type=83, bootable\n")
        loop = subprocess.run(["losetup", "--show", "-f", "-o", "1048576", disk],
                              check=True, capture_output=True, text=True).stdout.strip()
        try:
            sh(["mkfs.ext4", "-q", loop])
            mnt.mkdir(exist_ok=True)
            sh(["mount", loop, mnt])
            try:
                sh(["rsync", "-aHAXS", "--numeric-ids", f"{tree}/", f"{mnt}/"])
            finally:
                sh(["umount", mnt])
        finally:
            sh(["losetup", "-d", loop])

    def cleanup() -> None:
        for name in ("copy", "vmf.img", "loop.img"):
            path = work / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        sh(["sync"])  # no method pays for flushing another's writes

    methods = {"cp -a + sync": cp_a, "p2vimage build": p2v_build,
               "virt-make-fs": virt_make_fs}
    if os.geteuid() == 0:
        methods["loop mount + rsync"] = loop_rsync
    cp_a()  # warm the page cache for every method alike
    times = alternate(methods, args.rounds, cleanup)
    verified = subprocess.run([*P2VIMAGE, "verify", "--strict", tree, image], cwd=REPO,
                              capture_output=True, text=True, check=False)
    ratios = {"build / cp -a": ("p2vimage build", "cp -a + sync"),
              "virt-make-fs / build": ("virt-make-fs", "p2vimage build")}
    if "loop mount + rsync" in times:
        ratios["loop+rsync / build"] = ("loop mount + rsync", "p2vimage build")
    du = subprocess.run(["du", "-sh", "--apparent-size", tree], capture_output=True,
                        text=True, check=False).stdout.split()[0]
    report(f"build of {tree} ({du}, image {size_mib} MiB)", times, ratios,
           {"verify": verified.stdout.strip().splitlines()[-1] if verified.stdout else
            verified.stderr.strip(), "verify_exit": verified.returncode}, args.json)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
