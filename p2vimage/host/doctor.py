"""``doctor``: which host tools are here, and which accelerator really works."""

from __future__ import annotations

from typing import Any

from p2vimage.core.errors import P2VError
from p2vimage.host import accel
from p2vimage.host import run as runmod

# tool: what needs it
TOOLS: dict[str, str] = {
    "mke2fs": "build", "debugfs": "build, verify", "e2fsck": "tests",
    "qemu-img": "convert, upload", "qemu-system-x86_64": "smoke, accelerator probe",
    "rsync": "sync", "ssh": "sync, cutover", "extlinux": "convert",
    "virt-make-fs": "bench (baseline)", "debootstrap": "test fixtures",
}


def guestfs_available() -> bool:
    """Whether the libguestfs Python bindings import (Debian's python3-guestfs)."""
    try:
        import guestfs  # noqa: F401
    except ImportError:
        return False
    return True


def check(refresh: bool = False) -> dict[str, Any]:
    """The doctor report: tools found and missing, accelerators (probed, then cached)."""
    found = {tool: runmod.which(tool) for tool in TOOLS}
    missing = sorted(tool for tool, path in found.items() if path is None)
    if not guestfs_available():
        missing.append("python3-guestfs")
    report: dict[str, Any] = {
        "tools": {tool: {"path": path, "for": TOOLS[tool]} for tool, path in found.items()},
        "guestfs_bindings": guestfs_available(),
        "missing": missing,
    }
    try:
        chosen = accel.detect(refresh=refresh, guestfs=guestfs_available())
        report["accelerator"] = {"qemu": chosen.qemu, "cpu": chosen.cpu,
                                 "guestfs": chosen.guestfs, "tried": list(chosen.tried),
                                 "summary": chosen.describe()}
    except P2VError as exc:
        report["accelerator"] = {"error": exc.one_line()}
    return report


def lines(report: dict[str, Any]) -> list[str]:
    """The human form of the doctor report."""
    out = []
    for tool, info in report["tools"].items():
        mark = info["path"] or "MISSING"
        out.append(f"{tool:20} {mark}  ({info['for']})")
    out.append(f"{'python3-guestfs':20} {'ok' if report['guestfs_bindings'] else 'MISSING'}")
    acc = report["accelerator"]
    if "error" in acc:
        out.append(f"accelerator: {acc['error']}")
    else:
        out.append(f"accelerator: {acc['summary']}")
        out += [f"  tried {t}" for t in acc["tried"]]
    if report["missing"]:
        out.append(f"missing: {', '.join(report['missing'])} (hint: run ci/setup)")
    return out
