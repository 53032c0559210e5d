"""The cutover in real network namespaces (tests/rig/netns.py): real bridges, veths, proxy
ARP, gratuitous ARP, a real sshd on the legacy host and the node, busybox httpd as the
services, the CLI as a real process running on the rig's desk.

The client sits behind the router: the neighbour entry that moves is the router's entry for the
public IP (see the rig's docstring) — legacy's MAC, the node's, legacy's again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2vimage.core.paths import cache_dir
from p2vimage.cutover.steps import STEP_NAMES
from tests.conftest import REPO, assert_one_line_error
from tests.rig.netns import (
    BRIDGE,
    LEGACY_MAINT,
    NODE_MAINT,
    PUBLIC_IP,
    Rig,
    habets_arping,
    have_netns,
    make_rig,
    sh,
)

pytestmark = [pytest.mark.root, pytest.mark.netns,
              pytest.mark.skipif(not have_netns(), reason="needs root, iproute2, busybox, sshd")]
RECOVERY: dict[str, float] = {}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    r = make_rig(tmp_path_factory.mktemp("rig"))
    yield r
    r.close()
    if RECOVERY:
        print("\nrecovery after an injected failure (s):", file=sys.stderr)
        for case, seconds in sorted(RECOVERY.items()):
            print(f"  {case:24} {seconds:.3f}", file=sys.stderr)


def assert_legacy(rig: Rig) -> None:
    """Everything as before the cutover: legacy answers, holds the public IP and its default
    route, the node has no bridge, route or maintenance address left."""
    assert rig.wait_for("legacy", seconds=10) >= 0
    assert f"{PUBLIC_IP}/24" in rig.addresses("legacy")
    assert f"{LEGACY_MAINT}/24" not in rig.addresses("legacy")
    assert "default via" in sh("ip", "-n", rig.ns["legacy"], "route").stdout
    assert f"{NODE_MAINT}/24" not in rig.addresses("node")
    assert sh("ip", "-n", rig.ns["node"], "link", "show", BRIDGE, check=False).returncode != 0
    assert PUBLIC_IP not in sh("ip", "-n", rig.ns["node"], "route").stdout
    assert rig.neigh("router") in ("", rig.mac("legacy"))
    rc = rig.top / "rc.local"
    assert not rc.exists() or "p2vimage-cutover" not in rc.read_text()


def status(rig: Rig, spec: Path, work: Path) -> dict[str, object]:
    proc = rig.cli("--json", "cutover", "status", spec, workdir=work)
    assert proc.returncode == 0, proc.stderr
    data: dict[str, object] = json.loads(proc.stdout)
    return data


@pytest.mark.parametrize("case", ["fast-local-iputils", "fast-ssh-habets", "seed-ssh-iputils"])
def test_run_then_rollback(rig: Rig, tmp_path: Path, case: str) -> None:
    profile, node, arping = case.split("-")
    wrapper = "arping"
    if arping == "habets":
        found = habets_arping(cache_dir())
        if found is None:
            pytest.skip("Habets' arping not unpacked (ci/setup does it)")
        wrapper = str(found / "arping")
    spec = rig.spec(tmp_path / "ns1.toml", node_ssh=node == "ssh", profile=profile,
                    arping=wrapper)
    work = tmp_path / "work"
    assert rig.get() == "legacy"
    assert rig.neigh("router") == rig.mac("legacy")

    proc = rig.cli("--json", "cutover", "run", spec, workdir=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["status"] == "done" and report["done"] == report["order"]
    assert report["downtime"] > 0
    assert rig.get() == "instance"
    assert rig.neigh("router") == rig.mac("node")  # the node's eth0 answers for the public IP
    assert PUBLIC_IP + "/24" not in rig.addresses("legacy")
    assert rig.get("desk") == "instance"  # a neighbour on the same segment too
    persisted = (rig.top / "rc.local").read_text()
    assert f"ip route add {PUBLIC_IP} dev {BRIDGE}" in persisted
    assert persisted.rstrip().endswith("exit 0")

    again = rig.cli("--json", "cutover", "run", spec, workdir=work)  # nothing left to do
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "done"

    back = rig.cli("--json", "cutover", "rollback", spec, workdir=work)
    assert back.returncode == 0, back.stderr[-3000:]
    assert json.loads(back.stdout)["status"] == "rolled-back"
    assert rig.get() == "legacy"
    assert rig.neigh("router") == rig.mac("legacy")
    assert_legacy(rig)


@pytest.mark.parametrize("kind", ["fail", "drop", "check"])
@pytest.mark.parametrize("step", STEP_NAMES)
def test_failure_rolls_back(rig: Rig, tmp_path: Path, step: str, kind: str) -> None:
    spec = rig.spec(tmp_path / "ns1.toml")
    work = tmp_path / "work"
    assert rig.get() == "legacy"
    json_after = ["--json"] if kind == "check" else []  # the output contract, after the verb
    proc = rig.cli("cutover", "run", spec, "--inject", f"{step}:{kind}", *json_after,
                   workdir=work)
    assert_one_line_error(proc, 1, f"failed at step {step}", "rolled back")
    if json_after:  # the error as JSON on stdout, with what the run did and undid
        error = json.loads(proc.stdout)
        assert error["exit_code"] == 1 and error["schema_version"] == 1
        assert f"failed at step {step}" in error["error"] and error["hint"]
        assert error["report"]["failed"] == step
        assert error["report"]["rollback"]["legacy_answers"] is True
    if kind == "drop":
        assert "ssh to the legacy host failed" in proc.stderr
    assert_legacy(rig)
    state = status(rig, spec, work)
    assert state["status"] == "rolled-back" and state["failed"] == step
    assert state["done"] == [] and state["started"] == []
    recovery = state["recovery"]
    assert isinstance(recovery, float)
    RECOVERY[f"{step}:{kind}"] = recovery
    assert recovery < 5


def _gated_spec(rig: Rig, tmp_path: Path) -> Path:
    """A spec whose final sync waits for the rig's sync-gate file."""
    gate = rig.top / "sync-gate"
    gate.unlink(missing_ok=True)
    (rig.top / "sync-started").unlink(missing_ok=True)
    hook = (f"touch {rig.top / 'sync-started'}; "
            f"while [ ! -e {gate} ]; do sleep 0.05; done")
    return rig.spec(tmp_path / "ns1.toml", final_sync=[hook])


