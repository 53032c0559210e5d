"""Network: drop the MAC-bound udev naming and stop its generator, keep the static
configuration, report configuration bound to the old MACs. NIC names are pinned with
``net.ifnames=0`` (in the kernel arguments, see guestinfo) when the guest names ethN."""

from __future__ import annotations

import re

from p2vimage.files import FileView, read_text
from p2vimage.fixups.base import GuestInfo, Result, Target

RULES = "/etc/udev/rules.d/70-persistent-net.rules"
GENERATORS = ("/lib/udev/rules.d/75-persistent-net-generator.rules",
              "/usr/lib/udev/rules.d/75-persistent-net-generator.rules")
MASK = "/etc/udev/rules.d/75-persistent-net-generator.rules"
_MAC = re.compile(r"(?:[0-9a-f]{2}:){5}[0-9a-f]{2}", re.I)


def nic_names(view: FileView) -> list[str]:
    """Interface names in ifupdown, sysconfig, netplan and systemd-networkd configuration."""
    names: list[str] = []
    text = read_text(view, "/etc/network/interfaces") or ""
    names += re.findall(r"^\s*iface\s+(\S+)\s+inet6?\s", text, re.M)
    for name in view.listdir("/etc/network/interfaces.d"):
        names += re.findall(r"^\s*iface\s+(\S+)\s+inet6?\s",
                            read_text(view, f"/etc/network/interfaces.d/{name}") or "", re.M)
    for d in ("/etc/sysconfig/network-scripts", "/etc/sysconfig/network"):
        for name in view.listdir(d):
            if name.startswith("ifcfg-"):
                text = read_text(view, f"{d}/{name}") or ""
                m = re.search(r"^DEVICE=[\"']?([^\"'\s]+)", text, re.M)
                names.append(m.group(1) if m else name[6:])
    for name in view.listdir("/etc/netplan"):
        text = read_text(view, f"/etc/netplan/{name}") or ""
        block = re.search(r"^\s*ethernets:\s*\n((?:\s{4,}.*\n?)*)", text, re.M)
        if block:
            names += re.findall(r"^\s{4}(\w[\w.-]*):", block.group(1), re.M)
    for d in ("/etc/systemd/network",):
        for name in view.listdir(d):
            if name.endswith(".network"):
                text = read_text(view, f"{d}/{name}") or ""
                names += re.findall(r"^Name=(\S+)", text, re.M)
    return list(dict.fromkeys(n for n in names if n != "lo"))


def mac_bound(view: FileView) -> list[str]:
    """Configuration lines tied to a MAC address (reported: the new NICs have other MACs)."""
    found: list[str] = []
    sources = ["/etc/network/interfaces"]
    for d in ("/etc/sysconfig/network-scripts", "/etc/systemd/network", "/etc/netplan"):
        sources += [f"{d}/{n}" for n in view.listdir(d)]
    for path in sources:
        for line in (read_text(view, path) or "").splitlines():
            if _MAC.search(line) and not line.lstrip().startswith("#"):
                found.append(f"{path}: {line.strip()}")
    return found


def plan(view: FileView, info: GuestInfo, target: Target) -> Result:
    """Remove the persistent-net rules, mask their generator, report MAC-bound config."""
    result = Result("network")
    result.remove(view, RULES)
    if any(view.is_file(g) for g in GENERATORS):
        result.link(view, MASK, "/dev/null")
    for line in mac_bound(view):
        result.notes.append(f"bound to an old MAC: {line}")
    if info.nics:
        result.notes.append(f"configured NICs: {', '.join(info.nics)}")
    if "net.ifnames=0" in target.kernel_args:
        result.notes.append("NIC names pinned with net.ifnames=0 (the config names ethN)")
    return result
