"""The batch report, from the batch state: JSON, JUnit (a testsuite per wave, a testcase per
host, a failure per failed stage), Markdown, and one self-contained HTML page (html.py).

A report is a list of host entries plus what is derived from them (waves, summary), so that
reports of several conversion hosts merge into exactly the report one conversion host would
have written over all the hosts (``--merge``; a host in two of them is refused). Hosts and
waves are in natural name order (web2 before web10).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from p2vimage.core.errors import InputError
from p2vimage.core.text import printable
from p2vimage.fleet import html
from p2vimage.fleet import state as statemod

KIND = "p2vimage-batch-report"
VERSION = 1
VERDICTS = ("pass", "fail", "incomplete", "not run")
FILES = {"json": "report.json", "junit": "junit.xml", "markdown": "report.md",
         "html": "report.html"}


def natural(text: str) -> list[Any]:
    """A sort key that puts web2 before web10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def verdict(host: dict[str, Any]) -> str:
    """pass, fail, incomplete (begun, not ended) or not run."""
    statuses = [s["status"] for s in host["stages"]]
    if "failed" in statuses:
        return "fail"
    if statuses and all(s in ("passed", "done-before") for s in statuses):
        return "pass"
    if any(s in ("passed", "running", "interrupted") for s in statuses):
        return "incomplete"
    return "not run"