def _start_blocked_runner(rig: Rig, spec: Path, work: Path) -> subprocess.Popen[str]:
    """A runner stuck in the final sync of a _gated_spec (the downtime has begun)."""
    proc = subprocess.Popen([*rig.exec("desk"), sys.executable, "-m", "p2vimage", "--workdir",
                             str(work), "cutover", "run", str(spec)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    journal = work / "cutover/journal.jsonl"
    deadline = time.monotonic() + 30
    while not (journal.exists() and '"step": "stop"' in journal.read_text()
               and (rig.top / "sync-started").exists()):
        assert proc.poll() is None and time.monotonic() < deadline, "runner never blocked"
        time.sleep(0.05)
    return proc


def _blocked_runner(rig: Rig, spec: Path, work: Path) -> subprocess.Popen[str]:
    """A runner stuck in the final sync, killed -9 there."""
    proc = _start_blocked_runner(rig, spec, work)
    other = rig.cli("cutover", "run", spec, workdir=work)
    assert_one_line_error(other, 3, "another cutover runner")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    return proc


@pytest.mark.parametrize("then", ["resume", "rollback"])
def test_runner_killed_mid_cutover(rig: Rig, tmp_path: Path, then: str) -> None:
    gate = rig.top / "sync-gate"
    spec = _gated_spec(rig, tmp_path)
    work = tmp_path / "work"
    _blocked_runner(rig, spec, work)

    state = status(rig, spec, work)
    assert state["status"] == "in-progress" and state["runner_active"] is False
    assert state["current"] == "stop" and state["phase"] == "do"
    assert state["done"] == ["maintenance", "bridge", "proxy-arp", "remove-ip"]
    human = rig.cli("cutover", "status", spec, workdir=work).stdout
    assert "stop         INTERRUPTED during do" in human

    if then == "resume":
        gate.touch()
        proc = rig.cli("--json", "cutover", "run", spec, workdir=work)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout)["status"] == "done"
        assert rig.get() == "instance"
        records = [json.loads(x) for x in (work / "cutover/journal.jsonl").read_text()
                   .splitlines()]
        assert [r["event"] for r in records].count("begin") == 1
        done = [r["step"] for r in records if r["event"] == "do-done"]
        assert done.count("maintenance") == 1 and done.count("stop") == 1
        assert rig.cli("cutover", "rollback", spec, workdir=work).returncode == 0
    else:
        proc = rig.cli("--json", "cutover", "rollback", spec, workdir=work)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout)["undone"] == ["stop", "remove-ip", "proxy-arp",
                                                     "bridge", "maintenance"]
    assert_legacy(rig)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_points_to_status_and_rollback(rig: Rig, tmp_path: Path,
                                                       sig: signal.Signals) -> None:
    """Ctrl-C (or SIGTERM) mid-cutover: the network is half moved, so the one line names the
    step and the exact status and rollback commands — never 'start over'."""
    spec = _gated_spec(rig, tmp_path)
    work = tmp_path / "work"
    proc = _start_blocked_runner(rig, spec, work)
    os.kill(proc.pid, sig)  # the python process itself: ip netns exec execs it
    _, stderr = proc.communicate(timeout=60)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    assert_one_line_error(done, 143 if sig == signal.SIGTERM else 130,
                          "interrupted during step stop",
                          f"p2vimage --workdir {work} cutover status {spec}",
                          f"p2vimage --workdir {work} cutover rollback {spec}")
    assert "start over" not in stderr
    state = status(rig, spec, work)
    assert state["status"] == "in-progress" and state["current"] == "stop"
    assert state["runner_active"] is False
    back = rig.cli("cutover", "rollback", spec, workdir=work)  # what the hint says
    assert back.returncode == 0, back.stderr[-3000:]
    assert_legacy(rig)


