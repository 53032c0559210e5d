"""Benchmark ``p2vimage smoke`` (boot to verdict, default ssh probe) against a bare qemu
boot of the same image to its ``login:`` prompt, alternately in one process.

    sudo .venv/bin/python -m bench.smoke [--image IMG] [--rounds 3] [--json]
(default image: the bullseye-i386 example, built and converted first)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import P2VIMAGE, REPO


def bare_boot(image: Path, qemu_args: list[str], tmp: Path) -> float:
    """Seconds from starting qemu to 'login:' on the serial console."""
    console = tmp / "bare.log"
    console.write_text("")
    argv = ["qemu-system-x86_64", *qemu_args, "-smp", "2", "-m", "1024", "-nodefaults",
            "-display", "none", "-no-reboot", "-drive",
            f"file={image},format=raw,if=virtio,snapshot=on",
            "-chardev", f"file,id=c,path={console}", "-serial", "chardev:c",
            "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while "login:" not in console.read_text(errors="replace"):
            if proc.poll() is not None or time.perf_counter() - started > 600:
                raise SystemExit("bare boot did not reach login:")
            time.sleep(0.1)
        return time.perf_counter() - started
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from p2vimage.host import accel

    qemu_args = accel.detect().qemu_args()
    with tempfile.TemporaryDirectory(prefix="p2vimage-bench-", dir="/var/tmp") as tmpdir:
        tmp = Path(tmpdir)
        image = args.image
        if image is None:
            from p2vimage.demo.examples import ensure_fixture

            image = tmp / "bullseye-i386.img"
            subprocess.run([*P2VIMAGE, "build", str(ensure_fixture("bullseye-i386")), "-o",
                            str(image)], cwd=REPO, check=True, capture_output=True)
            subprocess.run([*P2VIMAGE, "convert", str(image)], cwd=REPO, check=True,
                           capture_output=True)
        bare: list[float] = []
        smoke: list[float] = []
        for r in range(args.rounds):
            for what in (("bare", "smoke") if r % 2 == 0 else ("smoke", "bare")):
                if what == "bare":
                    bare.append(bare_boot(image, qemu_args, tmp))
                else:
                    started = time.perf_counter()
                    subprocess.run([*P2VIMAGE, "smoke", str(image), "--report-dir",
                                    str(tmp / "r")], cwd=REPO, check=True, capture_output=True)
                    smoke.append(time.perf_counter() - started)
                print(f"round {r + 1}: {what} {(bare if what == 'bare' else smoke)[-1]:.2f} s",
                      file=sys.stderr)
    result = {"bare_boot_to_login_s": statistics.median(bare),
              "smoke_to_verdict_s": statistics.median(smoke),
              "ratio": statistics.median(smoke) / statistics.median(bare),
              "runs": {"bare": bare, "smoke": smoke}}
    print(json.dumps(result, indent=2) if args.json else
          "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
