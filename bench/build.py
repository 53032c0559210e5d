"""Benchmark ``p2vimage build`` against baselines, whole processes in turn, in one run.

Baselines on the same tree, each timed as whole processes and ending with its data on disk:

- ``mke2fs -d`` + fsync: the very mke2fs command line ``build`` runs (its ``-O`` list, size,
  inode size and count, label, partition offset), replayed from ``build --debug`` into a
  file truncated to the same size, then ``sync FILE``. What fidelity costs is build / this.
- tar stream + fsync: ``tar -cSf`` of the tree into one file, then ``sync FILE`` (one
  sequential stream of the tree's bytes, holes skipped).
- ``cp -a`` + ``sync``, ``virt-make-fs`` (the libguestfs tool), loop mount +
  ``rsync -aHAXS`` (needs root).

Methods run once per round in a shuffled order (``alternate``), each after a ``sync`` and
a 2 s pause for the disk to settle; medians, spreads and ratios come from the same run.
``build (phases)`` is the same build through a wrapper that timestamps its log lines: the
breakdown of where its time goes. ``--against REV`` adds the build of an older revision
(and its phases) to the same rounds. The image of a first, untimed build (same command) is
verified with ``verify --strict``. Every output is deleted before the next method runs, so
no method pays for freeing another's blocks (``build --force`` over an old image would).

Python runs with compiled bytecode cached (``PYTHONPYCACHEPREFIX`` in the work directory),
as an installed p2vimage would; ``--no-pyc`` runs it as the environment says.

    sudo .venv/bin/python -m bench.build [--tree DIR] [--rounds 5] [--skip NAME]
                                         [--against REV] [--no-pyc] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import P2VIMAGE, REPO, alternate, report, sh

# Runs the CLI with --debug and every log line stamped with its wall-clock time.
_PHASES = """
import logging, sys
from p2vimage.core import log as logmod
_setup = logmod.setup
def setup(debug=False, json_mode=False):
    _setup(debug=True, json_mode=json_mode)
    logmod.log.handlers[0].setFormatter(logging.Formatter("%(created).6f %(message)s"))
