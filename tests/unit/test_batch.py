"""batch logic without qemu: a host's options become exactly the ``run`` the CLI would make of
them; the scheduler's limits, waiting reasons, failures and wave stop (with real child
processes); the reports' forms, their merge, and the HTML page's safety."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import signal
import sys
import threading
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from p2vimage import pipeline
from p2vimage.core.errors import InputError, Interrupted
from p2vimage.fleet import batch, hostrun, html, live, report, state
from p2vimage.fleet.inventory import load
from p2vimage.fleet.scheduler import Limits, Scheduler, Unit
from p2vimage.smoke.options import parse_probe

PROBES = ["tcp:22", "tcp:25:220 mail", "http:80", "http:8080:/status:204:",
          "http:80:/:200:Welcome: home", "ssh:uptime", "ssh:cat /etc/motd:hello world",
          "tcp:22:SSH-2.0@192.0.2.7", "http:80:/x:301:moved@10.0.0.1"]


@pytest.mark.parametrize("text", PROBES)
def test_probe_text_gives_the_probe_back(text: str) -> None:
    probe = parse_probe(text)
    assert parse_probe(hostrun.probe_text(probe)) == probe


def write_inventory(tmp_path: Path, hosts: dict[str, dict[str, Any]],
                    common: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "fleet.yml"
    data = {"all": {"vars": {"p2v_stages": ["sync", "build", "convert", "smoke"],
                             **(common or {})},
                    "children": {"wave1": {"hosts": hosts}}}}
    path.write_text(json.dumps(data))
    return path


def parsed_by_the_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The RunOptions the real ``run`` command makes of ``argv`` (its pipeline not run)."""
    from p2vimage.cli.main import cli

    seen: list[pipeline.RunOptions] = []

    class Stop(Exception):
        pass

    def capture(opts: pipeline.RunOptions) -> dict[str, Any]:
        seen.append(opts)
        raise Stop

    monkeypatch.setattr(pipeline, "run", capture)
    with pytest.raises(Stop):
        cli.main(args=argv[3:], prog_name="p2vimage", standalone_mode=False)
    return seen[0]


