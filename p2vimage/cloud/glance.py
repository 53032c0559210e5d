"""Stage 5, upload: the image into Glance, streamed and hashed on the way, verified, with the
guest's properties; a failed upload deletes its image."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import keystoneauth1.exceptions as ksa_exc
import openstack.exceptions as sdk_exc
import requests
from openstack.image.v2.image import Image

from p2vimage.cloud import upload as up
from p2vimage.cloud.connect import (
    Call,
    _detail,
    api,
    cloud_region,
    connect,
    retry_delete,
    tag_list,
    translate,
)
from p2vimage.core.errors import P2VError, PreconditionError, StageError
from p2vimage.core.log import log, step
from p2vimage.guest import record as guestrecord


@dataclasses.dataclass(frozen=True)
class UploadOptions:
    """Settings of one ``upload``."""

    image: Path
    cloud: str | None
    name: str
    host: str
    run: str
    disk_format: str = "qcow2"
    compression: str = "zstd"
    trim: bool = True
    use_import: bool = False
    visibility: str = "private"
    timeout: int = 3600
    dry_run: bool = False


def image_attrs(opts: UploadOptions, props: dict[str, str]) -> dict[str, Any]:
    """The attributes of the Glance image record (properties included)."""
    return {"name": opts.name, "disk_format": opts.disk_format, "container_format": "bare",
            "visibility": opts.visibility, "tags": tag_list(opts.host, opts.run), **props}


def upload_plan(opts: UploadOptions, props: dict[str, str]) -> list[Call]:
    """The calls ``upload`` makes, in order (what --dry-run prints)."""
    calls = []
    if opts.trim:
        calls.append(Call("local.trim", {"image": str(opts.image), "how": "dumpe2fs free "
                                         "blocks → fallocate(PUNCH_HOLE)"}))
    if opts.disk_format != "raw":
        calls.append(Call("local.run", {"argv": up.qemu_img_argv(
            opts.image, Path(f".{opts.image.name}.XXXX.qcow2"), opts.disk_format,
            opts.compression)}))
    calls.append(Call("image.create_image", image_attrs(opts, props)))
    data = {"data": "<file, hashed md5+sha512 while sent>"}
    if opts.use_import:
        calls += [Call("image.stage_image", {"image": "<new id>", **data}),
                  Call("image.import_image", {"image": "<new id>", "method": "glance-direct"})]
    else:
        calls.append(Call("image.upload", {"image": "<new id>", **data}))
    calls += [Call("image.wait_for_status", {"image": "<new id>", "status": "active",
                                             "failures": ["killed", "deleted"]}),
              Call("image.get_image", {"image": "<new id>", "compare": "checksum=md5, "
                                       "os_hash_value=sha512"})]
    return calls


def _send(conn: Any, image: Any, reader: up.HashingReader, use_import: bool) -> None:
    if use_import:
        methods = image.image_import_methods or []
        if "glance-direct" not in methods:
            raise PreconditionError("the image service does not offer the glance-direct import",
                                    hint="upload without --use-import")
        image.stage(conn.image, data=reader, size=reader.size)
        response = conn.image.import_image(image, method="glance-direct")
        response.raise_for_status()  # import_image returns the response instead of raising
    else:
        response = image.upload(conn.image, data=reader, size=reader.size)
        sdk_exc.raise_from_response(response)


def upload(opts: UploadOptions) -> dict[str, Any]:
    """Trim, convert, stream to Glance with local hashes, verify, wait for ``active``.

    On any failure (and on Ctrl-C) the image this run created is deleted. Raises InputError,
    PreconditionError or StageError (see the module docstring).
    """
    up.check_compression(opts.disk_format, opts.compression)
    up.check_raw(opts.image)
    props = guestrecord.for_image(opts.image).glance_properties()
    if opts.dry_run:
        label, _ = cloud_region(opts.cloud)
        return {"dry_run": True, "cloud": label, "properties": props,
                "calls": [c.text() for c in upload_plan(opts, props)]}
    cloud = opts.cloud or os.environ.get("OS_CLOUD") or "OS_*"
    conn = connect(opts.cloud)
    started = time.monotonic()
    raw_size = opts.image.stat().st_size
    trimmed: dict[str, int] = {}
    if opts.trim:
        with step(f"Trimming free blocks of {opts.image.name}"):
            trimmed = up.trim(opts.image)
    with contextlib.ExitStack() as stack:
        if opts.disk_format != "raw":
            with step(f"Converting to {opts.disk_format} ({opts.compression})"):
                path = stack.enter_context(up.converted(opts.image, opts.disk_format,
                                                        opts.compression))
        else:
            path = opts.image
        size = path.stat().st_size
        with api("creating the image record", cloud):
            image = Image.new(**image_attrs(opts, props)).create(conn.image)
        log.info("image %s (%s) created; sending %d bytes", image.id, opts.name, size)
        try:
            with step(f"Sending {path.name} to the image service"):
                sent_at = time.monotonic()
                with up.HashingReader(path, desc=opts.name) as reader:
                    try:
                        _send(conn, image, reader, opts.use_import)
                    except (ksa_exc.ConnectFailure, requests.ConnectionError) as exc:
                        raise StageError(
                            f"the connection to the image service of cloud {cloud!r} broke "
                            f"after {reader.sent} of {size} bytes of image {image.id}: "
                            f"{_detail(exc)}", hint="run the same command again") from exc
                    except Exception as exc:
                        raise translate(exc, f"uploading image {image.id}", cloud) from exc
                send_seconds = time.monotonic() - sent_at
            if not reader.complete:
                raise StageError(f"the upload of image {image.id} stopped after {reader.sent} "
                                 f"of {size} bytes", hint="run the same command again")
            with step("Waiting for the image to become active"), \
                    api(f"waiting for image {image.id}", cloud):
                image = conn.image.wait_for_status(image, "active",
                                                   failures=["killed", "deleted"],
                                                   interval=1, wait=opts.timeout)
                image = conn.image.get_image(image.id)
            md5, sha512 = reader.md5.hexdigest(), reader.sha512.hexdigest()
            if image.checksum != md5 or (image.hash_algo == "sha512" and
                                         image.hash_value != sha512):
                raise StageError(f"image {image.id} differs from {path.name}: Glance has md5 "
                                 f"{image.checksum}, {image.hash_algo} "
                                 f"{str(image.hash_value)[:16]}…, sent md5 {md5}",
                                 hint="the data was changed in transit; run again")
        except BaseException as exc:
            with step(f"Deleting the partial image {image.id}"):
                deleted = retry_delete(conn.image.delete_image, image.id)
            if isinstance(exc, P2VError):
                exc.hint = (f"the partial image was deleted; {exc.hint}" if deleted else
                            f"image {image.id} was left behind: 'p2vimage cloud cleanup "
                            f"--host {opts.host}' deletes it; {exc.hint}")
            raise
    seconds = time.monotonic() - started
    return {"image_id": image.id, "name": opts.name, "cloud": cloud, "status": image.status,
            "disk_format": opts.disk_format, "compression": opts.compression,
            "bytes_sent": reader.sent, "file_size": size, "raw_size": raw_size,
            "raw_allocated": trimmed.get("allocated_after",
                                         opts.image.stat().st_blocks * 512),
            "trim": trimmed, "md5": md5, "sha512": sha512, "hash_verified": True,
            "properties": props, "tags": tag_list(opts.host, opts.run), "host": opts.host,
            "run": opts.run, "seconds": round(seconds, 1),
            "send_seconds": round(send_seconds, 2),
            "mib_per_s": round(size / (1 << 20) / max(send_seconds, 1e-6), 1)}


def upload_lines(report: dict[str, Any]) -> list[str]:
    if report.get("dry_run"):
        return [f"would call: {c}" for c in report["calls"]]
    return [f"image {report['image_id']} ({report['name']}) {report['status']}: "
            f"{report['bytes_sent']} bytes {report['disk_format']} sent "
            f"({report['mib_per_s']} MiB/s), md5 and sha512 verified",
            "  properties: " + ", ".join(f"{k}={v}" for k, v in report["properties"].items())]


# -- volume --------------------------------------------------------------------------------
