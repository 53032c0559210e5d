"""batch run over a fleet of five real legacy hosts (an OpenSSH server on 127.0.0.1 serving the
example trees and variants): every host synced, built, converted and smoke-booted, two at a
time; one host made to fail in convert (its kernel left out by an exclude). The runner is
killed with SIGKILL half-way and the same command run again: no finished stage is redone,
the interrupted ones are. The four reports agree, and the HTML page is read by a real
headless Chromium. One full run (plus the rerun) for all the tests of this module."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import P2VIMAGE, REPO, assert_one_line_error, needs_root, p2v
from tests.rig.sshd import Sshd, start_sshd

pytestmark = [pytest.mark.slow, pytest.mark.fixture, needs_root]

STAGES = ["sync", "build", "convert", "smoke"]
PAGE = "http:80:/:200:p2vimage fixture"


def inventory(top: Path, server: Sshd, trees: dict[str, Path]) -> Path:
    """Five hosts in two waves; nokernel's exclude leaves /boot's kernels out."""
    path = top / "fleet.yml"
    hosts = {
        "wave1": {
            "bullseye": {"p2v_source": server.url(trees["bullseye-i386"]),
                         "p2v_probes": [PAGE]},
            "bookworm": {"p2v_source": server.url(trees["bookworm-amd64"]),
                         "p2v_probes": [PAGE]},
            "nokernel": {"p2v_source": server.url(trees["bullseye-i386"]),
                         "p2v_excludes": ["/boot/vmlinuz-*"]},
        },
        "wave2": {
            "novirtio": {"p2v_source": server.url(trees["bullseye-i386-novirtio"])},
            "vda1": {"p2v_source": server.url(trees["bullseye-i386"]),
                     "p2v_root_device": "vda1", "p2v_bootloader": "extlinux",
                     "p2v_sync_profile": "none", "p2v_disable_hardware_services": True,
                     "p2v_default_probe": False, "p2v_probes": ["tcp:22:SSH-2.0"]},
        },
    }
    data = {"all": {"vars": {"p2v_stages": STAGES, "p2v_identity": str(server.key),
                             "p2v_ssh_options": [f"UserKnownHostsFile={server.known_hosts}"]},
                    "children": {w: {"hosts": h} for w, h in hosts.items()}}}
    path.write_text(json.dumps(data, indent=1))  # JSON is YAML
    return path


def read_state(batch_dir: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((batch_dir / "state.json").read_text())
    except FileNotFoundError:
        return {}
    return data


def stage_status(data: dict[str, Any]) -> dict[tuple[str, str], str]:
    hosts = data.get("sections", {}).get("run", {}).get("hosts", {})
    return {(h, s): e["status"] for h, rec in hosts.items() for s, e in rec["stages"].items()}


def stamps(batch_dir: Path) -> dict[str, int]:
    return {os.fspath(p.relative_to(batch_dir)): p.stat().st_mtime_ns
            for p in sorted(batch_dir.glob("hosts/*/work/*.stamp.json"))}


def group_alive(pgids: set[int]) -> list[str]:
    """Processes (not zombies) in one of the process groups ``pgids``."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) in pgids:
            alive.append(text[:80])
    return alive


