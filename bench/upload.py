"""Benchmark ``p2vimage upload`` against ``curl -T`` to the same real Glance, same run.

Starts the OpenStack rig (tests/rig/openstack.py, Keystone + Glance + Cinder; no Nova), takes a
converted image (default: the bullseye i386 fixture, built and converted here), and:

- trims copies of it three ways, once each: p2vimage's free-block hole punching, and the
  appliance ways, ``virt-sparsify --in-place`` (fstrim inside libguestfs);
- uploads it alternately with ``p2vimage upload`` (qcow2, zstd) and with
  ``curl -T`` of the very same qcow2 file (PUT /v2/images/ID/file with the token) into an
  image record made for it.

Throughput compares the data phases only (p2vimage's PUT as it reports it, curl's whole
run). Bytes compares what p2vimage sent with the trimmed qcow2 and the raw's allocation.

    sudo .venv/bin/python -m bench.upload [--image RAW] [--rounds 3] [--json]
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
from typing import Any

from bench.common import P2VIMAGE, REPO, sh

MiB = 1 << 20


def _image(work: Path, given: Path | None) -> Path:
    dest = work / "legacy1.img"
    if given is not None:
        sh(["cp", "--sparse=always", given, dest])
        return dest
    from p2vimage.demo.examples import ensure_fixture

    tree = ensure_fixture("bullseye-i386")
    sh([*P2VIMAGE, "build", tree, "-o", dest], stdout=subprocess.DEVNULL)
    sh([*P2VIMAGE, "convert", dest], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return dest


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def trims(image: Path, work: Path) -> dict[str, Any]:
    """Seconds and resulting allocation of each way of trimming a copy of ``image``."""
    from p2vimage.cloud import upload as up
    from p2vimage.host import accel

    out: dict[str, Any] = {"untrimmed_allocated": _allocated(image)}
    copy = work / "trim.img"
    sh(["cp", "--sparse=always", image, copy])
    started = time.perf_counter()
    up.trim(copy)
    out["punch_seconds"] = round(time.perf_counter() - started, 3)
    out["punch_allocated"] = _allocated(copy)
    copy.unlink()
    sh(["cp", "--sparse=always", image, copy])
    env = {**os.environ, **accel.detect().guestfs_env()}
    started = time.perf_counter()
    sh(["virt-sparsify", "--in-place", copy], env=env, stdout=subprocess.DEVNULL)
    out["virt_sparsify_seconds"] = round(time.perf_counter() - started, 3)
    out["virt_sparsify_allocated"] = _allocated(copy)
    copy.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", type=Path, help="a converted raw image (default: the "
                        "bullseye-i386 fixture, built and converted here)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-trim-comparison", action="store_true",
                        help="skip the virt-sparsify run (an appliance boot)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from p2vimage.cloud import upload as up
    from tests.rig.openstack import running

    work = Path(tempfile.mkdtemp(prefix="p2vimage-bench-upload-", dir="/var/tmp"))
    try:
        image = _image(work, args.image)
        trim = {} if args.no_trim_comparison else trims(image, work)
        up.trim(image)  # both sides send the trimmed image
        qcow2 = work / "legacy1.qcow2"
        sh(up.qemu_img_argv(image, qcow2, "qcow2", "zstd"))
        with running(work / "rig", nova=False) as rig:
            env = rig.env
            p2v_runs: list[dict[str, Any]] = []
            curl_runs: list[float] = []

            def p2v_upload(r: int) -> None:
                proc = subprocess.run(
                    [*P2VIMAGE, "--json", "upload", image, "--os-cloud", "rig", "--name",
                     f"bench-{r}", "--no-trim"], env=env, cwd=REPO, capture_output=True,
                    text=True, check=True)
                p2v_runs.append(json.loads(proc.stdout))

            def curl_upload(r: int) -> None:
                glance = rig.url("glance")
                record = rig.api("POST", f"{glance}/v2/images", {
                    "name": f"curl-{r}", "disk_format": "qcow2", "container_format": "bare"})
                token = rig.token()
                started = time.perf_counter()
                # "Expect:" off: uWSGI never answers 100-continue, curl would wait 1 s
                sh(["curl", "-sS", "--fail", "-T", qcow2, "-X", "PUT", "-H", "Expect:",
                    "-H", f"X-Auth-Token: {token}",
                    "-H", "Content-Type: application/octet-stream",
                    f"{glance}/v2/images/{record['id']}/file"])
                curl_runs.append(time.perf_counter() - started)

            for r in range(args.rounds):
                order = (p2v_upload, curl_upload) if r % 2 == 0 else (curl_upload, p2v_upload)
                for fn in order:
                    fn(r)
                print(f"round {r + 1}: p2vimage {p2v_runs[-1]['send_seconds']:.2f} s, "
                      f"curl {curl_runs[-1]:.2f} s", file=sys.stderr)
            timings = rig.timings
        size = qcow2.stat().st_size
        p2v_send = statistics.median(r["send_seconds"] for r in p2v_runs)
        curl_send = statistics.median(curl_runs)
        sent = p2v_runs[-1]["bytes_sent"]
        result = {
            "image": str(image), "raw_size": image.stat().st_size,
            "raw_allocated_trimmed": _allocated(image), "qcow2_trimmed_size": size,
            "bytes_sent": sent, "p2vimage_send_seconds": [r["send_seconds"] for r in p2v_runs],
            "curl_seconds": [round(t, 3) for t in curl_runs],
            "p2vimage_mib_s": round(size / MiB / p2v_send, 1),
            "curl_mib_s": round(size / MiB / curl_send, 1),
            "ratio_bytes_vs_qcow2": round(sent / size, 3),
            "ratio_bytes_vs_raw_allocated": round(sent / _allocated(image), 3),
            "ratio_throughput_vs_curl": round(curl_send / p2v_send, 3),
            "trim": trim, "rig": timings,
        }
        if args.json:
            print(json.dumps(result, indent=2))
            return
        print("# upload of a converted bullseye-i386 image to Glance 33 (rig)")
        for key, value in result.items():
            print(f"{key}: {value}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
