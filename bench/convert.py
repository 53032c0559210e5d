"""Benchmark ``p2vimage convert`` against a bare libguestfs launch + inspection of the same
image, alternately in one process. An initramfs rebuild and the guest's own grub-install +
grub-mkconfig are reported separately (the report's own timings).

    sudo .venv/bin/python -m bench.convert [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import P2VIMAGE, REPO

_BARE = """
import guestfs, sys
g = guestfs.GuestFS(python_return_dict=True)
g.add_drive_opts(sys.argv[1], format="raw", readonly=True)
g.launch()
for root in g.inspect_os():
    g.inspect_get_distro(root); g.inspect_get_major_version(root); g.inspect_get_arch(root)
g.shutdown(); g.close()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from p2vimage.demo.examples import ensure_fixture
    from p2vimage.host import accel

    env = {**os.environ, **accel.detect().guestfs_env()}
    work = Path(tempfile.mkdtemp(prefix="p2vimage-bench-", dir="/var/tmp"))
    results: dict[str, dict[str, object]] = {}
    for name, rounds in (("bullseye-i386", args.rounds), ("bookworm-amd64", args.rounds),
                         ("bullseye-i386-novirtio", 1)):
        tree = ensure_fixture(name)
        pristine = work / f"{name}.img"
        subprocess.run([*P2VIMAGE, "build", str(tree), "-o", str(pristine)], cwd=REPO,
                       check=True, capture_output=True)
        bare: list[float] = []
        total: list[float] = []
        parts: dict[str, list[float]] = {}
        for r in range(rounds):
            image = work / "x.img"
            shutil.copy(pristine, image)
            order = ("bare", "convert") if r % 2 == 0 else ("convert", "bare")
            for what in order:
                started = time.perf_counter()
                if what == "bare":
                    subprocess.run([sys.executable, "-c", _BARE, str(image)], env=env,
                                   check=True)
                    bare.append(time.perf_counter() - started)
                else:
                    out = subprocess.run([*P2VIMAGE, "--json", "convert", str(image)], cwd=REPO,
                                         check=True, capture_output=True, text=True).stdout
                    total.append(time.perf_counter() - started)
                    for key, seconds in json.loads(out)["seconds"].items():
                        parts.setdefault(key, []).append(seconds)
                last = (bare if what == "bare" else total)[-1]
                print(f"{name} round {r + 1}: {what} {last:.2f} s", file=sys.stderr)
        separate = sum(statistics.median(parts.get(k, [0.0]))
                       for k in ("initramfs-rebuild", "grub2-install"))
        results[name] = {
            "bare_launch_inspect_s": statistics.median(bare),
            "convert_s": statistics.median(total),
            "ratio": statistics.median(total) / statistics.median(bare),
            "ratio_without_rebuild_and_grub": (statistics.median(total) - separate)
            / statistics.median(bare),
            "parts_s": {k: statistics.median(v) for k, v in parts.items()},
            "runs": {"bare": bare, "convert": total},
        }
    shutil.rmtree(work)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, res in results.items():
        print(f"# {name}")
        for key, value in res.items():
            print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