@pytest.mark.parametrize("remote", [True, False])
def test_the_stage_command_makes_the_run_options_plan_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remote: bool) -> None:
    """Every option a host can set reaches ``run`` and means there what batch plan assumes:
    the CLI's RunOptions for the stage command equal hostrun.run_options."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tmp_path / "id").write_text("key\n")
    (tmp_path / "ssh.conf").write_text("\n")
    busy = {"p2v_size": "3G", "p2v_filesystem": "ext3", "p2v_fs_features": "^metadata_csum",
            "p2v_bootloader": "extlinux", "p2v_root_device": "vda1", "p2v_swap_file": "512M",
            "p2v_disable_hardware_services": True, "p2v_initramfs_method": "appliance",
            "p2v_probes": PROBES, "p2v_default_probe": False}
    if remote:
        busy.update(p2v_source="ssh://admin@legacy.example.org:2222/srv/root",
                    p2v_identity="id", p2v_ssh_config="ssh.conf",
                    p2v_ssh_options=["ProxyJump=gw", "Ciphers=aes128-ctr"],
                    p2v_rsync_path="sudo rsync", p2v_accept_new_host_key=True,
                    p2v_excludes=["/home/*", "/var/log/*.gz"], p2v_bwlimit="20m",
                    p2v_sync_profile="none", p2v_staging="staging/legacy")
    else:
        busy.update(p2v_source="tree", p2v_stages=["build", "convert", "smoke"],
                    p2v_image="images/legacy.raw")
    inv = write_inventory(tmp_path, {"legacy": busy, "plain": {
        "p2v_source": "ssh://legacy2/" if remote else "tree",
        **({} if remote else {"p2v_stages": ["build", "convert", "smoke"]})}})
    fleet = load(inv)
    for host in fleet.hosts:
        where = hostrun.paths(host, tmp_path / "b")
        argv = hostrun.stage_argv(host, where, "convert")
        assert argv[:3] == [sys.executable, "-m", "p2vimage"]
        got = parsed_by_the_cli(argv, monkeypatch)
        assert (got.first, got.last, got.resume) == ("convert", "convert", True)
        want = hostrun.run_options(host, where)
        assert dataclasses.replace(got, first=None, last="smoke") == want
        assert pipeline.stage_options(got) == pipeline.stage_options(want)
    legacy = hostrun.run_options(fleet.host("legacy"), hostrun.paths(fleet.host("legacy"),
                                                                      tmp_path / "b"))
    if remote:
        assert legacy.sync is not None and legacy.sync.excludes == ("/home/*", "/var/log/*.gz")
        assert legacy.sync.bwlimit == "20m" and legacy.source == tmp_path / "staging/legacy"
    else:
        assert legacy.sync is None and legacy.image == tmp_path / "images/legacy.raw"
    assert legacy.smoke.probes == tuple(parse_probe(p) for p in PROBES)
    assert legacy.convert.swap_file_mib == 512 and legacy.build.size == 3 << 30


def test_default_places_and_stages(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path, {"a": {"p2v_source": "ssh://a/"},
                                     "b": {"p2v_source": "ssh://b/",
                                           "p2v_stages": ["sync", "build", "upload"]}})
    fleet = load(inv)
    assert hostrun.default_batch_dir(inv) == tmp_path / "fleet.yml.batch"
    where = hostrun.paths(fleet.host("a"), tmp_path / "B")
    assert (where.image, where.staging, where.work, where.log("smoke")) == (
        tmp_path / "B/hosts/a/a.raw", tmp_path / "B/hosts/a/staging", tmp_path / "B/hosts/a/work",
        tmp_path / "B/hosts/a/logs/smoke.log")
    assert hostrun.runnable(fleet.host("a"), until="convert") == ("sync", "build", "convert")
    assert hostrun.runnable(fleet.host("b")) == ("sync", "build", "upload")  # run has it
    assert hostrun.unavailable(fleet.host("b")) == ()


def test_two_hosts_writing_one_image_are_refused(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path, {"a": {"p2v_source": "ssh://a/", "p2v_image": "x.raw"},
                                     "b": {"p2v_source": "ssh://b/", "p2v_image": "x.raw"}})
    with pytest.raises(InputError, match="hosts a and b would both write"):
        hostrun.check_apart(load(inv).hosts, tmp_path / "B")


# -- the scheduler, with real child processes -------------------------------------------

CHILD = """
import json, os, sys, time
host, stage, seconds, code, journal = sys.argv[1:6]
with open(journal, "a") as f:
    f.write(f"start {host} {stage} {time.monotonic()}\\n")
print(f"{stage} of {host} working", file=sys.stderr, flush=True)
time.sleep(float(seconds))
with open(journal, "a") as f:
    f.write(f"end {host} {stage} {time.monotonic()}\\n")
if code == "0":
    print(json.dumps({"stages": {stage: {"seconds": 1}}}))
else:
    print(json.dumps({"error": f"{stage} of {host} broke", "hint": "fix it",
                      "exit_code": int(code)}))
