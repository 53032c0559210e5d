"""The guest's own network configuration, read from its files: which interfaces, with which
static address, prefix and gateway, or DHCP. Smoke gives the VM one NIC per interface on a
user-mode network that matches it, so a legacy server keeps its static addresses.

Formats: ifupdown (/etc/network/interfaces and interfaces.d), sysconfig ifcfg-*, netplan,
systemd-networkd. Pure: reads through a FileView.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from p2vimage.guest.files import FileView, read_text


@dataclasses.dataclass(frozen=True)
class Iface:
    """One configured interface."""

    name: str
    method: str  # "static" or "dhcp"
    address: str | None = None
    prefix: int | None = None
    gateway: str | None = None

    @property
    def network(self) -> ipaddress.IPv4Network | None:
        """The IPv4 network of a static address."""
        if self.address is None or self.prefix is None:
            return None
        return ipaddress.IPv4Interface(f"{self.address}/{self.prefix}").network


def _prefix(mask: str) -> int:
    if mask.isdigit():
        return int(mask)
    return ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen


def _split_addr(value: str) -> tuple[str, int | None]:
    addr, _, pfx = value.partition("/")
    return addr, int(pfx) if pfx else None


def ifupdown(text: str) -> list[Iface]:
    """Interfaces of an /etc/network/interfaces text (IPv4 stanzas)."""
    found: list[Iface] = []
    current: dict[str, str] | None = None

    def close() -> None:
        if current and current["method"] in ("static", "dhcp"):
            addr, pfx = _split_addr(current.get("address", ""))
            if "netmask" in current:
                pfx = _prefix(current["netmask"])
            if current["method"] == "static" and addr:
                found.append(Iface(current["name"], "static", addr, pfx or 24,
                                   current.get("gateway")))
            elif current["method"] == "dhcp":
                found.append(Iface(current["name"], "dhcp"))

    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if words[0] == "iface" and len(words) >= 4:
            close()
            current = {"name": words[1], "method": words[3]} if words[2] == "inet" else None
        elif words[0] in ("auto", "allow-hotplug", "mapping", "source", "source-directory"):
            close()
            current = None
        elif current is not None and len(words) >= 2:
            current.setdefault(words[0], words[1])
    close()
    return [i for i in found if i.name != "lo"]


def sysconfig(name: str, text: str) -> Iface | None:
    """An ifcfg-NAME file."""
    values = dict(re.findall(r"^([A-Z0-9_]+)=[\"']?([^\"'\n]*)", text, re.M))
    device = values.get("DEVICE", name)
    proto = values.get("BOOTPROTO", "none").lower()
    if proto == "dhcp":
        return Iface(device, "dhcp")
    addr = values.get("IPADDR") or values.get("IPADDR0")
    if not addr:
        return None
    pfx = values.get("PREFIX") or values.get("PREFIX0")
    prefix = int(pfx) if pfx else _prefix(values.get("NETMASK", "255.255.255.0"))
    return Iface(device, "static", addr, prefix, values.get("GATEWAY"))


def networkd(text: str) -> Iface | None:
    """A systemd-networkd .network file."""
    name = re.search(r"^Name=(\S+)", text, re.M)
    if not name:
        return None
    if re.search(r"^DHCP=(yes|ipv4|true)", text, re.M):
        return Iface(name.group(1), "dhcp")
    addr = re.search(r"^Address=(\d+\.\d+\.\d+\.\d+)(?:/(\d+))?", text, re.M)
    if not addr:
        return None
    gateway = re.search(r"^Gateway=(\d+\.\d+\.\d+\.\d+)", text, re.M)
    return Iface(name.group(1), "static", addr.group(1), int(addr.group(2) or 24),
                 gateway.group(1) if gateway else None)


def netplan(text: str) -> list[Iface]:
    """Ethernets of a netplan YAML (the common, indented form; no YAML library needed)."""
    found: list[Iface] = []
    block = re.search(r"^(\s*)ethernets:\s*\n((?:\1\s+.*\n?|\s*\n)*)", text, re.M)
    if not block:
        return found
    for m in re.finditer(r"^(\s+)([\w.-]+):\s*\n((?:\1\s+.*\n?)*)", block.group(2), re.M):
        name, body = m.group(2), m.group(3)
        if re.search(r"dhcp4:\s*(true|yes)", body):
            found.append(Iface(name, "dhcp"))
            continue
        addr = re.search(r"(\d+\.\d+\.\d+\.\d+)/(\d+)", body)
        gw = re.search(r"(?:gateway4:\s*|via:\s*)(\d+\.\d+\.\d+\.\d+)", body)
        if addr:
            found.append(Iface(name, "static", addr.group(1), int(addr.group(2)),
                               gw.group(1) if gw else None))
    return found


def interfaces(view: FileView) -> list[Iface]:
    """Every configured interface, in NIC order (eth0 before eth1; then as configured)."""
    found: list[Iface] = []
    found += ifupdown(read_text(view, "/etc/network/interfaces") or "")
    for name in view.listdir("/etc/network/interfaces.d"):
        found += ifupdown(read_text(view, f"/etc/network/interfaces.d/{name}") or "")
    for d in ("/etc/sysconfig/network-scripts", "/etc/sysconfig/network"):
        for name in view.listdir(d):
            if name.startswith("ifcfg-") and name != "ifcfg-lo":
                iface = sysconfig(name[6:], read_text(view, f"{d}/{name}") or "")
                if iface:
                    found.append(iface)
    for name in view.listdir("/etc/netplan"):
        found += netplan(read_text(view, f"/etc/netplan/{name}") or "")
    for name in view.listdir("/etc/systemd/network"):
        if name.endswith(".network"):
            iface = networkd(read_text(view, f"/etc/systemd/network/{name}") or "")
            if iface:
                found.append(iface)
    unique = {i.name: i for i in reversed(found)}  # the first definition of a name wins
    return sorted(unique.values(), key=_order)


def _order(iface: Iface) -> tuple[int, int, str]:
    m = re.fullmatch(r"eth(\d+)", iface.name)
    return (0, int(m.group(1)), "") if m else (1, 0, iface.name)


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
