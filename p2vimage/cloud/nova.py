"""Stage 7, boot: a Nova server booted from the volume (kept when the server goes), on a NIC
Nova makes, an existing port, or a port made for it (cloud/neutron.py); what a failed boot
made is deleted in reverse order."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

from p2vimage.cloud import neutron
from p2vimage.cloud.connect import (
    TAG_HOST,
    Call,
    api,
    cloud_region,
    connect,
    require_zone,
    tags,
    undo_delete,
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
    az: str | None  # ZONE, ZONE:HOST, ZONE:HOST:NODE or ZONE::NODE
    network: str | None  # a network, "none", or None with port.port
    security_groups: tuple[str, ...]
    name: str | None
    host: str | None
    run: str
    timeout: int = 1800
    dry_run: bool = False
    region: str | None = None
    port: neutron.PortOptions = dataclasses.field(default_factory=neutron.PortOptions)


def zone_of(az: str) -> str:
    """The zone of ``--availability-zone ZONE[:HOST[:NODE]]`` (Nova takes ZONE:HOST,
    ZONE:HOST:NODE and ZONE::NODE from admins to place a server on one compute host).
    Raises InputError for anything else."""
    parts = az.split(":")
    zone = parts[0]
    if not zone or len(parts) > 3 or (len(parts) > 1 and not any(parts[1:])):
        raise InputError(f"--availability-zone {az!r} is not ZONE, ZONE:HOST, ZONE:HOST:NODE "
                         "or ZONE::NODE", hint="'openstack availability zone list --compute'"
                         " shows the zones, 'openstack compute service list' the hosts")
    return zone


def server_request(opts: BootOptions, volume_id: str, flavor_id: str, network_id: str | None,
                   host: str, port_id: str | None = None) -> dict[str, Any]:
    """The keyword arguments of compute.create_server: boot from the volume, keep it; the
    NIC on the port when there is one (its security groups are the port's)."""
    req: dict[str, Any] = {
        "name": opts.name or host, "flavor_id": flavor_id,
        "block_device_mapping": [{"boot_index": 0, "uuid": volume_id, "source_type": "volume",
                                  "destination_type": "volume",
                                  "delete_on_termination": False}],
        "metadata": tags(host, opts.run),
        "networks": ([{"port": port_id}] if port_id else
                     "none" if network_id is None else [{"uuid": network_id}]),
    }
    if opts.key:
        req["key_name"] = opts.key
    if opts.az:
        req["availability_zone"] = opts.az
    if opts.security_groups and network_id is not None and not port_id:
        req["security_groups"] = [{"name": g} for g in opts.security_groups]
    return req


def lookup(kind: str, ref: str, found: Any, choices: Sequence[str], cloud: str) -> Any:
    if found is None:
        shown = ", ".join(sorted(choices)[:12]) or "none"
        raise InputError(f"no {kind} {ref!r} in cloud {cloud!r}", hint=f"{kind}s: {shown}")
    return found


def _plan(opts: BootOptions) -> list[Call]:
    host = opts.host or "<host from the volume's metadata>"
    network = None if opts.network in (None, "none") else opts.network
    port_id = (f"<id of {opts.port.port}>" if opts.port.port else
               "<new port id>" if opts.port.new_port else None)
    req = server_request(opts, f"<id of {opts.volume}>", f"<id of {opts.flavor}>",
                         f"<id of {network}>" if network else None, host, port_id)
    return [Call("block_storage.find_volume", {"name_or_id": opts.volume}),
            Call("compute.find_flavor", {"name_or_id": opts.flavor}),
            *([Call("compute.availability_zones")] if opts.az else []),
            *([Call("network.find_network", {"name_or_id": network})] if network else []),
            *neutron.plan(opts.port, network or "", opts.security_groups, host, opts.run),
            Call("compute.create_server", req),
            Call("compute.wait_for_server", {"status": "ACTIVE", "failures": ["ERROR"]}),
            Call("compute.create_console", {"console_type": "novnc"})]


def _delete_server(conn: Any, server: Any) -> None:
    with step(f"Deleting the failed server {server.id} (the volume is kept)"):
        undo_delete(conn.compute.delete_server, server,
                    lambda s: conn.compute.wait_for_delete(s, interval=1, wait=120))


def boot(opts: BootOptions) -> dict[str, Any]:
    """A Nova server booted from the volume; waits for ACTIVE; addresses and console URL.

    On failure (Ctrl-C included) the server and the port made for it are deleted, in that
    order; the volume is kept.
    """
    if opts.security_groups and opts.network == "none":
        raise InputError("security groups need a network", hint="give --network too")
    neutron.check(opts.port, opts.network, opts.security_groups)
    zone = zone_of(opts.az) if opts.az else None
    if opts.dry_run:
        label, settings = cloud_region(opts.cloud, opts.region)
        return {"dry_run": True, "cloud": label, "region": settings.region_name,
                "calls": [c.text() for c in _plan(opts)]}
    cloud = opts.cloud or os.environ.get("OS_CLOUD") or "OS_*"
    conn = connect(opts.cloud, opts.region)
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
    if zone:
        require_zone("compute", zone, conn.compute.availability_zones, cloud)
    network_id, net = None, None
    if opts.network not in (None, "none"):
        with api(f"looking up network {opts.network!r}", cloud):
            net = lookup("network", opts.network,
                          conn.network.find_network(opts.network, ignore_missing=True),
                          [n.name for n in conn.network.networks()], cloud)
        network_id = net.id
    port = neutron.existing_port(conn, opts.port.port, cloud) if opts.port.port else None
    with contextlib.ExitStack() as undo:  # what this run made, deleted in reverse on failure
        if opts.port.new_port:
            port = neutron.new_port(conn, opts.port, net, opts.security_groups, host,
                                    opts.run, cloud, undo)
            log.info("port %s (%s) created", port.id, port.name)
        req = server_request(opts, vol.id, flavor.id, network_id, host,
                             port.id if port else None)
        with api("creating the server", cloud):
            server = conn.compute.create_server(**req)
        undo.callback(_delete_server, conn, server)
        log.info("server %s (%s) created from volume %s", server.id, req["name"], vol.id)
        with step(f"Waiting for server {server.id} to become ACTIVE"), \
                api(f"booting server {server.id}", cloud):
            server = conn.compute.wait_for_server(server, status="ACTIVE", failures=["ERROR"],
                                                  interval=2, wait=opts.timeout)
        if port is not None:
            with api(f"reading port {port.id}", cloud):
                port = conn.network.get_port(port.id)
        undo.pop_all()
    console = None
    with contextlib.suppress(Exception):  # not every cloud has a console proxy
        console = conn.compute.create_console(server, console_type="novnc").get("url")
    addresses = {net: [a.get("addr") for a in addrs]
                 for net, addrs in (server.addresses or {}).items()}
    attached = [a.get("id") for a in (server.attached_volumes or [])]
    return {"server_id": server.id, "name": server.name, "status": server.status,
            "volume_id": vol.id, "attached_volumes": attached, "addresses": addresses,
            "console_url": console, "availability_zone": server.availability_zone,
            "compute_host": server.compute_host,
            "port": neutron.port_report(port, opts.port.new_port) if port else None,
            "host": host, "run": opts.run, "cloud": cloud, "region": conn.config.region_name,
            "seconds": round(time.monotonic() - started, 1)}


def boot_lines(report: dict[str, Any]) -> list[str]:
    if report.get("dry_run"):
        return [f"would call: {c}" for c in report["calls"]]
    addrs = "; ".join(f"{n}: {', '.join(a)}" for n, a in report["addresses"].items()) or "none"
    out = [f"server {report['server_id']} ({report['name']}) {report['status']} in "
           f"{report['availability_zone']}, booted from volume {report['volume_id']}",
           f"  addresses: {addrs}"]
    if report.get("port"):
        port = report["port"]
        pairs = ", ".join(port["allowed_address_pairs"]) or "none"
        out.append(f"  port {port['id']}{' (made for it)' if port['created'] else ''}: "
                   f"{', '.join(port['fixed_ips']) or 'no fixed IP'}, MAC "
                   f"{port['mac_address']}, allowed address pairs {pairs}")
    if report.get("console_url"):
        out.append(f"  console: {report['console_url']}")
    return out


# -- cleanup -------------------------------------------------------------------------------
