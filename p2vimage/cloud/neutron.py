"""Stage 7's network half: the Neutron port that keeps the legacy address.

A legacy guest keeps its static address. On a network with port security Neutron drops
whatever a port sends from an address (or MAC) it does not carry, so ``boot`` can make the
port first: the address as a fixed IP on the tenant network (``--fixed-ip``, ``--subnet``),
the public address as an allowed address pair (``--allowed-address``), the old MAC
(``--mac-address``); marked p2vimage:host/run with Neutron tags (set after the create, as
the openstack CLI does) and registered for undo: a boot that fails deletes it, and
``cloud cleanup`` finds it. Or it takes an existing port (``--port``) as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import re
from typing import Any

from p2vimage.cloud.connect import Call, api, tag_list, undo_delete
from p2vimage.core.errors import InputError
from p2vimage.core.log import step

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclasses.dataclass(frozen=True)
class PortOptions:
    """The NIC of ``boot``: an existing port, or what the port made for the server carries."""

    port: str | None = None  # an existing port, ID or name
    fixed_ips: tuple[str, ...] = ()
    subnet: str | None = None
    allowed_addresses: tuple[str, ...] = ()  # ADDRESS or NETWORK/PREFIX
    mac_address: str | None = None

    @property
    def new_port(self) -> bool:
        """Whether boot makes a port (else Nova makes one on the network, or none)."""
        return bool(self.fixed_ips or self.subnet or self.allowed_addresses or
                    self.mac_address)


def fixed_ip(text: str) -> str:
    """A ``--fixed-ip``: one address (IPv4 or IPv6). Raises InputError."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise InputError(f"--fixed-ip {text!r} is not an IP address",
                         hint="give the legacy host's address, e.g. --fixed-ip 10.0.0.15"
                         ) from None


def allowed_address(text: str) -> str:
    """An ``--allowed-address``: ADDRESS or NETWORK/PREFIX as Neutron takes it (no host
    bits). Raises InputError."""
    try:
        if "/" in text:
            return str(ipaddress.ip_network(text.strip(), strict=True))
        return str(ipaddress.ip_address(text.strip()))
    except ValueError as exc:
        net = None
        with contextlib.suppress(ValueError):
            net = ipaddress.ip_network(text.strip(), strict=False)
        hint = (f"an address range starts at its network address: {net}, or give the "
                "address alone" if net else "e.g. --allowed-address 203.0.113.7")
        raise InputError(f"--allowed-address {text!r} is not an address or network: {exc}",
                         hint=hint) from None


def mac_address(text: str) -> str:
    """A ``--mac-address``: six colon-separated hex bytes, unicast, not all zero."""
    mac = text.strip().lower().replace("-", ":")
    if not _MAC.match(mac) or int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
        raise InputError(f"--mac-address {text!r} is not a unicast MAC address",
                         hint="give the legacy NIC's own address, e.g. 52:54:00:12:34:56")
    return mac


def check(opts: PortOptions, network: str | None, security_groups: tuple[str, ...]) -> None:
    """Refuse port options that do not fit together (before anything connects)."""
    if opts.port:
        if opts.new_port:
            raise InputError("--port takes an existing port as it is",
                             hint="leave out --fixed-ip, --subnet, --allowed-address and "
                             "--mac-address, or --port to have boot make the port")
        if network is not None:
            raise InputError("--port and --network both name the NIC",
                             hint="give one: the port is on its own network")
        if security_groups:
            raise InputError("--security-group does not apply to an existing --port",
                             hint="set them on the port: openstack port set --security-group")
        return
    if network is None:
        raise InputError("no NIC given", hint="give --network NAME (or none), or --port")
    if opts.new_port and network == "none":
        raise InputError("--fixed-ip, --subnet, --allowed-address and --mac-address make a "
                         "port, which needs a network", hint="give --network NAME")
    for ip in opts.fixed_ips:
        fixed_ip(ip)
    for address in opts.allowed_addresses:
        allowed_address(address)
    if opts.mac_address:
        mac_address(opts.mac_address)


def port_request(opts: PortOptions, network_id: str, subnet_id: str | None,
                 group_ids: list[str], host: str, run: str) -> dict[str, Any]:
    """The keyword arguments of network.create_port."""
    req: dict[str, Any] = {"network_id": network_id, "name": f"p2vimage-{host}-{run}",
                           "description": f"p2vimage: {host}, run {run}"}
    subnet = {"subnet_id": subnet_id} if subnet_id else {}
    if opts.fixed_ips:
        req["fixed_ips"] = [{"ip_address": fixed_ip(ip), **subnet} for ip in opts.fixed_ips]
    elif subnet_id:
        req["fixed_ips"] = [subnet]
    if opts.allowed_addresses:
        req["allowed_address_pairs"] = [{"ip_address": allowed_address(a)}
                                        for a in opts.allowed_addresses]
    if opts.mac_address:
        req["mac_address"] = mac_address(opts.mac_address)
    if group_ids:
        req["security_groups"] = group_ids
    return req


