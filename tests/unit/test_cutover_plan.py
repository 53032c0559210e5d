"""Cutover plans, journal replay and lock, rendered scripts — pure logic, no network."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from p2vimage.core.errors import InputError, PreconditionError
from p2vimage.cutover import journal as jmod
from p2vimage.cutover import plan as planmod
from p2vimage.cutover import render as rendermod
from p2vimage.cutover import spec as specmod
from p2vimage.cutover.steps import STEP_NAMES
from tests.unit.test_cutover_spec import SPEC, write


@pytest.fixture
def spec(tmp_path: Path) -> specmod.Spec:
    return specmod.load(write(tmp_path, SPEC))


def lines(step: object, part: str) -> list[str]:
    return [c.command.line() for c in getattr(step, part)]


def test_fast_plan_stages_everything_before_the_stop(spec: specmod.Spec) -> None:
    plan = planmod.build(spec)
    names = [s.name for s in plan]
    assert sorted(names) == sorted(STEP_NAMES)
    assert names[:3] == ["maintenance", "bridge", "proxy-arp"]
    # the address leaves first: a rollback restarts the services before it comes back
    assert names[3:] == ["remove-ip", "stop", "boot", "route", "garp", "verify"]
    by = {s.name: s for s in plan}
    assert by["remove-ip"].starts_downtime and by["verify"].ends_downtime
    assert any("proxy_delay" in line for line in lines(by["proxy-arp"], "do"))
    assert "ip route replace 192.0.2.10 dev br2004" in lines(by["route"], "do")
    garp = lines(by["garp"], "do")[0]
    assert "stdbuf -oL arping -U -c 1 -I eth0" in garp and "-w 0" in garp and "Habets" in garp
    assert all(s.undo for s in plan if s.name != "verify")
    # the legacy host's maintenance address is added through its usual address
    assert by["maintenance"].do[0].via == "direct"


def test_seed_profile_replays_the_seed(tmp_path: Path) -> None:
    spec = specmod.load(write(tmp_path, SPEC), profile=specmod.Profile.SEED)
    plan = planmod.build(spec)
    assert [s.name for s in plan] == ["maintenance", "bridge", "remove-ip", "stop", "boot",
                                      "route", "proxy-arp", "garp", "verify"]
    by = {s.name: s for s in plan}
    assert "ip addr add 198.51.100.10/24 dev eth0" in lines(by["maintenance"], "do")
    assert "ip route add 192.0.2.10 dev br2004" in lines(by["route"], "do")
    assert not any("proxy_delay" in line for line in lines(by["proxy-arp"], "do"))
    assert "stdbuf" not in lines(by["garp"], "do")[0]
    assert spec.digest != specmod.load(spec.path).digest  # the profile is part of the run


def test_rc_local_persistence_lines(spec: specmod.Spec, tmp_path: Path) -> None:
    rc = tmp_path / "rc.local"
    rc.write_text("#!/bin/sh -e\necho hello\nexit 0\n")
    text = SPEC.replace('name = "ns1"', f'name = "ns1"\nrc_local = "{rc}"')
    steps = planmod.steps(specmod.load(write(tmp_path, text)))
    for name in ("bridge", "proxy-arp", "route"):
        for cmd in steps[name].do:
            if "rc.local" in cmd.command.line():
                subprocess.run(["sh", "-c", cmd.command.shell or ""], check=True)
    body = rc.read_text().splitlines()
    assert body[:2] == ["#!/bin/sh -e", "echo hello"] and body[-1] == "exit 0"
    assert "ip link add br2004 type bridge  # p2vimage-cutover ns1 bridge" in body
    assert "ip route add 192.0.2.10 dev br2004  # p2vimage-cutover ns1 route" in body
    for name in ("bridge", "proxy-arp", "route"):
        for cmd in steps[name].undo:
            if "rc.local" in cmd.command.line():
                subprocess.run(["sh", "-c", cmd.command.shell or ""], check=True)
    assert rc.read_text() == "#!/bin/sh -e\necho hello\nexit 0\n"


def test_inject_kinds(spec: specmod.Spec) -> None:
    assert planmod.parse_inject("route:drop") == ("route", "drop")
    for bad in ("route", "nowhere:fail", "route:explode"):
        with pytest.raises(InputError):
            planmod.parse_inject(bad)
    by = {s.name: s for s in planmod.build(spec, ("route", "fail"))}
    assert by["route"].do[-1].command.argv == ("false",)
    by = {s.name: s for s in planmod.build(spec, ("boot", "drop"))}
    assert by["boot"].do[-1].target == "legacy" and "kill -9" in lines(by["boot"], "do")[-1]
    by = {s.name: s for s in planmod.build(spec, ("verify", "check"))}
    assert "injected probe failure" in lines(by["verify"], "check")[0]


def test_journal_replay_and_torn_line(tmp_path: Path) -> None:
    j = jmod.Journal(tmp_path)
    j.write("begin", run="r1", digest="d", profile="fast")
    j.write("do-start", step="maintenance")
    j.write("do-done", step="maintenance", seconds=0.1)
    j.write("do-start", step="stop", starts_downtime=True)
    with j.path.open("a") as f:
        f.write('{"event": "do-do')  # a crash mid-write
    st = jmod.state(tmp_path)
    assert st.status == "in-progress" and st.done == ["maintenance"]
    assert st.current == "stop" and st.phase == "do" and st.started == ["maintenance", "stop"]
    j.path.write_text(j.path.read_text().rsplit("\n", 1)[0] + "\n")
    j.write("do-done", step="stop", seconds=1)
    j.write("do-start", step="verify")
    j.write("do-done", step="verify", ends_downtime=True)
    j.write("finished")
    st = jmod.state(tmp_path)
    assert st.status == "done" and st.downtime is not None and st.downtime >= 0
    for name in ("verify", "stop", "maintenance"):
        j.write("undo-start", step=name)
        j.write("undo-done", step=name)
    j.write("rolled-back", recovery=0.5)
    st = jmod.state(tmp_path)
    assert st.status == "rolled-back" and st.done == [] and st.started == []
    with pytest.raises(PreconditionError):
        jmod.check_digest(st, "other")


def test_lock_is_exclusive(tmp_path: Path) -> None:
    assert not jmod.is_locked(tmp_path)
    with jmod.locked(tmp_path):
        assert jmod.is_locked(tmp_path)
        with pytest.raises(PreconditionError, match="another cutover runner"), \
                jmod.locked(tmp_path):
            pass
    assert not jmod.is_locked(tmp_path)


def test_rendered_scripts_parse_and_quote(spec: specmod.Spec, tmp_path: Path) -> None:
    written = rendermod.render(spec, tmp_path / "out", force=False)
    run_sh = Path(written["run.sh"]).read_text()
    back = Path(written["rollback.sh"]).read_text()
    for path in written.values():
        subprocess.run(["sh", "-n", path], check=True)
    assert run_sh.startswith("#!/bin/sh\n") and "set -eu" in run_sh
    assert "# 5. stop:" in run_sh and "step=verify" in run_sh
    assert "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes" in run_sh
    assert "-o HostKeyAlias=ns1.example.org " in run_sh and " -- root@198.51.100.10 " in run_sh
    assert "ip netns exec client sh -c" in run_sh
    assert "# undo 9." not in back  # verify has nothing to undo
    assert back.index("undo 8. garp") < back.index("undo 1. maintenance")
    with pytest.raises(InputError, match="already exists"):
        rendermod.render(spec, tmp_path / "out", force=False)


def test_files_persistence(tmp_path: Path) -> None:
    sysctl, networkd = tmp_path / "sysctl.d", tmp_path / "network"
    text = SPEC.replace('name = "ns1"', f'name = "ns1"\npersist = "files"\n'
                        f'sysctl_dir = "{sysctl}"\nnetworkd_dir = "{networkd}"')
    steps = planmod.steps(specmod.load(write(tmp_path, text)))
    for name in ("bridge", "proxy-arp", "route"):
        for cmd in steps[name].do:
            if str(tmp_path) in cmd.command.line():
                subprocess.run(cmd.command.local_argv(), check=True)
    assert (networkd / "60-p2vimage-br2004.netdev").read_text() == \
        "[NetDev]\nName=br2004\nKind=bridge\n"
    assert (networkd / "60-p2vimage-br2004.network.d/p2vimage-route.conf").read_text() == \
        "[Route]\nDestination=192.0.2.10/32\n"
    assert "net.ipv4.neigh.br2004.proxy_delay = 0\n" in (sysctl / "60-p2vimage-ns1.conf") \
        .read_text()
    for name in ("bridge", "proxy-arp", "route"):
        for cmd in steps[name].undo:
            if str(tmp_path) in cmd.command.line():
                subprocess.run(cmd.command.local_argv(), check=True)
    assert list(sysctl.iterdir()) == [] and not (networkd / "60-p2vimage-br2004.netdev").exists()