@pytest.mark.parametrize("missing", ["hook", "unboot", "node-arping", "legacy-stop"])
def test_missing_program_is_refused_before_any_change(rig: Rig, tmp_path: Path,
                                                      missing: str) -> None:
    """A program a step (or its undo) needs is missing on the host that runs it: refused
    with one line naming host and program before the first step (exit 3) — it used to stop
    the run inside the downtime with the public IP gone and no rollback."""
    gone = str(tmp_path / "no-such-service")
    hooks: dict[str, Any] = {
        "hook": {"final_sync": [["p2vimage-no-such-hook", "--final"]]},
        "unboot": {"unboot": [["p2vimage-no-such-unboot"]]}}.get(missing, {})
    arping = "p2vimage-no-such-arping" if missing == "node-arping" else "arping"
    spec = rig.spec(tmp_path / "ns1.toml", arping=arping, **hooks)
    if missing == "legacy-stop":
        text = spec.read_text()
        spec.write_text(text.replace(json.dumps(rig.service("legacy", "stop")),
                                     json.dumps([gone, "stop"])))
    work = tmp_path / "work"
    proc = rig.cli("cutover", "run", spec, workdir=work)
    where, program = {"hook": ("this host", "p2vimage-no-such-hook not found"),
                      "unboot": ("this host", "p2vimage-no-such-unboot not found"),
                      "node-arping": ("the node", "p2vimage-no-such-arping not found"),
                      "legacy-stop": (f"the legacy host {PUBLIC_IP}",
                                      f"{gone} missing or not executable")}[missing]
    assert_one_line_error(proc, 3, "nothing changed", f"{where}", program)
    assert rig.get() == "legacy"
    assert_legacy(rig)
    assert status(rig, spec, work)["status"] == "none"  # not even a run begun


