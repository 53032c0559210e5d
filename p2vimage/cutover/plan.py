"""The cutover plans: the fast default and the seed's by-hand procedure, as steps.

Both move the public IP from the legacy host to an instance behind the node's tenant bridge,
which the node routes to and answers ARP for (proxy ARP); the legacy host and the node keep a
maintenance address on the same segment throughout, so rollback can always reach them.

**fast** (default) stages everything that does not need the services stopped — maintenance
addresses, bridge, proxy ARP with ``proxy_delay`` 0 (the kernel otherwise delays each proxied
ARP answer by up to 0.8 s) — then: remove the IP, stop services + final sync, boot, route,
one gratuitous ARP (not waiting for arping's 1 s reply window), probe.
**seed** replays the seed's order and commands: remove the IP, stop, boot, route, then proxy
ARP, then ``arping -U -c 1`` waited out.

Every value reaches a shell through :func:`shlex.quote` (or an argv list); see steps.py.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Sequence

from p2vimage.core.errors import InputError
from p2vimage.cutover.spec import Profile, Spec
from p2vimage.cutover.steps import STEP_NAMES, Cmd, Command, Need, Step, Target

q = shlex.quote
INJECT_KINDS = ("fail", "drop", "check")
# Kills the sshd process serving this very connection: a real dropped ssh session.
DROP_SSH = ("p=$$; while [ \"$p\" -gt 1 ]; do case \"$(cat /proc/$p/comm)\" in sshd*) "
            "kill -9 \"$p\"; exit 0;; esac; p=$(sed 's/.*) //' /proc/$p/stat | cut -d' ' -f2);"
            " done; echo 'not under sshd' >&2; exit 1")


def _marker(spec: Spec, step: str) -> str:
    return f"p2vimage-cutover {spec.name} {step}"


def _persist_lines(spec: Spec, step: str, lines: Sequence[str]) -> Command:
    """Add LINES (each tagged with a marker comment) to rc.local, before its 'exit 0'."""
    f, mark = q(str(spec.rc_local)), _marker(spec, step)
    tagged = " ".join(q(f"{line}  # {mark}") for line in lines)
    return Command.sh(
        f"f={f}; [ -e \"$f\" ] || printf '#!/bin/sh -e\\n' > \"$f\"; "
        f"{{ grep -vF -e {q('# ' + mark)} \"$f\" | grep -vx 'exit 0' || true; "
        f"printf '%s\\n' {tagged} 'exit 0'; }} > \"$f.p2v\" && chmod 755 \"$f.p2v\" && "
        f"mv \"$f.p2v\" \"$f\"")


def _unpersist_lines(spec: Spec, step: str) -> Command:
    f, mark = q(str(spec.rc_local)), _marker(spec, step)
    return Command.sh(
        f"f={f}; [ ! -e \"$f\" ] || {{ {{ grep -vF -e {q('# ' + mark)} \"$f\" || true; }} "
        f"> \"$f.p2v\" && chmod 755 \"$f.p2v\" && mv \"$f.p2v\" \"$f\"; }}")


def _write_file(path: str, lines: Sequence[str]) -> Command:
    d = path.rsplit("/", 1)[0] or "/"
    return Command.sh(f"mkdir -p {q(d)} && printf '%s\\n' {' '.join(q(x) for x in lines)} "
                      f"> {q(path + '.p2v')} && mv {q(path + '.p2v')} {q(path)}")


def _persist(spec: Spec, step: str, rc_lines: Sequence[str],
             files: dict[str, list[str]]) -> tuple[list[Command], list[Command]]:
    """Commands making a step survive a reboot, and their undo (per ``persist``)."""
    if spec.persist == "rc.local" and rc_lines:
        return [_persist_lines(spec, step, rc_lines)], [_unpersist_lines(spec, step)]
    if spec.persist == "files" and files:
        return ([_write_file(p, lines) for p, lines in files.items()],
                [Command.of("rm", "-f", *files)])
    return [], []


def _garp(spec: Spec, iface: str, fast: bool, temporary: bool) -> Command:
    """A gratuitous ARP for the public IP from IFACE, with either arping implementation.

    iputils (-I) needs the address to be local when it starts and then waits 1 s for replies
    that never come; Habets' (-i, -S) does not care, and exits 1 without replies. TEMPORARY
    adds the address for the send, as the seed did — but while it is there the node answers
    for it itself, so the fast profile removes it as soon as iputils' arping is past its
    start (its banner, line-buffered) instead of after its 1 s.
    """
    ip, arp, i = q(spec.address), q(spec.node.arping if temporary else "arping"), q(iface)
    habets = f"{arp} -q -U -c 1 -i {i} -S {ip} {ip}"
    if fast:
        habets = habets.replace(" -c 1 ", " -c 1 -w 0 ")
        iputils = (f"f=$(mktemp) || exit 1; stdbuf -oL {arp} -U -c 1 -I {i} {ip} "
                   f"</dev/null >\"$f\" 2>&1 & pid=$!; n=0; until grep -q '^ARPING' \"$f\" || "
                   "! kill -0 $pid 2>/dev/null || [ $n -ge 200 ]; do sleep 0.005; n=$((n+1)); "
                   "done; sleep 0.01; rc=0; grep -q '^ARPING' \"$f\" || { cat \"$f\" >&2; "
                   "rc=1; }; rm -f \"$f\"")
    else:
        iputils = f"{arp} -q -U -c 1 -I {i} {ip}; rc=$?"
    send = (f"if {arp} --help 2>&1 | grep -q Habets; then out=$({habets} 2>&1); rc=0; "
            f"[ -z \"$out\" ] || {{ echo \"$out\" >&2; rc=1; }}; else {iputils}; fi")
    if not temporary:  # the legacy host on rollback: it owns the address again
        return Command.sh(f"command -v {arp} >/dev/null || {{ echo 'no arping: neighbours "
                          f"learn the address back when their entry expires' >&2; exit 0; }}; "
                          f"{send}; exit $rc")
    return Command.sh(f"ip addr replace {ip}/32 dev {i} || exit 1; {send}; "
                      f"ip addr del {ip}/32 dev {i}; exit $rc")


def _has_addr(iface: str, addr: str, present: bool = True) -> Command:
    test = f"ip -o -4 addr show dev {q(iface)} | grep -qF -- {q(f'inet {addr} ')}"
    return Command.sh(test if present else f"! {test}")


def steps(spec: Spec) -> dict[str, Step]:
    """Every step of SPEC's profile, by name (ordering is :func:`build`'s)."""
    fast = spec.profile == Profile.FAST
    lg, nd, pr = spec.legacy, spec.node, spec.probe
    add = "replace" if fast else "add"
    br, nif, lif = nd.bridge, nd.interface, lg.interface
    pub = str(spec.public_ip)
    out: dict[str, Step] = {}
    # what the shell commands below run (argv programs are read from the commands)
    persists = (Need("node", writable=str(spec.rc_local.parent)),) \
        if spec.persist == "rc.local" else ()

    out["maintenance"] = Step(
        "maintenance", "maintenance addresses on the legacy host and the node",
        do=(Cmd("legacy", Command.of("ip", "addr", add, str(lg.maintenance_ip), "dev", lif),
                via="direct"),
            Cmd("node", Command.of("ip", "addr", add, str(nd.maintenance_ip), "dev", nif))),
        undo=(Cmd("node", Command.of("ip", "addr", "del", str(nd.maintenance_ip), "dev", nif)),
              Cmd("legacy", Command.of("ip", "addr", "del", str(lg.maintenance_ip), "dev", lif),
                  via="direct")),
        # checked through the maintenance address: proves the runner reaches the legacy host
        # that way before its public address moves (and opens the shared connection)
        check=(Cmd("legacy", _has_addr(lif, str(lg.maintenance_ip))),
               Cmd("node", _has_addr(nif, str(nd.maintenance_ip)))),
        needs=(Need("legacy", "grep"), Need("node", "grep")))

    create = Command.of("ip", "link", "add", br, "type", "bridge")
    if fast:
        create = Command.sh(f"ip link show dev {q(br)} >/dev/null 2>&1 || {create.line()}")
    netdev = f"{spec.networkd_dir}/60-p2vimage-{br}"
    pdo, pundo = _persist(spec, "bridge", [
        f"ip link add {q(br)} type bridge", f"ip link set {q(br)} up"],
        {f"{netdev}.netdev": ["[NetDev]", f"Name={br}", "Kind=bridge"],
         f"{netdev}.network": ["[Match]", f"Name={br}", "[Network]",
                               "ConfigureWithoutCarrier=yes"]})
    out["bridge"] = Step(
        "bridge", f"tenant bridge {br} on the node",
        do=(Cmd("node", create), Cmd("node", Command.of("ip", "link", "set", br, "up")),
            *(Cmd("node", c) for c in pdo)),
        undo=(*(Cmd("node", c) for c in pundo), Cmd("node", Command.of("ip", "link", "del", br))),
        check=(Cmd("node", Command.sh(f"ip -d link show dev {q(br)} | grep -qw bridge")),),
        needs=(Need("node", "ip"), Need("node", "grep"), *persists))

    conf = "/proc/sys/net/ipv4/conf"
    knobs = [f"{conf}/{nif}/proxy_arp", f"{conf}/{br}/proxy_arp"]
    delays = [f"/proc/sys/net/ipv4/neigh/{x}/proxy_delay" for x in (nif, br)] if fast else []
    writes = [f"echo 1 > {q(k)}" for k in knobs] + [f"echo 0 > {q(k)}" for k in delays]
    sysctl = [f"net.ipv4.conf.{x}.proxy_arp = 1" for x in (nif, br)]
    sysctl += [f"net.ipv4.neigh.{x}.proxy_delay = 0" for x in (nif, br)] if fast else []
    pdo, pundo = _persist(spec, "proxy-arp", writes,
                          {f"{spec.sysctl_dir}/60-p2vimage-{spec.name}.conf": sysctl})
    out["proxy-arp"] = Step(
        "proxy-arp", f"proxy ARP on {nif} and {br}" + (", no proxy delay" if fast else ""),
        do=(Cmd("node", Command.sh("; ".join(w + " || exit 1" for w in writes))),
            *(Cmd("node", c) for c in pdo)),
        undo=(*(Cmd("node", c) for c in pundo),
              Cmd("node", Command.sh("; ".join([f"echo 0 > {q(k)}" for k in knobs]
                                               + [f"echo 80 > {q(k)}" for k in delays])))),
        check=(Cmd("node", Command.sh(" && ".join(f"[ \"$(cat {q(k)})\" = 1 ]"
                                                 for k in knobs))),),
        # the bridge's knobs appear with the bridge; the interface's must be writable now
        needs=(*(Need("node", writable=k) for k in (knobs[0], *delays[:1])), *persists))

    hooks = spec.hooks
    out["stop"] = Step(
        "stop", "stop the services on the legacy host; final sync, image refresh, volume",
        do=(*(Cmd("legacy", c) for c in lg.stop),
            *(Cmd("local", c) for c in (*hooks.final_sync, *hooks.refresh, *hooks.volume))),
        undo=tuple(Cmd("legacy", c) for c in lg.start), starts_downtime=True)

    state = f"/run/p2vimage-cutover-{spec.name}.routes"
    out["remove-ip"] = Step(
        "remove-ip", f"remove {pub} from the legacy host",
        # removing the address also removes the routes through it (the default route): keep
        # them for the undo
        do=(Cmd("legacy", Command.sh(
            f"ip -4 route show table main | grep -v ' proto kernel ' > {q(state)}; "
            f"ip addr del {q(pub)} dev {q(lif)}")),),
        undo=(Cmd("legacy", Command.sh(
            f"ip addr replace {q(pub)} dev {q(lif)} || exit 1; [ ! -f {q(state)} ] || "
            f"while read -r r; do ip route replace $r || true; done < {q(state)}")),
            Cmd("legacy", _garp(spec, lif, True, temporary=False))),
        check=(Cmd("legacy", _has_addr(lif, pub, present=False)),), starts_downtime=True,
        needs=(Need("legacy", "ip"), Need("legacy", "grep"),
               Need("legacy", "arping", optional="after a rollback, its neighbours learn the "
                    "address back only when their entries expire")))

    out["boot"] = Step("boot", "boot the instance",
                       do=tuple(Cmd("local", c) for c in hooks.boot),
                       undo=tuple(Cmd("local", c) for c in hooks.unboot))

    route = Command.of("ip", "route", add, spec.address, "dev", br)
    pdo, pundo = _persist(spec, "route", [f"ip route add {q(spec.address)} dev {q(br)}"],
                          {f"{netdev}.network.d/p2vimage-route.conf":
                           ["[Route]", f"Destination={spec.address}/32"]})
    out["route"] = Step(
        "route", f"route {spec.address} to {br} on the node",
        do=(Cmd("node", route), *(Cmd("node", c) for c in pdo)),
        undo=(*(Cmd("node", c) for c in pundo),
              Cmd("node", Command.of("ip", "route", "del", spec.address, "dev", br))),
        check=(Cmd("node", Command.sh(
            f"ip -4 route show to exact {q(spec.address + '/32')} dev {q(br)} | grep -q .")),),
        needs=(Need("node", "grep"), *persists))

    out["garp"] = Step(
        "garp", f"gratuitous ARP for {spec.address} from the node's {nif}",
        do=(Cmd("node", _garp(spec, nif, fast, temporary=True)),),
        undo=(Cmd("node", Command.sh(
            f"ip addr del {q(spec.address + '/32')} dev {q(nif)} 2>/dev/null || true")),),
        needs=(Need("node", "ip"), Need("node", nd.arping), Need("node", "grep"),
               *((Need("node", "stdbuf"), Need("node", "mktemp")) if fast else ())))

    out["verify"] = Step(
        "verify", f"{pr.url} answers {pr.expect!r} from the probe point",
        do=(Cmd("probe", probe_command(spec, pr.expect), retry=pr.timeout),),
        ends_downtime=True, needs=(Need("probe", "curl"), Need("probe", "grep")))
    return out


def probe_command(spec: Spec, expect: str) -> Command:
    """One probe attempt: the URL's body contains EXPECT."""
    return Command.sh(f"curl -fsS -m 1 {q(spec.probe.url)} | grep -qF -- {q(expect)}")


