"""Cutover benchmark: a client polls the public IP over HTTP at 20 Hz through
``p2vimage cutover run`` and ``cutover rollback`` (fast profile), the runner's seed profile,
and the seed's procedure replayed by hand (bench/seed_cutover.sh), all in the same netns rig
(tests/rig/netns.py). The gap is the longest time between two good answers ("legacy" or
"instance") around the switch. Needs root.

    .venv/bin/python -m bench.cutover --rounds 3
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import itertools
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import REPO

PERIOD = 0.05  # 20 Hz


class Poller:
    """GET http://PUBLIC_IP/ from the client namespace every 50 ms (each in its own thread,
    0.5 s timeout), recording send time and body."""

    def __init__(self, netns: Any, rig: Any) -> None:
        self.netns, self.rig = netns, rig
        self.answers: list[tuple[float, str | None]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def _get(self, sent: float) -> None:
        body = self.netns.http_get(self.rig.ns["client"], timeout=0.5)
        with self.lock:
            self.answers.append((sent, body))

    def run(self) -> None:
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            tick = time.monotonic()
            while not self.stop.is_set():
                pool.submit(self._get, time.monotonic())
                tick += PERIOD
                time.sleep(max(0.0, tick - time.monotonic()))

    def gap(self) -> tuple[float, list[str]]:
        """Longest interval between consecutive good answers, and the bodies in order."""
        good = sorted((t, b) for t, b in self.answers if b in ("legacy", "instance"))
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(good)]
        bodies = [b for _, b in good]
        order = [b for i, b in enumerate(bodies) if i == 0 or bodies[i - 1] != b]
        return max(gaps, default=float("inf")), order


def measured(netns: Any, rig: Any, action: Any) -> tuple[float, list[str], Any]:
    poller = Poller(netns, rig)
    thread = threading.Thread(target=poller.run)
    thread.start()
    time.sleep(0.5)
    try:
        result = action()
    finally:
        time.sleep(1.0)
        poller.stop.set()
        thread.join()
    gap, order = poller.gap()
    return gap, order, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    netns = importlib.import_module("tests.rig.netns")
    top = Path(tempfile.mkdtemp(prefix="p2v-bench-cutover-"))
    rig = netns.make_rig(top)
    gaps: dict[str, list[float]] = {"p2vimage run (fast)": [], "p2vimage rollback (fast)": [],
                                    "p2vimage run (seed profile)": [],
                                    "p2vimage rollback (seed profile)": [],
                                    "seed by hand": []}
    downtime: dict[str, list[float]] = {"fast": [], "seed": []}
    try:
        for profile in ("fast", "seed"):
            spec = rig.spec(top / f"{profile}.toml", profile=profile)
            for r in range(args.rounds):
                work = top / f"work-{profile}-{r}"
                gap, order, proc = measured(netns, rig, lambda s=spec, w=work: rig.cli(
                    "--json", "cutover", "run", s, workdir=w))
                assert proc.returncode == 0, proc.stderr
                assert order == ["legacy", "instance"], order
                gaps[f"p2vimage run ({profile}{' profile' if profile == 'seed' else ''})"] \
                    .append(gap)
                downtime[profile].append(json.loads(proc.stdout)["downtime"])
                gap, order, proc = measured(netns, rig, lambda s=spec, w=work: rig.cli(
                    "cutover", "rollback", s, workdir=w))
                assert proc.returncode == 0, proc.stderr
                assert order == ["instance", "legacy"], order
                gaps[f"p2vimage rollback ({profile}{' profile' if profile == 'seed' else ''})"]\
                    .append(gap)
                print(f"round {r + 1}: {profile}: run/rollback done", file=sys.stderr)
        ssh_opts = (f"-o BatchMode=yes -p {rig.legacy_ssh.port} -i {rig.legacy_ssh.key} "
                    f"-o UserKnownHostsFile={rig.known_hosts} "
                    f"-o HostKeyAlias=[{netns.PUBLIC_IP}]:{rig.legacy_ssh.port}")
        node = rig.ns["node"]
        env = {**os.environ, "SSH_OPTS": ssh_opts, "LEGACY": netns.LEGACY_MAINT,
               "LEGACY_DIRECT": netns.PUBLIC_IP, "NODE_NS": node, "IP": netns.PUBLIC_IP,
               "PREFIX": "24", "IF": "eth0", "BR": netns.BRIDGE, "GATEWAY": netns.ROUTER_IP,
               "MAINT_LEGACY": f"{netns.LEGACY_MAINT}/24",
               "MAINT_NODE": f"{netns.NODE_MAINT}/24",
               "STOP": shlex.join(rig.service("legacy", "stop")),
               "START": shlex.join(rig.service("legacy", "start")),
               "BOOT": script_file(top / "boot.sh", boot_line(rig)),
               "UNBOOT": script_file(top / "unboot.sh", unboot_line(rig))}
        script = str(REPO / "bench/seed_cutover.sh")
        for r in range(args.rounds):
            gap, order, proc = measured(netns, rig, lambda: subprocess.run(
                [*rig.exec("desk"), "sh", script, "run"], env=env, capture_output=True,
                text=True, check=False))
            assert proc.returncode == 0, proc.stderr
            assert order == ["legacy", "instance"], order
            gaps["seed by hand"].append(gap)
            undo = subprocess.run([*rig.exec("desk"), "sh", script, "undo"], env=env,
                                  capture_output=True, text=True, check=False)
            assert undo.returncode == 0, undo.stderr
            rig.wait_for("legacy")
            print(f"round {r + 1}: seed by hand done", file=sys.stderr)
    finally:
        rig.close()
    medians = {k: statistics.median(v) for k, v in gaps.items()}
    result: dict[str, Any] = {"gaps": gaps, "medians": medians,
              "runner_downtime": downtime,
              "ratios": {"seed by hand / p2vimage run": medians["seed by hand"]
                         / medians["p2vimage run (fast)"]}}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print("# cutover: longest gap between good answers at 20 Hz")
    for name, values in gaps.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name:34} median {medians[name]:6.2f} s   runs {runs}")
    for name, values in downtime.items():
        print(f"runner downtime window ({name}): {', '.join(f'{v:.2f}' for v in values)} s")
    for label, ratio in result["ratios"].items():
        print(f"{label:40} {ratio:6.2f}x")


def script_file(path: Path, line: str) -> str:
    """LINE as an executable script (the seed script word-splits its commands)."""
    path.write_text(f"#!/bin/sh\n{line}\n")
    path.chmod(0o755)
    return str(path)


def boot_line(rig: Any) -> str:
    return (f"ip -n {rig.ns['node']} link set tap0 master {rig_bridge()} && "
            f"{shlex.join(rig.service('instance', 'start'))}")


def unboot_line(rig: Any) -> str:
    return (f"{shlex.join(rig.service('instance', 'stop'))}; "
            f"ip -n {rig.ns['node']} link set tap0 nomaster")


def rig_bridge() -> str:
    return str(importlib.import_module("tests.rig.netns").BRIDGE)


if __name__ == "__main__":
    main()