@dataclasses.dataclass
class Fleet:
    top: Path
    inventory: Path
    batch_dir: Path
    killed_while: dict[tuple[str, str], str]  # (host, stage) → status when killed
    stamps_before: dict[str, int]
    status_live: dict[str, Any]
    status_after_kill: dict[str, Any]
    rerun: subprocess.CompletedProcess[str]
    seconds: float


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    from p2vimage.demo.examples import ensure_fixture

    trees = {n: ensure_fixture(n) for n in ("bullseye-i386", "bookworm-amd64",
                                            "bullseye-i386-novirtio")}
    top = tmp_path_factory.mktemp("fleet")
    sshd, server = start_sshd(top / "sshd")
    try:
        inv = inventory(top, server, trees)
        batch_dir = top / "fleet.yml.batch"  # the default: beside the inventory
        plan = json.loads(p2v("--json", "batch", "plan", inv, check=True).stdout)
        assert {h["name"]: h["to_run"] for h in plan["hosts"]} == {
            h: STAGES for h in ("bullseye", "bookworm", "nokernel", "novirtio", "vda1")}
        started = time.monotonic()
        argv = [*P2VIMAGE, "batch", "run", os.fspath(inv), "--max-in-flight", "2"]
        with open(top / "first.log", "w") as err:
            runner = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
            status_live: dict[str, Any] = {}
            deadline = time.monotonic() + 1500
            while True:  # until a convert passed and a boot stage runs
                assert runner.poll() is None, (top / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the batch made no progress"
                now = stage_status(read_state(batch_dir))
                running = [k for k, v in now.items() if v == "running"]
                if not status_live and running:  # another terminal's view, live
                    status_live = json.loads(p2v("--json", "batch", "status", inv).stdout)
                if any(v == "passed" and s == "convert" for (_, s), v in now.items()) and \
                        any(s in ("convert", "smoke") for _, s in running):
                    break
                time.sleep(0.5)
            data = read_state(batch_dir)
            killed_while = stage_status(data)
            pids = {e["pid"] for rec in data["sections"]["run"]["hosts"].values()
                    for e in rec["stages"].values() if e["status"] == "running" and e["pid"]}
            before = stamps(batch_dir)
            runner.send_signal(signal.SIGKILL)
            runner.wait()
        deadline = time.monotonic() + 20
        while group_alive(pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not group_alive(pids), group_alive(pids)  # no orphan: children, qemu
        after_kill = json.loads(p2v("--json", "batch", "status", inv, check=True).stdout)
        rerun = p2v("--json", "batch", "run", inv, "--max-in-flight", "2")
        seconds = time.monotonic() - started
        print(f"\nfleet of 5: first run killed, rerun ended: {seconds:.0f} s wall",
              file=sys.stderr)
        yield Fleet(top, inv, batch_dir, killed_while, before, status_live, after_kill,
                    rerun, seconds)
    finally:
        sshd.kill()
        sshd.wait()


def test_live_status_from_another_process(fleet: Fleet) -> None:
    live = fleet.status_live
    assert live["runner_active"] is True
    running = [h for h in live["sections"]["run"]["hosts"].values() if h["status"] == "running"]
    assert running and all(h["stage"] in STAGES and "elapsed" in h for h in running)
    assert all("last_line" in h for h in running)


def test_kill_leaves_interrupted_stages_then_rerun_redoes_only_them(fleet: Fleet) -> None:
    after = fleet.status_after_kill
    assert after["runner_active"] is False
    interrupted = {(h, s) for (h, s), v in fleet.killed_while.items() if v == "running"}
    assert interrupted
    for host, stage in interrupted:
        record = after["sections"]["run"]["hosts"][host]
        assert record["status"] == "interrupted" and \
            record["stages"][stage]["status"] == "interrupted"
    # the rerun: nokernel fails in convert, the others pass
    assert_one_line_error(fleet.rerun, 1, "1 of 5 host(s) failed", "nokernel", "convert",
                          "no kernel")
    result = json.loads(fleet.rerun.stdout)["report"]
    assert {h: v["status"] for h, v in result["hosts"].items()} == {
        "bullseye": "passed", "bookworm": "passed", "nokernel": "failed",
        "novirtio": "passed", "vda1": "passed"}
    # no finished stage redone: every stamp written before the kill is untouched
    now = stamps(fleet.batch_dir)
    assert fleet.stamps_before, "nothing had finished before the kill"
    for path, mtime in fleet.stamps_before.items():
        assert now.get(path) == mtime, f"{path} was written again"
    # the interrupted stages were redone (their log has a second attempt) and stamped
    rep = json.loads((fleet.batch_dir / "report/report.json").read_text())
    attempts = {(h["name"], s["name"]): s["attempts"]
                for h in rep["hosts"] for s in h["stages"]}
    for host, stage in interrupted:
        log = (fleet.batch_dir / "hosts" / host / "logs" / f"{stage}.log").read_text()
        assert log.count("=== ") == 2, log[-2000:]
        assert f"hosts/{host}/work/{stage}.stamp.json" in now
        assert attempts[host, stage] == 2
    for host in ("bullseye", "bookworm", "novirtio", "vda1"):
        assert {f"hosts/{host}/work/{s}.stamp.json" for s in STAGES} <= set(now)
    # no stage finished before the kill ran again: one attempt in its log
    for (host, stage), status in fleet.killed_while.items():
        if status == "passed":
            log = (fleet.batch_dir / "hosts" / host / "logs" / f"{stage}.log").read_text()
            assert log.count("=== ") == 1, (host, stage)
    # the built image's copy kept for convert is gone once convert passed (kept when it
    # failed: the next run starts convert from it, not from a new build)
    kept = fleet.batch_dir.glob("hosts/*/*.raw.built")
    assert [p.name for p in kept] == ["nokernel.raw.built"]
    plan = json.loads(p2v("--json", "batch", "plan", fleet.inventory, check=True).stdout)
    assert {h["name"]: h["to_run"] for h in plan["hosts"]} == {
        "bullseye": [], "bookworm": [], "nokernel": ["convert", "smoke"], "novirtio": [],
        "vda1": []}


class _Rows(HTMLParser):
    """The host rows of the report page: data-host → data-verdict, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, str] = {}
        self.text: list[str] = []
        self.tags: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.add(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href")]
        if found.get("data-host"):
            self.rows[found["data-host"] or ""] = found.get("data-verdict") or ""

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def reports(batch_dir: Path) -> dict[str, dict[str, str]]:
    """Host → verdict, as each of the four reports gives it."""
    folder = batch_dir / "report"
    data = json.loads((folder / "report.json").read_text())
    from_json = {h["name"]: h["verdict"] for h in data["hosts"]}
    from_junit = {}
    root = ET.parse(folder / "junit.xml").getroot()
    for case in root.iter("testcase"):
        from_junit[case.get("name") or ""] = "fail" if case.find("failure") is not None else \
            "not run" if case.find("skipped") is not None else "pass"
    from_md = {}
    for line in (folder / "report.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[1] in ("pass", "fail", "incomplete", "not run"):
            from_md[cells[0]] = cells[1]
    page = _Rows()
    page.feed((folder / "report.html").read_text())
    return {"json": from_json, "junit": from_junit, "markdown": from_md, "html": page.rows}


def test_reports_agree(fleet: Fleet) -> None:
    subprocess.run([*P2VIMAGE, "batch", "report", fleet.inventory], check=True, cwd=REPO,
                   capture_output=True)
    found = reports(fleet.batch_dir)
    expected = {"bullseye": "pass", "bookworm": "pass", "nokernel": "fail",
                "novirtio": "pass", "vda1": "pass"}
    for form, verdicts in found.items():
        assert verdicts == expected, form
    root = ET.parse(fleet.batch_dir / "report/junit.xml").getroot()
    suites = {s.get("name"): [c.get("name") for c in s.iter("testcase")]
              for s in root.iter("testsuite")}
    assert suites == {"wave1": ["bookworm", "bullseye", "nokernel"],
                      "wave2": ["novirtio", "vda1"]}
    failure = next(root.iter("failure"))
    assert failure.get("type") == "convert" and "no kernel" in (failure.get("message") or "")
    data = json.loads((fleet.batch_dir / "report/report.json").read_text())
    hosts = {h["name"]: h for h in data["hosts"]}
    assert hosts["nokernel"]["failed_stage"] == "convert"
    assert "no kernel" in hosts["nokernel"]["error"]
    for name in ("bullseye", "bookworm", "novirtio", "vda1"):
        smoke = json.loads(Path(hosts[name]["smoke_report"]).read_text())
        assert smoke["verdict"] == "pass" and Path(hosts[name]["console_log"]).is_file()
        assert [s["status"] for s in hosts[name]["stages"]] == ["passed"] * 4


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed: run ci/setup"
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", *args], capture_output=True, text=True,
                          check=True, timeout=120)


def test_html_report_in_headless_chromium(fleet: Fleet) -> None:
    page = fleet.batch_dir / "report/report.html"
    dom = chromium("--dump-dom", page.as_uri()).stdout
    rows = _Rows()
    rows.feed(dom)
    assert rows.rows == {"bullseye": "pass", "bookworm": "pass", "nokernel": "fail",
                         "novirtio": "pass", "vda1": "pass"}
    text = " ".join(" ".join(rows.text).split())
    for name in rows.rows:
        assert name in text
    assert "no kernel in /boot" in text
    # self-contained: no script, stylesheet link, image or frame; links only to local files
    assert not rows.tags & {"script", "link", "img", "iframe", "object"}
    assert rows.urls and all(u.startswith("file:///") for u in rows.urls), rows.urls
    shot = fleet.top / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1400,900", page.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"\nscreenshot: {shot}", file=sys.stderr)
    assert re.search(r"5 hosts", text)