def plan(opts: PortOptions, network: str, security_groups: tuple[str, ...], host: str,
         run: str) -> list[Call]:
    """The Neutron calls of ``boot`` before the server (what --dry-run prints)."""
    if opts.port:
        return [Call("network.find_port", {"name_or_id": opts.port})]
    if not opts.new_port:
        return []
    net = f"<id of {network}>"
    calls = [Call("network.subnets", {"network_id": net})]
    if opts.subnet:
        calls.append(Call("network.find_subnet", {"name_or_id": opts.subnet,
                                                  "network_id": net}))
    calls += [Call("network.find_security_group", {"name_or_id": g,
                                                   "project_id": "<this project>"})
              for g in security_groups]
    req = port_request(opts, f"<id of {network}>",
                       f"<id of {opts.subnet}>" if opts.subnet else None,
                       [f"<id of {g}>" for g in security_groups], host, run)
    return [*calls, Call("network.create_port", req),
            Call("network.set_tags", {"port": "<new port id>", "tags": tag_list(host, run)})]


def existing_port(conn: Any, ref: str, cloud: str) -> Any:
    """The port ``--port`` names; InputError when there is none or a device uses it."""
    with api(f"looking up port {ref!r}", cloud):
        port = conn.network.find_port(ref, ignore_missing=True)
    if port is None:
        raise InputError(f"no port {ref!r} in cloud {cloud!r}",
                         hint="give a port ID or name that 'openstack port list' shows")
    if port.device_id:
        raise InputError(f"port {port.id} is in use by {port.device_owner or 'a device'} "
                         f"{port.device_id}", hint="give a free port")
    return port


def _subnet_for(ip: str, subnets: list[Any], network: str, cloud: str) -> Any:
    address = ipaddress.ip_address(ip)
    for subnet in subnets:
        if address in ipaddress.ip_network(subnet.cidr):
            return subnet
    shown = ", ".join(f"{s.name or s.id} {s.cidr}" for s in subnets) or "none"
    raise InputError(f"--fixed-ip {ip} is in none of the subnets of network {network!r} in "
                     f"cloud {cloud!r}", hint=f"subnets: {shown}")


def new_port(conn: Any, opts: PortOptions, net: Any, security_groups: tuple[str, ...],
             host: str, run: str, cloud: str, undo: contextlib.ExitStack) -> Any:
    """Make the port (checked against the network's subnets first), tag it, and register
    its deletion on ``undo``. Raises InputError for an unknown subnet or security group,
    or an address outside the subnets."""
    with api(f"looking up the subnets of network {net.name or net.id}", cloud):
        subnets = list(conn.network.subnets(network_id=net.id))
        subnet = None
        if opts.subnet:
            subnet = conn.network.find_subnet(opts.subnet, ignore_missing=True,
                                              network_id=net.id)
        group_ids = []
        for name in security_groups:  # by name in this project, as Nova looks them up
            group = conn.network.find_security_group(name, ignore_missing=True,
                                                     project_id=conn.current_project_id)
            if group is None:
                raise InputError(f"no security group {name!r} in cloud {cloud!r}",
                                 hint="see 'openstack security group list'")
            group_ids.append(group.id)
    if opts.subnet and (subnet is None or subnet.network_id != net.id):
        shown = ", ".join(s.name or s.id for s in subnets) or "none"
        raise InputError(f"no subnet {opts.subnet!r} on network {net.name or net.id!r} in "
                         f"cloud {cloud!r}", hint=f"subnets: {shown}")
    for ip in opts.fixed_ips:
        _subnet_for(fixed_ip(ip), [subnet] if subnet else subnets, net.name or net.id, cloud)
    req = port_request(opts, net.id, subnet.id if subnet else None, group_ids, host, run)
    with api("creating the port", cloud):
        port = conn.network.create_port(**req)
    undo.callback(_delete, conn, port)
    with api(f"tagging port {port.id}", cloud):
        conn.network.set_tags(port, tag_list(host, run))
    return port


def _delete(conn: Any, port: Any) -> None:
    with step(f"Deleting port {port.id}, made for the server"):
        undo_delete(conn.network.delete_port, port)


def port_report(port: Any, created: bool) -> dict[str, Any]:
    """What the port carries, as Neutron says."""
    return {"id": port.id, "name": port.name, "created": created,
            "network_id": port.network_id, "mac_address": port.mac_address,
            "fixed_ips": [ip.get("ip_address") for ip in port.fixed_ips or []],
            "allowed_address_pairs": [p.get("ip_address")
                                      for p in port.allowed_address_pairs or []],
            "tags": list(port.tags or [])}
