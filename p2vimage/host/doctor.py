"""``doctor``: which verbs this host can run, and what to install for the others.

Every requirement in host/tools.py that the checked verbs use is looked for (a program on
PATH, a file in one of its known locations, a Python module that imports) or tried for real
(qemu-img writes a zstd-compressed qcow2; the accelerator probe boots a kernel, then a
libguestfs appliance — accel.py, cached per host). A verb that lacks something it requires
cannot run; one that lacks an optional thing runs without that feature. :func:`verdict` raises
PreconditionError (exit 3) when a checked verb cannot run; demo, bench and tests are listed
but only checked when asked for by name.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from typing import Any

from p2vimage.core.errors import P2VError, PreconditionError
from p2vimage.host import accel, tools
from p2vimage.host import run as runmod
from p2vimage.host.tools import Kind, Need

VERB_NAMES = tuple(tools.VERBS)


def guestfs_available() -> bool:
    """Whether the libguestfs Python bindings import (Debian's python3-guestfs)."""
    try:
        importlib.import_module("guestfs")
    except ImportError:
        return False
    return True


def find_file(locations: tuple[str, ...]) -> str | None:
    """The first of ``locations`` that is a readable regular file, or None."""
    for location in locations:
        if os.path.isfile(location) and os.access(location, os.R_OK):
            return location
    return None


def qemu_img_zstd() -> tuple[bool, str]:
    """Whether qemu-img writes qcow2 with zstd cluster compression (QEMU >= 5.1 with zstd)."""
    if runmod.which("qemu-img") is None:
        return False, "qemu-img not found"
    with tempfile.TemporaryDirectory(prefix="p2vimage-doctor-") as tmp:
        try:
            proc = runmod.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                               "compression_type=zstd", str(Path(tmp) / "probe.qcow2"), "1M"],
                              check=False, timeout=60, what="qemu-img create")
        except P2VError as exc:
            return False, exc.message
    if proc.returncode == 0:
        return True, "qcow2 compression_type=zstd works"
    return False, runmod.last_line(proc.stderr) or f"qemu-img exited {proc.returncode}"


def _accelerators(refresh: bool, want_guestfs: bool) -> tuple[dict[str, Any], str, str]:
    """The accelerator report, and why qemu / the libguestfs appliance fail ("" = works)."""
    def report(chosen: accel.Accel) -> dict[str, Any]:
        return {"qemu": chosen.qemu, "cpu": chosen.cpu, "guestfs": chosen.guestfs,
                "tried": list(chosen.tried), "summary": chosen.describe()}

    if runmod.which(accel.QEMU) is None:
        return {"error": f"{accel.QEMU} not found"}, f"{accel.QEMU} not found", "no qemu"
    try:
        return report(accel.detect(refresh=refresh, guestfs=want_guestfs)), "", ""
    except P2VError as exc:
        first = exc
    if want_guestfs and not isinstance(first, accel.NoAccelerator):
        try:  # qemu alone may still work: then only the appliance fails
            data = report(accel.detect(refresh=refresh, guestfs=False))
        except P2VError as exc:
            first = exc
        else:
            data.update(guestfs="", guestfs_error=first.one_line())
            return data, "", first.message
    return {"error": first.one_line()}, first.message, "no accelerator works"


def _look(need: Need, caps: dict[str, tuple[bool, str]]) -> tuple[bool, str]:
    """(found, where it is or why it fails)."""
    if need.kind is Kind.PROGRAM:
        path = runmod.which(need.name)
        return (True, path) if path else (False, "not found")
    if need.kind is Kind.FILE:
        path = find_file(need.locations)
        return (True, path) if path else (False, "not in " + ", ".join(need.locations))
    if need.kind is Kind.MODULE:
        try:
            module = importlib.import_module(need.name)
        except ImportError as exc:
            return False, f"does not import: {exc}"
        return True, str(getattr(module, "__file__", "") or "imports")
    return caps[need.name]


