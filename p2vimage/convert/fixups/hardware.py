"""Services bound to the old hardware (RAID, SMART, sensors, the hardware clock, vserver):
reported, and disabled with ``--disable-hardware-services``."""

from __future__ import annotations

from p2vimage.convert.fixups.base import Inspection, Result, Target
from p2vimage.guest.files import FileView

SERVICES: dict[str, tuple[str, ...]] = {
    "mdadm": ("mdadm", "mdadm-raid", "mdmonitor"),
    "smartd": ("smartmontools", "smartd"),
    "lm-sensors": ("lm-sensors", "lm_sensors", "sensord", "fancontrol"),
    "hwclock": ("hwclock.sh", "hwclock", "hwclock-save"),
    "vserver": ("util-vserver", "vprocunhide", "vservers-default"),
}
UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")

# What this fixup reads and what it (or its actions) may write: see fixups/__init__.py.
_NAMES = tuple(n for names in SERVICES.values() for n in names)
READS = (*(f"etc/init.d/{n}" for n in _NAMES), "etc/rc?.d/*",
         *(f"{d.lstrip('/')}/{n}.service" for d in UNIT_DIRS for n in _NAMES))
WRITES = (*(f"etc/systemd/system/{n}.service" for n in _NAMES),
          *(f"etc/rc?.d/[SK][0-9][0-9]{n}" for n in _NAMES))

def found_services(view: FileView) -> dict[str, list[str]]:
    """kind → the init scripts and units of that kind present in the guest."""
    found: dict[str, list[str]] = {}
    for kind, names in SERVICES.items():
        for name in names:
            if view.is_file(f"/etc/init.d/{name}"):
                found.setdefault(kind, []).append(f"/etc/init.d/{name}")
            for d in UNIT_DIRS:
                if view.is_file(f"{d}/{name}.service"):
                    found.setdefault(kind, []).append(f"{d}/{name}.service")
                    break
    return found


def _disable_sysv(view: FileView, result: Result, name: str) -> None:
    for level in ("S", "0", "1", "2", "3", "4", "5", "6"):
        d = f"/etc/rc{level}.d"
        for link in view.listdir(d):
            if link.startswith("S") and link[3:] == name:
                target = view.readlink(f"{d}/{link}") or f"../init.d/{name}"
                result.remove(view, f"{d}/{link}")
                result.link(view, f"{d}/K{link[1:]}", target)


def plan(view: FileView, info: Inspection, target: Target) -> Result:
    """Report the hardware-bound services; disable them when asked."""
    result = Result("hardware")
    for kind, paths in found_services(view).items():
        action = "disabled" if target.disable_hardware else "left enabled"
        result.notes.append(f"{kind}: {', '.join(paths)} ({action})")
        if not target.disable_hardware:
            continue
        for path in paths:
            name = path.rsplit("/", 1)[1]
            if path.startswith("/etc/init.d/"):
                _disable_sysv(view, result, name)
            else:
                result.link(view, f"/etc/systemd/system/{name}", "/dev/null")
    for kernel in info.record.kernels:
        if "vserver" in kernel.version:
            result.notes.append(f"vserver kernel {kernel.version}: its vserver guests keep "
                                "running inside the VM; check /etc/vservers after boot")
    return result
