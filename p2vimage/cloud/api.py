"""OpenStack: the image in Glance, a volume from it in Cinder, a server from that volume in Nova.

The only module that imports openstacksdk (and keystoneauth1). Credentials come from
clouds.yaml / ``OS_*`` through openstacksdk's config loader and nothing here logs them.
Every resource made is named and carries ``p2vimage:host=HOST`` and ``p2vimage:run=RUN``
(image tags; volume and server metadata) so ``cleanup`` finds leftovers. Every verb has a
dry run that reads the cloud's settings as a run does (``cloud_region``: defined, parsable,
complete), lists the API calls it would make and connects to nothing.

Errors: no cloud, a clouds.yaml that cannot be parsed, a cloud not in clouds.yaml, an
unknown flavor, zone, network, key or image → InputError
(2); refused credentials, an unreachable endpoint, a missing service, a quota or size cap (HTTP
413) → PreconditionError (3); a resource that goes to error, a checksum mismatch, a lost
connection → StageError (1), after deleting what this run created.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import keystoneauth1.exceptions as ksa_exc
import openstack
import openstack.config
import openstack.connection
import openstack.exceptions as sdk_exc
import requests
import yaml  # type: ignore[import-untyped]  # what openstacksdk's loader parses with
from openstack.config import loader
from openstack.image.v2.image import Image

from p2vimage.cloud import upload as up
from p2vimage.core.errors import InputError, P2VError, PreconditionError, StageError
from p2vimage.core.log import log, step

GiB = 1 << 30
TAG_HOST = "p2vimage:host"
TAG_RUN = "p2vimage:run"


def run_id() -> str:
    """A new run id: UTC time and 4 random hex digits (sortable, unique enough)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)


def tags(host: str, run: str) -> dict[str, str]:
    """The metadata that marks a resource as p2vimage's."""
    return {TAG_HOST: host, TAG_RUN: run}


def tag_list(host: str, run: str) -> list[str]:
    """The same marks as Glance image tags (``key=value`` strings)."""
    return [f"{k}={v}" for k, v in tags(host, run).items()]


@dataclasses.dataclass(frozen=True)
class Call:
    """One API call, as ``--dry-run`` prints it."""

    api: str
    args: dict[str, Any] = dataclasses.field(default_factory=dict)

    def text(self) -> str:
        return f"{self.api}({', '.join(f'{k}={v!r}' for k, v in self.args.items())})"


# -- connecting and translating errors ---------------------------------------------------


def _search(env: str, files: list[str]) -> list[str]:
    """The loader's search list: the file named by ``env``, then its default files
    (clouds.yaml/.yml/.json in ./, ~/.config/openstack and /etc/openstack, in that order)."""
    override = os.environ.get(env)
    return [override, *files] if override else list(files)


def _parse_error(exc: Exception) -> str:
    """' at line N: what' from a YAML or JSON parse error."""
    mark, context = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else getattr(exc, "lineno", None)
    text = str(getattr(exc, "problem", None) or getattr(exc, "msg", None) or exc)
    if context is not None and getattr(exc, "context", None):
        text += f" ({exc.context} at line {context.line + 1})"  # type: ignore[attr-defined]
    return f" at line {line}: {text}" if line else f": {text}"


def _unparsable(files: list[str]) -> InputError | None:
    """The error for the first existing file of ``files`` when it cannot be parsed.

    The loader reads the first file that exists and parses, and skips the others with a
    warning nobody sees: a broken clouds.yaml would make its clouds "not defined".
    """
    for path in files:
        if not os.path.exists(path):
            continue
        try:
            with open(path) as f:
                json.load(f) if path.endswith("json") else yaml.safe_load(f)  # as the loader
        except OSError as exc:
            if exc.errno == errno.EACCES:
                continue  # the loader skips it too
            return InputError(f"cannot read {path}: {exc.strerror}", hint="check the path")
        except (ValueError, yaml.YAMLError) as exc:
            return InputError(f"cannot parse {path}{_parse_error(exc)}",
                              hint="fix it (openstacksdk would skip it without a word and "
                              "read the next file)")
        return None
    return None


