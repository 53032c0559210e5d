"""Stage 7, boot: a Nova server booted from the volume (kept when the server goes)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

from p2vimage.cloud.connect import (
    TAG_HOST,
    Call,
    api,
    cloud_region,
    connect,
    require_zone,
    retry_delete,
    tags,
)
from p2vimage.core.errors import InputError
from p2vimage.core.log import log, step


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


def lookup(kind: str, ref: str, found: Any, choices: Sequence[str], cloud: str) -> Any:
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
        flavor = lookup("flavor", opts.flavor,
                         conn.compute.find_flavor(opts.flavor, ignore_missing=True),
                         [f.name for f in conn.compute.flavors()], cloud)
    if opts.key:
        with api(f"looking up key pair {opts.key!r}", cloud):
            lookup("key pair", opts.key,
                    conn.compute.find_keypair(opts.key, ignore_missing=True),
                    [k.name for k in conn.compute.keypairs()], cloud)
    if opts.az:
        require_zone("compute", opts.az, conn.compute.availability_zones, cloud)
    network_id = None
    if opts.network != "none":
        with api(f"looking up network {opts.network!r}", cloud):
            net = lookup("network", opts.network,
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
            retry_delete(conn.compute.delete_server, server.id, seconds=30)
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
