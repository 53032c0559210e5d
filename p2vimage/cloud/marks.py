"""What an earlier attempt of the same host and run made, found by its marks
(``p2vimage:host`` and ``p2vimage:run``: image tags, volume and server metadata), so that a
rerun of ``run`` never makes a second image, volume or server.

Each ``*_once`` function looks before it creates: a resource that is complete and what this
run wants is adopted (``adopted: true`` in the report); one still being made by the service
(a volume ``downloading``, a server in ``BUILD``: the service goes on after its client was
killed) is waited for and judged again; one that failed, was left half made (an image
``queued`` or ``saving`` after a killed upload, a volume in ``error``) or was made for other
settings is deleted, and a new one is made by the stage (glance.upload, cinder.volume,
nova.boot). An image counts as complete only when p2vimage verified it: after the hashes
matched, the upload writes the local image's key and the verified md5 into the image's
properties (``p2vimage:source``, ``p2vimage:md5``).

Errors: those of the stages; a marked resource that cannot be deleted, or that is attached to
a server this run did not make → StageError (1).
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import openstack.exceptions as sdk_exc
from openstack import utils

from p2vimage.cloud import cinder, glance, nova
from p2vimage.cloud.connect import TAG_HOST, TAG_RUN, api, connect, undo_delete
from p2vimage.core.errors import StageError
from p2vimage.core.log import log, step

SOURCE = "p2vimage:source"  # image property: the key of the local image it was made from
VERIFIED = "p2vimage:md5"  # image property: the md5 p2vimage sent and verified
KINDS = ("image", "volume", "server")
_GONE = {"image": {"deleted", "pending_delete"}, "volume": {"deleting"},
         "server": {"DELETED", "SOFT_DELETED"}}
_VOLUME_DONE = {"available", "in-use"}
_SERVER_BUSY = {"BUILD", "REBUILD", "RESIZE", "MIGRATING", "REBOOT", "HARD_REBOOT",
                "PASSWORD"}


class Verdict(enum.StrEnum):
    """What to do with a resource an earlier attempt made."""

    ADOPT = "adopt"  # complete and what this run wants
    WAIT = "wait"  # still being made by the service: wait, then judge again
    REPLACE = "replace"  # failed, half made, or made for other settings: delete it


Judged = tuple[Verdict, str]


def _cloud(name: str | None) -> str:
    return name or os.environ.get("OS_CLOUD") or "OS_*"


def _marked(metadata: Any, host: str, run: str) -> bool:
    meta = dict(metadata or {})
    return meta.get(TAG_HOST) == host and meta.get(TAG_RUN) == run


def find_marked(conn: Any, kind: str, host: str, run: str) -> list[Any]:
    """The images, volumes or servers (``kind``) marked with this host and run, but for
    those on their way out (deleted, deleting)."""
    if kind == "image":
        found = [i for i in conn.image.images(tag=f"{TAG_HOST}={host}")
                 if f"{TAG_RUN}={run}" in (i.tags or [])]
    elif kind == "volume":
        found = [v for v in conn.block_storage.volumes(details=True)
                 if _marked(v.metadata, host, run)]
    elif kind == "server":
        found = [s for s in conn.compute.servers(details=True)
                 if _marked(s.metadata, host, run)]
    else:
        raise ValueError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    return [r for r in found if str(r.status) not in _GONE[kind]]


def _props(image: Any) -> dict[str, Any]:
    return dict(getattr(image, "properties", None) or {})


def judge_image(image: Any, source: str) -> Judged:
    """An image is adopted when active, verified by p2vimage (its md5 property is Glance's
    checksum) and made from the same local image (``source``, the upload's key)."""
    if image.status != "active":
        return Verdict.REPLACE, f"left {image.status} by an interrupted upload"
    props = _props(image)
    if not props.get(VERIFIED) or props.get(VERIFIED) != image.checksum:
        return Verdict.REPLACE, "active but never verified against the local image"
    if props.get(SOURCE) != source:
        return Verdict.REPLACE, "made from another local image or with other settings"
    return Verdict.ADOPT, "active, verified, same local image"


def judge_volume(vol: Any, opts: cinder.VolumeOptions, marked_servers: Iterable[str]) -> Judged:
    """A volume is adopted when available (or attached only to this run's servers), made from
    the image ``opts.image`` (an ID), in the zone, of the size and type asked for."""
    status = str(vol.status)
    if status.startswith("error"):
        return Verdict.REPLACE, f"gone to {status}"
    if status not in _VOLUME_DONE:
        return Verdict.WAIT, f"still {status}"
    image_id = (vol.volume_image_metadata or {}).get("image_id")
    if image_id != opts.image:
        return Verdict.REPLACE, f"made from image {image_id}, not {opts.image}"
    for asked, have, what in ((opts.az, vol.availability_zone, "zone"),
                              (opts.size_gb, vol.size, "size"),
                              (opts.volume_type, vol.volume_type, "volume type")):
        if asked is not None and asked != have:
            return Verdict.REPLACE, f"its {what} is {have}, not {asked}"
    servers = set(marked_servers)
    foreign = [a.get("server_id") for a in vol.attachments or []
               if a.get("server_id") not in servers]
    if foreign:
        return Verdict.REPLACE, f"attached to server {foreign[0]}, which this run did not make"
    return Verdict.ADOPT, f"{status}, from the same image"


def _flavor_names(flavor: Any) -> set[str]:
    if flavor is None:
        return set()
    if isinstance(flavor, dict):
        values = [flavor.get(k) for k in ("original_name", "name", "id")]
    else:
        values = [getattr(flavor, k, None) for k in ("original_name", "name", "id")]
    return {str(v) for v in values if v}


def judge_server(server: Any, volume_id: str, flavors: set[str],
                 network: str | None) -> Judged:
    """A server is adopted when ACTIVE, booted from ``volume_id`` alone, of one of the names
    ``flavors`` (when Nova says which), with no NIC (``network`` None) or one on the network
    named ``network``."""
    status = str(server.status)
    if status in _SERVER_BUSY:
        return Verdict.WAIT, f"still {status}"
    if status != "ACTIVE":
        return Verdict.REPLACE, f"{status}, not ACTIVE"
    attached = [a.get("id") for a in server.attached_volumes or []]
    if attached != [volume_id]:
        return Verdict.REPLACE, f"boots from {attached or 'no volume'}, not {volume_id}"
    have = _flavor_names(server.flavor)
    if have and not have & flavors:
        return Verdict.REPLACE, f"flavor {sorted(have)[0]}, not {sorted(flavors)[0]}"
    networks = set(server.addresses or {})
    if (network is None and networks) or (network is not None and network not in networks):
        return Verdict.REPLACE, f"on networks {sorted(networks) or 'none'}, not " \
                                f"{network or 'none'}"
    return Verdict.ADOPT, "ACTIVE, booted from the same volume"


def _settle(kind: str, found: list[Any], judge: Callable[[Any], Judged],
            wait: Callable[[Any], Any], delete: Callable[[Any], None]
            ) -> tuple[Any | None, list[dict[str, str]]]:
    """The one resource to adopt (or None) and the ones deleted, each with the reason."""
    adopted = None
    replaced = []
    for res in found:
        verdict, why = judge(res)
        if verdict is Verdict.WAIT:
            with step(f"Waiting for {kind} {res.id} of an earlier attempt ({why})"):
                res = wait(res)
            verdict, why = judge(res)
            if verdict is Verdict.WAIT:
                verdict = Verdict.REPLACE
        if verdict is Verdict.ADOPT and adopted is None:
            log.info("%s %s of an earlier attempt adopted: %s", kind, res.id, why)
            adopted = res
            continue
        if verdict is Verdict.ADOPT:
            why = "a second one (one is kept)"
        with step(f"Deleting {kind} {res.id} of an earlier attempt: {why}"):
            delete(res)
        replaced.append({"kind": kind, "id": str(res.id), "status": str(res.status),
                         "reason": why})
    return adopted, replaced


def _until(get: Callable[[str], Any], res: Any, done: Callable[[Any], bool], what: str,
           timeout: float, cloud: str) -> Any:
    """Read ``get(res.id)`` until ``done``, at openstacksdk's own pace (its iterate_timeout,
    the loop under its wait_for_status); StageError after ``timeout`` seconds."""
    if done(res):
        return res
    try:
        for _ in utils.iterate_timeout(timeout, f"{what} {res.id} did not settle", wait=2):
            with api(f"reading {what} {res.id}", cloud):
                res = get(res.id)
            if done(res):
                return res
    except sdk_exc.ResourceTimeout:
        pass
    raise StageError(f"{what} {res.id} in cloud {cloud!r} is still {res.status} after "
                     f"{timeout:g} s", hint="look at it in the cloud, or delete it with "
                     "'p2vimage cloud cleanup --source-host HOST --run-id RUN'")


def _deleted(ok: bool, kind: str, res_id: str, host: str, run: str) -> None:
    if not ok:
        raise StageError(f"cannot delete {kind} {res_id}, left by an earlier attempt",
                         hint=f"delete it with 'p2vimage cloud cleanup --source-host {host} "
                         f"--run-id {run}', then run again")


def upload_once(opts: glance.UploadOptions, source: str) -> dict[str, Any]:
    """The Glance image of this host and run: the earlier attempt's when ``judge_image``
    adopts it, else a new upload (``glance.upload``), which is then marked verified."""
    cloud = _cloud(opts.cloud)
    started = time.monotonic()
    conn = connect(opts.cloud)
    with api("looking for the images of earlier attempts", cloud):
        found = find_marked(conn, "image", opts.host, opts.run)

    def delete(image: Any) -> None:
        _deleted(undo_delete(conn.image.delete_image, image.id), "image", image.id,
                 opts.host, opts.run)

    image, replaced = _settle("image", found, lambda i: judge_image(i, source),
                              lambda i: i, delete)
    if image is not None:
        return {"image_id": image.id, "name": image.name, "cloud": cloud,
                "status": image.status, "disk_format": image.disk_format,
                "md5": image.checksum, "size": image.size, "tags": list(image.tags or []),
                "host": opts.host, "run": opts.run, "adopted": True, "replaced": replaced,
                "seconds": round(time.monotonic() - started, 1)}
    report = glance.upload(opts)
    with api(f"marking image {report['image_id']} verified", cloud):
        conn.image.update_image(report["image_id"], **{SOURCE: source,
                                                       VERIFIED: report["md5"]})
    return {**report, "adopted": False, "replaced": replaced}


def _drop_servers(conn: Any, ids: Iterable[str], cloud: str) -> list[dict[str, str]]:
    """Delete the servers ``ids`` and wait until they are gone; what was deleted."""
    dropped = []
    for server_id in ids:
        with api(f"deleting server {server_id}", cloud):
            server = conn.compute.find_server(server_id, ignore_missing=True)
            if server is None:
                continue
            log.info("deleting server %s (%s)", server.id, server.name)
            conn.compute.delete_server(server, ignore_missing=True)
            conn.compute.wait_for_delete(server, interval=1, wait=300)
        dropped.append({"kind": "server", "id": str(server.id), "status": str(server.status),
                        "reason": "it held a volume that is replaced"})
    return dropped


def volume_once(opts: cinder.VolumeOptions) -> dict[str, Any]:
    """The Cinder volume of this host and run, from image ``opts.image`` (an ID): the earlier
    attempt's when ``judge_volume`` adopts it, else a new one (``cinder.volume``)."""
    assert opts.host is not None, "the pipeline gives the host mark"
    host = opts.host
    cloud = _cloud(opts.cloud)
    started = time.monotonic()
    conn = connect(opts.cloud)
    with api("looking for the volumes of earlier attempts", cloud):
        found = find_marked(conn, "volume", host, opts.run)
        servers = {s.id for s in find_marked(conn, "server", host, opts.run)} if found else set()
    dropped: list[dict[str, str]] = []

    def wait(vol: Any) -> Any:
        return _until(conn.block_storage.get_volume, vol,
                      lambda v: str(v.status) in _VOLUME_DONE or str(v.status).startswith(
                          "error"), "volume", opts.timeout, cloud)

    def delete(vol: Any) -> None:
        holders = [a.get("server_id") for a in vol.attachments or []]
        if any(h not in servers for h in holders):
            raise StageError(f"volume {vol.id} carries the marks of host {host} run "
                             f"{opts.run} but is attached to server {holders[0]}, which "
                             "this run did not make",
                             hint="detach it, or delete it with 'p2vimage cloud cleanup'")
        dropped.extend(_drop_servers(conn, holders, cloud))
        vol = _until(conn.block_storage.get_volume, vol,
                     lambda v: str(v.status) in ("available", "error") or
                     str(v.status).startswith("error_"), "volume", 300, cloud)
        _deleted(undo_delete(conn.block_storage.delete_volume, vol.id),
                 "volume", vol.id, host, opts.run)
        with api(f"deleting volume {vol.id}", cloud):
            conn.block_storage.wait_for_delete(vol, interval=1, wait=300)

    vol, replaced = _settle("volume", found, lambda v: judge_volume(v, opts, servers), wait,
                            delete)
    replaced = dropped + replaced
    if vol is None:
        return {**cinder.volume(opts), "adopted": False, "replaced": replaced}
    if not vol.is_bootable:
        with api(f"marking volume {vol.id} bootable", cloud):
            conn.block_storage.set_volume_bootable_status(vol, True)
            vol = conn.block_storage.get_volume(vol.id)
    return {"volume_id": vol.id, "name": vol.name, "size_gb": vol.size,
            "availability_zone": vol.availability_zone, "bootable": bool(vol.is_bootable),
            "status": vol.status, "image_id": opts.image, "host": host, "run": opts.run,
            "cloud": cloud, "adopted": True, "replaced": replaced,
            "seconds": round(time.monotonic() - started, 1)}


def boot_once(opts: nova.BootOptions) -> dict[str, Any]:
    """The test server of this host and run, booted from volume ``opts.volume`` (an ID): the
    earlier attempt's when ``judge_server`` adopts it, else a new one (``nova.boot``)."""
    assert opts.host is not None, "the pipeline gives the host mark"
    cloud = _cloud(opts.cloud)
    started = time.monotonic()
    conn = connect(opts.cloud)
    with api("looking for the servers of earlier attempts", cloud):
        found = find_marked(conn, "server", opts.host, opts.run)
    flavors, network = {opts.flavor}, None
    if found:
        with api(f"looking up flavor {opts.flavor!r}", cloud):
            flavor = conn.compute.find_flavor(opts.flavor, ignore_missing=True)
        flavors |= _flavor_names(flavor)
        if opts.network != "none":
            with api(f"looking up network {opts.network!r}", cloud):
                net = conn.network.find_network(opts.network, ignore_missing=True)
            network = net.name if net is not None else opts.network

    def wait(server: Any) -> Any:
        return _until(conn.compute.get_server, server,
                      lambda s: str(s.status) not in _SERVER_BUSY, "server", opts.timeout,
                      cloud)

    def delete(server: Any) -> None:
        _drop_servers(conn, [server.id], cloud)

    server, replaced = _settle("server", found,
                               lambda s: judge_server(s, opts.volume, flavors, network), wait,
                               delete)
    if server is None:
        if replaced:  # Nova detaches the volume of a deleted server after the delete
            with api(f"reading volume {opts.volume}", cloud):
                vol = conn.block_storage.get_volume(opts.volume)
            _until(conn.block_storage.get_volume, vol,
                   lambda v: str(v.status) != "in-use" and str(v.status) != "detaching",
                   "volume", 300, cloud)
        return {**nova.boot(opts), "adopted": False, "replaced": replaced}
    return {"server_id": server.id, "name": server.name, "status": server.status,
            "volume_id": opts.volume,
            "attached_volumes": [a.get("id") for a in server.attached_volumes or []],
            "addresses": {net: [a.get("addr") for a in addrs]
                          for net, addrs in (server.addresses or {}).items()},
            "console_url": None, "availability_zone": server.availability_zone,
            "host": opts.host, "run": opts.run, "cloud": cloud, "adopted": True,
            "replaced": replaced, "seconds": round(time.monotonic() - started, 1)}
