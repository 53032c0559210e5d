"""Stage 5, upload: the image into Glance, streamed and hashed on the way, verified, with the
guest's properties and the operator's; a failed upload deletes its image.

The image also gets the properties openstacksdk's own ``create_image`` sets
(``owner_specified.openstack.md5``/``sha256``/``object``, the image proxy's
``_IMAGE_MD5_KEY``, ``_IMAGE_SHA256_KEY``, ``_IMAGE_OBJECT_KEY``): with them the SDK, and
Ansible's openstack.cloud.image through it, see the file as already uploaded.
"""

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
    NO_RETRY,
    TAG_HOST,
    TAG_RUN,
    Call,
    _detail,
    api,
    cloud_region,
    connect,
    tag_list,
    translate,
    undo_delete,
)
from p2vimage.core.errors import InputError, P2VError, PreconditionError, StageError
from p2vimage.core.log import log, step
from p2vimage.guest import record as guestrecord

# openstacksdk's image proxy: _IMAGE_MD5_KEY, _IMAGE_SHA256_KEY, _IMAGE_OBJECT_KEY, and the
# container its object key names (_OBJECT_AUTOCREATE_CONTAINER)
OWNER_MD5 = "owner_specified.openstack.md5"
OWNER_SHA256 = "owner_specified.openstack.sha256"
OWNER_OBJECT = "owner_specified.openstack.object"
SDK_CONTAINER = "images"
# Glance's own attributes (its image schema), never a --property
RESERVED = frozenset({
    "id", "name", "status", "visibility", "protected", "os_hidden", "checksum",
    "os_hash_algo", "os_hash_value", "owner", "size", "virtual_size", "min_ram", "min_disk",
    "container_format", "disk_format", "created_at", "updated_at", "tags", "direct_url",
    "self", "file", "schema", "locations", "stores"})


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
    region: str | None = None
    properties: tuple[str, ...] = ()  # --property K=V, as given
    tags: tuple[str, ...] = ()  # --tag, as given


def user_properties(items: tuple[str, ...]) -> dict[str, str]:
    """``--property K=V`` items as a dict (V may hold '='; K may not be empty, one of
    Glance's own attributes, Glance's os_glance namespace or the owner_specified.openstack
    properties upload sets itself). Raises InputError."""
    props: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--property {item!r} is not KEY=VALUE",
                             hint="e.g. --property hw_qemu_guest_agent=yes")
        if key in RESERVED:
            raise InputError(f"--property {key} is one of Glance's own attributes",
                             hint="use upload's option for it (--name, --disk-format, "
                             "--visibility, --tag) or 'openstack image set' afterwards")
        if key.startswith(("os_glance", "owner_specified.openstack.")):
            raise InputError(f"--property {key} is set by Glance or by upload itself",
                             hint="leave it out")
        props[key] = value
    return props


def user_tags(items: tuple[str, ...]) -> list[str]:
    """``--tag`` items (not empty, at most 255 characters, not p2vimage's own marks)."""
    tags: list[str] = []
    for tag in items:
        if not tag.strip() or len(tag) > 255:
            raise InputError(f"--tag {tag!r} is empty or longer than 255 characters",
                             hint="give a short word")
        if tag.startswith((f"{TAG_HOST}=", f"{TAG_RUN}=")):
            raise InputError(f"--tag {tag} is one of p2vimage's own marks",
                             hint="use --source-host and --run-id")
        if tag not in tags:
            tags.append(tag)
    return tags


def owner_props(name: str, md5: str, sha256: str) -> dict[str, str]:
    """The properties openstacksdk's create_image gives an image it uploads from a file."""
    return {OWNER_MD5: md5, OWNER_SHA256: sha256, OWNER_OBJECT: f"{SDK_CONTAINER}/{name}"}


def image_attrs(opts: UploadOptions, props: dict[str, str]) -> dict[str, Any]:
    """The attributes of the Glance image record (properties included)."""
    return {"name": opts.name, "disk_format": opts.disk_format, "container_format": "bare",
            "visibility": opts.visibility,
            "tags": tag_list(opts.host, opts.run) + user_tags(opts.tags), **props}