@pytest.mark.parametrize("how", ["removed", "not-executable", "gone-from-path", "journal"])
def test_error_inside_the_downtime_rolls_back(rig: Rig, tmp_path: Path, how: str) -> None:
    """What the preflight saw is gone when the step runs — the hook's program removed or made
    non-executable, or the journal made unwritable (an OSError in the runner itself): the
    run rolls back like a failed step (exit 1) and the client reaches the legacy host."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    program = bindir / "p2v-test-hook"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    work = tmp_path / "work"
    journal = work / "cutover/journal.jsonl"
    before, hook, cause = {
        "removed": (f"rm {program}", [str(program)], "exit 127"),
        "not-executable": (f"chmod a-x {program}", [str(program)], "exit 126"),
        "gone-from-path": (f"rm {program}", [program.name], "p2v-test-hook not found"),
        "journal": (f"chattr +i {journal}", ["true"], "PermissionError")}[how]
    spec = rig.spec(tmp_path / "ns1.toml", final_sync=[before], refresh=[hook])
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    try:
        proc = rig.cli("cutover", "run", spec, workdir=work, env=env)
    finally:
        if journal.exists():
            sh("chattr", "-i", str(journal))
    assert_one_line_error(proc, 1, "failed at step stop", cause, "rolled back")
    assert rig.get() == "legacy"
    assert_legacy(rig)
    found = re.search(r"again ([0-9.]+) s after the failure", proc.stderr)
    assert found, proc.stderr
    assert float(found.group(1)) < 5
    RECOVERY[f"stop:{how}"] = float(found.group(1))
    state = status(rig, spec, work)
    if how == "journal":
        assert "the journal could not be written" in proc.stderr
    else:
        assert state["status"] == "rolled-back" and state["failed"] == "stop"


HOSTILE = "; rm -rf / $(touch {c}) `touch {c}` ' \" \\ |&<>*?"


def test_hostile_free_text_is_quoted(rig: Rig, tmp_path: Path) -> None:
    """Free-text spec values (commands, probe text, paths) carrying shell syntax reach the
    hosts as data: through the runner, over ssh and locally, and through the rendered
    scripts run by sh. A canary file would betray an injection."""
    canary = tmp_path / "pwned"
    evil = HOSTILE.format(c=canary)
    page = f"instance {evil}"
    (rig.top / "www-instance/index.html").write_text(page + "\n")
    # file names cannot hold '/': their canary is relative (to whatever the cwd would be)
    relative = HOSTILE.format(c=canary.name).replace("/", "_")
    log = tmp_path / f"hook {relative}.log"
    rc_local = tmp_path / f"rc {relative}.local"
    key = tmp_path / f"key {relative}"
    suspects = [canary, REPO / canary.name, rig.top / "home" / canary.name,
                Path("/") / canary.name, Path.cwd() / canary.name]
    shutil.copy(rig.legacy_ssh.key, key)
    try:
        spec = rig.spec(tmp_path / "ns1.toml", final_sync=[["sh", "-c", 'printf "%s" "$1" > "$2"',
                                                           "-", evil, str(log)]])
        text = spec.read_text()
        text = text.replace('expect = "instance"', f"expect = {json.dumps(page)}")
        text = text.replace(json.dumps(str(rig.top / "rc.local")), json.dumps(str(rc_local)))
        text = text.replace(json.dumps(str(rig.legacy_ssh.key)), json.dumps(str(key)))
        spec.write_text(text)
        work = tmp_path / "work"
        proc = rig.cli("cutover", "run", spec, workdir=work)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert rig.get() == page
        assert log.read_text() == evil  # the argv word arrived whole
        assert f"dev {BRIDGE}  # p2vimage-cutover" in rc_local.read_text()
        assert rig.cli("cutover", "rollback", spec, workdir=work).returncode == 0
        assert_legacy(rig)
        assert not any(p.exists() for p in suspects)

        scripts = tmp_path / "scripts"
        assert rig.cli("cutover", "render", spec, "-o", scripts).returncode == 0
        for name in ("run.sh", "rollback.sh"):
            assert sh("sh", "-n", str(scripts / name)).returncode == 0
        run_sh = subprocess.run([*rig.exec("desk"), "sh", str(scripts / "run.sh")],
                                capture_output=True, text=True, check=False)
        assert run_sh.returncode == 0, run_sh.stderr[-3000:]
        assert rig.get() == page and rig.neigh("router") == rig.mac("node")
        back = subprocess.run([*rig.exec("desk"), "sh", str(scripts / "rollback.sh")],
                              capture_output=True, text=True, check=False)
        assert back.returncode == 0, back.stderr[-3000:]
        assert_legacy(rig)
        assert not any(p.exists() for p in suspects)
    finally:
        (rig.top / "www-instance/index.html").write_text("instance\n")