def cloud_region(cloud: str | None) -> tuple[str, Any]:
    """The cloud's settings read locally, as a run reads them and without connecting:
    (label for messages, openstacksdk CloudRegion). ``cloud`` defaults to $OS_CLOUD, else
    the OS_* variables.

    Raises InputError: no cloud given, a clouds.yaml (or secure.yaml) that cannot be parsed,
    a cloud that is not defined, settings the loader rejects or that are incomplete.
    """
    name = cloud or os.environ.get("OS_CLOUD")
    if not name and not os.environ.get("OS_AUTH_URL"):
        raise InputError("no cloud given", hint="pass --os-cloud NAME (an entry of clouds.yaml)"
                         " or set OS_CLOUD, or the OS_AUTH_URL… variables")
    label = name or "from OS_* variables"
    override = os.environ.get("OS_CLIENT_CONFIG_FILE")
    if override and not os.path.exists(override):
        raise InputError(f"OS_CLIENT_CONFIG_FILE names {override}, which does not exist",
                         hint="point it at your clouds.yaml, or unset it")
    for env, files in (("OS_CLIENT_CONFIG_FILE", loader.CONFIG_FILES),
                       ("OS_CLIENT_SECURE_FILE", loader.SECURE_FILES)):
        error = _unparsable(_search(env, files))
        if error:
            raise error
    try:
        config = openstack.config.OpenStackConfig()
    except sdk_exc.ConfigException as exc:
        raise InputError(f"cannot use the cloud settings: {exc}",
                         hint="fix clouds.yaml or the OS_* variables") from exc
    if name and name not in config.get_cloud_names():
        where = config.config_filename
        raise InputError(f"cloud {label!r} is not defined in "
                         f"{where or 'any clouds.yaml (none found)'}",
                         hint="add it to clouds.yaml (or point OS_CLIENT_CONFIG_FILE at the "
                         "file that has it) and pass its name with --os-cloud")
    try:
        return label, config.get_one(cloud=name)
    except sdk_exc.ConfigException as exc:
        raise InputError(f"cloud {label!r} cannot be used: {exc}",
                         hint="fix its entry in clouds.yaml or the OS_* variables") from exc
    except Exception as exc:
        raise translate(exc, "reading its settings", label) from exc


def connect(cloud: str | None) -> Any:
    """An authorized connection to ``cloud`` (default $OS_CLOUD, else the OS_* variables);
    its settings are read by ``cloud_region`` (whose errors it raises)."""
    label, region = cloud_region(cloud)
    conn = openstack.connection.Connection(config=region)
    try:
        conn.session.get_token()
    except Exception as exc:
        raise translate(exc, f"signing in to cloud {label!r}", label) from exc
    return conn


def _status(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None) or getattr(exc, "http_status", None)
    return int(code) if code else None


def _detail(exc: BaseException) -> str:
    text = getattr(exc, "details", None) or str(exc)
    return " ".join(str(text).split())[:300]