def _stage(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    started, finished = entry.get("started"), entry.get("finished")
    seconds = round(finished - started, 1) if started and finished else None
    return {"name": name, "status": entry["status"], "started": started, "finished": finished,
            "seconds": seconds, "log": entry.get("log"), "result": entry.get("result"),
            "error": entry.get("error"), "attempts": entry.get("attempts", 0)}


def _host(record: dict[str, Any], cutover: dict[str, Any] | None) -> dict[str, Any]:
    stages = [_stage(n, e) for n, e in record["stages"].items()]
    if cutover is not None:
        stages += [_stage(n, e) for n, e in cutover["stages"].items()]
    failed = next((s for s in stages if s["status"] == "failed"), None)
    entry = {"name": record["name"], "wave": record["wave"], "waves": record["waves"],
             "conversion_host": record.get("conversion_host"), "dir": record.get("dir"),
             "stages": stages, "failed_stage": failed["name"] if failed else None,
             "error": failed["error"] if failed else record.get("error"),
             "console_log": record.get("console_log"),
             "smoke_report": record.get("smoke_report")}
    entry["verdict"] = verdict(entry)
    times = [t for s in stages for t in (s["started"], s["finished"]) if t]
    entry["started"], entry["finished"] = (min(times), max(times)) if times else (None, None)
    return entry


def assemble(hosts: Iterable[dict[str, Any]], sources: list[dict[str, Any]]) -> dict[str, Any]:
    """A report over ``hosts``: sorted, with its waves and summary. Raises InputError when a
    host comes twice."""
    by_name: dict[str, dict[str, Any]] = {}
    for host in hosts:
        if host["name"] in by_name:
            raise InputError(f"host {host['name']} is in two of the reports merged",
                             hint="each host is converted on one conversion host: leave "
                                  "the stale report out")
        by_name[host["name"]] = host
    ordered = [by_name[n] for n in sorted(by_name, key=natural)]
    waves: dict[str, list[str]] = {}
    for host in ordered:
        waves.setdefault(host["wave"], []).append(host["name"])
    summary = {v: sum(1 for h in ordered if h["verdict"] == v) for v in VERDICTS}
    return {"kind": KIND, "version": VERSION, "generated": time.time(), "sources": sources,
            "summary": {"hosts": len(ordered), **summary},
            "waves": {w: waves[w] for w in sorted(waves, key=natural)}, "hosts": ordered}


def build(data: dict[str, Any], here: str) -> dict[str, Any]:
    """The report of one batch state (as a reader sees it now)."""
    sections = data.get("sections", {})
    run = sections.get("run", {"hosts": {}})
    cutover = sections.get("cutover", {"hosts": {}})
    names = list(run["hosts"]) + [n for n in cutover["hosts"] if n not in run["hosts"]]
    hosts = []
    for name in names:
        record = run["hosts"].get(name) or {**cutover["hosts"][name], "stages": {}}
        hosts.append(_host(record, cutover["hosts"].get(name)))
    source = {"conversion_host": here, "inventory": data.get("inventory"),
              "hosts": len(hosts)}
    return assemble(hosts, [source])


def load(path: Path) -> dict[str, Any]:
    """A report.json written by ``batch report`` or ``batch run``. Raises InputError."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read report {path}: {exc}",
                         hint="give the report.json a batch wrote") from exc
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise InputError(f"{path} is not a p2vimage batch report",
                         hint="give the report.json a batch wrote (BATCH_DIR/report/)")
    if data.get("version") != VERSION:
        raise InputError(f"{path} is a version {data.get('version')} report; this p2vimage "
                         f"reads version {VERSION}", hint="write it again with this version")
    return data


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report over the hosts of all ``reports``."""
    return assemble((h for r in reports for h in r["hosts"]),
                    [s for r in reports for s in r["sources"]])


def junit(report: dict[str, Any]) -> str:
    """JUnit XML: a testsuite per wave, a testcase per host, a failure per failed stage,
    skipped for a host not run or not finished."""
    hosts = {h["name"]: h for h in report["hosts"]}
    out = ['<?xml version="1.0" encoding="UTF-8"?>']
    fails = sum(1 for h in hosts.values() if h["verdict"] == "fail")
    out.append(f'<testsuites name="p2vimage batch" tests="{len(hosts)}" failures="{fails}">')
    for wave, names in report["waves"].items():
        members = [hosts[n] for n in names]
        failures = sum(1 for h in members if h["verdict"] == "fail")
        skipped = sum(1 for h in members if h["verdict"] in ("incomplete", "not run"))
        seconds = sum(_seconds(h) for h in members)
        out.append(f"  <testsuite name={quoteattr(wave)} tests=\"{len(members)}\" "
                   f"failures=\"{failures}\" skipped=\"{skipped}\" time=\"{seconds:.1f}\">")
        for host in members:
            out.append(f"    <testcase classname={quoteattr('batch.' + wave)} "
                       f"name={quoteattr(host['name'])} time=\"{_seconds(host):.1f}\">")
            for stage in host["stages"]:
                if stage["status"] == "failed":
                    message = printable(f"{stage['name']}: {stage['error']}")
                    body = printable(f"{stage['error']}\nlog: {stage['log']}")
                    out.append(f"      <failure type={quoteattr(stage['name'])} "
                               f"message={quoteattr(message)}>{escape(body)}</failure>")
            if host["verdict"] in ("incomplete", "not run"):
                why = host["verdict"] + (f": {host['error']}" if host.get("error") else "")
                out.append(f"      <skipped message={quoteattr(printable(why))}/>")
            logs = "\n".join(f"{s['name']}: {s['status']}" + (f" ({s['log']})" if s["log"]
                                                                else "")
                             for s in host["stages"])
            out.append(f"      <system-out>{escape(printable(logs))}</system-out>")
            out.append("    </testcase>")
        out.append("  </testsuite>")
    out.append("</testsuites>")
    return "\n".join(out) + "\n"


def _seconds(host: dict[str, Any]) -> float:
    return float(sum(s["seconds"] or 0 for s in host["stages"]))


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") if text not in (None, "") else ""


def markdown(report: dict[str, Any]) -> str:
    """A Markdown page: the summary, then a table per wave."""
    s = report["summary"]
    out = ["# p2vimage batch report", "",
           f"{s['hosts']} hosts: {s['pass']} pass, {s['fail']} fail, {s['incomplete']} "
           f"incomplete, {s['not run']} not run. Generated {_iso(report['generated'])} from "
           + ", ".join(f"{src['conversion_host']} ({src['hosts']} hosts)"
                       for src in report["sources"]) + "."]
    hosts = {h["name"]: h for h in report["hosts"]}
    for wave, names in report["waves"].items():
        out += ["", f"## {wave}", "", "| host | verdict | stages | failed stage | error |",
                "|---|---|---|---|---|"]
        for name in names:
            host = hosts[name]
            stages = ", ".join(f"{st['name']} {_mark(st)}" for st in host["stages"])
            out.append(f"| {_cell(name)} | {host['verdict']} | {_cell(stages)} | "
                       f"{_cell(host['failed_stage'])} | {_cell(host['error'])} |")
    return "\n".join(out) + "\n"


def _mark(stage: dict[str, Any]) -> str:
    if stage["status"] == "passed" and stage["seconds"] is not None:
        return f"{stage['seconds']:.0f} s"
    status = str(stage["status"])
    return {"done-before": "done before", "not-run": "not run"}.get(status, status)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))


def write_all(report: dict[str, Any], outdir: Path) -> dict[str, str]:
    """Write the four forms into ``outdir`` (each to a temporary name, then renamed);
    return format → path."""
    outdir.mkdir(parents=True, exist_ok=True)
    texts = {"json": json.dumps(report, indent=2) + "\n", "junit": junit(report),
             "markdown": markdown(report), "html": html.render(report)}
    written = {}
    for form, text in texts.items():
        target = outdir / FILES[form]
        tmp = outdir / f".{FILES[form]}.{os.getpid()}.tmp"
        tmp.write_text(text)
        tmp.replace(target)
        written[form] = os.fspath(target)
    return written


def from_batch(batch_dir: Path, here: str) -> dict[str, Any] | None:
    """The report of the batch in ``batch_dir`` now (None when none ran there)."""
    data = statemod.read(batch_dir)
    if data is None:
        return None
    active = statemod.runner_active(batch_dir)
    for section in data["sections"].values():
        statemod.settled(section, active)
    return build(data, here)
