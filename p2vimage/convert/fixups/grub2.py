"""GRUB 2: /etc/default/grub for a serial console (and net.ifnames=0 when the guest names
its NICs ethN), then ``grub-install`` and ``grub-mkconfig`` from the guest's own binaries."""

from __future__ import annotations

import re
import shlex

from p2vimage.convert.fixups.base import Grub2Install, Inspection, Loader, Result, Target, add_args
from p2vimage.guest.files import FileView, read_text

DEFAULTS = "/etc/default/grub"
_ASSIGN = re.compile(r"^(\s*)([A-Z_]+)=(.*)$")
SERIAL = "serial --speed=115200 --unit=0 --word=8 --parity=no --stop=1"

# What this fixup reads and what it (or its actions) may write: see fixups/__init__.py.
READS = (DEFAULTS.lstrip("/"), "etc/grub.d/*", "boot/grub/grub.cfg", "boot/grub2/grub.cfg",
         "usr/lib/grub/i386-pc/*")
WRITES = (DEFAULTS.lstrip("/"), "boot/grub", "boot/grub/*", "boot/grub2", "boot/grub2/*")

def _value(raw: str) -> str:
    try:
        parts = shlex.split(raw, comments=True)
    except ValueError:
        return raw
    return parts[0] if parts else ""


def rewrite_defaults(text: str, target: Target) -> str:
    """/etc/default/grub with the settings conversion needs (pure)."""
    wanted = {
        "GRUB_TERMINAL": "console serial",
        "GRUB_SERIAL_COMMAND": SERIAL,
        "GRUB_DISABLE_OS_PROBER": "true",
    }
    if not target.root_spec.startswith("UUID="):  # grub-mkconfig runs where root is sda1
        wanted["GRUB_DISABLE_LINUX_UUID"] = "true"
    seen: set[str] = set()
    out = []
    for line in text.splitlines():
        m = _ASSIGN.match(line)
        if m and m.group(2) == "GRUB_CMDLINE_LINUX" and "GRUB_CMDLINE_LINUX" not in seen:
            seen.add("GRUB_CMDLINE_LINUX")
            args = add_args(_value(m.group(3)), target.kernel_args)
            line = f'{m.group(1)}GRUB_CMDLINE_LINUX="{args}"'
        elif m and m.group(2) in wanted and m.group(2) not in seen:
            seen.add(m.group(2))
            line = f'{m.group(1)}{m.group(2)}="{wanted[m.group(2)]}"'
        out.append(line)
    if "GRUB_CMDLINE_LINUX" not in seen:
        out.append(f'GRUB_CMDLINE_LINUX="{" ".join(target.kernel_args)}"')
    out += [f'{key}="{value}"' for key, value in wanted.items() if key not in seen]
    return "\n".join(out) + "\n"


def plan(view: FileView, info: Inspection, target: Target) -> Result:
    """The /etc/default/grub edit and, when anything changed or GRUB is absent, the install."""
    result = Result("grub2")
    if target.bootloader != Loader.GRUB2:
        return result
    text = read_text(view, DEFAULTS) or ""
    result.write(view, DEFAULTS, rewrite_defaults(text, target))
    cfg = next((p for p in ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg") if view.is_file(p)),
               None)
    if result.edits or cfg is None or b"GRUB" not in info.mbr_code:
        result.actions.append(Grub2Install())
    return result
