"""``run``: [sync →] build → convert → smoke [→ upload → volume → boot] for one host, each
stage resumable from its stamp; and ``demo``, the built-in example run end to end. The sync
stage runs when the source is a host (``ssh://…``) and copies it into the staging tree that
build then reads. The cloud stages run only when asked for (``--until upload|volume|boot``).

A work directory (``--workdir``, default ``IMAGE.work``) keeps one stamp per finished stage:
its options and the image's size and mtime right after it. ``--resume`` skips a stage whose
stamp matches (same options, image unchanged since), so a rerun after a crash continues where
it stopped; ``--from``/``--until`` run a slice of the pipeline.

The cloud stages mark what they make with the host and a run id kept in the work directory
(``cloud-run.json``, made by the first cloud stage and reused by every rerun), and look for
what an earlier attempt made before they create anything (cloud/marks.py): a rerun, after a
crash or a kill at any point, never makes a second image, volume or server.
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
from p2vimage.cloud.options import CloudSettings
from p2vimage.convert import stage as convertmod
from p2vimage.convert.options import ConvertOptions, ConvertSettings
from p2vimage.core.errors import InputError, P2VError, StageError
from p2vimage.core.log import log, step
from p2vimage.core.plain import plain
from p2vimage.smoke import stage as smokemod
from p2vimage.smoke.options import Probe, ProbeKind, SmokeOptions, SmokeSettings
from p2vimage.sync import stage as syncmod

STAGES = ("sync", "build", "convert", "smoke", "upload", "volume", "boot")
CLOUD_STAGES = ("upload", "volume", "boot")
# What each cloud stage reads of the cloud settings (its stamp is redone when one changes).
CLOUD_KEYS = {"upload": ("cloud", "image_name", "disk_format", "compression"),
              "volume": ("cloud", "volume_size_gb", "volume_type", "availability_zone"),
              "boot": ("cloud", "flavor", "network", "key", "security_groups",
                       "availability_zone")}
RUN_FILE = "cloud-run.json"


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
    cloud: CloudSettings = dataclasses.field(default_factory=CloudSettings)

    @property
    def work(self) -> Path:
        """The work directory holding the stamps and reports."""
        return self.workdir or self.image.with_name(self.image.name + ".work")

    @property
    def host(self) -> str:
        """The ``p2vimage:host`` mark: the one given, else the ssh source's host, else the
        image's name without its suffix."""
        if self.cloud.host:
            return self.cloud.host
        if self.sync is not None and self.sync.source.host:
            return self.sync.source.host
        return self.image.stem


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
    cloud = plain(opts.cloud)
    cloud["compression"] = opts.cloud.chosen_compression.value
    for name, keys in CLOUD_KEYS.items():
        options[name] = {"host": opts.host, **{k: cloud[k] for k in keys}}
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


def cloud_run(opts: RunOptions) -> str:
    """The ``p2vimage:run`` mark of this work directory: made by the first cloud stage, read
    back by every later one and by reruns, so that they find what earlier attempts made.
    Raises StageError when the file is damaged (a new id would orphan what the cloud holds)."""
    path = opts.work / RUN_FILE
    try:
        record = json.loads(path.read_text())
        return str(record["run"])
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError) as exc:
        raise StageError(f"cannot read the run id in {path}: {exc}",
                         hint="restore it; if the cloud holds nothing of this host, delete it "
                         "to start a new run") from exc
    from p2vimage.cloud.connect import run_id

    record = {"run": run_id(), "host": opts.host, "created": time.time()}
    opts.work.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    return str(record["run"])


def _earlier(opts: RunOptions, stage: str, results: dict[str, Any]) -> dict[str, Any]:
    """The report of ``stage`` from this run, else from its stamp (for ``--from``)."""
    report = results["stages"].get(stage)
    if report is None:
        stamp = _stamp(opts, stage, stage_options(opts)[stage])
        report = stamp["report"] if stamp is not None else None
    if not isinstance(report, dict):
        later = STAGES[STAGES.index(stage) + 1]
        raise InputError(f"the {later} stage needs what the {stage} stage made, and "
                         f"{opts.work} has no {stage} stamp for these options",
                         hint=f"run from the {stage} stage (--from {stage})")
    return report


def check_cloud(opts: RunOptions, chosen: tuple[str, ...]) -> None:
    """Refuse, before any stage runs, cloud settings the chosen cloud stages cannot use:
    boot without --flavor or --network, security groups without a network, a compression
    the disk format cannot carry, a cloud that is not defined (read locally, no connection),
    a ``--from volume|boot`` without the stamp of the stage before. Raises InputError."""
    cloud = opts.cloud
    if "boot" in chosen and (cloud.flavor is None or cloud.network is None):
        raise InputError("the boot stage needs --flavor and --network",
                         hint="give both (--network none for no NIC), or stop before boot "
                         "with --until volume")
    if "boot" in chosen and cloud.security_groups and cloud.network == "none":
        raise InputError("security groups need a network", hint="give --network too")
    if chosen[0] in ("volume", "boot"):
        _earlier(opts, STAGES[STAGES.index(chosen[0]) - 1], {"stages": {}})
    from p2vimage.cloud import connect, upload

    if "upload" in chosen:
        upload.check_compression(cloud.disk_format.value, cloud.chosen_compression.value)
    connect.cloud_region(cloud.cloud)


