"""cloud cleanup: find the servers, ports, volumes and images p2vimage marked for a host (and
run) and delete them: servers first (they hold the ports and volumes), ports, volumes once
Nova detached them, then images."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import keystoneauth1.exceptions as ksa_exc
import openstack.exceptions as sdk_exc

from p2vimage.cloud.connect import (
    TAG_HOST,
    TAG_RUN,
    Call,
    api,
    cloud_region,
    connect,
    translate,
)


def _marked(metadata: dict[str, str] | None, host: str, run: str | None) -> bool:
    meta = metadata or {}
    return meta.get(TAG_HOST) == host and (run is None or meta.get(TAG_RUN) == run)


_BUSY = ("in-use", "detaching", "attaching", "reserved", "creating", "downloading")
KINDS = ("servers", "ports", "volumes", "images")


def _wait_detached(conn: Any, vol: Any, seconds: int = 300) -> None:
    """Until a volume of a deleted server is detached (Nova detaches after the delete); one
    that goes to ``error`` is deleted as it is. Raises ResourceTimeout."""
    if vol.status in _BUSY:
        with contextlib.suppress(sdk_exc.ResourceFailure):
            conn.block_storage.wait_for_status(vol, "available", failures=["error"],
                                               interval=1, wait=seconds)


def cleanup_plan(host: str, run: str | None) -> list[Call]:
    """The calls ``cleanup`` makes (what --dry-run prints): list each kind, keep what is
    marked, delete it; servers first (they hold the ports and volumes), ports, volumes,
    images."""
    marks = {TAG_HOST: host, **({TAG_RUN: run} if run else {})}
    tagged = [f"{k}={v}" for k, v in marks.items()]
    return [Call("compute.servers", {"details": True, "metadata": marks}),
            Call("compute.delete_server", {"server": "<each server found>"}),
            Call("network.ports", {"tags": ",".join(tagged)}),
            Call("network.delete_port", {"port": "<each port found>"}),
            Call("block_storage.volumes", {"details": True, "metadata": marks}),
            Call("block_storage.delete_volume", {"volume": "<each volume found, once "
                                                 "detached>"}),
            Call("image.images", {"tag": tagged[0], **({"also_tagged": tagged[1]}
                                                       if run else {})}),
            Call("image.delete_image", {"image": "<each image found>"})]


def cleanup(cloud_name: str | None, host: str, run: str | None = None,
            dry_run: bool = False, region: str | None = None) -> dict[str, Any]:
    """Find (and unless ``dry_run`` delete) servers, ports, volumes and images marked for
    ``host``.

    Servers go first (they hold the ports and volumes), then ports, volumes, images last. A
    service the cloud does not have is skipped. A dry run checks the cloud's settings and
    connects to nothing.
    """
    if dry_run:
        label, settings = cloud_region(cloud_name, region)
        return {"host": host, "run": run, "cloud": label, "region": settings.region_name,
                "dry_run": True, "calls": [c.text() for c in cleanup_plan(host, run)]}
    cloud = cloud_name or os.environ.get("OS_CLOUD") or "OS_*"
    conn = connect(cloud_name, region)
    found: dict[str, list[dict[str, str]]] = {kind: [] for kind in KINDS}
    skipped: list[str] = []
    marks = [f"{TAG_HOST}={host}", *([f"{TAG_RUN}={run}"] if run else [])]
    listings: dict[str, Callable[[], list[Any]]] = {
        "servers": lambda: [s for s in conn.compute.servers(details=True)
                            if _marked(s.metadata, host, run)],
        "ports": lambda: list(conn.network.ports(tags=",".join(marks))),
        "volumes": lambda: [v for v in conn.block_storage.volumes(details=True)
                            if _marked(v.metadata, host, run)],
        "images": lambda: [i for i in conn.image.images(tag=f"{TAG_HOST}={host}")
                           if run is None or f"{TAG_RUN}={run}" in (i.tags or [])],
    }
    resources: dict[str, list[Any]] = {}
    for kind, listing in listings.items():
        try:
            resources[kind] = listing()
        except (sdk_exc.EndpointNotFound, ksa_exc.EndpointNotFound,
                sdk_exc.ServiceDisabledException):
            skipped.append(kind)
            resources[kind] = []
        except Exception as exc:
            raise translate(exc, f"listing {kind}", cloud) from exc
        found[kind] = [{"id": r.id, "name": r.name or ""} for r in resources[kind]]
    for kind in KINDS:
        for res in resources[kind]:
            with api(f"deleting {kind[:-1]} {res.id}", cloud):
                if kind == "servers":
                    conn.compute.delete_server(res, ignore_missing=True)
                    conn.compute.wait_for_delete(res, interval=1, wait=300)
                elif kind == "ports":
                    conn.network.delete_port(res, ignore_missing=True)
                elif kind == "volumes":
                    _wait_detached(conn, res)
                    conn.block_storage.delete_volume(res, ignore_missing=True)
                    conn.block_storage.wait_for_delete(res, interval=1, wait=300)
                else:
                    conn.image.delete_image(res, ignore_missing=True)
    return {"host": host, "run": run, "cloud": cloud, "region": conn.config.region_name,
            "dry_run": False, "found": found,
            "skipped_services": skipped,
            "calls": [f"{kind[:-1]}.delete({r['id']!r})  # {r['name']}"
                      for kind in found for r in found[kind]]}


def cleanup_lines(report: dict[str, Any]) -> list[str]:
    if report["dry_run"]:
        marks = f"{TAG_HOST}={report['host']}" + (f", {TAG_RUN}={report['run']}"
                                                  if report["run"] else "")
        return [f"would find the servers, ports, volumes and images marked {marks} in cloud "
                f"{report['cloud']!r} and delete them:",
                *(f"  would call: {c}" for c in report["calls"])]
    out = [f"deleted {kind[:-1]} {r['id']} ({r['name']})"
           for kind, items in report["found"].items() for r in items]
    if not out:
        out.append(f"nothing marked {TAG_HOST}={report['host']} in cloud {report['cloud']!r}")
    out += [f"  no {kind} service in this cloud: skipped" for kind in report["skipped_services"]]
    return out
