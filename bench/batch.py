"""Benchmark ``p2vimage batch``: a fleet of hosts through build, convert and smoke with two
hosts in flight against the same hosts one after another (``--max-in-flight 1``), alternately
in one process; and ``batch plan`` / ``batch status`` of a generated 1,000-host inventory, as
whole processes (interpreter start, imports, ansible-core's inventory load included).

    sudo .venv/bin/python -m bench.batch [--hosts 4] [--rounds 1] [--small-rounds 5] [--json]
    sudo .venv/bin/python -m bench.batch --only-small      # plan and status only (seconds)
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

from bench.common import P2VIMAGE, REPO

FIXTURES = ("bullseye-i386", "bookworm-amd64", "bullseye-i386-novirtio")
PAGE = "http:80:/:200:p2vimage fixture"


def fleet(top: Path, hosts: int) -> Path:
    """HOSTS local example trees (cycling through the fixtures) in one wave, through smoke."""
    from p2vimage.demo.examples import ensure_fixture

    trees = [ensure_fixture(name) for name in FIXTURES]
    members = {f"host{n}": {"p2v_source": str(trees[n % len(trees)]), "p2v_probes": [PAGE]}
               for n in range(hosts)}
    data = {"all": {"vars": {"p2v_stages": ["build", "convert", "smoke"]},
                    "children": {"wave1": {"hosts": members}}}}
    path = top / "fleet.yml"
    path.write_text(json.dumps(data, indent=1))
    return path


def batch_run(inventory: Path, batch_dir: Path, in_flight: int) -> float:
    """Wall seconds of one ``batch run`` from nothing done."""
    shutil.rmtree(batch_dir, ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.run([*P2VIMAGE, "batch", "run", str(inventory), "--batch-dir",
                           str(batch_dir), "--max-in-flight", str(in_flight)], cwd=REPO,
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"batch run failed ({proc.returncode}): {proc.stderr[-3000:]}")
    shutil.rmtree(batch_dir, ignore_errors=True)
    return seconds


def big_inventory(root: Path, hosts: int = 1000) -> Path:
    """HOSTS hosts in 10 waves of 2 sub-waves, group_vars and some host_vars (as the
    inventory layer's 1,000-host test)."""
    lines = ["all:", "  vars:", "    p2v_cloud: prod", "    p2v_network: tenant",
             "  children:"]
    per_wave = hosts // 10
    (root / "group_vars").mkdir(parents=True)
    (root / "host_vars").mkdir()
    for w in range(10):
        lines += [f"    wave{w}:", "      vars:", f"        p2v_availability_zone: az{w % 3}",
                  "      children:"]
        for sub in range(2):
            lines += [f"        wave{w}_{sub}:", "          hosts:"]
            for i in range(per_wave // 2):
                n = w * per_wave + sub * (per_wave // 2) + i
                lines += [f"            host{n:04d}:",
                          f"              p2v_source: ssh://root@host{n:04d}.example.org/"]
        (root / f"group_vars/wave{w}.yml").write_text(f"p2v_flavor: m1.w{w}\n"
                                                      f"p2v_size: {w + 1}G\n")
    for n in range(0, hosts, 7):
        (root / f"host_vars/host{n:04d}.yml").write_text("p2v_size: 20G\n")
    (root / "hosts.yml").write_text("\n".join(lines) + "\n")
    return root


def busy_state(inventory: Path, batch_dir: Path) -> None:
    """A state file as a runner leaves it half-way through 1,000 hosts: 600 passed (four
    stages each, with logs), 2 running, 398 queued."""
    from p2vimage.fleet import batch, hostrun, state
    from p2vimage.fleet import inventory as inv

    fleet = inv.load(inventory)
    data = state.new(inventory)
    hosts: dict[str, Any] = {}
    now = time.time()
    for n, host in enumerate(fleet.hosts):
        where = hostrun.paths(host, batch_dir)
        chosen = hostrun.runnable(host)
        record = batch._host_record(host, where, chosen, {}, None, "bench")
        for i, stage in enumerate(chosen):
            if n < 600 or (n < 602 and i < 2):
                record["stages"][stage].update(status="passed", started=now - 100 + i,
                                               finished=now - 99 + i, log=str(where.log(stage)))
        if n < 600:
            record["status"] = "passed"
        elif n < 602:
            where.logs.mkdir(parents=True, exist_ok=True)
            where.log("convert").write_text("=== header\n  ‣ Stage convert…\n")
            record["stages"]["convert"].update(status="running", started=now - 5,
                                               log=str(where.log("convert")))
            record.update(status="running", stage="convert", started=now - 100)
        hosts[host.name] = record
    data["sections"]["run"] = {"verb": "run", "started": now - 100, "finished": None,
                               "hosts": hosts}
    state.write(batch_dir, data)


def whole(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def small(top: Path, rounds: int) -> dict[str, list[float]]:
    root = big_inventory(top / "big")
    inventory = root / "hosts.yml"
    batch_dir = top / "big.batch"
    batch_dir.mkdir()
    busy_state(inventory, batch_dir)
    commands = {
        "batch plan (1,000 hosts)": [*P2VIMAGE, "batch", "plan", str(root), "--batch-dir",
                                     str(batch_dir)],
        "batch status (1,000 hosts)": [*P2VIMAGE, "batch", "status", str(root),
                                       "--batch-dir", str(batch_dir)],
        "batch status --json (1,000 hosts)": [*P2VIMAGE, "--json", "batch", "status",
                                              str(root), "--batch-dir", str(batch_dir)],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for r in range(rounds):
        for name, argv in commands.items():
            times[name].append(whole(argv))
            print(f"round {r + 1}: {name}: {times[name][-1]:.2f} s", file=sys.stderr)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--small-rounds", type=int, default=5)
    parser.add_argument("--only-small", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="p2vimage-bench-", dir="/var/tmp") as tmpdir:
        top = Path(tmpdir)
        times = small(top, args.small_rounds)
        if not args.only_small:
            inventory = fleet(top, args.hosts)
            runs = {"one after another (--max-in-flight 1)": 1,
                    "two in flight (--max-in-flight 2)": 2}
            for name in runs:
                times[name] = []
            for r in range(args.rounds):
                order = list(runs) if r % 2 == 0 else list(reversed(runs))
                for name in order:
                    seconds = batch_run(inventory, top / "fleet.batch", runs[name])
                    times[name].append(seconds)
                    print(f"round {r + 1}: {name}: {seconds:.1f} s", file=sys.stderr)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    result: dict[str, Any] = {"hosts": args.hosts, "times": times, "medians": medians,
                              "load_before": load, "load_after": os.getloadavg()}
    serial, parallel = ("one after another (--max-in-flight 1)",
                        "two in flight (--max-in-flight 2)")
    if parallel in medians:
        result["throughput"] = medians[serial] / medians[parallel]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for name, median in medians.items():
        runs_text = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:40} median {median:8.2f} s   runs {runs_text}")
    if "throughput" in result:
        print(f"throughput, 2 in flight / 1 in flight: {result['throughput']:.2f}x "
              f"({args.hosts} hosts)")
    print(f"load average before {load[0]:.2f}, after {result['load_after'][0]:.2f}")


if __name__ == "__main__":
    main()
