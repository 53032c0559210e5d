"""Network: drop the MAC-bound udev naming and stop its generator, keep the static
configuration, report configuration bound to the old MACs. NIC names are pinned with
``net.ifnames=0`` (in the kernel arguments, see convert's ``choose_target``) when the guest
names ethN."""

from __future__ import annotations

import re

from p2vimage.convert.fixups.base import Inspection, Result, Target
from p2vimage.guest.files import FileView, read_text

RULES = "/etc/udev/rules.d/70-persistent-net.rules"
GENERATORS = ("/lib/udev/rules.d/75-persistent-net-generator.rules",
              "/usr/lib/udev/rules.d/75-persistent-net-generator.rules")
MASK = "/etc/udev/rules.d/75-persistent-net-generator.rules"
_MAC = re.compile(r"(?:[0-9a-f]{2}:){5}[0-9a-f]{2}", re.I)

# What this fixup reads and what it (or its actions) may write: see fixups/__init__.py.
READS = (RULES.lstrip("/"), *(g.lstrip("/") for g in GENERATORS), "etc/network/interfaces",
         "etc/network/interfaces.d/*", "etc/sysconfig/network-scripts/*",
         "etc/sysconfig/network/*", "etc/systemd/network/*", "etc/netplan/*")
WRITES = (RULES.lstrip("/"), MASK.lstrip("/"))

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


def plan(view: FileView, info: Inspection, target: Target) -> Result:
    """Remove the persistent-net rules, mask their generator, report MAC-bound config."""
    result = Result("network")
    result.remove(view, RULES)
    if any(view.is_file(g) for g in GENERATORS):
        result.link(view, MASK, "/dev/null")
    for line in mac_bound(view):
        result.notes.append(f"bound to an old MAC: {line}")
    if info.record.nics:
        result.notes.append(f"configured NICs: {', '.join(info.record.nics)}")
    if "net.ifnames=0" in target.kernel_args:
        result.notes.append("NIC names pinned with net.ifnames=0 (the config names ethN)")
    return result