def _failures(use_import: bool) -> list[str]:
    # a failed import puts the image back to queued (os_glance_failed_import says where)
    return ["killed", "deleted", *(["queued"] if use_import else [])]


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
    data = {"data": "<file, hashed md5+sha256+sha512 while sent>"}
    if opts.use_import:
        calls += [Call("image.stage_image", {"image": "<new id>", **data}),
                  Call("image.import_image", {"image": "<new id>", "method": "glance-direct"})]
    else:
        calls.append(Call("image.upload", {"image": "<new id>", **data}))
    calls += [Call("image.wait_for_status", {"image": "<new id>", "status": "active",
                                             "failures": _failures(opts.use_import)}),
              Call("image.get_image", {"image": "<new id>", "compare": "checksum=md5, "
                                       "os_hash_value=sha512" + (
                                           " (of the raw image when the cloud converted "
                                           "it)" if opts.use_import else "")}),
              Call("image.patch", {"image": "<new id>", "add": owner_props(
                  opts.name, "<md5 of what was sent>", "<sha256 of what was sent>")})]
    return calls


class _Once:
    """The image proxy for the request that streams the file, without the connection's
    retries: a retry would send the rest of a half-read stream as if it were the image."""

    def __init__(self, proxy: Any) -> None:
        self._proxy = proxy

    def put(self, url: str, **kwargs: Any) -> Any:
        return self._proxy.put(url, **NO_RETRY, **kwargs)


def _send(conn: Any, image: Any, reader: up.HashingReader, use_import: bool) -> None:
    if use_import:
        methods = image.image_import_methods or []
        if "glance-direct" not in methods:
            raise PreconditionError("the image service does not offer the glance-direct import",
                                    hint="upload without --use-import")
        image.stage(_Once(conn.image), data=reader, size=reader.size)
        response = conn.image.import_image(image, method="glance-direct")
        response.raise_for_status()  # import_image returns the response instead of raising
    else:
        response = image.upload(_Once(conn.image), data=reader, size=reader.size)
        sdk_exc.raise_from_response(response)


def add_properties(conn: Any, image_id: str, props: dict[str, str]) -> None:
    """Add properties to an image with one JSON patch of ``add`` operations.

    Not openstacksdk's update_image: its patch also removes what it does not know, such as
    the ``stores`` of a multi-store Glance, which Glance refuses (409).
    """
    patch = [{"op": "add", "path": "/" + key.replace("~", "~0").replace("/", "~1"),
              "value": value} for key, value in props.items()]
    response = conn.image.patch(f"/images/{image_id}", json=patch, headers={
        "Content-Type": "application/openstack-images-v2.1-json-patch"})
    sdk_exc.raise_from_response(response)


def _verify(image: Any, opts: UploadOptions, sent: Path, md5: str, sha512: str) -> str | None:
    """Check Glance's checksum and os_hash_value against what was sent, or, when the cloud
    converted the image on import (its image_conversion plugin) to raw, against the raw image
    itself (what qemu-img makes of the qcow2). Returns the format it converted to, if any.
    Raises StageError."""
    converted: str | None = (str(image.disk_format) if image.disk_format != opts.disk_format
                             else None)
    if converted == "raw":
        with step(f"Hashing {opts.image.name}: the cloud converted the image to raw"):
            md5, sha512 = up.file_hashes(opts.image)
        sent = opts.image
    elif converted:  # another format: its bytes are the cloud's; its size still tells
        if image.virtual_size not in (None, opts.image.stat().st_size):
            raise StageError(f"image {image.id}, converted by the cloud to {converted}, has "
                             f"{image.virtual_size} bytes, not {opts.image.stat().st_size}",
                             hint="the cloud's conversion went wrong; run again")
        log.warning("the cloud converted image %s to %s: its hashes cannot be compared",
                    image.id, converted)
        return converted
    if image.checksum != md5 or (image.hash_algo == "sha512" and image.hash_value != sha512):
        raise StageError(f"image {image.id} differs from {sent.name}: Glance has md5 "
                         f"{image.checksum}, {image.hash_algo} "
                         f"{str(image.hash_value)[:16]}…, expected md5 {md5}",
                         hint="the data was changed in transit; run again")
    return converted


