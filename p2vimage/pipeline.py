"""``run``: [sync →] build → convert → smoke for one host, each stage resumable from its
stamp; and ``demo``, the built-in example run end to end. The sync stage runs when the source
is a host (``ssh://…``) and copies it into the staging tree that build then reads.

A work directory (``--workdir``, default ``IMAGE.work``) keeps one stamp per finished stage:
its options and the image's size and mtime right after it. ``--resume`` skips a stage whose
stamp matches (same options, image unchanged since), so a rerun after a crash continues where
it stopped; ``--from``/``--until`` run a slice of the pipeline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2vimage.build import stage as imagemod
from p2vimage.convert import stage as convertmod
from p2vimage.convert.options import ConvertOptions, ConvertSettings
from p2vimage.core.errors import InputError, P2VError
from p2vimage.core.log import log, step
from p2vimage.core.plain import plain
from p2vimage.smoke import stage as smokemod
from p2vimage.smoke.options import Probe, ProbeKind, SmokeOptions, SmokeSettings
from p2vimage.sync import stage as syncmod

STAGES = ("sync", "build", "convert", "smoke")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Settings of one pipeline run. With ``sync`` set (the SyncOptions of a host source),
    the pipeline starts by syncing and builds from its staging tree."""

    source: Path
    image: Path
    workdir: Path | None = None
    first: str | None = None  # default: the first stage that applies
    last: str = "smoke"
    sync: syncmod.SyncOptions | None = None
    resume: bool = False
    force: bool = False
    build: imagemod.BuildSettings = dataclasses.field(default_factory=imagemod.BuildSettings)
    convert: ConvertSettings = dataclasses.field(default_factory=ConvertSettings)
    smoke: SmokeSettings = dataclasses.field(default_factory=SmokeSettings)

    @property
    def work(self) -> Path:
        """The work directory holding the stamps and reports."""
        return self.workdir or self.image.with_name(self.image.name + ".work")


def _image_state(image: Path) -> dict[str, int] | None:
    try:
        st = image.stat()
    except FileNotFoundError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def stage_options(opts: RunOptions) -> dict[str, dict[str, Any]]:
    """What each stage that applies is run with, as plain JSON: the stamp of a stage holds
    the digest of its entry, so a stage is redone when any of these changes."""
    options: dict[str, dict[str, Any]] = {
        "build": {"source": os.fspath(opts.source), "settings": plain(opts.build)},
        "convert": plain(opts.convert),
        "smoke": plain(opts.smoke),
    }
    if opts.sync is not None:
        options["sync"] = {"source": opts.sync.source.rsync_spec(),
                           "staging": os.fspath(opts.sync.staging),
                           "excludes": list(opts.sync.excludes)}
    return options