logmod.setup = setup
from p2vimage.cli import main
main(sys.argv[1:])
"""
PHASES = ("start: python, imports, checks", "scan: guest facts, tree walk",
          "mke2fs -d (its own fsync included)", "debugfs completion batch",
          "end: MBR, fsync, rename, state file, exit")


def _phases(started: float, ended: float, stderr: str) -> dict[str, float]:
    """Split one instrumented build into PHASES from its stamped log lines."""
    lines = []
    for line in stderr.splitlines():
        stamp, _, message = line.partition(" ")
        try:
            lines.append((float(stamp), message.strip()))
        except ValueError:
            continue

    def first(prefix: str, after: float = 0.0) -> float:
        return next(t for t, m in lines if m.startswith(prefix) and t >= after)

    scan = first("‣ Scanning")
    populate = first("‣ Populating")
    complete = first("‣ Completing")
    completed = first("done in", complete)
    marks = (started, scan, populate, complete, completed, ended)
    return {name: marks[i + 1] - marks[i] for i, name in enumerate(PHASES)}


def _mke2fs_argv(stderr: str, partial: str) -> tuple[list[str], int]:
    """The mke2fs argv ``build --debug`` logged (output path as a placeholder), its index."""
    for line in stderr.splitlines():
        if line.startswith("+ ") and "mke2fs " in line:
            argv = shlex.split(line[2:].removesuffix(" &"))
            return argv, argv.index(partial)
    raise SystemExit(f"no mke2fs command in the build's --debug output:\n{stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tree", type=Path, help="source tree (default: bookworm fixture)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip", action="append", default=[], metavar="NAME",
                        help="leave out a method whose name contains NAME (repeatable)")
    parser.add_argument("--no-pyc", action="store_true",
                        help="do not cache compiled bytecode for the CLI")
    parser.add_argument("--against", metavar="REV",
                        help="also run the build (and its phases) of this git revision")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tree = args.tree
    if tree is None:
        from p2vimage.demo.examples import ensure_fixture

        tree = ensure_fixture("bookworm-amd64")
    from p2vimage.host import accel

    work = Path(tempfile.mkdtemp(prefix="p2vimage-bench-", dir="/var/tmp"))
    env = dict(os.environ)
    if not args.no_pyc:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.fspath(work / "pycache")
    image = work / "p2vimage.img"
    first = subprocess.run([*P2VIMAGE, "--debug", "--json", "build", tree, "-o", image],
                           cwd=REPO, check=True, capture_output=True, text=True, env=env)
    built = json.loads(first.stdout)
    size = int(built["size_bytes"])
    size_mib = size >> 20
    mke2fs_argv, out_index = _mke2fs_argv(first.stderr, os.fspath(
        image.with_name(f".{image.name}.partial")))
    mnt = work / "mnt"
    phases: dict[str, list[dict[str, float]]] = {}

    def cp_a() -> None:
        sh(["cp", "-a", tree, work / "copy"])
        sh(["sync"])

    def tar_stream() -> None:
        sh(["tar", "--warning=no-file-ignored", "-cSf", work / "stream.tar", "-C", tree, "."])
        sh(["sync", work / "stream.tar"])

    def bare_mke2fs() -> None:
        target = work / "mke2fs.img"
        sh(["truncate", "-s", str(size), target])
        argv = list(mke2fs_argv)
        argv[out_index] = os.fspath(target)
        sh(argv)
        sh(["sync", target])

    def p2v(code: Path, out: str) -> Callable[[], None]:
        def run() -> None:
            sh([*P2VIMAGE, "build", tree, "-o", work / out, "--force"], cwd=code, env=env,
               stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        return run

    def p2v_phases(code: Path, out: str, label: str) -> Callable[[], None]:
        def run() -> None:
            started = time.time()
            proc = subprocess.run([sys.executable, "-c", _PHASES, "build", tree, "-o",
                                   work / out, "--force"], cwd=code, env=env,
                                  capture_output=True, text=True, check=True)
            phases.setdefault(label, []).append(_phases(started, time.time(), proc.stderr))
        return run

    def virt_make_fs() -> None:
        sh(["virt-make-fs", "--partition=mbr", "--type=ext4", f"--size={size_mib}M",
            "--format=raw", tree, work / "vmf.img"], env={**env, **accel.detect().guestfs_env()})
        sh(["sync"])

    def loop_rsync() -> None:
        disk = work / "loop.img"
        with open(disk, "wb") as f:
            f.truncate(size)
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
        for name in outputs:
            path = work / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        sh(["sync"])  # no method pays for flushing another's writes
        time.sleep(2)  # nor for the virtual disk's host still absorbing them

    methods: dict[str, Callable[[], None]] = {
        "p2vimage build": p2v(REPO, image.name), "mke2fs -d + fsync": bare_mke2fs,
        "tar stream + fsync": tar_stream, "cp -a + sync": cp_a,
        "build (phases)": p2v_phases(REPO, "phases.img", "build (phases)")}
    outputs = ["copy", "stream.tar", "mke2fs.img", image.name, "phases.img", "vmf.img",
               "loop.img"]
    if args.against:
        old = work / "against"
        old.mkdir()
        archive = subprocess.run(["git", "archive", args.against, "p2vimage"], cwd=REPO,
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        methods[f"build @{args.against}"] = p2v(old, "old.img")
        methods[f"build (phases) @{args.against}"] = p2v_phases(
            old, "old-phases.img", f"build (phases) @{args.against}")
        outputs += ["old.img", "old-phases.img"]
    methods["virt-make-fs"] = virt_make_fs
    if os.geteuid() == 0:
        methods["loop mount + rsync"] = loop_rsync
    methods = {k: v for k, v in methods.items() if not any(s in k for s in args.skip)}
    verified = subprocess.run([*P2VIMAGE, "verify", "--strict", tree, image], cwd=REPO,
                              capture_output=True, text=True, check=False, env=env)
    cp_a()  # warm the page cache for every method alike
    load_before = os.getloadavg()
    cpu: dict[str, list[tuple[float, float]]] = {}
    times = alternate(methods, args.rounds, cleanup, cpu)  # each method writes a new file
    load_after = os.getloadavg()
    pairs = {"build / mke2fs -d + fsync": ("p2vimage build", "mke2fs -d + fsync"),
             "build / tar stream + fsync": ("p2vimage build", "tar stream + fsync"),
             "build / cp -a + sync": ("p2vimage build", "cp -a + sync"),
             "virt-make-fs / build": ("virt-make-fs", "p2vimage build"),
             "loop+rsync / build": ("loop mount + rsync", "p2vimage build"),
             f"build @{args.against} / mke2fs -d + fsync": (f"build @{args.against}",
                                                            "mke2fs -d + fsync"),
             f"build / build @{args.against}": ("p2vimage build", f"build @{args.against}")}
    ratios = {k: v for k, v in pairs.items() if v[0] in times and v[1] in times}
    du = subprocess.run(["du", "-sh", "--apparent-size", tree], capture_output=True,
                        text=True, check=False).stdout.split()[0]
    extra: dict[str, object] = {
        "features": ",".join(built["features"]), "inode_size": built["inode_size"],
        "inodes": built["inodes"],
        "mke2fs": shlex.join([*mke2fs_argv[:out_index], "IMAGE", *mke2fs_argv[out_index + 1:]]),
        "load average (1 min) before, after": f"{load_before[0]:.2f}, {load_after[0]:.2f}",
        "verify": verified.stdout.strip().splitlines()[-1] if verified.stdout else
        verified.stderr.strip(), "verify_exit": verified.returncode}
    extra["cpu: median user, system s"] = {
        name: f"{statistics.median(u for u, _ in runs):.2f}, "
              f"{statistics.median(k for _, k in runs):.2f}" for name, runs in cpu.items()}
    for label, runs in phases.items():
        extra[f"{label}: median s of each phase"] = {
            name: round(statistics.median(p[name] for p in runs), 3) for name in PHASES}
    report(f"build of {tree} ({du}, image {size_mib} MiB)", times, ratios, extra, args.json)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
