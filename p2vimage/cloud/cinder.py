"""Stage 6, volume: a bootable Cinder volume from the Glance image, in an availability zone;
a volume that goes to error is deleted."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

from p2vimage.cloud.connect import (
    Call,
    GiB,
    api,
    cloud_region,
    connect,
    find_image,
    image_host,
    require_zone,
    tags,
    undo_delete,
)
from p2vimage.core.errors import InputError
from p2vimage.core.log import log, step


@dataclasses.dataclass(frozen=True)
class VolumeOptions:
    """Settings of one ``volume``."""

    cloud: str | None
    image: str
    az: str | None
    size_gb: int | None
    name: str | None
    host: str | None
    run: str
    volume_type: str | None = None
    timeout: int = 3600
    dry_run: bool = False
    region: str | None = None


def volume_request(opts: VolumeOptions, image_id: str, size_gb: int,
                   host: str) -> dict[str, Any]:
    """The keyword arguments of block_storage.create_volume."""
    req: dict[str, Any] = {"name": opts.name or f"p2vimage-{host}-{opts.run}",
                           "size": size_gb, "image_id": image_id,
                           "metadata": tags(host, opts.run),
                           "description": f"p2vimage: {host}, run {opts.run}"}
    if opts.az:
        req["availability_zone"] = opts.az
    if opts.volume_type:
        req["volume_type"] = opts.volume_type
    return req


def size_for(image_bytes: int, virtual_bytes: int | None, asked_gb: int | None) -> int:
    """The volume size in GiB: at least the image's virtual size; InputError if asked less."""
    need = max(1, math.ceil(max(virtual_bytes or 0, image_bytes) / GiB))
    if asked_gb is None:
        return need
    if asked_gb < need:
        raise InputError(f"--size {asked_gb} GiB is smaller than the image ({need} GiB)",
                         hint=f"use --size {need} or more")
    return asked_gb



def volume(opts: VolumeOptions) -> dict[str, Any]:
    """A bootable Cinder volume from a Glance image, in the chosen availability zone.

    Waits for ``available`` (``error`` fails); a volume that fails is deleted.
    """
    if opts.dry_run:
        label, settings = cloud_region(opts.cloud, opts.region)
        req = volume_request(opts, f"<id of {opts.image}>", opts.size_gb or 0,
                             opts.host or "<host from the image's tag>")
        return {"dry_run": True, "cloud": label, "region": settings.region_name,
                "calls": [c.text() for c in [
            Call("image.find_image", {"name_or_id": opts.image}),
            Call("block_storage.availability_zones"),
            Call("block_storage.create_volume", req),
            Call("block_storage.wait_for_status", {"status": "available",
                                                   "failures": ["error"]})]]}
    cloud = opts.cloud or os.environ.get("OS_CLOUD") or "OS_*"
    conn = connect(opts.cloud, opts.region)
    started = time.monotonic()
    image = find_image(conn, opts.image, cloud)
    if image.status != "active":
        raise InputError(f"image {image.id} is {image.status}, not active",
                         hint="wait for the upload to finish, or upload again")
    host = opts.host or image_host(image) or image.name
    size_gb = size_for(int(image.size or 0), image.virtual_size, opts.size_gb)
    if opts.az:
        require_zone("volume", opts.az, conn.block_storage.availability_zones, cloud)
    req = volume_request(opts, image.id, size_gb, host)
    with api("creating the volume", cloud):
        vol = conn.block_storage.create_volume(**req)
    log.info("volume %s (%s, %d GiB) created from image %s", vol.id, req["name"], size_gb,
             image.id)
    try:
        with step(f"Waiting for volume {vol.id} to become available"), \
                api(f"creating volume {vol.id} from image {image.id}", cloud):
            vol = conn.block_storage.wait_for_status(vol, "available", failures=["error"],
                                                     interval=2, wait=opts.timeout)
        if not vol.is_bootable:
            with api(f"marking volume {vol.id} bootable", cloud):
                conn.block_storage.set_volume_bootable_status(vol, True)
                vol = conn.block_storage.get_volume(vol.id)
    except BaseException:
        with step(f"Deleting the failed volume {vol.id}"):
            undo_delete(conn.block_storage.delete_volume, vol.id)
        raise
    return {"volume_id": vol.id, "name": vol.name, "size_gb": vol.size,
            "availability_zone": vol.availability_zone, "bootable": bool(vol.is_bootable),
            "status": vol.status, "image_id": image.id, "host": host, "run": opts.run,
            "cloud": cloud, "region": conn.config.region_name,
            "seconds": round(time.monotonic() - started, 1)}


def volume_lines(report: dict[str, Any]) -> list[str]:
    if report.get("dry_run"):
        return [f"would call: {c}" for c in report["calls"]]
    return [f"volume {report['volume_id']} ({report['name']}) {report['status']}: "
            f"{report['size_gb']} GiB in {report['availability_zone']}, bootable "
            f"{'yes' if report['bootable'] else 'no'}, from image {report['image_id']}"]


# -- boot ----------------------------------------------------------------------------------
