"""The cloud verbs (registered on the main click group by cli.py): upload, volume, boot,
write-volume, and the ``cloud`` group (cleanup).

Options speak the openstack CLI's dialect where it has a word for the thing:
``--os-cloud``, ``--os-region-name``, ``--availability-zone``, ``--key-name``, ``--type``,
``--property``, ``--tag``, ``--port``, ``--fixed-ip``, ``--allowed-address``,
``--mac-address``. The p2vimage:host mark is ``--source-host``: in ``openstack server
create`` ``--host`` names a compute host, so boot refuses ``--host`` and the other verbs
take it as a deprecated alias with a warning.
"""

from __future__ import annotations

from pathlib import Path

import click

from p2vimage.cli.completion import cloud_names
from p2vimage.cloud import upload
from p2vimage.cloud import writevolume as blockdev
from p2vimage.core.errors import InputError
from p2vimage.core.log import log

# What each verb's -c may name (its report's fields; id is the resource it made).
UPLOAD_FIELDS = (
    "image_id", "name", "status", "disk_format", "container_format", "visibility",
    "file_size", "bytes_sent", "hash_verified", "properties", "tags", "stored_format",
    "converted_to", "compression", "trim", "raw_size", "raw_allocated", "cloud",
    "region", "dry_run", "calls",
)
VOLUME_FIELDS = (
    "volume_id", "name", "status", "size_gb", "availability_zone", "bootable",
    "image_id", "host", "run", "cloud", "region", "seconds", "dry_run", "calls",
)
BOOT_FIELDS = (
    "server_id", "name", "status", "volume_id", "addresses", "availability_zone",
    "compute_host", "console_url", "port", "allowed_address_pairs", "host", "run",
    "cloud", "region", "seconds", "dry_run", "calls",
)
CLEANUP_FIELDS = (
    "found", "servers", "ports", "volumes", "images", "host", "run", "cloud", "region",
    "skipped_services", "dry_run", "calls",
)


def _cloud_option(f: click.decorators.FC) -> click.decorators.FC:
    f = click.option("--os-region-name", "os_region", envvar="OS_REGION_NAME",
                     metavar="REGION", help="The region (default $OS_REGION_NAME, else the "
                     "cloud's first region).")(f)
    return click.option("--os-cloud", "os_cloud", envvar="OS_CLOUD", metavar="NAME",
                        shell_complete=cloud_names,
                        help="The cloud's entry in clouds.yaml (default $OS_CLOUD; without "
                        "either, the OS_* variables).")(f)


def _host_options(f: click.decorators.FC, what: str = " (default: taken from the source)"
                  ) -> click.decorators.FC:
    f = click.option("--host", "legacy_host", metavar="HOST", hidden=True,
                     help="Deprecated: --source-host.")(f)
    return click.option("--source-host", "host", metavar="HOST",
                        help=f"The p2vimage:host mark{what}; not a compute host.")(f)


def _tag_options(f: click.decorators.FC) -> click.decorators.FC:
    f = click.option("--run-id", "run_id", metavar="ID",
                     help="The p2vimage:run mark (default: a new UTC time stamp).")(f)
    return _host_options(f)


def _marked_host(f: click.decorators.FC) -> click.decorators.FC:
    return _host_options(f, ": delete what carries it (required)")


def source_host(host: str | None, legacy: str | None, verb: str) -> str | None:
    """The p2vimage:host mark from --source-host, or from the deprecated --host (refused on
    boot, where the openstack CLI's --host places the server on a compute host)."""
    if legacy is None:
        return host
    if verb == "boot":
        raise InputError("boot takes no --host: the p2vimage:host mark is --source-host",
                         hint="--source-host HOST marks the server; --availability-zone "
                         "ZONE:HOST places it on a compute host")
    if host is not None and host != legacy:
        raise InputError(f"--host {legacy} and --source-host {host} differ",
                         hint="give --source-host only")
    log.warning("warning: --host is deprecated, use --source-host (in the openstack CLI "
                "--host names a compute host)")
    return legacy


def _dry_run(f: click.decorators.FC) -> click.decorators.FC:
    return click.option("--dry-run", is_flag=True,
                        help="Print the API calls it would make; touch nothing.")(f)