def check(refresh: bool = False, verbs: tuple[str, ...] = ()) -> dict[str, Any]:
    """The doctor report for ``verbs`` (default: all of them, extras listed but not counted)."""
    asked = tuple(verbs)
    shown = asked or VERB_NAMES
    counted = asked or tuple(v for v in VERB_NAMES if v not in tools.EXTRAS)
    needs = tools.needs_of(shown)
    names = {n.name for n in needs}
    caps: dict[str, tuple[bool, str]] = {}
    report: dict[str, Any] = {"checked": list(counted)}
    if "qemu-img zstd" in names:
        caps["qemu-img zstd"] = qemu_img_zstd()
    if names & {"accelerator", "libguestfs appliance"}:
        want_guestfs = "libguestfs appliance" in names and guestfs_available()
        report["accelerator"], qemu_err, gfs_err = _accelerators(refresh, want_guestfs)
        caps["accelerator"] = (not qemu_err, qemu_err or report["accelerator"]["summary"])
        if not want_guestfs:
            gfs_err = gfs_err or "the guestfs Python module does not import"
        caps["libguestfs appliance"] = (not gfs_err, gfs_err or
                                        f"launches ({report['accelerator'].get('guestfs')})")
    found = {n.name: _look(n, caps) for n in needs}
    required = {n.name for n in needs if set(n.required_by()) & set(counted)}
    report["requirements"] = [{
        "name": n.name, "kind": n.kind.value, "found": found[n.name][0],
        "where": found[n.name][1], "required_by": list(n.required_by()),
        "optional_for": n.optional_for(), "needed": "required" if n.name in required
        else "optional", "packages": {"debian": n.debian, "fedora": n.fedora},
        "install": n.install(), "note": n.note} for n in needs]
    report["verbs"] = {}
    for verb in shown:
        missing = [n.name for n in needs if verb in n.required_by() and not found[n.name][0]]
        report["verbs"][verb] = {
            "counted": verb in counted, "ok": not missing, "missing": missing,
            "degraded": {n.name: n.optional_for()[verb] for n in needs
                         if verb in n.optional_for() and not found[n.name][0]}}
    report["missing"] = [n.name for n in needs if n.name in required and not found[n.name][0]]
    report["optional_missing"] = [n.name for n in needs
                                  if n.name not in required and not found[n.name][0]]
    report["ok"] = not report["missing"]
    return report


def lines(report: dict[str, Any]) -> list[str]:
    """The human form of the doctor report."""
    out = ["verb           this host"]
    for verb, info in report["verbs"].items():
        state = "ok" if info["ok"] else "CANNOT RUN: missing " + ", ".join(info["missing"])
        if info["degraded"]:
            state += "; without " + ", ".join(info["degraded"])
        if not info["counted"]:
            state += f"  (not counted: check with --verb {verb})"
        out.append(f"{verb:14} {state}")
    out += ["", "requirement           found  (required by; optional for)"]
    for req in report["requirements"]:
        where = req["where"] if req["found"] else "MISSING"
        uses = ", ".join(req["required_by"])
        if req["optional_for"]:
            uses += ("; " if uses else "") + "optional: " + ", ".join(req["optional_for"])
        out.append(f"{req['name']:21} {where}  ({uses})")
    acc = report.get("accelerator")
    if acc is not None:
        out.append("accelerator: " + acc.get("error", acc.get("summary", "")))
        if acc.get("guestfs_error"):
            out.append(f"libguestfs: {acc['guestfs_error']}")
        out += [f"  tried {t}" for t in acc.get("tried", ())]
    by_name = {r["name"]: r for r in report["requirements"]}
    for title, key in (("missing, required", "missing"),
                       ("missing, optional", "optional_missing")):
        if report[key]:
            out += ["", f"{title}:"]
        for name in report[key]:
            req = by_name[name]
            detail = "" if req["kind"] == "program" else f" ({req['where']})"
            out.append(f"  {name}{detail}: {req['install']}")
            if key == "missing":
                continue
            out += [f"    without it, {verb}: no {lost}"
                    for verb, lost in req["optional_for"].items()]
            if req["required_by"]:
                out.append(f"    needed by {', '.join(req['required_by'])} (not checked)")
    return out


def verdict(report: dict[str, Any]) -> None:
    """Raise PreconditionError (exit 3) when a checked verb cannot run on this host."""
    if report["ok"]:
        return
    cannot = [v for v, info in report["verbs"].items() if info["counted"] and not info["ok"]]
    misses = [r for r in report["requirements"] if r["name"] in report["missing"]]
    what = [f"{r['name']} ({r['where']})" if r["kind"] == "capability" else r["name"]
            for r in misses]
    packages = dict.fromkeys(r["packages"]["debian"] for r in misses
                             if r["kind"] != "capability" and r["packages"]["debian"])
    hints = ([f"apt-get install {' '.join(packages)}"] if packages else []) + [
        r["note"] for r in misses if r["kind"] == "capability"]
    raise PreconditionError(f"this host cannot run {', '.join(cannot)}: missing "
                            f"{', '.join(what)}",
                            hint="; ".join(hints) + "; every miss is listed above")
