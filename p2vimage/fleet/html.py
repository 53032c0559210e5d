"""The batch report as one self-contained HTML page (inline CSS; no script, font, image or
other file it would need): a table per wave, a row per host with its verdict, the stages on a
timeline shared by all hosts, the error line, and links to its logs, console log and smoke
report (file: URLs on the conversion host that ran it). Each host row carries
``data-host`` and ``data-verdict`` for tools that read the page."""

from __future__ import annotations

import time
from html import escape
from pathlib import Path
from typing import Any

CSS = """
:root { --pass: #1a7f37; --fail: #cf222e; --incomplete: #9a6700; --notrun: #57606a; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       color: #1f2328; background: #fff; }
header { padding: 16px 24px; border-bottom: 1px solid #d0d7de; background: #f6f8fa; }
h1 { font-size: 20px; margin: 0 0 6px; }
h2 { font-size: 16px; margin: 24px 0 8px; }
main { padding: 0 24px 24px; }
.counts { display: flex; gap: 8px; list-style: none; padding: 0; margin: 8px 0 0; }
.counts li { padding: 2px 10px; border-radius: 12px; color: #fff; font-weight: 600; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; }
th, td { text-align: left; vertical-align: top; padding: 6px 8px;
         border-bottom: 1px solid #d0d7de; overflow-wrap: anywhere; }
th { font-size: 12px; text-transform: uppercase; color: #57606a; }
th.c-host { width: 14%; } th.c-verdict { width: 9%; } th.c-timeline { width: 37%; }
th.c-error { width: 25%; } th.c-links { width: 15%; }
td.name { font-weight: 600; }
.verdict { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff;
           font-weight: 600; }
.v-pass { background: var(--pass); } .v-fail { background: var(--fail); }
.v-incomplete { background: var(--incomplete); } .v-not-run { background: var(--notrun); }
.bar { position: relative; height: 22px; background: #eaeef2; border-radius: 4px; }
.seg { position: absolute; top: 0; height: 22px; min-width: 3px; border-radius: 3px;
       font-size: 11px; line-height: 22px; color: #fff; padding: 0 3px; overflow: hidden;
       white-space: nowrap; }
.s-passed { background: #2da44e; } .s-failed { background: var(--fail); }
.s-running, .s-interrupted { background: #bf8700; }
.earlier { font-size: 12px; color: #57606a; margin-top: 3px; }
.error { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: 12px;
         color: var(--fail); }
.links a { display: inline-block; margin-right: 8px; }
footer { padding: 12px 24px; color: #57606a; font-size: 12px; }
"""


def _when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch)) if epoch else "-"


def _link(path: str | None, label: str, where: str | None) -> str:
    if not path:
        return ""
    target = Path(path)
    href = target.as_uri() if target.is_absolute() else path
    title = f"{path} on {where}" if where else path
    return f'<a href="{escape(href)}" title="{escape(title)}">{escape(label)}</a>'


def _timeline(host: dict[str, Any], t0: float, span: float) -> str:
    segs, earlier = [], []
    for stage in host["stages"]:
        if not stage["started"]:
            if stage["status"] in ("done-before", "passed"):
                earlier.append(stage["name"])
            continue
        end = stage["finished"] or stage["started"]
        left = 100 * (stage["started"] - t0) / span
        width = max(0.5, 100 * (end - stage["started"]) / span)
        took = f" in {stage['seconds']:.0f} s" if stage["seconds"] is not None else ""
        again = f", attempt {stage['attempts']}" if stage.get("attempts", 0) > 1 else ""
        title = f"{stage['name']}: {stage['status']}{took}{again}"
        segs.append(f'<span class="seg s-{escape(stage["status"])}" style="left:{left:.2f}%;'
                    f'width:{min(width, 100 - left):.2f}%" title="{escape(title)}">'
                    f'{escape(stage["name"])}</span>')
    out = f'<div class="bar">{"".join(segs)}</div>'
    if earlier:
        out += f'<div class="earlier">done before: {escape(", ".join(earlier))}</div>'
    pending = [s["name"] for s in host["stages"] if s["status"] in ("pending", "not-run")]
    if pending:
        out += f'<div class="earlier">not run: {escape(", ".join(pending))}</div>'
    return out


def _row(host: dict[str, Any], t0: float, span: float) -> str:
    where = host.get("conversion_host")
    links = [_link(s["log"], f"{s['name']} log", where) for s in host["stages"]]
    links += [_link(host.get("console_log"), "console log", where),
              _link(host.get("smoke_report"), "smoke report", where)]
    verdict = host["verdict"]
    error = host["error"] or ""
    if host["failed_stage"]:
        error = f"{host['failed_stage']}: {error}"
    return (f'<tr class="host" id="host-{escape(host["name"])}" '
            f'data-host="{escape(host["name"])}" data-verdict="{escape(verdict)}">'
            f'<td class="name">{escape(host["name"])}</td>'
            f'<td><span class="verdict v-{verdict.replace(" ", "-")}">{escape(verdict)}'
            f"</span></td>"
            f'<td class="timeline">{_timeline(host, t0, span)}</td>'
            f'<td class="error">{escape(error)}</td>'
            f'<td class="links">{" ".join(x for x in links if x)}</td></tr>')


def render(report: dict[str, Any]) -> str:
    """The report as an HTML document."""
    hosts = {h["name"]: h for h in report["hosts"]}
    times = [t for h in report["hosts"] for s in h["stages"]
             for t in (s["started"], s["finished"]) if t]
    t0, t1 = (min(times), max(times)) if times else (0.0, 1.0)
    span = max(t1 - t0, 1.0)
    s = report["summary"]
    counts = "".join(f'<li class="v-{v.replace(" ", "-")}">{s[v]} {v}</li>'
                     for v in ("pass", "fail", "incomplete", "not run") if s[v])
    sources = ", ".join(f"{escape(str(src['conversion_host']))} ({src['hosts']} hosts)"
                        for src in report["sources"])
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>p2vimage batch report</title>", f"<style>{CSS}</style></head><body>",
        f"<header><h1>p2vimage batch report</h1><div>{s['hosts']} hosts, from {sources}; "
        f"stages from {_when(t0 if times else None)} to {_when(t1 if times else None)}</div>"
        f'<ul class="counts">{counts}</ul></header><main>']
    for wave, names in report["waves"].items():
        parts.append(f'<section class="wave" data-wave="{escape(wave)}">'
                     f"<h2>{escape(wave)}</h2><table><thead><tr>"
                     '<th class="c-host">Host</th><th class="c-verdict">Verdict</th>'
                     '<th class="c-timeline">Stages</th><th class="c-error">Error</th>'
                     '<th class="c-links">Logs</th></tr></thead><tbody>')
        parts += [_row(hosts[n], t0, span) for n in names]
        parts.append("</tbody></table></section>")
    parts.append(f"</main><footer>Generated {_when(report['generated'])} by p2vimage."
                 "</footer></body></html>")
    return "\n".join(parts) + "\n"
