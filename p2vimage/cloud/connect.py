"""OpenStack: the image in Glance, a volume from it in Cinder, a server from that volume in Nova.

The only module that imports openstacksdk (and keystoneauth1). Credentials come from
clouds.yaml / ``OS_*`` through openstacksdk's config loader and nothing here logs them.
Every resource made is named and carries ``p2vimage:host=HOST`` and ``p2vimage:run=RUN``
(image and port tags; volume and server metadata) so ``cleanup`` finds leftovers. Retries
and waits are openstacksdk's own: ``connect_retries`` and ``status_code_retries`` on the
connection (a service that restarts, a 503 from its proxy), ``wait_for_status`` /
``wait_for_server`` / ``wait_for_delete`` for resources. Every verb has a
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
import os
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import keystoneauth1.exceptions as ksa_exc
import openstack
import openstack.config
import openstack.connection
import openstack.exceptions as sdk_exc
import yaml  # type: ignore[import-untyped]  # what openstacksdk's loader parses with
from openstack.config import loader

from p2vimage.core.errors import InputError, P2VError, PreconditionError, StageError
from p2vimage.core.log import log

GiB = 1 << 30
TAG_HOST = "p2vimage:host"
TAG_RUN = "p2vimage:run"
# Under the cloud's own settings (clouds.yaml wins): keystoneauth retries a refused or broken
# connection and a 503 this many times, waiting 0.5 s, 1 s, 2 s, ... between tries.
RETRIES = {"connect_retries": 4, "status_code_retries": 4}
# For requests that stream a file: a retry would send the rest of a half-read stream.
NO_RETRY = {"connect_retries": 0, "status_code_retries": 0}


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


def cloud_names() -> list[str]:
    """The clouds defined in the clouds.yaml the loader would read ($OS_CLIENT_CONFIG_FILE
    first), sorted; [] when there is none or it cannot be read. For shell completion: reads
    only the files (not the OS_* variables) and never raises."""
    try:
        config = openstack.config.OpenStackConfig(
            config_files=_search("OS_CLIENT_CONFIG_FILE", loader.CONFIG_FILES),
            secure_files=_search("OS_CLIENT_SECURE_FILE", loader.SECURE_FILES),
            load_envvars=False)
        return sorted(config.get_cloud_names()) if config.config_filename else []
    except Exception:
        return []


def cloud_region(cloud: str | None, region: str | None = None) -> tuple[str, Any]:
    """The cloud's settings read locally, as a run reads them and without connecting:
    (label for messages, openstacksdk CloudRegion). ``cloud`` defaults to $OS_CLOUD, else
    the OS_* variables; ``region`` (``--os-region-name``, $OS_REGION_NAME) to the cloud's
    first region.

    Raises InputError: no cloud given, a clouds.yaml (or secure.yaml) that cannot be parsed,
    a cloud that is not defined, a region it does not list, settings the loader rejects or
    that are incomplete.
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
        config = openstack.config.OpenStackConfig(override_defaults=RETRIES)
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
        return label, config.get_one(cloud=name, region_name=region or None)
    except sdk_exc.ConfigException as exc:
        if region and f"Region {region} is not" in str(exc):
            raise InputError(f"cloud {label!r} has no region {region!r}: {exc}",
                             hint="give one of its regions with --os-region-name (or fix "
                             "$OS_REGION_NAME)") from exc
        raise InputError(f"cloud {label!r} cannot be used: {exc}",
                         hint="fix its entry in clouds.yaml or the OS_* variables") from exc
    except Exception as exc:
        raise translate(exc, "reading its settings", label) from exc


def connect(cloud: str | None, region: str | None = None) -> Any:
    """An authorized connection to ``cloud`` (default $OS_CLOUD, else the OS_* variables) in
    ``region``; its settings are read by ``cloud_region`` (whose errors it raises)."""
    label, settings = cloud_region(cloud, region)
    conn = openstack.connection.Connection(config=settings)
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


def undo_delete(fn: Any, ref: Any, wait: Callable[[Any], Any] | None = None) -> bool:
    """Delete what a failed run made, ``wait`` for it to go if given; True when done.

    The connection's retries cover a service that is restarting after a crash; anything else
    is logged, not raised (the run's own error is the one to show).
    """
    try:
        fn(ref, ignore_missing=True)
        if wait is not None:
            wait(ref)
        return True
    except Exception as exc:
        log.warning("could not delete %s: %s", getattr(ref, "id", ref), _detail(exc))
        return False


# -- upload --------------------------------------------------------------------------------



def image_host(image: Any) -> str | None:
    for tag in image.tags or []:
        key, _, value = str(tag).partition("=")
        if key == TAG_HOST and value:
            return value
    return None


def find_image(conn: Any, ref: str, cloud: str) -> Any:
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


def zone_names(items: Any) -> list[str]:
    return sorted({z.name for z in items if (z.state or {}).get("available", True)})


def require_zone(kind: str, zone: str, listing: Callable[[], Any], cloud: str) -> None:
    """Refuse a ``kind`` ("volume", "compute") availability zone the cloud does not offer."""
    with api(f"listing {kind} availability zones", cloud):
        zones = zone_names(listing())
    if zone not in zones:
        raise InputError(f"no {kind} availability zone {zone!r} in cloud {cloud!r}",
                         hint=f"zones: {', '.join(zones) or 'none'}")