sys.exit(int(code))
"""


@dataclasses.dataclass
class Rig:
    top: Path
    journal: Path
    snapshots: list[dict[str, Any]]

    def units(self, host: str, stages: list[str], seconds: float = 0.3,
              fail: str | None = None) -> list[Unit]:
        return [Unit(host, s, (sys.executable, "-c", CHILD, host, s, str(seconds),
                               "2" if s == fail else "0", os.fspath(self.journal)),
                     self.top / host / f"{s}.log", self.top / host / f"{s}.json")
                for s in stages]

    def run(self, queues: dict[str, list[Unit]], limits: Limits) -> dict[str, Any]:
        hosts = {name: {"name": name, "status": "queued", "waiting": None, "stages": {
            u.stage: {"status": "pending"} for u in units}} for name, units in queues.items()}
        section: dict[str, Any] = {"hosts": hosts}
        Scheduler(section, hosts, queues, limits,
                  lambda: self.snapshots.append(copy.deepcopy(hosts)),
                  live.Live(tty=False)).run()
        return section

    def most_at_once(self, stages: set[str] | None = None) -> int:
        """The most children (of these stages) that ran at the same time."""
        events = []
        for line in self.journal.read_text().splitlines():
            what, _host, stage, when = line.split()
            if stages is None or stage in stages:
                events.append((float(when), 1 if what == "start" else -1))
        now = most = 0
        for _, step in sorted(events, key=lambda e: (e[0], e[1])):
            now += step
            most = max(most, now)
        return most


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path, tmp_path / "journal", [])


def test_limits_hold_and_waiting_hosts_say_why(rig: Rig) -> None:
    queues = {h: rig.units(h, ["build", "convert", "smoke"]) for h in "abcd"}
    section = rig.run(queues, Limits(in_flight=3, caps={"boot": 1}))
    assert {h["status"] for h in section["hosts"].values()} == {"passed"}
    assert rig.most_at_once() == 3
    assert rig.most_at_once({"convert", "smoke"}) == 1
    reasons = {h["waiting"] for snap in rig.snapshots for h in snap.values() if h["waiting"]}
    assert any("--max-boots 1" in r for r in reasons), reasons
    assert any("--max-in-flight 3" in r for r in reasons), reasons
    # each host's stages ran in order, one at a time
    for host in "abcd":
        mine = [line.split()[2] for line in rig.journal.read_text().splitlines()
                if line.split()[1] == host and line.startswith("start")]
        assert mine == ["build", "convert", "smoke"]


def test_one_failed_host_does_not_stop_the_others(rig: Rig) -> None:
    queues = {"a": rig.units("a", ["build", "convert", "smoke"]),
              "b": rig.units("b", ["build", "convert", "smoke"], fail="convert"),
              "c": rig.units("c", ["build", "convert", "smoke"])}
    hosts = rig.run(queues, Limits(in_flight=2))["hosts"]
    assert {n: h["status"] for n, h in hosts.items()} == {"a": "passed", "b": "failed",
                                                          "c": "passed"}
    b = hosts["b"]
    assert (b["failed_stage"], b["error"]) == ("convert", "convert of b broke (hint: fix it)")
    assert [b["stages"][s]["status"] for s in ("build", "convert", "smoke")] == [
        "passed", "failed", "not-run"]
    assert "smoke b" not in rig.journal.read_text()
    assert Path(b["stages"]["convert"]["log"]).read_text().count("convert of b working") == 1


@pytest.mark.parametrize(("share", "ran"), [(0.0, 1), (0.25, 2), (0.5, 3), (None, 4)])
def test_a_wave_stops_once_too_many_hosts_failed(rig: Rig, share: float | None,
                                                 ran: int) -> None:
    queues = {h: rig.units(h, ["cutover"], 0.1, fail="cutover") for h in "abcd"}
    section = rig.run(queues, Limits(in_flight=1, max_fail=share))
    statuses = [h["status"] for h in section["hosts"].values()]
    assert statuses == ["failed"] * ran + ["not-run"] * (4 - ran)
    assert ("stopped" in section) == (share is not None)
    if share is not None:
        assert section["hosts"]["d"]["error"].startswith("wave stopped:")


def test_interrupt_stops_every_child_and_records_it(rig: Rig) -> None:
    queues = {h: rig.units(h, ["build", "convert"], seconds=60) for h in "abc"}
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(Interrupted, match="2 stage"):
        rig.run(queues, Limits(in_flight=2))
    assert time.monotonic() - started < 20
    last = rig.snapshots[-1]
    assert [last[h]["status"] for h in "abc"] == ["interrupted", "interrupted", "queued"]
    assert last["a"]["stages"]["build"]["status"] == "interrupted"
    pids = [e["pid"] for s in rig.snapshots[:2] for h in s.values()
            for e in h["stages"].values() if e.get("pid")]
    assert pids and not any(Path(f"/proc/{p}").exists() for p in pids)


def test_a_unit_that_cannot_start_fails_its_host(rig: Rig) -> None:
    def prepare(unit: Unit) -> None:
        if unit.host == "a":
            raise InputError("no room for the copy", hint="free some")

    queues = {h: rig.units(h, ["build"]) for h in "ab"}
    hosts = {n: {"name": n, "status": "queued", "waiting": None,
                 "stages": {"build": {"status": "pending"}}} for n in queues}
    Scheduler({"hosts": hosts}, hosts, queues, Limits(in_flight=2), lambda: None,
              live.Live(tty=False), prepare=prepare).run()
    assert hosts["a"]["status"] == "failed" and "no room" in hosts["a"]["error"]
    assert hosts["b"]["status"] == "passed"


# -- reports ------------------------------------------------------------------------------

def stage(status: str, start: float | None = None, took: float = 10,
          error: str | None = None) -> dict[str, Any]:
    if start is None:
        return {"status": status}
    return {"status": status, "started": start, "finished": start + took, "error": error,
            "log": f"/b/logs/{start}.log"}


def record(name: str, wave: str, stages: dict[str, Any], status: str,
           error: str | None = None) -> dict[str, Any]:
    return {"name": name, "wave": wave, "waves": [wave], "conversion_host": "c1",
            "status": status, "error": error, "stages": stages}


def fleet_state(names: list[str]) -> dict[str, Any]:
    every = {
        "web2": record("web2", "wave1", {"build": stage("passed", 100), "smoke":
                                         stage("passed", 110)}, "passed"),
        "web10": record("web10", "wave1", {"build": stage("done-before"),
                                           "smoke": stage("passed", 105)}, "passed"),
        "db1": record("db1", "wave2", {"build": stage("passed", 100), "smoke": stage(
            "failed", 120, error="smoke failed at login | <script>alert(1)</script>")},
            "failed"),
        "mx1": record("mx1", "wave2", {"build": stage("interrupted", 130),
                                       "smoke": stage("pending")}, "interrupted"),
        "ns1": record("ns1", "wave3", {"build": stage("pending")}, "queued"),
    }
    data = state.new(Path("/inv/fleet.yml"))
    data["sections"]["run"] = {"hosts": {n: every[n] for n in names}}
    return data


def test_verdicts_and_natural_order() -> None:
    rep = report.build(fleet_state(["web10", "web2", "db1", "mx1", "ns1"]), "c1")
    assert [(h["name"], h["verdict"]) for h in rep["hosts"]] == [
        ("db1", "fail"), ("mx1", "incomplete"), ("ns1", "not run"), ("web2", "pass"),
        ("web10", "pass")]
    assert rep["summary"] == {"hosts": 5, "pass": 2, "fail": 1, "incomplete": 1,
                              "not run": 1}
    assert rep["waves"] == {"wave1": ["web2", "web10"], "wave2": ["db1", "mx1"],
                            "wave3": ["ns1"]}
    db1 = rep["hosts"][0]
    assert db1["failed_stage"] == "smoke" and db1["error"].startswith("smoke failed")


def comparable(rep: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rep.items() if k not in ("generated", "sources")}


def test_merged_reports_equal_one_report_over_all_hosts(tmp_path: Path) -> None:
    whole = report.build(fleet_state(["web2", "web10", "db1", "mx1", "ns1"]), "c1")
    one = report.build(fleet_state(["web10", "mx1"]), "c1")
    two = report.build(fleet_state(["ns1", "db1", "web2"]), "c2")
    merged = report.merge([one, two])
    assert comparable(merged) == comparable(whole)
    assert [s["conversion_host"] for s in merged["sources"]] == ["c1", "c2"]
    # the same through files, as the CLI reads them (JSON round trip)
    for name, rep in (("one", one), ("two", two)):
        report.write_all(rep, tmp_path / name)
    again = report.merge([report.load(tmp_path / n / "report.json") for n in ("one", "two")])
    assert comparable(again) == comparable(whole)
    assert report.junit(again) == report.junit(merged)
    with pytest.raises(InputError, match="host db1 is in two of the reports"):
        report.merge([whole, two])


def test_junit_markdown_and_html_say_the_same(tmp_path: Path) -> None:
    rep = report.build(fleet_state(["web2", "web10", "db1", "mx1", "ns1"]), "c1")
    root = ET.fromstring(report.junit(rep))
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert list(suites) == ["wave1", "wave2", "wave3"]
    assert (suites["wave2"].get("tests"), suites["wave2"].get("failures"),
            suites["wave2"].get("skipped")) == ("2", "1", "1")
    failure = suites["wave2"].find("testcase/failure")
    assert failure is not None and failure.get("type") == "smoke"
    assert "<script>" in (failure.get("message") or "")  # escaped in XML, read back intact
    md = report.markdown(rep)
    assert "| db1 | fail | build 10 s, smoke failed | smoke | smoke failed at login \\| " \
           "<script>" in md
    assert "| web10 | pass | build done before, smoke 10 s |  |  |" in md
    page = html.render(rep)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    rows = re.findall(r'data-host="([^"]+)" data-verdict="([^"]+)"', page)
    assert dict(rows) == {h["name"]: h["verdict"] for h in rep["hosts"]}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "action")]


def test_html_page_is_self_contained() -> None:
    rep = report.build(fleet_state(["web2", "db1"]), "c1")
    rep["hosts"][0]["console_log"] = "/b/hosts/db1/work/smoke/console.log"
    page = html.render(rep)
    parser = _Tags()
    parser.feed(page)
    assert not parser.tags & {"script", "link", "img", "iframe", "object", "embed", "form"}
    assert parser.urls and all(u.startswith("file:///") for u in parser.urls), parser.urls
    assert "url(" not in page and "@import" not in page
    assert "file:///b/hosts/db1/work/smoke/console.log" in page


def test_a_report_that_is_not_one_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"kind": "something else"}')
    with pytest.raises(InputError, match="not a p2vimage batch report"):
        report.load(tmp_path / "x.json")
    with pytest.raises(InputError, match="cannot read report"):
        report.load(tmp_path / "missing.json")


# -- state and display ----------------------------------------------------------------------

def test_a_killed_runner_leaves_stages_shown_interrupted(tmp_path: Path) -> None:
    data = fleet_state(["web2", "mx1"])
    mx1 = data["sections"]["run"]["hosts"]["mx1"]
    mx1.update(status="running", started=1.0, stage="build")
    mx1["stages"]["build"]["status"] = "running"
    section = state.settled(copy.deepcopy(data["sections"]["run"]), active=False)
    assert section["hosts"]["mx1"]["status"] == "interrupted"
    assert section["hosts"]["mx1"]["stages"]["build"]["status"] == "interrupted"
    assert state.settled(copy.deepcopy(data["sections"]["run"]), active=True) == \
        data["sections"]["run"]


def test_the_lock_keeps_a_second_runner_out(tmp_path: Path) -> None:
    from p2vimage.core.errors import PreconditionError

    with state.locked(tmp_path):
        assert state.runner_active(tmp_path)
        with pytest.raises(PreconditionError, match=f"pid {os.getpid()}"), \
                state.locked(tmp_path):
            pass
    assert not state.runner_active(tmp_path)


def test_state_is_replaced_whole(tmp_path: Path) -> None:
    data = fleet_state(["web2"])
    state.write(tmp_path, data)
    assert state.read(tmp_path) == data
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left
    (tmp_path / "state.json").write_text("{}")
    with pytest.raises(InputError, match="not a p2vimage batch state"):
        state.read(tmp_path)


def test_live_table_and_last_line(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_bytes(b"first\n" + b"x" * 10000 + b"\n2026 build: 40% 400M/1G\r50% 500M/1G\n\n")
    assert state.last_line(log) == "50% 500M/1G"
    assert live.clock(65) == "01:05" and live.clock(3725) == "1:02:05"
    hosts = {"a": {"status": "running"}, "b": {"status": "waiting", "waiting": "2 in flight"},
             "c": {"status": "waiting", "waiting": "2 in flight"}, "d": {"status": "passed"}}
    lines = live.table(hosts, [("a", "convert", time.time() - 61, log)], 60, 5, time.time())
    assert lines[0] == "4 hosts: 1 running, 2 waiting, 1 passed"
    assert lines[2].startswith("a                convert      01:01  50% 500M")
    assert lines[3].startswith("b                waiting") and "2 in flight" in lines[3]
    assert lines[4] == "… and 1 more waiting" and all(len(x) <= 60 for x in lines)


def test_status_lines_show_what_each_host_does(tmp_path: Path) -> None:
    data = fleet_state(["web2", "db1", "mx1"])
    data["sections"]["run"].update(started=1.0, finished=None)
    state.write(tmp_path, data)
    seen = batch.status(tmp_path)
    assert seen["runner_active"] is False
    text = "\n".join(batch.status_lines(seen))
    assert "run: 3 hosts: 1 passed, 1 failed, 1 interrupted" in text
    assert "the runner stopped before the end" in text
