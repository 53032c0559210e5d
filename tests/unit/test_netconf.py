"""The guest's own network configuration, from real file texts."""

from __future__ import annotations

from p2vimage.guest.netconf import Iface, interfaces
from tests.fakes import DictFiles

LEGACY = """\
# The loopback network interface
auto lo
iface lo inet loopback

# The primary network interface
allow-hotplug eth0
iface eth0 inet dhcp

auto eth1
iface eth1 inet static
\taddress 203.0.113.10
\tnetmask 255.255.255.0
\tnetwork 203.0.113.0
\tbroadcast 203.0.113.255
\tgateway 203.0.113.1
\t# dns-* options are implemented by the resolvconf package, if installed
\tdns-nameservers 203.0.113.53
"""


def test_ifupdown_dhcp_and_static() -> None:
    assert interfaces(DictFiles({"/etc/network/interfaces": LEGACY})) == [
        Iface("eth0", "dhcp"), Iface("eth1", "static", "203.0.113.10", 24, "203.0.113.1")]


def test_ifupdown_cidr_and_interfaces_d() -> None:
    files = DictFiles({"/etc/network/interfaces": "source /etc/network/interfaces.d/*\n",
                       "/etc/network/interfaces.d/eth0": "auto eth0\niface eth0 inet static\n"
                       "  address 198.51.100.20/25\n  gateway 198.51.100.1\n"})
    assert interfaces(files) == [Iface("eth0", "static", "198.51.100.20", 25, "198.51.100.1")]


def test_sysconfig_netplan_networkd() -> None:
    files = DictFiles({
        "/etc/sysconfig/network-scripts/ifcfg-eth0": 'DEVICE=eth0\nBOOTPROTO=static\n'
        'IPADDR=192.0.2.7\nNETMASK=255.255.255.0\nGATEWAY=192.0.2.1\nONBOOT=yes\n',
        "/etc/sysconfig/network-scripts/ifcfg-lo": "DEVICE=lo\nIPADDR=127.0.0.1\n",
        "/etc/netplan/01-netcfg.yaml": "network:\n  version: 2\n  ethernets:\n    ens3:\n"
        "      addresses: [192.0.2.30/24]\n      gateway4: 192.0.2.1\n    ens4:\n"
        "      dhcp4: true\n",
        "/etc/systemd/network/10-eth2.network": "[Match]\nName=eth2\n\n[Network]\n"
        "Address=198.51.100.9/24\nGateway=198.51.100.1\n"})
    assert interfaces(files) == [
        Iface("eth0", "static", "192.0.2.7", 24, "192.0.2.1"),
        Iface("eth2", "static", "198.51.100.9", 24, "198.51.100.1"),
        Iface("ens3", "static", "192.0.2.30", 24, "192.0.2.1"), Iface("ens4", "dhcp")]


def test_no_configuration() -> None:
    assert interfaces(DictFiles({})) == []