def translate(exc: BaseException, what: str, cloud: str) -> P2VError:
    """The one-line error for an exception from openstacksdk or keystoneauth."""
    if isinstance(exc, P2VError):
        return exc
    status = _status(exc)
    if isinstance(exc, ksa_exc.Unauthorized) or status == 401:
        return PreconditionError(f"cloud {cloud!r} refused the credentials ({what})",
                                 hint="check the user, password and project in clouds.yaml "
                                 "or the OS_* variables")
    if isinstance(exc, ksa_exc.MissingRequiredOptions | ksa_exc.NoMatchingPlugin):
        return InputError(f"cloud {cloud!r} has incomplete credentials: {_detail(exc)}",
                          hint="complete its auth section in clouds.yaml")
    if isinstance(exc, ksa_exc.ConnectFailure | ksa_exc.ConnectTimeout | ksa_exc.SSLError):
        return PreconditionError(f"cannot reach cloud {cloud!r} while {what}: {_detail(exc)}",
                                 hint="check the endpoint URLs, the network and proxies")
    if isinstance(exc, ksa_exc.EndpointNotFound | sdk_exc.EndpointNotFound |
                  sdk_exc.ServiceDisabledException):
        return PreconditionError(f"cloud {cloud!r} has no endpoint for the service needed for "
                                 f"{what}",
                                 hint="check region_name in clouds.yaml and the service catalog")
    if status == 413:
        return PreconditionError(f"cloud {cloud!r} refused it as too large ({what}): over the "
                                 "image size cap or the storage quota (HTTP 413)",
                                 hint="ask for a larger quota, delete old images, or trim the "
                                 "image")
    if status == 403:
        return PreconditionError(f"cloud {cloud!r} forbids {what}: {_detail(exc)}",
                                 hint="the project's role or policy does not allow it")
    if isinstance(exc, sdk_exc.ResourceTimeout):
        return StageError(f"{what} on cloud {cloud!r} timed out: {_detail(exc)}",
                          hint="raise --timeout, or look at the resource in the cloud")
    if isinstance(exc, sdk_exc.ResourceFailure):
        return StageError(f"{what} on cloud {cloud!r} failed: {_detail(exc)}",
                          hint="the service's logs say why; run again after fixing it")
    if isinstance(exc, sdk_exc.SDKException | ksa_exc.ClientException):
        return StageError(f"{what} on cloud {cloud!r} failed: {_detail(exc)}",
                          hint="run with --debug for the full API exchange")
    return StageError(f"{what} on cloud {cloud!r} failed: {type(exc).__name__}: {_detail(exc)}",
                      hint="run with --debug for the traceback")