def register(group: click.Group) -> None:
    """Add the cloud verbs to GROUP."""
    from p2vimage.cli.options import Settings, format_options
    from p2vimage.cli.options import emit as _emit

    @group.command("upload")
    @format_options("image_id", UPLOAD_FIELDS)
    @click.argument("image", type=click.Path(path_type=Path))
    @_cloud_option
    @click.option("--name", required=True, help="The Glance image name.")
    @click.option("--disk-format", type=click.Choice(["qcow2", "raw"]), default="qcow2",
                  show_default=True, help="What is sent (raw sends every byte of the disk).")
    @click.option("--compression", type=click.Choice(upload.COMPRESSIONS), default=None,
                  help="qcow2 cluster compression (default zstd; zlib for clouds whose "
                  "qemu is older than 5.1; raw is never compressed).")
    @click.option("--no-trim", is_flag=True,
                  help="Do not punch holes for the filesystem's free blocks first.")
    @click.option("--use-import", is_flag=True,
                  help="Stage and import (glance-direct) instead of a plain upload; a cloud "
                  "with Glance's image_conversion plugin converts the image (to raw, for "
                  "Ceph) and upload checks the result against the raw image.")
    @click.option("--visibility", type=click.Choice(["private", "shared", "community",
                                                     "public"]), default="private",
                  show_default=True)
    @click.option("--property", "properties", multiple=True, metavar="KEY=VALUE",
                  help="An image property (over the guest's). Repeatable.")
    @click.option("--tag", "tags", multiple=True, metavar="TAG",
                  help="An image tag (beside p2vimage's marks). Repeatable.")
    @click.option("--timeout", type=click.IntRange(min=1), default=3600, show_default=True,
                  help="Seconds to wait for the image to become active.")
    @_tag_options
    @_dry_run
    @click.pass_obj
    def upload_cmd(settings: Settings, image: Path, os_cloud: str | None,
                   os_region: str | None, name: str, disk_format: str,
                   compression: str | None, no_trim: bool, use_import: bool, visibility: str,
                   properties: tuple[str, ...], tags: tuple[str, ...], timeout: int,
                   host: str | None, legacy_host: str | None, run_id: str | None,
                   dry_run: bool) -> None:
        """Trim IMAGE, convert it, upload it to Glance verifying md5 and sha512, with
        properties from the guest (virtio, os_distro, os_version, architecture) and
        openstacksdk's owner_specified.openstack.md5/sha256/object."""
        from p2vimage.cloud import connect, glance  # openstacksdk: 0.14 s
        opts = glance.UploadOptions(
            image=image, cloud=os_cloud, name=name,
            host=source_host(host, legacy_host, "upload") or image.stem,
            run=run_id or connect.run_id(), disk_format=disk_format,
            compression=compression or ("zstd" if disk_format == "qcow2" else "none"),
            trim=not no_trim, use_import=use_import, visibility=visibility, timeout=timeout,
            dry_run=dry_run, region=os_region, properties=properties, tags=tags)
        report = glance.upload(opts)
        _emit(settings, report, glance.upload_lines(report))

    @group.command("volume")
    @format_options("volume_id", VOLUME_FIELDS)
    @click.option("--image", required=True, metavar="ID|NAME", help="The Glance image.")
    @click.option("--availability-zone", "--az", "az", metavar="ZONE",
                  help="The volume availability zone (the node's).")
    @click.option("--size", "size_gb", type=click.IntRange(min=1), metavar="GB",
                  help="Size in GiB (default: the image's virtual size, rounded up).")
    @click.option("--name", help="Volume name (default p2vimage-HOST-RUN).")
    @click.option("--type", "--volume-type", "volume_type", metavar="TYPE",
                  help="Cinder volume type.")
    @click.option("--timeout", type=click.IntRange(min=1), default=3600, show_default=True)
    @_cloud_option
    @_tag_options
    @_dry_run
    @click.pass_obj
    def volume_cmd(settings: Settings, image: str, az: str | None, size_gb: int | None,
                   name: str | None, volume_type: str | None, timeout: int,
                   os_cloud: str | None, os_region: str | None, host: str | None,
                   legacy_host: str | None, run_id: str | None, dry_run: bool) -> None:
        """A bootable Cinder volume from a Glance image, in an availability zone."""
        from p2vimage.cloud import cinder, connect  # openstacksdk: 0.14 s
        opts = cinder.VolumeOptions(
            cloud=os_cloud, image=image, az=az, size_gb=size_gb, name=name,
            host=source_host(host, legacy_host, "volume"), run=run_id or connect.run_id(),
            volume_type=volume_type, timeout=timeout, dry_run=dry_run, region=os_region)
        report = cinder.volume(opts)
        _emit(settings, report, cinder.volume_lines(report))

    @group.command("boot")
    @format_options("server_id", BOOT_FIELDS)
    @click.option("--volume", required=True, metavar="ID|NAME", help="The boot volume.")
    @click.option("--flavor", required=True, metavar="ID|NAME")
    @click.option("--key-name", "--key", "key", metavar="NAME", help="Nova key pair.")
    @click.option("--availability-zone", "--az", "az", metavar="ZONE[:HOST[:NODE]]",
                  help="Compute availability zone; ZONE:HOST puts the server on one compute "
                  "host (admins).")
    @click.option("--network", metavar="ID|NAME|none",
                  help="The network of the NIC, or 'none' for no NIC.")
    @click.option("--port", metavar="ID|NAME", help="An existing, free port for the NIC "
                  "(instead of --network).")
    @click.option("--fixed-ip", "fixed_ips", multiple=True, metavar="ADDRESS",
                  help="Make the NIC's port with this address on --network (the legacy "
                  "address). Repeatable.")
    @click.option("--subnet", metavar="ID|NAME", help="The subnet of --fixed-ip.")
    @click.option("--allowed-address", "allowed_addresses", multiple=True,
                  metavar="ADDRESS[/PREFIX]", help="Make the port with this allowed address "
                  "pair (the public address the guest keeps). Repeatable.")
    @click.option("--mac-address", metavar="MAC", help="Make the port with this MAC (the "
                  "legacy NIC's).")
    @click.option("--security-group", "security_groups", multiple=True, metavar="NAME",
                  help="Repeatable.")
    @click.option("--name", help="Server name (default: the host).")
    @click.option("--timeout", type=click.IntRange(min=1), default=1800, show_default=True)
    @_cloud_option
    @_tag_options
    @_dry_run
    @click.pass_obj
    def boot_cmd(settings: Settings, volume: str, flavor: str, key: str | None,
                 az: str | None, network: str | None, port: str | None,
                 fixed_ips: tuple[str, ...], subnet: str | None,
                 allowed_addresses: tuple[str, ...], mac_address: str | None,
                 security_groups: tuple[str, ...], name: str | None, timeout: int,
                 os_cloud: str | None, os_region: str | None, host: str | None,
                 legacy_host: str | None, run_id: str | None, dry_run: bool) -> None:
        """A Nova server booted from the volume (kept when the server is deleted), on a
        network, an existing port, or a port made with the legacy address."""
        from p2vimage.cloud import connect, neutron, nova  # openstacksdk: 0.14 s
        opts = nova.BootOptions(
            cloud=os_cloud, volume=volume, flavor=flavor, key=key, az=az, network=network,
            security_groups=security_groups, name=name,
            host=source_host(host, legacy_host, "boot"), run=run_id or connect.run_id(),
            timeout=timeout, dry_run=dry_run, region=os_region,
            port=neutron.PortOptions(port=port, fixed_ips=fixed_ips, subnet=subnet,
                                     allowed_addresses=allowed_addresses,
                                     mac_address=mac_address))
        report = nova.boot(opts)
        _emit(settings, report, nova.boot_lines(report))

    @group.command("write-volume")
    @click.argument("image", type=click.Path(path_type=Path))
    @click.argument("device", type=click.Path(path_type=Path))
    @click.option("--create", is_flag=True,
                  help="DEVICE is a new regular file: create it (never under /dev).")
    @click.option("--force", is_flag=True, help="DEVICE is an existing regular file: "
                  "overwrite it.")
    @click.option("--dry-run", is_flag=True,
                  help="Say what it would write where, refusing what a run refuses; write "
                  "nothing.")
    @click.pass_obj
    def write_volume_cmd(settings: Settings, image: Path, device: Path, create: bool,
                         force: bool, dry_run: bool) -> None:
        """Write raw IMAGE into DEVICE (an attached volume or an LVM volume; a file with
        --create or --force), sparsely, zeroing the rest of the image extent, and verify by
        reading back. DEVICE is never the image, or a device backed by it."""
        report = blockdev.write_volume(image, device, dry_run=dry_run, create=create,
                                       force=force)
        _emit(settings, report, blockdev.lines(report))

    @group.group("cloud")
    def cloud_group() -> None:
        """Cloud housekeeping."""

    @cloud_group.command("cleanup")
    @format_options(None, CLEANUP_FIELDS)
    @_marked_host
    @click.option("--run-id", "run_id", metavar="ID", help="Only what one run made.")
    @_cloud_option
    @_dry_run
    @click.pass_obj
    def cleanup_cmd(settings: Settings, host: str | None, legacy_host: str | None,
                    run_id: str | None, os_cloud: str | None, os_region: str | None,
                    dry_run: bool) -> None:
        """Find the servers, ports, volumes and images p2vimage made for HOST (marked
        p2vimage:host=HOST) and delete them."""
        from p2vimage.cloud import cleanup  # openstacksdk: 0.14 s
        marked = source_host(host, legacy_host, "cloud cleanup")
        if not marked:
            raise click.UsageError("Missing option '--source-host'.")
        report = cleanup.cleanup(os_cloud, marked, run_id, dry_run=dry_run, region=os_region)
        _emit(settings, report, cleanup.cleanup_lines(report))