def _upload(opts: RunOptions) -> dict[str, Any]:
    """Stage upload: trim the image (its files and its mtime stay as they were, so the stamps
    before stay valid), then the image of this host and run into Glance, once."""
    from p2vimage.cloud import glance, marks, upload

    run = cloud_run(opts)
    before = opts.image.stat()
    try:
        with step(f"Trimming free blocks of {opts.image.name}"):
            trimmed = upload.trim(opts.image)
    finally:  # only free blocks were punched: the image is the one the stamps describe
        os.utime(opts.image, ns=(before.st_atime_ns, before.st_mtime_ns))
    cloud = opts.cloud
    up = glance.UploadOptions(
        image=opts.image, cloud=cloud.cloud, name=cloud.image_name or opts.host,
        host=opts.host, run=run, disk_format=cloud.disk_format.value,
        compression=cloud.chosen_compression.value, trim=False)
    source = _digest({"image": _image_state(opts.image),
                      "upload": stage_options(opts)["upload"]})
    return {**marks.upload_once(up, source), "trim": trimmed}


def _volume(opts: RunOptions, results: dict[str, Any]) -> dict[str, Any]:
    """Stage volume: the bootable volume of this host and run, from the uploaded image."""
    from p2vimage.cloud import cinder, marks

    image_id = str(_earlier(opts, "upload", results)["image_id"])
    cloud = opts.cloud
    return marks.volume_once(cinder.VolumeOptions(
        cloud=cloud.cloud, image=image_id, az=cloud.availability_zone,
        size_gb=cloud.volume_size_gb, name=None, host=opts.host, run=cloud_run(opts),
        volume_type=cloud.volume_type))


def _boot(opts: RunOptions, results: dict[str, Any]) -> dict[str, Any]:
    """Stage boot: the test server of this host and run, booted from the volume."""
    from p2vimage.cloud import marks, nova

    volume_id = str(_earlier(opts, "volume", results)["volume_id"])
    cloud = opts.cloud
    assert cloud.flavor is not None and cloud.network is not None  # check_cloud
    return marks.boot_once(nova.BootOptions(
        cloud=cloud.cloud, volume=volume_id, flavor=cloud.flavor, key=cloud.key,
        az=cloud.availability_zone, network=cloud.network,
        security_groups=cloud.security_groups, name=None, host=opts.host,
        run=cloud_run(opts)))


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
    if set(chosen) & set(CLOUD_STAGES):
        check_cloud(opts, chosen)
    results: dict[str, Any] = {"image": os.fspath(opts.image), "workdir": os.fspath(opts.work),
                               "stages": {}}
    actions: dict[str, Callable[[], dict[str, Any]]] = {
        "build": lambda: imagemod.build(imagemod.BuildOptions(
            source=opts.source, output=opts.image, settings=opts.build,
            force=opts.force or opts.resume)),
        "convert": lambda: convertmod.convert(ConvertOptions(image=opts.image,
                                                             settings=opts.convert)),
        "smoke": lambda: smokemod.smoke(SmokeOptions(image=opts.image,
                                                     report_dir=opts.work / "smoke",
                                                     settings=opts.smoke)),
        "upload": lambda: _upload(opts),
        "volume": lambda: _volume(opts, results),
        "boot": lambda: _boot(opts, results),
    }
    if opts.sync is not None:
        sync_opts = opts.sync
        actions["sync"] = lambda: syncmod.sync(sync_opts)
    stages = stage_options(opts)
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
    if set(chosen) & set(CLOUD_STAGES):
        results["marks"] = {"host": opts.host, "run": cloud_run(opts)}
    results["seconds"] = round(time.monotonic() - started, 2)
    smoke_report = results["stages"].get("smoke")
    results["verdict"] = smoke_report.get("verdict", "pass") if isinstance(
        smoke_report, dict) and "verdict" in smoke_report else "not smoked"
    return results


def _cloud_lines(name: str, report: dict[str, Any]) -> list[str]:
    """What a cloud stage made or adopted, and what of earlier attempts it deleted."""
    kind = {"upload": "image", "volume": "volume", "boot": "server"}[name]
    how = ("adopted from an earlier attempt" if report.get("adopted")
           else f"made in {report.get('seconds')} s")
    out = [f"{name}: {kind} {report.get(kind + '_id')} ({report.get('name')}) "
           f"{report.get('status')}, {how}"]
    out += [f"  deleted {r.get('kind', kind)} {r['id']} of an earlier attempt: {r['reason']}"
            for r in report.get("replaced", [])]
    return out


def lines(results: dict[str, Any]) -> list[str]:
    """The human summary of a pipeline run."""
    out = []
    for name, report in results["stages"].items():
        if report.get("skipped"):
            out.append(f"{name}: skipped (done before)")
        if name == "smoke":
            out += smokemod.lines(report)
        elif name in CLOUD_STAGES and not report.get("skipped"):
            out += _cloud_lines(name, report)
        elif not report.get("skipped"):
            seconds = report.get("seconds")
            total = seconds.get("total") if isinstance(seconds, dict) else seconds
            out.append(f"{name}: done in {total} s")
    out.append(f"image: {results['image']}")
    if "marks" in results:
        out.append(f"marks: p2vimage:host={results['marks']['host']} "
                   f"p2vimage:run={results['marks']['run']}")
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