@contextlib.contextmanager
def api(what: str, cloud: str) -> Iterator[None]:
    """Turn any SDK error inside into the one-line error for ``what``."""
    try:
        yield
    except (P2VError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise translate(exc, what, cloud) from exc


def _retry_delete(fn: Any, *args: Any, seconds: float = 60) -> bool:
    """Delete with retries (the service may be restarting after a crash); True when done."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fn(*args, ignore_missing=True)
            return True
        except Exception as exc:  # any failure: retry until the deadline
            if time.monotonic() > deadline:
                log.warning("could not delete %s: %s", args[0], _detail(exc))
                return False
            time.sleep(1)


# -- upload --------------------------------------------------------------------------------


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
    props = up.image_props(opts.image).properties()
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
                deleted = _retry_delete(conn.image.delete_image, image.id)
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


def _image_host(image: Any) -> str | None:
    for tag in image.tags or []:
        key, _, value = str(tag).partition("=")
        if key == TAG_HOST and value:
            return value
    return None


def _find_image(conn: Any, ref: str, cloud: str) -> Any:
    with api(f"looking up image {ref!r}", cloud):
        try:
            image = conn.image.find_image(ref, ignore_missing=True)
        except sdk_exc.DuplicateResource as exc:
            raise InputError(f"more than one image is named {ref!r} in cloud {cloud!r}",
                             hint="give the image ID instead") from exc
    if image is None:
        raise InputError(f"no image {ref!r} in cloud {cloud!r}",
                         hint="give an image ID or name that 'openstack image list' shows")
    return image


def _zones(items: Any) -> list[str]:
    return sorted({z.name for z in items if (z.state or {}).get("available", True)})


def _require_zone(kind: str, zone: str, listing: Callable[[], Any], cloud: str) -> None:
    """Refuse a ``kind`` ("volume", "compute") availability zone the cloud does not offer."""
    with api(f"listing {kind} availability zones", cloud):
        zones = _zones(listing())
    if zone not in zones:
        raise InputError(f"no {kind} availability zone {zone!r} in cloud {cloud!r}",
                         hint=f"zones: {', '.join(zones) or 'none'}")


def volume(opts: VolumeOptions) -> dict[str, Any]:
    """A bootable Cinder volume from a Glance image, in the chosen availability zone.

    Waits for ``available`` (``error`` fails); a volume that fails is deleted.
    """
    if opts.dry_run:
        label, _ = cloud_region(opts.cloud)
        req = volume_request(opts, f"<id of {opts.image}>", opts.size_gb or 0,
                             opts.host or "<host from the image's tag>")
        return {"dry_run": True, "cloud": label, "calls": [c.text() for c in [
            Call("image.find_image", {"name_or_id": opts.image}),
            Call("block_storage.availability_zones"),
            Call("block_storage.create_volume", req),
            Call("block_storage.wait_for_status", {"status": "available",
                                                   "failures": ["error"]})]]}
    cloud = opts.cloud or os.environ.get("OS_CLOUD") or "OS_*"
    conn = connect(opts.cloud)
    started = time.monotonic()
    image = _find_image(conn, opts.image, cloud)
    if image.status != "active":
        raise InputError(f"image {image.id} is {image.status}, not active",
                         hint="wait for the upload to finish, or upload again")
    host = opts.host or _image_host(image) or image.name
    size_gb = size_for(int(image.size or 0), image.virtual_size, opts.size_gb)
    if opts.az:
        _require_zone("volume", opts.az, conn.block_storage.availability_zones, cloud)
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
            _retry_delete(conn.block_storage.delete_volume, vol.id, seconds=30)
        raise
    return {"volume_id": vol.id, "name": vol.name, "size_gb": vol.size,
            "availability_zone": vol.availability_zone, "bootable": bool(vol.is_bootable),
            "status": vol.status, "image_id": image.id, "host": host, "run": opts.run,
            "cloud": cloud, "seconds": round(time.monotonic() - started, 1)}


def volume_lines(report: dict[str, Any]) -> list[str]:
    if report.get("dry_run"):
        return [f"would call: {c}" for c in report["calls"]]
    return [f"volume {report['volume_id']} ({report['name']}) {report['status']}: "
            f"{report['size_gb']} GiB in {report['availability_zone']}, bootable "
            f"{'yes' if report['bootable'] else 'no'}, from image {report['image_id']}"]


# -- boot ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BootOptions:
    """Settings of one ``boot``."""

    cloud: str | None
    volume: str
    flavor: str
    key: str | None
    az: str | None
    network: str
    security_groups: tuple[str, ...]
    name: str | None
    host: str | None
    run: str
    timeout: int = 1800
    dry_run: bool = False


def server_request(opts: BootOptions, volume_id: str, flavor_id: str, network_id: str | None,
                   host: str) -> dict[str, Any]:
    """The keyword arguments of compute.create_server: boot from the volume, keep it."""
    req: dict[str, Any] = {
        "name": opts.name or host, "flavor_id": flavor_id,
        "block_device_mapping": [{"boot_index": 0, "uuid": volume_id, "source_type": "volume",
                                  "destination_type": "volume",
                                  "delete_on_termination": False}],
        "metadata": tags(host, opts.run),
        "networks": "none" if network_id is None else [{"uuid": network_id}],
    }
    if opts.key:
        req["key_name"] = opts.key
    if opts.az:
        req["availability_zone"] = opts.az
    if opts.security_groups and network_id is not None:
        req["security_groups"] = [{"name": g} for g in opts.security_groups]
    return req


def _lookup(kind: str, ref: str, found: Any, choices: Sequence[str], cloud: str) -> Any:
    if found is None:
        shown = ", ".join(sorted(choices)[:12]) or "none"
        raise InputError(f"no {kind} {ref!r} in cloud {cloud!r}", hint=f"{kind}s: {shown}")
    return found


def boot(opts: BootOptions) -> dict[str, Any]:
    """A Nova server booted from the volume; waits for ACTIVE; addresses and console URL."""
    if opts.security_groups and opts.network == "none":
        raise InputError("security groups need a network", hint="give --network too")
    if opts.dry_run:
        label, _ = cloud_region(opts.cloud)
        req = server_request(opts, f"<id of {opts.volume}>", f"<id of {opts.flavor}>",
                             None if opts.network == "none" else f"<id of {opts.network}>",
                             opts.host or "<host from the volume's metadata>")
        return {"dry_run": True, "cloud": label, "calls": [c.text() for c in [
            Call("block_storage.find_volume", {"name_or_id": opts.volume}),
            Call("compute.find_flavor", {"name_or_id": opts.flavor}),
            *([Call("network.find_network", {"name_or_id": opts.network})]
              if opts.network != "none" else []),
            Call("compute.create_server", req),
            Call("compute.wait_for_server", {"status": "ACTIVE", "failures": ["ERROR"]}),
            Call("compute.create_console", {"console_type": "novnc"})]]}
    cloud = opts.cloud or os.environ.get("OS_CLOUD") or "OS_*"
    conn = connect(opts.cloud)
    started = time.monotonic()
    with api(f"looking up volume {opts.volume!r}", cloud):
        vol = conn.block_storage.find_volume(opts.volume, ignore_missing=True)
    if vol is None:
        raise InputError(f"no volume {opts.volume!r} in cloud {cloud!r}",
                         hint="give a volume ID or name that 'openstack volume list' shows")
    if vol.status != "available":
        raise InputError(f"volume {vol.id} is {vol.status}, not available",
                         hint="a volume in use belongs to another server")
    host = opts.host or (vol.metadata or {}).get(TAG_HOST) or vol.name
    with api(f"looking up flavor {opts.flavor!r}", cloud):
        flavor = _lookup("flavor", opts.flavor,
                         conn.compute.find_flavor(opts.flavor, ignore_missing=True),
                         [f.name for f in conn.compute.flavors()], cloud)
    if opts.key:
        with api(f"looking up key pair {opts.key!r}", cloud):
            _lookup("key pair", opts.key,
                    conn.compute.find_keypair(opts.key, ignore_missing=True),
                    [k.name for k in conn.compute.keypairs()], cloud)
    if opts.az:
        _require_zone("compute", opts.az, conn.compute.availability_zones, cloud)
    network_id = None
    if opts.network != "none":
        with api(f"looking up network {opts.network!r}", cloud):
            net = _lookup("network", opts.network,
                          conn.network.find_network(opts.network, ignore_missing=True),
                          [n.name for n in conn.network.networks()], cloud)
        network_id = net.id
    req = server_request(opts, vol.id, flavor.id, network_id, host)
    with api("creating the server", cloud):
        server = conn.compute.create_server(**req)
    log.info("server %s (%s) created from volume %s", server.id, req["name"], vol.id)
    try:
        with step(f"Waiting for server {server.id} to become ACTIVE"), \
                api(f"booting server {server.id}", cloud):
            server = conn.compute.wait_for_server(server, status="ACTIVE", failures=["ERROR"],
                                                  interval=2, wait=opts.timeout)
    except BaseException:
        with step(f"Deleting the failed server {server.id} (the volume is kept)"):
            _retry_delete(conn.compute.delete_server, server.id, seconds=30)
        raise
    console = None
    with contextlib.suppress(Exception):  # not every cloud has a console proxy
        console = conn.compute.create_console(server, console_type="novnc").get("url")
    addresses = {net: [a.get("addr") for a in addrs]
                 for net, addrs in (server.addresses or {}).items()}
    attached = [a.get("id") for a in (server.attached_volumes or [])]
    return {"server_id": server.id, "name": server.name, "status": server.status,
            "volume_id": vol.id, "attached_volumes": attached, "addresses": addresses,
            "console_url": console, "availability_zone": server.availability_zone,
            "host": host, "run": opts.run, "cloud": cloud,
            "seconds": round(time.monotonic() - started, 1)}


def boot_lines(report: dict[str, Any]) -> list[str]:
    if report.get("dry_run"):
        return [f"would call: {c}" for c in report["calls"]]
    addrs = "; ".join(f"{n}: {', '.join(a)}" for n, a in report["addresses"].items()) or "none"
    out = [f"server {report['server_id']} ({report['name']}) {report['status']} in "
           f"{report['availability_zone']}, booted from volume {report['volume_id']}",
           f"  addresses: {addrs}"]
    if report.get("console_url"):
        out.append(f"  console: {report['console_url']}")
    return out


# -- cleanup -------------------------------------------------------------------------------


def _marked(metadata: dict[str, str] | None, host: str, run: str | None) -> bool:
    meta = metadata or {}
    return meta.get(TAG_HOST) == host and (run is None or meta.get(TAG_RUN) == run)


_BUSY = ("in-use", "detaching", "attaching", "reserved", "creating", "downloading")


def _wait_detached(conn: Any, vol: Any, seconds: float = 300) -> None:
    """Until a volume of a deleted server is detached (Nova detaches after the delete)."""
    deadline = time.monotonic() + seconds
    while vol.status in _BUSY and time.monotonic() < deadline:
        time.sleep(1)
        vol = conn.block_storage.get_volume(vol.id)


def cleanup_plan(host: str, run: str | None) -> list[Call]:
    """The calls ``cleanup`` makes (what --dry-run prints): list each kind, keep what is
    marked, delete it; servers first (they hold the volumes), volumes, images."""
    marks = {TAG_HOST: host, **({TAG_RUN: run} if run else {})}
    tagged = [f"{k}={v}" for k, v in marks.items()]
    return [Call("compute.servers", {"details": True, "metadata": marks}),
            Call("compute.delete_server", {"server": "<each server found>"}),
            Call("block_storage.volumes", {"details": True, "metadata": marks}),
            Call("block_storage.delete_volume", {"volume": "<each volume found, once "
                                                 "detached>"}),
            Call("image.images", {"tag": tagged[0], **({"also_tagged": tagged[1]}
                                                       if run else {})}),
            Call("image.delete_image", {"image": "<each image found>"})]


def cleanup(cloud_name: str | None, host: str, run: str | None = None,
            dry_run: bool = False) -> dict[str, Any]:
    """Find (and unless ``dry_run`` delete) servers, volumes and images marked for ``host``.

    Servers go first (they hold the volumes), volumes next, images last. A service the cloud
    does not have is skipped. A dry run checks the cloud's settings and connects to nothing.
    """
    if dry_run:
        label, _ = cloud_region(cloud_name)
        return {"host": host, "run": run, "cloud": label, "dry_run": True,
                "calls": [c.text() for c in cleanup_plan(host, run)]}
    cloud = cloud_name or os.environ.get("OS_CLOUD") or "OS_*"
    conn = connect(cloud_name)
    found: dict[str, list[dict[str, str]]] = {"servers": [], "volumes": [], "images": []}
    skipped: list[str] = []
    listings: dict[str, Callable[[], list[Any]]] = {
        "servers": lambda: [s for s in conn.compute.servers(details=True)
                            if _marked(s.metadata, host, run)],
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
    for kind in ("servers", "volumes", "images"):
        for res in resources[kind]:
            with api(f"deleting {kind[:-1]} {res.id}", cloud):
                if kind == "servers":
                    conn.compute.delete_server(res, ignore_missing=True)
                    conn.compute.wait_for_delete(res, interval=1, wait=300)
                elif kind == "volumes":
                    _wait_detached(conn, res)
                    conn.block_storage.delete_volume(res, ignore_missing=True)
                    conn.block_storage.wait_for_delete(res, interval=1, wait=300)
                else:
                    conn.image.delete_image(res, ignore_missing=True)
    return {"host": host, "run": run, "cloud": cloud, "dry_run": False, "found": found,
            "skipped_services": skipped,
            "calls": [f"{kind[:-1]}.delete({r['id']!r})  # {r['name']}"
                      for kind in found for r in found[kind]]}


def cleanup_lines(report: dict[str, Any]) -> list[str]:
    if report["dry_run"]:
        marks = f"{TAG_HOST}={report['host']}" + (f", {TAG_RUN}={report['run']}"
                                                  if report["run"] else "")
        return [f"would find the servers, volumes and images marked {marks} in cloud "
                f"{report['cloud']!r} and delete them:",
                *(f"  would call: {c}" for c in report["calls"])]
    out = [f"deleted {kind[:-1]} {r['id']} ({r['name']})"
           for kind, items in report["found"].items() for r in items]
    if not out:
        out.append(f"nothing marked {TAG_HOST}={report['host']} in cloud {report['cloud']!r}")
    out += [f"  no {kind} service in this cloud: skipped" for kind in report["skipped_services"]]
    return out