def _digest(options: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()


def _stamp_path(opts: RunOptions, stage: str) -> Path:
    return opts.work / f"{stage}.stamp.json"


def _stamp(opts: RunOptions, stage: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """The stage's stamp when it was done with these options."""
    try:
        stamp: dict[str, Any] = json.loads(_stamp_path(opts, stage).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return stamp if stamp.get("options") == _digest(options) else None


def _done(opts: RunOptions, options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The stages that need not run again: the longest chain of stamps from ``build`` up to
    the last one that left the image exactly as it is now (a later stage that changed the
    image, or a crash half-way through one, makes the stages after it run again)."""
    chain: list[tuple[str, dict[str, Any]]] = []
    for name in (s for s in STAGES if s in options):
        stamp = _stamp(opts, name, options[name])
        if stamp is None:
            break
        chain.append((name, stamp))
    now = _image_state(opts.image)
    last = max((i for i, (_, stamp) in enumerate(chain) if stamp.get("image") == now),
               default=-1)
    return dict(chain[:last + 1])


def _write_stamp(opts: RunOptions, stage: str, options: dict[str, Any],
                 report: dict[str, Any]) -> None:
    opts.work.mkdir(parents=True, exist_ok=True)
    stamp = {"stage": stage, "finished": time.time(), "options": _digest(options),
             "image": _image_state(opts.image), "report": report}
    tmp = _stamp_path(opts, stage).with_suffix(".tmp")
    tmp.write_text(json.dumps(stamp, indent=2, default=str) + "\n")
    tmp.replace(_stamp_path(opts, stage))


def run(opts: RunOptions) -> dict[str, Any]:
    """Run the stages from ``opts.first`` to ``opts.last``; return every stage's report."""
    applicable = STAGES if opts.sync is not None else STAGES[1:]
    first = opts.first or applicable[0]
    for name in (first, opts.last):
        if name not in applicable:
            raise InputError(
                f"stage {name!r} does not apply here" if name in STAGES
                else f"unknown stage {name!r}",
                hint=f"stages: {', '.join(applicable)} (sync only for an ssh:// source)")
    chosen = applicable[applicable.index(first):applicable.index(opts.last) + 1]
    if not chosen:
        raise InputError(f"--from {first} comes after --until {opts.last}",
                         hint=f"stages run in this order: {', '.join(applicable)}")
    if first not in ("sync", "build") and not opts.image.exists():
        raise InputError(f"image {opts.image} does not exist",
                         hint="run from the build stage first")
    actions: dict[str, Callable[[], dict[str, Any]]] = {
        "build": lambda: imagemod.build(imagemod.BuildOptions(
            source=opts.source, output=opts.image, settings=opts.build,
            force=opts.force or opts.resume)),
        "convert": lambda: convertmod.convert(ConvertOptions(image=opts.image,
                                                             settings=opts.convert)),
        "smoke": lambda: smokemod.smoke(SmokeOptions(image=opts.image,
                                                     report_dir=opts.work / "smoke",
                                                     settings=opts.smoke)),
    }
    if opts.sync is not None:
        sync_opts = opts.sync
        actions["sync"] = lambda: syncmod.sync(sync_opts)
    stages = stage_options(opts)
    results: dict[str, Any] = {"image": os.fspath(opts.image), "workdir": os.fspath(opts.work),
                               "stages": {}}
    started = time.monotonic()
    done = _done(opts, stages) if opts.resume else {}
    for name in chosen:
        options, action = stages[name], actions[name]
        stamp = done.get(name)
        if stamp is not None:
            log.info("‣ %s: done before (stamp %s), skipped", name, _stamp_path(opts, name))
            results["stages"][name] = {**stamp["report"], "skipped": True}
            continue
        for later in applicable[applicable.index(name):]:  # a redone stage voids the rest
            _stamp_path(opts, later).unlink(missing_ok=True)
        try:
            with step(f"Stage {name}"):
                report = action()
        except P2VError as exc:  # --json shows what was done before the failure
            results.update(verdict="fail", failed_stage=name)
            exc.report = exc.report or results
            raise
        _write_stamp(opts, name, options, report)
        results["stages"][name] = report
        if name == "smoke" and report["verdict"] != "pass":
            results["verdict"] = "fail"
            error = smokemod.failure_error(report)
            error.report = results
            raise error
    results["seconds"] = round(time.monotonic() - started, 2)
    smoke_report = results["stages"].get("smoke")
    results["verdict"] = smoke_report.get("verdict", "pass") if isinstance(
        smoke_report, dict) and "verdict" in smoke_report else "not smoked"
    return results


def lines(results: dict[str, Any]) -> list[str]:
    """The human summary of a pipeline run."""
    out = []
    for name, report in results["stages"].items():
        if report.get("skipped"):
            out.append(f"{name}: skipped (done before)")
        if name == "smoke":
            out += smokemod.lines(report)
        elif not report.get("skipped"):
            seconds = report.get("seconds")
            total = seconds.get("total") if isinstance(seconds, dict) else seconds
            out.append(f"{name}: done in {total} s")
    out.append(f"image: {results['image']}")
    out.append(f"verdict: {results.get('verdict')}")
    return out


def demo(workdir: Path) -> dict[str, Any]:
    """The built-in example: the bullseye i386 legacy tree through the whole pipeline."""
    from p2vimage.demo.examples import ensure_fixture

    with step("Example tree bullseye-i386 (debootstrap, cached)"):
        tree = ensure_fixture("bullseye-i386")
    workdir.mkdir(parents=True, exist_ok=True)
    page = Probe(ProbeKind.HTTP, 80, "p2vimage fixture bullseye-i386 OK")
    return run(RunOptions(source=tree, image=workdir / "bullseye-i386.raw",
                          workdir=workdir / "work", force=True,
                          smoke=SmokeSettings(probes=(page,))))


def finished(opts: RunOptions) -> dict[str, dict[str, Any]]:
    """The stages a ``--resume`` run with ``opts`` would skip, each with its stamp (what
    ``batch plan`` shows as done, by the same rule)."""
    return _done(opts, stage_options(opts))
