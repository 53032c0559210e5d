"""The batch verbs as real processes on small trees (build only, seconds): plan, run, a failed
host, the rerun that keeps what passed, kill -9 of the runner, the lock, refused input, and
cutover waves against a legacy host that does not answer (each host's cutover is refused by
its preflight, nothing changes)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from p2vimage.fleet import state
from tests.conftest import P2VIMAGE, REPO, assert_one_line_error, p2v
from tests.unit.test_cutover_spec import SPEC


def tree(root: Path, megabytes: int = 1) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/fstab").write_text("/dev/sda1 / ext3 defaults 0 1\n")
    (root / "srv").mkdir()
    for n in range(megabytes):
        (root / f"srv/data{n}").write_bytes(os.urandom(1 << 20))
    return root


def fleet(tmp_path: Path, hosts: dict[str, dict[str, Any]], megabytes: int = 1) -> Path:
    for name in hosts:
        tree(tmp_path / "trees" / name, megabytes)
    data = {"all": {"vars": {"p2v_stages": ["build"]}, "children": {
        "wave1": {"hosts": {n: {"p2v_source": f"trees/{n}", **v} for n, v in hosts.items()}}}}}
    path = tmp_path / "fleet.yml"
    path.write_text(json.dumps(data))
    return path


def stamps(batch_dir: Path) -> dict[str, int]:
    return {p.parent.parent.name: p.stat().st_mtime_ns
            for p in batch_dir.glob("hosts/*/work/build.stamp.json")}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_fail_fix_rerun(tmp_path: Path) -> None:
    inv = fleet(tmp_path, {"a": {}, "b": {"p2v_size": "2M"}, "c": {}})
    batch_dir = tmp_path / "fleet.yml.batch"
    plan = json.loads(p2v("--json", "batch", "plan", inv, check=True).stdout)
    assert {h["name"]: h["stages"]["build"] for h in plan["hosts"]} == {
        "a": "run", "b": "run", "c": "run"}
    assert not batch_dir.exists()  # plan writes nothing
    first = p2v("--json", "batch", "run", inv, "--max-in-flight", "2")
    assert_one_line_error(first, 1, "1 of 3 host(s) failed", "b (build", "too small")
    doc = json.loads(first.stdout)
    assert doc["exit_code"] == 1 and doc["report"]["hosts"]["b"]["failed_stage"] == "build"
    assert {n: h["status"] for n, h in doc["report"]["hosts"].items()} == {
        "a": "passed", "b": "failed", "c": "passed"}
    log = (batch_dir / "hosts/b/logs/build.log").read_text()
    assert "error: --size 2 MiB is too small" in log
    before = stamps(batch_dir)
    assert set(before) == {"a", "c"}
    rep = json.loads((batch_dir / "report/report.json").read_text())
    assert {h["name"]: h["verdict"] for h in rep["hosts"]} == {"a": "pass", "b": "fail",
                                                              "c": "pass"}
    # fixed in the inventory, the same command: only b runs
    inv.write_text(inv.read_text().replace('"p2v_size": "2M"', '"p2v_size": "64M"'))
    plan = json.loads(p2v("--json", "batch", "plan", inv, check=True).stdout)
    assert {h["name"]: h["to_run"] for h in plan["hosts"]} == {"a": [], "b": ["build"],
                                                               "c": []}
    again = p2v("batch", "run", inv)
    assert again.returncode == 0, again.stderr
    assert "3 of 3 host(s) passed" in again.stdout
    after = stamps(batch_dir)
    assert {n: after[n] for n in ("a", "c")} == before
    assert (batch_dir / "hosts/b/logs/build.log").read_text().count("=== ") == 2
    assert (batch_dir / "hosts/a/logs/build.log").read_text().count("=== ") == 1
    status = p2v("batch", "status", inv, check=True).stdout
    assert "run: 3 hosts: 3 passed" in status and "no runner" in status
    # timestamped lines, not a table, when stderr is not a terminal
    assert "\x1b[" not in again.stderr
    assert any(line[:20].endswith("Z") and "b: build started" in line
               for line in again.stderr.splitlines())


def _group_alive(pgids: set[int]) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) in pgids:
            return True
    return False


def test_kill_9_of_the_runner_then_the_same_command(tmp_path: Path) -> None:
    """No orphan is left; the rerun keeps every finished stage (stamp mtimes unchanged)
    and redoes the one that was running."""
    inv = fleet(tmp_path, {f"h{n}": {} for n in range(4)}, megabytes=120)
    batch_dir = tmp_path / "fleet.yml.batch"
    runner = subprocess.Popen([*P2VIMAGE, "batch", "run", os.fspath(inv),
                               "--max-in-flight", "1"], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while True:
        assert runner.poll() is None and time.monotonic() < deadline
        data = state.read(batch_dir) if (batch_dir / "state.json").exists() else None
        hosts = data["sections"]["run"]["hosts"] if data else {}
        done = [n for n, h in hosts.items() if h["status"] == "passed"]
        running = {n: h["stages"]["build"]["pid"] for n, h in hosts.items()
                   if h["status"] == "running" and h["stages"]["build"]["pid"]}
        if done and running:
            break
        time.sleep(0.05)
    before = stamps(batch_dir)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    pgids = set(running.values())
    deadline = time.monotonic() + 10
    while _group_alive(pgids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(pgids)
    seen = json.loads(p2v("--json", "batch", "status", inv, check=True).stdout)
    assert seen["runner_active"] is False
    [interrupted] = running
    assert seen["sections"]["run"]["hosts"][interrupted]["status"] == "interrupted"
    rerun = p2v("batch", "run", inv, "--max-in-flight", "1")
    assert rerun.returncode == 0, rerun.stderr
    after = stamps(batch_dir)
    assert set(after) == {f"h{n}" for n in range(4)}
    assert {n: after[n] for n in before} == before
    log = (batch_dir / f"hosts/{interrupted}/logs/build.log").read_text()
    assert log.count("=== ") == 2
    rep = json.loads((batch_dir / "report/report.json").read_text())
    assert {h["name"]: h["stages"][0]["attempts"] for h in rep["hosts"]} == {
        f"h{n}": 2 if f"h{n}" == interrupted else 1 for n in range(4)}
    assert not list(batch_dir.glob("hosts/*/.*partial*"))


def test_a_second_runner_cannot_start(tmp_path: Path) -> None:
    inv = fleet(tmp_path, {"a": {}})
    batch_dir = tmp_path / "fleet.yml.batch"
    assert p2v("batch", "run", inv).returncode == 0
    saved = digest(batch_dir / "state.json")
    with state.locked(batch_dir):
        proc = p2v("batch", "run", inv)
        assert_one_line_error(proc, 3, "another batch runner", str(os.getpid()))
        live = json.loads(p2v("--json", "batch", "status", inv, check=True).stdout)
        assert live["runner_active"] is True
    assert digest(batch_dir / "state.json") == saved


def test_refused_before_anything_runs(tmp_path: Path) -> None:
    inv = fleet(tmp_path, {"a": {"p2v_image": "same.raw"}, "b": {"p2v_image": "same.raw"}})
    batch_dir = tmp_path / "fleet.yml.batch"
    assert_one_line_error(p2v("batch", "run", inv), 2, "hosts a and b would both write")
    assert_one_line_error(p2v("batch", "run", inv, "--limit", "nosuch"), 2, "nosuch")
    assert_one_line_error(p2v("--workdir", tmp_path, "batch", "run", inv), 2, "--batch-dir")
    assert_one_line_error(p2v("batch", "run", inv, "--max-in-flight", "0"), 2, "0")
    assert_one_line_error(p2v("batch", "status", inv), 2, "no batch has run")
    assert_one_line_error(p2v("batch", "report", inv), 2, "no batch has run")
    assert_one_line_error(p2v("batch", "cutover", inv), 2, "--limit")
    assert_one_line_error(p2v("batch", "cutover", inv, "--limit", "wave1"), 2,
                          "no p2v_cutover for a, b")
    assert not batch_dir.exists()
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert_one_line_error(p2v("batch", "report", inv, "--merge", bad), 2, "not a p2vimage")


def test_report_merge_of_two_conversion_hosts(tmp_path: Path) -> None:
    """Two batch directories (two conversion hosts) each report their half; --merge on a
    third place gives the report of a batch over all of them."""
    inv = fleet(tmp_path, {"a": {}, "b": {}, "c": {"p2v_size": "2M"}})
    whole, one, two = (tmp_path / n for n in ("whole", "one", "two"))
    assert p2v("batch", "run", inv, "--batch-dir", whole).returncode == 1
    assert p2v("batch", "run", inv, "--limit", "a", "--batch-dir", one).returncode == 0
    assert p2v("batch", "run", inv, "--limit", "b,c", "--batch-dir", two).returncode == 1
    out = tmp_path / "merged"
    proc = p2v("--json", "batch", "report", inv, "--batch-dir", tmp_path / "controller",
               "--merge", one / "report/report.json", "--merge", two / "report/report.json",
               "-o", out)
    assert proc.returncode == 0, proc.stderr
    merged = json.loads(proc.stdout)
    full = json.loads((whole / "report/report.json").read_text())

    def verdicts(rep: dict[str, Any]) -> list[tuple[str, str, str | None]]:
        return [(h["name"], h["verdict"], h["failed_stage"]) for h in rep["hosts"]]

    assert verdicts(merged) == verdicts(full) == [("a", "pass", None), ("b", "pass", None),
                                                  ("c", "fail", "build")]
    assert merged["summary"] == full["summary"] and merged["waves"] == full["waves"]
    assert sorted(p.name for p in out.iterdir()) == ["junit.xml", "report.html", "report.json",
                                                     "report.md"]
    dup = p2v("batch", "report", inv, "--batch-dir", whole, "--merge", one / "report/report.json")
    assert_one_line_error(dup, 2, "host a is in two of the reports")


def cutover_fleet(tmp_path: Path) -> Path:
    spec = SPEC.replace('host = "ns1.example.org"', 'host = "127.0.0.1"\nport = 9')
    (tmp_path / "ns1.toml").write_text(spec)
    data = {"all": {"vars": {"p2v_stages": ["upload", "volume", "boot"], "p2v_flavor": "f",
                             "p2v_network": "n", "p2v_cutover": "ns1.toml"},
                    "children": {"wave1": {"hosts": {"h1": None, "h2": None, "h3": None}},
                                 "wave2": {"hosts": {"h4": None}}}}}
    path = tmp_path / "fleet.yml"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("share", "tried"), [("0", 1), ("40", 2), ("100", 3)])
def test_cutover_wave_stops_past_the_failure_share(tmp_path: Path, share: str,
                                                   tried: int) -> None:
    inv = cutover_fleet(tmp_path)
    proc = p2v("--json", "batch", "cutover", inv, "--limit", "wave1",
               "--max-fail-percentage", share)
    assert_one_line_error(proc, 1, f"cutover failed on {tried} of 3 host(s)",
                          "unreachable over ssh")
    hosts = json.loads(proc.stdout)["report"]["hosts"]
    assert [hosts[h]["status"] for h in ("h1", "h2", "h3")] == \
        ["failed"] * tried + ["not-run"] * (3 - tried)
    # each tried host ran its own cutover, with its own journal, and changed nothing
    for n in range(1, tried + 1):
        result = tmp_path / f"fleet.yml.batch/hosts/h{n}/logs/cutover.json"
        assert "refused, nothing changed" in json.loads(result.read_text())["error"]
    rep = json.loads((tmp_path / "fleet.yml.batch/report/report.json").read_text())
    assert {h["name"]: h["verdict"] for h in rep["hosts"]} == {
        f"h{n}": "fail" if n <= tried else "not run" for n in (1, 2, 3)}
    # a rollback with nothing begun undoes nothing, on every host of the wave
    back = p2v("batch", "rollback", inv, "--limit", "wave1")
    assert back.returncode == 0, back.stderr
    assert "h3: passed" in back.stdout


WATCHED = """
import os, sys, time
from p2vimage.host import run
with run.watchdog(600):
    print("ready", flush=True)
    time.sleep(600)
"""


def test_a_killed_process_leaves_no_watchdog_behind() -> None:
    """A stage killed with SIGKILL (as when the batch runner dies) takes its libguestfs
    watchdog along: nothing of its process group is left a second later (the watchdog's
    sleep used to linger for the whole budget)."""
    child = subprocess.Popen([*P2VIMAGE[:1], "-c", WATCHED], cwd=REPO, stdout=subprocess.PIPE,
                             start_new_session=True)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    time.sleep(0.5)
    child.kill()
    child.wait()
    deadline = time.monotonic() + 3
    while _group_alive({child.pid}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive({child.pid})