def upload(opts: UploadOptions) -> dict[str, Any]:
    """Trim, convert, stream to Glance with local hashes, verify, wait for ``active``.

    On any failure (and on Ctrl-C) the image this run created is deleted. Raises InputError,
    PreconditionError or StageError (see the module docstring).
    """
    up.check_compression(opts.disk_format, opts.compression)
    user = user_properties(opts.properties)
    user_tags(opts.tags)
    up.check_raw(opts.image)
    props = {**guestrecord.for_image(opts.image).glance_properties(), **user}
    if opts.dry_run:
        label, settings = cloud_region(opts.cloud, opts.region)
        return {"dry_run": True, "cloud": label, "region": settings.region_name,
                "properties": props, "calls": [c.text() for c in upload_plan(opts, props)]}
    cloud = opts.cloud or os.environ.get("OS_CLOUD") or "OS_*"
    conn = connect(opts.cloud, opts.region)
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
                                                   failures=_failures(opts.use_import),
                                                   interval=1, wait=opts.timeout)
                image = conn.image.get_image(image.id)
            md5, sha512 = reader.md5.hexdigest(), reader.sha512.hexdigest()
            sha256 = reader.sha256.hexdigest()
            converted = _verify(image, opts, path, md5, sha512)
            with api(f"setting the owner_specified properties of image {image.id}", cloud):
                add_properties(conn, image.id, owner_props(opts.name, md5, sha256))
                image = conn.image.get_image(image.id)
        except BaseException as exc:
            with step(f"Deleting the partial image {image.id}"):
                deleted = undo_delete(conn.image.delete_image, image.id)
            if isinstance(exc, P2VError):
                exc.hint = (f"the partial image was deleted; {exc.hint}" if deleted else
                            f"image {image.id} was left behind: 'p2vimage cloud cleanup "
                            f"--source-host {opts.host}' deletes it; {exc.hint}")
            raise
    seconds = time.monotonic() - started
    return {"image_id": image.id, "name": opts.name, "cloud": cloud,
            "region": conn.config.region_name, "status": image.status,
            "disk_format": opts.disk_format, "compression": opts.compression,
            "converted_to": converted, "stored_format": image.disk_format,
            "bytes_sent": reader.sent, "file_size": size, "raw_size": raw_size,
            "raw_allocated": trimmed.get("allocated_after",
                                         opts.image.stat().st_blocks * 512),
            "trim": trimmed, "md5": md5, "sha256": sha256, "sha512": sha512,
            "hash_verified": converted in (None, "raw"),
            "properties": props, "tags": image_attrs(opts, props)["tags"], "host": opts.host,
            "run": opts.run, "seconds": round(seconds, 1),
            "send_seconds": round(send_seconds, 2),
            "mib_per_s": round(size / (1 << 20) / max(send_seconds, 1e-6), 1)}


def upload_lines(report: dict[str, Any]) -> list[str]:
    if report.get("dry_run"):
        return [f"would call: {c}" for c in report["calls"]]
    converted = (f", converted by the cloud to {report['converted_to']}"
                 if report["converted_to"] else "")
    verified = "md5 and sha512 verified" if report["hash_verified"] else "hashes not comparable"
    return [f"image {report['image_id']} ({report['name']}) {report['status']}: "
            f"{report['bytes_sent']} bytes {report['disk_format']} sent "
            f"({report['mib_per_s']} MiB/s){converted}, {verified}",
            "  properties: " + ", ".join(f"{k}={v}" for k, v in report["properties"].items())]


# -- volume --------------------------------------------------------------------------------
