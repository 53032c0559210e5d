"""A login prompt on the serial console ttyS0: inittab for sysvinit, serial-getty@ttyS0 for
systemd, a job for upstart; ttyS0 in /etc/securetty where root logins are restricted."""

from __future__ import annotations

import re

from p2vimage.convert.fixups.base import Inspection, Result, Target
from p2vimage.guest.files import FileView, read_text

INITTAB = "/etc/inittab"
WANTS = "etc/systemd/system/getty.target.wants"
GETTY = "T0:2345:respawn:/sbin/getty -L ttyS0 115200 vt100"
_ACTIVE_TTYS0 = re.compile(r"^[^#\n]*\bttyS0\b", re.M)
UPSTART_JOB = """\
# ttyS0 - getty on the serial console (written by p2vimage convert)
start on stopped rc RUNLEVEL=[2345]
stop on runlevel [!2345]
respawn
exec /sbin/getty -L 115200 ttyS0 vt100
"""

# What this fixup reads and what it (or its actions) may write: see fixups/__init__.py.
READS = ("etc/inittab", "etc/securetty", "lib/systemd/system/serial-getty@.service",
         "usr/lib/systemd/system/serial-getty@.service")
WRITES = ("etc/inittab", f"{WANTS}/serial-getty@ttyS0.service", "etc/init/ttyS0.conf",
          "etc/securetty")

def plan(view: FileView, info: Inspection, target: Target) -> Result:
    """The getty for ttyS0 in whatever init the guest runs."""
    result = Result("console")
    inittab = read_text(view, INITTAB)
    if info.record.init == "sysvinit" or (inittab is not None and info.record.init == "unknown"):
        text = inittab or ""
        if not _ACTIVE_TTYS0.search(text):
            result.write(view, INITTAB, text.rstrip("\n") + f"\n{GETTY}\n")
    elif info.record.init == "systemd":
        unit = next((f"{d}/serial-getty@.service" for d in ("/lib/systemd/system",
                     "/usr/lib/systemd/system") if view.is_file(f"{d}/serial-getty@.service")),
                    "/lib/systemd/system/serial-getty@.service")
        result.link(view, f"/{WANTS}/serial-getty@ttyS0.service",
                    unit)
    elif info.record.init == "upstart":
        result.write(view, "/etc/init/ttyS0.conf", UPSTART_JOB)
    else:
        result.notes.append("unknown init system: no serial getty added")
    securetty = read_text(view, "/etc/securetty")
    if securetty is not None and "ttyS0" not in securetty.split():
        result.write(view, "/etc/securetty", securetty.rstrip("\n") + "\nttyS0\n")
    return result
