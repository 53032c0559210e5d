"""The cloud verbs (registered on the main click group by cli.py): upload, volume, boot,
write-volume, and the ``cloud`` group (cleanup)."""

from __future__ import annotations

from pathlib import Path

import click

from p2vimage.cli.completion import cloud_names
from p2vimage.cloud import upload
from p2vimage.cloud import writevolume as blockdev


def _cloud_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option("--os-cloud", "os_cloud", envvar="OS_CLOUD", metavar="NAME",
                        shell_complete=cloud_names,
                        help="The cloud's entry in clouds.yaml (default $OS_CLOUD; without "
                        "either, the OS_* variables).")(f)


def _tag_options(f: click.decorators.FC) -> click.decorators.FC:
    f = click.option("--run-id", "run_id", metavar="ID",
                     help="The p2vimage:run mark (default: a new UTC time stamp).")(f)
    return click.option("--host", metavar="HOST",
                        help="The p2vimage:host mark (default: taken from the source).")(f)


def _dry_run(f: click.decorators.FC) -> click.decorators.FC:
    return click.option("--dry-run", is_flag=True,
                        help="Print the API calls it would make; touch nothing.")(f)


def register(group: click.Group) -> None:
    """Add the cloud verbs to GROUP."""
    from p2vimage.cli.options import Settings
    from p2vimage.cli.options import emit as _emit

    @group.command("upload")
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
                  help="Stage and import (glance-direct) instead of a plain upload.")
    @click.option("--visibility", type=click.Choice(["private", "shared", "community",
                                                     "public"]), default="private",
                  show_default=True)
    @click.option("--timeout", type=click.IntRange(min=1), default=3600, show_default=True,
                  help="Seconds to wait for the image to become active.")
    @_tag_options
    @_dry_run
    @click.pass_obj
    def upload_cmd(settings: Settings, image: Path, os_cloud: str | None, name: str,
                   disk_format: str, compression: str | None, no_trim: bool,
                   use_import: bool, visibility: str, timeout: int, host: str | None,
                   run_id: str | None, dry_run: bool) -> None:
        """Trim IMAGE, convert it, upload it to Glance verifying md5 and sha512, with
        properties from the guest (virtio, os_distro, os_version, architecture)."""
        from p2vimage.cloud import connect, glance  # openstacksdk: 0.14 s
        opts = glance.UploadOptions(
            image=image, cloud=os_cloud, name=name, host=host or image.stem,
            run=run_id or connect.run_id(), disk_format=disk_format,
            compression=compression or ("zstd" if disk_format == "qcow2" else "none"),
            trim=not no_trim, use_import=use_import, visibility=visibility, timeout=timeout,
            dry_run=dry_run)
        report = glance.upload(opts)
        _emit(settings, report, glance.upload_lines(report))

    @group.command("volume")
    @click.option("--image", required=True, metavar="ID|NAME", help="The Glance image.")
    @click.option("--az", metavar="ZONE", help="The volume availability zone (the node's).")
    @click.option("--size", "size_gb", type=click.IntRange(min=1), metavar="GB",
                  help="Size in GiB (default: the image's virtual size, rounded up).")
    @click.option("--name", help="Volume name (default p2vimage-HOST-RUN).")
    @click.option("--volume-type", help="Cinder volume type.")
    @click.option("--timeout", type=click.IntRange(min=1), default=3600, show_default=True)
    @_cloud_option
    @_tag_options
    @_dry_run
    @click.pass_obj
    def volume_cmd(settings: Settings, image: str, az: str | None, size_gb: int | None,
                   name: str | None, volume_type: str | None, timeout: int,
                   os_cloud: str | None, host: str | None, run_id: str | None,
                   dry_run: bool) -> None:
        """A bootable Cinder volume from a Glance image, in an availability zone."""
        from p2vimage.cloud import cinder, connect  # openstacksdk: 0.14 s
        opts = cinder.VolumeOptions(
            cloud=os_cloud, image=image, az=az, size_gb=size_gb, name=name, host=host,
            run=run_id or connect.run_id(), volume_type=volume_type, timeout=timeout,
            dry_run=dry_run)
        report = cinder.volume(opts)
        _emit(settings, report, cinder.volume_lines(report))

    @group.command("boot")
    @click.option("--volume", required=True, metavar="ID|NAME", help="The boot volume.")
    @click.option("--flavor", required=True, metavar="ID|NAME")
    @click.option("--key", metavar="NAME", help="Nova key pair.")
    @click.option("--az", metavar="ZONE", help="Compute availability zone.")
    @click.option("--network", required=True, metavar="ID|NAME|none",
                  help="The network of the NIC, or 'none' for no NIC.")
    @click.option("--security-group", "security_groups", multiple=True, metavar="NAME",
                  help="Repeatable.")
    @click.option("--name", help="Server name (default: the host).")
    @click.option("--timeout", type=click.IntRange(min=1), default=1800, show_default=True)
    @_cloud_option
    @_tag_options
    @_dry_run
    @click.pass_obj
    def boot_cmd(settings: Settings, volume: str, flavor: str, key: str | None,
                 az: str | None, network: str, security_groups: tuple[str, ...],
                 name: str | None, timeout: int, os_cloud: str | None, host: str | None,
                 run_id: str | None, dry_run: bool) -> None:
        """A Nova server booted from the volume (kept when the server is deleted)."""
        from p2vimage.cloud import connect, nova  # openstacksdk: 0.14 s
        opts = nova.BootOptions(
            cloud=os_cloud, volume=volume, flavor=flavor, key=key, az=az, network=network,
            security_groups=security_groups, name=name, host=host,
            run=run_id or connect.run_id(), timeout=timeout, dry_run=dry_run)
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
    @click.option("--host", required=True, help="Delete what is marked p2vimage:host=HOST.")
    @click.option("--run-id", "run_id", metavar="ID", help="Only what one run made.")
    @_cloud_option
    @_dry_run
    @click.pass_obj
    def cleanup_cmd(settings: Settings, host: str, run_id: str | None, os_cloud: str | None,
                    dry_run: bool) -> None:
        """Find the servers, volumes and images p2vimage made for HOST and delete them."""
        from p2vimage.cloud import cleanup  # openstacksdk: 0.14 s
        report = cleanup.cleanup(os_cloud, host, run_id, dry_run=dry_run)
        _emit(settings, report, cleanup.cleanup_lines(report))