# fast: the address leaves before the services stop, so a rollback starts them again before
# the address comes back (and they answer at once)
ORDER: dict[str, tuple[str, ...]] = {  # by profile (a journal records it as its value)
    Profile.FAST: ("maintenance", "bridge", "proxy-arp", "remove-ip", "stop", "boot", "route",
                   "garp", "verify"),
    Profile.SEED: ("maintenance", "bridge", "remove-ip", "stop", "boot", "route", "proxy-arp",
                   "garp", "verify")}


def parse_inject(text: str) -> tuple[str, str]:
    """``STEP:KIND`` for a rehearsed failure. Raises InputError."""
    step, _, kind = text.partition(":")
    if step not in STEP_NAMES or kind not in INJECT_KINDS:
        raise InputError(f"bad --inject {text!r}",
                         hint=f"STEP:KIND, STEP one of {', '.join(STEP_NAMES)}, KIND one of "
                              f"{', '.join(INJECT_KINDS)}")
    return step, kind


def _inject(spec: Spec, step: Step, kind: str) -> Step:
    target: Target = step.do[0].target if step.do else "local"
    if kind == "fail":
        return dataclasses.replace(step, do=(*step.do, Cmd(target, Command.of("false"))))
    if kind == "check":
        check = (Cmd("probe", probe_command(spec, "p2vimage: injected probe failure"),
                     retry=1.0),) if step.name == "verify" else (Cmd(target, Command.of("false")),)
        return dataclasses.replace(step, check=check)
    remote: Target | None = "legacy" if spec.legacy.access.ssh else \
        "node" if spec.node.access.ssh else None
    if remote is None:
        raise InputError("--inject STEP:drop needs a host reached over ssh",
                         hint="give [legacy.ssh] or [node.ssh] in the spec")
    return dataclasses.replace(step, do=(*step.do, Cmd(remote, Command.sh(DROP_SSH))))


def build(spec: Spec, inject: tuple[str, str] | None = None) -> list[Step]:
    """The steps of SPEC's profile in order (with a rehearsed failure when INJECT is given)."""
    by_name = steps(spec)
    plan = [by_name[name] for name in ORDER[spec.profile]]
    if inject:
        plan = [_inject(spec, s, inject[1]) if s.name == inject[0] else s for s in plan]
    return plan
