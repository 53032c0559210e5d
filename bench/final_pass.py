"""Benchmark the cutover window's copy: a final pass (sync + build --refresh) after 1 % of
the files changed, against the first full pass (sync + build), in the same run.

The legacy host is a real OpenSSH server on 127.0.0.1 serving a copy of the bookworm fixture.
Each final pass changes another 1 % of the regular files (rewritten with new bytes of the
same size plus a little, spread over the tree), then syncs and refreshes. Both refresh
methods are measured (loop: rsync into the mounted image; rebuild: mke2fs -d again). The
image is verified against the source after every final pass.

    sudo .venv/bin/python -m bench.final_pass [--tree DIR] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import P2VIMAGE, REPO, sh


def _p2v_json(*args: str | os.PathLike[str]) -> dict[str, Any]:
    proc = subprocess.run([*P2VIMAGE, "--json", *(os.fspath(a) for a in args)], cwd=REPO,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"p2vimage {' '.join(map(str, args[:2]))} failed: {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout))


def _regular_files(root: Path) -> list[Path]:
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink() and os.stat(path).st_nlink == 1:
                found.append(path)
    return sorted(found)


def change_one_percent(root: Path, rng: random.Random) -> tuple[int, int]:
    """Rewrite 1 % of the regular files with new bytes; return (files, bytes written)."""
    files = _regular_files(root)
    chosen = rng.sample(files, max(1, len(files) // 100))
    written = 0
    for path in chosen:
        size = path.stat().st_size
        data = rng.randbytes(size + 64)
        path.write_bytes(data)
        written += len(data)
    return len(chosen), written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tree", type=Path, help="source tree (default: bookworm fixture)")
    parser.add_argument("--rounds", type=int, default=3, help="final passes per method")
    parser.add_argument("--bwlimit", help="rsync --bwlimit for every pass (a slower link to "
                        "the legacy host than loopback), e.g. 12m for about 100 Mbit/s")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the legacy tree has root-owned files and device nodes")
    tree = args.tree
    if tree is None:
        from p2vimage.demo.examples import ensure_fixture

        tree = ensure_fixture("bookworm-amd64")
    sys.path.insert(0, str(REPO))
    from tests.rig.sshd import start_sshd

    work = Path(tempfile.mkdtemp(prefix="p2vimage-bench-final-", dir="/var/tmp"))
    source, staging, image = work / "source", work / "staging", work / "host.img"
    sh(["cp", "-a", "--sparse=always", tree, source])
    proc, server = start_sshd(work / "sshd")
    rng = random.Random(1)
    try:
        ssh = ["--identity", str(server.key), "--ssh-option",
               f"UserKnownHostsFile={server.known_hosts}",
               *(["--bwlimit", args.bwlimit] if args.bwlimit else [])]
        url = server.url(source)
        sh(["sync"])
        started = time.perf_counter()
        first_sync = _p2v_json("sync", url, staging, *ssh)
        _p2v_json("build", staging, "-o", image)
        first = time.perf_counter() - started
        print(f"first pass: {first:.2f} s", file=sys.stderr)
        finals: dict[str, list[dict[str, Any]]] = {"loop": [], "rebuild": []}
        for r in range(args.rounds):
            for method in (("loop", "rebuild") if r % 2 == 0 else ("rebuild", "loop")):
                files, written = change_one_percent(source, rng)
                sh(["sync"])
                started = time.perf_counter()
                final_sync = _p2v_json("sync", url, staging, "--final", *ssh)
                refreshed = _p2v_json("build", staging, "-o", image, "--refresh",
                                      "--refresh-method", method)
                seconds = time.perf_counter() - started
                verified = subprocess.run([*P2VIMAGE, "verify", "--strict", staging, image],
                                          cwd=REPO, capture_output=True, text=True,
                                          check=False)
                finals[method].append({
                    "seconds": seconds, "changed_files": files, "changed_bytes": written,
                    "sync_seconds": final_sync["seconds"],
                    "sync_files_sent": final_sync["stats"].get("files_transferred"),
                    "sync_bytes_moved": final_sync["stats"].get("bytes_sent", 0)
                    + final_sync["stats"].get("bytes_received", 0),
                    "refresh_seconds": refreshed["seconds"]["total"],
                    "refresh_files": refreshed["stats"].get("files_transferred",
                                                            refreshed["stats"].get("files")),
                    "refresh_bytes": refreshed["stats"].get("bytes_transferred"),
                    "verify_exit": verified.returncode})
                print(f"round {r + 1}: final pass ({method}): {seconds:.2f} s (sync "
                      f"{final_sync['seconds']} s, refresh {refreshed['seconds']['total']} s), "
                      f"{files} files changed, verify exit {verified.returncode}",
                      file=sys.stderr)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    medians = {m: statistics.median(x["seconds"] for x in runs) for m, runs in finals.items()}
    result = {
        "tree": os.fspath(tree), "bwlimit": args.bwlimit, "first_pass_seconds": first,
        "first_sync": {"files": first_sync["stats"].get("files"),
                       "files_sent": first_sync["stats"].get("files_transferred"),
                       "bytes_moved": first_sync["stats"].get("bytes_sent", 0)
                       + first_sync["stats"].get("bytes_received", 0),
                       "seconds": first_sync["seconds"]},
        "final_passes": finals, "final_median_seconds": medians,
        "ratios": {f"final ({m}) / first": medians[m] / first for m in medians},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"# final pass vs first pass, {tree}, link: "
          f"{'rsync --bwlimit=' + args.bwlimit if args.bwlimit else 'loopback, unlimited'}")
    fs = result["first_sync"]
    print(f"first pass (sync + build): {first:.2f} s; sync sent {fs['files_sent']} of "
          f"{fs['files']} entries, {fs['bytes_moved']} bytes over ssh")
    for method, runs in finals.items():
        last = runs[-1]
        times = ", ".join(f"{x['seconds']:.2f}" for x in runs)
        print(f"final pass (sync --final + build --refresh, {method}): median "
              f"{medians[method]:.2f} s, runs {times}; last: {last['changed_files']} "
              f"files changed, sync sent {last['sync_files_sent']} files / "
              f"{last['sync_bytes_moved']} bytes, refresh wrote {last['refresh_files']} files / "
              f"{last['refresh_bytes']} bytes; verify exit "
              f"{sorted({x['verify_exit'] for x in runs})}")
    for label, ratio in result["ratios"].items():
        print(f"{label:28} {ratio:.3f}")


if __name__ == "__main__":
    main()
